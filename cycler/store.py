"""The run folder: everything a run leaves behind, readable while it runs and after a crash.

    run.json          metadata (protocol, bench, instruments, versions, DUT, operator, times,
                      sign convention) and the run's state; rewritten atomically
    protocol.yaml     the protocol file as run;  bench.toml (or .yaml): the bench file as written
    samples.csv       one row per recorded sample, Battery Data Format column names; append-only
    events.jsonl      step starts and ends, trips, faults, interruptions, resumes; one JSON a line
    checkpoint.json   where the run is and how many sample rows are safely on disk; atomic
    status.json       the run's live status for `cycler status` (rewritten every second or so)
    control.json      requests from `cycler pause|continue|stop` in another terminal
    summary.csv       per-cycle results, written when the run ends

One consistency point: `checkpoint()` first puts every sample row on the disk (flush and
fsync), then writes the checkpoint, which records how many rows that is. The runner calls it
every half second of wall time and at every step change. A resume cuts samples.csv back to that
many rows, so a crash (even kill -9, even a torn last line) loses at most half a second of rows
and a resumed run never duplicates a row or counts charge twice.

Why CSV and JSON lines: appending text loses only what was not yet written when the process
dies, and the file stays readable by anything; a single Parquet file written incrementally
loses every row on kill -9.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from .errors import StorageFailure

SAMPLES_FILE = "samples.csv"
EVENTS_FILE = "events.jsonl"
METADATA_FILE = "run.json"
CHECKPOINT_FILE = "checkpoint.json"
STATUS_FILE = "status.json"
CONTROL_FILE = "control.json"
SUMMARY_FILE = "summary.csv"

SIGN_CONVENTION = "current and power are positive for charge (into the DUT), as in the Battery Data Format"


@dataclass(frozen=True)
class Column:
    name: str
    format: str  # %-format for one value


def atomic_write_text(path: Path, text: str, durable: bool = True) -> None:
    """Replace `path` with `text` so that a reader sees the old or the new file, never a torn one.
    `durable`: also on the disk before returning (not needed for what is rewritten every second)."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(temporary, path)
    if durable:
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
    try:
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
    except OSError as error:
        raise StorageFailure(f"cannot create a run folder in {runs_dir}: {error.strerror}") from None


def bench_copy_name(source: Path) -> str:
    """The run folder's copy of a bench file keeps its format: bench.toml or bench.yaml."""
    return "bench.toml" if Path(source).suffix.lower() == ".toml" else "bench.yaml"


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def read_events(path: Path) -> list[dict[str, Any]]:
    """The events of an events.jsonl; a torn last line (the writer died mid-line) is skipped."""
    events = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


def cut_samples_to(folder: Path, rows: int) -> int:
    """Keep the header and the first `rows` complete rows of samples.csv; returns the rows cut off."""
    path = folder / SAMPLES_FILE
    with open(path, "rb") as handle:
        data = handle.read()
    lines = data.split(b"\n")
    complete = lines[:-1]  # the last piece has no newline: empty, or a row torn by the crash
    keep = min(rows + 1, len(complete))
    size = sum(len(line) + 1 for line in complete[:keep])
    os.truncate(path, size)
    return len(complete) - keep + (1 if lines[-1] else 0)


class RunStore:
    """Writes one run folder. `create()` starts one; `reopen()` continues one after a crash."""

    def __init__(self, folder: Path, columns: Sequence[Column], metadata: dict[str, Any], rows_written: int):
        self.folder = folder
        self.columns = list(columns)
        self._formats = [c.format for c in self.columns]
        self._row_format = ",".join(self._formats)  # a whole row in one formatting pass
        self.metadata = dict(metadata)
        self.rows_written = rows_written
        self._pending: list[str] = []
        try:
            self._samples = open(folder / SAMPLES_FILE, "a", encoding="utf-8", newline="")
            self._events = open(folder / EVENTS_FILE, "a", encoding="utf-8")
        except OSError as error:
            raise StorageFailure(f"{folder}: cannot open the run's files: {error.strerror}") from None

    @classmethod
    def create(cls, folder: Path, columns: Sequence[Column], metadata: dict[str, Any],
               protocol_text: str, bench_text: str, bench_source: Path = Path("bench.yaml")) -> "RunStore":
        try:
            (folder / "protocol.yaml").write_text(protocol_text, encoding="utf-8")
            (folder / bench_copy_name(bench_source)).write_text(bench_text, encoding="utf-8")
            (folder / SAMPLES_FILE).write_text(",".join(c.name for c in columns) + "\n", encoding="utf-8")
            atomic_write_text(folder / METADATA_FILE, json.dumps(metadata, indent=2, default=str) + "\n")
        except OSError as error:
            raise StorageFailure(f"{folder}: cannot write the run folder: {error.strerror}") from None
        return cls(folder, columns, metadata, rows_written=0)

    @classmethod
    def reopen(cls, folder: Path, columns: Sequence[Column], rows: int) -> tuple["RunStore", int]:
        """Continue a run folder at its checkpoint's row count; returns the store and the rows cut off."""
        try:
            cut = cut_samples_to(folder, rows)
            return cls(folder, columns, read_json(folder / METADATA_FILE), rows_written=rows), cut
        except OSError as error:
            raise StorageFailure(f"{folder}: cannot reopen the run folder: {error.strerror}") from None

    # --- samples ---------------------------------------------------------------------

    def append_sample(self, values: Sequence[Any]) -> None:
        if None in values:  # a reading that is missing: its cell is left empty
            row = ",".join("" if v is None else fmt % v for fmt, v in zip(self._formats, values))
        else:
            row = self._row_format % tuple(values)
        self._pending.append(row)
        self.rows_written += 1

    def flush(self, fsync: bool = False) -> None:
        try:
            if self._pending:
                self._samples.write("\n".join(self._pending) + "\n")
                self._pending.clear()
            self._samples.flush()
            if fsync:
                os.fsync(self._samples.fileno())
        except OSError as error:
            raise StorageFailure(f"{self.folder}: cannot write samples ({error.strerror}); rows already "
                                 "written are kept") from None

    # --- events, checkpoint, status, metadata ------------------------------------------

    def event(self, kind: str, test_time_s: float, unix_time_s: float, **fields: Any) -> None:
        """Record an event; samples logged so far are written first so the two files agree."""
        record = {"event": kind, "test_time_s": round(test_time_s, 3), "time": utc_iso(unix_time_s), **fields}
        self.flush()
        try:
            self._events.write(json.dumps(record, default=str) + "\n")
            self._events.flush()
            os.fsync(self._events.fileno())
        except OSError as error:
            raise StorageFailure(f"{self.folder}: cannot write events ({error.strerror})") from None

    def checkpoint(self, state: dict[str, Any]) -> None:
        """Samples to the disk first, then the state that matches them (see the module's docstring)."""
        self.flush(fsync=True)
        self._atomic(CHECKPOINT_FILE, {**state, "records": self.rows_written})

    def status(self, status: dict[str, Any]) -> None:
        self._atomic(STATUS_FILE, status, durable=False)

    def update_metadata(self, **fields: Any) -> None:
        self.metadata.update(fields)
        self._atomic(METADATA_FILE, self.metadata)

    def _atomic(self, name: str, data: dict[str, Any], durable: bool = True) -> None:
        try:
            atomic_write_text(self.folder / name, json.dumps(data, indent=1, default=str) + "\n", durable)
        except OSError as error:
            raise StorageFailure(f"{self.folder}: cannot write {name} ({error.strerror})") from None

    def close(self) -> None:
        """Everything to disk. Safe to call more than once, and after a storage failure."""
        for handle, flush in ((self._samples, True), (self._events, False)):
            if handle.closed:
                continue
            try:
                if flush:
                    self.flush(fsync=True)
            except StorageFailure:
                pass  # the run has already stopped on it; what is on the disk stays readable
            finally:
                handle.close()
