"""Stack diagnostics from the per-layer voltages of a bipolar stack, after the fact.

A bipolar stack is its layers in series: the same current flows through every layer, so at any
moment every layer has moved the same charge and what tells them apart is their voltages
(battery-testing.md §11.4). Layer columns are `Layer NN Voltage / V`.

Per cycle and layer (`layer_cycles`); a cycle's charge part and discharge part are its rows with
current that way, its charge counted from the cycle's first row, both as in ica.py:

- `end_of_charge_V`, `end_of_discharge_V`: the layer's voltage at the last row of the part.
- `discharge_capacity_Ah`: the charge the stack had discharged, from the start of the cycle's
  discharge, when the layer's voltage first fell to the per-layer cutoff (linear between the two
  rows either side of the crossing); the whole of the cycle's discharge if it never did
  (`reached_discharge_cutoff` False). Default cutoff: the DUT's discharge_voltage_V / layers.
  It is what the stack could deliver before that layer ran out: the layer that ends a
  discharge has the smallest. `charge_capacity_Ah` is the same on charge, against the DUT's
  charge_voltage_V / layers.
- `relative_capacity`: the layer's own capacity against the median layer's. A layer's capacity
  does not show in `discharge_capacity_Ah` unless the discharge takes it to its cutoff, and in
  series the first layer there ends the discharge for all. It shows in how far a given charge
  moves the layer's voltage: layers of one chemistry share an open-circuit voltage curve, so the
  charge that takes a layer through a voltage window is proportional to its capacity. The window
  is the range every layer's voltage crossed during the discharge (from the lowest of the layers'
  highest voltages down to the highest of their lowest ones), less WINDOW_MARGIN of it at each
  end, away from the polarisation transient at the start and the cutoff at the end;
  `window_Ah` is the charge between the layer's first crossings of its two ends. Differences in
  layer resistance shift a layer's voltage by I x dR; the error that leaves is that shift times
  the difference of dQ/dV between the two ends of the window. On the simulated stack at 1C
  (resistances 8 % apart, so +-4 mV): 0.15 % over 3.6-4.1 V, where dQ/dV is much the same at
  both ends, but up to 1.4 % over 3.2-3.9 V (0.15 against 2.6 Ah/V).

Per cycle (`weakest_layers`): the weakest layer, the one with the lowest discharge capacity
(ties, layers that never reached the cutoff and so share the whole discharge, broken by the
lowest end-of-discharge voltage); the layer with the lowest relative capacity; and the layer
voltage spread (max - min over layers at each row, `layer_spread`): its largest value in the
cycle and its time-weighted mean.

Suspected internal shorts (`suspected_shorts`): those the runner's detector reported while the run
went (its `safety_trip` events), and those found in the recorded rows by the same detector
(shorts.ShortDetector: a layer falling or noisy during a charge step, a coulombic efficiency drop)
driven over them row by row as the runner drives it tick by tick. Recorded rows are usually
sparser than ticks, so its confirmation over CONFIRM_TICKS ticks and its noise window take longer
to fill: a short found in the data can be found later than on the bench, or not at all when only
a few rows were recorded after it formed.

Data without layer columns gives empty tables and a note saying so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from .analysis import HOLD_ENDS, cycle_summary
from .dataset import CURRENT, CYCLE, STEP_COUNT, STEP_TYPE, TIME, VOLTAGE, Dataset, layer_columns, layer_number
from .errors import InvalidInput, SafetyTrip
from .ica import part_charge
from .safety import SafetyEnvelope
from .sample import Sample
from .shorts import CHARGING_STEP_KINDS, ShortDetector

WINDOW_MARGIN = 0.10  # of the common voltage window, left out at each end
# The trips of the short detector (shorts.py), as safety_trip events name them.
SHORT_LIMITS = ("max_layer_drop_mV", "max_layer_noise_mV", "max_ce_drop_pct")
# Where the runner clears the detector's memory of the step: after a hold and at a resume (runner.py).
DETECTOR_RESTARTS = (*HOLD_ENDS, "resumed")
# Step Type (plan.py writes CC_CHG, CCCV_CHG, CV, CP_CHG, REST ...; a Bitrode file CHG, DCH, REST)
# to the step kinds the detector knows.
BITRODE_KINDS = {"chg": "cc", "dch": "cc"}
NO_LAYERS = "no layer columns ('Layer NN Voltage / V') in the samples: no per-layer diagnostics"

LAYER_CYCLE_COLUMNS = ("cycle", "layer", "end_of_charge_V", "end_of_discharge_V", "charge_capacity_Ah",
                       "reached_charge_cutoff", "discharge_capacity_Ah", "reached_discharge_cutoff",
                       "window_Ah", "relative_capacity", "window_low_V", "window_high_V")
CYCLE_COLUMNS = ("cycle", "weakest_layer", "weakest_discharge_capacity_Ah",
                 "weakest_relative_capacity", "lowest_relative_layer", "lowest_relative_capacity",
                 "max_spread_V", "mean_spread_V")
SPREAD_COLUMNS = (TIME, CYCLE, "spread_V", "lowest_layer", "highest_layer")
SHORT_COLUMNS = ("source", "test_time_s", "cycle", "layer", "limit", "value", "threshold", "where")


@dataclass
class StackDiagnosis:
    layers: pd.DataFrame  # per cycle and layer: layer_cycles
    cycles: pd.DataFrame  # per cycle: weakest_layers
    spread: pd.DataFrame  # per row: layer_spread
    shorts: pd.DataFrame  # suspected_shorts
    notes: list[str] = field(default_factory=list)


def diagnose(data: Dataset, discharge_cutoff_V: float | None = None, charge_cutoff_V: float | None = None,
             envelope: SafetyEnvelope | None = None) -> StackDiagnosis:
    """Everything above for a dataset (stackcycler.dataset.load). The short detector runs with
    `envelope`, by default the one the run ran with (its run.json), else the detector's defaults."""
    samples, dut = data.samples, data.dut
    if envelope is None and data.metadata.get("safety_envelope"):
        known = {f.name for f in fields(SafetyEnvelope)}
        envelope = SafetyEnvelope(**{k: v for k, v in data.metadata["safety_envelope"].items()
                                     if k in known and v is not None})
    per_layer = layer_cycles(samples, dut, discharge_cutoff_V, charge_cutoff_V)
    spread = layer_spread(samples)
    shorts = suspected_shorts(samples, data.events, envelope, dut.get("nominal_capacity_Ah"))
    notes = list(dict.fromkeys(per_layer.attrs.get("notes", []) + shorts.attrs.get("notes", [])))
    return StackDiagnosis(per_layer, weakest_layers(per_layer, spread), spread, shorts, notes)


def layer_cycles(samples: pd.DataFrame, dut: dict[str, Any] | None = None, discharge_cutoff_V: float | None = None,
                 charge_cutoff_V: float | None = None) -> pd.DataFrame:
    """One row per cycle and layer (columns LAYER_CYCLE_COLUMNS; definitions in the module
    docstring). Cutoffs are per layer; by default the DUT's stack voltages / its layers."""
    _require(samples, (TIME, CURRENT))
    columns = layer_columns(samples)
    notes: list[str] = []
    if not columns:
        return _empty(LAYER_CYCLE_COLUMNS, [NO_LAYERS])
    layers = [layer_number(name) for name in columns]
    cutoffs = {}
    for direction, given, key in (("discharge", discharge_cutoff_V, "discharge_voltage_V"),
                                  ("charge", charge_cutoff_V, "charge_voltage_V")):
        cutoffs[direction] = given if given is not None else _dut_cutoff(dut or {}, key, len(columns))
        if cutoffs[direction] is None:
            notes.append(f"no per-layer {direction} cutoff (pass {direction}_cutoff_V or a DUT with {key} "
                         f"and layers): {direction}_capacity_Ah is the whole {direction}")
    cycle_of = _cycles(samples, notes)
    t_all, i_all = samples[TIME].to_numpy(float), samples[CURRENT].to_numpy(float)
    volts_all = samples[columns].to_numpy(float)
    blocks = []
    for cycle, where in pd.Series(np.arange(len(samples))).groupby(cycle_of, sort=True).indices.items():
        t, i, volts = t_all[where], i_all[where], volts_all[where]
        block = {"cycle": np.full(len(columns), int(cycle)), "layer": np.asarray(layers)}
        for direction in ("charge", "discharge"):
            _, charge_Ah, flowing = part_charge(t, i, direction)
            block.update(_part_of_layers(charge_Ah, flowing, volts, direction, cutoffs[direction]))
            if direction == "discharge":
                block.update(_window(charge_Ah, flowing, volts))
        blocks.append(pd.DataFrame(block))
    table = pd.concat(blocks, ignore_index=True)[list(LAYER_CYCLE_COLUMNS)] if blocks else _empty(LAYER_CYCLE_COLUMNS)
    table.attrs["notes"] = notes
    return table


def weakest_layers(per_layer: pd.DataFrame, spread: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per cycle (columns CYCLE_COLUMNS): the weakest layer, the layer of lowest relative
    capacity, and the layer voltage spread (if `spread`, from layer_spread, is given)."""
    if per_layer.empty:
        return _empty(CYCLE_COLUMNS, per_layer.attrs.get("notes", []))
    rows = []
    for cycle, layers in per_layer.groupby("cycle", sort=True):
        row: dict[str, Any] = dict.fromkeys(CYCLE_COLUMNS, np.nan)
        row["cycle"] = int(cycle)
        known = layers.dropna(subset=["discharge_capacity_Ah"])
        if not known.empty:
            # lowest capacity first; among equals (the whole discharge) the lowest end voltage
            weakest = known.sort_values(["discharge_capacity_Ah", "end_of_discharge_V"], kind="stable").iloc[0]
            row.update(weakest_layer=int(weakest["layer"]),
                       weakest_discharge_capacity_Ah=weakest["discharge_capacity_Ah"],
                       weakest_relative_capacity=weakest["relative_capacity"])
        relative = layers.dropna(subset=["relative_capacity"])
        if not relative.empty:
            lowest = relative.loc[relative["relative_capacity"].idxmin()]
            row.update(lowest_relative_layer=int(lowest["layer"]), lowest_relative_capacity=lowest["relative_capacity"])
        rows.append(row)
    table = pd.DataFrame(rows, columns=list(CYCLE_COLUMNS))
    if spread is not None and not spread.empty:
        by_cycle = _spread_per_cycle(spread)
        table["max_spread_V"] = table["cycle"].map(by_cycle["max_spread_V"])
        table["mean_spread_V"] = table["cycle"].map(by_cycle["mean_spread_V"])
    for name in ("weakest_layer", "lowest_relative_layer"):
        table[name] = table[name].astype("Int64")
    table.attrs["notes"] = per_layer.attrs.get("notes", [])
    return table


def layer_spread(samples: pd.DataFrame) -> pd.DataFrame:
    """Per row: the layer voltage spread (max - min over layers) and which layers are lowest and
    highest (layers that could not be read, NaN, are left out)."""
    _require(samples, (TIME,))
    columns = layer_columns(samples)
    if not columns:
        return _empty(SPREAD_COLUMNS, [NO_LAYERS])
    layers = np.array([layer_number(name) for name in columns])
    volts = samples[columns].to_numpy(float)
    readable = ~np.isnan(volts).all(axis=1)
    high = np.where(np.isnan(volts), -np.inf, volts)  # an unread layer is never the highest
    low = np.where(np.isnan(volts), np.inf, volts)  # nor the lowest
    spread = np.where(readable, high.max(axis=1) - low.min(axis=1), np.nan)
    lowest = pd.arrays.IntegerArray(layers[low.argmin(axis=1)], ~readable)
    highest = pd.arrays.IntegerArray(layers[high.argmax(axis=1)], ~readable)
    return pd.DataFrame({TIME: samples[TIME].to_numpy(float), CYCLE: _cycles(samples, []), "spread_V": spread,
                         "lowest_layer": lowest, "highest_layer": highest})


def suspected_shorts(samples: pd.DataFrame, events: Sequence[dict[str, Any]] = (),
                     envelope: SafetyEnvelope | None = None, nominal_capacity_Ah: float | None = None) -> pd.DataFrame:
    """Internal shorts the runner reported (source "runner") and those the detector finds in the
    recorded rows (source "data"), by test time; columns SHORT_COLUMNS."""
    both = (runner_shorts(events), shorts_in_data(samples, envelope, nominal_capacity_Ah, events))
    found = pd.concat([frame for frame in both if not frame.empty] or [_empty(SHORT_COLUMNS)], ignore_index=True)
    found = found.sort_values("test_time_s", kind="stable").reset_index(drop=True)
    if len(found) and len(samples):
        # the cycle of the last row at or before each finding
        times, cycles = samples[TIME].to_numpy(float), _cycles(samples, [])
        at = np.clip(np.searchsorted(times, found["test_time_s"].to_numpy(float), side="right") - 1, 0, len(times) - 1)
        found["cycle"] = cycles[at]
    found["layer"] = found["layer"].astype("Int64")
    found.attrs["notes"] = [] if layer_columns(samples) else [
        NO_LAYERS + "; only the coulombic-efficiency check can run (if max_ce_drop_pct is set)"]
    return found


def runner_shorts(events: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """The short detector's trips among a run's events (events.jsonl)."""
    rows = [{"source": "runner", "test_time_s": float(e.get("test_time_s", np.nan)), "cycle": np.nan,
             "layer": _layer_named(str(e.get("where", ""))), "limit": e["limit"], "value": e.get("value"),
             "threshold": e.get("threshold"), "where": e.get("where", "")}
            for e in events if e.get("event") == "safety_trip" and e.get("limit") in SHORT_LIMITS]
    return pd.DataFrame(rows, columns=list(SHORT_COLUMNS))


def shorts_in_data(samples: pd.DataFrame, envelope: SafetyEnvelope | None = None,
                   nominal_capacity_Ah: float | None = None, events: Sequence[dict[str, Any]] = ()) -> pd.DataFrame:
    """The short detector (shorts.ShortDetector, with `envelope`'s thresholds or its defaults) run
    over the recorded rows as the runner runs it over ticks: its step memory cleared at each new
    step (and after holds and resumes, from `events`), coulombic efficiency compared at each cycle's
    end. At most one finding per step: the detector stops the run at its first, so what follows
    it in that step is not what it was built to judge."""
    _require(samples, (TIME, VOLTAGE, CURRENT))
    columns = layer_columns(samples)
    detector = ShortDetector(envelope or SafetyEnvelope(), len(columns), nominal_capacity_Ah)
    if not len(samples) or (detector.max_drop_V is None and detector.max_ce_drop is None):
        return _empty(SHORT_COLUMNS)
    t, v, i = (samples[name].to_numpy(float) for name in (TIME, VOLTAGE, CURRENT))
    volts = samples[columns].to_numpy(float) if columns else np.empty((len(samples), 0))
    kinds = _step_kinds(samples)
    steps = samples[STEP_COUNT].to_numpy() if STEP_COUNT in samples else _steps_from_types(kinds)
    cycles = _cycles(samples, [])
    # The detector only judges rows of charge steps at a steady charging current with every layer
    # read; any other row just clears its memory, and one such row does that as well as many.
    judged = np.isin(kinds, CHARGING_STEP_KINDS) & (i >= detector.min_charge_A) & np.isfinite(volts).all(axis=1)
    new_step = np.r_[True, steps[1:] != steps[:-1]]
    restarts = [e["test_time_s"] for e in events if e.get("event") in DETECTOR_RESTARTS and "test_time_s" in e]
    new_step[np.searchsorted(t, restarts, side="left").clip(0, len(t) - 1)] = True
    cycle_end = np.r_[cycles[1:] != cycles[:-1], True]
    fed = judged | np.r_[True, judged[1:] != judged[:-1]] | new_step | cycle_end
    totals = _cycle_totals(samples) if detector.max_ce_drop is not None else {}

    found = []
    stopped = False  # a finding in this step: the rest of the step is not judged
    for k in np.flatnonzero(fed):
        if new_step[k]:
            detector.start_step()
            stopped = False
        if not stopped:
            try:
                detector.check(Sample(t[k], t[k], v[k], i[k], volts[k]), kinds[k])
            except SafetyTrip as trip:
                found.append(_finding(trip))
                stopped = True
        if cycle_end[k] and cycles[k] in totals:
            try:
                detector.end_cycle(*totals[cycles[k]], t[k])
            except SafetyTrip as trip:
                found.append(_finding(trip))
    return pd.DataFrame(found, columns=list(SHORT_COLUMNS))


# --- per cycle ------------------------------------------------------------------------------


def _part_of_layers(charge_Ah: np.ndarray, flowing: np.ndarray, volts: np.ndarray, direction: str,
                    cutoff_V: float | None) -> dict[str, np.ndarray]:
    """End voltage and capacity to the cutoff of each layer in one cycle's charge or discharge
    (`charge_Ah`, `flowing`: that part's charge and rows, from ica.part_charge)."""
    end, capacity, reached = f"end_of_{direction}_V", f"{direction}_capacity_Ah", f"reached_{direction}_cutoff"
    n = volts.shape[1]
    if not flowing.any():
        return {end: np.full(n, np.nan), capacity: np.full(n, np.nan), reached: np.zeros(n, bool)}
    part = np.flatnonzero(flowing)
    first, last = part[0], part[-1]
    span = slice(first, last + 1)
    at_cutoff = (np.full(n, np.nan) if cutoff_V is None else
                 _first_crossing(charge_Ah[span], volts[span], cutoff_V, falling=direction == "discharge"))
    crossed = ~np.isnan(at_cutoff)
    return {end: volts[last], capacity: np.where(crossed, at_cutoff, charge_Ah[-1]), reached: crossed}


def _window(charge_Ah: np.ndarray, flowing: np.ndarray, volts: np.ndarray) -> dict[str, np.ndarray]:
    """Each layer's charge through the voltage window every layer crossed in the discharge."""
    n = volts.shape[1]
    blank = {"window_Ah": np.full(n, np.nan), "relative_capacity": np.full(n, np.nan),
             "window_low_V": np.full(n, np.nan), "window_high_V": np.full(n, np.nan)}
    if not flowing.any():
        return blank
    part = np.flatnonzero(flowing)
    span = slice(part[0], part[-1] + 1)
    part_volts, part_Ah = volts[span], charge_Ah[span]
    # fmax/fmin skip NaN (a layer not read) without the all-NaN warning of nanmax
    top = np.fmin.reduce(np.fmax.reduce(part_volts, axis=0))
    bottom = np.fmax.reduce(np.fmin.reduce(part_volts, axis=0))
    if not top > bottom:
        return blank
    margin = WINDOW_MARGIN * (top - bottom)
    high, low = top - margin, bottom + margin
    through = (_first_crossing(part_Ah, part_volts, low, falling=True)
               - _first_crossing(part_Ah, part_volts, high, falling=True))
    usual = np.nanmedian(through) if np.isfinite(through).any() else np.nan
    return {"window_Ah": through, "relative_capacity": through / usual if usual > 0 else blank["relative_capacity"],
            "window_low_V": np.full(n, low), "window_high_V": np.full(n, high)}


def _first_crossing(charge_Ah: np.ndarray, volts: np.ndarray, level_V: float, falling: bool) -> np.ndarray:
    """Per layer (column): the charge at which its voltage first reached `level_V` (falling to it
    or rising to it), linear between the rows either side; NaN where it never did."""
    beyond = volts <= level_V if falling else volts >= level_V
    ever = beyond.any(axis=0)
    row = np.argmax(beyond, axis=0)
    before = np.maximum(row - 1, 0)
    columns = np.arange(volts.shape[1])
    v0, v1 = volts[before, columns], volts[row, columns]
    q0, q1 = charge_Ah[before], charge_Ah[row]
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = np.where((row > 0) & (v1 != v0), (v0 - level_V) / (v0 - v1), 1.0)
    return np.where(ever, q0 + fraction * (q1 - q0), np.nan)


def _spread_per_cycle(spread: pd.DataFrame) -> pd.DataFrame:
    """Largest and time-weighted mean spread of each cycle (trapezoid over the cycle's rows)."""
    t, s, c = spread[TIME].to_numpy(float), spread["spread_V"].to_numpy(float), spread[CYCLE].to_numpy()
    same = (c[1:] == c[:-1]) & np.isfinite(s[1:]) & np.isfinite(s[:-1])
    dt = np.where(same, np.maximum(np.diff(t), 0.0), 0.0)
    area = pd.Series(np.where(same, (s[1:] + s[:-1]) / 2 * dt, 0.0)).groupby(c[1:]).sum()
    duration = pd.Series(dt).groupby(c[1:]).sum()
    table = pd.DataFrame({"max_spread_V": pd.Series(s).groupby(c).max()})
    mean = (area / duration.where(duration > 0)).reindex(table.index)
    table["mean_spread_V"] = mean.fillna(pd.Series(s).groupby(c).mean())  # a cycle of one instant: the plain mean
    return table


# --- helpers --------------------------------------------------------------------------------


def _cycles(samples: pd.DataFrame, notes: list[str]) -> np.ndarray:
    if CYCLE in samples:
        return samples[CYCLE].to_numpy()
    notes.append(f"no {CYCLE!r} column: all rows are taken as cycle 1")
    return np.ones(len(samples), dtype=int)


def _cycle_totals(samples: pd.DataFrame) -> dict[Any, tuple[float, float]]:
    """(charge Ah, discharge Ah) of each cycle, as the cycle summary counts them."""
    summary = cycle_summary(samples)
    return {cycle: (charge, discharge) for cycle, charge, discharge in
            summary[[CYCLE, "Charging Capacity / Ah", "Discharging Capacity / Ah"]].itertuples(index=False)}


def _step_kinds(samples: pd.DataFrame) -> np.ndarray:
    """The detector's step kind of each row: 'cccv' from CCCV_CHG, 'cc' from CC_CHG or a
    Bitrode CHG ...; without a Step Type column every row counts as 'cc' (a drive cycle without
    step types would then be judged like a CC charge: its regen pulses could look like falls)."""
    if STEP_TYPE not in samples:
        return np.full(len(samples), "cc", dtype=object)
    kinds = samples[STEP_TYPE].astype(str).str.split("_").str[0].str.lower()
    return kinds.replace(BITRODE_KINDS).to_numpy(dtype=object)


def _steps_from_types(kinds: np.ndarray) -> np.ndarray:
    return np.cumsum(np.r_[True, kinds[1:] != kinds[:-1]])


def _finding(trip: SafetyTrip) -> dict[str, Any]:
    return {"source": "data", "test_time_s": trip.test_time_s, "cycle": np.nan, "layer": _layer_named(trip.where),
            "limit": trip.limit, "value": trip.value, "threshold": trip.threshold, "where": trip.where}


def _layer_named(where: str) -> int | None:
    """The layer number in a trip's `where` ("layer 07 (internal short suspected)")."""
    match = re.match(r"layer (\d+)", where)
    return int(match.group(1)) if match else None


def _dut_cutoff(dut: dict[str, Any], key: str, columns: int) -> float | None:
    stack_V, layers = dut.get(key), dut.get("layers") or columns
    return None if stack_V is None else float(stack_V) / int(layers)


def _require(samples: pd.DataFrame, names: tuple[str, ...]) -> None:
    missing = [name for name in names if name not in samples]
    if missing:
        raise InvalidInput(f"samples have no column {', '.join(repr(m) for m in missing)}; layer diagnostics need "
                           f"{TIME!r}, {CURRENT!r} (+ = charge), {VOLTAGE!r} and 'Layer NN Voltage / V' columns "
                           "(Battery Data Format names, as stackcycler.dataset.load gives them)")


def _empty(columns: Sequence[str], notes: list[str] | None = None) -> pd.DataFrame:
    table = pd.DataFrame(columns=list(columns))
    table.attrs["notes"] = list(notes or [])
    return table
