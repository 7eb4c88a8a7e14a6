"""Incremental capacity (dQ/dV) and differential voltage (dV/dQ): exact on a hand-built cell,
the model's truth on the simulated stack, plausible and charge-conserving on a real Leaf cell."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from support import LEAF_CYCLING

from stackcycler.dataset import load
from stackcycler.errors import InvalidInput
from stackcycler.ica import FWHM_PER_SIGMA, differential_voltage, incremental_capacity, peaks

# A hand-built cell: open-circuit voltage piecewise linear in the charge discharged, so dQ/dV is
# known on every segment. Discharged at 3.6 A sampled every second, 1 mAh a row, so every
# breakpoint falls on a row. Capacity per volt: 4 Ah/V, a 20 mV plateau of 20 Ah/V centred on
# 3.84 V, 4 Ah/V, a 20 mV plateau of 10 Ah/V centred on 3.57 V, 4 Ah/V.
CELL_AH = (0.0, 1.0, 1.4, 2.4, 2.6, 3.0)
CELL_V = (4.10, 3.85, 3.83, 3.58, 3.56, 3.46)
LEAF = LEAF_CYCLING


def cell(current_A: float = -3.6, noise_V: float = 0.0, seed: int = 0) -> pd.DataFrame:
    t = np.arange(3001, dtype=float)
    charge = t * abs(current_A) / 3600.0
    ocv = np.interp(charge, CELL_AH, CELL_V) if current_A < 0 else np.interp(3.0 - charge, CELL_AH, CELL_V)
    volts = ocv + noise_V * np.random.default_rng(seed).standard_normal(len(t))
    return pd.DataFrame({"Test Time / s": t, "Voltage / V": volts, "Current / A": current_A, "Cycle Count / 1": 1})


def charge_between(high_V: np.ndarray, low_V: np.ndarray) -> np.ndarray:
    """The cell's charge between two voltages, from its OCV table (inverted: V falls with Q)."""
    q_at = lambda v: np.interp(v, CELL_V[::-1], CELL_AH[::-1])  # noqa: E731
    return q_at(low_V) - q_at(high_V)


def plateau_peak(height: float, baseline: float, width_V: float = 0.02, fwhm_V: float = 0.01) -> float:
    """A plateau of `height` on a `baseline`, smoothed by a Gaussian: its value at the centre."""
    sigma = fwhm_V / FWHM_PER_SIGMA
    return baseline + (height - baseline) * math.erf(width_V / (2 * math.sqrt(2) * sigma))


# --- the hand-built cell ------------------------------------------------------------------------


def test_binned_dq_dv_is_the_cells_charge_in_each_voltage_bin_exactly():
    curve = incremental_capacity(cell(), fwhm_V=0)
    v = curve["voltage_V"].to_numpy()
    expected = charge_between(np.minimum(v + 0.0005, 4.10), np.maximum(v - 0.0005, 3.46)).clip(0) / 0.001
    assert curve["dq_dv_raw_Ah_per_V"].to_numpy() == pytest.approx(expected, abs=1e-9)
    at = curve.set_index(curve["voltage_V"].round(4))["dq_dv_raw_Ah_per_V"]
    assert at[3.70] == pytest.approx(4.0, abs=1e-9) and at[3.84] == pytest.approx(20.0, abs=1e-9)
    assert at[3.57] == pytest.approx(10.0, abs=1e-9) and at[3.50] == pytest.approx(4.0, abs=1e-9)


def test_smoothed_peaks_sit_on_the_plateaus_with_the_heights_a_gaussian_leaves():
    curve = incremental_capacity(cell())  # default: 1 mV grid, 10 mV FWHM
    found = peaks(curve)
    assert found["voltage_V"].tolist() == pytest.approx([3.57, 3.84], abs=1e-9)  # symmetric: no shift
    # erf(w / (2 sqrt2 sigma)) of a 20 mV plateau at 10 mV FWHM is 0.9816; the kernel sampled on
    # the 1 mV grid (sigma = 4.2 points) differs from the continuous one by < 0.1 %
    assert found["dq_dv_Ah_per_V"].tolist() == pytest.approx([plateau_peak(10.0, 4.0), plateau_peak(20.0, 4.0)],
                                                             rel=2e-3)
    # further than 2 FWHM from a kink the smoothing leaves a straight part of Q(V) alone
    assert curve.loc[curve["voltage_V"].round(4) == 3.70, "dq_dv_Ah_per_V"].item() == pytest.approx(4.0, abs=1e-6)


def test_wider_smoothing_lowers_and_widens_a_peak_but_keeps_its_charge():
    heights = []
    for fwhm_V in (0.005, 0.01, 0.02):
        curve = incremental_capacity(cell(), fwhm_V=fwhm_V)
        heights.append(peaks(curve)["dq_dv_Ah_per_V"].max())
        assert heights[-1] == pytest.approx(plateau_peak(20.0, 4.0, fwhm_V=fwhm_V), rel=2e-3)
        assert curve["dq_dv_Ah_per_V"].sum() * curve.attrs["step_V"] == pytest.approx(3.0, abs=1e-9)
    assert heights[0] > heights[1] > heights[2]


def test_capacity_column_is_the_charge_discharged_when_the_voltage_was_reached():
    curve = incremental_capacity(cell(), fwhm_V=0)
    at = curve.set_index(curve["voltage_V"].round(4))["capacity_Ah"]
    assert at[3.85] == pytest.approx(1.0, abs=1e-9) and at[3.58] == pytest.approx(2.4, abs=1e-9)
    assert at[3.70] == pytest.approx(1.4 + 0.13 * 4, abs=1e-9)


def test_charge_direction_gives_the_same_magnitudes():
    discharge = incremental_capacity(cell(), fwhm_V=0)
    charge = incremental_capacity(cell(current_A=3.6), direction="charge", fwhm_V=0)
    expected = discharge["dq_dv_raw_Ah_per_V"].to_numpy()
    assert charge["dq_dv_raw_Ah_per_V"].to_numpy() == pytest.approx(expected, abs=1e-9)
    assert charge.set_index(charge["voltage_V"].round(4))["capacity_Ah"][3.85] == pytest.approx(2.0, abs=1e-9)


def test_dv_dq_is_the_reciprocal_of_dq_dv_on_every_segment():
    dva, ica = differential_voltage(cell()), incremental_capacity(cell())
    assert dva["capacity_Ah"].iloc[[0, -1]].tolist() == pytest.approx([0.0, 3.0])
    for middle_Ah, per_volt in ((0.5, 4.0), (1.2, 20.0), (1.9, 4.0), (2.5, 10.0), (2.8, 4.0)):
        row = dva.iloc[(dva["capacity_Ah"] - middle_Ah).abs().idxmin()]
        assert row["dv_dq_raw_V_per_Ah"] == pytest.approx(1 / per_volt, rel=1e-9)
        # the default smoothing (FWHM 1 % of 3 Ah = 30 mAh) reaches 2 FWHM: segments are wider
        assert row["dv_dq_V_per_Ah"] == pytest.approx(1 / per_volt, rel=1e-6)
        at_voltage = ica.iloc[(ica["voltage_V"] - row["voltage_V"]).abs().idxmin()]["dq_dv_Ah_per_V"]
        # the 20 mV plateaus are 2 FWHM of the ICA's smoothing wide: their centres keep 98 %
        assert row["dv_dq_V_per_Ah"] * at_voltage == pytest.approx(1.0, rel=0.02)


def test_noisy_voltage_that_doubles_back_is_counted_once_where_it_passed():
    # 0.5 mV of noise on a voltage that moves 0.25 mV a row: it goes back about every other row
    curve = incremental_capacity(cell(noise_V=0.0005))
    assert (curve["dq_dv_raw_Ah_per_V"] >= 0).all()
    assert curve["dq_dv_raw_Ah_per_V"].sum() * 0.001 == pytest.approx(3.0, abs=1e-9)
    # where Q(V) is straight the noise only blurs: 4 Ah/V within the scatter of 20 mV of samples
    straight = curve[(curve["voltage_V"] > 3.65) & (curve["voltage_V"] < 3.75)]["dq_dv_Ah_per_V"]
    assert straight.to_numpy() == pytest.approx(4.0, rel=0.03)


def test_a_rest_inside_the_discharge_does_not_count_the_relaxed_voltages_twice():
    samples = cell()
    before, after = samples.iloc[:2001], samples.iloc[2001:].copy()  # 2.0 Ah discharged, at 3.68 V
    rest_V = np.linspace(3.683, 3.71, 10)  # ten minutes at rest: the voltage relaxes up 30 mV
    relaxing = pd.DataFrame({"Test Time / s": 2000.5 + np.linspace(0, 599, 10), "Voltage / V": rest_V,
                             "Current / A": 0.0, "Cycle Count / 1": 1})
    after["Test Time / s"] += 600.0
    curve = incremental_capacity(pd.concat([before, relaxing, after]), fwhm_V=0)
    # the current ramps into the rest (0.5 s: 0.25 mAh) and out of it (1.5 s: 0.75 mAh) in place
    # of the 1 mAh of the row pair the rest went between: still 3 Ah in all
    assert curve["dq_dv_raw_Ah_per_V"].sum() * 0.001 == pytest.approx(3.0, abs=1e-9)
    assert (curve["dq_dv_raw_Ah_per_V"] >= 0).all()
    # 3.685-3.705 V was passed once on the way down; the relaxed rows carry no charge, and the
    # ramp out of the rest spreads its 0.75 mAh over the 30.25 mV it jumps (3.71 -> 3.67975 V)
    relaxed = curve[(curve["voltage_V"] >= 3.6845) & (curve["voltage_V"] <= 3.7055)]["dq_dv_raw_Ah_per_V"]
    assert len(relaxed) == 21
    assert relaxed.to_numpy() == pytest.approx(4.0 + 0.00075 / 0.03025, abs=1e-9)


def test_unusable_input_is_refused_naming_what_is_wrong():
    with pytest.raises(InvalidInput, match="'Current / A'"):
        incremental_capacity(cell().drop(columns="Current / A"))
    with pytest.raises(InvalidInput, match="direction='sideways'.*'charge' and 'discharge'"):
        incremental_capacity(cell(), direction="sideways")
    with pytest.raises(InvalidInput, match="cycle 1: no charge"):
        incremental_capacity(cell(), direction="charge")
    two = pd.concat([cell(), cell().assign(**{"Cycle Count / 1": 2})])
    with pytest.raises(InvalidInput, match="cycles 1, 2: pass cycle="):
        incremental_capacity(two)
    with pytest.raises(InvalidInput, match="cycle=5: no such cycle"):
        differential_voltage(two, cycle=5)
    with pytest.raises(InvalidInput, match="step_V=0"):
        incremental_capacity(cell(), step_V=0)


# --- the simulated stack: the model's own capacity per volt ---------------------------------------


def test_a_simulated_layers_dq_dv_is_its_capacity_per_volt_on_a_straight_ocv_segment(run_text):
    result = run_text("name: cc-charge\nrecord: {time_s: 10}\nsteps:\n"
                      "  - {step: cc, current_C: 0.5, until: [{layer_voltage_above_V: 4.2}]}\n")
    assert result.outcome.state == "completed"
    stack = result.simulation.world.stack
    samples = load(result.outcome.folder).samples
    for layer in (1, 7, 12):
        curve = incremental_capacity(samples, direction="charge", voltage_column=f"Layer {layer:02d} Voltage / V")
        capacity = stack.capacity_Ah[layer - 1]
        # the layer's state of charge at each grid voltage, back from where the model ended
        soc = stack.soc[layer - 1] - (curve.attrs["charge_Ah"] - curve["capacity_Ah"]) * 0.998 / capacity
        # drivers/sim/stack.py OCV table: 0.70 V per unit SOC from 0.2 to 0.6, 0.80 from 0.6 to 0.9;
        # 0.998 of the charge is stored (coulombic_efficiency). Kept 2 FWHM from the kinks.
        for low, high, volts_per_soc in ((0.25, 0.55, 0.70), (0.65, 0.85, 0.80)):
            truth = capacity / volts_per_soc / 0.998
            inside = curve[(soc > low) & (soc < high)]["dq_dv_Ah_per_V"]
            # the stack warms as it charges and its resistance falls (Arrhenius): the IR part of
            # the layer voltage shrinks while the OCV rises, so dQ/dV reads up to ~1 % high
            assert inside.to_numpy() == pytest.approx(truth, rel=0.015)
            assert inside.mean() == pytest.approx(truth, rel=0.006)


# --- real data: a Nissan Leaf cell (LMO/LNO | graphite, 33.1 Ah) at C/15 -------------------------


@pytest.fixture(scope="module")
def leaf() -> pd.DataFrame:
    return load(LEAF).samples


@pytest.fixture(scope="module")
def leaf_step_capacity() -> dict[int, float]:
    """The Bitrode's own coulomb count at the end of each cycle's discharge step (its Capacity(Ah)
    column, which restarts at every step; 0.01 Ah resolution): independent of our integration."""
    raw = pd.read_csv(LEAF, usecols=[2, 11, 13], header=0, names=["cycle", "Ah", "mode"])
    discharges = raw[raw["mode"] == "DCHG"].groupby("cycle")["Ah"].min()
    return {int(cycle): -float(ah) for cycle, ah in discharges.items()}


@pytest.mark.parametrize("cycle", [2, 3, 4, 5, 6])  # 7 holds two discharges, 1 only a charge
def test_leaf_dq_dv_integrates_to_the_cyclers_discharge_capacity(leaf, leaf_step_capacity, cycle):
    curve = incremental_capacity(leaf, cycle=cycle)
    integral_Ah = float(np.trapezoid(curve["dq_dv_Ah_per_V"], curve["voltage_V"]))
    # 0.01 Ah of display resolution, and our trapezoid over 60-s rows of a current read to 0.01 A
    # against the cycler's internal count: measured within 0.008 Ah on all five
    assert integral_Ah == pytest.approx(leaf_step_capacity[cycle], abs=0.02)
    assert 29.5 < integral_Ah < 30.5  # C/15 to 3.0 V of a 33.1 Ah cell some years into its life


@pytest.mark.parametrize("cycle", [2, 3, 4, 5, 6])
def test_leaf_discharge_shows_its_three_main_peaks(leaf, cycle):
    found = peaks(incremental_capacity(leaf, cycle=cycle))
    assert 3 <= len(found) <= 5
    main = found.nlargest(3, "prominence").sort_values("voltage_V")
    # graphite staging against the LMO/LNO cathode: peaks near 3.46, 3.72 and 3.80 V at C/15
    # (measured 3.463-3.473, 3.713-3.724, 3.790-3.809 V over these cycles)
    assert main["voltage_V"].tolist() == pytest.approx([3.468, 3.718, 3.80], abs=0.015)
    assert found.loc[found["dq_dv_Ah_per_V"].idxmax(), "voltage_V"] == pytest.approx(3.718, abs=0.01)


def test_leaf_peaks_stay_put_as_the_smoothing_width_changes(leaf):
    main = []
    for fwhm_V in (0.005, 0.01, 0.02):
        found = peaks(incremental_capacity(leaf, cycle=3, fwhm_V=fwhm_V))
        main.append(found.nlargest(3, "prominence").sort_values("voltage_V"))
    for other in main[1:]:
        assert other["voltage_V"].to_numpy() == pytest.approx(main[0]["voltage_V"].to_numpy(), abs=0.005)
    tallest = [m["dq_dv_Ah_per_V"].max() for m in main]
    assert tallest[0] > tallest[1] > tallest[2]  # a wider kernel only lowers the peak


def test_leaf_dv_dq_runs_over_the_whole_discharge(leaf, leaf_step_capacity):
    curve = differential_voltage(leaf, cycle=3)
    assert curve["capacity_Ah"].iloc[-1] == pytest.approx(leaf_step_capacity[3], abs=0.02)
    assert curve["voltage_V"].iloc[-1] == pytest.approx(3.0, abs=0.002)  # the C/15 discharge's end voltage
    # the deepest valley of dV/dQ is the tallest peak of dQ/dV, and there one is about the
    # reciprocal of the other (each smoothed its own way: 10 mV against 0.3 Ah; measured 1.4 %)
    ica = incremental_capacity(leaf, cycle=3)
    peak = ica.loc[ica["dq_dv_Ah_per_V"].idxmax()]
    assert curve.loc[curve["dv_dq_V_per_Ah"].idxmin(), "voltage_V"] == pytest.approx(peak["voltage_V"], abs=0.005)
    at_peak = curve.iloc[(curve["voltage_V"] - peak["voltage_V"]).abs().idxmin()]
    assert at_peak["dv_dq_V_per_Ah"] * peak["dq_dv_Ah_per_V"] == pytest.approx(1.0, rel=0.05)
