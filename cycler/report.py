"""`cycler report RUN`: one HTML page a battery engineer can read, mail and archive.

The page is self-contained (figures embedded), and the same figures are written as PNG files
beside it for slides. Sections: the test (DUT, protocol, bench, instruments, operator, times,
how it ended), events and trips, the per-cycle table, figures, and the protocol as run.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from stackcycler import __version__

from . import plots
from .analysis import SUMMARY_COLUMNS, summarise
from .dataset import Dataset
from .dataset import layer_columns
from .errors import InvalidInput
from .ica import incremental_capacity
from .layers import StackDiagnosis, diagnose
from .pulses import dcir_two_level, hppc, resistance_column
from .store import SUMMARY_FILE

REPORT_FOLDER = "report"
# Events a reader of the report must see; step starts and ends are counted, not listed.
NOTABLE = ("safety_trip", "instrument_fault", "invalid_input", "software_error", "interrupted", "suspended",
           "suspension_cleared", "paused", "continued", "operator_request", "resumed", "safe_state",
           "safe_state_failed", "run_end", "stale_lock_released", "tick_overrun")
TRIPS = ("safety_trip", "instrument_fault", "software_error", "safe_state_failed")
MAX_EVENTS_LISTED = 200

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.9em; } td, th { padding: 0.2em 0.6em; border-bottom: 1px solid #eee; }
th { text-align: left; background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.state-completed { color: #1a7f37; } .state-tripped, .state-faulted, .state-failed { color: #c0392b; font-weight: bold; }
.trip td { background: #fdecea; } img { max-width: 100%; } pre { background: #f6f8fa; padding: 1em; overflow-x: auto; }
.muted { color: #777; }
"""


def write_report(data: Dataset, out_dir: Path | None = None, eol_retention: float = 0.8) -> Path:
    """Write the report of `data` (a run folder's, usually) into `out_dir` (default: the run
    folder's `report/`); returns the HTML file."""
    out_dir = out_dir or (data.source / REPORT_FOLDER if data.source.is_dir() else
                          data.source.with_name(data.source.name.split(".")[0] + "-report"))
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise(data, eol_retention)
    blocks = hppc(data.samples, nominal_capacity_Ah=data.dut.get("nominal_capacity_Ah"))
    dcir = dcir_two_level(data.samples)
    stack = diagnose(data)
    figures = _figures(data, summary, out_dir)
    ica_path = _ica_figure(data, summary, out_dir / f"{len(figures) + 1:02d}-incremental-capacity.png")
    if ica_path is not None:
        figures.append(("Incremental capacity (dQ/dV) of selected discharges", ica_path))
    if len(blocks):
        figures.append(("HPPC resistance against state of charge",
                        _hppc_figure(blocks, out_dir / f"{len(figures) + 1:02d}-hppc-resistance.png")))
    sections = [
        _header(data),
        _section("Test", _test_table(data)),
        _section("Result", _result(data, summary, eol_retention)),
        _section("Events and trips", _events(data)),
        _section("Per cycle", _summary_table(summary)),
        *([_section("Stack layers", _stack(stack))] if layer_columns(data.samples) else []),
        *([_section("DC internal resistance (IEC 61960, two levels)", _table(dcir))] if len(dcir) else []),
        *([_section("HPPC blocks", _table(blocks) + f"<p class='muted'>{_e(_hppc_basis(blocks))}</p>")]
          if len(blocks) else []),
        *(_section(title, _image(path)) for title, path in figures),
        _section("Protocol as run", _protocol(data)),
        f'<p class="muted">stackcycler {__version__} · sign convention: current positive for charge · '
        f'per-cycle definitions: docs/results.md</p>',
    ]
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_e(data.name)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(sections)}</body></html>")
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    summary.to_csv(out_dir / SUMMARY_FILE, index=False)
    return path


def _figures(data: Dataset, summary: pd.DataFrame, out_dir: Path) -> list[tuple[str, Path]]:
    samples = data.samples
    trips = [(e["test_time_s"], e.get("limit") or e["event"]) for e in data.events
             if e.get("event") in TRIPS and "test_time_s" in e]
    makers: list[tuple[str, Callable[[Path], Path | None]]] = [
        ("Voltage and current", lambda p: plots.voltage_current(samples, p, trips)),
        ("Capacity and efficiency per cycle", lambda p: plots.capacity_efficiency(summary, p) if len(summary) else None),
        ("Layer voltages", lambda p: plots.layer_heat_map(samples, p)),
        ("Temperature and pressure", lambda p: plots.temperature_pressure(samples, p)),
    ]
    figures = []
    for number, (title, make) in enumerate(makers, start=1):
        path = make(out_dir / f"{number:02d}-{title.lower().replace(' ', '-')}.png")
        if path is not None:
            figures.append((title, path))
    return figures


def _e(value: Any) -> str:
    return html.escape(str(value))


def _section(title: str, body: str) -> str:
    return f"<h2>{_e(title)}</h2>{body}"


def _image(path: Path) -> str:
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{_e(path.stem)}" src="data:image/png;base64,{encoded}"><p class="muted">{_e(path.name)}</p>'


def _header(data: Dataset) -> str:
    meta = data.metadata
    protocol = (meta.get("protocol") or {}).get("name", "")
    state = meta.get("state", "")
    return (f"<h1>{_e(protocol or data.name)} · {_e(data.dut.get('id', ''))}</h1>"
            f"<p>{_e(data.source)} · <span class='state-{_e(state)}'>{_e(state)}</span> "
            f"{_e(meta.get('reason') or '')}</p>")


def _rows(pairs: list[tuple[str, Any]]) -> str:
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in pairs if v not in (None, "")) + "</table>"


def _test_table(data: Dataset) -> str:
    meta, dut = data.metadata, data.dut
    instruments = meta.get("instruments") or {}
    identities = "; ".join(f"{name}: {info.get('identity', info) if isinstance(info, dict) else info}"
                           for name, info in instruments.items())
    protocol = meta.get("protocol") or {}
    bench = meta.get("bench") or {}
    return _rows([
        ("DUT", f"{dut.get('id', '')} {dut.get('description', '')}".strip()),
        ("layers · nominal capacity", f"{dut.get('layers', '')} · {dut.get('nominal_capacity_Ah', '')} Ah" if dut else ""),
        ("protocol", f"{protocol.get('name', '')} {protocol.get('description', '')}".strip()),
        ("bench", bench.get("name") if isinstance(bench, dict) else bench),
        ("instruments", identities),
        ("operator", meta.get("operator")),
        ("started · ended", f"{meta.get('started', '')} · {meta.get('ended', '')}" if meta.get("started") else ""),
        ("software", json.dumps(meta.get("software")) if meta.get("software") else ""),
        ("data", f"{data.kind}, {len(data.samples)} rows"),
    ])


def _result(data: Dataset, summary: pd.DataFrame, eol_retention: float) -> str:
    from .analysis import fixture_note, result_line
    from .summaryview import end_of_life_line

    if summary.empty:
        return "<p>no samples</p>"
    lines = [data.metadata.get("result") or result_line(summary), end_of_life_line(summary, eol_retention),
             fixture_note(data.dut) or ""]
    return "".join(f"<p>{_e(line)}</p>" for line in lines if line)


def _events(data: Dataset) -> str:
    events = data.events
    if not events:
        return "<p class='muted'>no events recorded with this data</p>"
    steps = sum(1 for e in events if e.get("event") == "step_end")
    notable = [e for e in events if e.get("event") in NOTABLE]
    rows = []
    for event in notable[:MAX_EVENTS_LISTED]:
        details = {k: v for k, v in event.items() if k not in ("event", "time", "test_time_s")}
        css = " class='trip'" if event.get("event") in TRIPS else ""
        rows.append(f"<tr{css}><td class='num'>{event.get('test_time_s', 0) / 3600:.3f}</td>"
                    f"<td>{_e(event.get('time', ''))}</td><td>{_e(event['event'])}</td>"
                    f"<td>{_e(json.dumps(details, default=str)[:300])}</td></tr>")
    more = (f"<p class='muted'>{len(notable) - MAX_EVENTS_LISTED} more in events.jsonl</p>"
            if len(notable) > MAX_EVENTS_LISTED else "")
    return (f"<p>{steps} steps completed; {sum(1 for e in notable if e.get('event') in TRIPS)} trips or faults.</p>"
            "<table><tr><th>test time / h</th><th>time</th><th>event</th><th>details</th></tr>"
            + "".join(rows) + "</table>" + more)


# dQ/dV of at most this many discharges: the first full cycle, the last, and evenly between
ICA_CYCLES = 4


def _ica_figure(data: Dataset, summary: pd.DataFrame, path: Path) -> Path | None:
    full = summary[summary[SUMMARY_COLUMNS["coulombic_efficiency"]].notna()][SUMMARY_COLUMNS["cycle"]].to_numpy()
    if not len(full):
        return None
    chosen = sorted({int(full[k]) for k in np.linspace(0, len(full) - 1, min(ICA_CYCLES, len(full))).round().astype(int)})
    series = []
    for cycle in chosen:
        try:
            curve = incremental_capacity(data.samples, cycle, "discharge", layers=data.dut.get("layers"))
        except InvalidInput:
            continue  # no discharge in that cycle after all
        series.append((f"cycle {cycle}", curve["voltage_V"].to_numpy(), curve["dq_dv_Ah_per_V"].to_numpy()))
    if not series:
        return None
    fwhm = curve.attrs["fwhm_V"]
    return plots.curves(series, path, f"Incremental capacity of the discharge (Gaussian smoothing, FWHM {fwhm * 1000:.0f} mV)",
                        "voltage / V", "dQ/dV / Ah/V")


def _stack(stack: StackDiagnosis) -> str:
    parts = ["<h3>Weakest layer per cycle</h3>", _table(stack.cycles)]
    if len(stack.layers):
        last = stack.layers[stack.layers["cycle"] == stack.layers["cycle"].max()]
        parts += [f"<h3>Layers in cycle {int(last['cycle'].iloc[0])}</h3>",
                  _table(last[["layer", "end_of_charge_V", "end_of_discharge_V", "discharge_capacity_Ah",
                               "reached_discharge_cutoff", "relative_capacity"]])]
    parts.append("<h3>Suspected internal shorts</h3>")
    parts.append(_table(stack.shorts) if len(stack.shorts) else "<p>none, by the runner's detector or in the data</p>")
    parts += [f"<p class='muted'>{_e(note)}</p>" for note in stack.notes]
    parts.append("<p class='muted'>Definitions: stackcycler.layers (relative capacity: charge through a voltage "
                 "window every layer crossed, against the median layer's).</p>")
    return "".join(parts)


def _hppc_figure(blocks: pd.DataFrame, path: Path) -> Path:
    soc = 100 * blocks["soc"].to_numpy(float)
    series = [(f"{name} {when}", soc, 1000 * blocks[column].to_numpy(float))
              for name in ("discharge", "regen")
              for when, column in (("at pulse end", f"resistance_{name}_end_ohm"),
                                   ("1 s after the edge", resistance_column(1.0, f"resistance_{name}")))
              if column in blocks and blocks[column].notna().any()]
    return plots.curves(series, path, "HPPC resistance against state of charge", "state of charge / %",
                        "resistance / mΩ", markers=True)


def _hppc_basis(blocks: pd.DataFrame) -> str:
    attrs = blocks.attrs
    return (f"SOC: {attrs.get('soc_basis', '')}, against {attrs.get('capacity_Ah', float('nan')):.4g} Ah "
            f"({attrs.get('capacity_source', '')}); pulse power between {attrs.get('v_min_V')} V and "
            f"{attrs.get('v_max_V')} V (FreedomCAR convention), R at the {attrs.get('power_resistance', '')}.")


def _table(frame: pd.DataFrame, flagged: Sequence[bool] = ()) -> str:
    """A table of `frame`; the rows `flagged` marks are highlighted (a trip, end of life)."""
    head = "".join(f"<th>{_e(name)}</th>" for name in frame.columns)
    flags = list(flagged) or [False] * len(frame)
    body = "".join(f"<tr{' class=trip' if flag else ''}>" + "".join(f"<td class='num'>{_format(v)}</td>" for v in row)
                   + "</tr>" for flag, row in zip(flags, frame.itertuples(index=False)))
    return f"<div style='overflow-x:auto'><table><tr>{head}</tr>{body}</table></div>"


def _summary_table(summary: pd.DataFrame) -> str:
    if summary.empty:
        return "<p>no cycles</p>"
    shown = [label for label in summary.columns if summary[label].notna().any()]
    return _table(summary[shown], summary[SUMMARY_COLUMNS["end_of_life"]].astype(bool).tolist())


def _format(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else ""
    if isinstance(value, float):
        return "" if value != value else f"{value:.6g}"
    return _e(value)


def _protocol(data: Dataset) -> str:
    path = data.source / "protocol.yaml" if data.source.is_dir() else None
    if path is None or not path.exists():
        return "<p class='muted'>not recorded with this data</p>"
    return f"<pre>{_e(path.read_text(encoding='utf-8', errors='replace'))}</pre>"
