"""Shared fixtures: running protocols on the built-in simulated benches, in process."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from stackcycler.live import SilentReporter
from stackcycler.runner import StopRequest
from stackcycler.session import RunRequest, RunResult, execute, prepare

# The capacity check at 1C with one-minute rests: the same steps, a fifth of the ticks.
QUICK = {"charge_rate_C": 1.0, "discharge_rate_C": 1.0, "rest_s": 60.0}


@pytest.fixture
def run_protocol(tmp_path: Path):
    """Run a protocol on a bench in this process; returns the RunResult (with the simulated world)."""

    def run(protocol: str = "capacity-check", bench: str = "sim", overrides: dict | None = None,
            reporter=None, stop: StopRequest | None = None) -> RunResult:
        request = RunRequest(protocol=protocol, bench=bench, runs_dir=tmp_path / "runs",
                             operator="pytest", overrides=dict(QUICK if overrides is None else overrides))
        return execute(prepare(request), reporter or SilentReporter(), stop)

    return run


def samples_of(result: RunResult) -> pd.DataFrame:
    return pd.read_csv(result.outcome.folder / "samples.csv")


def events_of(result_or_folder) -> list[dict]:
    import json

    folder = getattr(getattr(result_or_folder, "outcome", None), "folder", result_or_folder)
    return [json.loads(line) for line in (Path(folder) / "events.jsonl").read_text().splitlines()]
