"""Keysight N6705C with an N6781A SMU: the driver at message level, the simulator against the
stack model, the two together, and runs on the built-in sim-n6781a bench.

The driver maps the role onto voltage priority with two independent current limits (tracking
off), in two quadrants (EMUL PS2Q): CURR:LIM is the source (charge) clamp, CURR:LIM:NEG the sink
(discharge) clamp as a negative number. The range (6 V / 3 A or 20 V / 1 A) is chosen once, from
the over-voltage threshold. Every test pins one of these or one command of the command set.
"""

from __future__ import annotations

import math
import re

import pandas as pd
import pytest
from support import Script, cycler, expected_protocol, samples_of

from stackcycler.bench import load_bench
from stackcycler.clock import VirtualClock
from stackcycler.drivers.keysight_n6705c import KeysightN6705c
from stackcycler.drivers.registry import SUPPLY_DRIVERS
from stackcycler.drivers.roles import BidirectionalSupply
from stackcycler.drivers.sim.keysight_n6705c import KeysightN6705cSimConfig, SimKeysightN6705c
from stackcycler.drivers.sim.stack import StackModel, StackParameters
from stackcycler.drivers.sim.world import SimWorld
from stackcycler.drivers.transport import InProcessTransport
from stackcycler.errors import InstrumentError, InvalidInput

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
    assert world.stack.current_A == 0.0 and not sim.output_on
    assert sim.handle("STAT:QUES:COND? (@1)") == "1"
    assert sim.handle("OUTP ON,(@1)") is None
    assert sim.handle("SYST:ERR?") == '-221,"Settings conflict; protection tripped, clear it first"'
    send(sim, "OUTP:PROT:CLE (@1)", "VOLT:PROT:REM 4.5,(@1)", "OUTP ON,(@1)")
    world.sync()
    assert sim.output_on and sim.handle("STAT:QUES:COND? (@1)") == "128"


def test_sim_over_current_protection_trips_when_the_output_reaches_a_current_limit():
    sim, world, _ = simulated()
    drive(sim, world, "CURR:PROT:STAT 1,(@1)", "VOLT 4.27,(@1)", "CURR:LIM 0.0667,(@1)")
    assert world.stack.current_A == 0.0 and not sim.output_on
    assert sim.handle("STAT:QUES:COND? (@1)") == "2"


def test_sim_changing_the_priority_switches_off_and_resets_the_settings():
    sim, world, _ = simulated()
    drive(sim, world, "VOLT 4.27,(@1)", "CURR:LIM 0.0667,(@1)")
    send(sim, "FUNC CURR,(@1)")
    assert not sim.output_on
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
    assert sim.output_on is False


def test_the_driver_reports_the_simulated_over_voltage_trip():
    supply, sim, world, clock = simulated_driver()
    supply.connect()
    supply.set_protection(3.9, 0.462)  # below where the charge is headed
    supply.regulate(3.9, 0.0667, 0.0)
    sim.ovp_V = 3.7  # as if armed lower by hand at the front panel
    supply.set_output(True)
    clock.sleep_until(1.0)
    assert supply.output_is_on() is False
    with pytest.raises(InstrumentError, match="over-voltage protection tripped"):
        supply.check_errors()


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
