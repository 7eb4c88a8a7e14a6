"""Lab-scale benchmarks (issue 9): `python tests/benchmarks/lab.py [--quick]` prints one table and
writes tests/benchmarks/results/lab.json. Needs the `lab` extra (psycopg, pgserver, duckdb).

One PostgreSQL 16 (the pgserver wheel) on this computer, in a temporary folder, stopped at the end.

1. claim and start: N worker processes (50; forked, each with its own connection, as hosts
   have) share one queue of 10 items per worker over 10 benches (five workers per bench, so that
   they compete for rows). Each claims as a host does (TestQueue._claim: one transaction, the
   row taken with FOR UPDATE SKIP LOCKED), records the run folder as a starting run does, holds
   the item 5 ms (no protocol is run: that is not what is measured), records its ending, and
   claims again until nothing is left: every worker back to back, the worst case. Claim-and-start
   latency: from calling the claim to the run folder recorded. Then paced: each worker holds its
   item 1 s (50 claims/s offered: still far more than a lab of 50 benches whose tests last hours).
   Baseline: one worker alone on a queue of 100. The back-to-back case again on a lab SQLite
   file (every writing transaction exclusive), for comparison. With 50 processes and the
   database on 2 cores, the back-to-back figures measure mostly waiting for a core.
2. catalog updates: N processes each send the catalog rows of two runs (catalog.send, one
   transaction, as a HostAgent's heartbeat does) as fast as they can for a few seconds:
   rows/s for the whole lab, and the latency of one update. A real host sends one update per
   run every heartbeat_s (5 s): 50 hosts with two runs each need 20 rows/s.
3. lab-wide query: a life test of 5 cycles recorded every second (life-test-1c.yaml on
   sim-keithley2450, 44 k rows) is run and published once, and its published folder copied to
   make 50 runs on 50 hosts (2.2 M sample rows). Timed, each with a new DuckDB connection
   (views included): the per-cycle summary computed in SQL from every sample; the published
   per-cycle summaries (`cycles`); and, as the baseline, pyarrow reading the same columns of
   the 50 files and a pandas groupby, interleaved.

Every figure is a median over repeats (or over every claim / update), with its min and max.
Nothing here is a test: tests never assert on wall-clock speed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import pandas as pd  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from bench_common import summarise  # noqa: E402
from stackcycler.catalog import RunRecord, send  # noqa: E402
from stackcycler.labconfig import LabConfig  # noqa: E402
from stackcycler.labquery import connect  # noqa: E402
from stackcycler.live import SilentReporter  # noqa: E402
from stackcycler.publish import publish_run  # noqa: E402
from stackcycler.queue import TestQueue  # noqa: E402
from stackcycler.session import RunRequest, execute, prepare  # noqa: E402

RESULTS = HERE / "results" / "lab.json"
LIFE_TEST = HERE / "life-test-1c.yaml"
BENCHES = 10
HERD_HOLD_S = 0.005  # every worker claims again at once: the worst case, a lab-wide thundering herd
PACED_HOLD_S = 1.0  # each worker holds its item a second: 50 claims/s offered, far more than a lab makes

SQL_PER_CYCLE = """
SELECT host, run, "Cycle Count / 1" AS cycle,
       max("Charging Capacity / Ah") - min("Charging Capacity / Ah") AS charge_Ah,
       max("Discharging Capacity / Ah") - min("Discharging Capacity / Ah") AS discharge_Ah,
       max("Discharging Energy / Wh") - min("Discharging Energy / Wh") AS discharge_Wh,
       count(*) AS samples
FROM samples GROUP BY ALL ORDER BY host, run, cycle"""
SQL_CYCLES = "SELECT host, run, cycle, discharge_capacity_Ah, coulombic_efficiency FROM cycles ORDER BY host, run, cycle"
BASELINE_COLUMNS = ["Cycle Count / 1", "Charging Capacity / Ah", "Discharging Capacity / Ah", "Discharging Energy / Wh"]


@dataclass(frozen=True)
class Sizes:
    workers: int
    items_per_worker: int
    paced_items_per_worker: int
    catalog_s: float
    catalog_repeats: int
    runs: int
    life_cycles: int
    query_repeats: int


FULL = Sizes(workers=50, items_per_worker=10, paced_items_per_worker=5, catalog_s=5.0, catalog_repeats=3, runs=50, life_cycles=5, query_repeats=5)
QUICK = Sizes(workers=10, items_per_worker=5, paced_items_per_worker=3, catalog_s=2.0, catalog_repeats=2, runs=10, life_cycles=2, query_repeats=3)


# --- PostgreSQL from the wheel -------------------------------------------------------------------

def start_postgres(folder: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
    return pgserver.get_server(folder / "postgres", cleanup_mode="stop")


def new_database(server, name: str) -> str:
    import psycopg

    with psycopg.connect(server.get_uri(), autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return server.get_uri(name)


def lab(url: str, host: str) -> LabConfig:
    return LabConfig(database=url, host=host, heartbeat_s=5.0, lease_s=300.0)


# --- 1. claim and start --------------------------------------------------------------------------

def fill_queue(url: str, folder: Path, items: int, benches: int) -> None:
    queue = TestQueue(folder / "filler" / "runs", lab=lab(url, "filler"))
    queue.db.migrate("benchmark")
    now = time.time()
    with queue.db.transaction() as session:
        session.executemany("INSERT INTO items (protocol, bench, channel, position, added) VALUES (?, ?, ?, ?, ?)",
                            [("capacity-check", f"bench-type-{n % benches}", "cell1", n + 1, now) for n in range(items)])
    queue.db.close()


def claim_worker(url: str, folder: str, n: int, benches: int, hold_s: float, start, output) -> None:
    """One host's worker: claim, record the folder, hold, record the ending; until nothing is left."""
    queue = TestQueue(Path(folder) / f"bench-{n:02d}" / "runs", lab=lab(url, f"bench-{n:02d}"))
    served = (f"bench-type-{n % benches}",)
    latencies, contended_claims = [], 0
    start.wait()
    while True:
        began = time.perf_counter()
        item, _, contended, _ = queue._claim(served, time.time(), f"worker-{n}")
        if item is None:
            if contended:
                contended_claims += 1
                continue
            break
        queue._record_folder(item.id, f"/runs/bench-{n:02d}/item-{item.id}")
        latencies.append(time.perf_counter() - began)
        time.sleep(hold_s)
        queue._write_ending(item, "completed", "benchmark", None)
    output.put((n, latencies, contended_claims))


def claims(url: str, folder: Path, workers: int, items_per_worker: int, hold_s: float = HERD_HOLD_S) -> dict:
    benches = min(BENCHES, workers)
    fill_queue(url, folder, workers * items_per_worker, benches)
    context = multiprocessing.get_context("fork")
    start, output = context.Event(), context.Queue()
    processes = [context.Process(target=claim_worker, args=(url, str(folder), n, benches, hold_s, start, output))
                 for n in range(workers)]
    for process in processes:
        process.start()
    time.sleep(1.0)  # every process forked and waiting
    began = time.perf_counter()
    start.set()
    results = [output.get(timeout=600) for _ in processes]
    wall = time.perf_counter() - began
    for process in processes:
        process.join()
    latencies = [value * 1000 for _, values, _ in results for value in values]
    items = workers * items_per_worker
    assert len(latencies) == items, f"{len(latencies)} claims for {items} items"
    return {"claim_and_start_ms": summarise(latencies), "claims": len(latencies),
            "contended_retries": sum(retries for _, _, retries in results), "items_per_s": items / wall}


# --- 2. catalog updates --------------------------------------------------------------------------

def catalog_row(host: str, run: str, n: int) -> RunRecord:
    columns = {"host": host, "run": run, "folder": f"/runs/{run}", "bench": "sim-keithley2450", "channel": "cell1",
               "dut": "cell", "protocol": "capacity-check", "operator": "bench", "state": "running", "reason": None,
               "started": "2030-01-01T00:00:00+00:00", "ended": None, "step": "1 charge", "cycle": 1,
               "progress": n / 1e6, "voltage_v": 3.9, "current_a": 0.2, "test_time_s": float(n),
               "heartbeat": time.time(), "result": None, "summary": None, "published": None,
               "published_rows": None, "published_complete": None}
    return RunRecord(Path(columns["folder"]), columns, None)


def catalog_worker(url: str, n: int, duration_s: float, start, output) -> None:
    database = lab(url, f"bench-{n:02d}").open_database()
    latencies = []
    start.wait()
    deadline = time.monotonic() + duration_s
    count = 0
    while time.monotonic() < deadline:
        count += 1
        records = [catalog_row(f"bench-{n:02d}", f"run-{k}", count) for k in (1, 2)]
        began = time.perf_counter()
        with database.transaction() as session:
            send(session, records)
        latencies.append(time.perf_counter() - began)
    output.put((latencies, 2 * len(latencies)))


def catalog_updates(url: str, workers: int, duration_s: float, repeats: int) -> dict:
    database = lab(url, "setup").open_database()
    database.migrate("benchmark")
    database.close()
    context = multiprocessing.get_context("fork")
    throughputs, latencies = [], []
    for _ in range(repeats):
        start, output = context.Event(), context.Queue()
        processes = [context.Process(target=catalog_worker, args=(url, n, duration_s, start, output))
                     for n in range(workers)]
        for process in processes:
            process.start()
        time.sleep(1.0)
        start.set()
        results = [output.get(timeout=600) for _ in processes]
        for process in processes:
            process.join()
        throughputs.append(sum(rows for _, rows in results) / duration_s)
        latencies += [value * 1000 for values, _ in results for value in values]
    return {"rows_per_s": summarise(throughputs), "update_ms": summarise(latencies),
            "needed_rows_per_s": workers * 2 / 5.0}


# --- 3. the lab-wide query -----------------------------------------------------------------------

def published_lab(folder: Path, runs: int, cycles: int) -> tuple[Path, int]:
    """One real life test published, copied to `runs` runs on as many hosts; (results, sample rows)."""
    request = RunRequest(protocol=str(LIFE_TEST), bench="sim-keithley2450", runs_dir=folder / "runs",
                         overrides={"cycles": float(cycles)})
    run_folder = execute(prepare(request), SilentReporter()).outcome.folder
    results = folder / "results"
    published = publish_run(run_folder, results, "bench-00")
    source = Path(published["results"])
    for n in range(1, runs):
        copy = results / f"host=bench-{n:02d}" / source.name
        shutil.copytree(source, copy)
        sidecar = next(copy.glob("*.bdf.metadata.json"))
        document = json.loads(sidecar.read_text())
        document["lab"]["host"] = f"bench-{n:02d}"
        sidecar.write_text(json.dumps(document))
    return results, published["rows"] * runs


def timed(action) -> float:
    began = time.perf_counter()
    action()
    return time.perf_counter() - began


def duckdb_query(results: Path, sql: str) -> int:
    connection = connect(results)
    try:
        return len(connection.execute(sql).df())
    finally:
        connection.close()


def pandas_baseline(results: Path) -> int:
    frames = []
    for path in sorted(results.glob("host=*/run=*/*.bdf.parquet")):
        frame = pq.read_table(path, columns=BASELINE_COLUMNS).to_pandas()
        frame["host"], frame["run"] = path.parent.parent.name[5:], path.parent.name[4:]
        frames.append(frame)
    samples = pd.concat(frames, ignore_index=True)
    grouped = samples.groupby(["host", "run", "Cycle Count / 1"])
    summary = grouped[BASELINE_COLUMNS[1:]].max() - grouped[BASELINE_COLUMNS[1:]].min()
    return len(summary)


def lab_query(folder: Path, sizes: Sizes) -> dict:
    results, rows = published_lab(folder, sizes.runs, sizes.life_cycles)
    times = {"sql_from_samples": [], "published_cycles": [], "pandas_baseline": []}
    answers = {}
    for _ in range(sizes.query_repeats):  # interleaved
        times["sql_from_samples"].append(timed(lambda: answers.update(sql=duckdb_query(results, SQL_PER_CYCLE))))
        times["published_cycles"].append(timed(lambda: answers.update(cycles=duckdb_query(results, SQL_CYCLES))))
        times["pandas_baseline"].append(timed(lambda: answers.update(pandas=pandas_baseline(results))))
    assert answers["sql"] == answers["pandas"] == answers["cycles"], answers
    figures = {name: summarise(values) for name, values in times.items()}
    ratio = [sql / base for sql, base in zip(times["sql_from_samples"], times["pandas_baseline"])]
    return {"runs": sizes.runs, "sample_rows": rows, "cycle_rows": answers["sql"], "s": figures,
            "sql_over_pandas": summarise(ratio)}


# --- the table -----------------------------------------------------------------------------------

def figure(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.2f}" if abs(value) >= 10 else f"{value:.3f}"


def table(results: dict) -> list[tuple[str, dict]]:
    pg, lite, catalog, query = results["claims_postgresql"], results["claims_sqlite"], results["catalog"], results["query"]
    workers = results["sizes"]["workers"]
    return [
        (f"claim+start / ms, {workers} workers back to back, PostgreSQL", pg["claim_and_start_ms"]),
        (f"claim+start / ms, {workers} workers, 1 s per item, PostgreSQL", results["claims_postgresql_paced"]["claim_and_start_ms"]),
        ("claim+start / ms, 1 worker, PostgreSQL (baseline)", results["claims_postgresql_alone"]["claim_and_start_ms"]),
        (f"claim+start / ms, {workers} workers back to back, SQLite file", lite["claim_and_start_ms"]),
        (f"items claimed+ended / s, {workers} workers back to back, PostgreSQL", summarise([pg["items_per_s"]])),
        (f"items claimed+ended / s, {workers} workers back to back, SQLite", summarise([lite["items_per_s"]])),
        (f"catalog rows / s, {workers} hosts (needed {catalog['needed_rows_per_s']:g})", catalog["rows_per_s"]),
        ("catalog update (2 rows) / ms", catalog["update_ms"]),
        (f"per-cycle summary, SQL over {query['sample_rows']:,} samples / s", query["s"]["sql_from_samples"]),
        (f"published cycles of {query['runs']} runs (DuckDB) / s", query["s"]["published_cycles"]),
        ("per-cycle summary, pyarrow + pandas (baseline) / s", query["s"]["pandas_baseline"]),
        ("SQL / pandas baseline", query["sql_over_pandas"]),
    ]


def print_table(rows: list[tuple[str, dict]]) -> None:
    print(f"{'benchmark':58s} {'median':>10s} {'min':>10s} {'max':>10s} {'n':>6s}")
    for label, stats in rows:
        print(f"{label:58s} {figure(stats['median']):>10s} {figure(stats['min']):>10s} {figure(stats['max']):>10s} "
              f"{stats['n']:>6d}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 workers, 10 runs: in about a minute")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"where to write the results (default {RESULTS})")
    arguments = parser.parse_args()
    sizes = QUICK if arguments.quick else FULL
    results: dict = {"sizes": sizes.__dict__, "load_average_before": os.getloadavg(), "cpus": os.cpu_count()}
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="stackcycler-lab-bench-") as temporary:
        folder = Path(temporary)
        server = start_postgres(folder)
        results["postgresql"] = server.psql("SHOW server_version;").splitlines()[2].strip()
        results["claims_postgresql"] = claims(new_database(server, "claims"), folder / "pg", sizes.workers,
                                              sizes.items_per_worker)
        results["claims_postgresql_paced"] = claims(new_database(server, "paced"), folder / "paced", sizes.workers,
                                                    sizes.paced_items_per_worker, PACED_HOLD_S)
        results["claims_postgresql_alone"] = claims(new_database(server, "alone"), folder / "alone", 1,
                                                    sizes.items_per_worker * sizes.workers // 5)
        results["claims_sqlite"] = claims(f"sqlite:///{folder / 'lab.sqlite'}", folder / "lite", sizes.workers,
                                          sizes.items_per_worker)
        results["catalog"] = catalog_updates(new_database(server, "catalog"), sizes.workers, sizes.catalog_s,
                                             sizes.catalog_repeats)
        results["query"] = lab_query(folder / "query", sizes)
        server.cleanup()
    results["wall_s"] = time.perf_counter() - began
    results["load_average_after"] = os.getloadavg()
    rows = table(results)
    print_table(rows)
    print(f"load average before {results['load_average_before'][0]:.2f}, after {results['load_average_after'][0]:.2f}; "
          f"{results['cpus']} CPUs; {results['wall_s']:.0f} s")
    arguments.json.parent.mkdir(parents=True, exist_ok=True)
    arguments.json.write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
