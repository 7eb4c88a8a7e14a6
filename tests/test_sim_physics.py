"""The simulated world: the stack's physics, and simulated instruments that compute replies from it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stackcycler.clock import VirtualClock
from stackcycler.drivers.sensors import LoadCell, PressureFixture
from stackcycler.drivers.sim.daq970a import Daq970aSimConfig, SimDaq970a
from stackcycler.drivers.sim.ea_psb import EaPsbSimConfig, SimEaPsb
from stackcycler.drivers.sim.stack import InternalShort, StackModel, StackParameters
from stackcycler.drivers.sim.world import SimWorld

FIXTURE = PressureFixture(active_area_cm2=620, load_cell=LoadCell(rated_force_kN=500, sensitivity_mV_per_V=2.0,
                                                                   excitation_V=10.0))


def stack(**changes) -> StackModel:
    return StackModel(StackParameters(**changes), seed=1)


# --- the stack --------------------------------------------------------------------------------


def test_terminal_voltage_is_the_sum_of_the_layers_plus_the_interconnect_drop():
    model = stack()
    model.advance(1.5, 10.0)
    assert model.terminal_voltage_V() == pytest.approx(float(np.sum(model.layer_voltages_V())) + 1.5 * 0.002)


def test_coulomb_counting_per_layer_and_for_the_stack():
    model = stack(coulombic_efficiency=0.998, capacity_fade_per_efc=0.0)
    soc0 = model.soc.copy()
    model.advance(2.0, 1800.0)  # 1 Ah in
    assert model.soc - soc0 == pytest.approx(0.998 * 1.0 / model.capacity_Ah)
    assert model.charged_Ah == pytest.approx(1.0)
    model.advance(-1.0, 1800.0)  # 0.5 Ah out, all of it counted
    assert model.soc - soc0 == pytest.approx((0.998 - 0.5) / model.capacity_Ah)
    assert model.discharged_Ah == pytest.approx(0.5)


def test_capacity_fades_and_resistance_grows_with_equivalent_full_cycles():
    model = stack(capacity_fade_per_efc=0.01, resistance_growth_per_efc=0.02)
    fresh_capacity, fresh_r0 = model.capacity_Ah.copy(), model.r0_ref_ohm.copy()
    model.advance(2.05, 3600.0)  # 2.05 Ah in: one EFC of a 2.05 Ah layer is 4.1 Ah moved
    assert model.equivalent_full_cycles == pytest.approx(0.5)
    assert model.capacity_Ah == pytest.approx(fresh_capacity * (1 - 0.01 * 0.5))
    assert model.r0_ref_ohm == pytest.approx(fresh_r0 * (1 + 0.02 * 0.5))


def test_the_rc_branch_follows_the_exact_exponential():
    model = stack(r1_ohm=0.015, tau1_s=40.0)
    r1 = model.r1_ref_ohm * model._arrhenius()  # at the temperature the interval starts at
    model.advance(2.0, 40.0)  # one time constant
    expected = 2.0 * r1 * (1 - math.exp(-1))
    assert model.v_rc == pytest.approx(expected, rel=1e-3)


def test_layers_differ_by_a_seeded_spread_and_the_seed_reproduces_it():
    a, b, c = StackModel(StackParameters(), seed=1), StackModel(StackParameters(), seed=1), StackModel(
        StackParameters(), seed=2)
    assert np.array_equal(a.capacity_Ah, b.capacity_Ah) and np.array_equal(a.r0_ref_ohm, b.r0_ref_ohm)
    assert not np.array_equal(a.capacity_Ah, c.capacity_Ah)
    assert 0.002 < np.std(a.capacity_Ah) / 2.05 < 0.02  # about the configured 0.8 %


def test_a_weak_layer_is_scaled_by_its_number_from_one():
    plain, weak = stack(), stack(layer_capacity_scale={7: 0.85})
    assert weak.capacity_Ah[6] == pytest.approx(0.85 * plain.capacity_Ah[6])
    assert np.array_equal(np.delete(weak.capacity_Ah, 6), np.delete(plain.capacity_Ah, 6))
    with pytest.raises(ValueError, match="names layer 30, but the stack has 23 layers"):
        stack(layer_capacity_scale={30: 0.9})


def test_the_stack_warms_under_current_towards_the_steady_state_and_cools_at_rest():
    model = stack()
    for _ in range(200):
        model.advance(2.0, 60.0)  # 200 min at 1C: many thermal time constants (1500 s)
    heat_W = 4.0 * (float(np.sum(model.layer_r0_ohm())) + 0.002) + float(
        np.sum(model.v_rc ** 2 / (model.r1_ref_ohm * model._arrhenius())))
    assert model.temperature_degC == pytest.approx(25.0 + 3.0 * heat_W, abs=0.05)
    for _ in range(300):
        model.advance(0.0, 60.0)
    assert model.temperature_degC == pytest.approx(25.0, abs=0.01)


def test_pressure_rises_with_state_of_charge_as_the_lithium_anode_swells():
    model = stack(initial_soc=0.0, initial_soc_spread=0.0)
    assert model.pressure_MPa() == pytest.approx(5.0)
    model.advance(2.0, 3600.0)
    assert model.pressure_MPa() == pytest.approx(5.0 + 1.5 * float(np.mean(model.soc))
                                                 + 0.02 * (model.temperature_degC - 25.0))


def test_load_cell_and_fixture_conversions_round_trip():
    assert FIXTURE.load_cell.full_scale_V == pytest.approx(0.02)
    assert FIXTURE.output_V(5.0) == pytest.approx(0.02 * 310.0 / 500.0)  # 5 MPa on 620 cm2 = 310 kN
    assert FIXTURE.pressure_MPa(FIXTURE.output_V(6.25)) == pytest.approx(6.25)


# --- the simulated EA PSB ------------------------------------------------------------------


def world_with_psb(**stack_changes) -> tuple[SimWorld, SimEaPsb, VirtualClock]:
    clock = VirtualClock()
    world = SimWorld(stack(**stack_changes), clock, fixture=FIXTURE)
    psb = SimEaPsb(world, "supply", EaPsbSimConfig(voltage_noise_V=0.0, current_noise_A=0.0))
    psb.handle("SYST:LOCK ON")
    return world, psb, clock


def amps(psb: SimEaPsb) -> float:
    return float(psb.handle("MEAS:CURR?").rstrip("A"))


def test_psb_sources_its_current_limit_when_set_above_the_stack():
    world, psb, clock = world_with_psb()
    psb.handle("VOLT 97.75;CURR 0.5;SINK:CURR 0;:OUTP ON")
    clock.sleep_until(60.0)
    assert amps(psb) == 0.5
    assert world.stack.charged_Ah == pytest.approx(0.5 * 60 / 3600)


def test_psb_sinks_its_sink_limit_when_set_below_the_stack():
    _, psb, clock = world_with_psb(initial_soc=0.5)
    psb.handle("VOLT 60;CURR 0;SINK:CURR 1.25;:OUTP ON")
    clock.sleep_until(10.0)
    assert amps(psb) == -1.25


def test_psb_holds_its_voltage_and_the_current_tapers():
    world, psb, clock = world_with_psb(initial_soc=0.9)
    psb.handle("VOLT 96.5;CURR 2;SINK:CURR 0;:OUTP ON")
    clock.sleep_until(60.0)
    first = amps(psb)
    clock.sleep_until(600.0)
    assert float(psb.handle("MEAS:VOLT?").rstrip("V")) == pytest.approx(96.5, abs=0.01)
    assert 0 < amps(psb) < first < 2.0  # held at the voltage, below the 2 A limit, falling


def test_psb_over_voltage_protection_latches_the_output_off():
    _, psb, clock = world_with_psb(initial_soc=0.9)
    psb.handle("VOLT:PROT 95;:VOLT 100;CURR 1;OUTP ON")
    clock.sleep_until(600.0)
    assert psb.handle("OUTP?") == "OFF" and psb.alarm == "OVP"
    psb.handle("OUTP ON")
    assert psb.handle("OUTP?") == "OFF"
    assert psb.handle("SYST:ERR?") == '-200,"Execution error; OVP alarm active"'


def test_psb_refuses_settings_until_remote_control_is_locked():
    clock = VirtualClock()
    psb = SimEaPsb(SimWorld(stack(), clock), "supply", EaPsbSimConfig())
    psb.handle("VOLT 50")
    assert psb.voltage_V == 0.0
    assert psb.handle("SYST:ERR?").startswith("-203,")


def test_psb_reads_no_current_with_the_output_off():
    _, psb, clock = world_with_psb()
    clock.sleep_until(30.0)
    assert amps(psb) == 0.0
    assert float(psb.handle("MEAS:VOLT?").rstrip("V")) > 60  # the stack is still there


# --- the simulated DAQ970A -------------------------------------------------------------------


def daq(world: SimWorld) -> SimDaq970a:
    config = Daq970aSimConfig(layer_channels="101:120,201:203", thermocouples={204: "stack", 205: "ambient"},
                              load_cell_channel=206, voltage_noise_V=0.0, temperature_noise_degC=0.0)
    return SimDaq970a(world, "daq", config)


def test_daq_reads_each_layer_in_ascending_channel_order():
    world = SimWorld(stack(), VirtualClock(), fixture=FIXTURE)
    instrument = daq(world)
    instrument.handle("CONF:VOLT:DC 10,(@203,101:120,201,202)")
    readings = [float(v) for v in instrument.handle("READ?").split(",")]
    assert readings == pytest.approx(world.stack.layer_voltages_V().tolist(), abs=1e-7)


def test_daq_configure_redefines_the_scan_list_and_route_scan_answers_a_block():
    instrument = daq(SimWorld(stack(), VirtualClock(), fixture=FIXTURE))
    instrument.handle("CONF:VOLT:DC 10,(@101:103)")
    instrument.handle("CONF:TEMP TC,K,(@204)")
    assert instrument.handle("ROUT:SCAN?") == "#16(@204)"
    instrument.handle("ROUT:SCAN (@101:103,204)")
    assert instrument.handle("ROUT:SCAN?") == "#218(@101,102,103,204)"
    assert instrument.handle("ROUT:SCAN:SIZE?") == "+4"


def test_daq_thermocouple_and_load_cell_channels_follow_the_stack():
    world = SimWorld(stack(), VirtualClock(), fixture=FIXTURE)
    instrument = daq(world)
    instrument.handle("CONF:TEMP TC,K,(@204)")
    temperature = float(instrument.handle("READ?"))
    assert temperature == pytest.approx(25.0, abs=1.0)  # stack temperature plus the sensor's offset
    instrument.handle("CONF:VOLT:DC 0.1,(@206)")
    assert float(instrument.handle("READ?")) == pytest.approx(FIXTURE.output_V(world.stack.pressure_MPa()), abs=1e-9)


def test_daq_overload_reads_nine_point_nine_e37():
    instrument = daq(SimWorld(stack(), VirtualClock(), fixture=FIXTURE))
    instrument.handle("CONF:VOLT:DC 1,(@101)")  # a 3 V layer on the 1 V range
    assert instrument.handle("READ?") == "+9.90000000E+37"


@pytest.mark.parametrize("channel", [125, 401, 100])
def test_daq_refuses_a_channel_it_does_not_have(channel):
    instrument = daq(SimWorld(stack(), VirtualClock(), fixture=FIXTURE))
    instrument.handle(f"CONF:VOLT:DC 10,(@{channel})")
    assert instrument.handle("SYST:ERR?").startswith("-224,")


def test_an_internal_short_drains_its_layer_at_its_voltage_over_its_resistance():
    params = StackParameters(layers=3, capacity_spread=0, initial_soc=0.6, initial_soc_spread=0,
                             internal_short=InternalShort(layer=2, resistance_ohm=100.0, from_soc=0.5))
    stack = StackModel(params, seed=1)
    emf = stack.layer_voltages_V()[1]
    stack.advance(0.0, 60.0)  # open circuit for a minute
    expected = emf / 100.0 * 60.0 / 3600.0 / stack.capacity_Ah[1]
    assert stack.soc[0] == stack.soc[2] == 0.6  # the others untouched
    assert 0.6 - stack.soc[1] == pytest.approx(expected, rel=1e-9)
    assert stack.short_active and stack.snapshot()["short_active"] is True
