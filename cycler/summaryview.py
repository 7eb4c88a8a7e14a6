"""The per-cycle summary as `cycler summary` shows it in a terminal (CSV and JSON carry every column)."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
from rich import box
from rich.table import Table

from .analysis import SUMMARY_COLUMNS, summary_records

# (key, heading, format): the columns a technician reads first; the rest are in --csv / --json.
TERMINAL_COLUMNS = (
    ("cycle", "cycle", "{:d}"),
    ("charge_capacity_Ah", "Q chg\nAh", "{:.4f}"),
    ("discharge_capacity_Ah", "Q dis\nAh", "{:.4f}"),
    ("discharge_energy_Wh", "E dis\nWh", "{:.2f}"),
    ("coulombic_efficiency", "CE\n%", "{:.2%}"),
    ("energy_efficiency", "EE\n%", "{:.2%}"),
    ("capacity_retention", "retention\n%", "{:.2%}"),
    ("average_discharge_voltage_V", "mean V\ndis", "{:.3f}"),
    ("cv_time_s", "CV\nmin", "{:.1f}"),
    ("max_temperature_degC", "T max\n°C", "{:.1f}"),
    ("max_pressure_MPa", "p max\nMPa", "{:.2f}"),
    ("paused_s", "paused\ns", "{:.0f}"),
    ("specific_energy_Wh_per_kg", "Wh/kg", "{:.1f}"),
    ("energy_density_Wh_per_L", "Wh/L", "{:.1f}"),
)
SCALE = {"cv_time_s": 1 / 60}


def _cell(key: str, value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if fmt.endswith("%}"):
        return fmt.format(value).rstrip("%")
    return fmt.format(value * SCALE.get(key, 1))


def summary_table(summary: pd.DataFrame, title: str) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    # a column the data has nothing for (no pressure sensor, never paused) is left out
    present = [(k, h, f) for k, h, f in TERMINAL_COLUMNS
               if k == "cycle" or (summary[SUMMARY_COLUMNS[k]].fillna(0) != 0).any()]
    for _, heading, _ in present:
        table.add_column(heading, justify="right", no_wrap=True)
    for record in summary_records(summary):
        style = "bold red" if record.get("end_of_life") else None
        table.add_row(*(_cell(k, record.get(k), f) for k, _, f in present), style=style)
    return table


def end_of_life_line(summary: pd.DataFrame, eol_retention: float) -> str:
    flagged = summary[summary[SUMMARY_COLUMNS["end_of_life"]].astype(bool)]
    if flagged.empty:
        return f"end of life ({eol_retention:.0%} retention) not reached"
    first = flagged.iloc[0]
    return (f"end of life ({eol_retention:.0%} retention) first reached in cycle "
            f"{int(first[SUMMARY_COLUMNS['cycle']])}: {first[SUMMARY_COLUMNS['capacity_retention']]:.2%}")
