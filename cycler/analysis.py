"""Per-cycle results from recorded samples.

A stackcycler run logs cumulative charge and energy counted every tick, so a cycle's charge
is the cumulative value at its last row minus that at the previous cycle's last row: exact
however sparse the recording. For Battery Data Format data without those columns, the
current is integrated from the rows (trapezoid, split at zero crossings).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .integrators import trapezoid_parts
from .store import SAMPLES_FILE

CYCLE = "Cycle Count / 1"
TIME = "Test Time / s"
CUMULATIVE = {
    "charge_capacity_Ah": "Charging Capacity / Ah",
    "discharge_capacity_Ah": "Discharging Capacity / Ah",
    "charge_energy_Wh": "Charging Energy / Wh",
    "discharge_energy_Wh": "Discharging Energy / Wh",
}

# Summary columns: machine key (JSON) -> label (CSV), in one place.
SUMMARY_COLUMNS = {
    "cycle": "Cycle Count / 1",
    "charge_capacity_Ah": "Charging Capacity / Ah",
    "discharge_capacity_Ah": "Discharging Capacity / Ah",
    "charge_energy_Wh": "Charging Energy / Wh",
    "discharge_energy_Wh": "Discharging Energy / Wh",
    "coulombic_efficiency": "Coulombic Efficiency / 1",
    "energy_efficiency": "Energy Efficiency / 1",
    "start_time_s": "Cycle Start Time / s",
    "duration_s": "Cycle Duration / s",
}


# What cycle_summary reads: a million-row run summarised without loading its layer columns.
SUMMARY_INPUTS = (CYCLE, TIME, "Voltage / V", "Current / A", *CUMULATIVE.values())


def read_samples(folder: Path, columns: tuple[str, ...] | None = None) -> pd.DataFrame:
    """The samples of a run folder (only `columns`, if given); a torn last line (the writer was
    killed mid-row) is dropped."""
    if columns is None:
        frame = pd.read_csv(folder / SAMPLES_FILE, on_bad_lines="skip", low_memory=False)
    else:  # parsed in chunks: a million-row file peaks at a quarter of the memory it takes whole
        frame = pd.read_csv(folder / SAMPLES_FILE, on_bad_lines="skip", usecols=lambda name: name in columns)
    return frame.dropna(subset=[TIME, "Voltage / V", "Current / A"]) if len(frame) else frame


def _integrated(cycle_rows: pd.DataFrame) -> dict[str, float]:
    t = cycle_rows[TIME].to_numpy(float)
    i = cycle_rows["Current / A"].to_numpy(float)
    p = i * cycle_rows["Voltage / V"].to_numpy(float)
    totals = dict.fromkeys(CUMULATIVE, 0.0)
    for k in range(1, len(t)):
        for ah, wh in trapezoid_parts(t[k - 1], i[k - 1], p[k - 1], t[k], i[k], p[k]):
            side = "charge" if ah >= 0 else "discharge"
            totals[f"{side}_capacity_Ah"] += abs(ah)
            totals[f"{side}_energy_Wh"] += abs(wh)
    return totals


def cycle_summary(samples: pd.DataFrame) -> pd.DataFrame:
    """One row per cycle, columns labelled as in SUMMARY_COLUMNS."""
    if samples.empty:
        return pd.DataFrame(columns=list(SUMMARY_COLUMNS.values()))
    cycles = samples[CYCLE] if CYCLE in samples else pd.Series(1, index=samples.index)
    has_cumulative = all(label in samples for label in CUMULATIVE.values())
    rows = []
    previous_last = dict.fromkeys(CUMULATIVE, 0.0)
    for cycle, group in samples.groupby(cycles, sort=True):
        if has_cumulative:
            last = {key: float(group[label].iloc[-1]) for key, label in CUMULATIVE.items()}
            totals = {key: last[key] - previous_last[key] for key in CUMULATIVE}
            previous_last = last
        else:
            totals = _integrated(group)
        row = {"cycle": int(cycle), **totals}
        row["coulombic_efficiency"] = (totals["discharge_capacity_Ah"] / totals["charge_capacity_Ah"]
                                       if totals["charge_capacity_Ah"] > 0 else np.nan)
        row["energy_efficiency"] = (totals["discharge_energy_Wh"] / totals["charge_energy_Wh"]
                                    if totals["charge_energy_Wh"] > 0 else np.nan)
        row["start_time_s"] = float(group[TIME].iloc[0])
        row["duration_s"] = float(group[TIME].iloc[-1] - group[TIME].iloc[0])
        rows.append(row)
    return pd.DataFrame(rows).rename(columns=SUMMARY_COLUMNS)


def reported_cycle(charges_Ah: Sequence[float], discharges_Ah: Sequence[float]) -> int | None:
    """Index of the cycle a run's result reports: the last that discharged more than the
    zero-current noise of rests does (1 % of the largest charge of any cycle); None if none did."""
    noise = 0.01 * max(charges_Ah, default=0.0)
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
