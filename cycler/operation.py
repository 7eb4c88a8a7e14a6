"""Operating running tests from another terminal: status, pause, continue, stop.

A running run writes `status.json` in its folder about once a second (a heartbeat with what a
technician looks at); `cycler status` reads those, and calls a run whose heartbeat has stopped and
whose process is gone crashed. `cycler pause|continue|stop RUN` write a request to the run's
`control.json`; the runner reads it within a quarter of a second, acts, and acknowledges it in
its status, which the command waits for.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InvalidInput, UnreadableInput
from .store import CONTROL_FILE, METADATA_FILE, STATUS_FILE, atomic_write_text, read_json

HEARTBEAT_STALE_S = 10.0  # no status for this long (wall time) and the run is not alive
STATUS_INTERVAL_WALL_S = 1.0
CONTROL_POLL_S = 0.25
REQUESTS = ("pause", "continue", "stop")


def this_host() -> str:
    return socket.gethostname()


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class RunState:
    """A run folder as `cycler status` sees it."""

    folder: Path
    meta: dict[str, Any]
    status: dict[str, Any] | None
    state: str  # running, paused, crashed, or how it ended (completed, tripped, ...)

    @property
    def alive(self) -> bool:
        return self.state in ("running", "paused", "suspended")


def run_state(folder: Path) -> RunState:
    try:
        meta = read_json(folder / METADATA_FILE)
    except (OSError, ValueError):
        raise UnreadableInput(f"{folder}: not a run folder (no readable {METADATA_FILE})") from None
    try:
        status = read_json(folder / STATUS_FILE)
    except (OSError, ValueError):
        status = None
    state = meta.get("state", "unknown")
    if state == "running":
        # before the first status, the run's start is its heartbeat
        heartbeat = status["heartbeat_unix_s"] if status else (folder / METADATA_FILE).stat().st_mtime
        fresh = time.time() - heartbeat < HEARTBEAT_STALE_S
        pid, host = meta.get("pid"), meta.get("host")
        if host == this_host() and pid is not None and not process_alive(pid):
            state = "crashed"
        elif not fresh:
            state = "not responding" if host == this_host() else "no heartbeat"
        elif status and status.get("state") in ("paused", "suspended"):
            state = status["state"]
    return RunState(folder, meta, status, state)


def list_runs(runs_dir: Path) -> list[RunState]:
    if not runs_dir.is_dir():
        return []
    found = []
    for folder in sorted(runs_dir.iterdir()):
        if (folder / METADATA_FILE).is_file():
            try:
                found.append(run_state(folder))
            except UnreadableInput:
                continue
    return found


def post_request(folder: Path, request: str) -> str:
    """Leave `request` in the run's control.json for the runner to pick up; returns its id."""
    identifier = uuid.uuid4().hex
    atomic_write_text(folder / CONTROL_FILE, json.dumps({"request": request, "id": identifier,
                                                        "sent_unix_s": time.time()}) + "\n")
    return identifier


def send_request(folder: Path, request: str, wait_s: float = 5.0) -> dict[str, Any]:
    """Ask a running run to pause, continue or stop; wait for its acknowledgement."""
    if request not in REQUESTS:
        raise InvalidInput(f"unknown request '{request}'; requests: {', '.join(REQUESTS)}")
    current = run_state(folder)
    if not current.alive:
        raise InvalidInput(f"{folder.name} is not running ({current.state}); "
                           + ("resume it with `cycler resume`" if current.state == "crashed" else "nothing to do"))
    identifier = post_request(folder, request)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            status = read_json(folder / STATUS_FILE)
        except (OSError, ValueError):
            status = {}
        if status.get("acknowledged") == identifier:
            return status
        time.sleep(0.05)
    raise InvalidInput(f"{folder.name} did not acknowledge '{request}' within {wait_s:g} s; it will still act on "
                       "it if it is alive (see `cycler status`)")


class ControlInbox:
    """The runner's side: new requests in control.json, at most every CONTROL_POLL_S of wall time."""

    def __init__(self, folder: Path):
        self.path = folder / CONTROL_FILE
        self._seen: str | None = None
        self._next_poll = 0.0
        try:
            self._seen = read_json(self.path).get("id")  # a request left from before (a resume) is old news
        except (OSError, ValueError):
            pass

    def poll(self) -> tuple[str, str] | None:
        """(request, id) of a new request, or None."""
        now = time.monotonic()
        if now < self._next_poll:
            return None
        self._next_poll = now + CONTROL_POLL_S
        try:
            message = read_json(self.path)
        except (OSError, ValueError):
            return None
        if message.get("id") == self._seen or message.get("request") not in REQUESTS:
            return None
        self._seen = message["id"]
        return message["request"], message["id"]


def find_run(name: str, runs_dir: Path, newest: bool = False) -> Path:
    """A run folder from what a technician types: its path, its name in the runs folder, or a
    piece of its name that only one run has (`newest`: the newest of the runs that have it)."""
    for candidate in (Path(name), runs_dir / name):
        if (candidate / METADATA_FILE).is_file():
            return candidate
    matches = [run.folder for run in list_runs(runs_dir) if name in run.folder.name]
    if len(matches) == 1 or matches and newest:
        return matches[-1]  # run folders are named by their start time: sorted, the newest is last
    if not matches:
        raise InvalidInput(f"no run '{name}' in {runs_dir} (give a run folder, or see `cycler status`)")
    raise InvalidInput(f"'{name}' matches {len(matches)} runs in {runs_dir}: "
                       + ", ".join(m.name for m in matches[:10]) + "; give more of the name")


def _number(value: Any, unit: str, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g} {unit}"


def status_lines(run: RunState) -> list[str]:
    """One run, as `cycler status RUN` shows it."""
    meta, status = run.meta, run.status or {}
    lines = [f"run: {run.folder}", f"state: {run.state}" + (f" ({meta.get('reason')})" if meta.get("reason") else "")]
    if not run.alive and meta.get("result"):
        lines.append(f"result: {meta['result']}")
    if run.state in ("paused", "suspended"):
        lines.append("held by: " + "; ".join(f"{who}: {why}" for who, why in status.get("held_by", {}).items()))
    if not status:
        return lines + ["(no status yet)"]
    step = status["step"]
    layers = status.get("layers")
    temperatures = ", ".join(f"{name} {value:.1f} degC" for name, value in status["temperatures_degC"].items())
    lines += [
        f"protocol: {status['protocol']} on channel {status['channel']}",
        f"step {step['number']} '{step['name']}' ({step['setpoint']}): {status['step_time_s']:.0f} s in step, "
        f"step {step['count']} of the run",
        f"cycle: {status['cycle']}" + (f"   loops: {status['loops']}" if status.get("loops") else ""),
        f"voltage: {status['voltage_V']:.4f} V   current: {status['current_A']:+.4f} A   power: {status['power_W']:+.3f} W",
    ]
    if layers:
        lines.append(f"layers: min {layers['min_V']:.4f} V (layer {layers['lowest']:02d}), max {layers['max_V']:.4f} V "
                     f"(layer {layers['highest']:02d}), spread {layers['spread_mV']:.1f} mV")
    if temperatures or status.get("ambient_degC") is not None:
        lines.append("temperature: " + (temperatures or "-")
                     + (f"   ambient {status['ambient_degC']:.1f} degC" if status.get("ambient_degC") is not None else ""))
    if status.get("pressure_MPa") is not None:
        lines.append(f"pressure: {status['pressure_MPa']:.3f} MPa")
    lines += [
        f"capacity this cycle: charged {status['cycle_charge_Ah']:.4f} Ah, discharged {status['cycle_discharge_Ah']:.4f} Ah",
        f"test: {status['test_time_s'] / 3600:.2f} h, charged {status['test_charge_Ah']:.4f} Ah, "
        f"discharged {status['test_discharge_Ah']:.4f} Ah"
        + (f", held {status['held_total_s']:.0f} s" if status.get("held_total_s") else ""),
        f"progress: {status['progress']:.0%}   remaining about {status['remaining_s'] / 3600:.1f} h   "
        f"ETA {status['eta'][:16].replace('T', ' ')} UTC",
        f"status from {time.time() - status['heartbeat_unix_s']:.0f} s ago",
    ]
    return lines


def status_table(runs: list[RunState]) -> list[str]:
    """All runs, one line each, as `cycler status` shows them."""
    if not runs:
        return ["no runs"]
    lines = [f"{'RUN':52s} {'STATE':14s} {'STEP':24s} {'VOLTAGE':>10s} {'CURRENT':>10s} {'CYCLE':>5s} {'PROGRESS':>8s}"]
    for run in runs:
        status = run.status or {}
        step = status.get("step")
        step_text = f"{step['number']} {step['name']}"[:24] if step and run.alive else ""
        live = run.alive and status
        lines.append(f"{run.folder.name[:52]:52s} {run.state[:14]:14s} {step_text:24s} "
                     f"{_number(status.get('voltage_V') if live else None, 'V'):>10s} "
                     f"{_number(status.get('current_A') if live else None, 'A', 3):>10s} "
                     f"{status.get('cycle', '') if live else '':>5} "
                     f"{format(status['progress'], '.0%') if live else '':>8s}")
    return lines
