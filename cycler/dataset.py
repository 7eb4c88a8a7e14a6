"""Battery data from any source, as one table with Battery Data Format column names.

`load(path)` reads:

- a stackcycler run folder (samples.csv, run.json, events.jsonl), also while the run is going;
- a Battery Data Format file, CSV (`.csv`, `.bdf`, `.bdf.csv`, gzip'd) or Parquet, with the
  ontology 1.3.0 labels ("Test Time / s"), their machine names ("test_time_second") or the older
  labels of batterydf 0.1.0 ("Step Index / 1"); its sidecar `x.bdf.metadata.json` is read as the
  metadata (with the run's events, when stackcycler wrote it);
- a Bitrode CSV export (as in the ORNL Nissan Leaf data; with or without its header line).

Whatever the source, current is positive for charge (BDF), and pressure is `Pressure / MPa`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from .errors import InvalidInput
from .store import EVENTS_FILE, METADATA_FILE, SAMPLES_FILE, read_events

TIME = "Test Time / s"
VOLTAGE = "Voltage / V"
CURRENT = "Current / A"
CYCLE = "Cycle Count / 1"
STEP_COUNT = "Step Count / 1"
STEP_ID = "Step ID"
STEP_TYPE = "Step Type"
PRESSURE = "Pressure / MPa"
LAYER = re.compile(r"^Layer (\d+) Voltage / V$")  # per-layer voltages: an extension, BDF has none yet
REQUIRED = (TIME, VOLTAGE, CURRENT)

# BDF machine names and labels of older BDF writers, for the columns the analysis uses.
BDF_ALIASES = {
    "test_time_second": TIME, "test_time_s": TIME, "voltage_volt": VOLTAGE, "current_ampere": CURRENT,
    "unix_time_second": "Unix Time / s", "cycle_count": CYCLE, "step_count": STEP_COUNT,
    "step_id": STEP_ID, "step_type": STEP_TYPE, "step_time_second": "Step Time / s",
    "record_index": "Record Index / 1", "step_record_index": "Step Record Index / 1",
    "Step Index / 1": STEP_COUNT, "step_index": STEP_COUNT,
    "charging_capacity_ah": "Charging Capacity / Ah", "discharging_capacity_ah": "Discharging Capacity / Ah",
    "charging_energy_wh": "Charging Energy / Wh", "discharging_energy_wh": "Discharging Energy / Wh",
    "power_watt": "Power / W", "ambient_temperature_celsius": "Ambient Temperature / degC",
    "surface_temperature_celsius": "Surface Temperature / degC",
    **{f"temperature_t{k}_celsius": f"Temperature T{k} / degC" for k in range(1, 6)},
    **{f"Surface Temperature T{k} / degC": f"Temperature T{k} / degC" for k in range(1, 6)},
}
PASCAL_PRESSURES = ("Applied Pressure / Pa", "applied_pressure_pascal", "Surface Pressure / Pa",
                    "surface_pressure_pascal")

# Bitrode export columns in file order (ORNL Nissan Leaf data); three share the name "Loop".
BITRODE_COLUMNS = ("Exclude", "Time(s)", "Cycle", "Loop1", "Loop2", "Loop3", "Step", "StepTime(s)",
                   "Current(A)", "Voltage(V)", "Power(W)", "Capacity(Ah)", "Energy(Wh)", "Mode", "Data")
BITRODE_TYPES = {"CHRG": "CHG", "DCHG": "DCH", "REST": "REST"}

ACCEPTED = ("a run folder (with samples.csv), a Battery Data Format file (.csv, .bdf.csv, .csv.gz, "
            ".parquet) or a Bitrode CSV export")


@dataclass
class Dataset:
    """Samples (BDF labels, one row per record) and what is known about where they came from."""

    source: Path
    kind: str  # "run folder", "bdf-csv", "bdf-parquet", "bitrode-csv"
    samples: pd.DataFrame
    metadata: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def dut(self) -> dict[str, Any]:
        """The device under test: run.json's `dut`, a BDF sidecar's `test_object`."""
        return self.metadata.get("dut") or self.metadata.get("test_object") or {}

    @property
    def name(self) -> str:
        return self.source.name


def load(path: Path | str, columns: Iterable[str] | None = None) -> Dataset:
    """The data at `path`; only `columns` (plus the required ones), when given and present."""
    path = Path(path)
    wanted = None if columns is None else set(columns) | set(REQUIRED)
    if path.is_dir():
        if not (path / SAMPLES_FILE).exists():
            raise InvalidInput(f"{path}: no {SAMPLES_FILE} in this folder; expected {ACCEPTED}")
        return _run_folder(path, wanted)
    if not path.exists():
        raise InvalidInput(f"{path}: no such file or folder; expected {ACCEPTED}")
    if path.suffix.lower() == ".parquet":
        frame = _read_parquet(path)
        return _with_sidecar(Dataset(path, "bdf-parquet", _bdf(frame, path, wanted)))
    first_line = _first_line(path)
    if _is_bitrode(first_line):
        return Dataset(path, "bitrode-csv", _bitrode(path, first_line))
    frame = _read_csv(path, None)
    return _with_sidecar(Dataset(path, "bdf-csv", _bdf(frame, path, wanted)))


def _read_samples_csv(path: Path, columns: set[str] | None = None) -> pd.DataFrame:
    """A samples.csv (a torn last line, left by a writer killed mid-row, is dropped)."""
    return _read_csv(path, columns).dropna(subset=list(REQUIRED))


def _run_folder(folder: Path, wanted: set[str] | None) -> Dataset:
    samples = _read_samples_csv(folder / SAMPLES_FILE, wanted)
    metadata = json.loads((folder / METADATA_FILE).read_text()) if (folder / METADATA_FILE).exists() else {}
    events = read_events(folder / EVENTS_FILE) if (folder / EVENTS_FILE).exists() else []
    return Dataset(folder, "run folder", samples.reset_index(drop=True), metadata, events)


def _read_csv(path: Path, columns: set[str] | None) -> pd.DataFrame:
    try:
        if columns is None:
            return pd.read_csv(path, on_bad_lines="skip", low_memory=False)
        # parsed in chunks: a million-row file peaks at a quarter of the memory it takes whole
        return pd.read_csv(path, on_bad_lines="skip", usecols=lambda name: name in columns)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as error:
        raise InvalidInput(f"{path}: not a readable CSV ({error}); expected {ACCEPTED}") from None


def _read_parquet(path: Path) -> pd.DataFrame:
    import pyarrow.parquet

    try:  # column by column into pandas, freeing Arrow's copy as it goes: half the peak memory
        return pyarrow.parquet.read_table(path).to_pandas(split_blocks=True, self_destruct=True)
    except (OSError, ValueError) as error:
        raise InvalidInput(f"{path}: not a readable Parquet file ({error})") from None


def _first_line(path: Path) -> str:
    import gzip
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
            return handle.readline()
    except OSError as error:
        raise InvalidInput(f"{path}: cannot read ({error.strerror or error})") from None


def _is_bitrode(first_line: str) -> bool:
    fields = [f.strip() for f in first_line.split(",")]
    return len(fields) >= 14 and (fields[:2] == ["Exclude", "Time(s)"] or fields[0] in ("No", "Yes"))


def _bdf(frame: pd.DataFrame, path: Path, wanted: set[str] | None) -> pd.DataFrame:
    frame = frame.rename(columns={name: BDF_ALIASES[name] for name in frame.columns if name in BDF_ALIASES})
    for name in PASCAL_PRESSURES:
        if name in frame and PRESSURE not in frame:
            frame[PRESSURE] = frame.pop(name) / 1e6
    missing = [name for name in REQUIRED if name not in frame]
    if missing:
        raise InvalidInput(f"{path}: no column {', '.join(repr(m) for m in missing)}; a Battery Data Format "
                           f"file needs {', '.join(repr(r) for r in REQUIRED)} (or their machine names "
                           f"test_time_second, voltage_volt, current_ampere); found: {', '.join(map(str, frame.columns[:12]))}")
    if wanted is not None:
        frame = frame[[name for name in frame.columns if name in wanted]]
    for name in REQUIRED:
        if not pd.api.types.is_float_dtype(frame[name]):
            frame[name] = pd.to_numeric(frame[name], errors="coerce")
    unreadable = frame[list(REQUIRED)].isna().any(axis=1)
    return frame[~unreadable].reset_index(drop=True) if unreadable.any() else frame  # no copy when clean


def _bitrode(path: Path, first_line: str) -> pd.DataFrame:
    has_header = first_line.startswith("Exclude")
    raw = pd.read_csv(path, header=None, skiprows=1 if has_header else 0, names=list(BITRODE_COLUMNS),
                      usecols=range(len(BITRODE_COLUMNS)), on_bad_lines="skip", low_memory=False)
    raw = raw[raw["Exclude"].astype(str).str.strip() != "Yes"]
    frame = pd.DataFrame({
        TIME: pd.to_numeric(raw["Time(s)"], errors="coerce"),
        VOLTAGE: pd.to_numeric(raw["Voltage(V)"], errors="coerce"),
        CURRENT: pd.to_numeric(raw["Current(A)"], errors="coerce"),  # + = charge already (Mode CHRG)
        CYCLE: pd.to_numeric(raw["Cycle"], errors="coerce"),
        STEP_ID: pd.to_numeric(raw["Step"], errors="coerce"),
        "Step Time / s": pd.to_numeric(raw["StepTime(s)"], errors="coerce"),
        STEP_TYPE: raw["Mode"].astype(str).str.strip().map(BITRODE_TYPES).fillna("UNKNOWN"),
    }).dropna(subset=list(REQUIRED)).reset_index(drop=True)
    frame[STEP_COUNT] = step_counter(frame[STEP_ID].to_numpy(), frame["Step Time / s"].to_numpy())
    return frame


def layer_columns(samples: pd.DataFrame) -> list[str]:
    """The per-layer voltage columns, in layer order."""
    return sorted((name for name in samples.columns if LAYER.match(str(name))),
                  key=lambda name: int(LAYER.match(name).group(1)))


def layer_number(column: str) -> int:
    return int(LAYER.match(column).group(1))


def step_counter(step_ids: np.ndarray, step_times: np.ndarray) -> np.ndarray:
    """A step execution counter (BDF Step Count) for data that only has program step numbers: a
    new step starts where the step number changes or the step time goes back."""
    new = np.ones(len(step_ids), dtype=bool)
    if len(step_ids) > 1:
        new[1:] = (step_ids[1:] != step_ids[:-1]) | (step_times[1:] < step_times[:-1])
    return np.cumsum(new)


def _with_sidecar(data: Dataset) -> Dataset:
    """The sidecar's metadata, and the run's events if the file was exported by stackcycler."""
    data.metadata = _sidecar(data.source)
    data.events = data.metadata.pop("events", [])
    return data


def sidecar_path(path: Path) -> Path:
    """The BDF metadata sidecar of a data file: `x.bdf.csv` -> `x.bdf.metadata.json` (§13.1)."""
    name = path.name
    stem = name[:name.index(".bdf")] if ".bdf" in name else name.split(".")[0]
    return path.with_name(stem + ".bdf.metadata.json")


def _sidecar(path: Path) -> dict[str, Any]:
    candidate = sidecar_path(path)
    if not candidate.exists():
        return {}
    try:
        return json.loads(candidate.read_text())
    except json.JSONDecodeError as error:
        raise InvalidInput(f"{candidate}: not valid JSON ({error})") from None
