"""Rigol DL3021: the driver at message level (exact strings sent, replies parsed), the simulator's
SCPI and physics against the stack model, and the two together."""

from __future__ import annotations

import pytest
from support import ScriptedTransport

from stackcycler.clock import VirtualClock
from stackcycler.drivers.rigol_dl3021 import RigolDl3021, parse_function
from stackcycler.drivers.sim.rigol_dl3021 import RigolDl3021SimConfig, SimRigolDl3021
from stackcycler.drivers.sim.stack import StackModel, StackParameters
from stackcycler.drivers.sim.world import SimWorld
from stackcycler.drivers.transport import InProcessTransport
from stackcycler.errors import InstrumentError, InvalidInput

IDN = "RIGOL TECHNOLOGIES,DL3021,DL3A204800938,00.01.05.00.01"  # reference §3
NO_ERROR = '0,"No error"'

CONNECT = [
    ("*IDN?", IDN), ("*CLS", None),
    (":SOUR:INP:STAT?", "0"),
    (":SOUR:INP:STAT 0", None), ("SYST:ERR?", NO_ERROR),
    (":SOUR:FUNC:MODE FIX", None), ("SYST:ERR?", NO_ERROR),
    (":SOUR:CURR:RANG 40", None), ("SYST:ERR?", NO_ERROR),
]


def connected(*more) -> tuple[RigolDl3021, ScriptedTransport]:
    transport = ScriptedTransport(CONNECT + list(more))
    load = RigolDl3021(transport)
    load.connect()
    return load, transport


# --- message level -------------------------------------------------------------------------------


def test_connect_switches_the_input_off_regulates_from_the_static_mode_and_reads_the_ratings():
    load, transport = connected()
    assert load.identity == IDN and load.input_found_on is False
    assert (load.ratings.voltage_V, load.ratings.current_A, load.ratings.power_W) == (150.0, 40.0, 200.0)
    transport.done()


def test_connect_refuses_another_instrument():
    transport = ScriptedTransport([("*IDN?", "B&K Precision,8500,123,1.84")])
    with pytest.raises(InstrumentError, match="is not a Rigol DL3021/DL3031 load"):
        RigolDl3021(transport).connect()


def test_protection_picks_the_4_A_range_for_a_small_threshold():
    load, transport = connected((":SOUR:CURR:RANG 4", None), ("SYST:ERR?", NO_ERROR))
    load.set_protection(4.5675, 0.462)
    transport.done()


def test_protection_beyond_the_rating_is_refused_before_anything_is_sent():
    load, transport = connected()
    with pytest.raises(InvalidInput, match="over_current_A = 45.0 is outside the model's range 0 to 40"):
        load.set_protection(10.0, 45.0)
    transport.done()


def test_cc_sends_the_value_then_the_function_and_resends_only_what_changed():
    load, transport = connected((":SOUR:CURR:LEV:IMM 0.06666", None), (":SOUR:FUNC CURR", None),
                                ("SYST:ERR?", NO_ERROR),
                                (":SOUR:CURR:LEV:IMM 0.1", None), ("SYST:ERR?", NO_ERROR))
    load.set_mode("CC", 0.06666)
    load.set_mode("CC", 0.06666)  # nothing changed: nothing sent
    load.set_mode("CC", 0.1)
    transport.done()


def test_hold_voltage_is_cv_with_its_current_limit():
    load, transport = connected((":SOUR:VOLT:LEV:IMM 3.0", None), (":SOUR:VOLT:ILIM 0.06666", None),
                                (":SOUR:FUNC VOLT", None), ("SYST:ERR?", NO_ERROR))
    load.hold_voltage(3.0, 0.06666)
    transport.done()


def test_a_set_value_above_the_armed_threshold_or_the_range_is_refused_with_nothing_sent():
    load, transport = connected((":SOUR:CURR:RANG 4", None), ("SYST:ERR?", NO_ERROR))
    load.set_protection(4.5, 0.462)
    with pytest.raises(InvalidInput, match=r"cc_current_A = 0.5 is outside the model's range 0 to 0.462"):
        load.set_mode("CC", 0.5)
    with pytest.raises(InvalidInput, match=r"cv_voltage_V = 5.0 is outside the model's range 0 to 4.5"):
        load.hold_voltage(5.0, 0.1)
    with pytest.raises(InvalidInput, match="mode 'CX' is not one of CC, CV, CR, CP"):
        load.set_mode("CX", 1.0)
    transport.done()


@pytest.mark.parametrize("reply, mode", [("CC", "CC"), ("CURR", "CC"), ("VOLTAGE", "CV"), ("cr", "CR"),
                                         ("POW", "CP")])
def test_the_function_reply_is_read_in_either_form(reply, mode):
    assert parse_function(reply) == mode


def test_an_unknown_function_reply_is_an_instrument_error():
    with pytest.raises(InstrumentError, match="expected a static mode"):
        parse_function("BATT")


def test_measure_gives_the_sunk_current_negative():
    load, transport = connected((":MEAS:VOLT?", "20.031200"), (":MEAS:CURR?", "0.066610"))
    assert load.measure() == (20.0312, -0.06661)
    transport.done()


@pytest.mark.parametrize("empty", ['0,"No error"', '+0,"No error"'])
def test_an_empty_error_queue_is_read_in_either_form(empty):
    load, transport = connected(("SYST:ERR?", empty))
    load.check_errors()
    transport.done()


def test_safe_state_switches_off_unchecked_and_confirms():
    load, transport = connected((":SOUR:INP:STAT 0", None), (":SOUR:INP:STAT?", "1"))
    with pytest.raises(InstrumentError, match="input still on"):
        load.safe_state()
    transport.done()


# --- the simulator, from the stack model ----------------------------------------------------------


def simulated(soc: float = 0.5):
    clock = VirtualClock()
    world = SimWorld(StackModel(StackParameters(layers=1, layer_capacity_Ah=0.2, r0_ohm=0.25, capacity_spread=0.0,
                                                r0_spread=0.0, initial_soc=soc, initial_soc_spread=0.0), seed=1),
                     clock)
    sim = SimRigolDl3021(world, "eload", RigolDl3021SimConfig(voltage_noise_V=0.0, current_noise_A=0.0))
    return sim, world, clock


def test_sim_identity_and_error_queue():
    sim, _, _ = simulated()
    assert sim.handle("*IDN?") == IDN
    sim.handle(":SOUR:CURR:RANG 5")
    assert sim.handle(":SYST:ERR?") == '-224,"Illegal parameter value"'
    assert sim.handle(":SYST:ERR?") == NO_ERROR


def test_sim_cc_sinks_the_set_current_from_the_stack():
    sim, world, _ = simulated()
    sim.handle(":SOUR:CURR:RANG 4;:SOUR:CURR:LEV:IMM 0.1;:SOUR:FUNC CURR;:SOUR:INP:STAT 1")
    world.sync()
    assert world.stack.current_A == pytest.approx(-0.1)
    assert sim.handle(":MEAS:CURR?") == "0.100000"
    emf, resistance = world.stack.thevenin()
    assert float(sim.handle(":MEAS:VOLT?")) == pytest.approx(emf - 0.1 * resistance, abs=1e-6)
    assert sim.handle(":SOUR:FUNC?") == "CC"


def test_sim_cv_with_a_current_limit_holds_the_limit_until_the_stack_comes_down_to_the_voltage():
    sim, world, _ = simulated(soc=0.5)
    emf, resistance = world.stack.thevenin()
    sim.handle(f":SOUR:VOLT:LEV:IMM {emf - 0.5:.6f};:SOUR:VOLT:ILIM 0.05;:SOUR:FUNC VOLT;:SOUR:INP:STAT 1")
    world.sync()
    assert world.stack.current_A == pytest.approx(-0.05)  # limited: far above the voltage
    sim.handle(f":SOUR:VOLT:LEV:IMM {emf - 0.005:.6f}")
    world.sync()
    assert world.stack.current_A == pytest.approx(-0.005 / resistance, rel=1e-3)  # regulating the voltage


def test_sim_sinks_nothing_from_a_stack_below_its_cv_voltage_or_with_the_input_off():
    sim, world, _ = simulated(soc=0.5)
    sim.handle(":SOUR:VOLT:LEV:IMM 4.2;:SOUR:VOLT:ILIM 1;:SOUR:FUNC VOLT;:SOUR:INP:STAT 1")
    world.sync()
    assert world.stack.current_A == 0.0 and sim.handle(":SOUR:INP:STAT?") == "1"
    sim.handle(":SOUR:FUNC CURR;:SOUR:CURR:LEV:IMM 1;:SOUR:INP:STAT 0")
    world.sync()
    assert world.stack.current_A == 0.0 and sim.handle(":SOUR:INP:STAT?") == "0"


def test_sim_refuses_a_cc_value_beyond_its_range():
    sim, _, _ = simulated()
    sim.handle(":SOUR:CURR:RANG 4")
    sim.handle(":SOUR:CURR:LEV:IMM 5")
    assert sim.handle(":SYST:ERR?") == '-222,"Data out of range"'


# --- the driver on the simulator -------------------------------------------------------------------


def test_the_driver_discharges_the_simulated_cell_and_counts_what_the_cell_counts():
    sim, world, clock = simulated(soc=0.9)
    load = RigolDl3021(InProcessTransport(sim, "sim://eload"))
    load.connect()
    load.set_protection(4.5, 0.462)
    load.set_mode("CC", 0.1)
    load.set_input(True)
    currents = []
    for tick in range(1, 1801):
        clock.sleep_until(float(tick))
        currents.append(load.measure()[1])
    load.check_errors()
    load.safe_state()
    assert not sim.input_on
    assert -sum(currents) / 3600 == pytest.approx(world.stack.discharged_Ah, rel=1e-9)
    assert world.stack.discharged_Ah == pytest.approx(0.05, rel=1e-9)
