"""Pulse analysis (stackcycler.pulses): pulse resistances, IEC 61960 DCIR, HPPC, GITT, self-discharge.

Expected numbers come from three independent places: samples built here from a circuit with
known values (worked out by hand from the circuit's formula), the simulated stack's own
parameters read from the simulation object after a run, and rows of the ORNL Nissan Leaf
Bitrode recordings picked out by hand.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support import LEAF_DATA, events_of, samples_of

from stackcycler.dataset import load
from stackcycler.drivers.sim.stack import OCV_SOC, OCV_V
from stackcycler.errors import InvalidInput
from stackcycler.pulses import (dcir_two_level, find_levels, gitt, hppc, pulse_resistances, resistance_column,
                                self_discharge)

LEAF = LEAF_DATA
LEAF_25C = LEAF / "NissanLeaf-cell-Low-Current-HPPC-25C-2.csv"
LEAF_10C = LEAF / "NissanLeaf-cell-Low-Current-HPPC-10C.csv"


def samples(t, v, i, **extra) -> pd.DataFrame:
    return pd.DataFrame({"Test Time / s": t, "Voltage / V": v, "Current / A": i, **extra})


def segments(parts, dt: float = 1.0, t0: float = 0.0) -> pd.DataFrame:
    """Samples from (duration_s, current_A, voltage function of the time since the segment's
    edge) parts. A segment's samples are at dt, 2 dt .. duration after its edge, the edge being
    the last sample of the segment before, as a cycler logs them."""
    t, v, i = [t0], [parts[0][2](0.0)], [parts[0][1]]
    for duration, current, voltage in parts:
        edge = t[-1]
        for k in range(1, round(duration / dt) + 1):
            t.append(edge + k * dt)
            v.append(voltage(k * dt))
            i.append(current)
    return samples(t, v, i)


def flat(volts: float):
    return lambda elapsed: volts


# --- pulse resistances on an ideal cell: OCV + R0 I + an RC branch -----------------------------

OCV, R0, R1, TAU = 3.7, 0.020, 0.010, 5.0


def rc_cell(current: float):
    """Terminal voltage of the ideal cell `elapsed` seconds after a step from rest to `current`."""
    return lambda elapsed: OCV + current * (R0 + R1 * (1 - math.exp(-elapsed / TAU)))


def test_resistance_after_the_edge_is_r0_plus_the_rc_branch_charged_so_far():
    data = segments([(10, 0.0, flat(OCV)), (30, -5.0, rc_cell(-5.0))], dt=0.1)
    row = pulse_resistances(data, after_s=(0.1, 1, 10)).iloc[0]
    assert row["kind"] == "discharge" and row["from_rest"]
    assert row["time_s"] == pytest.approx(10.0)
    assert row["duration_s"] == pytest.approx(30.0)
    for t in (0.1, 1, 10):
        assert row[resistance_column(t)] == pytest.approx(R0 + R1 * (1 - math.exp(-t / TAU)), rel=1e-9)
    assert row["resistance_end_ohm"] == pytest.approx(R0 + R1 * (1 - math.exp(-30 / TAU)), rel=1e-9)


def test_charge_and_discharge_pulses_both_give_a_positive_resistance():
    data = segments([(10, 0.0, flat(OCV)), (10, 4.0, rc_cell(4.0)), (10, 0.0, flat(OCV)), (10, -4.0, rc_cell(-4.0))])
    table = pulse_resistances(data, after_s=(1,))
    assert list(table["kind"]) == ["charge", "discharge"]
    expected = R0 + R1 * (1 - math.exp(-1 / TAU))
    assert table[resistance_column(1)].tolist() == pytest.approx([expected, expected], rel=1e-9)


def test_a_step_between_two_levels_is_a_pulse_with_the_level_before_as_reference():
    # resistive cell only: V = 3.7 + 0.02 I; from -1 A to -3 A the step is 0.04 V over 2 A
    data = segments([(10, 0.0, flat(3.7)), (10, -1.0, flat(3.68)), (5, -3.0, flat(3.64))])
    table = pulse_resistances(data, after_s=(1,))
    second = table.iloc[1]
    assert not second["from_rest"]
    assert second["current_before_A"] == -1.0 and second["voltage_before_V"] == 3.68
    assert second["resistance_end_ohm"] == pytest.approx(0.02, rel=1e-12)


def test_values_between_samples_are_interpolated_linearly():
    # samples 1 s apart: at 2.5 s the voltage is halfway between 3.58 V and 3.57 V
    data = segments([(5, 0.0, flat(3.7)), (5, -2.0, lambda s: 3.6 - 0.01 * s)])
    row = pulse_resistances(data, after_s=(2.5,)).iloc[0]
    assert row[resistance_column(2.5)] == pytest.approx((3.575 - 3.7) / (-2.0), rel=1e-12)


def test_no_value_where_the_pulse_is_shorter_or_no_sample_is_near_enough():
    data = segments([(5, 0.0, flat(3.7)), (10, -2.0, flat(3.6))])  # 1 s samples, a 10 s pulse
    row = pulse_resistances(data, after_s=(0.1, 10, 20)).iloc[0]
    assert math.isnan(row[resistance_column(0.1)])  # the nearest sample is 0.9 s away
    assert row[resistance_column(10)] == pytest.approx(0.05)  # the last sample is exactly 10 s in
    assert math.isnan(row[resistance_column(20)])  # the pulse ended at 10 s
    # a looser tolerance accepts the first sample for 0.1 s (it is 0.9 s away: 9 x 0.1 s)
    loose = pulse_resistances(data, after_s=(0.1,), time_tolerance=9.0).iloc[0]
    assert loose[resistance_column(0.1)] == pytest.approx(0.05)


def test_a_rise_spread_over_one_sample_and_current_noise_make_no_extra_levels():
    rng = np.random.default_rng(3)
    current = np.r_[np.zeros(20), [-2.6], np.full(30, -5.0), np.zeros(20)] + 0.01 * rng.standard_normal(71)
    data = samples(np.arange(71.0), np.full(71, 3.7), current)
    levels = find_levels(data).frame()
    assert levels["kind"].tolist() == ["rest", "discharge", "rest"]
    assert levels["time_s"].tolist() == [0.0, 19.0, 50.0]  # the part-way sample belongs to the pulse


def test_a_small_current_change_counts_only_at_a_programmed_step_change():
    # -1.00 A to -1.03 A: under the 5 % level threshold of the 1 A data, but a step change
    current = np.r_[np.zeros(5), np.full(10, -1.0), np.full(10, -1.03)]
    data = samples(np.arange(25.0), np.full(25, 3.7), current)
    assert len(pulse_resistances(data)) == 1
    stepped = data.assign(**{"Step Count / 1": np.r_[np.ones(5), np.full(10, 2), np.full(10, 3)]})
    table = pulse_resistances(stepped)
    assert len(table) == 2 and table["step_count"].tolist() == [2, 3]


def test_data_without_pulses_give_empty_tables_with_their_columns():
    rest = samples(np.arange(10.0), np.full(10, 3.7), np.zeros(10))
    for analysis in (pulse_resistances, dcir_two_level, hppc, gitt, self_discharge):
        table = analysis(rest)
        assert table.empty and len(table.columns) > 3, analysis.__name__
    assert "resistance_discharge_end_ohm" in hppc(rest).columns
    assert find_levels(rest).frame()["kind"].tolist() == ["rest"]
    assert pulse_resistances(samples([], [], [])).empty


def test_a_missing_column_is_named_with_what_is_accepted():
    data = pd.DataFrame({"Test Time / s": [0.0, 1.0], "Voltage / V": [3.7, 3.6]})
    with pytest.raises(InvalidInput, match="no column 'Current / A'.*Battery Data Format"):
        pulse_resistances(data)
    with pytest.raises(InvalidInput, match="'Layer 07 Voltage / V'"):
        hppc(samples([0.0], [3.7], [0.0]), voltage_column="Layer 07 Voltage / V")


def test_time_going_back_is_refused():
    with pytest.raises(InvalidInput, match="goes back in time after row 1"):
        pulse_resistances(samples([0.0, 1.0, 0.5], [3.7] * 3, [0.0, -1.0, -1.0]))


def test_times_after_the_edge_must_be_positive():
    with pytest.raises(InvalidInput, match="times after the edge must be positive"):
        pulse_resistances(samples([0.0], [3.7], [0.0]), after_s=(0.0, 1.0))


# --- IEC 61960 two-level DCIR --------------------------------------------------------------------

def two_level(low_s: float = 10.0) -> pd.DataFrame:
    return segments([(5, 0.0, flat(4.0)), (low_s, -0.4, lambda s: 3.990 - 0.0001 * s), (1, -2.0, flat(3.950)),
                     (10, 0.0, flat(3.995))])


def test_dcir_is_v1_minus_v2_over_i2_minus_i1():
    row = dcir_two_level(two_level()).iloc[0]
    # V1, I1 at the end of 10 s at 0.4 A; V2, I2 at the end of 1 s at 2 A
    assert (row["v1_V"], row["i1_A"], row["v2_V"], row["i2_A"]) == pytest.approx((3.989, 0.4, 3.950, 2.0))
    assert row["resistance_ohm"] == pytest.approx((3.989 - 3.950) / (2.0 - 0.4), rel=1e-12)
    assert (row["time_s"], row["low_duration_s"], row["high_duration_s"]) == (15.0, 10.0, 1.0)


def test_a_long_discharge_followed_by_a_faster_one_is_not_a_two_level_pulse():
    assert dcir_two_level(two_level(low_s=3600)).empty
    falling = segments([(5, 0.0, flat(4.0)), (10, -2.0, flat(3.95)), (1, -0.4, flat(3.99))])
    assert dcir_two_level(falling).empty  # the second level must be the higher one


# --- HPPC on an ideal cell ---------------------------------------------------------------------------

R_DIS, R_REGEN = 0.010, 0.008


def hppc_cell(blocks: int = 2) -> pd.DataFrame:
    """Full charge (1 A, 1 h), then per block: rest, 10 s at -3 A, 40 s rest, 10 s regen at
    +2.25 A, 30 min at -1 A, a 10 min rest. The OCV steps down 0.1 V per block; V = OCV + R I."""
    parts = [(60, 0.0, flat(3.4)), (3600, 1.0, flat(4.2)), (600, 0.0, flat(4.1))]
    for n in range(blocks):
        ocv = 4.1 - 0.1 * n
        parts += [(10, -3.0, flat(ocv - 3.0 * R_DIS)), (40, 0.0, flat(ocv)), (10, 2.25, flat(ocv + 2.25 * R_REGEN)),
                  (1800, -1.0, flat(ocv - 0.05)), (600, 0.0, flat(ocv - 0.1))]
    data = segments(parts)
    return data.assign(**{"Temperature T1 / degC": 25.0})


def test_hppc_block_resistances_ocv_and_pulse_powers():
    table = hppc(hppc_cell(), nominal_capacity_Ah=1.0, v_min_V=3.0, v_max_V=4.2, after_s=(1, 10))
    assert len(table) == 2
    first, second = table.iloc[0], table.iloc[1]
    assert first["ocv_V"] == 4.1 and second["ocv_V"] == pytest.approx(4.0)
    assert first["temperature_degC"] == 25.0
    for row in (first, second):
        assert row["resistance_discharge_end_ohm"] == pytest.approx(R_DIS, rel=1e-9)
        assert row["resistance_discharge_1s_ohm"] == pytest.approx(R_DIS, rel=1e-9)
        assert row["resistance_regen_10s_ohm"] == pytest.approx(R_REGEN, rel=1e-9)
        assert (row["discharge_current_A"], row["discharge_duration_s"]) == (-3.0, 10.0)
        assert (row["regen_current_A"], row["regen_duration_s"]) == (2.25, 10.0)
    # FreedomCAR: P_dis = V_min (OCV - V_min) / R_dis, P_regen = V_max (V_max - OCV) / R_regen
    assert first["power_discharge_W"] == pytest.approx(3.0 * (4.1 - 3.0) / 0.010, rel=1e-9)  # 330 W
    assert first["power_regen_W"] == pytest.approx(4.2 * (4.2 - 4.1) / 0.008, rel=1e-9)  # 52.5 W
    assert table.attrs["v_min_V"] == 3.0 and table.attrs["capacity_source"] == "nominal"


def test_hppc_soc_counts_charge_from_the_full_charge():
    table = hppc(hppc_cell(), nominal_capacity_Ah=1.0)
    # one block and one C/1 half hour out: 3 A x 10 s - 2.25 A x 10 s + 1 A x 1800 s
    step_Ah = (3.0 * 10 - 2.25 * 10 + 1.0 * 1800) / 3600
    assert table["depth_of_discharge_Ah"].tolist() == pytest.approx([0.0, step_Ah], abs=1e-12)
    assert table["soc"].tolist() == pytest.approx([1.0, 1.0 - step_Ah], abs=1e-12)
    # without a nominal capacity: what was counted out from the full charge to the emptiest point
    counted = hppc(hppc_cell())
    assert counted.attrs["capacity_Ah"] == pytest.approx(2 * step_Ah, rel=1e-12)
    assert counted["soc"].tolist() == pytest.approx([1.0, 0.5], rel=1e-12)


def test_hppc_power_limits_default_to_the_voltage_range_of_the_data():
    table = hppc(hppc_cell())
    assert (table.attrs["v_min_V"], table.attrs["v_max_V"]) == pytest.approx((3.4, 4.2))
    assert table["power_discharge_W"].iloc[0] == pytest.approx(3.4 * (4.1 - 3.4) / R_DIS, rel=1e-9)


# --- GITT on a hand-built square pulse ---------------------------------------------------------------

def gitt_pulse(start_V: float, rest_end_V: float):
    """A 1 h pulse from an IR step to `start_V - 0.010`, falling 40 mV linearly in sqrt(t)
    from its first sample (1 s) to its last (3600 s); then a 1 h rest relaxing to `rest_end_V`."""
    first = start_V - 0.010
    pulse = (3600, -0.1, lambda s: first - 0.040 * (math.sqrt(s) - 1) / (math.sqrt(3600) - 1))
    rest = (3600, 0.0, lambda s: rest_end_V - 0.005 * math.exp(-s / 300) + 0.005 * math.exp(-12))
    return [pulse, rest]


def test_gitt_weppner_huggins_quantities():
    data = segments([(600, 0.0, flat(3.900)), *gitt_pulse(3.900, 3.880), *gitt_pulse(3.880, 3.862)])
    table = gitt(data, diffusion_length_m=5e-6)
    assert len(table) == 2
    first, second = table.iloc[0], table.iloc[1]
    assert first["tau_s"] == 3600.0 and first["rest_s"] == 3600.0 and first["current_A"] == -0.1
    assert first["delta_es_V"] == pytest.approx(-0.020, abs=1e-12)
    assert first["delta_et_V"] == pytest.approx(-0.040, abs=1e-12)
    assert first["d_over_l2_per_s"] == pytest.approx(4 / (math.pi * 3600) * 0.5**2, rel=1e-9)
    assert second["voltage_rest_before_V"] == pytest.approx(3.880)  # the first pulse's rest end
    assert second["delta_es_V"] == pytest.approx(-0.018, abs=1e-12)
    assert second["d_over_l2_per_s"] == pytest.approx(4 / (math.pi * 3600) * 0.45**2, rel=1e-9)
    assert second["diffusion_m2_per_s"] == pytest.approx(second["d_over_l2_per_s"] * 25e-12, rel=1e-12)
    assert gitt(data)["diffusion_m2_per_s"].isna().all()  # without L only D/L²


# --- self-discharge ---------------------------------------------------------------------------------

def storage(hours: float):
    """Open circuit for `hours`: relaxing at 10 mV/h for the first half, then 2 mV/h."""
    half = hours / 2
    return (hours * 3600, 0.0,
            lambda s: 4.10 - 0.010 * min(s / 3600, half) - 0.002 * max(s / 3600 - half, 0.0))


def test_ocv_decay_is_the_slope_over_the_last_half_of_each_long_rest():
    data = segments([(3600, 1.0, flat(4.15)), storage(10), (600, -1.0, flat(3.9)), storage(0.5)], dt=60)
    table = self_discharge(data)
    assert len(table) == 1  # the half-hour rest is shorter than the 1 h minimum
    row = table.iloc[0]
    assert row["ocv_decay_V_per_h"] == pytest.approx(0.002, rel=1e-9)
    assert (row["time_s"], row["duration_s"]) == (3600.0, 36000.0)
    assert row["fit_start_s"] == 3600.0 + 18000.0 and row["fit_samples"] == 301
    # fitted over the whole rest the relaxation pulls the rate up
    assert self_discharge(data, fit_last_fraction=1.0)["ocv_decay_V_per_h"].iloc[0] > 0.004


def test_data_that_never_leave_open_circuit_need_the_rest_band_in_amperes():
    # the largest current is 2 mA of noise: 1 % of it (the default) would call most samples a current
    rng = np.random.default_rng(5)
    t = np.arange(0.0, 7201.0, 60.0)
    data = samples(t, 4.0 - 0.001 * t / 3600, 0.001 * np.clip(rng.standard_normal(len(t)), -2, 2))
    table = self_discharge(data, rest_current_A=0.01)
    assert len(table) == 1 and table["ocv_decay_V_per_h"].iloc[0] == pytest.approx(0.001, rel=1e-9)


def test_fit_fraction_outside_zero_to_one_is_refused():
    with pytest.raises(InvalidInput, match="fit_last_fraction"):
        self_discharge(samples([0.0], [3.7], [0.0]), fit_last_fraction=0.0)


# --- the simulated stack: measured against the model's own resistance ---------------------------
#
# The stack model (drivers/sim/stack.py) is, per layer, OCV(SOC) + R0 + one RC branch (R1, tau1),
# R0 and R1 scaled by an Arrhenius factor of the stack temperature; the stack adds an interconnect
# resistance. A step of current dI from a relaxed state therefore moves the terminal voltage by
#     dV(t) = dI (sum R0 + R_interconnect + sum R1 (1 - exp(-t/tau1))) + sum OCV' dI t / 3600 / C
# the last term being the OCV's drift with the charge moved (per layer, its slope and capacity).
# The benches below keep the stack isothermal at 25 degC (a huge heat capacity), the model's
# reference temperature, so the Arrhenius factor is 1 and the truth is the formula exactly.

ISOTHERMAL = "extends: sim\nsimulation:\n  stack:\n    heat_capacity_J_per_K: 1.0e9\n"


def isothermal_bench(tmp_path: Path, extra: str = "") -> str:
    path = tmp_path / "isothermal.yaml"
    path.write_text(ISOTHERMAL + extra)
    return str(path)


def ocv_drift_ohm_s(stack, layer: int | None = None) -> float:
    """sum OCV'(SOC) / 3600 / C over the layers: the OCV drift per ampere-second moved (V/As)."""
    slope = (np.interp(stack.soc + 1e-4, OCV_SOC, OCV_V) - np.interp(stack.soc - 1e-4, OCV_SOC, OCV_V)) / 2e-4
    per_layer = slope / 3600.0 / stack.capacity_Ah
    return float(per_layer.sum() if layer is None else per_layer[layer])


def model_r(stack, layer: int | None = None) -> tuple[float, float]:
    """(R0, R1) of the whole stack (with its interconnect) or of one layer, at the present temperature."""
    arrhenius = stack.layer_r0_ohm() / stack.r0_ref_ohm
    r1 = stack.r1_ref_ohm * arrhenius
    if layer is None:
        return stack.thevenin()[1], float(r1.sum())
    return float(stack.layer_r0_ohm()[layer]), float(r1[layer])


def measurement_tolerance(simulation, layer: bool, r: float, di: float) -> float:
    """4 sigma of R from the readings' noise and resolution: the supply reports the stack voltage
    to 10 mV and the current to 1 mA (EA PSB display resolution), the DAQ a layer's voltage with
    20 uV noise, logged to 10 uV. Two readings make each difference."""
    supply, daq = simulation.instruments["supply"].config, simulation.instruments["daq"].config
    noise_v, step_v = (daq.voltage_noise_V, 1e-5) if layer else (supply.voltage_noise_V, 0.01)
    sigma_dv = math.sqrt(2 * (noise_v**2 + step_v**2 / 12))
    sigma_di = math.sqrt(2 * (supply.current_noise_A**2 + 0.001**2 / 12))
    return 4 * (sigma_dv + r * sigma_di) / abs(di)


ONE_HPPC_BLOCK = """
name: one-hppc-block
description: one HPPC block (30 s at 1C, 40 s rest, 10 s at 0.75C regen) from a relaxed stack
requires: {nominal_capacity: true}
record: {time_s: 10, voltage_V: 0.02, current_A: 0.05}
steps:
  - {step: rest, name: settle, duration_s: 5}
  - step: pulse
    name: HPPC pulses
    record_time_s: 0.1
    segments:
      - {current_C: -1.0, duration_s: 30}
      - {current_A: 0, duration_s: 40}
      - {current_C: 0.75, duration_s: 10}
      - {current_A: 0, duration_s: 40}
"""


@pytest.mark.parametrize("layer", [None, 6], ids=["stack voltage", "layer 07 voltage"])
def test_hppc_block_on_the_simulated_stack_gives_the_models_resistance(tmp_path, run_text, layer):
    # a 0.1 s tick resolves 0.1 s after the edge; the stack starts at 50 % SOC, relaxed, where
    # the model's OCV is linear (0.4 to 0.6: 0.7 V per unit SOC per layer)
    bench = isothermal_bench(tmp_path, "    initial_soc: 0.5\nchannels:\n  stack1:\n    tick_s: 0.1\n")
    result = run_text(ONE_HPPC_BLOCK, bench=bench)
    assert result.outcome.state == "completed", result.outcome.reason
    stack = result.simulation.world.stack
    assert stack.temperature_degC == pytest.approx(25.0, abs=1e-3)
    assert np.all((stack.soc > 0.4) & (stack.soc < 0.6))
    column = "Voltage / V" if layer is None else f"Layer {layer + 1:02d} Voltage / V"
    table = hppc(samples_of(result), nominal_capacity_Ah=2.0, voltage_column=column)
    assert len(table) == 1
    block = table.iloc[0]
    assert block["discharge_duration_s"] == pytest.approx(30.0)

    r0, r1 = model_r(stack, layer)
    drift = ocv_drift_ohm_s(stack, layer)
    tau = stack.params.tau1_s
    discharge_A, regen_A = 2.0, 1.5  # 1C and 0.75C of 2 Ah
    for t, column_name in [(0.1, "resistance_discharge_0.1s_ohm"), (1, "resistance_discharge_1s_ohm"),
                           (10, "resistance_discharge_10s_ohm"), (30, "resistance_discharge_end_ohm")]:
        truth = r0 + r1 * (1 - math.exp(-t / tau)) + drift * t
        tolerance = measurement_tolerance(result.simulation, layer is not None, truth, discharge_A)
        assert block[column_name] == pytest.approx(truth, abs=tolerance), column_name
    # The regen pulse starts 40 s after the discharge pulse: its RC branch still holds
    # I_dis R1 (1 - exp(-30/tau)) exp(-40/tau) and relaxes while the regen charges it.
    held = discharge_A * r1 * (1 - math.exp(-30 / tau)) * math.exp(-40 / tau)
    efficiency = stack.params.coulombic_efficiency  # charge stored per charge in
    for t in (0.1, 1, 2, 10):
        truth = r0 + (r1 + held / regen_A) * (1 - math.exp(-t / tau)) + efficiency * drift * t
        tolerance = measurement_tolerance(result.simulation, layer is not None, truth, regen_A)
        assert block[resistance_column(t, "resistance_regen")] == pytest.approx(truth, abs=tolerance), t


def test_iec61960_dcir_protocol_on_the_simulated_stack_gives_each_layers_resistance(tmp_path, run_protocol):
    # the protocol as shipped, with 10 min rests (the RC branch relaxes: exp(-600/40)) and
    # 30 min at C/5 after the full charge (SOC about 0.9, where the model's OCV is linear)
    result = run_protocol(protocol="dcir-iec61960", bench=isothermal_bench(tmp_path),
                          overrides={"soc_discharge_s": 1800, "rest_s": 600})
    assert result.outcome.state == "completed", result.outcome.reason
    stack = result.simulation.world.stack
    assert np.all((stack.soc > 0.8) & (stack.soc < 0.95))
    data = samples_of(result)
    tau = stack.params.tau1_s
    low_A, high_A = 0.4, 2.0  # 0.2C and 1C of 2 Ah

    def truth(layer):
        # the RC branch charged for 10 s at I1, then 1 s at I2; the OCV drifts during the 1 s at I2
        r0, r1 = model_r(stack, layer)
        charged = low_A * r1 * (1 - math.exp(-10 / tau))
        step = (high_A * r1 - charged) * (1 - math.exp(-1 / tau)) + ocv_drift_ohm_s(stack, layer) * high_A * 1.0
        return r0 + step / (high_A - low_A)

    stack_row = dcir_two_level(data)
    assert len(stack_row) == 1
    assert (stack_row["low_duration_s"].iloc[0], stack_row["high_duration_s"].iloc[0]) == (10.0, 1.0)
    assert stack_row["resistance_ohm"].iloc[0] == pytest.approx(
        truth(None), abs=measurement_tolerance(result.simulation, False, truth(None), high_A - low_A))
    # every layer's own R0 (8 % spread between layers) shows in its own voltage
    measured = [dcir_two_level(data, voltage_column=f"Layer {n + 1:02d} Voltage / V")["resistance_ohm"].iloc[0]
                for n in range(stack.layers)]
    expected = [truth(n) for n in range(stack.layers)]
    tolerance = measurement_tolerance(result.simulation, True, max(expected), high_A - low_A)
    assert measured == pytest.approx(expected, abs=tolerance)
    assert max(expected) - min(expected) > 20 * tolerance  # the spread is resolved, not lost in the tolerance


def test_built_in_hppc_protocol_blocks_and_depth_of_discharge(tmp_path, run_protocol):
    result = run_protocol(protocol="hppc", bench=isothermal_bench(tmp_path), overrides={"soc_rest_s": 60})
    assert result.outcome.state == "completed", result.outcome.reason
    ran = [e for e in events_of(result) if e["event"] == "step_end" and e["name"] == "HPPC pulses"
           and e["reason"].startswith("step time")]
    table = hppc(samples_of(result), nominal_capacity_Ah=2.0)
    assert len(table) == len(ran) == 10  # one per 10 % SOC, each run to its end
    assert table["time_s"].tolist() == pytest.approx([e["test_time_s"] - 120 for e in ran], abs=1e-6)
    # from the second block on, each block moves the same charge: 30 s at 2 A out, 10 s at 1.5 A
    # in, 18 min at C/3 (0.6666 A) out (the first block's regen meets the charge voltage and tapers)
    per_block_Ah = (2.0 * 30 - 1.5 * 10 + 0.3333 * 2.0 * 1080) / 3600
    # (the samples are logged every 10 s in the C/3 steps, each current read with 0.5 mA noise and
    # 1 mA resolution: the counted charge scatters by about 2e-5 Ah a block)
    assert np.diff(table["depth_of_discharge_Ah"])[1:] == pytest.approx(np.full(8, per_block_Ah), abs=1e-4)
    assert table["soc"].tolist() == pytest.approx((1 - table["depth_of_discharge_Ah"] / 2.0).tolist())
    # R at 1 s where the OCV is nearly linear (its drift in 1 s stays below 1 %)
    stack = result.simulation.world.stack
    r0, r1 = model_r(stack)
    truth = r0 + r1 * (1 - math.exp(-1 / stack.params.tau1_s))
    middle = table[(table["soc"] > 0.2) & (table["soc"] < 0.9)]
    assert len(middle) == 7
    tolerance = measurement_tolerance(result.simulation, False, truth, 2.0) + 0.01 * truth
    assert middle["resistance_discharge_1s_ohm"].tolist() == pytest.approx([truth] * 7, abs=tolerance)
    assert table["resistance_discharge_0.1s_ohm"].isna().all()  # a 1 s tick has no sample 0.1 s in


# --- real data: the ORNL Nissan Leaf cell on a Bitrode (33.1 Ah pouch) ---------------------------

def bitrode_rows(path: Path) -> list[dict[str, str]]:
    """The export's rows as text, by column position (three columns share the name Loop)."""
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        next(reader)
        return [{"time": r[1], "step": r[6], "step_time": r[7], "current": r[8], "voltage": r[9], "mode": r[13]}
                for r in reader if r and r[0].strip() == "No"]


def program_steps(rows: list[dict[str, str]]) -> list[dict]:
    """The Bitrode's step executions: a new one where the step number changes."""
    steps: list[dict] = []
    for row in rows:
        if not steps or row["step"] != steps[-1]["step"]:
            steps.append({"step": row["step"], "mode": row["mode"].strip(), "currents": []})
        steps[-1]["currents"].append(float(row["current"]))
        steps[-1]["duration_s"] = float(row["step_time"])
    return steps


@pytest.fixture(scope="module")
def leaf():
    return {name: (hppc(load(path).samples), program_steps(bitrode_rows(path)))
            for name, path in (("25C", LEAF_25C), ("10C", LEAF_10C))}


def test_leaf_hppc_finds_one_block_per_discharge_pulse_step(leaf):
    for name, (table, steps) in leaf.items():
        # the program's 30 s discharge pulse is step 6 (README: -30 A, 40 s rest, +22.5 A regen)
        pulses_run = [s for s in steps if s["step"] == "6"]
        assert all(set(s["currents"]) == {-30.0} for s in pulses_run)
        assert len(table) == len(pulses_run) == 10, name
        assert table["discharge_duration_s"].tolist() == pytest.approx([30.0] * 10)
        assert table["regen_duration_s"].tolist() == pytest.approx([10.0] * 10)


def test_leaf_depth_of_discharge_matches_the_program_steps(leaf):
    for name, (table, steps) in leaf.items():
        # between block 2 and block 10 the current steps run at their set currents for their logged
        # step times (the first regen pulse met 4.2 V and tapered, so count from the second block)
        first = next(k for k, s in enumerate(steps) if s["step"] == "6")
        second = next(k for k, s in enumerate(steps) if s["step"] == "6" and k > first)
        moved, expected = 0.0, []
        for s in steps[second:]:
            if s["step"] == "6":
                expected.append(moved)
            if s["mode"] in ("CHRG", "DCHG"):
                moved -= float(np.median(s["currents"])) * s["duration_s"] / 3600
        dod = table["depth_of_discharge_Ah"].to_numpy()
        assert dod[0] == 0.0  # the first block is at the full charge
        assert (dod[1:] - dod[1]).tolist() == pytest.approx(expected, abs=1e-3), name
        assert expected[-1] == pytest.approx(8 * (30 * 30 - 22.5 * 10 + 10 * 1080.1) / 3600)  # 3.19 Ah a block


def test_leaf_discharge_resistance_pinned_from_the_raw_rows():
    rows = {row["time"]: row for row in bitrode_rows(LEAF_25C)}
    # second block at 25 degC: the last row of the 1 h rest and the last row of the 30 s pulse
    rest, end = rows["20204.7"], rows["20234.7"]
    assert (rest["mode"].strip(), rest["step_time"]) == ("REST", "3600.0")
    assert (end["mode"].strip(), end["step_time"]) == ("DCHG", "30.0")
    by_hand = (float(end["voltage"]) - float(rest["voltage"])) / (float(end["current"]) - float(rest["current"]))
    assert by_hand == pytest.approx((4.007 - 4.086) / (-30.00 - 0.01))  # 2.63 mOhm
    table = hppc(load(LEAF_25C).samples)
    block = table[table["time_s"] == 20204.7].iloc[0]
    assert block["resistance_discharge_end_ohm"] == pytest.approx(by_hand, rel=1e-12)
    assert block["ocv_V"] == 4.086


def test_leaf_resistances_are_plausible_for_a_33_ah_pouch_cell_and_higher_when_cold(leaf):
    warm, cold = leaf["25C"][0], leaf["10C"][0]
    # 1 s after the edge: ohmic + fast charge transfer, 1 to 3 mOhm at 25 degC at every SOC
    assert warm["resistance_discharge_1s_ohm"].between(1e-3, 3e-3).all()
    assert warm["resistance_regen_1s_ohm"].between(1e-3, 3e-3).all()
    # over the 30 s pulse, away from the ends of the SOC range, still within 1 to 3 mOhm
    middle = warm[(warm["soc"] > 0.1) & (warm["soc"] < 0.95)]
    assert len(middle) == 8 and middle["resistance_discharge_end_ohm"].between(1e-3, 3e-3).all()
    # and the pulse end is above 1 s (diffusion adds to the drop as the pulse goes on)
    assert (warm["resistance_discharge_end_ohm"] > warm["resistance_discharge_1s_ohm"]).all()
    # colder is more resistive, block by block (same SOC steps)
    for column in ("resistance_discharge_1s_ohm", "resistance_discharge_end_ohm", "resistance_regen_end_ohm"):
        assert (cold[column].to_numpy() > warm[column].to_numpy()).all(), column
    # the discharge pulses are sampled every 0.5 s: 0.1 s after the edge is not in the data
    assert warm["resistance_discharge_0.1s_ohm"].isna().all()
    assert warm["resistance_regen_0.1s_ohm"].notna().all()  # the regen pulses every 0.1 s
