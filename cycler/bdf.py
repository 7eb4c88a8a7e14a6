"""Battery Data Format files out of any dataset: CSV, Parquet or Excel, with a metadata sidecar.

BDF rules followed (battery-testing.md §13.1, ontology 1.3.0): one file per test object, a
header of "Quantity / unit" labels, current positive for charge, the extension `.bdf.csv` /
`.bdf.parquet`, metadata in the sidecar `x.bdf.metadata.json`. BDF has no per-layer columns yet (BDF#37):
layer voltages keep their extension names, as does the chamber's air temperature. Pressure,
which runs log in MPa, is written as BDF `Applied Pressure / Pa` (the fixture applies it).
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from stackcycler import __version__

from .analysis import summarise
from .dataset import PRESSURE, REQUIRED, Dataset, sidecar_path
from .errors import InvalidInput

FORMATS = {"bdf-csv": ".bdf.csv", "parquet": ".bdf.parquet", "xlsx": ".bdf.xlsx"}
APPLIED_PRESSURE = "Applied Pressure / Pa"
EXCEL_MAX_ROWS = 1_048_576 - 1  # rows of an Excel sheet, less the header (Excel specifications)
UNIT = re.compile(r" / (.+)$")
# The BDF ontology 1.3.0 labels we write (battery-testing.md §13.1); any other column (layer
# voltages, the chamber's air) is an extension and is listed as one in the sidecar.
BDF_LABELS = {
    "Test Time / s", "Voltage / V", "Current / A", "Unix Time / s", "Cycle Count / 1", "Step Count / 1",
    "Step ID", "Step Type", "Step Time / s", "Record Index / 1", "Step Record Index / 1", "Power / W",
    "Charging Capacity / Ah", "Discharging Capacity / Ah", "Charging Energy / Wh", "Discharging Energy / Wh",
    "Ambient Temperature / degC", "Surface Temperature / degC", APPLIED_PRESSURE, "Surface Pressure / Pa",
    *(f"Temperature T{k} / degC" for k in range(1, 6)),
}


def bdf_frame(data: Dataset, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The samples with BDF labels, only `columns` (always with the required three) if given."""
    frame = data.samples
    if PRESSURE in frame:
        frame = frame.assign(**{PRESSURE: frame[PRESSURE] * 1e6}).rename(columns={PRESSURE: APPLIED_PRESSURE})
    if columns:
        wanted = [APPLIED_PRESSURE if name == PRESSURE else name for name in columns]
        unknown = [name for name in wanted if name not in frame]
        if unknown:
            raise InvalidInput(f"--columns: {', '.join(repr(u) for u in unknown)} not in {data.source}; "
                               f"its columns: {', '.join(frame.columns)}")
        frame = frame[list(dict.fromkeys([*REQUIRED, *wanted]))]
    return frame


def default_name(data: Dataset) -> str:
    """BDF's recommended name, `InstitutionCode__CellName__YYYYMMDD_XXX` (§13.1), as far as the
    data knows it: the DUT and the start date, then the source's own name."""
    meta = data.metadata
    dut = re.sub(r"[^A-Za-z0-9.-]+", "-", str(data.dut.get("id") or "dut"))
    started = meta.get("started") or ""
    day = started[:10].replace("-", "") or datetime.now(timezone.utc).strftime("%Y%m%d")
    stem = data.source.name.split(".")[0]
    return f"stackcycler__{dut}__{day}_{stem}"


def export(data: Dataset, fmt: str, output: Path | None = None, columns: Sequence[str] | None = None) -> list[Path]:
    """Write the dataset as `fmt` (a key of FORMATS) and its metadata sidecar; the paths written."""
    if fmt not in FORMATS:
        raise InvalidInput(f"export format '{fmt}': use one of {', '.join(FORMATS)}")
    frame = bdf_frame(data, columns)
    path = output if output is not None else Path(default_name(data) + FORMATS[fmt])
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "bdf-csv":
        frame.to_csv(path, index=False)
    elif fmt == "parquet":
        frame.to_parquet(path, index=False, engine="pyarrow")
    else:
        _write_xlsx(frame, data, path)
    sidecar = sidecar_path(path)
    document = {**metadata(data, frame), "events": data.events}  # events: a summary of the file is the run's
    sidecar.write_text(json.dumps(document, indent=1, default=str), encoding="utf-8")
    return [path, sidecar]


def metadata(data: Dataset, frame: pd.DataFrame) -> dict[str, Any]:
    """What a reader needs to trust the file: where it came from, the DUT, the sign convention,
    each column's unit, and the run's own record (protocol, bench, instruments, times)."""
    meta = data.metadata
    return {
        "format": "Battery Data Format (ontology 1.3.0 labels)",
        "sign_convention": "current and power are positive for charge (into the test object)",
        "source": {"path": str(data.source), "kind": data.kind, "rows": len(frame)},
        "written_by": f"stackcycler {__version__}",
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "test_object": data.dut or None,
        "columns": [{"label": name, "unit": (UNIT.search(name).group(1) if UNIT.search(name) else None)}
                    for name in frame.columns],
        "extension_columns": [name for name in frame.columns if name not in BDF_LABELS],
        "test": {key: meta[key] for key in ("protocol", "bench", "instruments", "operator", "started", "ended",
                                            "state", "reason", "software", "safety_envelope") if key in meta},
    }


def _write_xlsx(frame: pd.DataFrame, data: Dataset, path: Path) -> None:
    """Samples (over several sheets when a sheet cannot hold them all), the per-cycle summary
    and the metadata, in one workbook a technician can open."""
    with pd.ExcelWriter(path, engine="openpyxl") as book:
        for number, start in enumerate(range(0, max(len(frame), 1), EXCEL_MAX_ROWS), start=1):
            name = "samples" if len(frame) <= EXCEL_MAX_ROWS else f"samples {number}"
            frame.iloc[start:start + EXCEL_MAX_ROWS].to_excel(book, sheet_name=name, index=False)
        summarise(data).to_excel(book, sheet_name="summary", index=False)
        flat = pd.json_normalize(metadata(data, frame), sep=".").T.reset_index()
        flat.columns = ["field", "value"]
        flat["value"] = flat["value"].map(lambda v: json.dumps(v, default=str) if isinstance(v, (list, dict)) else v)
        flat.to_excel(book, sheet_name="metadata", index=False)
