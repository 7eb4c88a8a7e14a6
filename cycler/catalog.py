"""The run catalog: every run in the lab, one row each, in the lab database (issue 9).

A row is made from what the run folder already publishes for `cycler status`: run.json (what
runs, how it ended, the result and per-cycle summary), status.json (the heartbeat the runner
rewrites every second: step, cycle, V, I, progress) and published.json (where its data went).
So the catalog costs the tick loop nothing: a host's background thread (labagent.HostAgent)
reads those files every few seconds and sends the rows that changed.

The run folders are the buffer. A row is marked sent only once the database has it; while the
database is away nothing is marked, and when it is back every run that changed meanwhile is
sent as it is then. Nothing can be lost that the run folder still says.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UnreadableInput
from .labdb import Database, Session
from .operation import RunState, run_state
from .store import METADATA_FILE, SAMPLES_FILE, STATUS_FILE, read_json

PUBLISHED_FILE = "published.json"  # written by publish.py into the run folder it published
ALIVE = ("running", "paused", "suspended")

# the catalog's columns, as the `runs` table has them (labdb.MIGRATIONS, version 2)
COLUMNS = ("host", "run", "folder", "bench", "channel", "dut", "protocol", "operator", "state", "reason",
           "started", "ended", "step", "cycle", "progress", "voltage_v", "current_a", "test_time_s", "heartbeat",
           "result", "summary", "published", "published_rows", "published_complete")

_UPSERT = (f"INSERT INTO runs ({', '.join(COLUMNS)}, synced) VALUES ({', '.join('?' for _ in COLUMNS)}, {{now}}) "
           f"ON CONFLICT (host, run) DO UPDATE SET "
           + ", ".join(f"{name} = excluded.{name}" for name in COLUMNS[2:]) + ", synced = excluded.synced")


@dataclass
class RunRecord:
    """One run folder as the catalog sees it."""

    folder: Path
    columns: dict[str, Any]
    published: dict[str, Any] | None  # published.json, if the run was published
    signature: tuple = field(default=(), compare=False)

    @property
    def alive(self) -> bool:
        return self.columns["state"] in ALIVE


def read_published(folder: Path) -> dict[str, Any] | None:
    try:
        return read_json(folder / PUBLISHED_FILE)
    except (OSError, ValueError):
        return None


def run_record(folder: Path, host: str, state: RunState | None = None) -> RunRecord:
    """The catalog row of a run folder (raises UnreadableInput if it is not one)."""
    run = state or run_state(folder)
    meta, status = run.meta, run.status or {}
    step = status.get("step")
    published = read_published(folder)
    bench = meta.get("bench") or {}
    summary = meta.get("summary")
    columns = {
        "host": host, "run": folder.name, "folder": str(folder.resolve()),
        "bench": bench.get("name"), "channel": bench.get("channel"), "dut": (meta.get("dut") or {}).get("id"),
        "protocol": (meta.get("protocol") or {}).get("name"), "operator": meta.get("operator"),
        "state": run.state, "reason": meta.get("reason"), "started": meta.get("started"), "ended": meta.get("ended"),
        "step": f"{step['number']} {step['name']}" if step else None,
        "cycle": status.get("cycle"),
        "progress": 1.0 if run.state == "completed" else status.get("progress"),
        "voltage_v": status.get("voltage_V"), "current_a": status.get("current_A"),
        "test_time_s": meta.get("end_test_time_s", status.get("test_time_s")),
        "heartbeat": status.get("heartbeat_unix_s"),
        "result": meta.get("result"), "summary": None if summary is None else json.dumps(summary),
        "published": published.get("file") if published else None,
        "published_rows": published.get("rows") if published else None,
        "published_complete": int(bool(published.get("complete"))) if published else None,
    }
    return RunRecord(folder, columns, published)


def _signature(folder: Path) -> tuple:
    """Changes whenever the run writes anything the catalog or publishing looks at."""
    stamps = []
    for name in (METADATA_FILE, STATUS_FILE, PUBLISHED_FILE, SAMPLES_FILE):
        try:
            status = (folder / name).stat()
            stamps.append((status.st_mtime_ns, status.st_size))
        except OSError:
            stamps.append(None)
    return tuple(stamps)


class CatalogSync:
    """Which of one host's runs the catalog has not yet seen as they are now."""

    def __init__(self, runs_dir: Path, host: str):
        self.runs_dir, self.host = Path(runs_dir), host
        self._sent: dict[str, tuple[tuple, dict[str, Any]]] = {}  # run -> (signature, columns) the database has

    def pending(self) -> list[RunRecord]:
        """Every run whose files changed since it was sent, and every live run whose row would now
        read differently (a run that crashed changes state without writing anything)."""
        if not self.runs_dir.is_dir():
            return []
        records = []
        for folder in sorted(self.runs_dir.iterdir()):
            if not (folder / METADATA_FILE).is_file():
                continue
            signature = _signature(folder)
            sent = self._sent.get(folder.name)
            if sent is not None and sent[0] == signature and sent[1]["state"] not in ALIVE:
                continue
            try:
                record = run_record(folder, self.host)
            except (UnreadableInput, OSError, ValueError, KeyError, TypeError):
                continue  # a folder being created, or not a run's: nothing to say about it yet
            record.signature = signature
            if sent is None or sent[1] != record.columns:
                records.append(record)
        return records

    def mark_sent(self, records: list[RunRecord]) -> None:
        for record in records:
            self._sent[record.columns["run"]] = (record.signature, record.columns)


def send(session: Session, records: list[RunRecord]) -> None:
    """Insert or update the catalog rows of `records`, stamped with the database's clock."""
    sql = _UPSERT.replace("{now}", session.dialect.now_unix_s)
    session.executemany(sql, [[record.columns[name] for name in COLUMNS] for record in records])


# --- reading the catalog: `cycler status --lab` -------------------------------------------------

@dataclass
class LabView:
    runs: list[dict[str, Any]]  # catalog rows, each with `host_silent_s` (None while its host is heard)
    hosts: list[dict[str, Any]]  # host rows, each with `silent_s`: seconds since it was last heard
    lease_s: float


def lab_view(database: Database, lease_s: float) -> LabView:
    """The catalog as it stands, with every host heard from longer than `lease_s` ago flagged."""
    with database.transaction() as session:
        now = session.now()
        hosts = [dict(row) for row in session.execute("SELECT * FROM hosts ORDER BY host")]
        runs = [dict(row) for row in session.execute("SELECT * FROM runs ORDER BY started, host, run")]
    for host in hosts:
        host["silent_s"] = max(now - host["last_seen"], 0.0)
    silent = {host["host"]: host["silent_s"] for host in hosts if host["silent_s"] > lease_s}
    for run in runs:
        run["host_silent_s"] = silent.get(run["host"]) if run["state"] in ALIVE else None
        run["heartbeat_age_s"] = None if run["heartbeat"] is None else max(time.time() - run["heartbeat"], 0.0)
    return LabView(runs, hosts, lease_s)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def lab_status_lines(view: LabView) -> list[str]:
    """Every run in the lab, one line each, then the hosts; a silent host is flagged on its runs."""
    lines = [f"{'HOST':12s} {'RUN':54s} {'BENCH/CHANNEL':26s} {'DUT':16s} {'OPERATOR':10s} {'STATE':14s} "
             f"{'PROGRESS':>8s} {'HEARTBEAT':>9s}  NOTE"]
    for run in view.runs:
        alive = run["state"] in ALIVE
        progress = "" if run["progress"] is None else format(run["progress"], ".0%")
        heartbeat = _age(run["heartbeat_age_s"]) if alive and run["heartbeat_age_s"] is not None else ""
        if run["host_silent_s"] is not None:
            note = f"HOST SILENT for {_age(run['host_silent_s'])}: state as last reported"
        elif alive:
            note = f"step {run['step']}, cycle {run['cycle']}" if run["step"] else ""
        else:
            note = run["result"] or run["reason"] or ""
        lines.append(f"{run['host'][:12]:12s} {run['run'][:54]:54s} "
                     f"{(run['bench'] or '') + '/' + (run['channel'] or ''):26.26s} {run['dut'] or '':16.16s} "
                     f"{run['operator'] or '':10.10s} {run['state'][:14]:14s} {progress:>8s} {heartbeat:>9s}  {note}")
    if not view.runs:
        lines.append("no runs in the catalog yet")
    running_on = {run["host"] for run in view.runs if run["state"] in ALIVE}

    def heard(host: dict[str, Any]) -> str:
        if host["silent_s"] <= view.lease_s:
            return f"heard {_age(host['silent_s'])} ago"
        if host["host"] in running_on:  # it had a test going: that is what needs a look
            return f"SILENT for {_age(host['silent_s'])}"
        return f"idle, last heard {_age(host['silent_s'])} ago"  # no cycler process there: nothing to say

    lines.append("hosts: " + (", ".join(f"{host['host']} ({heard(host)})" for host in view.hosts)
                              or "none has reported yet"))
    return lines
