"""Helpers shared by the tests (plain functions; fixtures live in conftest.py).

The tests folder is deliberately not a package: pytest then puts only tests/ on sys.path,
never the repository root, whose `cycler/` folder would shadow matplotlib's `cycler`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

# The capacity check at 1C with one-minute rests: the same steps, a fifth of the ticks.
QUICK = {"charge_rate_C": 1.0, "discharge_rate_C": 1.0, "rest_s": 60.0}


def samples_of(result) -> pd.DataFrame:
    return pd.read_csv(result.outcome.folder / "samples.csv")


def events_of(result_or_folder) -> list[dict]:
    folder = getattr(getattr(result_or_folder, "outcome", None), "folder", result_or_folder)
    return [json.loads(line) for line in (Path(folder) / "events.jsonl").read_text().splitlines()]
