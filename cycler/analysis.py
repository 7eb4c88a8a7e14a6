"""Per-cycle results from recorded samples (the definitions are in docs/results.md).

Charge and energy: a stackcycler run logs cumulative charge and energy counted every tick, so a
cycle's charge is the growth of those columns over the cycle: exact however sparse the
recording. Data without them (another cycler's file) is integrated from its rows (trapezoid,
split at zero crossings: integrators.trapezoid_arrays). The interval between two rows belongs
to the cycle of the later row, in both cases, so the two agree.

Everything per row is vectorised: a ten-million-row file is summarised in under two seconds on a
quiet two-core machine (tests/benchmarks/summary.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .dataset import CURRENT, CYCLE, PRESSURE, STEP_COUNT, STEP_TYPE, TIME, VOLTAGE, Dataset
from .integrators import trapezoid_arrays
from .runner import CV_CURRENT_FRACTION, CV_VOLTAGE_FRACTION

CUMULATIVE = {
    "charge_capacity_Ah": "Charging Capacity / Ah",
    "discharge_capacity_Ah": "Discharging Capacity / Ah",
    "charge_energy_Wh": "Charging Energy / Wh",
    "discharge_energy_Wh": "Discharging Energy / Wh",
}

# Summary columns: machine key (JSON) -> label (CSV), in one place; docs/results.md defines each.
SUMMARY_COLUMNS = {
    "cycle": "Cycle Count / 1",
    **CUMULATIVE,
    "coulombic_efficiency": "Coulombic Efficiency / 1",
    "energy_efficiency": "Energy Efficiency / 1",
    "capacity_retention": "Capacity Retention / 1",
    "end_of_life": "End Of Life",
    "average_charge_voltage_V": "Average Charge Voltage / V",
    "average_discharge_voltage_V": "Average Discharge Voltage / V",
    "voltage_gap_V": "Voltage Gap / V",
    "cv_time_s": "CV Time / s",
    "cv_capacity_Ah": "CV Capacity / Ah",
    "min_temperature_degC": "Min Temperature / degC",
    "max_temperature_degC": "Max Temperature / degC",
    "min_pressure_MPa": "Min Pressure / MPa",
    "max_pressure_MPa": "Max Pressure / MPa",
    "paused_s": "Paused Time / s",
    "charge_throughput_Ah": "Charge Throughput / Ah",
    "equivalent_full_cycles": "Equivalent Full Cycles / 1",
    "specific_energy_Wh_per_kg": "Specific Energy / Wh/kg",
    "energy_density_Wh_per_L": "Energy Density / Wh/L",
    "start_time_s": "Cycle Start Time / s",
    "duration_s": "Cycle Duration / s",
}

DEFAULT_EOL_RETENTION = 0.80  # a common end-of-life criterion (battery-testing.md §12; NASA PCoE used 0.70)
DUT_TEMPERATURE = re.compile(r"^Temperature T\d / degC$")  # sensors on the DUT; ambient is not the DUT's
# A data gap this long counts as a pause in files without events (BEEP's `paused` flag: > 3600 s).
PAUSE_GAP_S = 3600.0
INTEGRATION_CHUNK_ROWS = 1_000_000
HOLD_STARTS = ("paused", "suspended")
HOLD_ENDS = ("continued", "suspension_cleared")

# What cycle_summary reads: a million-row run summarised without loading its layer columns.
SUMMARY_INPUTS = (CYCLE, TIME, VOLTAGE, CURRENT, STEP_COUNT, STEP_TYPE, PRESSURE, *CUMULATIVE.values(),
                  *(f"Temperature T{k} / degC" for k in range(1, 6)))


def summarise(data: Dataset, eol_retention: float = DEFAULT_EOL_RETENTION, mass_kg: float | None = None,
              volume_L: float | None = None) -> pd.DataFrame:
    """The per-cycle table of a dataset (its events and DUT are used where it has them; mass and
    volume, for energy density, default to the DUT's)."""
    dut = data.dut
    return cycle_summary(data.samples, data.events, eol_retention, dut.get("nominal_capacity_Ah"),
                         mass_kg if mass_kg is not None else dut.get("mass_kg"),
                         volume_L if volume_L is not None else dut.get("volume_L"))


def fixture_note(dut: dict[str, Any]) -> str | None:
    """A warning for energy densities that may include the pressure fixture, with which an
    all-solid-state prototype's figures mean nothing (battery-testing.md §12); None if excluded."""
    if dut.get("mass_kg") is None and dut.get("volume_L") is None:
        return None
    if dut.get("fixture_excluded") is True:
        return None
    if dut.get("fixture_excluded") is False:
        return "energy densities include the pressure fixture: not comparable with a cell's"
    return "energy densities: the DUT's mass and volume do not say whether the pressure fixture is excluded"


@dataclass(frozen=True)
class Groups:
    """Rows grouped by a key (cycle, step counter): the group of each row, and each group's key,
    first and last row. A cycler's counters never decrease, so groups are runs of rows and every
    reduction is one numpy pass; other data takes the general (slower) path."""

    keys: np.ndarray
    of_row: np.ndarray
    first: np.ndarray
    last: np.ndarray
    contiguous: bool

    @classmethod
    def of(cls, values: np.ndarray) -> "Groups":
        rows = len(values)
        if rows and np.all(values[1:] >= values[:-1]):
            first = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
            last = np.r_[first[1:] - 1, rows - 1]
            of_row = np.repeat(np.arange(len(first), dtype=np.int32), last - first + 1)
            return cls(values[first], of_row, first, last, True)
        keys, of_row = np.unique(values, return_inverse=True)
        by_group = pd.Series(np.arange(rows)).groupby(of_row)
        return cls(keys, of_row, by_group.min().to_numpy(), by_group.max().to_numpy(), False)

    def reduce(self, values: np.ndarray, how: str) -> np.ndarray:
        """Per group: "min" or "max" (NaN skipped) or "sum" of `values` (one per row)."""
        if self.contiguous:
            ufunc = {"min": np.fmin, "max": np.fmax, "sum": np.add}[how]
            return ufunc.reduceat(values, self.first)
        return getattr(pd.Series(values).groupby(self.of_row), how)().to_numpy(float)


def cycle_summary(samples: pd.DataFrame, events: Sequence[dict[str, Any]] = (),
                  eol_retention: float = DEFAULT_EOL_RETENTION, nominal_capacity_Ah: float | None = None,
                  mass_kg: float | None = None, volume_L: float | None = None) -> pd.DataFrame:
    """One row per cycle, columns labelled as in SUMMARY_COLUMNS."""
    if samples.empty:
        return pd.DataFrame(columns=list(SUMMARY_COLUMNS.values()))
    t = samples[TIME].to_numpy(float)
    v = samples[VOLTAGE].to_numpy(float)
    i = samples[CURRENT].to_numpy(float)
    groups = Groups.of(samples[CYCLE].to_numpy() if CYCLE in samples else np.ones(len(t), dtype=int))
    cycles, n = groups.keys, len(groups.keys)

    def per_cycle(interval_values: np.ndarray) -> np.ndarray:
        """Sum per cycle of a value per interval: the interval before row k belongs to row k's cycle."""
        return groups.reduce(np.concatenate(([0.0], interval_values)), "sum")

    totals, interval_charge_Ah = _throughput(samples, t, v, i, groups)
    out: dict[str, Any] = {"cycle": cycles.astype(int), **totals}
    charge, discharge = out["charge_capacity_Ah"], out["discharge_capacity_Ah"]
    # efficiencies and retention only for full cycles: a charge-only formation cycle has no CE
    noise = rest_noise_Ah(charge)
    full = (charge > noise) & (discharge > noise)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["coulombic_efficiency"] = np.where(full, discharge / charge, np.nan)
        out["energy_efficiency"] = np.where(full, out["discharge_energy_Wh"] / out["charge_energy_Wh"], np.nan)
        out["average_charge_voltage_V"] = np.where(charge > noise, out["charge_energy_Wh"] / charge, np.nan)
        out["average_discharge_voltage_V"] = np.where(discharge > noise, out["discharge_energy_Wh"] / discharge, np.nan)
    out["voltage_gap_V"] = out["average_charge_voltage_V"] - out["average_discharge_voltage_V"]
    retention = np.full(n, np.nan)
    if full.any():  # retention is relative to the first full cycle
        reference = int(np.flatnonzero(full)[0])
        retention[reference:] = np.where(discharge[reference:] > noise, discharge[reference:] / discharge[reference], np.nan)
    out["capacity_retention"] = retention
    out["end_of_life"] = retention < eol_retention  # NaN (not a full cycle) compares False

    out["cv_time_s"], out["cv_capacity_Ah"] = _cv_phase_per_cycle(samples, events, cycles, per_cycle,
                                                                   interval_charge_Ah)

    temperatures = [name for name in samples.columns if DUT_TEMPERATURE.match(name)]
    out["min_temperature_degC"] = _across(samples, temperatures, groups, "min")
    out["max_temperature_degC"] = _across(samples, temperatures, groups, "max")
    out["min_pressure_MPa"] = _across(samples, [PRESSURE] if PRESSURE in samples else [], groups, "min")
    out["max_pressure_MPa"] = _across(samples, [PRESSURE] if PRESSURE in samples else [], groups, "max")
    out["start_time_s"] = t[groups.first]
    out["duration_s"] = t[groups.last] - t[groups.first]
    out["paused_s"] = (_held_per_cycle(events, out["start_time_s"], t[groups.last]) if events
                       else per_cycle(np.where(np.diff(t) > PAUSE_GAP_S, np.diff(t), 0.0)))
    out["charge_throughput_Ah"] = np.cumsum(charge)
    out["equivalent_full_cycles"] = (np.cumsum(charge + discharge) / (2 * nominal_capacity_Ah)
                                     if nominal_capacity_Ah else np.full(n, np.nan))
    delivered = np.where(discharge > noise, out["discharge_energy_Wh"], np.nan)
    out["specific_energy_Wh_per_kg"] = delivered / mass_kg if mass_kg else np.full(n, np.nan)
    out["energy_density_Wh_per_L"] = delivered / volume_L if volume_L else np.full(n, np.nan)
    return pd.DataFrame({SUMMARY_COLUMNS[key]: out[key] for key in SUMMARY_COLUMNS})


def _throughput(samples: pd.DataFrame, t: np.ndarray, v: np.ndarray, i: np.ndarray,
                groups: Groups) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per cycle, charge and discharge Ah and Wh (keys of CUMULATIVE), and the charge of every
    interval between rows (for the CV phase). From the runner's cumulative counters where the
    file has them; else integrated, a million rows at a time so that ten million rows need no
    ten full-length temporaries. The interval before row k belongs to row k's cycle."""
    labels = list(CUMULATIVE.values())
    if all(label in samples for label in labels) and not samples[labels].isna().to_numpy().any():
        totals = {}
        for key, label in CUMULATIVE.items():
            counted = samples[label].to_numpy(float)
            totals[key] = (np.diff(counted[groups.last], prepend=counted[0]) if groups.contiguous
                           else np.bincount(groups.of_row[1:], np.diff(counted), minlength=len(groups.keys)))
        return totals, np.diff(samples[labels[0]].to_numpy(float))
    totals = {key: np.zeros(len(groups.keys)) for key in CUMULATIVE}
    interval_charge_Ah = np.empty(max(len(t) - 1, 0))
    for start in range(0, len(t) - 1, INTEGRATION_CHUNK_ROWS):
        end = min(start + INTEGRATION_CHUNK_ROWS, len(t) - 1)  # intervals start..end-1: rows start..end
        rows = slice(start, end + 1)
        parts = trapezoid_arrays(t[rows], i[rows], v[rows] * i[rows])
        cycle_of_interval = groups.of_row[start + 1:end + 1]
        for key, part in zip(CUMULATIVE, ("charge_Ah", "discharge_Ah", "charge_Wh", "discharge_Wh")):
            totals[key] += np.bincount(cycle_of_interval, weights=parts[part], minlength=len(groups.keys))
        interval_charge_Ah[start:end] = parts["charge_Ah"]
    return totals, interval_charge_Ah


def rest_noise_Ah(charges_Ah: Sequence[float]) -> float:
    """Charge below which a cycle counts as not having charged or discharged at all: the
    zero-current noise of rests adds up to less than 1 % of the largest charge of any cycle."""
    return 0.01 * float(np.nanmax(np.asarray(charges_Ah, float), initial=0.0))


def _cv_phase_per_cycle(samples: pd.DataFrame, events: Sequence[dict[str, Any]], cycles: np.ndarray,
                        per_cycle, interval_charge_Ah: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Time and charge in the constant-voltage phase of charge steps, per cycle (NaN when the
    data cannot say: no step counter). CV steps count whole. A stackcycler run's CC-CV steps
    count as the runner timed them (`cv_s`, `cv_Ah` of their step_end events); in other data the
    CV phase is found from the samples (`_cv_found_in_data`)."""
    if STEP_COUNT not in samples:
        return np.full(len(cycles), np.nan), np.full(len(cycles), np.nan)
    steps = Groups.of(samples[STEP_COUNT].to_numpy())
    # a step's type is its first row's: classified once per step, not per row
    types = (samples[STEP_TYPE].iloc[steps.first].astype(str).to_numpy() if STEP_TYPE in samples
             else np.full(len(steps.keys), ""))
    cv_rows = np.isin(types, ("CV", "CV_CHG"))[steps.of_row]
    if not events:
        cv_rows |= _cv_found_in_data(samples, steps, types)
    same_step = steps.of_row[1:] == steps.of_row[:-1]
    in_cv = cv_rows[1:] & cv_rows[:-1] & same_step  # both ends of the interval in CV
    t = samples[TIME].to_numpy(float)
    cv_time = per_cycle(np.where(in_cv, np.diff(t), 0.0))
    cv_charge = per_cycle(np.where(in_cv, interval_charge_Ah, 0.0))
    cycle = None
    for event in events:
        if event.get("event") == "step_start":
            cycle = event.get("cycle")
        elif (event.get("event") == "step_end" and event.get("cv_reached") and cycle in cycles
              and event.get("charge_Ah", 0.0) > event.get("discharge_Ah", 0.0)):
            index = int(np.searchsorted(cycles, cycle))
            cv_time[index] += event["cv_s"]
            cv_charge[index] += event["cv_Ah"]
    return cv_time, cv_charge


def _cv_found_in_data(samples: pd.DataFrame, steps: Groups, types: np.ndarray) -> np.ndarray:
    """Rows of charge steps (typed CCCV or untyped charge) from the first that meets the runner's
    own CV-entry rule, with the step's largest current for the CC setpoint and its final voltage
    for the CV setpoint: current below CV_CURRENT_FRACTION of the one, voltage within
    CV_VOLTAGE_FRACTION of the other."""
    v = samples[VOLTAGE].to_numpy(float)
    i = samples[CURRENT].to_numpy(float)
    row_step = steps.of_row
    eligible = np.char.startswith(types.astype(str), "CCCV") | np.isin(types, ("", "nan", "CHG", "UNKNOWN"))
    charging = steps.reduce(i, "sum") > 0
    final_v = v[steps.last][row_step]
    entered = ((eligible & charging)[row_step] & (i < CV_CURRENT_FRACTION * steps.reduce(i, "max")[row_step])
               & (np.abs(v - final_v) <= CV_VOLTAGE_FRACTION * np.abs(final_v)))
    rows = np.arange(len(v), dtype=np.int32 if len(v) < 2**31 else np.int64)
    first_entered = steps.reduce(np.where(entered, rows, len(v)), "min")  # per step; len(v): never
    return rows >= first_entered[row_step]


def _across(samples: pd.DataFrame, columns: list[str], groups: Groups, how: str) -> np.ndarray:
    """Per group, the min or max over several columns (sensors); NaN where none has a value."""
    per_column = [groups.reduce(samples[name].to_numpy(float), how) for name in columns]
    if not per_column:
        return np.full(len(groups.keys), np.nan)
    with np.errstate(all="ignore"):
        return (np.fmin if how == "min" else np.fmax).reduce(np.vstack(per_column), axis=0)


def _held_per_cycle(events: Sequence[dict[str, Any]], starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Seconds each cycle spent held (paused by the operator, suspended) or interrupted (from a
    crash to its resume), from the run's events; a hold still going runs to the last sample."""
    spans: list[tuple[float, float]] = []
    held_since: float | None = None
    for event in events:
        kind, at = event.get("event"), event.get("test_time_s")
        if at is None:
            continue
        if kind in HOLD_STARTS and held_since is None:
            held_since = at
        elif kind in HOLD_ENDS and "held_s" in event:
            spans.append((at - event["held_s"], at))
            held_since = None
        elif kind == "resumed" and event.get("gap_s"):
            spans.append((event.get("from_test_time_s", at), event.get("from_test_time_s", at) + event["gap_s"]))
    if held_since is not None:
        spans.append((held_since, float(ends[-1])))
    paused = np.zeros(len(starts))
    bounds_end = np.append(starts[1:], np.inf)  # a cycle runs until the next one starts
    for begin, end in spans:
        overlap = np.minimum(end, bounds_end) - np.maximum(begin, starts)
        if end - begin > 0 and not np.any(overlap > 0):  # an interruption between rows: its cycle
            overlap = np.where((starts <= begin) & (begin < bounds_end), end - begin, 0.0)
        paused += np.maximum(overlap, 0.0)
    return paused


def summary_records(summary: pd.DataFrame) -> list[dict[str, Any]]:
    """The summary as a list of objects keyed by the machine names (JSON: NaN becomes null)."""
    keys = {label: key for key, label in SUMMARY_COLUMNS.items()}
    frame = summary.rename(columns=keys).astype(object).where(summary.notna().to_numpy(), None)
    records = frame.to_dict(orient="records")
    for record in records:
        for key, value in record.items():
            if isinstance(value, (np.integer, np.floating, np.bool_)):
                record[key] = value.item()
    return records


def reported_cycle(charges_Ah: Sequence[float], discharges_Ah: Sequence[float]) -> int | None:
    """Index of the cycle a run's result reports: the last that discharged more than
    `rest_noise_Ah`; None if none did."""
    noise = rest_noise_Ah(charges_Ah)
    discharged = [k for k, discharge in enumerate(discharges_Ah) if discharge > noise]
    return discharged[-1] if discharged else None


def result_line(summary: pd.DataFrame) -> str:
    """The one-line result of a run: the cycle `reported_cycle` picks."""
    charges = summary[SUMMARY_COLUMNS["charge_capacity_Ah"]]
    index = reported_cycle(charges.dropna().tolist(), summary[SUMMARY_COLUMNS["discharge_capacity_Ah"]].tolist())
    if index is None:
        return f"no discharge recorded; charged {charges.sum():.4f} Ah"
    last = summary.iloc[index]
    ce = last[SUMMARY_COLUMNS["coulombic_efficiency"]]
    ce_text = f"{ce * 100:.2f} %" if np.isfinite(ce) else "n/a (no charge in the cycle)"
    return (f"discharge capacity {last[SUMMARY_COLUMNS['discharge_capacity_Ah']]:.4f} Ah · "
            f"energy {last[SUMMARY_COLUMNS['discharge_energy_Wh']]:.2f} Wh · coulombic efficiency {ce_text}")
