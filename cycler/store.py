"""The run folder: everything a run leaves behind, readable while it runs and after a crash.

    run.json          metadata (protocol, bench, instruments, versions, DUT, operator, times,
                      sign convention) and the run's state; rewritten atomically
    protocol.yaml     the protocol file as run;  bench.yaml: the bench file as written
    samples.csv       one row per recorded sample, Battery Data Format column names; append-only
    events.jsonl      step starts and ends, trips, faults, interruptions; one JSON object a line
    checkpoint.json   where the run is (step, counters, integrators); rewritten atomically
    summary.csv       per-cycle results, written when the run ends

Why CSV and JSON lines: appending text loses at most the rows not yet handed to the OS when
the process dies, and the file stays readable by anything (a single Parquet file written
incrementally loses every row on kill -9). Samples go to the OS at least every
FLUSH_INTERVAL_S of wall time and to the disk every FSYNC_INTERVAL_S; events go to the disk
at once.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

FLUSH_INTERVAL_S = 0.5
FSYNC_INTERVAL_S = 5.0

SAMPLES_FILE = "samples.csv"
EVENTS_FILE = "events.jsonl"
METADATA_FILE = "run.json"
CHECKPOINT_FILE = "checkpoint.json"
SUMMARY_FILE = "summary.csv"

SIGN_CONVENTION = "current and power are positive for charge (into the DUT), as in the Battery Data Format"


@dataclass(frozen=True)
class Column:
    name: str
    format: str  # %-format for one value


def atomic_write_text(path: Path, text: str) -> None:
    """Replace `path` with `text` so that a reader sees the old or the new file, never a torn one."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_directory(path.parent)


def _fsync_directory(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def utc_iso(unix_time: float) -> str:
    return datetime.fromtimestamp(unix_time, timezone.utc).isoformat(timespec="milliseconds")


def new_run_folder(runs_dir: Path, stem: str) -> Path:
    runs_dir.mkdir(parents=True, exist_ok=True)
    folder = runs_dir / stem
    suffix = 2
    while True:
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            folder = runs_dir / f"{stem}-{suffix}"
            suffix += 1


class RunStore:
    def __init__(self, folder: Path, columns: Sequence[Column], metadata: dict[str, Any],
                 protocol_text: str, bench_text: str):
        self.folder = folder
        self.columns = list(columns)
        self._formats = [c.format for c in self.columns]
        self.metadata = dict(metadata)
        (folder / "protocol.yaml").write_text(protocol_text, encoding="utf-8")
        (folder / "bench.yaml").write_text(bench_text, encoding="utf-8")
        self._write_metadata()
        self._samples = open(folder / SAMPLES_FILE, "a", encoding="utf-8", newline="")
        self._events = open(folder / EVENTS_FILE, "a", encoding="utf-8")
        self._samples.write(",".join(c.name for c in self.columns) + "\n")
        self._pending: list[str] = []
        self._last_flush = self._last_fsync = time.monotonic()
        self._flush_samples(fsync=True)
        _fsync_directory(folder)
        self.rows_written = 0

    # --- samples ---------------------------------------------------------------------

    def append_sample(self, values: Sequence[Any]) -> None:
        self._pending.append(",".join("" if v is None else fmt % v for fmt, v in zip(self._formats, values)))
        self.rows_written += 1
        now = time.monotonic()
        if now - self._last_flush >= FLUSH_INTERVAL_S:
            self._flush_samples(fsync=now - self._last_fsync >= FSYNC_INTERVAL_S)

    def _flush_samples(self, fsync: bool = False) -> None:
        if self._pending:
            self._samples.write("\n".join(self._pending) + "\n")
            self._pending.clear()
        self._samples.flush()
        self._last_flush = time.monotonic()
        if fsync:
            os.fsync(self._samples.fileno())
            self._last_fsync = self._last_flush

    # --- events, checkpoint, metadata --------------------------------------------------

    def event(self, kind: str, test_time_s: float, unix_time_s: float, **fields: Any) -> None:
        """Record an event; samples logged so far are flushed first so the two files agree."""
        self._flush_samples()
        record = {"event": kind, "test_time_s": round(test_time_s, 3), "time": utc_iso(unix_time_s), **fields}
        self._events.write(json.dumps(record, default=str) + "\n")
        self._events.flush()
        os.fsync(self._events.fileno())

    def checkpoint(self, state: dict[str, Any]) -> None:
        atomic_write_text(self.folder / CHECKPOINT_FILE, json.dumps(state, indent=1, default=str) + "\n")

    def update_metadata(self, **fields: Any) -> None:
        self.metadata.update(fields)
        self._write_metadata()

    def _write_metadata(self) -> None:
        atomic_write_text(self.folder / METADATA_FILE, json.dumps(self.metadata, indent=2, default=str) + "\n")

    def close(self) -> None:
        """Everything to disk. Safe to call more than once."""
        if not self._samples.closed:
            self._flush_samples(fsync=True)
            self._samples.close()
        if not self._events.closed:
            self._events.close()
