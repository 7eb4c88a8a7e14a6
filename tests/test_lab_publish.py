"""Lab scale (issue 9): runs published to the shared results folder as Battery Data Format
Parquet with their metadata, and one SQL statement over the whole lab's data."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from lab_support import FAST_BENCH, QUICK_SETS, database_url, lab_of, make_host
from support import cycler

from stackcycler.catalog import RunRecord, lab_view
from stackcycler.errors import InvalidInput
from stackcycler.labquery import query
from stackcycler.publish import due_for_publishing, publish_run, run_results_folder

pytest.importorskip("duckdb")


def test_a_run_is_published_as_bdf_parquet_with_its_metadata_and_per_cycle_summary(run_protocol, tmp_path):
    folder = run_protocol(bench=FAST_BENCH).outcome.folder
    results = tmp_path / "results"
    published = publish_run(folder, results, "bench-a")

    target = run_results_folder(results, "bench-a", folder.name)
    samples = pq.read_table(published["file"]).to_pandas()
    recorded = pd.read_csv(folder / "samples.csv")
    assert len(samples) == len(recorded) == published["rows"]
    assert list(samples.columns[:3]) == ["Record Index / 1", "Test Time / s", "Unix Time / s"]
    assert samples["Current / A"].tolist() == recorded["Current / A"].tolist()  # positive = charge, as recorded
    sidecar = json.loads(next(target.glob("*.bdf.metadata.json")).read_text())
    assert sidecar["lab"] | {"published_unix_s": 0} == {
        "host": "bench-a", "run": folder.name, "run_folder": str(folder.resolve()), "state": "completed",
        "complete": True, "rows": len(recorded), "published_unix_s": 0}
    assert sidecar["test"]["protocol"]["name"] == "capacity-check" and sidecar["test_object"]["id"]
    cycles = pd.read_parquet(target / "cycles.parquet")
    summary = pd.read_csv(folder / "summary.csv")
    assert cycles["discharge_capacity_Ah"].tolist() == summary["Discharging Capacity / Ah"].tolist()
    assert json.loads((folder / "published.json").read_text())["file"] == published["file"]
    assert not (results / "host=bench-a" / ".publishing" / folder.name).exists()  # staging cleared


def test_one_statement_answers_over_every_host_and_lines_runs_up_by_column_name(run_protocol, tmp_path):
    results = tmp_path / "results"
    stack = run_protocol(bench="sim").outcome.folder  # 23 layers
    cell = run_protocol(bench=FAST_BENCH).outcome.folder  # a single cell: no layer columns
    publish_run(stack, results, "bench-a")
    publish_run(cell, results, "bench-b")

    per_host = query(results, 'SELECT host, count(*) AS rows, count("Layer 07 Voltage / V") AS layer_rows '
                              "FROM samples GROUP BY host ORDER BY host")
    stack_rows, cell_rows = (len(pd.read_csv(f / "samples.csv")) for f in (stack, cell))
    assert per_host.values.tolist() == [["bench-a", stack_rows, stack_rows], ["bench-b", cell_rows, 0]]

    code, output = cycler("lab", "query", "--results", str(results), "--json",
                          "SELECT runs.host, runs.bench, cycles.cycle, cycles.discharge_capacity_Ah FROM cycles "
                          "JOIN runs USING (host, run) ORDER BY runs.host", cwd=tmp_path)
    assert code == 0, output
    rows = json.loads(output)
    assert [(row["host"], row["bench"], row["cycle"]) for row in rows] == [("bench-a", "sim", 1),
                                                                           ("bench-b", FAST_BENCH, 1)]
    assert rows[0]["discharge_capacity_Ah"] == pytest.approx(2.04, rel=0.01)


def test_a_query_error_names_the_views(tmp_path):
    (tmp_path / "results").mkdir()
    with pytest.raises(InvalidInput, match=r"query: .*nothing is published in .* yet\. Views: samples \(BDF"):
        query(tmp_path / "results", "SELECT * FROM samples")


def _record(tmp_path: Path, state: str, published: dict | None) -> RunRecord:
    folder = tmp_path / "run"
    folder.mkdir(exist_ok=True)
    (folder / "samples.csv").write_text("Test Time / s\n")
    return RunRecord(folder, {"state": state, "run": "run"}, published)


def test_an_ended_run_is_published_once_for_its_ending(tmp_path):
    assert due_for_publishing(_record(tmp_path, "completed", None), every_s=600)
    assert due_for_publishing(_record(tmp_path, "completed", {"state": "running", "published_unix_s": 1}), 600)
    assert not due_for_publishing(_record(tmp_path, "completed", {"state": "completed", "published_unix_s": 1}), 600)


def test_a_long_run_is_published_again_every_publish_every_s_while_it_runs(tmp_path):
    now = time.time()
    assert due_for_publishing(_record(tmp_path, "running", None), every_s=600, now=now)
    assert not due_for_publishing(_record(tmp_path, "running", {"state": "running", "published_unix_s": now - 599}),
                                  every_s=600, now=now)
    assert due_for_publishing(_record(tmp_path, "running", {"state": "running", "published_unix_s": now - 600}),
                              every_s=600, now=now)
    assert not due_for_publishing(_record(tmp_path, "running", None), every_s=0, now=now)  # 0: at the end only


def test_cycler_run_on_a_lab_host_catalogues_and_publishes_its_run(tmp_path):
    results = tmp_path / "results"
    runs = make_host(tmp_path, "bench-a", database_url("sqlite", tmp_path), results=results, init_schema=True)
    code, output = cycler("run", "capacity-check", "--bench", FAST_BENCH, *QUICK_SETS, "--runs-dir", str(runs),
                          cwd=tmp_path)
    assert code == 0, output
    [folder] = [path.parent for path in runs.glob("*/run.json")]
    published = json.loads((folder / "published.json").read_text())
    assert published["complete"] and Path(published["file"]).is_file()
    config = lab_of(runs)
    [row] = lab_view(config.open_database(), config.lease_s).runs
    assert (row["run"], row["state"], row["published"], row["published_complete"]) == (
        folder.name, "completed", published["file"], 1)
