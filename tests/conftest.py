"""Fixtures: running protocols on the built-in simulated benches, in process."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import QUICK

from stackcycler.live import SilentReporter
from stackcycler.runner import StopRequest
from stackcycler.session import RunRequest, RunResult, execute, prepare


@pytest.fixture
def run_protocol(tmp_path: Path):
    """Run a protocol on a bench in this process; returns the RunResult (with the simulated world)."""

    def run(protocol: str = "capacity-check", bench: str = "sim", overrides: dict | None = None,
            reporter=None, stop: StopRequest | None = None) -> RunResult:
        request = RunRequest(protocol=protocol, bench=bench, runs_dir=tmp_path / "runs",
                             operator="pytest", overrides=dict(QUICK if overrides is None else overrides))
        return execute(prepare(request), reporter or SilentReporter(), stop)

    return run


@pytest.fixture
def run_text(tmp_path: Path, run_protocol):
    """Run a protocol given as YAML text (written to a file beside the test's runs)."""
    counter = {"n": 0}

    def run(text: str, bench: str = "sim", **kwargs) -> RunResult:
        counter["n"] += 1
        path = tmp_path / f"protocol-{counter['n']}.yaml"
        path.write_text(text)
        return run_protocol(protocol=str(path), bench=bench, overrides=kwargs.pop("overrides", {}), **kwargs)

    return run
