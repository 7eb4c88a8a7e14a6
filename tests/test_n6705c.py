"""Keysight N6705C with an N6781A SMU: the driver at message level, the simulator against the
stack model, the two together, and runs on the built-in sim-n6781a bench.

The driver maps the role onto voltage priority with two independent current limits (tracking
off), in two quadrants (EMUL PS2Q): CURR:LIM is the source (charge) clamp, CURR:LIM:NEG the sink
(discharge) clamp as a negative number. The range (6 V / 3 A or 20 V / 1 A) is chosen once, from
the over-voltage threshold. Every test pins one of these or one command of the command set.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time

import pandas as pd
import pytest
from support import (Script, ScriptedTransport, assert_continuous, cycler, ended_pid, events_of, expected_protocol,
                     samples_of)

from stackcycler import runner, session

from stackcycler.bench import load_bench
from stackcycler.channel import Channel, SupplyDrive, watchdog_silence_s
from stackcycler.clock import VirtualClock
from stackcycler.drivers.keysight_n6705c import KeysightN6705c, Mainframe
from stackcycler.drivers.registry import SUPPLY_DRIVERS
from stackcycler.drivers.roles import BidirectionalSupply
from stackcycler.drivers.sim.daq970a import Daq970aSimConfig, SimDaq970a
from stackcycler.drivers.sim.keysight_n6705c import KeysightN6705cSimConfig, SimKeysightN6705c
from stackcycler.drivers.sim.simulation import SimulationConfig, build_simulation
from stackcycler.drivers.sim.stack import StackModel, StackParameters
from stackcycler.drivers.sim.world import SimWorld
from stackcycler.drivers.transport import InProcessTransport
from stackcycler.errors import InstrumentError, InvalidInput
from stackcycler.live import SilentReporter
from stackcycler.safety import SafetyEnvelope

# --- the driver: messages ------------------------------------------------------------------------

IDN = "Keysight Technologies,N6705C,MY56006098,E.02.09.3271"
OK = '+0,"No error"'
CONNECT: Script = [
    ("*IDN?", IDN),
    ("SYST:CHAN:MOD? (@1)", "N6781A"),
    ("*CLS", None),
    ("OUTP? (@1)", "0"),
    ("OUTP OFF,(@1)", None), ("SYST:ERR?", OK),
    ("STAT:QUES:COND? (@1)", "0"),
    ("OUTP:PROT:WDOG OFF", None), ("SYST:ERR?", OK),  # a previous host's watchdog: the mainframe's, no (@n)
    ("EMUL PS2Q,(@1)", None), ("FUNC VOLT,(@1)", None), ("CURR:LIM:COUP 0,(@1)", None),
    ("CURR:PROT:STAT 0,(@1)", None), ("VOLT:RANG 20.0,(@1)", None), ("SYST:ERR?", OK),
]
# a cell's protection: 4.35 V x 1.05, (0.44 A) x 1.05; selects the 6 V range
PROTECT: Script = [("VOLT:RANG 6.0,(@1)", None), ("VOLT:PROT:REM 4.5675,(@1)", None), ("SYST:ERR?", OK)]
# CC charge of a 0.2 Ah cell at C/3 towards 4.27 V: the limits in force are unknown, so they go first
CHARGE: Script = [("CURR:LIM 0.0667,(@1)", None), ("CURR:LIM:NEG 0,(@1)", None), ("VOLT 4.27,(@1)", None),
                  ("SYST:ERR?", OK)]


def on_slot(slot: int):
    """The driver built for mainframe channel `slot` (the bench file's `output`)."""
    return lambda transport: KeysightN6705c(transport, output=slot)


def connected(*script: tuple[str, str | None]):
    return expected_protocol(on_slot(1), CONNECT + list(script))


def charging(*script: tuple[str, str | None]):
    return connected(*PROTECT, *CHARGE, ("OUTP ON,(@1)", None), ("SYST:ERR?", OK), *script)


def start_charging(supply: KeysightN6705c) -> None:
    supply.connect()
    supply.set_protection(4.5675, 0.462)
    supply.regulate(4.27, 0.0667, 0.0)
    supply.set_output(True)


def test_the_driver_is_a_bidirectional_supply_driver():
    assert issubclass(KeysightN6705c, BidirectionalSupply)
    assert "keysight-n6705c" in SUPPLY_DRIVERS


def test_connect_checks_mainframe_and_module_then_sets_two_quadrant_voltage_priority():
    with connected() as supply:
        assert supply.connect() == IDN
    assert supply.output_found_on is False
    assert supply.voltage_range.voltage_V == 20.0 and supply.has_power_limits is False


def test_connect_accepts_the_n6705b_mainframe():
    identity = "Agilent Technologies,N6705B,MY50001897,D.01.08"  # reference §2 (qcodes sim file)
    with expected_protocol(on_slot(1), [("*IDN?", identity), *CONNECT[1:]]) as supply:
        assert supply.connect() == identity


def test_connect_records_an_output_found_on_and_still_switches_it_off():
    script = [("OUTP? (@1)", "1") if pair == ("OUTP? (@1)", "0") else pair for pair in CONNECT]
    with expected_protocol(on_slot(1), script) as supply:
        supply.connect()
    assert supply.output_found_on is True


def test_connect_refuses_another_instrument():
    with expected_protocol(on_slot(1), [("*IDN?", "Keysight Technologies,E36312A,MY59002391,2.1.0")]) as supply:
        with pytest.raises(InstrumentError, match="is not a N6705C or N6705B"):
            supply.connect()


def test_connect_refuses_a_slot_that_holds_another_module():
    script = [("*IDN?", IDN), ("SYST:CHAN:MOD? (@3)", "N6762A")]
    with expected_protocol(on_slot(3), script) as supply:
        with pytest.raises(InstrumentError, match="channel 3 .* holds 'N6762A', not an N6781A"):
            supply.connect()


def test_connect_refuses_a_latched_protection_naming_it_and_how_to_clear_it():
    script = [pair for pair in CONNECT[:6]] + [("STAT:QUES:COND? (@1)", str(1 | 2048))]
    with expected_protocol(on_slot(1), script) as supply:
        with pytest.raises(InstrumentError, match="over-voltage protection tripped; output disabled by a protection "
                                                  "fault on a coupled channel .*OUTP:PROT:CLE \\(@1\\)"):
            supply.connect()


def test_a_channel_the_mainframe_does_not_have_is_refused_before_anything_is_sent():
    with pytest.raises(InvalidInput, match="channel 5 is not one of 1, 2, 3, 4"):
        with expected_protocol(on_slot(5), []):
            pass


def test_every_command_addresses_the_bench_files_channel():
    script = [(message.replace("(@1)", "(@2)"), reply) for message, reply in CONNECT]
    with expected_protocol(on_slot(2), script + [("MEAS:VOLT? (@2)", "+3.5E+00"), ("MEAS:CURR? (@2)", "+0E+00")]) as s:
        s.connect()
        assert s.measure() == (3.5, 0.0)


def test_ratings_are_the_envelope_corners_of_the_n6781a():
    with connected() as supply:
        supply.connect()
        ratings = supply.ratings
    assert (ratings.voltage_V, ratings.current_A, ratings.power_W) == (20.0, 3.0, 20.0)
    assert (ratings.max_over_voltage_V, ratings.max_over_current_A) == (22.0, 3.0)


def test_ratings_before_connect_are_an_instrument_error():
    with expected_protocol(on_slot(1), []) as supply:
        with pytest.raises(InstrumentError, match="not connected"):
            _ = supply.ratings


@pytest.mark.parametrize("over_voltage, range_V, current_A", [(4.5675, 6.0, 3.0), (6.0, 6.0, 3.0),
                                                              (6.01, 20.0, 1.0), (21.0, 20.0, 1.0)])
def test_protection_arms_the_remote_ovp_in_the_lowest_range_that_holds_it(over_voltage, range_V, current_A):
    script = [(f"VOLT:RANG {range_V},(@1)", None), (f"VOLT:PROT:REM {over_voltage},(@1)", None), ("SYST:ERR?", OK)]
    with connected(*script) as supply:
        supply.connect()
        supply.set_protection(over_voltage, 0.5)
    assert (supply.voltage_range.voltage_V, supply.voltage_range.current_A) == (range_V, current_A)


@pytest.mark.parametrize("over_voltage, over_current", [(0.0, 0.5), (22.5, 0.5), (math.nan, 0.5), (4.5, 3.1),
                                                        (4.5, 0.0)])
def test_a_protection_threshold_outside_the_model_is_refused_and_nothing_is_sent(over_voltage, over_current):
    with connected() as supply:
        supply.connect()
        with pytest.raises(InvalidInput, match="outside the model's range .*nothing was sent"):
            supply.set_protection(over_voltage, over_current)


def test_the_first_regulate_sends_the_limits_then_the_voltage_and_the_output_goes_on():
    with charging() as supply:
        start_charging(supply)


def test_a_falling_limit_goes_before_the_new_voltage_a_rising_one_after_it():
    script = [("CURR:LIM 0.0,(@1)", None), ("VOLT 2.95,(@1)", None), ("CURR:LIM:NEG -0.2,(@1)", None),
              ("SYST:ERR?", OK)]
    with charging(*script) as supply:
        start_charging(supply)
        supply.regulate(2.95, 0.0, 0.2)  # CC charge 66.7 mA -> CC discharge 200 mA


def test_regulate_sends_only_what_changed_and_nothing_if_nothing_did():
    with charging(("VOLT 4.25,(@1)", None), ("SYST:ERR?", OK)) as supply:
        start_charging(supply)
        supply.regulate(4.27, 0.0667, 0.0)
        supply.regulate(4.25, 0.0667, 0.0)


@pytest.mark.parametrize("voltage, source, sink, refused", [
    (-0.1, 0.0, 0.1, "voltage_V = -0.1 is outside the model's range 0 to 20"),  # two quadrants: + voltage only
    (math.nan, 0.1, 0.0, "voltage_V = nan"),
    (4.2, -0.1, 0.0, "source_limit_A = -0.1 is outside the model's range 0 to 3"),
    (4.2, 0.0, math.inf, "sink_limit_A = inf"),
    (4.2, 1.5, 0.0, "source_limit_A = 1.5 A is beyond the 20 V range's 1 A"),
    (4.2, 0.0, 1.5, "sink_limit_A = 1.5 A is beyond the 20 V range's 1 A"),
])
def test_a_setpoint_outside_the_envelope_is_refused_and_nothing_is_sent(voltage, source, sink, refused):
    with connected() as supply:
        supply.connect()
        with pytest.raises(InvalidInput, match=re.escape(refused) + ".*nothing was sent"):
            supply.regulate(voltage, source, sink)


@pytest.mark.parametrize("voltage, source, sink, refused", [
    (6.5, 0.1, 0.0, "6.5 V is beyond the 6 V range"),
    (4.6, 0.1, 0.0, "above its armed over-voltage protection level (4.5675 V)"),
    (4.2, 0.5, 0.0, "source_limit_A = 0.5 A is above the armed over-current threshold (0.462 A)"),
    (3.0, 0.0, 0.47, "sink_limit_A = 0.47 A is above the armed over-current threshold (0.462 A)"),
])
def test_regulate_beyond_the_range_or_the_armed_protection_is_refused(voltage, source, sink, refused):
    with connected(*PROTECT) as supply:
        supply.connect()
        supply.set_protection(4.5675, 0.462)
        with pytest.raises(InvalidInput, match=re.escape(refused)):
            supply.regulate(voltage, source, sink)


def test_in_the_6_V_range_a_cell_may_draw_up_to_3_A():
    script = [("CURR:LIM 2.5,(@1)", None), ("CURR:LIM:NEG -2.5,(@1)", None), ("VOLT 4.2,(@1)", None),
              ("SYST:ERR?", OK)]
    with connected(*PROTECT, *script) as supply:
        supply.connect()
        supply.set_protection(4.5675, 3.0)
        supply.regulate(4.2, 2.5, 2.5)  # CV both ways


def test_power_limits_are_refused_and_nothing_is_sent():
    with connected() as supply:
        supply.connect()
        with pytest.raises(InvalidInput, match="no power limit"):
            supply.regulate(4.2, 0.1, 0.1, sink_power_W=0.3)


def test_output_on_without_a_regulate_is_refused():
    with connected() as supply:
        supply.connect()
        with pytest.raises(InstrumentError, match="without a regulate"):
            supply.set_output(True)


def test_after_a_range_change_the_output_waits_for_a_regulate_that_sends_everything_again():
    with connected(*CHARGE, *PROTECT, *CHARGE) as supply:
        supply.connect()
        supply.regulate(4.27, 0.0667, 0.0)
        supply.set_protection(4.5675, 0.462)
        with pytest.raises(InstrumentError, match="without a regulate"):
            supply.set_output(True)
        supply.regulate(4.27, 0.0667, 0.0)


def test_output_off_and_the_read_back_of_the_output_state():
    script = [("OUTP? (@1)", "1"), ("OUTP OFF,(@1)", None), ("SYST:ERR?", OK), ("OUTP? (@1)", "0")]
    with charging(*script) as supply:
        start_charging(supply)
        assert supply.output_is_on() is True
        supply.set_output(False)
        assert supply.output_is_on() is False


def test_measure_reads_voltage_and_signed_current_of_its_channel():
    script = [("MEAS:VOLT? (@1)", "+3.61234000E+00"), ("MEAS:CURR? (@1)", "-2.00012000E-01")]
    with connected(*script) as supply:
        supply.connect()
        assert supply.measure() == (3.61234, -0.200012)  # sinking: the DUT discharges


@pytest.mark.parametrize("condition, regulation", [(0, "CV"), (128, "CL+"), (256, "CL-"), (128 | 8, "CL+")])
def test_regulation_decodes_the_current_limit_bits(condition, regulation):
    with connected(("STAT:QUES:COND? (@1)", str(condition))) as supply:
        supply.connect()
        assert supply.regulation() == regulation


def test_check_errors_drains_the_queue_then_reports_protection_bits():
    script = [("SYST:ERR?", OK), ("STAT:QUES:COND? (@1)", "128"),  # in current limit: normal
              ("SYST:ERR?", OK), ("STAT:QUES:COND? (@1)", str(2 | 16))]
    with connected(*script) as supply:
        supply.connect()
        supply.check_errors()
        with pytest.raises(InstrumentError, match="over-current protection tripped; over-temperature"):
            supply.check_errors()


def test_check_errors_reports_the_error_queue_with_the_last_command():
    script = [("MEAS:VOLT? (@1)", "+3.6E+00"), ("SYST:ERR?", '-222,"Data out of range"'), ("SYST:ERR?", OK)]
    with connected(*script) as supply:
        supply.connect()
        supply.query("MEAS:VOLT? (@1)")
        with pytest.raises(InstrumentError, match=re.escape('-222,"Data out of range" (last command sent: '
                                                            "'MEAS:VOLT? (@1)')")):
            supply.check_errors()


def test_safe_state_switches_off_unchecked_and_confirms_and_the_next_drive_resends_everything():
    script = [("OUTP OFF,(@1)", None), ("OUTP? (@1)", "0"), *CHARGE]
    with charging(*script) as supply:
        start_charging(supply)
        supply.safe_state()
        with pytest.raises(InstrumentError, match="without a regulate"):
            supply.set_output(True)
        supply.regulate(4.27, 0.0667, 0.0)  # nothing is taken for granted after the safe state


def test_safe_state_raises_when_the_output_reads_back_on():
    with connected(("OUTP OFF,(@1)", None), ("OUTP? (@1)", "1")) as supply:
        supply.connect()
        with pytest.raises(InstrumentError, match="output still on after OUTP OFF"):
            supply.safe_state()


def test_close_releases_the_transport_and_sends_nothing():
    with connected() as supply:
        supply.connect()
        supply.close()
    assert supply.transport.closed


# --- the watchdog: messages -------------------------------------------------------------------------
#
# OUTP:PROT:WDOG ON|OFF and OUTP:PROT:WDOG:DEL <s>, 1 to 3600 s in whole seconds, no channel list:
# the mainframe's (N6700C Operating and Service Guide p. 158; the driver's module notes).

NOT_TRIPPED: Script = [("STAT:QUES:COND? (@1)", "0")]  # looked at before arming: a trip is cleared first


def armed(delay: str) -> Script:
    return [*NOT_TRIPPED, (f"OUTP:PROT:WDOG:DEL {delay}", None), ("OUTP:PROT:WDOG ON", None), ("SYST:ERR?", OK)]


DISARM: Script = [("OUTP:PROT:WDOG OFF", None), ("SYST:ERR?", OK)]


@pytest.mark.parametrize("silence_s, sent, delay_s", [
    (30.0, "30", 30.0),
    (2.3, "3", 3.0),  # whole seconds: the smallest delay at least as long
    (0.2, "1", 1.0),  # the shortest it has
    (5 * 0.2 + 2e-16, "1", 1.0),  # a float's last bit is no reason for a second more
    (3600, "3600", 3600.0),
])
def test_arm_watchdog_sets_the_smallest_whole_second_delay_then_switches_it_on(silence_s, sent, delay_s):
    with connected(*armed(sent)) as supply:
        supply.connect()
        assert supply.arm_watchdog(silence_s) == delay_s


@pytest.mark.parametrize("silence_s, refused", [
    (3600.5, "a watchdog delay of 3600.5 s is outside the mainframe's 1 to 3600 s"),
    (7200, "a watchdog delay of 7200 s is outside the mainframe's 1 to 3600 s"),
    (0.0, "a watchdog silence of 0.0 s is not a positive number of seconds"),
    (-5.0, "a watchdog silence of -5.0 s is not a positive number"),
    (math.nan, "a watchdog silence of nan s"),
    (math.inf, "a watchdog silence of inf s"),
])
def test_a_watchdog_delay_the_mainframe_cannot_set_is_refused_and_nothing_is_sent(silence_s, refused):
    with connected() as supply:
        supply.connect()
        with pytest.raises(InvalidInput, match=re.escape(refused) + ".*nothing was sent"):
            supply.arm_watchdog(silence_s)


def test_arming_reports_what_the_error_queue_holds():
    script = [*NOT_TRIPPED, ("OUTP:PROT:WDOG:DEL 30", None), ("OUTP:PROT:WDOG ON", None),
              ("SYST:ERR?", '-222,"Data out of range"'), ("SYST:ERR?", OK)]
    with connected(*script) as supply:
        supply.connect()
        with pytest.raises(InstrumentError, match=re.escape('-222,"Data out of range" (last command sent: '
                                                            "'OUTP:PROT:WDOG ON')")):
            supply.arm_watchdog(30.0)


def test_disarm_switches_the_watchdog_off_and_checks_the_error_queue():
    with connected(*armed("30"), *DISARM) as supply:
        supply.connect()
        supply.arm_watchdog(30.0)
        supply.disarm_watchdog()
        supply.disarm_watchdog()  # off already: nothing more is sent


def test_safe_state_disarms_the_watchdog_once_the_output_reads_back_off():
    script = [*armed("30"), ("OUTP OFF,(@1)", None), ("OUTP? (@1)", "0"), *DISARM]
    with charging(*script) as supply:
        start_charging(supply)
        supply.arm_watchdog(30.0)
        supply.safe_state()
        supply.close()  # disarmed already: close sends nothing more
    assert supply.transport.closed


def test_safe_state_leaves_the_watchdog_armed_when_the_output_stays_on():
    script = [*armed("30"), ("OUTP OFF,(@1)", None), ("OUTP? (@1)", "1")]
    with connected(*script) as supply:
        supply.connect()
        supply.arm_watchdog(30.0)
        with pytest.raises(InstrumentError, match="output still on after OUTP OFF"):
            supply.safe_state()  # the watchdog is the last thing left that can switch it off


def test_a_watchdog_that_will_not_switch_off_does_not_fail_the_safe_state_and_close_tries_again():
    script = [*armed("30"), ("OUTP OFF,(@1)", None), ("OUTP? (@1)", "0"),
              ("OUTP:PROT:WDOG OFF", None), ("SYST:ERR?", '-100,"Command error"'), ("SYST:ERR?", OK),
              ("OUTP? (@1)", "0"), *DISARM]
    with connected(*script) as supply:
        supply.connect()
        supply.arm_watchdog(30.0)
        supply.safe_state()  # the output is off, confirmed: that is the safe state
        supply.close()
    assert supply.transport.closed


def test_close_disarms_a_watchdog_left_armed_by_a_session_without_a_safe_state():
    with connected(*armed("30"), ("OUTP? (@1)", "0"), *DISARM) as supply:  # as `cycler bench check`: configure, close
        supply.connect()
        supply.arm_watchdog(30.0)
        supply.close()
    assert supply.transport.closed


def test_close_after_a_failed_safe_state_leaves_the_watchdog_armed_to_switch_the_output_off():
    script = [*armed("30"), ("OUTP OFF,(@1)", None), ("OUTP? (@1)", "1"), ("OUTP? (@1)", "1")]
    with connected(*script) as supply:  # nothing after the second OUTP?: no OUTP:PROT:WDOG OFF
        supply.connect()
        supply.arm_watchdog(30.0)
        with pytest.raises(InstrumentError, match="output still on"):
            supply.safe_state()
        supply.close()
    assert supply.transport.closed


def connect_after(condition: int, *script: tuple[str, str | None]) -> Script:
    """CONNECT, with STAT:QUES:COND? answering `condition` and `script` after it."""
    at = CONNECT.index(("STAT:QUES:COND? (@1)", "0"))
    return [*CONNECT[:at], ("STAT:QUES:COND? (@1)", str(condition)), *script, *CONNECT[at + 1:]]


# A dead host's trip: PROT latched, the watchdog still on, the programmed state still on (OUTP? 1)
# until connect switches it off; only then is the trip cleared.
DEAD_HOST_CONNECT = connect_after(2048, ("OUTP:PROT:WDOG?", "1"), ("OUTP? (@1)", "0"), ("OUTP:PROT:CLE (@1)", None),
                                  ("SYST:ERR?", OK), ("STAT:QUES:COND? (@1)", "0"))
DEAD_HOST_CONNECT[DEAD_HOST_CONNECT.index(("OUTP? (@1)", "0"))] = ("OUTP? (@1)", "1")  # found on


def test_connect_clears_a_watchdog_trip_a_dead_host_left_once_the_output_is_off_and_reports_it():
    with expected_protocol(on_slot(1), DEAD_HOST_CONNECT) as supply:
        supply.connect()
    assert supply.watchdog_trip_found is True
    assert supply.output_found_on is True  # programmed on when the host died: the trip did not change that


def test_connect_reports_no_watchdog_trip_when_there_was_none():
    with connected() as supply:
        supply.connect()
    assert supply.watchdog_trip_found is False


def test_prot_with_the_watchdog_off_is_a_coupled_fault_and_refused_as_any_other():
    script = connect_after(2048, ("OUTP:PROT:WDOG?", "0"))
    script = script[:script.index(("OUTP:PROT:WDOG?", "0")) + 1]
    refused = re.escape("output disabled by a protection fault on a coupled channel or by the I/O watchdog (PROT)")
    with expected_protocol(on_slot(1), script) as supply:
        with pytest.raises(InstrumentError, match=refused + ".*OUTP:PROT:CLE"):
            supply.connect()
    assert supply.watchdog_trip_found is False


def test_prot_with_another_fault_is_refused_without_asking_about_the_watchdog():
    script = connect_after(2048 | 1)
    script = script[:script.index(("STAT:QUES:COND? (@1)", str(2048 | 1))) + 1]
    with expected_protocol(on_slot(1), script) as supply:
        with pytest.raises(InstrumentError, match="over-voltage protection tripped; output disabled by a protection"):
            supply.connect()


def test_arming_clears_a_watchdog_trip_that_happened_with_the_output_off():
    script = [("STAT:QUES:COND? (@1)", "2048"), ("OUTP:PROT:WDOG?", "1"), ("OUTP? (@1)", "0"),
              ("OUTP:PROT:CLE (@1)", None), ("SYST:ERR?", OK),
              ("OUTP:PROT:WDOG:DEL 30", None), ("OUTP:PROT:WDOG ON", None), ("SYST:ERR?", OK)]
    with connected(*script) as supply:  # a resume waiting, silent, for its operator after configure armed it
        supply.connect()
        assert supply.arm_watchdog(30.0) == 30.0
    assert supply.watchdog_trip_found is True


def test_a_watchdog_trip_is_never_cleared_while_the_output_is_programmed_on():
    script = [("STAT:QUES:COND? (@1)", "2048"), ("OUTP:PROT:WDOG?", "1"), ("OUTP? (@1)", "1"),
              ("OUTP:PROT:WDOG:DEL 30", None), ("OUTP:PROT:WDOG ON", None), ("SYST:ERR?", OK)]
    with connected(*script) as supply:  # OUTP:PROT:CLE would switch it back on
        supply.connect()
        supply.arm_watchdog(30.0)
    assert supply.watchdog_trip_found is False


def test_a_mainframe_that_does_not_know_the_watchdog_runs_without_one():
    script = [(message, '-113,"Undefined header"') if (message, reply) == ("SYST:ERR?", OK) and previous ==
              ("OUTP:PROT:WDOG OFF", None) else (message, reply) for previous, (message, reply) in
              zip([None, *CONNECT], CONNECT)]
    at = script.index(("SYST:ERR?", '-113,"Undefined header"'))
    script.insert(at + 1, ("SYST:ERR?", OK))
    with expected_protocol(on_slot(1), script + [("OUTP OFF,(@1)", None), ("OUTP? (@1)", "0")]) as supply:
        supply.connect()
        assert supply.arm_watchdog(30.0) is None  # nothing sent
        supply.disarm_watchdog()
        supply.safe_state()


def test_another_error_to_the_watchdog_command_at_connect_is_an_instrument_error():
    at = CONNECT.index(("OUTP:PROT:WDOG OFF", None))
    script = [*CONNECT[:at + 1], ("SYST:ERR?", '-222,"Data out of range"'), ("SYST:ERR?", OK)]
    with expected_protocol(on_slot(1), script) as supply:
        with pytest.raises(InstrumentError, match=re.escape("reported -222,\"Data out of range\" (last command "
                                                            "sent: 'OUTP:PROT:WDOG OFF')")):
            supply.connect()


# --- the simulator against the stack model (noise off: exact) ----------------------------------------

CELL = StackParameters(layers=1, layer_capacity_Ah=0.2, r0_ohm=0.25, r1_ohm=0.15, interconnect_ohm=0.01,
                       initial_soc=0.5)


def simulated(**config):
    clock = VirtualClock()
    world = SimWorld(StackModel(CELL, seed=1), clock)
    quiet = {"voltage_noise_V": 0.0, "current_noise_A": 0.0}
    sim = SimKeysightN6705c(world, "analyzer", KeysightN6705cSimConfig(**(quiet | config)))
    return sim, world, clock


def send(sim, *messages: str) -> None:
    for message in messages:
        assert sim.handle(message) is None, message
    assert sim.handle("SYST:ERR?") == OK


SEPARATE_LIMITS = ("CURR:LIM:COUP 0,(@1)",)


def test_sim_identity_module_and_reset_state():
    sim, _, _ = simulated()
    assert sim.handle("*IDN?") == IDN
    assert sim.handle("SYST:CHAN:MOD? (@1)") == "N6781A"
    queries = ["EMUL? (@1)", "FUNC? (@1)", "VOLT:RANG? (@1)", "VOLT? (@1)", "CURR:LIM? (@1)", "CURR:LIM:NEG? (@1)",
               "CURR:LIM:COUP? (@1)", "VOLT:PROT:REM? (@1)", "CURR:PROT:STAT? (@1)", "OUTP? (@1)"]
    assert [sim.handle(q) for q in queries] == ["PS2Q", "VOLT", "+2.00000000E+01", "+0.00000000E+00",
                                                "+1.00000000E+00", "-1.00000000E+00", "1", "+2.20000000E+01",
                                                "0", "0"]


def test_sim_long_and_short_forms_reach_the_same_settings():
    sim, _, _ = simulated()
    send(sim, "SOURce:CURRent:LIMit:POSitive:IMMediate:AMPLitude 0.25, (@1)", ":sour:volt:lev 3.3,(@1)")
    assert sim.handle("CURR:LIM? (@1)") == "+2.50000000E-01"
    assert sim.handle("SOUR:VOLT:LEV:IMM:AMPL? (@1)") == "+3.30000000E+00"


@pytest.mark.parametrize("message, error", [
    ("VOLT 4.2", '-109,"Missing parameter; a channel list (@n) is required"'),
    ("SYST:CHAN:MOD? (@2)", '-222,"Data out of range; no module in that channel"'),
    ("VOLT 21,(@1)", '-222,"Data out of range"'),
    ("SOUR:VOLT:PROT 4.5, @(1)", '-113,"Undefined header"'),  # qcodes' N6705B slip (reference §2)
    ("EMUL BATT,(@1)", '-221,"Settings conflict; emulation BATTERY is not simulated"'),
    ("EMUL PS4Q,(@1)", '-221,"Settings conflict; emulation PS4Q is not simulated"'),
    ("CURR:LIM:NEG 0.5,(@1)", '-222,"Data out of range"'),  # the sink limit is a negative number
])
def test_sim_refuses_with_the_standard_errors(message, error):
    sim, _, _ = simulated()
    assert sim.handle(message) is None
    assert sim.handle("SYST:ERR?") == error


def test_sim_with_tracking_the_negative_limit_follows_the_positive_and_without_it_stands_apart():
    sim, _, _ = simulated()
    send(sim, "CURR:LIM 0.5,(@1)")
    assert sim.handle("CURR:LIM:NEG? (@1)") == "-5.00000000E-01"
    send(sim, "CURR:LIM:NEG -0.3,(@1)")
    assert sim.handle("CURR:LIM? (@1)") == "+3.00000000E-01"  # tracking: whichever is set
    send(sim, "CURR:LIM:COUP 0,(@1)", "CURR:LIM:NEG -0.2,(@1)")
    assert (sim.handle("CURR:LIM? (@1)"), sim.handle("CURR:LIM:NEG? (@1)")) == ("+3.00000000E-01", "-2.00000000E-01")


def test_sim_the_20_V_range_holds_1_A_the_6_V_range_3_A_and_a_lower_range_clamps_the_settings():
    sim, _, _ = simulated()
    send(sim, "VOLT 10,(@1)")
    assert sim.handle("CURR:LIM 1.5,(@1)") is None
    assert sim.handle("SYST:ERR?") == '-222,"Data out of range"'
    send(sim, "VOLT:RANG 5,(@1)", "CURR:LIM 2.5,(@1)")  # 5 V: the 6 V range holds it
    assert sim.handle("VOLT:RANG? (@1)") == "+6.00000000E+00"
    assert sim.handle("VOLT? (@1)") == "+6.00000000E+00"  # 10 V, clamped into the range
    assert sim.handle("CURR:LIM:NEG? (@1)") == "-2.50000000E+00"


def drive(sim, world, *settings: str) -> None:
    send(sim, *SEPARATE_LIMITS, *settings, "OUTP ON,(@1)")
    world.sync()  # the current settles to the new settings at the next sync, as at the next reply


def test_sim_cc_charge_holds_the_positive_limit_and_flags_it():
    sim, world, _ = simulated()
    drive(sim, world, "VOLT 4.27,(@1)", "CURR:LIM 0.0667,(@1)", "CURR:LIM:NEG 0,(@1)")
    assert world.stack.current_A == 0.0667
    assert sim.handle("STAT:QUES:COND? (@1)") == "128"
    assert sim.handle("MEAS:CURR? (@1)") == "+6.67000000E-02"


def test_sim_cc_discharge_sinks_the_negative_limit_and_flags_it():
    sim, world, _ = simulated()
    drive(sim, world, "VOLT 2.95,(@1)", "CURR:LIM 0,(@1)", "CURR:LIM:NEG -0.2,(@1)")
    assert world.stack.current_A == -0.2
    assert sim.handle("STAT:QUES:COND? (@1)") == "256"
    assert sim.handle("MEAS:CURR? (@1)") == "-2.00000000E-01"


def test_sim_cv_drives_the_current_that_holds_the_terminals_at_the_set_voltage():
    sim, world, _ = simulated()
    emf, resistance = world.stack.thevenin()
    drive(sim, world, f"VOLT {emf + 0.01:.6f},(@1)", "CURR:LIM 1,(@1)", "CURR:LIM:NEG -1,(@1)")
    assert world.stack.current_A == pytest.approx((round(emf + 0.01, 6) - emf) / resistance, rel=1e-12)
    assert float(sim.handle("MEAS:VOLT? (@1)")) == pytest.approx(emf + 0.01, abs=1e-6)
    assert sim.handle("STAT:QUES:COND? (@1)") == "0"


def test_sim_in_ps1q_it_cannot_pull_a_cell_down():
    sim, world, _ = simulated()
    send(sim, "EMUL PS1Q,(@1)")
    drive(sim, world, "VOLT 2.95,(@1)", "CURR:LIM 0.2,(@1)", "CURR:LIM:NEG -0.2,(@1)")
    assert world.stack.current_A == 0.0


def test_sim_with_the_output_off_nothing_flows_and_the_cells_voltage_is_read():
    sim, world, _ = simulated()
    emf, _ = world.stack.thevenin()
    assert float(sim.handle("MEAS:VOLT? (@1)")) == pytest.approx(emf, abs=1e-8)
    assert sim.handle("MEAS:CURR? (@1)") == "+0.00000000E+00"


def test_sim_over_voltage_trip_switches_off_and_latches_until_cleared():
    sim, world, _ = simulated()
    drive(sim, world, "VOLT:PROT:REM 3.9,(@1)", "VOLT 4.27,(@1)", "CURR:LIM 0.5,(@1)")
    assert world.stack.current_A == 0.0 and not sim.modules[1].output_on
    assert sim.handle("STAT:QUES:COND? (@1)") == "1"
    assert sim.handle("OUTP ON,(@1)") is None
    assert sim.handle("SYST:ERR?") == '-221,"Settings conflict; protection tripped, clear it first"'
    send(sim, "OUTP:PROT:CLE (@1)", "VOLT:PROT:REM 4.5,(@1)", "OUTP ON,(@1)")
    world.sync()
    assert sim.modules[1].output_on and sim.handle("STAT:QUES:COND? (@1)") == "128"


def test_sim_over_current_protection_trips_when_the_output_reaches_a_current_limit():
    sim, world, _ = simulated()
    drive(sim, world, "CURR:PROT:STAT 1,(@1)", "VOLT 4.27,(@1)", "CURR:LIM 0.0667,(@1)")
    assert world.stack.current_A == 0.0 and not sim.modules[1].output_on
    assert sim.handle("STAT:QUES:COND? (@1)") == "2"


def test_sim_changing_the_priority_switches_off_and_resets_the_settings():
    sim, world, _ = simulated()
    drive(sim, world, "VOLT 4.27,(@1)", "CURR:LIM 0.0667,(@1)")
    send(sim, "FUNC CURR,(@1)")
    assert not sim.modules[1].output_on
    assert (sim.handle("FUNC? (@1)"), sim.handle("VOLT? (@1)"), sim.handle("CURR:LIM:COUP? (@1)")) == (
        "CURR", "+0.00000000E+00", "1")


def test_sim_in_current_priority_the_current_holds_until_the_voltage_limit():
    sim, world, _ = simulated()
    emf, resistance = world.stack.thevenin()
    send(sim, "FUNC CURR,(@1)")
    drive(sim, world, "CURR 0.1,(@1)", "VOLT:LIM 4.27,(@1)")
    assert world.stack.current_A == 0.1
    send(sim, f"VOLT:LIM {emf + 0.005:.6f},(@1)")
    world.sync()
    assert world.stack.current_A == pytest.approx((round(emf + 0.005, 6) - emf) / resistance, rel=1e-12)


def test_sim_snapshot_and_restore_carry_the_settings_and_the_drive():
    sim, world, _ = simulated()
    drive(sim, world, "VOLT 4.27,(@1)", "CURR:LIM 0.0667,(@1)", "CURR:LIM:NEG 0,(@1)")
    state = sim.snapshot()
    fresh, fresh_world, _ = simulated()
    fresh.restore(state)
    fresh.handle("OUTP? (@1)")
    assert fresh.snapshot() == state
    assert fresh_world.stack.current_A == world.stack.current_A == 0.0667


def test_sim_config_refuses_a_slot_the_mainframe_does_not_have():
    with pytest.raises(ValueError, match="less than or equal to 4"):
        KeysightN6705cSimConfig(output=5)


@pytest.mark.parametrize("more, refused", [({5: "second"}, "channels 1 to 4, not 5"),
                                           ({1: "second"}, "channel 1 already holds the module of `output`")])
def test_sim_config_refuses_a_further_module_outside_the_free_slots(more, refused):
    with pytest.raises(ValueError, match=refused):
        KeysightN6705cSimConfig(output=1, more_modules=more)


def test_a_simulation_refuses_a_further_module_on_a_stack_it_does_not_have():
    with pytest.raises(ValueError, match="instruments.analyzer: no simulated stack 'second'"):
        SimulationConfig(stack=CELL, instruments={"analyzer": {"kind": "keysight-n6705c", "more_modules": {2: "second"}}})


def test_a_simulation_wires_each_further_module_to_its_own_stack():
    config = SimulationConfig(stack=CELL, more_stacks={"second": CELL}, instruments={
        "analyzer": {"kind": "keysight-n6705c", "output": 3, "more_modules": {"1": "second"}}})  # TOML keys are text
    simulation = build_simulation(config, VirtualClock())
    modules = simulation.instruments["analyzer"].modules
    assert sorted(modules) == [1, 3]
    assert modules[3].world is simulation.worlds["main"] and modules[1].world is simulation.worlds["second"]


def two_modules():
    """A mainframe with a module in slot 1 on one cell and one in slot 2 on another, noise off."""
    clock = VirtualClock()
    first, second = (SimWorld(StackModel(CELL, seed=seed), clock) for seed in (1, 2))
    config = KeysightN6705cSimConfig(voltage_noise_V=0.0, current_noise_A=0.0, more_modules={2: "second"})
    return SimKeysightN6705c(first, "analyzer", config, {"second": second}), first, second, clock


def test_sim_modules_in_two_slots_drive_their_own_stacks():
    sim, first, second, clock = two_modules()
    assert [sim.handle(f"SYST:CHAN:MOD? (@{slot})") for slot in (1, 2)] == ["N6781A", "N6781A"]
    send(sim, "CURR:LIM:COUP 0,(@1)", "CURR:LIM 0.1,(@1)", "CURR:LIM:NEG 0,(@1)", "VOLT 4.27,(@1)", "OUTP ON,(@1)")
    send(sim, "CURR:LIM:COUP 0,(@2)", "CURR:LIM 0,(@2)", "CURR:LIM:NEG -0.05,(@2)", "VOLT 2.9,(@2)", "OUTP ON,(@2)")
    clock.sleep_until(60.0)
    assert sim.handle("MEAS:CURR? (@1)") == "+1.00000000E-01" and sim.handle("MEAS:CURR? (@2)") == "-5.00000000E-02"
    assert (sim.handle("STAT:QUES:COND? (@1)"), sim.handle("STAT:QUES:COND? (@2)")) == ("128", "256")
    assert first.stack.charged_Ah == pytest.approx(0.1 * 60 / 3600, rel=1e-12) and first.stack.discharged_Ah == 0
    assert second.stack.discharged_Ah == pytest.approx(0.05 * 60 / 3600, rel=1e-12) and second.stack.charged_Ah == 0
    volts = [float(sim.handle(f"MEAS:VOLT? (@{slot})")) for slot in (1, 2)]
    assert volts == [pytest.approx(world.stack.terminal_voltage_V(), abs=1e-8) for world in (first, second)]
    assert volts[0] > volts[1] + 0.01  # the charged cell above the discharged one: each slot reads its own
    send(sim, "OUTP OFF,(@2)")  # one slot's output, not the other's
    assert (sim.modules[1].output_on, sim.modules[2].output_on) == (True, False)
    sim.handle("SYST:CHAN:MOD? (@3)")  # an empty slot
    assert sim.handle("SYST:ERR?") == '-222,"Data out of range; no module in that channel"'


def test_sim_the_watchdog_trips_every_module_at_its_moment_in_its_own_world():
    sim, first, second, clock = two_modules()
    for slot, stack_A in ((1, "0.1"), (2, "0.05")):
        send(sim, f"CURR:LIM:COUP 0,(@{slot})", f"CURR:LIM {stack_A},(@{slot})", f"CURR:LIM:NEG 0,(@{slot})",
             f"VOLT 4.27,(@{slot})", f"OUTP ON,(@{slot})")
    send(sim, *WATCHDOG)  # the mainframe's: 5 s after the last I/O, at test time 0
    clock.sleep_until(100.0)
    second.sync()  # the second stack's world is read first (its DAQ, say): both still trip at 5 s
    first.sync()
    assert second.stack.charged_Ah == pytest.approx(0.05 * 5 / 3600, rel=1e-12)
    assert first.stack.charged_Ah == pytest.approx(0.1 * 5 / 3600, rel=1e-12)
    assert (sim.handle("STAT:QUES:COND? (@1)"), sim.handle("STAT:QUES:COND? (@2)")) == ("2048", "2048")


def test_sim_snapshot_restore_and_reset_cover_every_module():
    sim, first, second, clock = two_modules()
    send(sim, "CURR:LIM:COUP 0,(@2)", "CURR:LIM 0.07,(@2)", "VOLT 4.1,(@2)", "OUTP ON,(@2)", *WATCHDOG)
    state = sim.snapshot()
    assert state["more_modules"]["2"]["voltage_V"] == 4.1 and state["output_on"] is False  # slot 1 at the top
    fresh, _, fresh_second, _ = two_modules()
    fresh.restore(json.loads(json.dumps(state)))  # as read back from a checkpoint
    fresh.handle("OUTP? (@2)")
    assert fresh.snapshot() == {**state, "last_io_s": fresh.last_io_s}
    assert fresh_second.stack.current_A == pytest.approx(0.07)
    send(fresh, "*RST")
    assert not any(module.output_on for module in fresh.modules.values()) and fresh.modules[2].voltage_V == 0.0


# --- two slots, two channels: the drivers share the mainframe -------------------------------------------


def two_slot_drivers():
    """Drivers of slots 1 and 2 of one simulated mainframe, on one connection, sharing its Mainframe."""
    sim, first, second, clock = two_modules()
    link, mainframe = InProcessTransport(sim, "sim://analyzer"), Mainframe()
    return [KeysightN6705c(link, output=slot, mainframe=mainframe) for slot in (1, 2)], sim, (first, second), clock


def charge_at(supply: KeysightN6705c, amps: float) -> None:
    supply.set_protection(4.5675, 0.462)
    supply.regulate(4.27, amps, 0.0)
    supply.set_output(True)


def test_the_watchdog_stays_armed_until_the_last_slots_channel_disarms_it():
    (one, two), sim, _, _ = two_slot_drivers()
    for supply in (one, two):
        supply.connect()
    assert one.arm_watchdog(30.0) == 30.0
    assert two.arm_watchdog(60.0) == 60.0  # the mainframe's one delay: the longest any channel needs
    assert (sim.watchdog_on, sim.watchdog_delay_s) == (True, 60.0)
    one.safe_state()  # cell 1's run ends ...
    assert (sim.watchdog_on, sim.watchdog_delay_s) == (True, 60.0)  # ... cell 2's still has its watchdog
    two.safe_state()
    assert sim.watchdog_on is False
    for supply in (one, two):
        supply.check_errors()


def test_after_a_dead_host_every_slots_connect_finds_and_clears_its_trip():
    (one, two), sim, worlds, clock = two_slot_drivers()
    for supply, amps in ((one, 0.1), (two, 0.05)):
        supply.connect()
        charge_at(supply, amps)
    one.arm_watchdog(30.0)
    two.arm_watchdog(30.0)
    clock.sleep_until(100.0)  # the host died at 0 s: both slots tripped at 30 s
    for world in worlds:
        world.sync()
    assert [module.latched for module in sim.modules.values()] == [2048, 2048]
    (one, two), mainframe = [KeysightN6705c(InProcessTransport(sim, "sim://analyzer"), output=slot)
                             for slot in (1, 2)], None  # a new host, on a new connection
    mainframe = one.mainframe = two.mainframe = Mainframe()
    for supply in (one, two):
        supply.connect()  # the first switches the watchdog off; the second still knows the trip for one
        assert (supply.watchdog_trip_found, supply.output_found_on) == (True, True)
    assert [(module.latched, module.output_on) for module in sim.modules.values()] == [(0, False), (0, False)]
    assert mainframe.watchdog_found_on is True and sim.watchdog_on is False


def test_a_slots_connect_that_is_not_the_first_leaves_the_mainframes_error_queue_and_watchdog_alone():
    (one, two), sim, _, _ = two_slot_drivers()
    one.connect()
    one.arm_watchdog(30.0)
    sent = []
    real = sim.handle
    sim.handle = lambda message: sent.append(message) or real(message)
    two.connect()
    assert "*CLS" not in sent and not any(message.startswith("OUTP:PROT:WDOG") for message in sent)
    assert sim.watchdog_on is True  # slot 1's channel armed it; slot 2's connect must not switch it off


# --- the simulated watchdog, on the world's clock ---------------------------------------------------

CHARGE_A = 0.1
WATCHDOG = ("OUTP:PROT:WDOG:DEL 5", "OUTP:PROT:WDOG ON")


def charging_with_watchdog(*settings: str):
    """A simulated mainframe charging the cell at CHARGE_A (CL+) from test time 0, its watchdog
    armed at 5 s (or as `settings` say): the last I/O is at 0."""
    sim, world, clock = simulated()
    drive(sim, world, f"CURR:LIM {CHARGE_A},(@1)", "CURR:LIM:NEG 0,(@1)", "VOLT 4.27,(@1)",
          *(settings or WATCHDOG))
    assert world.stack.current_A == CHARGE_A
    return sim, world, clock


def charged_for(seconds: float) -> float:
    return CHARGE_A * seconds / 3600.0


def test_sim_watchdog_trips_at_exactly_the_last_io_plus_its_delay():
    sim, world, clock = charging_with_watchdog()
    clock.sleep_until(4.0)
    assert sim.handle("OUTP? (@1)") == "1"  # I/O at 4 s: the watchdog now trips at 9 s
    clock.sleep_until(100.0)  # silence; the next look comes much later
    world.sync()  # not I/O: any reader of the world (a DAQ) makes the physics catch up
    assert world.stack.charged_Ah == pytest.approx(charged_for(9.0), rel=1e-12)  # nothing after 9 s
    assert world.stack.current_A == 0.0
    assert sim.handle("STAT:QUES:COND? (@1)") == "2048"  # PROT, latched
    assert sim.handle("OUTP? (@1)") == "1"  # the programmed state is not changed (N6700C guide p. 158)
    assert sim.handle("MEAS:CURR? (@1)") == "+0.00000000E+00"


def test_sim_a_message_long_after_the_delay_finds_the_output_tripped_at_the_delay():
    sim, world, clock = charging_with_watchdog()
    clock.sleep_until(100.0)
    assert sim.handle("MEAS:CURR? (@1)") == "+0.00000000E+00"  # this message is I/O after the trip, not before
    assert world.stack.charged_Ah == pytest.approx(charged_for(5.0), rel=1e-12)
    assert sim.modules[1].latched == 2048


def test_sim_watchdog_does_not_trip_before_its_delay():
    sim, world, clock = charging_with_watchdog()
    clock.sleep_until(4.999)
    world.sync()
    assert world.stack.current_A == CHARGE_A and world.stack.charged_Ah == pytest.approx(charged_for(4.999), rel=1e-12)
    assert sim.modules[1].latched == 0


def test_sim_io_keeps_the_watchdog_from_tripping():
    sim, world, clock = charging_with_watchdog()
    for t in range(4, 101, 4):  # a host that speaks every 4 s: never 5 s of silence
        clock.sleep_until(float(t))
        sim.handle("MEAS:CURR? (@1)")
    assert sim.modules[1].latched == 0 and world.stack.current_A == CHARGE_A
    clock.sleep_until(200.0)
    world.sync()
    assert world.stack.charged_Ah == pytest.approx(charged_for(105.0), rel=1e-12)  # off at 100 + 5 s


def test_sim_the_trip_takes_effect_at_its_moment_when_another_instrument_reads_first():
    sim, world, clock = charging_with_watchdog()
    daq = SimDaq970a(world, "daq", Daq970aSimConfig(layer_channels="101", voltage_noise_V=0.0))
    daq.handle("CONF:VOLT:DC AUTO,(@101)")
    daq.handle("ROUT:SCAN (@101)")
    clock.sleep_until(60.0)
    layer_V = float(daq.handle("READ?"))  # the DAQ is read first, 55 s after the trip
    assert world.stack.charged_Ah == pytest.approx(charged_for(5.0), rel=1e-12)
    assert world.stack.current_A == 0.0
    emf_V, _ = world.stack.thevenin()
    assert layer_V == pytest.approx(emf_V, abs=1e-6)  # no current through the cell: it reads its emf


def test_sim_a_shorter_delay_takes_over_from_the_pending_check():
    sim, world, clock = charging_with_watchdog("OUTP:PROT:WDOG:DEL 60", "OUTP:PROT:WDOG ON")
    clock.sleep_until(1.0)
    send(sim, "OUTP:PROT:WDOG:DEL 5")  # last I/O: its SYST:ERR? at 1 s
    clock.sleep_until(100.0)
    world.sync()
    assert world.stack.charged_Ah == pytest.approx(charged_for(6.0), rel=1e-12)


def test_sim_a_longer_delay_holds_the_trip_off():
    sim, world, clock = charging_with_watchdog()
    clock.sleep_until(1.0)
    send(sim, "OUTP:PROT:WDOG:DEL 30")
    clock.sleep_until(30.9)
    world.sync()
    assert sim.modules[1].latched == 0
    clock.sleep_until(100.0)
    world.sync()
    assert world.stack.charged_Ah == pytest.approx(charged_for(31.0), rel=1e-12)


def test_sim_the_watchdog_switched_off_does_not_trip():
    sim, world, clock = charging_with_watchdog()
    clock.sleep_until(1.0)
    send(sim, "OUTP:PROT:WDOG OFF")
    clock.sleep_until(1000.0)
    world.sync()
    assert sim.modules[1].latched == 0 and world.stack.charged_Ah == pytest.approx(charged_for(1000.0), rel=1e-12)
    assert sim.handle("OUTP:PROT:WDOG?") == "0"


def test_sim_rst_switches_the_watchdog_off_and_its_delay_back_to_60_s():
    sim, world, clock = charging_with_watchdog()
    send(sim, "*RST")
    assert (sim.handle("OUTP:PROT:WDOG?"), sim.handle("OUTP:PROT:WDOG:DEL?")) == ("0", "+6.00000000E+01")
    drive(sim, world, f"CURR:LIM {CHARGE_A},(@1)", "CURR:LIM:NEG 0,(@1)", "VOLT 4.27,(@1)")
    clock.sleep_until(1000.0)
    world.sync()
    assert sim.modules[1].latched == 0 and world.stack.current_A == CHARGE_A


def test_sim_clearing_a_trip_returns_the_output_to_its_programmed_state():
    sim, world, clock = charging_with_watchdog()
    clock.sleep_until(10.0)
    send(sim, "OUTP:PROT:CLE (@1)")  # programmed on: on again (which is why a driver switches it off first)
    world.sync()
    assert sim.modules[1].latched == 0 and world.stack.current_A == CHARGE_A
    clock.sleep_until(100.0)
    send(sim, "OUTP OFF,(@1)", "OUTP:PROT:CLE (@1)")  # tripped again at 15 s; cleared once off: it stays off
    world.sync()
    assert sim.modules[1].latched == 0 and world.stack.current_A == 0.0
    assert world.stack.charged_Ah == pytest.approx(charged_for(5.0 + 5.0), rel=1e-12)


@pytest.mark.parametrize("message, reply", [
    ("OUTP:PROT:WDOG ON,(@1)", '-108,"Parameter not allowed"'),  # the mainframe's: no channel list
    ("OUTP:PROT:WDOG:DEL 30,(@1)", '-108,"Parameter not allowed"'),
    ("OUTP:PROT:WDOG:DEL 0", '-222,"Data out of range"'),
    ("OUTP:PROT:WDOG:DEL 3601", '-222,"Data out of range"'),
    ("OUTP:PROT:WDOG MAYBE", '-224,"Illegal parameter value"'),
])
def test_sim_refuses_a_watchdog_setting_it_does_not_have(message, reply):
    sim, _, _ = simulated()
    assert sim.handle(message) is None
    assert sim.handle("SYST:ERR?") == reply
    assert (sim.watchdog_on, sim.watchdog_delay_s) == (False, 60.0)


def test_sim_watchdog_queries_answer_from_its_state():
    sim, _, _ = simulated()
    send(sim, "OUTPut:PROTection:WDOG:DELay 12.4", "OUTPut:PROTection:WDOG:STATe 1")
    assert [sim.handle(q) for q in ("OUTP:PROT:WDOG?", "OUTP:PROT:WDOG:DEL?", "OUTP:PROT:WDOG:DEL? MIN",
                                    "OUTP:PROT:WDOG:DEL? MAX")] == ["1", "+1.20000000E+01", "+1.00000000E+00",
                                                                    "+3.60000000E+03"]


def restored_after(gap_s: float):
    """The state of a charging mainframe (watchdog at 5 s, last I/O at 0 s), restored in a new
    simulation `gap_s` later, as a resume after a host crash restores it from the checkpoint."""
    sim, world, _ = charging_with_watchdog()
    state, stack = sim.snapshot(), world.stack.snapshot()
    clock = VirtualClock(start_s=gap_s)
    fresh_world = SimWorld(StackModel(CELL, seed=1), clock)
    fresh = SimKeysightN6705c(fresh_world, "analyzer", KeysightN6705cSimConfig(voltage_noise_V=0.0,
                                                                               current_noise_A=0.0))
    fresh_world.stack.restore(stack)
    fresh.restore(state)
    fresh_world.set_time(0.0)
    fresh_world.sync()  # as Simulation.restore does: the hardware carried on over the gap
    return fresh, fresh_world


def test_sim_restored_after_a_gap_longer_than_its_delay_has_tripped_at_the_delay():
    fresh, world = restored_after(3600.0)
    assert fresh.modules[1].latched == 2048 and world.stack.current_A == 0.0
    assert world.stack.charged_Ah == pytest.approx(charged_for(5.0), rel=1e-12)  # on for 5 s of the hour


def test_sim_restored_after_a_gap_shorter_than_its_delay_still_charges():
    fresh, world = restored_after(4.0)
    assert fresh.modules[1].latched == 0 and world.stack.current_A == CHARGE_A


# --- the driver and the simulator ------------------------------------------------------------------


def simulated_driver(slot: int = 1):
    sim, world, clock = simulated(output=slot)
    return KeysightN6705c(InProcessTransport(sim, "sim://analyzer"), output=slot), sim, world, clock


def test_the_driver_charges_discharges_and_rests_the_simulated_cell():
    supply, sim, world, clock = simulated_driver(slot=3)
    stack = world.stack
    supply.connect()
    supply.set_protection(4.5675, 0.462)
    supply.regulate(4.27, 0.0667, 0.0)
    supply.set_output(True)
    clock.sleep_until(60.0)
    voltage, current = supply.measure()
    assert current == 0.0667 and supply.regulation() == "CL+"
    assert voltage == pytest.approx(stack.terminal_voltage_V(), abs=1e-8)
    assert stack.charged_Ah == pytest.approx(0.0667 * 60.0 / 3600.0, rel=1e-12)
    supply.regulate(2.95, 0.0, 0.2)
    clock.sleep_until(120.0)
    assert supply.measure()[1] == -0.2 and supply.regulation() == "CL-"
    assert stack.discharged_Ah == pytest.approx(0.2 * 60.0 / 3600.0, rel=1e-12)
    supply.set_output(False)
    clock.sleep_until(180.0)
    voltage, current = supply.measure()
    assert current == 0.0 and voltage == pytest.approx(stack.terminal_voltage_V(), abs=1e-8)
    assert stack.charged_Ah + stack.discharged_Ah == pytest.approx((0.0667 + 0.2) * 60.0 / 3600.0, rel=1e-12)
    supply.check_errors()
    supply.safe_state()
    assert sim.modules[3].output_on is False


def test_the_driver_reports_the_simulated_over_voltage_trip():
    supply, sim, world, clock = simulated_driver()
    supply.connect()
    supply.set_protection(3.9, 0.462)  # below where the charge is headed
    supply.regulate(3.9, 0.0667, 0.0)
    sim.modules[1].ovp_V = 3.7  # as if armed lower by hand at the front panel
    supply.set_output(True)
    clock.sleep_until(1.0)
    assert supply.output_is_on() is False
    with pytest.raises(InstrumentError, match="over-voltage protection tripped"):
        supply.check_errors()


def charging_driver():
    """The driver charging the simulated cell at 66.7 mA (CL+) from test time 0, its watchdog armed
    at 30 s; every message so far at 0 s."""
    supply, sim, world, clock = simulated_driver()
    start_charging(supply)
    assert supply.arm_watchdog(30.0) == 30.0
    assert (sim.watchdog_on, sim.watchdog_delay_s) == (True, 30.0)
    world.sync()
    assert world.stack.current_A == 0.0667
    return supply, sim, world, clock


def test_a_host_that_goes_silent_leaves_the_simulated_output_off_after_the_delay():
    supply, sim, world, clock = charging_driver()
    clock.sleep_until(600.0)
    world.sync()
    assert world.stack.charged_Ah == pytest.approx(0.0667 * 30.0 / 3600.0, rel=1e-12)
    assert supply.output_is_on() is True  # programmed on; disabled by the watchdog
    with pytest.raises(InstrumentError, match=re.escape("output disabled by a protection fault on a coupled channel "
                                                        "or by the I/O watchdog (PROT)")):
        supply.check_errors()


def test_the_next_host_finds_the_watchdog_trip_clears_it_and_the_output_stays_off():
    _, sim, world, clock = charging_driver()
    clock.sleep_until(600.0)  # the host died at 0 s
    successor = KeysightN6705c(InProcessTransport(sim, "sim://analyzer"), output=1)
    successor.connect()
    assert (successor.output_found_on, successor.watchdog_trip_found) == (True, True)
    assert (sim.modules[1].latched, sim.modules[1].output_on, sim.watchdog_on) == (0, False, False)
    successor.check_errors()  # nothing left latched: the run can go on
    clock.sleep_until(6000.0)
    world.sync()
    assert world.stack.charged_Ah == pytest.approx(0.0667 * 30.0 / 3600.0, rel=1e-12)  # nothing since the trip


def test_the_safe_state_leaves_the_simulated_watchdog_off_so_a_finished_run_never_trips():
    supply, sim, world, clock = charging_driver()
    clock.sleep_until(10.0)
    supply.safe_state()
    assert (sim.modules[1].output_on, sim.watchdog_on) == (False, False)
    clock.sleep_until(10_000.0)
    world.sync()
    assert sim.modules[1].latched == 0


# --- runs on the built-in bench -------------------------------------------------------------------


def test_cycler_run_capacity_check_on_the_n6781a_bench_finds_the_models_capacity(tmp_path):
    code, output = cycler("run", "capacity-check", "--bench", "sim-n6781a", cwd=tmp_path)
    assert code == 0, output
    summary = pd.read_csv(next((tmp_path / "runs").glob("*/summary.csv"))).iloc[0]
    simulation = load_bench("sim-n6781a").config.simulation
    capacity = StackModel(simulation.stack, seed=simulation.seed).capacity_Ah[0]  # the one layer's, 0.2006 Ah
    assert summary["Discharging Capacity / Ah"] == pytest.approx(capacity, rel=0.005)  # at C/3, 0.2004 Ah


def test_a_quick_capacity_check_logs_what_the_cell_counted(run_protocol):
    result = run_protocol(bench="sim-n6781a")  # at 1C, one-minute rests
    assert result.outcome.state == "completed"
    stack = result.simulation.world.stack
    summary = pd.read_csv(result.outcome.folder / "summary.csv").iloc[0]
    assert summary["Discharging Capacity / Ah"] == pytest.approx(stack.discharged_Ah, rel=0.002)
    assert summary["Charging Capacity / Ah"] == pytest.approx(stack.charged_Ah, rel=0.002)
    samples = samples_of(result)
    rests = samples[samples["Step Type"] == "REST"]
    assert rests["Current / A"].abs().max() < 1e-4  # output off: only the measurement noise
    assert rests["Voltage / V"].between(3.0, 4.3).all()


BENCH = """
name: my-analyzer
instruments:
  analyzer: {driver: keysight-n6705c, resource: "TCPIP::192.0.2.9::5025::SOCKET"%s}
channels:
  cell1:
    supply: analyzer
    dut: {id: cell-1, nominal_capacity_Ah: 0.2}
"""


@pytest.mark.parametrize("setting, problem", [
    ("", "output: the keysight-n6705c driver needs 'output': the mainframe channel (slot) of the N6781A wired to "
         "the DUT; accepted: 1, 2, 3, 4"),
    (", output: 5", "output: 5 is not accepted by the keysight-n6705c driver"),
    (", address: 3", "address: the keysight-n6705c driver takes no 'address' (settings it takes: output)"),
])
def test_a_bad_channel_setting_is_refused_naming_the_file_the_field_and_what_is_accepted(tmp_path, setting, problem):
    path = tmp_path / "analyzer.yaml"
    path.write_text(BENCH % setting)
    with pytest.raises(InvalidInput) as raised:
        load_bench(str(path))
    assert str(path) in str(raised.value) and problem in str(raised.value)


def test_a_simulated_bench_must_name_the_slot_its_simulation_wires(tmp_path):
    path = tmp_path / "wrong-slot.yaml"
    path.write_text('extends: sim-n6781a\ninstruments:\n  analyzer: {driver: keysight-n6705c, '
                    'resource: "sim://analyzer", output: 2}\n')
    with pytest.raises(InvalidInput, match="instruments.analyzer.output: 2, but the simulated supply has output 1"):
        load_bench(str(path))


# --- the watchdog in the runner: armed at configure, off at the safe state, and a host that dies ------


@pytest.mark.parametrize("tick_s, silence_s", [(0.25, 30.0), (1.0, 30.0), (6.0, 30.0), (10.0, 50.0), (60.0, 300.0)])
def test_the_watchdog_silence_is_five_ticks_and_never_under_30_s(tick_s, silence_s):
    assert watchdog_silence_s(tick_s) == silence_s


@pytest.mark.parametrize("tick_s, lost_meter_wait_s, silence_s", [(1.0, 4.0, 30.0), (1.0, 80.0, 162.0),
                                                                  (60.0, 8.0, 300.0), (60.0, 480.0, 1080.0)])
def test_the_watchdog_silence_outlasts_twice_a_tick_held_up_by_lost_meters(tick_s, lost_meter_wait_s, silence_s):
    # A live runner whose meter stopped answering waits 2 x its timeout on it every tick: the
    # output's watchdog must not take that for a dead host.
    assert watchdog_silence_s(tick_s, lost_meter_wait_s) == silence_s


def test_a_run_arms_the_watchdog_long_enough_for_its_slowest_meters(tmp_path, run_text):
    bench = tmp_path / "slow-chamber.toml"
    bench.write_text('extends = "sim-n6781a"\nname = "slow-chamber"\n\n[instruments]\n'
                     'chamber = { driver = "espec-chamber", resource = "sim://chamber", baud_rate = 9600, timeout_s = 40 }'
                     '\n\n[channels.cell1]\nchamber = "chamber"\n\n[simulation.instruments.chamber]\n'
                     'kind = "espec-chamber"\n')
    assert load_bench(str(bench)).config.lost_meter_wait_s() == 80.0  # the chamber, 2 x 40 s
    result = run_text("name: rest\nsteps:\n  - {step: rest, duration_s: 3}\n", bench=str(bench))
    assert result.outcome.state == "completed", result.outcome.reason
    armed = next(e for e in events_of(result.outcome.folder) if e["event"] == "instrument_watchdogs")
    assert armed["armed_s"] == {"supply": 162.0}  # 2 x (1 s tick + 80 s)
    assert result.simulation.instruments["analyzer"].watchdog_delay_s == 162.0


def test_a_meter_timeout_beyond_two_minutes_is_refused(tmp_path):
    bench = tmp_path / "patient.toml"
    bench.write_text('extends = "sim"\n\n[instruments]\ndaq = { driver = "keysight-daq970a", '
                     'resource = "sim://daq", timeout_s = 600 }\n')
    with pytest.raises(InvalidInput, match=r"patient\.toml, line 4: 'instruments\.daq\.timeout_s': .*less than or equal to 120"):
        load_bench(str(bench))


@pytest.mark.parametrize("tick_s, delay", [(1.0, "30"), (10.0, "50")])
def test_configure_arms_the_watchdog_after_the_protection_with_the_outputs_off(tick_s, delay):
    config = load_bench("sim-n6781a").config.channels["cell1"].model_copy(update={"tick_s": tick_s})
    with connected(*PROTECT, *armed(delay), ("OUTP OFF,(@1)", None), ("OUTP? (@1)", "0"), *DISARM) as supply:
        supply.connect()
        channel = Channel("cell1", config, SupplyDrive(supply), {}, VirtualClock())
        channel.configure(SafetyEnvelope.tightest(config.dut.safety))  # 4.35 V x 1.05, 0.44 A x 1.05
        assert dict(channel.watchdogs) == {"supply": float(delay)}
        channel.safe_state()


def test_configure_for_a_look_only_leaves_the_watchdog_off():
    config = load_bench("sim-n6781a").config.channels["cell1"]
    with connected(*PROTECT) as supply:  # a resume's preview: its operator may take minutes
        supply.connect()
        channel = Channel("cell1", config, SupplyDrive(supply), {}, VirtualClock())
        channel.configure(SafetyEnvelope.tightest(config.dut.safety), arm_watchdogs=False)
        assert dict(channel.watchdogs) == {}


def test_a_drive_whose_instrument_has_no_watchdog_records_none():
    class Unwatched(KeysightN6705c):
        def arm_watchdog(self, silence_s):
            return BidirectionalSupply.arm_watchdog(self, silence_s)  # the role's default

    drive = SupplyDrive(Unwatched(ScriptedTransport([]), output=1))
    assert dict(drive.arm_watchdog(30.0)) == {"supply": None}


class WatchesTheWatchdog(SilentReporter):
    def __init__(self, simulations: list):
        self.simulations, self.seen = simulations, set()

    def tick(self, status) -> None:
        analyzer = self.simulations[-1].instruments["analyzer"]
        self.seen.add((analyzer.watchdog_on, analyzer.watchdog_delay_s, analyzer.modules[1].latched))


def test_a_run_keeps_the_watchdog_armed_at_30_s_and_leaves_it_off(run_protocol, simulations):
    reporter = WatchesTheWatchdog(simulations)
    result = run_protocol(bench="sim-n6781a", reporter=reporter)
    assert result.outcome.state == "completed" and result.outcome.outputs_confirmed_off
    assert reporter.seen == {(True, 30.0, 0)}  # every tick: armed, never tripped
    analyzer = result.simulation.instruments["analyzer"]
    assert (analyzer.modules[1].output_on, analyzer.watchdog_on, analyzer.modules[1].latched) == (False, False, 0)


# A charge long enough to die in, then a rest.
CHARGE_THEN_REST = """name: charge-then-rest
record: {time_s: 1}
steps:
  - {step: cc, name: charge, current_C: 1.0, until: [{step_time_s: 600}]}
  - {step: rest, name: rest, duration_s: 60}
"""
DIES_AT_S = 200.0


class HostDied(BaseException):
    """The host process vanishing: no safe state, no `finally` that speaks to an instrument."""


class DiesAt(SilentReporter):
    def __init__(self, t: float):
        self.t, self.died_at = t, None

    def tick(self, status) -> None:
        if status.test_time_s >= self.t:
            self.died_at = status.test_time_s  # after this tick's messages: the last I/O
            raise HostDied


def die_mid_charge(run_text, monkeypatch) -> float:
    """A run on sim-n6781a whose host dies at DIES_AT_S into its 1C charge; the test time of death."""
    def vanish(opened) -> None:  # what the operating system does for a killed process: its locks go
        opened.locks.release_all()
        for handler in opened.notices:
            logging.getLogger(session.DRIVER_LOGGER).removeHandler(handler)

    reporter = DiesAt(DIES_AT_S)
    with monkeypatch.context() as patched:
        patched.setattr(session.OpenBench, "close", vanish)
        patched.setattr(runner, "CHECKPOINT_INTERVAL_WALL_S", 0.0)  # a checkpoint every tick: up to the death
        with pytest.raises(HostDied):
            run_text(CHARGE_THEN_REST, bench="sim-n6781a", reporter=reporter)
    return reporter.died_at


def test_a_host_that_dies_mid_charge_leaves_the_output_off_from_exactly_its_last_io_plus_the_delay(
        run_text, simulations, monkeypatch):
    died_at = die_mid_charge(run_text, monkeypatch)
    world, analyzer = simulations[0].world, simulations[0].instruments["analyzer"]
    charging_A, charged_Ah = world.stack.current_A, world.stack.charged_Ah  # as of the last message
    assert charging_A == pytest.approx(0.2) and analyzer.modules[1].output_on and analyzer.watchdog_on
    world.clock.sleep_until(died_at + 3600.0)  # nobody speaks to it for an hour
    world.sync()
    assert world.stack.charged_Ah - charged_Ah == pytest.approx(charging_A * 30.0 / 3600.0, rel=1e-9)
    assert (world.stack.current_A, analyzer.modules[1].latched) == (0.0, 2048)


def test_a_run_whose_host_died_resumes_once_the_next_connect_has_cleared_the_watchdog_trip(
        run_text, simulations, monkeypatch, tmp_path):
    die_mid_charge(run_text, monkeypatch)
    folder = next((tmp_path / "runs").iterdir())
    # the host died in this test's own process: run.json names the pid of one that has ended
    meta = json.loads((folder / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps(meta | {"pid": ended_pid()}))
    checkpoint = json.loads((folder / "checkpoint.json").read_text())
    checkpoint["wall_unix_time_s"] = time.time() - 1.0  # a second ago: at 1000x, 1000 s of gap
    (folder / "checkpoint.json").write_text(json.dumps(checkpoint))
    benches = []
    open_bench = session.open_bench
    monkeypatch.setattr(session, "open_bench", lambda *args, **kwargs: benches.append(open_bench(*args, **kwargs))
                        or benches[-1])
    at_confirm = {}

    def confirm(preview) -> bool:
        resumed = simulations[-1]
        at_confirm.update(preview=preview, charged_Ah=resumed.world.stack.charged_Ah,
                          analyzer=resumed.instruments["analyzer"].snapshot())
        return True

    result = session.resume(folder, SilentReporter(), confirm=confirm, speed=1000.0)
    assert result.outcome.state == "completed" and result.outcome.outputs_confirmed_off
    # Over the gap the restored hardware charged on until its last I/O + 30 s, then its watchdog tripped
    then = checkpoint["simulation"]
    stack, analyzer = then["stacks"]["main"], then["instruments"]["analyzer"]
    assert analyzer["output_on"] and analyzer["watchdog_on"] and analyzer["watchdog_delay_s"] == 30.0
    on_for_s = analyzer["last_io_s"] + 30.0 - then["time_s"]
    assert at_confirm["charged_Ah"] == pytest.approx(stack["charged_Ah"] + stack["current_A"] * on_for_s / 3600.0,
                                                     rel=1e-9)
    # ... and the resume's connect found it, reported it and cleared it, the output switched off
    assert benches[-1].drivers["analyzer"].watchdog_trip_found is True
    assert at_confirm["preview"].output_found_on is True and at_confirm["preview"].watchdog_trip_found is True
    assert "switched itself off when the host went silent" in at_confirm["preview"].text()
    assert (at_confirm["analyzer"]["latched"], at_confirm["analyzer"]["output_on"]) == (0, False)
    # not armed while the operator takes their time to answer: it would trip with nobody talking
    assert at_confirm["analyzer"]["watchdog_on"] is False
    events = events_of(folder)
    resumed_event = next(e for e in events if e["event"] == "resumed")
    assert resumed_event["output_found_on"] is True and resumed_event["gap_s"] >= 1000.0
    assert resumed_event["watchdog_trip_found"] is True
    # the resumed runner armed it again before switching anything on, and said so
    armed = [e for e in events if e["event"] == "instrument_watchdogs"]
    assert [e["armed_s"] for e in armed] == [{"supply": 30.0}, {"supply": 30.0}]  # the first run, the resume
    assert armed[-1]["trip_found_at_connect"] is True
    samples = assert_continuous(folder)
    assert samples["Step Time / s"].max() == pytest.approx(600.0, abs=1.0)  # the charge finished its 600 s
    final = result.simulation.instruments["analyzer"]
    assert (final.modules[1].output_on, final.watchdog_on, final.modules[1].latched) == (False, False, 0)
