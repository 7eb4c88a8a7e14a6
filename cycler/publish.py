"""Publishing a run's data to the lab's shared results folder (issue 9).

Samples stay crash-safe in the run folder on the bench host (CSV appended and checkpointed, see
store.py); a copy in Battery Data Format Parquet goes to the results folder when the run ends,
and every `publish_every_s` while a long run goes on. One folder per run, in the hive layout
that DuckDB, pyarrow and Spark read as columns:

    <results>/host=<host>/run=<run folder>/<BDF name>.bdf.parquet        samples (bdf.export)
    <results>/host=<host>/run=<run folder>/<BDF name>.bdf.metadata.json  its sidecar, plus a `lab` block
    <results>/host=<host>/run=<run folder>/cycles.parquet                per-cycle summary (analysis.py;
                                                                          keys as in docs/results.md)

Files are written into `host=<host>/.publishing/` first and moved into place one by one
(os.replace, atomic on one file system), so a reader never sees half a file. The run folder gets
`published.json` (what was published, when, in which state) for the catalog and for deciding
when to publish again.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from .analysis import SUMMARY_COLUMNS, summarise
from .bdf import default_name, export
from .catalog import PUBLISHED_FILE, RunRecord, read_published
from .dataset import load
from .errors import InvalidInput
from .operation import run_state
from .store import SAMPLES_FILE, atomic_write_text

SAMPLES_PATTERN = "host=*/run=*/*.bdf.parquet"
SIDECAR_PATTERN = "host=*/run=*/*.bdf.metadata.json"
CYCLES_FILE = "cycles.parquet"
CYCLES_PATTERN = f"host=*/run=*/{CYCLES_FILE}"
STAGING = ".publishing"


def run_results_folder(results: Path, host: str, run: str) -> Path:
    return Path(results) / f"host={host}" / f"run={run}"


def publish_run(folder: Path, results: Path, host: str) -> dict[str, Any]:
    """Publish one run folder (also while it runs); returns what published.json now says."""
    folder = Path(folder)
    state = run_state(folder)
    data = load(folder)
    target = run_results_folder(results, host, folder.name)
    staging = Path(results) / f"host={host}" / STAGING / folder.name
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    name = default_name(data) + ".bdf.parquet"
    samples, sidecar = export(data, "parquet", staging / name)
    complete = state.meta.get("state") != "running"  # ended one way or another; a crashed run may be resumed
    lab = {"host": host, "run": folder.name, "run_folder": str(folder.resolve()), "state": state.state,
           "complete": complete, "published_unix_s": time.time(), "rows": len(data.samples)}
    document = json.loads(sidecar.read_text(encoding="utf-8"))
    sidecar.write_text(json.dumps({**document, "lab": lab}, indent=1, default=str), encoding="utf-8")
    keys = {label: key for key, label in SUMMARY_COLUMNS.items()}
    summarise(data).rename(columns=keys).to_parquet(staging / CYCLES_FILE, index=False, engine="pyarrow")
    target.mkdir(parents=True, exist_ok=True)
    for file in (samples, staging / CYCLES_FILE, sidecar):  # the sidecar last: `runs` lists what is complete
        os.replace(file, target / file.name)
    shutil.rmtree(staging, ignore_errors=True)
    published = {**lab, "file": str(target / name), "results": str(target)}
    atomic_write_text(folder / PUBLISHED_FILE, json.dumps(published, indent=1) + "\n", durable=False)
    return published


def due_for_publishing(record: RunRecord, every_s: float, now: float | None = None) -> bool:
    """An ended run whose last publication is not of its ending, or a live run whose last
    publication is older than `every_s` (0: live runs are published at their end only)."""
    if not (record.folder / SAMPLES_FILE).exists():
        return False
    published = record.published
    if record.alive:
        if every_s <= 0:
            return False
        last = published.get("published_unix_s", 0.0) if published else 0.0
        return (time.time() if now is None else now) - last >= every_s
    return published is None or published.get("state") != record.columns["state"]


def publish_folders(folders: list[Path], results: Path, host: str) -> list[tuple[Path, str]]:
    """Publish each folder; the (folder, problem) of those that could not be."""
    problems = []
    for folder in folders:
        try:
            publish_run(folder, results, host)
        except (InvalidInput, OSError, ValueError) as error:
            problems.append((folder, f"{type(error).__name__}: {error}"))
    return problems


__all__ = ["publish_run", "due_for_publishing", "publish_folders", "run_results_folder", "read_published"]
