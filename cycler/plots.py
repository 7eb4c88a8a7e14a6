"""The figures of reports and comparisons (matplotlib, drawn off-screen to PNG).

Every axis carries its quantity and unit; time axes are in hours; long recordings are thinned
for drawing by keeping each bucket's minimum and maximum, so a spike or a trip stays visible.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # no display on a bench PC's service account or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .analysis import SUMMARY_COLUMNS  # noqa: E402
from .dataset import CURRENT, PRESSURE, TIME, VOLTAGE, layer_columns, layer_number  # noqa: E402

MAX_POINTS = 4000  # per line: more than a 1600-pixel-wide figure can show
TEMPERATURE = re.compile(r"^(Temperature T\d|Ambient Temperature|Surface Temperature) / degC$")
DPI = 110


def thin(x: np.ndarray, *ys: np.ndarray, max_points: int = MAX_POINTS) -> tuple[np.ndarray, ...]:
    """Rows to draw: every row if few; else, per bucket, the rows holding each series' minimum
    and maximum (and the bucket's first), in time order."""
    if len(x) <= max_points:
        return (x, *ys)
    buckets = max_points // 3
    edges = np.linspace(0, len(x), buckets + 1).astype(int)
    keep = [edges[:-1]]
    for y in ys:
        filled = np.where(np.isfinite(y), y, np.nanmean(y) if np.isfinite(y).any() else 0.0)
        keep.append(edges[:-1] + np.array([np.argmin(filled[a:b]) for a, b in zip(edges[:-1], edges[1:])]))
        keep.append(edges[:-1] + np.array([np.argmax(filled[a:b]) for a, b in zip(edges[:-1], edges[1:])]))
    rows = np.unique(np.concatenate(keep))
    return (x[rows], *(y[rows] for y in ys))


def _hours(samples: pd.DataFrame) -> np.ndarray:
    return samples[TIME].to_numpy(float) / 3600.0


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path


def voltage_current(samples: pd.DataFrame, path: Path, trips: Sequence[tuple[float, str]] = ()) -> Path:
    hours, volts, amps = thin(_hours(samples), samples[VOLTAGE].to_numpy(float), samples[CURRENT].to_numpy(float))
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
    top.plot(hours, volts, color="tab:blue", linewidth=0.9)
    top.set_ylabel("stack voltage / V")
    bottom.plot(hours, amps, color="tab:red", linewidth=0.9)
    bottom.axhline(0, color="0.6", linewidth=0.6)
    bottom.set_ylabel("current / A (+ = charge)")
    bottom.set_xlabel("test time / h")
    for at_s, label in trips:
        for axis in (top, bottom):
            axis.axvline(at_s / 3600.0, color="black", linestyle="--", linewidth=0.8)
        top.annotate(label, (at_s / 3600.0, top.get_ylim()[1]), rotation=90, va="top", ha="right", fontsize=8)
    top.set_title("Voltage and current")
    for axis in (top, bottom):
        axis.grid(alpha=0.3)
    return _save(figure, path)


def capacity_efficiency(summary: pd.DataFrame, path: Path) -> Path:
    cycles = summary[SUMMARY_COLUMNS["cycle"]].to_numpy()
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
    top.plot(cycles, summary[SUMMARY_COLUMNS["charge_capacity_Ah"]], "o-", label="charge", markersize=3)
    top.plot(cycles, summary[SUMMARY_COLUMNS["discharge_capacity_Ah"]], "s-", label="discharge", markersize=3)
    top.set_ylabel("capacity / Ah")
    top.legend()
    top.set_title("Capacity and efficiency per cycle")
    bottom.plot(cycles, 100 * summary[SUMMARY_COLUMNS["coulombic_efficiency"]], "o-", label="coulombic", markersize=3)
    bottom.plot(cycles, 100 * summary[SUMMARY_COLUMNS["energy_efficiency"]], "s-", label="energy", markersize=3)
    bottom.set_ylabel("efficiency / %")
    bottom.set_xlabel("cycle")
    bottom.legend()
    for axis in (top, bottom):
        axis.grid(alpha=0.3)
        axis.xaxis.get_major_locator().set_params(integer=True)
    return _save(figure, path)


def layer_heat_map(samples: pd.DataFrame, path: Path) -> Path | None:
    """The layer voltage spread (highest − lowest layer) over time, and under it each layer's
    deviation from the mean layer voltage: a weak or shorting layer shows as a band of its own
    colour; absolute voltages would hide it under the state of charge."""
    columns = layer_columns(samples)
    if not columns:
        return None
    hours = _hours(samples)
    values = samples[columns].to_numpy(float)
    with np.errstate(all="ignore"):
        spread_mV = (np.nanmax(values, axis=1) - np.nanmin(values, axis=1)) * 1000.0
    rows = np.linspace(0, len(hours) - 1, min(len(hours), 1500)).astype(int)  # one column per pixel or so
    layer_v = values[rows]
    deviation_mV = (layer_v - np.nanmean(layer_v, axis=1, keepdims=True)) * 1000.0
    limit = np.nanpercentile(np.abs(deviation_mV), 99) if np.isfinite(deviation_mV).any() else 1.0
    figure, (top, axis) = plt.subplots(2, 1, figsize=(11, 0.22 * len(columns) + 4.5), sharex=True,
                                       gridspec_kw={"height_ratios": [1, max(2, len(columns) // 5)]},
                                       layout="constrained")
    x, y = thin(hours, spread_mV)
    top.plot(x, y, color="tab:gray", linewidth=0.9)
    top.set_ylabel("spread / mV")
    top.set_title("Layer voltages: spread (highest − lowest layer), and each layer against the mean")
    top.grid(alpha=0.3)
    image = axis.pcolormesh(hours[rows], np.arange(1, len(columns) + 1), deviation_mV.T, cmap="coolwarm",
                            vmin=-limit, vmax=limit, shading="nearest")
    colorbar = figure.colorbar(image, ax=axis, location="right")
    colorbar.set_label("layer voltage − mean of layers / mV")
    axis.set_yticks(np.arange(1, len(columns) + 1))
    axis.set_yticklabels([f"{layer_number(c):02d}" for c in columns], fontsize=7)
    axis.set_ylabel("layer")
    axis.set_xlabel("test time / h")
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path


def temperature_pressure(samples: pd.DataFrame, path: Path) -> Path | None:
    temperatures = [name for name in samples.columns if TEMPERATURE.match(name)]
    has_pressure = PRESSURE in samples and samples[PRESSURE].notna().any()
    if not temperatures and not has_pressure:
        return None
    panels = int(bool(temperatures)) + int(has_pressure)
    figure, axes = plt.subplots(panels, 1, figsize=(11, 3 * panels), sharex=True, squeeze=False)
    axes = list(axes[:, 0])
    hours = _hours(samples)
    if temperatures:
        axis = axes.pop(0)
        for name in temperatures:
            x, y = thin(hours, samples[name].to_numpy(float))
            axis.plot(x, y, linewidth=0.9, label=name.replace(" / degC", ""))
        axis.set_ylabel("temperature / °C")
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
        axis.set_title("Temperature and stack pressure" if has_pressure else "Temperature")
    if has_pressure:
        axis = axes.pop(0)
        x, y = thin(hours, samples[PRESSURE].to_numpy(float))
        axis.plot(x, y, color="tab:purple", linewidth=0.9)
        axis.set_ylabel("stack pressure / MPa")
        axis.grid(alpha=0.3)
    figure.axes[-1].set_xlabel("test time / h")
    return _save(figure, path)


def curves(series: Sequence[tuple[str, np.ndarray, np.ndarray]], path: Path, title: str, xlabel: str,
           ylabel: str, markers: bool = False) -> Path:
    """Several labelled curves on one axis (dQ/dV per cycle, resistance against SOC, a metric of
    several runs against cycle)."""
    figure, axis = plt.subplots(figsize=(11, 5))
    for label, x, y in series:
        axis.plot(x, y, "o-" if markers else "-", markersize=3, linewidth=1.0, label=label)
    axis.set_title(title)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    if len(series) > 1 or series and series[0][0]:
        axis.legend(fontsize=8)
    return _save(figure, path)
