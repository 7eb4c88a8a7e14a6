"""Lab scale (issue 9): one queue in a lab database, claimed by workers on several bench hosts.

Every test that needs a database runs on both kinds: a real PostgreSQL (pgserver) and a lab
SQLite file. Worker processes stand in for bench hosts on this one computer.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from lab_support import (FAST_BENCH, OTHER_BENCH, database_url, lab_of, make_host, new_postgres_database,
                         start_worker)
from support import QUICK, cycler, wait_for

from stackcycler.errors import InvalidInput
from stackcycler.lab import migrate
from stackcycler.labconfig import load_lab_config
from stackcycler.labdb import SCHEMA_VERSION, SQLiteDatabase, SchemaMismatch
from stackcycler.live import SilentReporter
from stackcycler.queue import TestQueue
from stackcycler.store import METADATA_FILE

DATABASES = ["postgresql", "sqlite"]


def work(queue: TestQueue, **kwargs):
    """One worker pass in this process, quietly, until nothing is left that may start."""
    return queue.run(until_empty=True, log=lambda line: None, reporter=lambda item: SilentReporter(), **kwargs)


def quick(queue: TestQueue, bench: str = FAST_BENCH, **kwargs):
    return queue.add("capacity-check", bench, overrides=QUICK, **kwargs)


# --- configuration -------------------------------------------------------------------------------

def write_lab(tmp_path: Path, text: str) -> Path:
    (tmp_path / "lab.toml").write_text(text)
    return tmp_path / "runs"


def test_without_a_lab_file_the_queue_stays_embedded_beside_the_runs(tmp_path):
    queue = TestQueue(tmp_path / "runs")
    assert queue.lab is None
    assert isinstance(queue.db, SQLiteDatabase) and queue.db.path == tmp_path / "runs" / "queue.sqlite"
    assert not queue.db.shared


def test_a_database_url_of_another_kind_is_refused_naming_the_file_line_field_and_what_is_accepted(tmp_path):
    runs = write_lab(tmp_path, 'host = "bench-a"\ndatabase = "mysql://lab@db/cycler"\n')
    with pytest.raises(InvalidInput) as refused:
        load_lab_config(runs)
    message = str(refused.value)
    assert f"{tmp_path / 'lab.toml'}, line 2: 'database': 'mysql://lab@db/cycler' is not accepted" in message
    assert "postgresql://USER@HOST:PORT/DATABASE" in message and "sqlite:///" in message


def test_a_lease_shorter_than_two_heartbeats_is_refused(tmp_path):
    runs = write_lab(tmp_path, 'database = "postgresql://lab@db/cycler"\nheartbeat_s = 10\nlease_s = 15\n')
    with pytest.raises(InvalidInput, match=r"lease_s: 15 s is too short for heartbeat_s = 10 s"):
        load_lab_config(runs)


def test_an_unknown_setting_is_refused_with_the_accepted_ones(tmp_path):
    runs = write_lab(tmp_path, 'database = "postgresql://lab@db/cycler"\nresult = "/srv/results"\n')
    with pytest.raises(InvalidInput, match=r"line 2: unknown field 'result'; accepted here: database, results, host"):
        load_lab_config(runs)


def test_a_host_name_that_cannot_be_a_folder_name_is_refused(tmp_path):
    runs = write_lab(tmp_path, 'database = "postgresql://lab@db/cycler"\nhost = "bench pc/3"\n')
    with pytest.raises(InvalidInput, match=r"line 2: 'host': String should match pattern"):
        load_lab_config(runs)


def test_a_relative_results_folder_is_relative_to_the_lab_file(tmp_path):
    runs = write_lab(tmp_path, 'database = "postgresql://lab@db/cycler"\nresults = "shared/results"\n')
    assert load_lab_config(runs).results == (tmp_path / "shared" / "results").resolve()


def test_a_password_never_appears_in_messages(tmp_path):
    runs = write_lab(tmp_path, 'database = "postgresql://lab:s3cret@127.0.0.1:9/cycler"\n')
    queue = TestQueue(runs)
    assert "s3cret" not in queue.where and "lab:***@127.0.0.1" in queue.where


def test_status_lab_without_a_lab_file_says_where_it_looked(tmp_path):
    code, output = cycler("status", "--lab", cwd=tmp_path)
    assert code == 2
    assert f"no lab configuration: {tmp_path / 'lab.toml'} does not exist" in output


# --- the schema ----------------------------------------------------------------------------------

def test_a_new_lab_database_is_refused_until_lab_init_creates_the_schema(tmp_path):
    runs = make_host(tmp_path, "bench-a", new_postgres_database())
    with pytest.raises(SchemaMismatch, match="no stackcycler schema yet: create it with `cycler lab init`"):
        TestQueue(runs).pending()
    code, output = cycler("lab", "init", "--runs-dir", str(runs), cwd=tmp_path)
    assert code == 0 and f"created the lab schema, version {SCHEMA_VERSION}" in output
    assert "already set up" in cycler("lab", "init", "--runs-dir", str(runs), cwd=tmp_path)[1]
    assert lab_of(runs).open_database().schema_version() == SCHEMA_VERSION
    assert TestQueue(runs).pending() == []


@pytest.mark.parametrize("kind", DATABASES)
def test_lab_migrate_upgrades_an_older_schema_and_keeps_the_queue(tmp_path, kind):
    runs = make_host(tmp_path, "bench-a", database_url(kind, tmp_path))
    database = lab_of(runs).open_database()
    database.migrate("the previous version", up_to=1)
    with database.transaction() as session:
        session.execute("INSERT INTO items (protocol, bench, channel, position, added) VALUES (?, ?, ?, ?, ?)",
                        ("capacity-check", FAST_BENCH, "cell1", 1, time.time()))
    with pytest.raises(SchemaMismatch, match=f"schema version 1; this stackcycler needs {SCHEMA_VERSION}: run "
                                             "`cycler lab migrate`"):
        TestQueue(runs).pending()
    assert f"migrated from schema version 1 to {SCHEMA_VERSION}" in migrate(lab_of(runs))
    assert [(item.id, item.state, item.position) for item in TestQueue(runs).pending()] == [(1, "queued", 1)]
    with database.transaction() as session:
        assert [row["version"] for row in session.execute("SELECT version FROM schema_migrations ORDER BY version")] \
            == [1, 2]


def test_a_database_newer_than_this_version_is_refused(tmp_path):
    runs = make_host(tmp_path, "bench-a", new_postgres_database(), init_schema=True)
    with lab_of(runs).open_database().transaction() as session:
        session.execute("INSERT INTO schema_migrations (version, description, applied, applied_by) "
                        "VALUES (99, 'the future', 0, 'a newer host')")
    with pytest.raises(SchemaMismatch, match="schema version 99, newer than this stackcycler knows"):
        TestQueue(runs).pending()


# --- the queue on a lab database -----------------------------------------------------------------

@pytest.mark.parametrize("kind", DATABASES)
def test_the_queue_works_the_same_on_a_lab_database(tmp_path, kind):
    runs = make_host(tmp_path, "bench-a", database_url(kind, tmp_path), init_schema=True)
    queue = TestQueue(runs)
    first, second, third = (quick(queue).id for _ in range(3))
    queue.move(third, 1)
    queue.remove(second)
    assert [(i.id, i.position) for i in queue.pending()] == [(third, 1), (first, 2)]
    report = work(queue, bench=FAST_BENCH)
    assert [(item.id, item.state) for item in report.ran] == [(third, "completed"), (first, "completed")]
    done = queue.get(first)
    assert done.worker_host == "bench-a" and Path(done.run_folder).parent == runs.resolve()
    assert json.loads((Path(done.run_folder) / METADATA_FILE).read_text())["state"] == "completed"


@pytest.mark.parametrize("kind", DATABASES)
def test_three_hosts_start_every_item_once_and_only_items_of_their_benches(tmp_path, kind):
    url = database_url(kind, tmp_path)
    hosts = {"bench-a": (FAST_BENCH,), "bench-b": (FAST_BENCH,), "bench-c": (OTHER_BENCH,)}
    runs = {name: make_host(tmp_path, name, url, init_schema=name == "bench-a") for name in hosts}
    queue = TestQueue(runs["bench-a"])
    ids = {quick(queue, bench=bench).id: bench for bench in [FAST_BENCH] * 4 + [OTHER_BENCH] * 2}
    workers = [start_worker(runs[name], *benches) for name, benches in hosts.items()]
    for worker in workers:
        assert worker.wait(timeout=120) == 0, (runs["bench-a"].parent / "worker.log").read_text()

    items = {item.id: item for item in queue.history()}
    assert {item_id: item.state for item_id, item in items.items()} == {item_id: "completed" for item_id in ids}
    for item_id, bench in ids.items():
        assert bench in hosts[items[item_id].worker_host]  # each host only its benches
        assert Path(items[item_id].run_folder).parent == runs[items[item_id].worker_host].resolve()
    folders = [folder for host_runs in runs.values() for folder in host_runs.glob(f"*/{METADATA_FILE}")]
    assert len(folders) == len(ids)  # no item started twice
    starts = sum((runs[name].parent / "worker.log").read_text().count(": start capacity-check") for name in hosts)
    assert starts == len(ids)


@pytest.mark.parametrize("kind", DATABASES)
def test_a_killed_host_is_found_by_its_lease_and_its_item_resumed_on_that_host(tmp_path, kind):
    url = database_url(kind, tmp_path)
    runs_a = make_host(tmp_path, "bench-a", url, init_schema=True, heartbeat_s=0.25, lease_s=1.0)
    runs_b = make_host(tmp_path, "bench-b", url, heartbeat_s=0.25, lease_s=1.0)
    queue = TestQueue(runs_a)
    killed = queue.add("capacity-check", "sim", overrides=QUICK, on_interrupt="resume").id
    worker = start_worker(runs_a, "sim", speed="200", until_empty=False)
    try:
        wait_for(lambda: (folder := queue.get(killed).run_folder) and
                 len((Path(folder) / "samples.csv").read_text().splitlines()) > 3, "the item logging samples")
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
    assert queue.get(killed).state == "running"  # as the killed host left it

    time.sleep(1.5)  # longer than the lease
    elsewhere = work(TestQueue(runs_b), bench=OTHER_BENCH)  # another host's worker claims, and sweeps
    assert elsewhere.ran == []
    lost = queue.get(killed)
    assert lost.state == "interrupted"
    assert f"the worker (pid {worker.pid} on bench-a) stopped renewing its lease" in lost.reason

    back = work(TestQueue(runs_a), bench="sim")  # bench-a's worker starts again
    assert [item.id for item in back.interrupted_found] == [killed]
    assert [(item.id, item.state) for item in back.ran] == [(killed, "completed")]
    meta = json.loads((Path(queue.get(killed).run_folder) / METADATA_FILE).read_text())
    assert meta["state"] == "completed" and meta["resumed_times"] == 1


def test_a_host_restarted_at_once_marks_what_its_killed_worker_left_without_waiting_for_the_lease(tmp_path):
    runs = make_host(tmp_path, "bench-a", new_postgres_database(), init_schema=True, lease_s=600.0)
    queue = TestQueue(runs)
    killed = quick(queue, bench="sim").id
    worker = start_worker(runs, "sim", speed="200", until_empty=False)
    try:
        wait_for(lambda: queue.get(killed).run_folder, "the item starting")
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
    report = work(TestQueue(runs), bench="sim")
    assert [item.id for item in report.interrupted_found] == [killed]
    left = queue.get(killed)
    assert left.state == "interrupted" and f"(pid {worker.pid} on bench-a) stopped mid-item" in left.reason
    assert report.ran == []  # on-interrupt leave: for the technician


@pytest.mark.parametrize("kind", DATABASES)
def test_workers_claiming_at_the_same_moment_never_take_one_item_twice(tmp_path, kind):
    """Eight workers (threads, each with its own connection, as hosts have) claim 40 items as fast
    as they can; every item is taken exactly once."""
    import threading

    url = database_url(kind, tmp_path)
    runs = {n: make_host(tmp_path, f"bench-{n}", url, init_schema=n == 0) for n in range(8)}
    queue = TestQueue(runs[0])
    for _ in range(40):
        quick(queue)
    taken: dict[int, list[int]] = {n: [] for n in runs}

    def claim_all(n: int) -> None:
        worker_queue = TestQueue(runs[n])
        while True:
            item, _, contended, _ = worker_queue._claim((FAST_BENCH,), time.time(), f"worker-{n}")
            if item is not None:
                taken[n].append(item.id)
            elif not contended:
                return

    threads = [threading.Thread(target=claim_all, args=(n,)) for n in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    claimed = sorted(item_id for ids in taken.values() for item_id in ids)
    assert claimed == list(range(1, 41))
    assert {item.state for item in queue.items()} == {"running"}
