"""Incremental capacity (dQ/dV) and differential voltage (dV/dQ) of one cycle's charge or discharge.

The part
  The rows of one cycle where current flows the chosen way (charge: I > 0, discharge: I < 0),
  above a noise floor of NOISE_FLOOR (1 %) of the largest current that way in the cycle, so that
  rest readings (a Bitrode shows +-0.01 A at rest) count as zero. Its charge Q is the trapezoid
  integral of that current (integrators.trapezoid_arrays), counted from the cycle's first row.
  Q only grows, in both directions, and the results are magnitudes: dQ/dV and dV/dQ are
  positive when the voltage moves the usual way (up on charge, down on discharge).

dQ/dV: the charge that passed per volt of terminal voltage
  Between two rows current and voltage are taken as linear (as for the charge count), so each
  interval's charge is spread evenly over the voltages it spans and summed into the bins of a
  uniform voltage grid (`step_V`, centred on multiples of it). For a voltage that only falls
  (or only rises) this is exactly the derivative of the piecewise-linear Q(V), i.e. what
  interpolating Q(V) onto the grid and differencing gives. Where the voltage doubles back
  (noise, a display's 1 mV rounding, the relaxation of a rest inside the part) nothing is sorted,
  dropped or inverted: each coulomb is counted once, at the voltage where it passed. So dQ/dV is
  never negative and its integral over V is the part's charge exactly. An interval whose
  voltage does not change puts its charge into the one bin holding that voltage: a CV phase
  shows as one tall bin at its voltage (select the rows of the CC part for a CC-CV charge).

  Smoothing: a Gaussian of full width at half maximum `fwhm_V` (default 0.01 V per layer,
  cellpy's `voltage_fwhm`; battery-testing.md §12), sampled on the grid, cut at +-4 sigma and
  normalised to a sum of 1. No charge passed at voltages the part did not visit, so the curve is
  zero beyond them; the grid is widened by the kernel's half-width so that the smoothing keeps all
  of the charge. Its effect is known exactly: a plateau of width w and height h comes out as
  h * erf(w / (2 sqrt(2) sigma)) at its centre (sigma = fwhm / 2.3548), a step in dQ/dV is a
  Gaussian-blurred step, and straight parts of Q(V) further than ~2 FWHM from a kink keep
  their value. The unsmoothed binned values are returned beside the smoothed ones.

dV/dQ: volts per Ah, on a uniform charge grid
  V(Q) at the part's rows (rows at the same charge averaged) linearly interpolated onto `points`
  (default 1000, as BEEP interpolates each step) equally spaced charges, differentiated by
  central differences, then smoothed with a Gaussian of FWHM `fwhm_Ah` (default 1 % of the part's
  charge: as wide, relative to the part, as 0.01 V is relative to a layer's ~1 V window). Beyond
  the ends of the part there is no V(Q): there the kernel is renormalised over the points that
  exist (a normalised convolution), so a constant slope stays constant up to the ends.

On a stack (layer columns present) the default grid step and smoothing width scale with the
number of layers, as the stack voltage moves that many times as far as one layer's; pass
`voltage_column="Layer 07 Voltage / V"` for one layer's dQ/dV.
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np
import pandas as pd

from .dataset import CURRENT, CYCLE, TIME, VOLTAGE
from .errors import InvalidInput
from .integrators import trapezoid_arrays

DIRECTIONS = {"charge": 1.0, "discharge": -1.0}
NOISE_FLOOR = 0.01  # of the part's largest current: below it a reading counts as zero
STEP_V_PER_LAYER = 0.001  # 1 mV per layer: the resolution of the Bitrode data (and most cyclers' display)
FWHM_V_PER_LAYER = 0.01  # cellpy ica `voltage_fwhm` (battery-testing.md §12)
DVA_POINTS = 1000  # BEEP interpolates each step to 1000 points (battery-testing.md §12)
DVA_FWHM_FRACTION = 0.01  # of the part's charge
KERNEL_HALF_WIDTH_SIGMA = 4.0  # the Gaussian is cut at +-4 sigma (it leaves out 6e-5 of its weight)
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))  # 2.3548
MAX_GRID_POINTS = 2_000_000


def incremental_capacity(samples: pd.DataFrame, cycle: int | None = None, direction: str = "discharge",
                         step_V: float | None = None, fwhm_V: float | None = None,
                         voltage_column: str = VOLTAGE, layers: int | None = None) -> pd.DataFrame:
    """dQ/dV of one cycle's charge or discharge on a uniform voltage grid (see the module docstring).

    Columns: `voltage_V` (bin centre), `capacity_Ah` (charge the part had moved when the voltage
    reached this value), `dq_dv_Ah_per_V` (smoothed), `dq_dv_raw_Ah_per_V` (binned, unsmoothed).
    `step_V`, `fwhm_V` default to 1 mV and 10 mV per layer; `fwhm_V=0` does not smooth.
    `attrs` records the cycle, direction, grid step, FWHM and the part's charge.
    """
    rows, number = _cycle_rows(samples, cycle, voltage_column)
    scale = _layer_scale(samples, voltage_column, layers)
    step_V = _positive(STEP_V_PER_LAYER * scale if step_V is None else step_V, "step_V")
    fwhm_V = _not_negative(FWHM_V_PER_LAYER * scale if fwhm_V is None else fwhm_V, "fwhm_V")
    t, i, v = (rows[name].to_numpy(float) for name in (TIME, CURRENT, voltage_column))
    interval_Ah, _, _ = part_charge(t, i, direction)
    moving = interval_Ah > 0
    if not moving.any():
        raise InvalidInput(_no_part(number, direction))
    charge_Ah, low, high = interval_Ah[moving], np.minimum(v[:-1], v[1:])[moving], np.maximum(v[:-1], v[1:])[moving]

    kernel = _gaussian(fwhm_V / step_V)
    pad = len(kernel) // 2
    first, last = math.floor(low.min() / step_V + 0.5) - pad, math.floor(high.max() / step_V + 0.5) + pad
    if last - first + 1 > MAX_GRID_POINTS:
        raise InvalidInput(f"step_V={step_V:g} V makes {last - first + 1} grid points over "
                           f"{low.min():.4g}-{high.max():.4g} V; use a step of at least "
                           f"{(high.max() - low.min()) / MAX_GRID_POINTS:.2g} V")
    centres = np.arange(first, last + 1) * step_V
    # binned on a grid of half steps, whose edges include the centres: the capacity column (the
    # charge below each centre) is then as exact as the charge in each bin
    halves = _charge_per_bin(np.arange(2 * len(centres) + 1) * (step_V / 2) + (centres[0] - step_V / 2),
                             low, high, charge_Ah)
    raw = (halves[0::2] + halves[1::2]) / step_V
    smooth = np.convolve(raw, kernel, mode="same") if len(kernel) > 1 else raw.copy()
    below_centres = np.cumsum(halves)[0::2]
    total_Ah = float(charge_Ah.sum())
    capacity = below_centres if DIRECTIONS[direction] > 0 else total_Ah - below_centres
    curve = pd.DataFrame({"voltage_V": centres, "capacity_Ah": capacity, "dq_dv_Ah_per_V": smooth,
                          "dq_dv_raw_Ah_per_V": raw})
    curve.attrs.update(cycle=number, direction=direction, step_V=step_V, fwhm_V=fwhm_V, charge_Ah=total_Ah,
                       voltage_column=voltage_column)
    return curve


def differential_voltage(samples: pd.DataFrame, cycle: int | None = None, direction: str = "discharge",
                         points: int = DVA_POINTS, fwhm_Ah: float | None = None,
                         voltage_column: str = VOLTAGE) -> pd.DataFrame:
    """dV/dQ of one cycle's charge or discharge on a uniform charge grid (see the module docstring).

    Columns: `capacity_Ah` (charge moved since the cycle began), `voltage_V`, `dv_dq_V_per_Ah`
    (smoothed), `dv_dq_raw_V_per_Ah` (central differences of the interpolated V(Q)).
    `fwhm_Ah` defaults to 1 % of the part's charge; 0 does not smooth.
    """
    rows, number = _cycle_rows(samples, cycle, voltage_column)
    if not isinstance(points, (int, np.integer)) or points < 3:
        raise InvalidInput(f"points={points!r}: give a whole number of grid points, at least 3 (default {DVA_POINTS})")
    t, i, v = (rows[name].to_numpy(float) for name in (TIME, CURRENT, voltage_column))
    _, row_Ah, flowing = part_charge(t, i, direction)
    charges, where = np.unique(row_Ah[flowing], return_inverse=True)
    if len(charges) < 2:
        raise InvalidInput(_no_part(number, direction))
    voltages = np.bincount(where, weights=v[flowing]) / np.bincount(where)  # a charge seen twice: mean voltage
    grid = np.linspace(charges[0], charges[-1], points)
    spacing = grid[1] - grid[0]
    fwhm_Ah = _not_negative(DVA_FWHM_FRACTION * (charges[-1] - charges[0]) if fwhm_Ah is None else fwhm_Ah, "fwhm_Ah")
    on_grid = np.interp(grid, charges, voltages)
    raw = DIRECTIONS[direction] * np.gradient(on_grid, spacing)
    kernel = _gaussian(fwhm_Ah / spacing)
    if len(kernel) > 1:
        weight = np.convolve(np.ones_like(raw), kernel, mode="same")
        smooth = np.convolve(raw, kernel, mode="same") / weight
    else:
        smooth = raw.copy()
    curve = pd.DataFrame({"capacity_Ah": grid, "voltage_V": on_grid, "dv_dq_V_per_Ah": smooth,
                          "dv_dq_raw_V_per_Ah": raw})
    curve.attrs.update(cycle=number, direction=direction, points=points, fwhm_Ah=fwhm_Ah,
                       voltage_column=voltage_column)
    return curve


def peaks(curve: pd.DataFrame, x: str = "voltage_V", y: str = "dq_dv_Ah_per_V",
          min_prominence: float = 0.05) -> pd.DataFrame:
    """The local maxima of a (smoothed) curve that rise at least `min_prominence` x its highest
    value above the higher of the two lowest points that separate them from a higher peak
    (or the curve's end) on either side: the usual topographic prominence. Sorted by `x`."""
    values = curve[y].to_numpy(float)
    if len(values) < 3 or not np.isfinite(values).any():
        return pd.DataFrame(columns=[x, y, "prominence"])
    needed = min_prominence * np.nanmax(values)
    found = []
    candidates = np.flatnonzero((values[1:-1] > values[:-2]) & (values[1:-1] >= values[2:])) + 1
    for k in candidates:
        height = values[k]
        left, right = values[:k][::-1], values[k + 1:]
        # walk out to the first higher point; the lowest point on the way is that side's base
        left_end = np.argmax(left > height) if (left > height).any() else len(left)
        right_end = np.argmax(right > height) if (right > height).any() else len(right)
        base = max(left[:left_end].min(initial=height), right[:right_end].min(initial=height))
        if height - base >= needed:
            found.append((curve[x].iloc[k], height, height - base))
    return pd.DataFrame(found, columns=[x, y, "prominence"])


def part_charge(time_s: np.ndarray, current_A: np.ndarray, direction: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Charge moved one way over a run of rows (one cycle's): per interval (Ah), cumulative at
    each row from the first (Ah), and which rows carry that current (above the noise floor)."""
    if direction not in DIRECTIONS:
        raise InvalidInput(f"direction={direction!r}: accepted are 'charge' and 'discharge'")
    along = DIRECTIONS[direction] * current_A
    flowing = along > NOISE_FLOOR * along.max(initial=0.0)
    counted = np.where(flowing, current_A, 0.0)
    interval_Ah = trapezoid_arrays(time_s, counted, np.zeros_like(counted))[
        "charge_Ah" if DIRECTIONS[direction] > 0 else "discharge_Ah"]
    return interval_Ah, np.concatenate([[0.0], np.cumsum(interval_Ah)]), flowing


def _charge_per_bin(edges: np.ndarray, low: np.ndarray, high: np.ndarray, charge: np.ndarray) -> np.ndarray:
    """The charge in each bin of a uniform grid (`edges`), each interval's charge spread evenly over
    the voltages [low, high] it spans (all in the one bin holding them, if it spans no more)."""
    bins = len(edges) - 1
    width = edges[1] - edges[0]
    first = np.clip(np.floor((low - edges[0]) / width).astype(int), 0, bins - 1)
    last = np.clip(np.floor((high - edges[0]) / width).astype(int), 0, bins - 1)
    within = first == last
    total = np.zeros(bins)  # (bincount of nothing is an integer array)
    total += np.bincount(first[within], charge[within], minlength=bins)
    f, g, lo, hi = first[~within], last[~within], low[~within], high[~within]
    per_volt = charge[~within] / (hi - lo)
    total += np.bincount(f, per_volt * (edges[f + 1] - lo), minlength=bins)  # the part in the first bin
    total += np.bincount(g, per_volt * (hi - edges[g]), minlength=bins)  # and in the last
    # whole bins in between: each gets per_volt * width, added from f + 1 and taken off at g
    opened = (np.bincount(f + 1, per_volt * width, minlength=bins + 1)
              - np.bincount(g, per_volt * width, minlength=bins + 1))
    total += np.maximum(np.cumsum(opened)[:bins], 0.0)  # >= 0 but for round-off
    return total


def _gaussian(fwhm_points: float) -> np.ndarray:
    """A Gaussian kernel of the FWHM given in grid points, cut at +-4 sigma, summing to 1."""
    if fwhm_points <= 0:
        return np.ones(1)
    sigma = fwhm_points / FWHM_PER_SIGMA
    half = max(int(math.ceil(KERNEL_HALF_WIDTH_SIGMA * sigma)), 1)
    offsets = np.arange(-half, half + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def _cycle_rows(samples: pd.DataFrame, cycle: int | None, voltage_column: str) -> tuple[pd.DataFrame, int | None]:
    missing = [name for name in (TIME, CURRENT, voltage_column) if name not in samples]
    if missing:
        raise InvalidInput(f"samples have no column {', '.join(repr(m) for m in missing)}; needed are "
                           f"{TIME!r}, {CURRENT!r} (+ = charge) and {voltage_column!r} (Battery Data Format "
                           "names; stackcycler.dataset.load gives them for any file it reads)")
    cycles = samples[CYCLE] if CYCLE in samples else None
    if cycle is None:
        held = [] if cycles is None else sorted(pd.unique(cycles.dropna()))
        if len(held) > 1:
            raise InvalidInput(f"the samples hold cycles {_listing(held)}: pass cycle= one of them")
        rows, number = samples, (int(held[0]) if held else None)
    else:
        if cycles is None:
            raise InvalidInput(f"cycle={cycle}: the samples have no {CYCLE!r} column; pass cycle=None for all rows")
        rows, number = samples[cycles == cycle], int(cycle)
        if rows.empty:
            raise InvalidInput(f"cycle={cycle}: no such cycle; the samples hold cycles "
                               f"{_listing(sorted(pd.unique(cycles.dropna())))}")
    rows = rows[[TIME, CURRENT, voltage_column]].apply(pd.to_numeric, errors="coerce").dropna()
    return rows, number


def _layer_scale(samples: pd.DataFrame, voltage_column: str, layers: int | None) -> int:
    """How many layers the voltage column spans: the grid and smoothing defaults scale with it."""
    if layers is not None:
        if layers < 1:
            raise InvalidInput(f"layers={layers}: give the number of layers in series (1 or more)")
        return int(layers)
    if voltage_column != VOLTAGE:
        return 1
    from .layers import layer_columns  # layers.py builds on this module
    return max(len(layer_columns(samples)), 1)


def _no_part(cycle: int | None, direction: str) -> str:
    where = "the samples" if cycle is None else f"cycle {cycle}"
    sign = ">" if DIRECTIONS[direction] > 0 else "<"
    return f"{where}: no {direction} (no rows with current {sign} 0 that move any charge)"


def _listing(values: list) -> str:
    values = [int(v) for v in values]
    if len(values) > 2 and values == list(range(values[0], values[-1] + 1)):
        return f"{values[0]}-{values[-1]}"
    return ", ".join(str(v) for v in values)


def _positive(value: float, name: str) -> float:
    if not (isinstance(value, Real) and math.isfinite(value) and value > 0):
        raise InvalidInput(f"{name}={value!r}: give a positive number")
    return float(value)


def _not_negative(value: float, name: str) -> float:
    if not (isinstance(value, Real) and math.isfinite(value) and value >= 0):
        raise InvalidInput(f"{name}={value!r}: give a number >= 0 (0: no smoothing)")
    return float(value)
