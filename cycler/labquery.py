"""One SQL statement over the whole lab's published data (`cycler lab query`, issue 9).

DuckDB reads the results folder (publish.py's layout) in place; three views are defined:

    samples   every published sample, Battery Data Format columns ("Voltage / V", quoted in SQL),
              plus `host` and `run` (the run folder's name) from the folder names
    cycles    the per-cycle summary of every run (keys of docs/results.md: discharge_capacity_Ah,
              coulombic_efficiency, ...), plus `host` and `run`
    runs      one row per published run, from the metadata sidecars: host, run, bench, channel,
              dut, protocol, operator, state, complete, started, ended, rows, published, file

Runs with different columns (a 23-layer stack, a single cell) line up by name; a column a run
does not have is NULL there. Without DuckDB the same files are read by pyarrow; docs/lab.md
has the recipe.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from .errors import InvalidInput
from .publish import CYCLES_PATTERN, SAMPLES_PATTERN, SIDECAR_PATTERN

RUNS_COLUMNS = ("host", "run", "bench", "channel", "dut", "protocol", "operator", "state", "complete", "started",
                "ended", "rows", "published", "file")
VIEWS_HELP = ("samples (BDF columns, quoted: \"Voltage / V\"; plus host, run), cycles (per-cycle keys of "
              "docs/results.md; plus host, run), runs (" + ", ".join(RUNS_COLUMNS) + ")")


def published_runs(results: Path) -> pd.DataFrame:
    """One row per published run, from the metadata sidecars."""
    rows = []
    for sidecar in sorted(Path(results).glob(SIDECAR_PATTERN)):
        try:
            document = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # being replaced this very moment: it is read next time
        lab, test = document.get("lab") or {}, document.get("test") or {}
        published = lab.get("published_unix_s")
        rows.append({
            "host": lab.get("host"), "run": lab.get("run"),
            "bench": (test.get("bench") or {}).get("name"), "channel": (test.get("bench") or {}).get("channel"),
            "dut": (document.get("test_object") or {}).get("id"), "protocol": (test.get("protocol") or {}).get("name"),
            "operator": test.get("operator"), "state": lab.get("state"), "complete": lab.get("complete"),
            "started": test.get("started"), "ended": test.get("ended"), "rows": lab.get("rows"),
            "published": None if published is None else datetime.fromtimestamp(published, timezone.utc).isoformat(
                timespec="seconds"),
            "file": str(sidecar.parent / sidecar.name.replace(".bdf.metadata.json", ".bdf.parquet")),
        })
    return pd.DataFrame(rows, columns=list(RUNS_COLUMNS))


def _parquet(pattern: str) -> str:
    path = pattern.replace("'", "''")
    return (f"read_parquet('{path}', hive_partitioning = true, union_by_name = true, "
            "hive_types_autocast = false)")


def connect(results: Path):
    """A DuckDB connection with the views `samples`, `cycles` and `runs` over `results`."""
    try:
        import duckdb
    except ImportError:
        raise InvalidInput("cycler lab query needs DuckDB: pip install 'stackcycler[lab]' (or read the results "
                           "folder with pyarrow: docs/lab.md, 'Querying without DuckDB')") from None
    results = Path(results)
    if not results.is_dir():
        raise InvalidInput(f"results folder {results}: no such folder (lab.toml's `results`, or --results)")
    connection = duckdb.connect()
    for view, pattern in (("samples", SAMPLES_PATTERN), ("cycles", CYCLES_PATTERN)):
        if any(results.glob(pattern)):
            connection.execute(f"CREATE VIEW {view} AS SELECT * FROM {_parquet(str(results / pattern))}")
    connection.register("published_runs", published_runs(results))
    connection.execute("CREATE VIEW runs AS SELECT * FROM published_runs")
    return connection


def query(results: Path, sql: str) -> pd.DataFrame:
    """The result of one SQL statement over the lab's published data."""
    import duckdb

    connection = connect(results)
    try:
        return connection.execute(sql).df()
    except duckdb.Error as error:
        problem = str(error).strip().splitlines()[0]
        hint = "" if any(Path(results).glob(SAMPLES_PATTERN)) else f"; nothing is published in {results} yet"
        raise InvalidInput(f"query: {problem}{hint}. Views: {VIEWS_HELP}") from None
    finally:
        connection.close()
