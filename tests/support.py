"""Helpers shared by the tests (plain functions; fixtures live in conftest.py).

The tests folder is deliberately not a package: pytest then puts only tests/ on sys.path,
never the repository root, whose `cycler/` folder would shadow matplotlib's `cycler`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from stackcycler.drivers.sim.serve import PtyServer
from stackcycler.errors import InstrumentTimeout
from stackcycler.live import SilentReporter
from stackcycler.operation import post_request

# The capacity check at 1C with one-minute rests: the same steps, a fifth of the ticks.
# Real Bitrode recordings of a 2013 Nissan Leaf cell (ORNL, MIT licence; see its README.md),
# kept with the tests so that they run wherever the repository is cloned.
LEAF_DATA = Path(__file__).resolve().parent / "data" / "nissan-leaf-cell"
LEAF_CYCLING = LEAF_DATA / "NissanLeaf-cell-Cycling-10C-24C-40C.csv"

QUICK = {"charge_rate_C": 1.0, "discharge_rate_C": 1.0, "rest_s": 60.0}


def samples_of(result) -> pd.DataFrame:
    return pd.read_csv(result.outcome.folder / "samples.csv")


def events_of(result_or_folder) -> list[dict]:
    folder = getattr(getattr(result_or_folder, "outcome", None), "folder", result_or_folder)
    return [json.loads(line) for line in (Path(folder) / "events.jsonl").read_text().splitlines()]


def cycler(*args: str, cwd: Path) -> tuple[int, str]:
    """Invoke the CLI in this process; returns the exit code and what a user would see (stdout and stderr)."""
    from stackcycler.cli import main

    old = os.getcwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    finally:
        os.chdir(old)
    return result.exit_code, result.output


def data_rows(samples: Path) -> list[str]:
    return samples.read_text().splitlines()[1:] if samples.exists() else []


def start_logging_run(cwd: Path, rows: int, protocol: str = "capacity-check", speed: str = "100",
                      **popen) -> tuple[subprocess.Popen, Path]:
    """`cycler run PROTOCOL` (on the bench `sim`) at `speed` times real time in a subprocess, once it
    has logged `rows` rows."""
    process = subprocess.Popen([sys.executable, "-m", "stackcycler", "run", protocol, "--speed", speed],
                               cwd=cwd, **popen)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = list((cwd / "runs").glob("*/samples.csv")) if (cwd / "runs").exists() else []
        if found and len(data_rows(found[0])) >= rows:
            return process, found[0]
        time.sleep(0.1)
    process.kill()
    raise AssertionError("the run did not start logging within a minute")


def ended_pid() -> int:
    """The pid of a process that has ended: for run.json of a run 'killed' inside a test's own
    process, which `cycler resume` would otherwise take for a live run."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True)
    return int(child.stdout)


def wait_for(condition, what: str, timeout_s: float = 60):
    """Poll `condition` until it gives something true (returned), or fail naming `what`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {timeout_s} s")


def wait_for_rows(samples: Path, rows: int, process: subprocess.Popen, timeout_s: float = 120.0) -> bool:
    """Wait until samples.csv holds `rows` data rows; False if the process ended first."""
    deadline = time.monotonic() + timeout_s
    while len(data_rows(samples)) < rows:
        if process.poll() is not None:
            return False
        if time.monotonic() > deadline:
            raise AssertionError(f"{samples} did not reach {rows} rows within {timeout_s:.0f} s")
        time.sleep(0.01)
    return True


def killed_once_logging(cwd: Path, process: subprocess.Popen, channels: tuple[str, ...], rows: int,
                        timeout_s: float = 120.0) -> dict[str, Path]:
    """SIGKILL `process` (a `cycler run` of several channels in `cwd`) once each channel's run has
    logged `rows` rows; channel -> its run folder."""
    runs = cwd / "runs"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            samples = {channel: next(runs.glob(f"*_{channel}/samples.csv"), None) for channel in channels}
            if runs.exists() and all(s is not None and len(data_rows(s)) >= rows for s in samples.values()):
                return {channel: path.parent for channel, path in samples.items()}
            assert process.poll() is None, "the run ended before it had logged enough"
            assert time.monotonic() < deadline, f"the channels did not log {rows} rows within {timeout_s:.0f} s"
            time.sleep(0.05)
    finally:
        process.kill()
        process.wait(timeout=30)


def assert_continuous(folder) -> pd.DataFrame:
    """One unbroken record: indices 1..N, time never going back, counters never going back."""
    samples = pd.read_csv(Path(folder) / "samples.csv")
    assert samples["Record Index / 1"].tolist() == list(range(1, len(samples) + 1))
    assert (np.diff(samples["Test Time / s"]) >= 0).all()
    for column in ("Step Count / 1", "Cycle Count / 1", "Charging Capacity / Ah", "Discharging Capacity / Ah",
                   "Charging Energy / Wh", "Discharging Energy / Wh"):
        assert (np.diff(samples[column]) >= -1e-9).all(), column
    # a time appears twice only where the output switched (a step start, a resume): the row before
    # and the row right after the switch
    resumes = {round(e["test_time_s"], 3) for e in events_of(folder) if e["event"] == "resumed"}
    repeated = samples[samples["Test Time / s"].duplicated(keep=False)]
    for t, rows in repeated.groupby("Test Time / s"):
        assert rows["Step Time / s"].min() == 0 or round(t, 3) in resumes, t
    return samples


Script = list[tuple[str, "str | None"]]


class ScriptedTransport:
    """A message transport that plays an instrument from a script of (expected message, reply or None)."""

    resource = "TCPIP::192.0.2.7::5025::SOCKET"

    def __init__(self, script: Script):
        self.script = list(script)
        self.pending: list[str] = []
        self.closed = False

    def write(self, message: str) -> None:
        assert self.script, f"unexpected message {message!r}: the script is finished"
        expected, reply = self.script.pop(0)
        assert message == expected, f"sent {message!r}, expected {expected!r}"
        if reply is not None:
            self.pending.append(reply)

    def read(self) -> str:
        if not self.pending:
            raise InstrumentTimeout(f"{self.resource}: no reply (timeout)")
        return self.pending.pop(0)

    def query(self, message: str) -> str:
        self.write(message)
        return self.read()

    def close(self) -> None:
        self.closed = True

    def done(self) -> None:
        """Every scripted message was sent and every reply read."""
        assert not self.script, f"messages never sent: {self.script}"
        assert not self.pending, f"replies never read: {self.pending}"


@contextmanager
def expected_protocol(driver_class, script: Script) -> Iterator:
    """The driver on a scripted transport; on leaving, every scripted message must have been sent."""
    transport = ScriptedTransport(script)
    yield driver_class(transport)
    transport.done()


class StopAfter(SilentReporter):
    """A reporter that asks the run to stop (as a signal handler would) after some ticks."""

    def __init__(self, stop, ticks: int):
        self.stop, self.ticks, self.seen = stop, ticks, 0
        self.last_time = None

    def tick(self, status) -> None:
        self.seen += 1
        self.last_time = status.test_time_s
        if self.seen == self.ticks:
            self.stop.request("SIGTERM")


class RequestAt(SilentReporter):
    """Plays the technician in another terminal: `cycler pause|continue|stop` at test times, to the
    run folder `folder_of()` gives."""

    def __init__(self, folder_of, *requests: tuple[float, str]):
        self.folder_of, self.requests = folder_of, list(requests)

    def tick(self, status) -> None:
        if self.requests and status.test_time_s >= self.requests[0][0]:
            _, request = self.requests.pop(0)
            post_request(self.folder_of(), request)
            time.sleep(0.3)  # the runner looks at most every 0.25 s of wall time


ByteScript = list[tuple[bytes, "bytes | None"]]  # (expected frame, reply bytes or None), in order


class ScriptedByteTransport:
    """Plays a binary instrument from a script of (expected frame, reply bytes or None), in order."""

    resource = "ASRL/dev/ttyUSB0::INSTR"

    def __init__(self, script: "ByteScript"):
        self.script = list(script)
        self.pending = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        assert self.script, f"unexpected frame {data.hex(' ')}: the script is finished"
        expected, answer = self.script.pop(0)
        assert data == expected, f"sent {data.hex(' ')}, expected {expected.hex(' ')}"
        if answer is not None:
            self.pending += answer

    def read(self, n: int) -> bytes:
        if len(self.pending) < n:
            got = len(self.pending)
            self.pending.clear()
            raise InstrumentTimeout(f"{self.resource}: no complete reply (timeout after {got} of {n} bytes)")
        data = bytes(self.pending[:n])
        del self.pending[:n]
        return data

    def discard_input(self) -> None:
        self.pending.clear()

    def close(self) -> None:
        self.closed = True

    def done(self) -> None:
        assert not self.script, f"frames never sent: {[sent.hex(' ') for sent, _ in self.script]}"
        assert not self.pending, f"reply bytes never read: {self.pending.hex(' ')}"


class PtyDevice:
    """A simulated serial instrument (anything with `receive(bytes) -> bytes`) served on a
    pseudo-terminal by `cycler sim serve`'s own PtyServer, as on a USB-serial adapter; `truncate`
    cuts every reply to that many bytes."""

    def __init__(self, device, truncate: int | None = None):
        self.server = PtyServer(_Truncating(device, truncate), threading.Lock())
        self.port = self.server.path
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Truncating:
    def __init__(self, device, limit: int | None):
        self.device, self.limit = device, limit

    def receive(self, data: bytes) -> bytes:
        return self.device.receive(data)[:self.limit]


needs_pty = pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")


