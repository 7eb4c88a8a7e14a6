"""Fixtures: running protocols on the built-in simulated benches, in process."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import QUICK

from stackcycler import session
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


@pytest.fixture
def simulations(monkeypatch) -> list:
    """Every simulated bench the session builds, in order (a first run's, then a resume's)."""
    built = []
    real = session.build_simulation

    def recording(config, clock):
        built.append(real(config, clock))
        return built[-1]

    monkeypatch.setattr(session, "build_simulation", recording)
    return built


@pytest.fixture
def connections(monkeypatch) -> list[str]:
    """The resource of every message transport opened (each open is one connection to an instrument)."""
    opened = []
    real = session.open_transport

    def counting(resource, *args, **kwargs):
        opened.append(resource)
        return real(resource, *args, **kwargs)

    monkeypatch.setattr(session, "open_transport", counting)
    return opened
