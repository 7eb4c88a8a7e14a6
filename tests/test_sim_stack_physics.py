"""The simulated world: the stack model, the world that integrates it, the simulated PSB and DAQ
that compute their replies from it, and the load cell / pressure fixture conversions.

Expected numbers are computed here from the model's equations, on a stack with no spread
between layers where that makes them simple (every layer at a point of the OCV table).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from stackcycler.clock import VirtualClock
from stackcycler.drivers.sensors import LoadCell, PressureFixture
from stackcycler.drivers.sim.daq970a import Daq970aSimConfig, SimDaq970a
from stackcycler.drivers.sim.ea_psb import EaPsbSimConfig, SimEaPsb
from stackcycler.drivers.sim.stack import StackModel, StackParameters
from stackcycler.drivers.sim.world import MAX_STEP_S, SimWorld

LOAD_CELL = LoadCell(rated_force_kN=500, sensitivity_mV_per_V=2.0, excitation_V=10.0)  # 20 mV full scale
FIXTURE = PressureFixture(active_area_cm2=620, load_cell=LOAD_CELL)
OVERLOAD = "+9.90000000E+37"

# 23 identical layers at 50 % SOC, where the OCV table gives exactly 3.84 V; no ageing.
UNIFORM = dict(layers=23, layer_capacity_Ah=2.05, capacity_spread=0.0, r0_ohm=0.025, r0_spread=0.0, r1_ohm=0.015,
               tau1_s=40.0, interconnect_ohm=0.002, initial_soc=0.5, initial_soc_spread=0.0,
               capacity_fade_per_efc=0.0, resistance_growth_per_efc=0.0)


def uniform_stack(**changes) -> StackModel:
    return StackModel(StackParameters(**(UNIFORM | changes)), seed=1)


def nr3(value: float) -> str:
    return f"{value:+.8E}"


# --- the stack model ---------------------------------------------------------------------------


@pytest.mark.parametrize("soc, ocv", [(0.5, 3.84), (1.0, 4.24), (0.55, 3.875), (0.0, 3.00)])
def test_at_rest_the_terminal_voltage_is_the_layer_count_times_the_ocv(soc, ocv):
    model = uniform_stack(initial_soc=soc)
    assert model.terminal_voltage_V() == pytest.approx(23 * ocv, rel=1e-12)


def test_terminal_voltage_is_the_sum_of_the_layer_voltages_plus_the_interconnect_drop():
    model = uniform_stack()
    model.advance(2.0, 0.0)  # the current flows; no time has passed
    layer_V = 3.84 + 2.0 * 0.025
    assert model.layer_voltages_V() == pytest.approx(np.full(23, layer_V), rel=1e-12)
    assert model.terminal_voltage_V() == pytest.approx(23 * layer_V + 2.0 * 0.002, rel=1e-12)


def test_terminal_voltage_of_a_seeded_stack_with_spread_is_the_layer_sum_plus_the_interconnect_drop():
    model = StackModel(StackParameters(), seed=3)
    model.advance(-1.5, 25.0)
    assert model.terminal_voltage_V() == pytest.approx(float(np.sum(model.layer_voltages_V())) - 1.5 * 0.002,
                                                       rel=1e-12)


def test_thevenin_source_and_resistance_reproduce_the_terminal_voltage():
    model = StackModel(StackParameters(), seed=2)
    model.advance(1.0, 30.0)
    emf, resistance = model.thevenin()
    assert emf + 1.0 * resistance == pytest.approx(model.terminal_voltage_V(), rel=1e-12)


def test_charging_raises_each_layer_soc_by_efficiency_times_charge_over_capacity():
    model = uniform_stack(coulombic_efficiency=0.998)
    model.advance(2.0, 1800.0)  # 1 Ah
    assert model.soc == pytest.approx(np.full(23, 0.5 + 0.998 * 2.0 * 1800.0 / (3600.0 * 2.05)), rel=1e-12)


def test_charging_counts_the_charge_delivered_in_charged_ah():
    model = uniform_stack(coulombic_efficiency=0.998)
    model.advance(2.0, 1800.0)
    assert model.charged_Ah == pytest.approx(1.0, rel=1e-12)
    assert model.discharged_Ah == 0.0


def test_discharging_lowers_soc_by_the_full_charge_and_counts_it_in_discharged_ah():
    model = uniform_stack(coulombic_efficiency=0.998)
    model.advance(-1.0, 1800.0)  # 0.5 Ah out: no efficiency on the way out
    assert model.soc == pytest.approx(np.full(23, 0.5 - 0.5 / 2.05), rel=1e-12)
    assert model.discharged_Ah == pytest.approx(0.5, rel=1e-12)
    assert model.charged_Ah == 0.0


def test_coulomb_counting_does_not_depend_on_the_step_size():
    one_step, many_steps = uniform_stack(), uniform_stack()
    one_step.advance(2.0, 1800.0)
    for _ in range(1800):
        many_steps.advance(2.0, 1.0)
    assert many_steps.charged_Ah == pytest.approx(one_step.charged_Ah, rel=1e-12)
    assert many_steps.soc == pytest.approx(one_step.soc, rel=1e-12)


def test_the_rc_voltage_follows_the_exact_exponential_charge():
    model = uniform_stack()
    model.advance(2.0, 30.0)
    assert model.v_rc == pytest.approx(np.full(23, 2.0 * 0.015 * (1 - math.exp(-30.0 / 40.0))), rel=1e-12)


def test_the_rc_voltage_relaxes_exponentially_at_rest():
    model = uniform_stack()
    model.advance(2.0, 30.0)
    charged = model.v_rc.copy()
    model.advance(0.0, 20.0)
    assert model.v_rc == pytest.approx(charged * math.exp(-20.0 / 40.0), rel=1e-12)


def test_the_rc_solution_is_exact_whatever_the_step_size():
    model = uniform_stack(activation_energy_J_per_mol=0.0)  # R1 independent of the (rising) temperature
    for _ in range(30):
        model.advance(2.0, 1.0)
    assert model.v_rc == pytest.approx(np.full(23, 2.0 * 0.015 * (1 - math.exp(-30.0 / 40.0))), rel=1e-12)


def test_a_seeded_stack_is_reproducible():
    a, b = StackModel(StackParameters(), seed=7), StackModel(StackParameters(), seed=7)
    for name in ("capacity_Ah", "r0_ref_ohm", "soc"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


def test_a_different_seed_gives_a_different_stack():
    a, b = StackModel(StackParameters(), seed=7), StackModel(StackParameters(), seed=8)
    for name in ("capacity_Ah", "r0_ref_ohm", "soc"):
        assert not np.any(getattr(a, name) == getattr(b, name)), name


def test_layer_capacity_scale_scales_only_the_named_layer_counting_from_one():
    plain = StackModel(StackParameters(), seed=1)
    weak = StackModel(StackParameters(layer_capacity_scale={7: 0.85}), seed=1)
    expected = plain.capacity_Ah.copy()
    expected[6] *= 0.85
    assert weak.capacity_Ah == pytest.approx(expected, rel=1e-15)
    assert np.array_equal(np.delete(weak.capacity_Ah, 6), np.delete(plain.capacity_Ah, 6))


def test_layer_capacity_scale_rejects_a_layer_beyond_the_stack():
    with pytest.raises(ValueError, match="names layer 24, but the stack has 23 layers"):
        StackModel(StackParameters(layers=23, layer_capacity_scale={24: 0.9}))


@pytest.mark.parametrize("scale, message", [({0: 0.9}, "layer numbers start at 1"),
                                            ({3: 0.0}, "capacity factor of layer 3 must be > 0")])
def test_layer_capacity_scale_rejects_layer_zero_and_non_positive_factors(scale, message):
    with pytest.raises(ValidationError, match=message):
        StackParameters(layer_capacity_scale=scale)


def test_one_step_under_load_heats_by_the_exact_first_order_response():
    model = uniform_stack()  # starts at ambient = reference temperature, RC branch empty
    model.advance(2.0, 300.0)
    heat_W = 2.0**2 * (23 * 0.025 + 0.002)
    tau_s = 500.0 * 3.0
    assert model.temperature_degC == pytest.approx(25.0 + heat_W * 3.0 * (1 - math.exp(-300.0 / tau_s)), rel=1e-12)


def test_under_constant_load_the_temperature_settles_at_ambient_plus_power_times_thermal_resistance():
    # a fast thermal and RC response so the steady state is reached; R independent of temperature
    model = uniform_stack(heat_capacity_J_per_K=10.0, tau1_s=1.0, activation_energy_J_per_mol=0.0)
    for _ in range(900):  # 30 thermal time constants
        model.advance(2.0, 1.0)
    heat_W = 2.0**2 * (23 * 0.025 + 0.002 + 23 * 0.015)  # ohmic plus the settled RC branch
    assert model.temperature_degC == pytest.approx(25.0 + heat_W * 3.0, abs=1e-6)


def test_at_rest_the_temperature_returns_to_ambient():
    model = uniform_stack(heat_capacity_J_per_K=10.0, tau1_s=1.0)
    for _ in range(300):
        model.advance(2.0, 1.0)
    assert model.temperature_degC > 30.0
    for _ in range(900):
        model.advance(0.0, 1.0)
    assert model.temperature_degC == pytest.approx(25.0, abs=1e-6)


def test_pressure_is_preload_plus_swelling_times_mean_soc():
    model = uniform_stack(preload_MPa=5.0, swelling_MPa_per_soc=1.5)
    assert model.pressure_MPa() == pytest.approx(5.0 + 1.5 * 0.5, rel=1e-12)


def test_pressure_rises_with_soc_by_the_swelling_coefficient():
    model = uniform_stack(swelling_MPa_per_soc=1.5, thermal_pressure_MPa_per_K=0.0, coulombic_efficiency=0.998)
    before = model.pressure_MPa()
    model.advance(2.0, 1800.0)
    assert model.pressure_MPa() - before == pytest.approx(1.5 * 0.998 * 1.0 / 2.05, rel=1e-9)


def test_pressure_rises_with_temperature_by_the_thermal_coefficient():
    model = uniform_stack(swelling_MPa_per_soc=0.0, thermal_pressure_MPa_per_K=0.02)
    before = model.pressure_MPa()
    model.advance(2.0, 300.0)
    assert model.pressure_MPa() - before == pytest.approx(0.02 * (model.temperature_degC - 25.0), rel=1e-9)


# --- load cell and pressure fixture ----------------------------------------------------------


def test_load_cell_full_scale_is_sensitivity_times_excitation():
    assert LOAD_CELL.full_scale_V == pytest.approx(0.020, rel=1e-12)


@pytest.mark.parametrize("force_kN, output_V", [(0.0, 0.0), (250.0, 0.010), (500.0, 0.020), (310.0, 0.0124)])
def test_load_cell_output_is_linear_in_force(force_kN, output_V):
    assert LOAD_CELL.output_V(force_kN) == pytest.approx(output_V, abs=1e-15)
    assert LOAD_CELL.force_kN(output_V) == pytest.approx(force_kN, abs=1e-9)


def test_load_cell_zero_offset_shifts_the_output():
    cell = LOAD_CELL.model_copy(update={"zero_offset_V": 0.001})
    assert cell.output_V(250.0) == pytest.approx(0.011, abs=1e-15)
    assert cell.force_kN(0.011) == pytest.approx(250.0, rel=1e-12)


def test_fixture_pressure_is_force_over_active_area():
    # 5 MPa on 620 cm2 = 310 kN = 0.0124 V on a 500 kN, 20 mV load cell
    assert FIXTURE.output_V(5.0) == pytest.approx(0.0124, rel=1e-12)
    assert FIXTURE.pressure_MPa(0.0124) == pytest.approx(5.0, rel=1e-12)


@pytest.mark.parametrize("pressure_MPa", [0.0, 2.0, 5.75, 10.0])
def test_fixture_conversions_round_trip(pressure_MPa):
    assert FIXTURE.pressure_MPa(FIXTURE.output_V(pressure_MPa)) == pytest.approx(pressure_MPa, abs=1e-12)


# --- the world: lazy integration on the clock ---------------------------------------------------


class ConstantCurrent:
    """A terminal source that drives a fixed current and records every time it is asked."""

    def __init__(self, current_A: float):
        self.current_A = current_A
        self.asked = 0

    def current_into_dut(self, emf_V: float, resistance_ohm: float) -> float:
        self.asked += 1
        return self.current_A


def world_with(source, **stack_changes) -> tuple[SimWorld, VirtualClock]:
    clock = VirtualClock()
    world = SimWorld(uniform_stack(**stack_changes), clock, fixture=FIXTURE)
    world.connect(source)
    return world, clock


def test_sync_carries_the_present_current_up_to_the_clocks_now():
    world, clock = world_with(ConstantCurrent(1.5))
    clock.sleep_until(100.0)
    world.sync()
    assert world.stack.charged_Ah == pytest.approx(1.5 * 100.0 / 3600.0, rel=1e-12)
    assert world.stack.current_A == 1.5


def test_sync_without_elapsed_time_only_settles_the_current():
    source = ConstantCurrent(1.5)
    world, _ = world_with(source)
    world.sync()
    assert world.stack.current_A == 1.5
    assert world.stack.charged_Ah == 0.0


def test_sync_asks_the_sources_for_their_current_at_least_once_per_max_step():
    source = ConstantCurrent(1.0)
    world, clock = world_with(source)
    clock.sleep_until(10.5)
    world.sync()
    assert source.asked >= math.ceil(10.5 / MAX_STEP_S)


def test_sync_with_neither_time_nor_settings_changed_leaves_the_settled_current_alone():
    source = ConstantCurrent(1.5)
    world, _ = world_with(source)
    world.sync()
    asked = source.asked
    world.sync()
    assert source.asked == asked and world.stack.current_A == 1.5


def test_sync_settles_the_current_again_after_a_setting_changed_at_the_same_instant():
    source = ConstantCurrent(1.5)
    world, _ = world_with(source)
    world.sync()
    source.current_A = 0.5
    world.settings_changed()
    world.sync()
    assert world.stack.current_A == 0.5
    assert world.stack.charged_Ah == 0.0


def test_the_currents_of_all_connected_sources_add():
    world, clock = world_with(ConstantCurrent(1.5))
    world.connect(ConstantCurrent(-0.5))
    clock.sleep_until(36.0)
    world.sync()
    assert world.stack.current_A == 1.0
    assert world.stack.charged_Ah == pytest.approx(1.0 * 36.0 / 3600.0, rel=1e-12)


def test_the_load_cell_output_is_the_fixtures_output_at_the_stack_pressure():
    world, _ = world_with(ConstantCurrent(0.0))
    assert world.load_cell_output_V() == pytest.approx(FIXTURE.output_V(5.0 + 1.5 * 0.5), rel=1e-12)


def test_without_a_fixture_the_load_cell_reads_zero():
    assert SimWorld(uniform_stack(), VirtualClock()).load_cell_output_V() == 0.0


def test_noise_generators_are_reproducible_per_instrument_and_differ_between_instruments():
    world = SimWorld(uniform_stack(), VirtualClock(), seed=5)
    again = SimWorld(uniform_stack(), VirtualClock(), seed=5)
    assert world.noise_rng("supply").random() == again.noise_rng("supply").random()
    assert world.noise_rng("supply").random() != world.noise_rng("daq").random()


# --- the simulated EA PSB 10000 ----------------------------------------------------------------

EA_OK = '0,"No error"'
PROTECTED = '-203,"Command protected; lock with SYST:LOCK ON"'


def psb_bench(**config) -> tuple[SimEaPsb, SimWorld, VirtualClock]:
    """A noise-free PSB 10200-25 (200 V, 25 A, 1500 W) on the default seeded stack (~69 V), locked."""
    clock = VirtualClock()
    world = SimWorld(StackModel(StackParameters(), seed=1), clock, fixture=FIXTURE)
    psb = SimEaPsb(world, "supply", EaPsbSimConfig(**({"voltage_noise_V": 0.0, "current_noise_A": 0.0} | config)))
    psb.handle("SYST:LOCK ON")
    return psb, world, clock


def send(psb: SimEaPsb, *messages: str) -> None:
    for message in messages:
        assert psb.handle(message) is None
    assert psb.handle("SYST:ERR?") == EA_OK


def test_psb_with_voltage_above_the_stack_sources_exactly_the_current_limit():
    psb, world, clock = psb_bench()
    send(psb, "VOLT 100", "CURR 2", "OUTP ON")
    clock.sleep_until(90.0)
    assert psb.handle("MEAS:CURR?") == "2.000A"
    assert world.stack.current_A == 2.0
    assert world.stack.charged_Ah == pytest.approx(2.0 * 90.0 / 3600.0, rel=1e-12)


def test_psb_a_setting_sent_at_the_same_instant_drives_the_current_at_once():
    psb, world, clock = psb_bench()
    send(psb, "VOLT 100", "CURR 2", "OUTP ON")
    clock.sleep_until(10.0)
    assert psb.handle("MEAS:CURR?") == "2.000A"
    send(psb, "CURR 0.5")  # no time passes
    assert psb.handle("MEAS:CURR?") == "0.500A"
    assert world.stack.current_A == 0.5


def test_psb_with_voltage_below_the_stack_sinks_the_sink_current_limit():
    psb, world, clock = psb_bench()
    send(psb, "VOLT 50", "SINK:CURR 1.5", "OUTP ON")
    clock.sleep_until(60.0)
    assert psb.handle("MEAS:CURR?") == "-1.500A"
    assert world.stack.current_A == -1.5
    assert world.stack.discharged_Ah == pytest.approx(1.5 * 60.0 / 3600.0, rel=1e-12)


def test_psb_in_cv_drives_the_current_that_holds_the_terminal_at_the_set_voltage():
    psb, world, _ = psb_bench()
    emf, resistance = world.stack.thevenin()
    set_V = round(emf + 0.5, 2)
    send(psb, f"VOLT {set_V}", "CURR 5", "OUTP ON")
    psb.handle("OUTP?")  # the next message settles the current
    assert world.stack.current_A == pytest.approx((set_V - emf) / resistance, rel=1e-12)
    assert world.stack.terminal_voltage_V() == pytest.approx(set_V, rel=1e-12)


def test_psb_in_cv_the_current_tapers_as_the_stack_charges():
    psb, world, clock = psb_bench()
    set_V = round(world.stack.thevenin()[0] + 0.5, 2)
    send(psb, f"VOLT {set_V}", "CURR 5", "OUTP ON")
    currents = []
    for t in range(0, 301, 30):
        clock.sleep_until(float(t))
        psb.handle("OUTP?")
        currents.append(world.stack.current_A)
        assert world.stack.terminal_voltage_V() == pytest.approx(set_V, rel=1e-9)
    assert 0.0 < currents[-1] < currents[0] < 5.0
    assert all(later < earlier for earlier, later in zip(currents, currents[1:]))


def test_psb_source_power_limit_caps_the_current_at_power_over_stack_voltage():
    psb, world, _ = psb_bench()
    send(psb, "VOLT 100", "CURR 5", "POW 100", "OUTP ON")
    psb.handle("OUTP?")
    assert world.stack.current_A == pytest.approx(100.0 / world.stack.thevenin()[0], rel=1e-12)


def test_psb_measure_array_answers_voltage_current_and_power_with_units():
    psb, world, _ = psb_bench()
    send(psb, "VOLT 100", "CURR 2", "OUTP ON")
    reply = psb.handle("MEAS:ARR?")
    volts = world.stack.terminal_voltage_V()
    assert reply == f"{volts:.2f}V, 2.000A, {volts * 2.0:.1f}W"


@pytest.mark.parametrize("protection, trip_setup, alarm", [
    ("VOLT:PROT 60", ("VOLT 100", "CURR 1"), "OVP"),  # the ~69 V stack is above 60 V
    ("CURR:PROT 1", ("VOLT 100", "CURR 2"), "OCP"),
])
def test_psb_a_protection_trip_latches_the_output_off(protection, trip_setup, alarm):
    psb, world, _ = psb_bench()
    send(psb, protection, *trip_setup, "OUTP ON")
    assert psb.handle("OUTP?") == "OFF"
    assert world.stack.current_A == 0.0
    assert psb.alarm == alarm


@pytest.mark.parametrize("protection, trip_setup, alarm", [
    ("VOLT:PROT 60", ("VOLT 100", "CURR 1"), "OVP"),
    ("CURR:PROT 1", ("VOLT 100", "CURR 2"), "OCP"),
])
def test_psb_after_a_protection_trip_output_on_is_refused_with_an_error(protection, trip_setup, alarm):
    psb, _, _ = psb_bench()
    send(psb, protection, *trip_setup, "OUTP ON")
    psb.handle("OUTP?")  # trips
    psb.handle("OUTP ON")
    assert psb.handle("SYST:ERR?") == f'-200,"Execution error; {alarm} alarm active"'
    assert psb.handle("OUTP?") == "OFF"


@pytest.mark.parametrize("message", ["VOLT 10", "CURR 1", "SINK:CURR 1", "POW 100", "SINK:POW 100",
                                     "VOLT:PROT 50", "CURR:PROT 5", "OUTP ON"])
def test_psb_refuses_settings_without_syst_lock_on(message):
    psb, _, _ = psb_bench()
    psb.handle("SYST:LOCK OFF")
    before = psb.snapshot()
    psb.handle(message)
    assert psb.handle("SYST:ERR?") == PROTECTED
    assert psb.snapshot() == before


def test_psb_lock_owner_answers_remote_only_while_locked():
    psb, _, _ = psb_bench()
    assert psb.handle("SYST:LOCK:OWN?") == "REMOTE"
    psb.handle("SYST:LOCK OFF")
    assert psb.handle("SYST:LOCK:OWN?") == "NONE"


def test_psb_returning_to_local_control_switches_the_output_off():
    psb, world, _ = psb_bench()
    send(psb, "VOLT 100", "CURR 2", "OUTP ON")
    psb.handle("SYST:LOCK OFF")
    assert psb.handle("OUTP?") == "OFF"
    assert world.stack.current_A == 0.0


@pytest.mark.parametrize("message, accepted", [("VOLT 204", True), ("VOLT 204.1", False), ("CURR 25.5", True),
                                               ("CURR 25.6", False), ("VOLT:PROT 220", True),
                                               ("VOLT:PROT 220.1", False)])
def test_psb_set_values_reach_102_and_protections_110_percent_of_the_rating(message, accepted):
    psb, _, _ = psb_bench()
    psb.handle(message)
    assert psb.handle("SYST:ERR?") == (EA_OK if accepted else '-222,"Data out of range"')


def test_psb_with_output_off_measures_about_zero_current():
    psb, world, clock = psb_bench(current_noise_A=0.0005)  # the default noise
    send(psb, "VOLT 100", "CURR 2", "OUTP ON")
    clock.sleep_until(60.0)
    send(psb, "OUTP OFF")
    amps = float(psb.handle("MEAS:CURR?").removesuffix("A"))
    assert abs(amps) <= 0.0025  # five standard deviations of the noise
    assert world.stack.current_A == 0.0


def test_psb_reports_its_nominal_ratings_with_units():
    psb, _, _ = psb_bench()
    assert psb.handle("SYST:NOM:VOLT?;CURR?;POW?") == "200.00V;25.000A;1500.0W"


def test_psb_has_no_opc_query():
    psb, _, _ = psb_bench()
    assert psb.handle("*OPC?") is None
    assert psb.handle("SYST:ERR?") == '-113,"Undefined header"'


# --- the simulated Keysight DAQ970A --------------------------------------------------------------

DAQ_OK = '+0,"No error"'
LAYER_CHANNELS = [*range(101, 121), 201, 202, 203]


def daq_bench(**config) -> tuple[SimDaq970a, SimWorld]:
    """A noise-free DAQ970A wired like the built-in bench: 23 layers, two thermocouples, a load cell."""
    world = SimWorld(StackModel(StackParameters(), seed=1), VirtualClock(), fixture=FIXTURE)
    wiring = {"layer_channels": "101:120,201:203", "thermocouples": {204: "stack", 205: "ambient"},
              "load_cell_channel": 206, "voltage_noise_V": 0.0, "temperature_noise_degC": 0.0}
    return SimDaq970a(world, "daq", Daq970aSimConfig(**(wiring | config))), world


def read_pairs(daq: SimDaq970a) -> list[tuple[str, int]]:
    fields = daq.handle("READ?").split(",")
    return list(zip(fields[0::2], map(int, fields[1::2])))


def test_daq_read_returns_readings_in_ascending_channel_order():
    daq, _ = daq_bench()
    daq.handle("CONF:VOLT:DC 10,(@203,101,120,102)")
    daq.handle("FORM:READ:CHAN ON")
    assert [channel for _, channel in read_pairs(daq)] == [101, 102, 120, 203]


def test_daq_dc_voltage_channels_read_their_layers_voltage():
    daq, world = daq_bench()
    daq.handle("CONF:VOLT:DC 10,(@101,102,203)")
    layer_V = world.stack.layer_voltages_V()
    assert daq.handle("READ?") == ",".join(nr3(layer_V[i]) for i in (0, 1, 22))


def test_daq_a_range_changed_between_scans_applies_to_the_next_scan():
    daq, world = daq_bench()
    daq.handle("CONF:VOLT:DC 10,(@101)")
    assert daq.handle("READ?") == nr3(world.stack.layer_voltages_V()[0])
    daq.handle("CONF:VOLT:DC 1,(@101)")  # a layer near 3 V overloads the 1 V range
    assert daq.handle("READ?") == OVERLOAD


def test_daq_trigger_count_repeats_the_scan_in_one_reply():
    daq, world = daq_bench()
    daq.handle("CONF:VOLT:DC 10,(@101,206)")
    daq.handle("TRIG:COUN 3")
    one_scan = [nr3(world.stack.layer_voltages_V()[0]), nr3(FIXTURE.output_V(world.stack.pressure_MPa()))]
    assert daq.handle("READ?") == ",".join(one_scan * 3)


def test_daq_noise_is_one_draw_per_channel_in_scan_order_from_its_seeded_generator():
    daq, world = daq_bench(voltage_noise_V=1e-3, temperature_noise_degC=0.1)
    daq.handle("CONF:VOLT:DC 10,(@101,102)")
    rng = world.noise_rng("daq")
    rng.standard_normal(2)  # the thermocouples' fixed offsets, drawn when the DAQ was built
    layer_V = world.stack.layer_voltages_V()
    expected = [nr3(layer_V[i] + 1e-3 * noise) for i, noise in enumerate(rng.standard_normal(2))]
    assert daq.handle("READ?") == ",".join(expected)


def test_daq_configure_redefines_the_scan_list():
    daq, _ = daq_bench()
    daq.handle("CONF:VOLT:DC 10,(@101:105)")
    daq.handle("CONF:TEMP TC,K,(@204)")
    assert daq.handle("ROUT:SCAN:SIZE?") == "+1"
    assert daq.handle("ROUT:SCAN?") == "#16(@204)"


def test_daq_configure_switches_the_channel_field_off():
    daq, _ = daq_bench()
    daq.handle("FORM:READ:CHAN ON")
    daq.handle("CONF:VOLT:DC (@101)")
    assert daq.handle("FORM:READ:CHAN?") == "0"


@pytest.mark.parametrize("channels, block", [("(@101:103)", "#214(@101,102,103)"),
                                             ("(@101)", "#16(@101)"),
                                             ("(@103,101,101)", "#210(@101,103)")])
def test_daq_route_scan_query_answers_a_definite_length_block(channels, block):
    daq, _ = daq_bench()
    daq.handle(f"ROUT:SCAN {channels}")
    assert daq.handle("ROUT:SCAN?") == block


def test_daq_thermocouple_channels_read_the_stack_and_the_ambient_temperature():
    daq, world = daq_bench()
    warm = world.stack.snapshot() | {"temperature_degC": 41.0}  # well away from the 25 degC ambient
    world.stack.restore(warm)
    daq.handle("CONF:TEMP TC,K,(@204,205)")
    stack_T, ambient_T = (float(value) for value in daq.handle("READ?").split(","))
    assert stack_T == pytest.approx(41.0, abs=1.0)  # within the thermocouple's fixed offset
    assert ambient_T == pytest.approx(25.0, abs=1.0)


def test_daq_a_thermocouple_on_an_unwired_channel_reads_overload():
    daq, _ = daq_bench()
    daq.handle("CONF:TEMP TC,K,(@110)")
    assert daq.handle("READ?") == OVERLOAD


@pytest.mark.parametrize("range_text, overloads", [("0.1", True), ("1", True), ("5", False), ("10", False),
                                                   ("AUTO", False)])
def test_daq_a_layer_voltage_beyond_120_percent_of_the_range_reads_overload(range_text, overloads):
    daq, world = daq_bench()
    daq.handle(f"CONF:VOLT:DC {range_text},(@101)")  # a layer near 3 V
    expected = OVERLOAD if overloads else nr3(world.stack.layer_voltages_V()[0])
    assert daq.handle("READ?") == expected


def test_daq_the_load_cell_channel_reads_the_fixture_output():
    daq, world = daq_bench()
    daq.handle("CONF:VOLT:DC 0.1,(@206)")
    assert daq.handle("READ?") == nr3(FIXTURE.output_V(world.stack.pressure_MPa()))


def test_daq_an_unwired_voltage_channel_reads_zero():
    daq, _ = daq_bench()
    daq.handle("CONF:VOLT:DC (@215)")
    assert daq.handle("READ?") == nr3(0.0)


@pytest.mark.parametrize("channel", [125, 401, 100, 221])
@pytest.mark.parametrize("command", ["CONF:VOLT:DC 10,{}", "CONF:TEMP TC,K,{}", "ROUT:SCAN {}"])
def test_daq_refuses_a_channel_that_does_not_exist_and_keeps_its_scan_list(command, channel):
    daq, _ = daq_bench()
    daq.handle("CONF:VOLT:DC 10,(@101,102)")
    daq.handle(command.format(f"(@101,{channel})"))
    assert daq.handle("SYST:ERR?") == f'-224,"Illegal parameter value; no channel {channel}"'
    assert daq.handle("ROUT:SCAN?") == "#210(@101,102)"


def test_daq_read_with_an_empty_scan_list_is_a_settings_conflict_without_reply():
    daq, _ = daq_bench()
    assert daq.handle("READ?") is None
    assert daq.handle("SYST:ERR?") == '-221,"Settings conflict; empty scan list"'


def test_daq_rst_clears_the_scan_list():
    daq, _ = daq_bench()
    daq.handle("CONF:VOLT:DC 10,(@101:103)")
    daq.handle("*RST")
    assert daq.handle("ROUT:SCAN:SIZE?") == "+0"


def test_daq_refuses_more_layer_channels_than_the_stack_has_layers():
    world = SimWorld(StackModel(StackParameters(layers=3), seed=1), VirtualClock())
    with pytest.raises(ValueError, match="wires 5 layers"):
        SimDaq970a(world, "daq", Daq970aSimConfig(layer_channels="101:105"))
