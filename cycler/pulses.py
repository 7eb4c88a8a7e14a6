"""Pulse analysis: DC internal resistance, HPPC, GITT and self-discharge from recorded samples.

Input is a table of samples with Battery Data Format labels (`Test Time / s`, `Voltage / V`,
`Current / A`, + = charge), as `stackcycler.dataset.load(path).samples` gives for a run folder,
a BDF file or a Bitrode export. Results are DataFrames, one row per pulse (or block, or rest),
with the unit in every column name.

Pulses are found from the current itself, so that data from any cycler works: the samples are
cut into *levels*, runs of samples at about one current (`find_levels`). A new level starts
where the current jumps by more than `level_change_A`, or where it crosses the rest band
|I| <= `rest_current_A`; a `Step Count / 1` column, where present, only helps: a programmed step
change with a current change above the rest band also starts a level (a small pulse on a test
whose largest current is much bigger). Both thresholds default to fractions of the largest
|current| in the data (`REST_FRACTION`, `LEVEL_FRACTION`); pass them in amperes for data that
never leaves open circuit, where the largest current is noise.

Timing convention: an edge happens at the *last sample before it* (t0), as in the FreedomCAR
R = (V(t1) - V(t0)) / (I(t1) - I(t0)) (shared/reference/battery-testing.md §10.3). Cyclers log
a sample at the end of a step and start the next step's clock there (Bitrode: a step's first
sample has a step time of one sampling interval; stackcycler logs one sample either side of the
edge at the same time), so "t seconds after the edge" is t seconds after t0, and a level's duration runs from t0
to its last sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from .dataset import CURRENT, STEP_COUNT, TIME, VOLTAGE
from .errors import InvalidInput

TEMPERATURE = "Temperature T1 / degC"

# Default thresholds, as fractions of the largest |current| in the data.
REST_FRACTION = 0.01  # |I| up to 1 % of the largest current is open circuit (cycler offsets are ~0.1 % FS)
LEVEL_FRACTION = 0.05  # a jump of more than 5 % of the largest current is a new level, not noise
# A value at t after an edge needs a sample within this fraction of t (0.1 s: ±25 ms; 10 s: ±2.5 s).
TIME_TOLERANCE = 0.25
# Times in files are rounded to a millisecond at best: closer than this is the same time.
SAME_TIME_S = 1e-6

# HPPC block shape: the longest pulse and the longest rest between the two pulses counted as one.
# FreedomCAR 10 s and USABC 30 s pulses, rests of 40 s to 10 min (reference §10.3).
HPPC_MAX_PULSE_S = 60.0
HPPC_MAX_PULSE_REST_S = 600.0
HPPC_AFTER_S = (0.1, 1.0, 2.0, 10.0)  # ISO 12405-4 lists 0.1 s and 2 s; 1 s and 10 s are common
# IEC 61960 two-level method: 10 s at 0.2 C then 1 s at 1 C (reference §10.4); levels that last
# much longer are a discharge step followed by a faster one, not this method.
DCIR_MAX_LOW_S = 60.0
DCIR_MAX_HIGH_S = 10.0


@dataclass(frozen=True)
class Levels:
    """Samples cut into levels of about constant current. Level n holds samples start[n]..end[n];
    its edge is at t[start[n] - 1], the last sample of the level before (level 0: its first sample)."""

    rows: np.ndarray  # which rows of the samples were used (time, voltage and current all present)
    t: np.ndarray
    v: np.ndarray
    i: np.ndarray
    start: np.ndarray
    end: np.ndarray
    current_A: np.ndarray  # mean current of each level
    rest: np.ndarray  # the level is open circuit
    rest_current_A: float
    level_change_A: float

    def __len__(self) -> int:
        return len(self.start)

    @property
    def before(self) -> np.ndarray:
        """Index of the last sample before each level's edge (level 0: its own first sample)."""
        return np.maximum(self.start - 1, 0)

    @property
    def edge_time_s(self) -> np.ndarray:
        return self.t[self.before]

    @property
    def duration_s(self) -> np.ndarray:
        return self.t[self.end] - self.edge_time_s

    @property
    def kind(self) -> np.ndarray:
        """-1 discharge, 0 rest, +1 charge."""
        return np.where(self.rest, 0, np.sign(self.current_A)).astype(int)

    def column(self, samples: pd.DataFrame, name: str) -> np.ndarray:
        """Another column of the samples, at the rows the levels were cut from."""
        return pd.to_numeric(samples[name], errors="coerce").to_numpy(float)[self.rows]

    def charge_Ah(self) -> np.ndarray:
        """Charge counted from the first sample (Ah, + = charge) at every sample. Trapezoids
        inside a level; across an edge the new level's current holds for the whole interval,
        since the edge is at its first end (a rest logged every minute after a discharge step
        does not get half a minute of discharge). Rests count zero: their current is the meter's
        offset (0.01 A on the Leaf data's Bitrode), not charge, as the cycler's own counter has it."""
        if len(self.t) < 2:
            return np.zeros(len(self.t))
        level = np.repeat(np.arange(len(self)), self.end - self.start + 1)  # of every sample
        current = 0.5 * (self.i[1:] + self.i[:-1])  # of the interval ending at each sample
        current[self.start[1:] - 1] = self.i[self.start[1:]]
        current[self.rest[level[1:]]] = 0.0
        return np.concatenate(([0.0], np.cumsum(current * np.diff(self.t)))) / 3600.0

    def frame(self) -> pd.DataFrame:
        """The levels as a table (to see what the analysis found)."""
        return pd.DataFrame({
            "time_s": self.edge_time_s, "duration_s": self.duration_s, "current_A": self.current_A,
            "kind": pd.Categorical.from_codes(self.kind + 1, ["discharge", "rest", "charge"]),
            "samples": self.end - self.start + 1,
        })


def find_levels(samples: pd.DataFrame, rest_current_A: float | None = None, level_change_A: float | None = None,
                voltage_column: str = VOLTAGE) -> Levels:
    """Cut the samples into levels of about constant current (see the module docstring).

    rest_current_A: |I| up to this is open circuit; default 1 % of the largest |I| in the data.
    level_change_A: a current jump above this starts a new level; default 5 % of the largest |I|.
    voltage_column: the voltage analysed, e.g. `Layer 07 Voltage / V` for one layer of a stack.
    """
    rows, t, v, i, steps = _arrays(samples, voltage_column)
    scale = float(np.max(np.abs(i))) if len(i) else 0.0
    rest_A = REST_FRACTION * scale if rest_current_A is None else float(rest_current_A)
    change_A = LEVEL_FRACTION * scale if level_change_A is None else float(level_change_A)
    if len(t) == 0:
        empty = np.zeros(0, int)
        return Levels(rows, t, v, i, empty, empty, np.zeros(0), np.zeros(0, bool), rest_A, change_A)

    at_rest = np.abs(i) <= rest_A
    jump = np.diff(i)
    new = (at_rest[1:] != at_rest[:-1]) | (~at_rest[1:] & ~at_rest[:-1] & (np.abs(jump) > change_A))
    if steps is not None:
        new |= (steps[1:] != steps[:-1]) & (np.abs(jump) > rest_A)
    # A current still moving the same way on the next sample is the same edge: a rise slower than
    # the sampling leaves one sample part-way, which belongs to the new level, not a level of its own.
    same_way = new[1:] & new[:-1] & (np.sign(jump[1:]) == np.sign(jump[:-1]))
    new[1:] &= ~same_way
    start = np.concatenate(([0], np.flatnonzero(new) + 1))
    mean = _level_means(i, start)
    rest = np.abs(mean) <= rest_A
    # Two rests in a row (a sign flip of the zero-current noise across a step change) are one rest.
    keep = np.concatenate(([True], ~(rest[1:] & rest[:-1])))
    start = start[keep]
    mean = _level_means(i, start)
    end = np.concatenate((start[1:] - 1, [len(t) - 1]))
    return Levels(rows, t, v, i, start, end, mean, np.abs(mean) <= rest_A, rest_A, change_A)


def pulse_resistances(samples: pd.DataFrame, after_s: Sequence[float] = (0.1, 1.0, 10.0), *,
                      rest_current_A: float | None = None, level_change_A: float | None = None,
                      time_tolerance: float = TIME_TOLERANCE, voltage_column: str = VOLTAGE) -> pd.DataFrame:
    """Resistance of every current pulse: every edge into a level that is not a rest (out of a rest
    or from another level).

    R(t) = (V(t0 + t) - V(t0)) / (I(t0 + t) - I(t0)), t0 the last sample before the edge; V and I
    at t0 + t are interpolated linearly between the pulse's own samples. R(t) is NaN when the pulse
    is shorter than t, or when no sample of the pulse lies within `time_tolerance` * t of t0 + t
    (the data are too sparse to say). ΔV and ΔI share a sign, so R is positive on charge and
    discharge pulses in either sign convention.

    Columns: time_s (t0), kind ("charge"/"discharge"), from_rest, duration_s, current_before_A,
    voltage_before_V, current_end_A, voltage_end_V, resistance_end_ohm (at the pulse's last
    sample), resistance_<t>s_ohm for each t in `after_s`, and step_count where the data have one.
    """
    after_s = _checked_times(after_s)
    levels = find_levels(samples, rest_current_A, level_change_A, voltage_column)
    pulses = np.flatnonzero(~levels.rest & (np.arange(len(levels)) > 0))  # level 0 has no edge before it
    before, end = levels.before[pulses], levels.end[pulses]
    table = {
        "time_s": levels.edge_time_s[pulses],
        "kind": np.where(levels.current_A[pulses] > 0, "charge", "discharge"),
        "from_rest": levels.rest[pulses - 1],
        "duration_s": levels.duration_s[pulses],
        "current_before_A": levels.i[before],
        "voltage_before_V": levels.v[before],
        "current_end_A": levels.i[end],
        "voltage_end_V": levels.v[end],
        **_resistances(levels, pulses, after_s, time_tolerance, "resistance"),
    }
    if STEP_COUNT in samples:
        table["step_count"] = levels.column(samples, STEP_COUNT)[levels.start[pulses]]
    return pd.DataFrame(table)


def resistance_column(after_s: float, prefix: str = "resistance") -> str:
    """Column name of a resistance `after_s` after the edge: resistance_0.1s_ohm, resistance_regen_10s_ohm."""
    return f"{prefix}_{after_s:g}s_ohm"


def dcir_two_level(samples: pd.DataFrame, *, max_low_s: float = DCIR_MAX_LOW_S, max_high_s: float = DCIR_MAX_HIGH_S,
                   rest_current_A: float | None = None, level_change_A: float | None = None,
                   voltage_column: str = VOLTAGE) -> pd.DataFrame:
    """DC internal resistance by the IEC 61960 two-level method, per pulse pair found.

    A low discharge level (0.2 C for 10 s: V1, I1 at its last sample) followed at once by a higher
    discharge level (1 C for 1 s: V2, I2 at its last sample); DCIR = (V1 - V2) / (I2 - I1) with the
    discharge currents as magnitudes (shared/reference/battery-testing.md §10.4, after the Arbin
    note on IEC 61960). A pair counts when the low level lasts at most `max_low_s` and the high
    one at most `max_high_s`; the C-rates are not checked (the data carry no capacity).

    Columns: time_s (the switch from low to high level), low_duration_s, high_duration_s, v1_V,
    i1_A, v2_V, i2_A (magnitudes), resistance_ohm.
    """
    levels = find_levels(samples, rest_current_A, level_change_A, voltage_column)
    discharge, duration, magnitude = levels.kind == -1, levels.duration_s, np.abs(levels.current_A)
    high = np.flatnonzero(_shifted(discharge, -1, False) & discharge & (magnitude > _shifted(magnitude, -1, np.inf))
                          & (_shifted(duration, -1, np.inf) <= max_low_s) & (duration <= max_high_s))
    low_end, high_end = levels.end[high - 1], levels.end[high]
    v1, i1 = levels.v[low_end], np.abs(levels.i[low_end])
    v2, i2 = levels.v[high_end], np.abs(levels.i[high_end])
    return pd.DataFrame({
        "time_s": levels.edge_time_s[high], "low_duration_s": duration[high - 1], "high_duration_s": duration[high],
        "v1_V": v1, "i1_A": i1, "v2_V": v2, "i2_A": i2, "resistance_ohm": _ratio(v1 - v2, i2 - i1),
    })


def hppc(samples: pd.DataFrame, *, nominal_capacity_Ah: float | None = None, v_min_V: float | None = None,
         v_max_V: float | None = None, after_s: Sequence[float] = HPPC_AFTER_S, power_at_s: float | None = None,
         max_pulse_s: float = HPPC_MAX_PULSE_S, max_pulse_rest_s: float = HPPC_MAX_PULSE_REST_S,
         rest_current_A: float | None = None, level_change_A: float | None = None,
         time_tolerance: float = TIME_TOLERANCE, voltage_column: str = VOLTAGE) -> pd.DataFrame:
    """Hybrid pulse power characterisation: one row per HPPC block found.

    A block is a rest, a discharge pulse (at most `max_pulse_s`), a rest (at most
    `max_pulse_rest_s`) and a charge (regen) pulse (at most `max_pulse_s`): the FreedomCAR 10 s and
    USABC/INL 30 s variants (discharge, 40 s rest, 10 s regen; reference §10.3). ISO 12405-4's
    two-level discharge pulse is not this shape and is not found.

    State of charge counts charge from the last full charge: the highest charge count before the
    first block (every HPPC procedure starts from a full charge; data that do not start full give
    the wrong SOC, but the right depth of discharge in Ah). soc = 1 - depth_of_discharge_Ah /
    capacity, the capacity being `nominal_capacity_Ah`, or, when that is not given, the charge
    counted out between the full charge and the emptiest point of the test.

    Resistances as in `pulse_resistances` (ΔV/ΔI from the last sample before the edge): at the
    pulse end and at each of `after_s`. Pulse power capability, FreedomCAR convention (FreedomCAR
    Battery Test Manual for Power-Assist HEVs, DOE/ID-11069, 2003; marked uncertain in reference
    §10.3: verify against the manual):
        P_dis   = V_min * (OCV - V_min) / R_dis
        P_regen = V_max * (V_max - OCV) / R_regen
    V_min and V_max are the discharge and charge voltage limits of the DUT (`v_min_V`, `v_max_V`);
    by default the lowest and highest voltage in the data, which for an HPPC test run from full
    charge to the discharge cut-off are the limits it ran between. R is the pulse-end resistance,
    or R at `power_at_s` after the edge when given (e.g. 10 for a 10 s power from 30 s pulses).

    Columns: time_s (the discharge pulse's edge), depth_of_discharge_Ah, soc, ocv_V (last sample
    of the rest before the block), temperature_degC (there, if the data have it), discharge_current_A
    (mean), discharge_duration_s, resistance_discharge_end_ohm, resistance_discharge_<t>s_ohm,
    regen_current_A, regen_duration_s, resistance_regen_end_ohm, resistance_regen_<t>s_ohm,
    power_discharge_W, power_regen_W. `attrs` records the SOC basis, the capacity used and V_min, V_max.
    """
    after_s = _checked_times(after_s)
    levels = find_levels(samples, rest_current_A, level_change_A, voltage_column)
    rest, discharge, charge, duration = levels.rest, levels.kind == -1, levels.kind == 1, levels.duration_s
    block = np.flatnonzero(  # levels n-1 .. n+2: rest, discharge pulse, short rest, regen pulse
        _shifted(rest, -1, False) & discharge & _shifted(rest, 1, False) & _shifted(charge, 2, False)
        & (duration <= max_pulse_s) & (_shifted(duration, 1, np.inf) <= max_pulse_rest_s)
        & (_shifted(duration, 2, np.inf) <= max_pulse_s))
    regen = block + 2
    at = levels.before[block]  # the last sample of the rest before the block

    counted = levels.charge_Ah()
    full = int(np.argmax(counted[:at[0] + 1])) if len(block) else 0
    dod = counted[full] - counted[at]
    if nominal_capacity_Ah is not None:
        capacity, source = float(nominal_capacity_Ah), "nominal"
    else:
        capacity, source = (float(counted[full] - counted[full:].min()) if len(counted) else math.nan), "counted"
    soc = 1.0 - dod / capacity if capacity > 0 else np.full(len(block), np.nan)

    v = levels.v
    v_min = float(v.min()) if v_min_V is None and len(v) else v_min_V
    v_max = float(v.max()) if v_max_V is None and len(v) else v_max_V
    ocv = v[at]
    table = {
        "time_s": levels.edge_time_s[block], "depth_of_discharge_Ah": dod, "soc": soc, "ocv_V": ocv,
        "temperature_degC": levels.column(samples, TEMPERATURE)[at] if TEMPERATURE in samples else np.nan,
    }
    for name, pulse in (("discharge", block), ("regen", regen)):
        table[f"{name}_current_A"] = levels.current_A[pulse]
        table[f"{name}_duration_s"] = duration[pulse]
        table.update(_resistances(levels, pulse, after_s, time_tolerance, f"resistance_{name}"))
    if power_at_s is None:
        r_dis, r_regen = table["resistance_discharge_end_ohm"], table["resistance_regen_end_ohm"]
    else:
        (power_at_s,) = _checked_times((power_at_s,))
        r_dis = _resistance_after(levels, block, power_at_s, time_tolerance)
        r_regen = _resistance_after(levels, regen, power_at_s, time_tolerance)
    with np.errstate(divide="ignore", invalid="ignore"):
        table["power_discharge_W"] = v_min * (ocv - v_min) / r_dis if v_min is not None else np.nan
        table["power_regen_W"] = v_max * (v_max - ocv) / r_regen if v_max is not None else np.nan
    result = pd.DataFrame(table)
    result.attrs.update(
        soc_basis="charge counted from the last full charge (the highest charge count before the first block)",
        capacity_Ah=capacity, capacity_source=source, v_min_V=v_min, v_max_V=v_max,
        power_resistance="pulse end" if power_at_s is None else f"{power_at_s:g} s after the edge")
    return result


def gitt(samples: pd.DataFrame, *, diffusion_length_m: float | None = None, min_rest_s: float = 0.0,
         rest_current_A: float | None = None, level_change_A: float | None = None,
         voltage_column: str = VOLTAGE) -> pd.DataFrame:
    """Galvanostatic intermittent titration: one row per current pulse followed by a rest.

    Weppner and Huggins, J. Electrochem. Soc. 124 (1977) 1569, short-pulse form (reference §10.5):
        D = 4 / (π τ) · L² · (ΔE_s / ΔE_t)²
    τ       the pulse length: from the edge (last sample before the pulse) to its last sample, s;
    L       the diffusion length `diffusion_length_m` (V/S of the particles: radius / 3 for spheres);
    ΔE_s    the change of the steady-state voltage the pulse caused: last sample of the rest after
            the pulse minus last sample of the rest before it (NaN when no rest comes before);
    ΔE_t    the voltage change during the pulse without the IR step: last sample of the pulse minus
            the first sample after the edge (that sample already carries the IR step; with sparse
            sampling it also carries the diffusion of the first interval, so sample densely).
    Assumptions: τ ≪ L²/D (semi-infinite diffusion during the pulse); E linear in sqrt(t) during the
    pulse; constant current; a small composition change per pulse (dE/dδ constant); no change of
    the electrode's molar volume. Check the sqrt(t) linearity on the data before trusting D.

    Without `diffusion_length_m` only D/L² (1/s) is reported; diffusion_m2_per_s is NaN.
    A rest shorter than `min_rest_s` does not count (the voltage has not relaxed).

    Columns: time_s, current_A (mean over the pulse), tau_s, rest_s (of the rest after),
    voltage_rest_before_V, voltage_pulse_start_V, voltage_pulse_end_V, voltage_rest_after_V,
    delta_es_V, delta_et_V, d_over_l2_per_s, diffusion_m2_per_s.
    """
    levels = find_levels(samples, rest_current_A, level_change_A, voltage_column)
    pulse = np.flatnonzero(~levels.rest & (np.arange(len(levels)) > 0) & _shifted(levels.rest, 1, False)
                           & (_shifted(levels.duration_s, 1, -np.inf) >= min_rest_s))
    v = levels.v
    rest_before = np.where(levels.rest[pulse - 1], v[levels.before[pulse]], np.nan)
    pulse_start, pulse_end = v[levels.start[pulse]], v[levels.end[pulse]]
    rest_after = v[levels.end[pulse + 1]]
    tau = levels.duration_s[pulse]
    delta_es, delta_et = rest_after - rest_before, pulse_end - pulse_start
    with np.errstate(divide="ignore", invalid="ignore"):
        d_over_l2 = 4.0 / (math.pi * tau) * (delta_es / delta_et) ** 2
    return pd.DataFrame({
        "time_s": levels.edge_time_s[pulse], "current_A": levels.current_A[pulse], "tau_s": tau,
        "rest_s": levels.duration_s[pulse + 1], "voltage_rest_before_V": rest_before,
        "voltage_pulse_start_V": pulse_start, "voltage_pulse_end_V": pulse_end, "voltage_rest_after_V": rest_after,
        "delta_es_V": delta_es, "delta_et_V": delta_et, "d_over_l2_per_s": d_over_l2,
        "diffusion_m2_per_s": d_over_l2 * diffusion_length_m**2 if diffusion_length_m is not None else np.nan,
    })


def self_discharge(samples: pd.DataFrame, *, min_rest_s: float = 3600.0, fit_last_fraction: float = 0.5,
                   rest_current_A: float | None = None, level_change_A: float | None = None,
                   voltage_column: str = VOLTAGE) -> pd.DataFrame:
    """Open-circuit voltage decay of every rest of at least `min_rest_s` (default 1 h).

    The rate is the slope of a least-squares line through the samples of the last
    `fit_last_fraction` of the rest (default its second half): the start of a rest is the
    relaxation of the current before it (RC time constants of seconds to hours), not self-discharge.

    Columns: time_s (start of the rest), duration_s, voltage_start_V (first sample), voltage_end_V,
    fit_start_s (test time where the fit starts), fit_samples, ocv_decay_V_per_h (positive when the
    voltage falls; NaN with fewer than two samples in the fit).
    """
    if not 0 < fit_last_fraction <= 1:
        raise InvalidInput(f"fit_last_fraction = {fit_last_fraction}: must be in (0, 1], the fraction of "
                           f"each rest (its last part) that the line is fitted to")
    levels = find_levels(samples, rest_current_A, level_change_A, voltage_column)
    rests = np.flatnonzero(levels.rest & (levels.duration_s >= min_rest_s))
    t, v = levels.t, levels.v
    fit_start = levels.t[levels.end[rests]] - fit_last_fraction * levels.duration_s[rests]
    decay, counts = np.full(len(rests), np.nan), np.zeros(len(rests), int)
    for k, (first, last, since) in enumerate(zip(levels.start[rests], levels.end[rests], fit_start)):
        window = slice(first + int(np.searchsorted(t[first:last + 1], since - SAME_TIME_S)), last + 1)
        counts[k] = window.stop - window.start
        if counts[k] >= 2 and t[window][-1] > t[window][0]:
            slope_V_per_s = np.polyfit(t[window] - t[last], v[window], 1)[0]
            decay[k] = -slope_V_per_s * 3600.0
    return pd.DataFrame({
        "time_s": levels.edge_time_s[rests], "duration_s": levels.duration_s[rests],
        "voltage_start_V": v[levels.start[rests]], "voltage_end_V": v[levels.end[rests]],
        "fit_start_s": fit_start, "fit_samples": counts, "ocv_decay_V_per_h": decay,
    })


# --- helpers ---------------------------------------------------------------------------------

def _arrays(samples: pd.DataFrame, voltage_column: str) -> tuple[np.ndarray, ...]:
    """The usable rows (a mask), and their time, voltage, current and step counter (None if none)."""
    missing = [name for name in (TIME, voltage_column, CURRENT) if name not in samples]
    if missing:
        raise InvalidInput(
            f"samples have no column {', '.join(repr(m) for m in missing)}; pulse analysis needs "
            f"{TIME!r}, {voltage_column!r} and {CURRENT!r} (Battery Data Format labels, current + = charge; "
            f"stackcycler.dataset.load gives them for run folders, BDF files and Bitrode exports); "
            f"found: {', '.join(map(str, samples.columns[:12]))}")
    try:
        rows = np.isfinite(samples[[TIME, voltage_column, CURRENT]].to_numpy(float)).all(axis=1)
    except (TypeError, ValueError) as error:
        raise InvalidInput(f"samples: {TIME!r}, {voltage_column!r} and {CURRENT!r} must be numbers ({error})") from None
    t = samples[TIME].to_numpy(float)[rows]
    backwards = np.flatnonzero(np.diff(t) < 0)
    if len(backwards):
        k = backwards[0]
        raise InvalidInput(f"samples: {TIME!r} goes back in time after row {k} ({t[k]:g} s -> {t[k + 1]:g} s); "
                           f"pulse analysis needs the rows in time order (sort them, or offset joined files)")
    steps = None
    if STEP_COUNT in samples:
        counter = pd.to_numeric(samples[STEP_COUNT], errors="coerce").ffill().bfill().to_numpy(float)[rows]
        steps = None if np.isnan(counter).all() else counter
    return rows, t, samples[voltage_column].to_numpy(float)[rows], samples[CURRENT].to_numpy(float)[rows], steps


def _shifted(values: np.ndarray, by: int, fill) -> np.ndarray:
    """values[n + by] at position n (`fill` where that level does not exist)."""
    out = np.full(len(values), fill, dtype=np.result_type(values, np.asarray(fill)))
    if by >= 0:
        out[:len(values) - by] = values[by:]
    else:
        out[-by:] = values[:by]
    return out


def _level_means(i: np.ndarray, start: np.ndarray) -> np.ndarray:
    counts = np.diff(np.concatenate((start, [len(i)])))
    return np.add.reduceat(i, start) / counts


def _checked_times(after_s: Sequence[float]) -> tuple[float, ...]:
    times = tuple(float(t) for t in after_s)
    if not all(math.isfinite(t) and t > 0 for t in times):
        raise InvalidInput(f"{list(after_s)}: times after the edge must be positive seconds, e.g. (0.1, 1, 10)")
    return times


def _ratio(dv: np.ndarray, di: np.ndarray) -> np.ndarray:
    """ΔV/ΔI, NaN where ΔI is zero."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(di != 0, dv / np.where(di != 0, di, 1.0), np.nan)


def _resistances(levels: Levels, pulses: np.ndarray, after_s: tuple[float, ...], tolerance: float,
                 prefix: str) -> dict[str, np.ndarray]:
    """The resistance columns of some pulses: <prefix>_end_ohm at the pulse end, one per `after_s`."""
    before, end = levels.before[pulses], levels.end[pulses]
    columns = {f"{prefix}_end_ohm": _ratio(levels.v[end] - levels.v[before], levels.i[end] - levels.i[before])}
    for t in after_s:
        columns[resistance_column(t, prefix)] = _resistance_after(levels, pulses, t, tolerance)
    return columns


def _resistance_after(levels: Levels, pulses: np.ndarray, after_s: float, tolerance: float) -> np.ndarray:
    """ΔV/ΔI between the last sample before each pulse's edge and `after_s` later (interpolated
    between the pulse's own samples); NaN where the pulse is shorter or no sample is near."""
    t, first, last, before = levels.t, levels.start[pulses], levels.end[pulses], levels.before[pulses]
    target = t[before] + after_s
    j = np.clip(np.searchsorted(t, target, side="right") - 1, first, last)  # last sample at or before
    k = np.minimum(j + 1, last)
    span = t[k] - t[j]
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.clip(np.where(span > 0, (target - t[j]) / np.where(span > 0, span, 1.0), 0.0), 0.0, 1.0)
    v_at = levels.v[j] + w * (levels.v[k] - levels.v[j])
    i_at = levels.i[j] + w * (levels.i[k] - levels.i[j])
    nearest = np.minimum(np.abs(t[j] - target), np.abs(t[k] - target))
    known = (target <= t[last] + SAME_TIME_S) & (nearest <= tolerance * after_s + SAME_TIME_S)
    return np.where(known, _ratio(v_at - levels.v[before], i_at - levels.i[before]), np.nan)
