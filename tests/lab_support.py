"""Helpers of the lab tests (issue 9): a real PostgreSQL from the pgserver wheel, lab databases
of both kinds, bench hosts as folders with their lab.toml, worker processes.

The PostgreSQL server is started once per test session, in its own data folder, and stopped (and
its folder deleted) when the session's process ends; each test gets a database of its own on it.
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import pytest
from support import QUICK

from stackcycler.lab import init
from stackcycler.labconfig import LabConfig, load_lab_config
from stackcycler.labdemo import write_host

FAST_BENCH = "sim-keithley2450"  # the quickest simulated bench
OTHER_BENCH = "sim-e36312a-dl3021"  # another single-cell bench, almost as quick
QUICK_SETS = [arg for name, value in QUICK.items() for arg in ("--set", f"{name}={value}")]

_server = None


def postgres_server():
    """The session's PostgreSQL server (started on first use)."""
    global _server
    if _server is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs' note about XDG_RUNTIME_DIR
            pgserver = pytest.importorskip("pgserver")
        pytest.importorskip("psycopg")
        folder = Path(tempfile.mkdtemp(prefix="stackcycler-pg-"))
        _server = pgserver.get_server(folder / "data", cleanup_mode=None)
        atexit.register(_stop_and_delete, folder)
    return _server


def _stop_and_delete(folder: Path) -> None:
    """Stop the session's server and delete its folder. Not pgserver's clean-up: that stops the
    server politely, waiting for every client to leave, and the clients are connections of this
    very process, which is exiting."""
    from pgserver import pg_ctl

    try:
        pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=_server.pgdata, user=_server.system_user)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def new_postgres_database() -> str:
    """The URL of a new, empty database on the session's server."""
    import psycopg

    server = postgres_server()
    name = f"lab_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.get_uri(), autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return server.get_uri(name)


def restart_postgres(down_s: float) -> None:
    """Stop the session's server (fast shutdown: connections are cut), wait, start it again."""
    from pgserver import pg_ctl

    server = postgres_server()
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
    time.sleep(down_s)
    with server._lock:
        server.ensure_postgres_running()


def database_url(kind: str, tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'lab.sqlite'}" if kind == "sqlite" else new_postgres_database()


def make_host(tmp_path: Path, name: str, url: str, results: Path | None = None, init_schema: bool = False,
              **timings: float) -> Path:
    """A bench host: a folder with lab.toml beside its runs folder; returns the runs folder. It
    publishes to `results` only if given (publishing starts a process per run: slow for tests)."""
    runs = write_host(tmp_path / name, name, url, results,
                      **{"heartbeat_s": 0.5, "lease_s": 30.0, "publish_every_s": 0.0, **timings})
    if init_schema:
        init(lab_of(runs))
    return runs


def lab_of(runs: Path) -> LabConfig:
    config = load_lab_config(runs)
    assert config is not None
    return config


def start_worker(runs: Path, *benches: str, speed: str = "max", until_empty: bool = True) -> subprocess.Popen:
    """`cycler queue run` for a host, as its own process; its lines go to worker.log beside the runs."""
    args = [sys.executable, "-m", "stackcycler", "queue", "run", "--speed", speed, "--runs-dir", str(runs)]
    args += [arg for bench in benches for arg in ("--bench", bench)]
    if until_empty:
        args.append("--until-empty")
    runs.parent.mkdir(parents=True, exist_ok=True)
    with open(runs.parent / "worker.log", "a", encoding="utf-8") as log:
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
