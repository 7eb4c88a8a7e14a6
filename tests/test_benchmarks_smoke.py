"""The benchmark harness still runs: tests/benchmarks/run.py and summary.py at tiny sizes.

The benchmarks reach into the code they measure (they wrap Runner._tick, RunStore's sample calls,
the simulated supply's OUTP and the simulated DAQ's READ?), so a rename there breaks them without
any benchmark being run; these tests catch that. Nothing here looks at a speed: the figures of a
tiny run mean nothing, only their presence and shape are checked.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parent / "benchmarks"

pytestmark = pytest.mark.skipif(not hasattr(os, "openpty"), reason="the BK 8500 benchmark needs a pseudo-terminal")


def run_script(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def figures(node) -> list[dict]:
    """Every {median, min, max, n} figure in a results tree."""
    if isinstance(node, dict):
        if {"median", "min", "max", "n"} <= node.keys():
            return [node]
        return [figure for value in node.values() for figure in figures(value)]
    return []


def test_run_py_runs_every_benchmark_and_writes_one_table_and_json(tmp_path):
    out = tmp_path / "smoke.json"
    table = run_script("run.py", "--smoke", "--json", str(out))
    results = json.loads(out.read_text())
    assert results["sizes"] == "smoke"
    for benchmark in ("ticks_per_s", "life_test", "memory", "breach_to_off", "loopback", "sample_writing",
                      "bk8500_pty", "breach_to_off_tcp", "summary", "drivers"):
        assert benchmark in results, benchmark
    for figure in figures(results):
        assert figure["min"] <= figure["median"] <= figure["max"] and all(
            math.isfinite(figure[key]) for key in ("median", "min", "max"))
    # every instrument of every built-in bench is measured in process
    assert "sim-e36312a-bk8500: bk-8500 measure()" in results["drivers"]["in_process_calls_per_s"]
    assert set(results["drivers"]["over_tcp"]) == {"supply", "daq"}
    assert results["sample_writing"]["columns"] == 41  # 15 + T1 + ambient + pressure + 23 layers
    for label in ("ticks/s, full runner", "loopback TCP: tick / raw", "sample writer: rows/s, RunStore",
                  "BK 8500 over pty: driver / raw", "breach to off over TCP / ms", "summary: ours / plain pandas",
                  "TCP READ?: driver / raw", "in process, calls/s: sim-chamber: espec-chamber read()"):
        assert label in table, label
    assert f"written {out}" in table


def test_summary_py_runs_on_its_own(tmp_path):
    out = tmp_path / "summary.json"
    printed = run_script("summary.py", "--rows", "10000", "--repeats", "1", "--json", str(out))
    results = json.loads(out.read_text())
    assert results["ours"]["cycles"] == results["baseline"]["cycles"] == 1000
    assert "ours / plain pandas groupby" in printed
