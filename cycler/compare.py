"""`cycler compare RUN RUN ...`: the same per-cycle metrics of several runs side by side, and one
overlay figure per metric (against cycle number)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from . import plots
from .analysis import SUMMARY_COLUMNS, summarise
from .dataset import Dataset

# Metrics drawn against cycle, one figure each: (key, axis label, scale).
OVERLAID = (
    ("discharge_capacity_Ah", "discharge capacity / Ah", 1.0),
    ("capacity_retention", "capacity retention / %", 100.0),
    ("coulombic_efficiency", "coulombic efficiency / %", 100.0),
    ("energy_efficiency", "energy efficiency / %", 100.0),
    ("discharge_energy_Wh", "discharge energy / Wh", 1.0),
    ("average_discharge_voltage_V", "mean discharge voltage / V", 1.0),
)


def label_of(data: Dataset) -> str:
    """A run's name in tables and legends: its folder or file name."""
    return data.name


def headline(summary: pd.DataFrame, eol_retention: float) -> dict[str, Any]:
    """One run in a few numbers: its first and last full cycles and where it reached end of life."""
    column = SUMMARY_COLUMNS
    full = summary[summary[column["coulombic_efficiency"]].notna()]
    eol = summary[summary[column["end_of_life"]].astype(bool)]
    first, last = (full.iloc[0], full.iloc[-1]) if len(full) else (None, None)

    def value(row, key):
        return None if row is None or pd.isna(row[column[key]]) else float(row[column[key]])

    return {
        "cycles": int(len(summary)),
        "full_cycles": int(len(full)),
        "first_discharge_capacity_Ah": value(first, "discharge_capacity_Ah"),
        "last_discharge_capacity_Ah": value(last, "discharge_capacity_Ah"),
        "last_capacity_retention": value(last, "capacity_retention"),
        "mean_coulombic_efficiency": float(full[column["coulombic_efficiency"]].mean()) if len(full) else None,
        "last_energy_efficiency": value(last, "energy_efficiency"),
        "last_discharge_energy_Wh": value(last, "discharge_energy_Wh"),
        "last_average_discharge_voltage_V": value(last, "average_discharge_voltage_V"),
        "end_of_life_cycle": int(eol.iloc[0][column["cycle"]]) if len(eol) else None,
    }


def compare(datasets: Sequence[Dataset], out_dir: Path, eol_retention: float = 0.8) -> tuple[pd.DataFrame, list[Path]]:
    """The headline table (one column per run) and the overlay figures written into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = _unique([label_of(d) for d in datasets])
    summaries = [summarise(d, eol_retention) for d in datasets]
    table = pd.DataFrame({label: headline(s, eol_retention) for label, s in zip(labels, summaries)})
    figures = []
    for key, axis_label, scale in OVERLAID:
        series = [(label, s[SUMMARY_COLUMNS["cycle"]].to_numpy(), s[SUMMARY_COLUMNS[key]].to_numpy(float) * scale)
                  for label, s in zip(labels, summaries) if np.isfinite(s[SUMMARY_COLUMNS[key]].to_numpy(float)).any()]
        if series:
            figures.append(plots.curves(series, out_dir / f"{key}.png", axis_label.split(" / ")[0].capitalize()
                                        + " per cycle", "cycle", axis_label, markers=True))
    table.to_csv(out_dir / "compare.csv")
    return table, figures


def _unique(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return out
