"""Keithley 2450 and 2400 SourceMeters: drivers at message level, simulators against the stack
model, and a run on the built-in sim-keithley2450 bench.

The two SCPI dialects differ where it matters (shared/reference/instruments.md §4a, §4b): the
current limit while sourcing voltage (2450 `:SOUR:VOLT:ILIM`, 2400 `:SENS:CURR:PROT`), what
`:READ?` answers (2450: one buffer reading, elements on request; 2400: V,I,R,time,status unless
`:FORM:ELEM` narrows it, with the *set* voltage unless voltage is measured), the number and
error-queue formats and the identity. Every test below pins one of them, or one behaviour of
the SMU-as-supply mapping: one symmetric limit for the role's two, standby (output on at a
microampere limit) for the role's output off so that rests are still measured.
"""

from __future__ import annotations

import math
import re

import pandas as pd
import pytest
from support import Script, StopAfter, events_of, expected_protocol, samples_of

from stackcycler.clock import VirtualClock
from stackcycler.drivers.keithley_smu import STANDBY_CURRENT_LIMIT_A, Keithley2400, Keithley2450
from stackcycler.drivers.registry import SUPPLY_DRIVERS
from stackcycler.drivers.sim.keithley_smu import (Keithley2400SimConfig, Keithley2450SimConfig, SimKeithley2400,
                                                  SimKeithley2450)
from stackcycler.drivers.sim.simulation import SimulationConfig, build_simulation
from stackcycler.drivers.sim.stack import StackModel, StackParameters
from stackcycler.drivers.sim.world import SimWorld
from stackcycler.drivers.transport import InProcessTransport
from stackcycler.errors import InstrumentError, InvalidInput
from stackcycler.live import SilentReporter
from stackcycler.runner import StopRequest
from stackcycler.session import resume


# --- Keithley 2450: messages ---------------------------------------------------------------

IDN_2450 = "KEITHLEY INSTRUMENTS,MODEL 2450,04365704,1.6.4c"
OK_2450 = '0,"No error;0;0 0"'
READ_2450 = ':READ? "defbuffer1",SOUR,READ'
CONNECT_2450: Script = [
    ("*IDN?", IDN_2450),
    ("*LANG?", "SCPI"),
    ("*CLS", None),
    (":OUTP?", "0"),
    (":OUTP:SMOD HIMP", None), (":OUTP OFF", None), ("SYST:ERR?", OK_2450),
    (":SOUR:FUNC VOLT", None), (":SOUR:VOLT:RANG:AUTO ON", None), (":SOUR:VOLT:READ:BACK ON", None),
    (':SENS:FUNC "CURR"', None), (":SENS:CURR:RANG:AUTO ON", None),
    (":SOUR:VOLT 0.0", None), (":SOUR:VOLT:ILIM 1e-06", None), ("SYST:ERR?", OK_2450),
]
STANDBY_2450: Script = [(":SOUR:VOLT:ILIM 1e-06", None), (":OUTP ON", None), ("SYST:ERR?", OK_2450)]
# CC charge of a 0.2 Ah cell at C/3 towards 4.27 V, from standby
DRIVE_2450: Script = [(":SOUR:VOLT 4.27", None), (":SOUR:VOLT:ILIM 0.0667", None), ("SYST:ERR?", OK_2450)]


def connected_2450(*script: tuple[str, str | None]):
    return expected_protocol(Keithley2450, CONNECT_2450 + list(script))


def test_2450_connect_sends_the_documented_sequence_and_returns_the_identity():
    with connected_2450() as smu:
        assert smu.connect() == IDN_2450
    assert smu.output_found_on is False


@pytest.mark.parametrize("function, limit, driving", [("VOLT", "6.670000e-02", True),
                                                     ("VOLT", "1.000000e-06", False),  # our standby
                                                     ("CURR", None, True)])  # sourcing current: driving
def test_2450_connect_records_an_output_found_driving_and_switches_it_off_in_high_impedance(function, limit, driving):
    found_on = [(":OUTP?", "1"), (":SOUR:FUNC?", function), *([(":SOUR:VOLT:ILIM?", limit)] if limit else [])]
    script = [pair for before in CONNECT_2450 for pair in (found_on if before == (":OUTP?", "0") else [before])]
    with expected_protocol(Keithley2450, script) as smu:
        smu.connect()
    assert smu.output_found_on is driving


@pytest.mark.parametrize("identity", ["KEITHLEY INSTRUMENTS INC.,MODEL 2400,1248014,C30",
                                      "KEITHLEY INSTRUMENTS,MODEL 2460,04411111,1.6.4c",
                                      "KEITHLEY INSTRUMENTS,MODEL DMM6500,04450000,1.0.04b",
                                      "EA Elektro-Automatik GmbH & Co. KG, PSB 10200-25 2U, 1, V1"])
def test_2450_connect_refuses_an_instrument_that_is_not_a_2450(identity):
    with expected_protocol(Keithley2450, [("*IDN?", identity)]) as smu:
        with pytest.raises(InstrumentError, match="is not a Keithley 2450"):
            smu.connect()


@pytest.mark.parametrize("language", ["SCPI2400", "TSP"])
def test_2450_connect_refuses_a_command_set_other_than_scpi(language):
    with expected_protocol(Keithley2450, [("*IDN?", IDN_2450), ("*LANG?", language)]) as smu:
        with pytest.raises(InstrumentError, match=f"command set is '{language}', not SCPI"):
            smu.connect()


def test_2450_ratings_are_the_manuals_envelope_corners():
    with connected_2450() as smu:
        smu.connect()
        ratings = smu.ratings
    assert (ratings.voltage_V, ratings.current_A) == (210.0, 1.05)
    assert ratings.power_W == pytest.approx(22.05, rel=1e-12)
    assert (ratings.max_over_voltage_V, ratings.max_over_current_A) == (210.0, 1.05)
    assert smu.has_power_limits is False


def test_2450_ratings_before_connect_are_an_instrument_error():
    with expected_protocol(Keithley2450, []) as smu:
        with pytest.raises(InstrumentError, match="not connected"):
            _ = smu.ratings


def test_2450_first_measure_enters_standby_then_reads_source_readback_and_current():
    script = [*STANDBY_2450, (READ_2450, "3.051252e+00,-1.000000e-06"), (READ_2450, "3.051260e+00,2.000000e-07")]
    with connected_2450(*script) as smu:
        smu.connect()
        assert smu.measure() == (3.051252, -1e-06)
        assert smu.measure() == (3.05126, 2e-07)  # already measuring: only the reading


def test_2450_regulate_in_standby_sends_nothing_until_the_output_is_switched_on():
    with connected_2450(*STANDBY_2450, (READ_2450, "3.051252e+00,0.000000e+00"), *DRIVE_2450) as smu:
        smu.connect()
        smu.measure()
        smu.regulate(4.27, 0.0667, 0.0)  # nothing sent: standby holds a microampere at most
        smu.set_output(True)  # the voltage first, then the rising limit; the output is already on


def test_2450_output_on_from_off_sends_the_setpoints_then_switches_on():
    with connected_2450(*DRIVE_2450[:-1], (":OUTP ON", None), ("SYST:ERR?", OK_2450)) as smu:
        smu.connect()
        smu.regulate(4.27, 0.0667, 0.0)
        smu.set_output(True)


def test_2450_output_on_without_a_regulate_is_refused():
    with connected_2450() as smu:
        smu.connect()
        with pytest.raises(InstrumentError, match="without a regulate"):
            smu.set_output(True)


def driving_2450(*script: tuple[str, str | None]):
    return connected_2450(*STANDBY_2450, (READ_2450, "3.051252e+00,0.000000e+00"), *DRIVE_2450, *script)


def start_driving(smu) -> None:
    smu.connect()
    smu.measure()
    smu.regulate(4.27, 0.0667, 0.0)
    smu.set_output(True)


def test_2450_a_falling_limit_is_sent_before_the_new_voltage():
    script = [(":SOUR:VOLT:ILIM 0.04", None), (":SOUR:VOLT 2.95", None), ("SYST:ERR?", OK_2450)]
    with driving_2450(*script) as smu:
        start_driving(smu)
        smu.regulate(2.95, 0.0, 0.04)  # CC charge 66.7 mA -> CC discharge 40 mA


def test_2450_a_rising_limit_is_sent_after_the_new_voltage():
    script = [(":SOUR:VOLT 2.95", None), (":SOUR:VOLT:ILIM 0.2", None), ("SYST:ERR?", OK_2450)]
    with driving_2450(*script) as smu:
        start_driving(smu)
        smu.regulate(2.95, 0.0, 0.2)  # CC charge 66.7 mA -> CC discharge 200 mA


def test_2450_regulate_sends_only_what_changed_and_nothing_if_nothing_did():
    with driving_2450((":SOUR:VOLT 4.25", None), ("SYST:ERR?", OK_2450)) as smu:
        start_driving(smu)
        smu.regulate(4.27, 0.0667, 0.0)
        smu.regulate(4.25, 0.0667, 0.0)


@pytest.mark.parametrize("source, sink, limit", [
    (0.0667, 0.0, "0.0667"),  # CC charge: only the source side can act
    (0.0, 0.1, "0.1"),  # CC discharge
    (0.05, 0.1, "0.1"),  # CV with both: the larger, both ways
    (0.0, 0.0, None),  # no current wanted: the standby limit, already set
])
def test_2450_one_symmetric_limit_serves_both_role_limits_as_the_larger(source, sink, limit):
    script = [(":SOUR:VOLT 4.2", None), *([(f":SOUR:VOLT:ILIM {limit}", None)] if limit else []),
              (":OUTP ON", None), ("SYST:ERR?", OK_2450)]
    with connected_2450(*script) as smu:
        smu.connect()
        smu.regulate(4.2, source, sink)
        smu.set_output(True)


def test_2450_output_off_drops_to_the_standby_limit_and_the_role_output_reads_off():
    script = [(":OUTP?", "1"), (":SOUR:VOLT:ILIM 1e-06", None), ("SYST:ERR?", OK_2450), (":OUTP?", "1")]
    with driving_2450(*script) as smu:
        start_driving(smu)
        assert smu.output_is_on() is True
        smu.set_output(False)
        assert smu.output_is_on() is False  # the instrument's output is on, but it drives nothing


def test_2450_output_that_switched_itself_off_reads_off():
    with driving_2450((":OUTP?", "0")) as smu:
        start_driving(smu)
        assert smu.output_is_on() is False


@pytest.mark.parametrize("voltage, source, sink", [
    (210.01, 0.01, 0.0),  # beyond the 200 V range
    (-0.1, 0.0, 0.1),  # a negative voltage would reverse-charge the cell
    (math.nan, 0.1, 0.0),
    (4.2, 1.06, 0.0),  # beyond 1.05 A
    (4.2, 0.0, 1.06),
    (30.0, 0.2, 0.0),  # above 21 V only the 200 V range's 105 mA
    (4.2, -0.1, 0.0),
    (4.2, math.inf, 0.0),
])
def test_2450_a_setpoint_outside_the_envelope_is_refused_and_nothing_is_sent(voltage, source, sink):
    with connected_2450() as smu:
        smu.connect()
        with pytest.raises(InvalidInput, match="nothing was sent"):
            smu.regulate(voltage, source, sink)


def test_2450_power_limits_are_refused_and_nothing_is_sent():
    with connected_2450() as smu:
        smu.connect()
        with pytest.raises(InvalidInput, match="no power limit"):
            smu.regulate(4.2, 0.1, 0.1, source_power_W=0.3)


@pytest.mark.parametrize("over_voltage, token", [
    (4.5675, "PROT5"), (5.0, "PROT5"), (1.0, "PROT2"), (19.9, "PROT20"), (180.0, "PROT180"), (180.1, "NONE"),
])
def test_2450_protection_arms_the_lowest_ovp_level_at_or_above_the_threshold(over_voltage, token):
    with connected_2450((f":SOUR:VOLT:PROT {token}", None), ("SYST:ERR?", OK_2450)) as smu:
        smu.connect()
        smu.set_protection(over_voltage, 0.462)


@pytest.mark.parametrize("over_voltage, over_current", [(0.0, 0.5), (210.5, 0.5), (math.nan, 0.5), (4.5, 1.1)])
def test_2450_a_protection_threshold_outside_the_model_is_refused_and_nothing_is_sent(over_voltage, over_current):
    with connected_2450() as smu:
        smu.connect()
        with pytest.raises(InvalidInput, match="nothing was sent"):
            smu.set_protection(over_voltage, over_current)


@pytest.mark.parametrize("voltage, source, refused", [
    (5.01, 0.1, "above its armed over-voltage protection level"),
    (4.2, 0.47, "above the armed over-current threshold"),
])
def test_2450_regulate_beyond_the_armed_protection_is_refused(voltage, source, refused):
    with connected_2450((":SOUR:VOLT:PROT PROT5", None), ("SYST:ERR?", OK_2450)) as smu:
        smu.connect()
        smu.set_protection(4.5675, 0.462)
        with pytest.raises(InvalidInput, match=refused):
            smu.regulate(voltage, source, 0.0)


def test_2450_an_error_in_its_event_format_raises_naming_it_and_the_command():
    error = '-222,"Parameter data out of range;1;2024/05/06 12:57:04.484"'
    script = [(":SOUR:VOLT 4.2", None), (":SOUR:VOLT:ILIM 0.1", None), (":OUTP ON", None),
              ("SYST:ERR?", error), ("SYST:ERR?", OK_2450)]
    with connected_2450(*script) as smu:
        smu.connect()
        smu.regulate(4.2, 0.1, 0.0)
        with pytest.raises(InstrumentError) as raised:
            smu.set_output(True)
    assert error in str(raised.value) and "':OUTP ON'" in str(raised.value)


@pytest.mark.parametrize("reply, problem", [("9.900000e+37,1.000000e-03", "overflow"),
                                            ("3.051252e+00", "expected 'source voltage,current'"),
                                            ("3.05e+00,1.0e-03,2.0e+00", "expected 'source voltage,current'")])
def test_2450_a_reading_that_cannot_be_used_is_an_instrument_error(reply, problem):
    with connected_2450(*STANDBY_2450, (READ_2450, reply)) as smu:
        smu.connect()
        with pytest.raises(InstrumentError, match=problem):
            smu.measure()


def test_2450_safe_state_switches_off_and_confirms():
    with driving_2450((":OUTP OFF", None), (":OUTP?", "0")) as smu:
        start_driving(smu)
        smu.safe_state()


def test_2450_safe_state_raises_if_the_output_still_reads_on():
    with connected_2450((":OUTP OFF", None), (":OUTP?", "1")) as smu:
        smu.connect()
        with pytest.raises(InstrumentError, match="output still on after :OUTP OFF"):
            smu.safe_state()


def test_2450_measuring_after_the_safe_state_re_enters_standby_at_the_standby_limit():
    script = [(":OUTP OFF", None), (":OUTP?", "0"), *STANDBY_2450, (READ_2450, "4.2e+00,1.0e-06")]
    with driving_2450(*script) as smu:
        start_driving(smu)
        smu.safe_state()
        smu.measure()  # never with the drive's limit still set


def test_2450_close_switches_a_standby_output_off():
    with connected_2450(*STANDBY_2450, (READ_2450, "3.05e+00,0.0e+00"), (":OUTP OFF", None)) as smu:
        smu.connect()
        smu.measure()
        smu.close()
    assert smu.transport.closed


def test_2450_close_after_connect_sends_nothing():
    with connected_2450() as smu:
        smu.connect()
        smu.close()


# --- Keithley 2400: messages ---------------------------------------------------------------

IDN_2400 = "KEITHLEY INSTRUMENTS INC.,MODEL 2400,1248014,C30   Mar 17 2006 09:29:29/A02  /K/J"
OK_2400 = '0,"No error"'
CONNECT_2400: Script = [
    ("*IDN?", IDN_2400),
    ("*CLS", None),
    (":OUTP?", "0"),
    (":OUTP:SMOD HIMP", None), (":OUTP OFF", None), ("SYST:ERR?", OK_2400),
    (":SOUR:FUNC VOLT", None), (":SOUR:VOLT:MODE FIX", None), (":SOUR:VOLT:RANG:AUTO ON", None),
    (":SOUR:CLE:AUTO OFF", None), (":SENS:FUNC:CONC ON", None), (':SENS:FUNC "VOLT","CURR"', None),
    (":SENS:CURR:RANG:AUTO ON", None), (":FORM:ELEM VOLT,CURR", None),
    (":SOUR:VOLT 0.0", None), (":SENS:CURR:PROT 1e-06", None), ("SYST:ERR?", OK_2400),
]
STANDBY_2400: Script = [(":SENS:CURR:PROT 1e-06", None), (":OUTP ON", None), ("SYST:ERR?", OK_2400)]


def connected_2400(*script: tuple[str, str | None]):
    return expected_protocol(Keithley2400, CONNECT_2400 + list(script))


def test_2400_connect_sends_the_documented_sequence_without_a_language_check():
    with connected_2400() as smu:
        assert smu.connect() == IDN_2400


@pytest.mark.parametrize("identity", ["KEITHLEY INSTRUMENTS,MODEL 2450,04365704,1.6.4c",  # no INC.
                                      "KEITHLEY INSTRUMENTS INC.,MODEL 2410,1234567,C33",  # 1100 V ratings
                                      "KEITHLEY INSTRUMENTS INC.,MODEL 2000,1234567,A19"])
def test_2400_connect_refuses_an_instrument_that_is_not_a_2400(identity):
    with expected_protocol(Keithley2400, [("*IDN?", identity)]) as smu:
        with pytest.raises(InstrumentError, match="is not a Keithley 2400"):
            smu.connect()


def test_2400_measure_reads_voltage_and_current_in_one_narrowed_reading():
    with connected_2400(*STANDBY_2400, (":READ?", "+4.100000E+00,-6.666000E-02")) as smu:
        smu.connect()
        assert smu.measure() == (4.1, -0.06666)


def test_2400_measure_refuses_the_default_five_element_reading():
    reply = "+4.100000E+00,-6.666000E-02,+9.910000E+37,+7.282600E+01,+1.945600E+04"
    with connected_2400(*STANDBY_2400, (":READ?", reply)) as smu:
        smu.connect()
        with pytest.raises(InstrumentError, match=r"expected 'voltage,current \(FORM:ELEM VOLT,CURR\)'"):
            smu.measure()


def test_2400_the_current_limit_is_the_current_compliance():
    script = [(":SOUR:VOLT 2.95", None), (":SENS:CURR:PROT 0.0667", None), (":OUTP ON", None), ("SYST:ERR?", OK_2400),
              (":SENS:CURR:PROT 1e-06", None), ("SYST:ERR?", OK_2400)]
    with connected_2400(*script) as smu:
        smu.connect()
        smu.regulate(2.95, 0.0, 0.0667)
        smu.set_output(True)
        smu.set_output(False)


@pytest.mark.parametrize("over_voltage, level", [(4.5675, "20"), (20.0, "20"), (20.5, "40"), (150.0, "160"),
                                                 (160.5, "210")])  # 161 V to 210 V select NONE
def test_2400_protection_arms_the_lowest_v_source_protection_step_at_or_above(over_voltage, level):
    with connected_2400((f":SOUR:VOLT:PROT {level}", None), ("SYST:ERR?", OK_2400)) as smu:
        smu.connect()
        smu.set_protection(over_voltage, 0.462)


def test_2400_an_error_raises_naming_it():
    script = [(":SOUR:VOLT 4.2", None), (":SENS:CURR:PROT 0.1", None), (":OUTP ON", None),
              ("SYST:ERR?", '802,"OUTPUT blocked by output enable"'), ("SYST:ERR?", OK_2400)]
    with connected_2400(*script) as smu:
        smu.connect()
        smu.regulate(4.2, 0.1, 0.0)
        with pytest.raises(InstrumentError, match='802,"OUTPUT blocked by output enable"'):
            smu.set_output(True)


def test_both_smus_are_supply_drivers():
    assert {"keithley-2400", "keithley-2450"} <= set(SUPPLY_DRIVERS)


# --- the simulators against the stack model (noise off: exact) -----------------------------

CELL = StackParameters(layers=1, layer_capacity_Ah=0.2, r0_ohm=0.25, r1_ohm=0.15, interconnect_ohm=0.01)


def smu_bench(sim_class, config_class, stack: StackParameters = CELL, **config):
    clock = VirtualClock()
    world = SimWorld(StackModel(stack, seed=1), clock)
    smu = sim_class(world, "smu", config_class(**({"voltage_noise_V": 0.0, "current_noise_A": 0.0} | config)))
    return smu, world, clock


def bench_2450(**config):
    return smu_bench(SimKeithley2450, Keithley2450SimConfig, **config)


def bench_2400(**config):
    return smu_bench(SimKeithley2400, Keithley2400SimConfig, **config)


def send(smu, *messages: str, ok: str) -> None:
    for message in messages:
        assert smu.handle(message) is None, message
    assert smu.handle("SYST:ERR?") == ok


def test_sim_identities_differ_in_the_maker_field():
    assert bench_2450()[0].handle("*IDN?") == IDN_2450
    assert bench_2400()[0].handle("*IDN?") == IDN_2400


def test_sim_2450_answers_its_command_set_and_the_2400_has_no_lang_query():
    assert bench_2450()[0].handle("*LANG?") == "SCPI"
    assert bench_2450(command_set="TSP")[0].handle("*LANG?") == "TSP"
    smu = bench_2400()[0]
    assert smu.handle("*LANG?") is None
    assert smu.handle("SYST:ERR?") == '-113,"Undefined header"'


def test_sim_2450_error_queue_carries_event_type_and_time():
    smu, _, _ = bench_2450()
    assert smu.handle("SYST:ERR?") == OK_2450
    smu.handle(":SOUR:VOLT:BOGUS 1")
    assert re.fullmatch(r'-113,"Undefined header;1;\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{3}"', smu.handle("SYST:ERR?"))


def test_sim_2400_error_queue_holds_ten_and_then_reports_the_overflow():
    smu, _, _ = bench_2400()
    for _ in range(11):
        smu.handle(":BOGUS")
    replies = [smu.handle("SYST:ERR?") for _ in range(11)]
    assert replies == ['-113,"Undefined header"'] * 9 + ['-350,"Queue overflow"', OK_2400]


@pytest.mark.parametrize("bench, foreign, ok", [
    (bench_2450, ":SENS:CURR:PROT 0.1", OK_2450),  # the 2400's compliance is not 2450 SCPI
    (bench_2400, ":SOUR:VOLT:ILIM 0.1", OK_2400),  # nor is the 2450's limit a 2400 command
])
def test_sim_each_dialects_limit_command_is_an_undefined_header_on_the_other(bench, foreign, ok):
    smu, _, _ = bench()
    assert smu.handle(foreign) is None
    assert smu.handle("SYST:ERR?").startswith("-113,")
    assert smu.handle("SYST:ERR?") == ok


def test_sim_2450_read_with_elements_answers_source_readback_and_measured_current():
    smu, world, clock = bench_2450()
    send(smu, ":OUTP:SMOD HIMP", ":SOUR:VOLT 4.27", ":SOUR:VOLT:ILIM 0.0667", ":OUTP ON", ok=OK_2450)
    clock.sleep_until(60.0)
    reply = smu.handle(READ_2450)
    stack = world.stack
    assert reply == f"{stack.terminal_voltage_V():.6e},{0.0667:.6e}"
    assert stack.current_A == 0.0667  # CC: the voltage is set above the cell, the limit holds
    assert stack.charged_Ah == pytest.approx(0.0667 * 60.0 / 3600.0, rel=1e-12)


def test_sim_2450_read_without_elements_answers_the_measure_function_only():
    smu, world, _ = bench_2450()
    send(smu, ":SOUR:VOLT 4.27", ":SOUR:VOLT:ILIM 0.0667", ":OUTP ON", ok=OK_2450)
    assert smu.handle(":READ?") == "6.670000e-02"
    send(smu, ':SENS:FUNC "VOLT"', ok=OK_2450)
    assert smu.handle(":SENS:FUNC?") == '"VOLT:DC"'
    assert smu.handle(":READ?") == f"{world.stack.terminal_voltage_V():.6e}"


def test_sim_2450_without_source_readback_the_source_element_is_the_set_voltage():
    smu, _, _ = bench_2450()
    send(smu, ":SOUR:VOLT:READ:BACK OFF", ":SOUR:VOLT 4.27", ":SOUR:VOLT:ILIM 0.0667", ":OUTP ON", ok=OK_2450)
    assert smu.handle(READ_2450).split(",")[0] == "4.270000e+00"


def test_sim_2450_sinks_the_limit_with_the_voltage_below_the_cell():
    smu, world, clock = bench_2450()
    send(smu, ":SOUR:VOLT 2.5", ":SOUR:VOLT:ILIM 0.1", ":OUTP ON", ok=OK_2450)
    clock.sleep_until(30.0)
    assert smu.handle(READ_2450).split(",")[1] == "-1.000000e-01"
    assert world.stack.discharged_Ah == pytest.approx(0.1 * 30.0 / 3600.0, rel=1e-12)
    assert smu.handle(":SOUR:VOLT:ILIM:TRIP?") == "1"


def test_sim_2450_in_cv_drives_the_current_that_holds_the_terminal_at_the_set_voltage():
    smu, world, _ = bench_2450()
    emf, resistance = world.stack.thevenin()
    set_V = round(emf + 0.01, 4)
    send(smu, f":SOUR:VOLT {set_V}", ":SOUR:VOLT:ILIM 1", ":OUTP ON", ok=OK_2450)
    assert world.stack.current_A == pytest.approx((set_V - emf) / resistance, rel=1e-12)
    assert world.stack.terminal_voltage_V() == pytest.approx(set_V, rel=1e-12)
    assert smu.handle(":SOUR:VOLT:ILIM:TRIP?") == "0"


def test_sim_2450_above_21_V_only_the_200_V_ranges_105_mA_flow():
    smu, world, _ = bench_2450()
    send(smu, ":SOUR:VOLT 30", ":SOUR:VOLT:ILIM 1", ":OUTP ON", ok=OK_2450)
    assert world.stack.current_A == 0.105


def test_sim_2450_over_voltage_protection_clamps_the_source_voltage():
    full_cell = CELL.model_copy(update={"initial_soc": 1.0, "r0_ohm": 2.0})
    smu, world, _ = smu_bench(SimKeithley2450, Keithley2450SimConfig, full_cell,
                              voltage_noise_V=0.0, current_noise_A=0.0)
    send(smu, ":SOUR:VOLT:PROT PROT5", ":SOUR:VOLT 10", ":SOUR:VOLT:ILIM 1", ":OUTP ON", ok=OK_2450)
    emf, resistance = world.stack.thevenin()
    assert world.stack.current_A == pytest.approx((5.0 - emf) / resistance, rel=1e-12)  # 10 V would give 1 A
    assert smu.handle(":SOUR:VOLT:PROT?") == "PROT5"
    assert smu.handle(":SOUR:VOLT:PROT:TRIP?") == "1"


@pytest.mark.parametrize("bench, off_state, current", [
    (bench_2450, "NORM", -0.1),  # the reset default: 0 V with 10 % of the 1 A range
    (bench_2450, "ZERO", -1.0),  # 0 V with the limit unchanged
    (bench_2450, "HIMP", 0.0),  # the relay opens
    (bench_2400, "NORM", -0.005),  # 0 V with 0.5 % of the 1 A range
    (bench_2400, "HIMP", 0.0),
])
def test_sim_with_the_output_off_the_off_state_decides_what_a_cell_sees(bench, off_state, current):
    smu, world, _ = bench()
    limit = ":SOUR:VOLT:ILIM 1" if bench is bench_2450 else ":SENS:CURR:PROT 1"
    smu.handle(f":OUTP:SMOD {off_state}")
    smu.handle(limit)
    smu.handle(":OUTP OFF")
    smu.handle(":OUTP?")
    assert world.stack.current_A == pytest.approx(current, rel=1e-12)


def test_sim_reset_restores_the_defaults_and_the_normal_off_state():
    smu, world, _ = bench_2450()
    send(smu, ":OUTP:SMOD HIMP", ":SOUR:VOLT 4.27", ":SOUR:VOLT:ILIM 0.5", ":OUTP ON", "*RST", ok=OK_2450)
    assert [smu.handle(q) for q in (":OUTP?", ":OUTP:SMOD?", ":SOUR:FUNC?", ":SOUR:VOLT?", ":SOUR:VOLT:ILIM?",
                                    ":SOUR:VOLT:PROT?", ":SOUR:VOLT:READ:BACK?")] == \
        ["0", "NORM", "VOLT", "0.000000e+00", "1.050000e-04", "NONE", "1"]
    assert world.stack.current_A == pytest.approx(-10e-6, rel=1e-12)  # 10 % of the 100 uA range, drained


def test_sim_2400_read_with_the_output_off_sends_nothing_and_queues_803():
    smu, _, _ = bench_2400()
    assert smu.handle(":READ?") is None
    assert smu.handle("SYST:ERR?") == '803,"Not permitted with OUTPUT off"'


def test_sim_2400_with_auto_output_off_a_reading_switches_on_only_for_itself():
    smu, world, _ = bench_2400()
    send(smu, ":OUTP:SMOD HIMP", ":SOUR:CLE:AUTO ON", ":SOUR:VOLT 4.27", ":SENS:CURR:PROT 0.0667", ok=OK_2400)
    assert smu.handle(":READ?").split(",")[1] == "+6.670000E-02"
    assert smu.handle(":OUTP?") == "0"
    assert world.stack.current_A == 0.0


def test_sim_2400_reset_reading_has_five_elements_and_the_set_voltage_in_place_of_a_measured_one():
    smu, world, _ = bench_2400()
    send(smu, ":SOUR:VOLT 4.27", ":SENS:CURR:PROT 0.0667", ":OUTP ON", ok=OK_2400)
    fields = smu.handle(":READ?").split(",")
    assert len(fields) == 5
    assert fields[:3] == ["+4.270000E+00", "+6.670000E-02", "+9.910000E+37"]  # V not measured: the set value
    assert world.stack.terminal_voltage_V() < 4.0  # ... not the cell's
    assert int(float(fields[4])) & 16384  # sourcing voltage [uncertain bit]


def test_sim_2400_with_voltage_measured_and_elements_narrowed_reads_the_model_exactly():
    smu, world, clock = bench_2400()
    send(smu, ":SENS:FUNC:CONC ON", ':SENS:FUNC "VOLT","CURR"', ":FORM:ELEM VOLT,CURR",
         ":SOUR:VOLT 2.5", ":SENS:CURR:PROT 0.1", ":OUTP ON", ok=OK_2400)
    assert smu.handle(":SENS:FUNC?") == '"VOLT:DC","CURR:DC"'
    assert smu.handle(":FORM:ELEM?") == "VOLT,CURR"
    clock.sleep_until(45.0)
    stack = world.stack
    assert smu.handle(":READ?") == f"{stack.terminal_voltage_V():+.6E},-1.000000E-01"
    assert smu.handle(":SENS:CURR:PROT:TRIP?") == "1"


@pytest.mark.parametrize("setting, level", [("25", "+2.000000E+01"), ("5", "+2.000000E+01"),
                                            ("160", "+1.600000E+02"), ("170", "+2.100000E+02")])
def test_sim_2400_v_source_protection_rounds_down_to_its_steps(setting, level):
    smu, _, _ = bench_2400()
    send(smu, f":SOUR:VOLT:PROT {setting}", ok=OK_2400)
    assert smu.handle(":SOUR:VOLT:PROT?") == level


def test_sim_2400_without_source_the_protection_header_is_the_voltage_compliance():
    smu, _, _ = bench_2400()
    send(smu, ":VOLT:PROT 5", ok=OK_2400)  # SENSe is the optional root here, not SOURce
    assert smu.handle(":SENS:VOLT:PROT?") == "+5.000000E+00"
    assert smu.handle(":SOUR:VOLT:PROT?") == "+2.100000E+02"


@pytest.mark.parametrize("bench, limit, ok", [(bench_2450, ":SOUR:VOLT:ILIM 0.05", OK_2450),
                                              (bench_2400, ":SENS:CURR:PROT 0.05", OK_2400)])
def test_sim_snapshot_and_restore_carry_the_settings_and_the_drive(bench, limit, ok):
    smu, world, _ = bench()
    send(smu, ":OUTP:SMOD HIMP", ":SOUR:VOLT 4.27", limit, ":OUTP ON", ok=ok)
    state = smu.snapshot()
    fresh, fresh_world, _ = bench()
    fresh.restore(state)
    fresh.handle(":OUTP?")
    assert fresh.snapshot() == state
    assert fresh_world.stack.current_A == world.stack.current_A == 0.05


# --- each driver against its simulator -----------------------------------------------------


def simulated(kind: str, driver_class):
    config = SimulationConfig.model_validate({
        "stack": CELL.model_dump(),
        "instruments": {"smu": {"kind": kind, "voltage_noise_V": 0.0, "current_noise_A": 0.0}},
    })
    clock = VirtualClock()
    simulation = build_simulation(config, clock)
    return driver_class(InProcessTransport(simulation.instruments["smu"], "sim://smu")), simulation, clock


@pytest.mark.parametrize("kind, driver_class", [("keithley-2450", Keithley2450), ("keithley-2400", Keithley2400)])
def test_driver_charges_the_simulated_cell_then_holds_it_in_standby(kind, driver_class):
    smu, simulation, clock = simulated(kind, driver_class)
    stack = simulation.world.stack
    smu.connect()
    smu.set_protection(4.5675, 0.462)
    smu.regulate(4.27, 0.0667, 0.0)
    smu.set_output(True)
    clock.sleep_until(60.0)
    voltage, current = smu.measure()
    assert current == 0.0667
    assert voltage == pytest.approx(stack.terminal_voltage_V(), abs=1e-5)  # 7 digits
    assert stack.charged_Ah == pytest.approx(0.0667 * 60.0 / 3600.0, rel=1e-12)
    smu.set_output(False)
    clock.sleep_until(120.0)
    voltage, current = smu.measure()
    assert abs(current) <= STANDBY_CURRENT_LIMIT_A
    assert voltage == pytest.approx(stack.terminal_voltage_V(), abs=1e-5)  # the rest is still measured
    assert stack.charged_Ah == pytest.approx(0.0667 * 60.0 / 3600.0, abs=2 * STANDBY_CURRENT_LIMIT_A * 60 / 3600)
    smu.safe_state()
    assert simulation.instruments["smu"].output_on is False


# --- a run on the built-in bench, through the real runner ----------------------------------

SHORT_CYCLE = """
name: short-smu-cycle
steps:
  - {step: cc, name: charge, current_A: 0.1, until: [{step_time_s: 900}, {voltage_above_V: 4.2}]}
  - {step: rest, name: rest, duration_s: 120}
  - {step: cc, name: discharge, current_A: -0.1, until: [{step_time_s: 600}, {voltage_below_V: 3.0}]}
  - {step: rest, name: rest after, duration_s: 60}
"""


def test_run_on_the_2450_bench_logs_the_charge_the_cell_counted(run_text):
    result = run_text(SHORT_CYCLE, bench="sim-keithley2450")
    assert result.outcome.state == "completed"
    stack = result.simulation.world.stack
    samples = samples_of(result)
    last = samples.iloc[-1]
    assert last["Charging Capacity / Ah"] == pytest.approx(stack.charged_Ah, rel=0.002)
    assert last["Discharging Capacity / Ah"] == pytest.approx(stack.discharged_Ah, rel=0.002)
    assert stack.charged_Ah == pytest.approx(0.1 * 900 / 3600, rel=0.002)  # 25 mAh in, 16.7 mAh out
    assert stack.discharged_Ah == pytest.approx(0.1 * 600 / 3600, rel=0.002)
    rests = samples[samples["Step Type"] == "REST"]
    assert rests["Current / A"].abs().max() < 1e-4  # standby: a microampere, plus noise
    assert rests["Voltage / V"].between(3.0, 4.3).all()  # ... and the cell's voltage still read
    assert "safe_state" in {e["event"] for e in events_of(result)}


def test_capacity_check_on_the_2450_bench_finds_the_cells_capacity(run_protocol):
    result = run_protocol(bench="sim-keithley2450")  # at 1C, one-minute rests
    assert result.outcome.state == "completed"
    stack = result.simulation.world.stack
    summary = pd.read_csv(result.outcome.folder / "summary.csv").iloc[0]
    assert summary["Discharging Capacity / Ah"] == pytest.approx(stack.discharged_Ah, rel=0.002)
    assert summary["Charging Capacity / Ah"] == pytest.approx(stack.charged_Ah, rel=0.002)
    assert 0.18 < summary["Discharging Capacity / Ah"] < 0.21  # 0.2 Ah nominal, less at 1C


def test_an_interrupted_run_on_the_2450_bench_resumes_and_completes(run_protocol):
    stop = StopRequest()
    first = run_protocol(bench="sim-keithley2450", reporter=StopAfter(stop, 600), stop=stop)  # in the charge
    assert first.outcome.state == "interrupted" and first.outcome.outputs_confirmed_off
    previews = []
    result = resume(first.outcome.folder, SilentReporter(), confirm=lambda preview: previews.append(preview) or True)
    assert result.outcome.state == "completed"
    assert not previews[0].problems and previews[0].output_found_on is False
    stack = result.simulation.world.stack
    assert samples_of(result)["Discharging Capacity / Ah"].iloc[-1] == pytest.approx(stack.discharged_Ah, rel=0.002)
