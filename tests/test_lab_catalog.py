"""Lab scale (issue 9): the run catalog, `cycler status --lab`, and a host that goes silent or
loses its database while a test runs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from lab_support import (FAST_BENCH, QUICK_SETS, database_url, lab_of, make_host, new_postgres_database,
                         restart_postgres, start_worker)
from support import QUICK, cycler, wait_for

from stackcycler.catalog import lab_view
from stackcycler.live import SilentReporter
from stackcycler.queue import TestQueue


def catalog(runs: Path) -> list[dict]:
    config = lab_of(runs)
    return lab_view(config.open_database(), config.lease_s).runs


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_the_catalog_holds_every_run_with_bench_dut_protocol_operator_state_and_result(tmp_path, kind):
    url = database_url(kind, tmp_path)
    runs = {name: make_host(tmp_path, name, url, init_schema=name == "bench-a") for name in ("bench-a", "bench-b")}
    for name, host_runs in runs.items():
        queue = TestQueue(host_runs)
        queue.add("capacity-check", FAST_BENCH, overrides=QUICK, dut_id=f"cell-{name}")
        queue.run(bench=FAST_BENCH, until_empty=True, log=lambda line: None, reporter=lambda item: SilentReporter())
    rows = catalog(runs["bench-a"])
    assert [(row["host"], row["dut"]) for row in sorted(rows, key=lambda r: r["host"])] == [
        ("bench-a", "cell-bench-a"), ("bench-b", "cell-bench-b")]
    for row in rows:
        folder = Path(row["folder"])
        assert folder.parent == runs[row["host"]].resolve() and row["run"] == folder.name
        assert (row["bench"], row["channel"], row["protocol"], row["state"]) == (
            FAST_BENCH, "cell1", "capacity-check", "completed")
        assert row["operator"] and row["progress"] == 1.0 and row["heartbeat"] is not None
        assert row["result"].startswith("discharge capacity 0.199")
        assert json.loads(row["summary"])[0]["cycle"] == 1

    code, output = cycler("status", "--lab", "--runs-dir", str(runs["bench-b"]), cwd=tmp_path)
    assert code == 0, output
    lines = output.splitlines()
    assert lines[0].split()[:3] == ["HOST", "RUN", "BENCH/CHANNEL"]
    assert sum("completed" in line and "discharge capacity" in line for line in lines) == 2
    assert lines[-1].startswith("hosts: bench-a (heard ") and "bench-b (heard " in lines[-1]
    document = json.loads(cycler("status", "--lab", "--json", "--runs-dir", str(runs["bench-a"]), cwd=tmp_path)[1])
    assert {run["host"] for run in document["runs"]} == {"bench-a", "bench-b"}


def test_a_host_whose_heartbeat_stops_is_flagged_on_its_runs(tmp_path):
    """`cycler run` on a lab host catalogues its run and publishes its data while it goes; the
    host is killed; the lab sees it."""
    results = tmp_path / "results"
    runs = make_host(tmp_path, "bench-a", new_postgres_database(), results=results, init_schema=True,
                     heartbeat_s=0.25, lease_s=1.0, publish_every_s=1.0)
    run = subprocess.Popen([sys.executable, "-m", "stackcycler", "run", "capacity-check", "--bench", FAST_BENCH,
                            *QUICK_SETS, "--speed", "100", "--runs-dir", str(runs)],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: any(row["state"] == "running" and row["step"] for row in catalog(runs)),
                 "the run in the catalog")
        wait_for(lambda: any(row["published"] for row in catalog(runs)), "the live run published")
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)

    def flagged():
        code, output = cycler("status", "--lab", "--runs-dir", str(runs), cwd=tmp_path)
        return "HOST SILENT for" in output and output

    output = wait_for(flagged, "the silent host flagged", timeout_s=10)
    run_line = next(line for line in output.splitlines() if "capacity-check" in line)
    assert "running" in run_line and "state as last reported" in run_line
    assert "bench-a (SILENT for" in output.splitlines()[-1]
    [row] = catalog(runs)
    assert row["published_complete"] == 0  # published while it ran: a part of the run
    sidecar = json.loads(next(results.glob("host=bench-a/run=*/*.bdf.metadata.json")).read_text())
    assert (sidecar["lab"]["state"], sidecar["lab"]["complete"]) == ("running", False)


def test_a_database_restart_mid_run_neither_stops_the_run_nor_loses_the_catalog(tmp_path):
    runs = make_host(tmp_path, "bench-a", new_postgres_database(), init_schema=True, heartbeat_s=0.25, lease_s=30.0)
    queue = TestQueue(runs)
    item = queue.add("capacity-check", FAST_BENCH, overrides=QUICK).id
    worker = start_worker(runs, FAST_BENCH, speed="3000")
    try:
        wait_for(lambda: any(row["state"] == "running" and row["step"] for row in catalog(runs)),
                 "the run in the catalog")
        restart_postgres(down_s=1.0)
        assert worker.wait(timeout=120) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    log = (runs.parent / "worker.log").read_text()
    assert "unreachable" in log and "lab database back after" in log
    done = queue.get(item)
    assert done.state == "completed" and done.reason.startswith("discharge capacity")
    [row] = catalog(runs)
    assert (row["state"], row["progress"], row["result"]) == ("completed", 1.0, done.reason)
    assert json.loads((Path(done.run_folder) / "run.json").read_text())["state"] == "completed"
