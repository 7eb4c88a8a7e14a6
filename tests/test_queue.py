"""The test queue (issue 7): order, start times, dependencies, failure policies, workers, a night."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from support import QUICK, cycler, wait_for

from stackcycler.errors import ExitCode, InvalidInput
from stackcycler.live import SilentReporter
from stackcycler.queue import QueueBusy, TestQueue, parse_at
from stackcycler.store import METADATA_FILE

FAST_BENCH = "sim-keithley2450"  # the quickest simulated bench to run the capacity check on
NOON = datetime(2030, 6, 1, 12, 0).timestamp()


@pytest.fixture
def queue(tmp_path: Path) -> TestQueue:
    return TestQueue(tmp_path / "runs")


def work(queue: TestQueue, now: float | None = None, **kwargs):
    """One worker pass in this process, quietly, until nothing is left that may start."""
    clock = (lambda: now) if now is not None else time.time
    return queue.run(until_empty=True, now=clock, log=lambda line: None,
                     reporter=lambda item: SilentReporter(), **kwargs)


def quick(queue: TestQueue, bench: str = FAST_BENCH, **kwargs):
    return queue.add("capacity-check", bench, overrides=QUICK, **kwargs)


def test_items_run_in_the_order_they_were_added(queue):
    ids = [quick(queue).id for _ in range(3)]
    report = work(queue)
    assert [item.id for item in report.ran] == ids
    assert [item.state for item in queue.history()] == ["completed"] * 3
    assert queue.pending() == []


def test_a_completed_item_records_its_run_folder_and_result(queue):
    item = quick(queue)
    work(queue)
    done = queue.get(item.id)
    assert Path(done.run_folder).is_dir() and Path(done.run_folder).parent == queue.runs_dir.resolve()
    assert json.loads((Path(done.run_folder) / METADATA_FILE).read_text())["state"] == "completed"
    assert done.reason.startswith("discharge capacity")


def test_move_puts_an_item_at_a_position_and_keeps_the_others_in_order(queue):
    first, second, third = (quick(queue).id for _ in range(3))
    queue.move(third, 1)
    assert [(i.id, i.position) for i in queue.pending()] == [(third, 1), (first, 2), (second, 3)]
    assert [item.id for item in work(queue).ran] == [third, first, second]


def test_move_beyond_the_end_is_refused(queue):
    item = quick(queue)
    with pytest.raises(InvalidInput, match="use a position from 1 to 1"):
        queue.move(item.id, 5)


def test_removed_item_never_runs_and_stays_in_history(queue):
    first, second = quick(queue).id, quick(queue).id
    queue.remove(first)
    assert [(i.id, i.position) for i in queue.pending()] == [(second, 1)]
    assert [item.id for item in work(queue).ran] == [second]
    assert [(i.id, i.state) for i in queue.history() if i.id == first] == [(first, "removed")]
    with pytest.raises(InvalidInput, match="only a queued item is removed"):
        queue.remove(first)


def test_item_waits_for_its_start_time(queue):
    later = quick(queue, at=NOON + 3600).id
    now = quick(queue).id
    report = work(queue, now=NOON)
    assert [item.id for item in report.ran] == [now]
    assert [(item.id, why) for item, why in report.left] == [(later, "until 2030-06-01 13:00")]
    assert [item.id for item in work(queue, now=NOON + 3600).ran] == [later]


def test_at_hh_mm_means_the_next_time_the_clock_shows_it():
    assert parse_at("22:00", now=NOON) == datetime(2030, 6, 1, 22, 0).timestamp()
    assert parse_at("08:00", now=NOON) == datetime(2030, 6, 2, 8, 0).timestamp()
    assert parse_at("2030-06-03T01:30", now=NOON) == datetime(2030, 6, 3, 1, 30).timestamp()
    with pytest.raises(InvalidInput, match="write HH:MM"):
        parse_at("tonight")


def test_item_waits_for_the_item_it_comes_after(queue):
    first = quick(queue).id
    dependent = quick(queue, after=first).id
    queue.move(dependent, 1)
    report = work(queue)
    assert [item.id for item in report.ran] == [first, dependent]


def test_after_an_unknown_item_is_refused(queue):
    with pytest.raises(InvalidInput, match="--after 42: no such item"):
        quick(queue, after=42)
    assert queue.items() == []


def test_a_failure_stops_the_queue_for_its_channel_by_default(queue):
    failing = quick(queue, bench="sim-weak-layer").id
    same_channel = quick(queue, bench="sim-weak-layer").id
    elsewhere = quick(queue).id
    report = work(queue)
    assert [(i.id, i.state) for i in report.ran] == [(failing, "failed"), (elsewhere, "completed")]
    failed = queue.get(failing)
    assert failed.reason.startswith("tripped: max_layer_voltage_V on layer 07")
    assert Path(failed.run_folder).is_dir()
    skipped = queue.get(same_channel)
    assert skipped.state == "skipped" and f"item {failing}" in skipped.reason
    assert report.exit_code == ExitCode.SAFETY_TRIP


def test_a_failure_with_on_failure_skip_goes_on_and_its_dependents_wait(queue):
    failing = quick(queue, bench="sim-weak-layer", on_failure="skip").id
    dependent = quick(queue, after=failing).id
    next_one = quick(queue, bench="sim-weak-layer").id
    report = work(queue)
    assert [(i.id, i.state) for i in report.ran] == [(failing, "failed"), (next_one, "failed")]
    assert [(item.id, why) for item, why in report.left] == [
        (dependent, f"for item {failing}, which ended failed: it will not start unless re-queued")]


def test_a_typo_in_a_parameter_name_is_refused_at_add_time(queue):
    with pytest.raises(InvalidInput, match="charge_rat_C: the protocol has no such parameter"):
        queue.add("capacity-check", "sim", overrides={"charge_rat_C": 1.0})
    assert queue.items() == []


def test_a_typo_in_a_protocol_name_is_refused_at_add_time_by_the_cli(tmp_path):
    code, output = cycler("queue", "add", "capacitycheck", "--bench", "sim", cwd=tmp_path)
    assert code == ExitCode.INVALID_INPUT
    assert "unknown protocol 'capacitycheck'" in output
    assert TestQueue(tmp_path / "runs").items() == []


def _worker(cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stackcycler", "queue", "run", *args], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_a_second_worker_is_refused_naming_the_first(tmp_path):
    first = _worker(tmp_path)
    try:
        lock = tmp_path / "runs" / "queue.lock"
        wait_for(lambda: lock.exists() and lock.read_text(), "the first worker taking the queue")
        code, output = cycler("queue", "run", "--until-empty", cwd=tmp_path)
        assert code == ExitCode.INVALID_INPUT
        assert f"a worker already runs this queue (pid {first.pid} on " in output
        assert "since " in output
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == ExitCode.INTERRUPTED


def test_second_worker_in_process_raises_queue_busy(queue):
    with queue._worker_lock():
        with pytest.raises(QueueBusy, match=f"pid {os.getpid()}"):
            work(queue)


def test_a_worker_killed_mid_item_leaves_it_interrupted_and_the_next_worker_goes_on(tmp_path):
    queue = TestQueue(tmp_path / "runs")
    killed = quick(queue, bench="sim").id
    following = quick(queue).id
    worker_pid = kill_worker_mid_item(tmp_path, queue, killed)
    assert queue.get(killed).state == "running"  # as the killed worker left it

    report = work(queue)
    assert [item.id for item in report.interrupted_found] == [killed]
    assert [(item.id, item.state) for item in report.ran] == [(following, "completed")]
    interrupted = queue.get(killed)
    assert interrupted.state == "interrupted" and f"pid {worker_pid}" in interrupted.reason
    assert json.loads((Path(interrupted.run_folder) / METADATA_FILE).read_text())["state"] == "running"
    assert work(queue).ran == []  # not started again by itself


NIGHT = [  # five protocols, quick parameters, on the simulated benches
    ("capacity-check", "sim", "charge_rate_C=1", "discharge_rate_C=1", "rest_s=60"),
    ("formation", "sim-2ch", "rate_C=1", "cycles=1", "rest_s=60"),
    ("dcir-iec61960", "sim", "soc_discharge_s=600", "rest_s=60"),
    ("hppc-10s", "sim", "soc_rest_s=60"),
    ("capacity-check", FAST_BENCH, "charge_rate_C=1", "discharge_rate_C=1", "rest_s=60"),
]


def test_a_night_of_five_protocols_completes_with_five_run_folders_and_a_history(tmp_path):
    for protocol, bench, *settings in NIGHT:
        sets = [arg for setting in settings for arg in ("--set", setting)]
        code, output = cycler("queue", "add", protocol, "--bench", bench, *sets, cwd=tmp_path)
        assert code == 0, output
    code, output = cycler("queue", "list", cwd=tmp_path)
    assert len(output.splitlines()) == 5
    code, output = cycler("queue", "run", "--until-empty", "--speed", "max", cwd=tmp_path)
    assert code == 0, output
    assert "the queue is empty" in output
    folders = [folder for folder in (tmp_path / "runs").iterdir() if folder.is_dir()]
    assert len(folders) == 5
    assert all(json.loads((f / METADATA_FILE).read_text())["state"] == "completed" for f in folders)
    code, history = cycler("queue", "history", cwd=tmp_path)
    lines = history.splitlines()
    assert [line.split()[:2] for line in lines] == [[str(n), "completed"] for n in range(1, 6)]
    assert {line.split("  run ")[1].split()[0] for line in lines} == {str(f.resolve()) for f in folders}
    worker_log = (tmp_path / "runs" / "queue-worker.log").read_text().splitlines()  # the night, for the morning
    assert sum(": start " in line for line in worker_log) == 5
    assert sum(": completed, run folder " in line for line in worker_log) == 5


def test_the_queue_database_is_sqlite_in_wal_mode_beside_the_runs(queue):
    quick(queue)
    connection = sqlite3.connect(queue.runs_dir / "queue.sqlite")
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    connection.close()


def test_list_and_history_as_json_for_scripts(tmp_path):
    args = ["--runs-dir", str(tmp_path / "runs")]
    quick = [arg for name, value in QUICK.items() for arg in ("--set", f"{name}={value}")]
    assert cycler("queue", "add", "capacity-check", "--bench", "sim", *args, *quick, cwd=tmp_path)[0] == 0
    listed = json.loads(cycler("queue", "list", "--json", *args, cwd=tmp_path)[1])
    assert [(item["id"], item["state"], item["protocol"], item["bench"]) for item in listed] == [
        (1, "queued", "capacity-check", "sim")]
    assert cycler("queue", "run", "--until-empty", *args, cwd=tmp_path)[0] == 0
    history = json.loads(cycler("queue", "history", "--json", *args, cwd=tmp_path)[1])
    assert history[0]["state"] == "completed" and Path(history[0]["run_folder"]).is_dir()


def kill_worker_mid_item(tmp_path: Path, queue: TestQueue, item_id: int) -> int:
    """Start a worker process, let it log a few samples of item `item_id`, SIGKILL it; its pid."""
    worker = _worker(tmp_path, "--speed", "100")
    try:
        def logging_folder():
            folder = queue.get(item_id).run_folder
            samples = Path(folder) / "samples.csv" if folder else None
            return samples is not None and samples.exists() and len(samples.read_text().splitlines()) > 3

        wait_for(logging_folder, "the worker's item logging samples")
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
    return worker.pid


def test_an_item_whose_policy_is_resume_is_continued_by_the_next_worker(tmp_path):
    queue = TestQueue(tmp_path / "runs")
    killed = quick(queue, bench="sim", on_interrupt="resume").id
    following = quick(queue).id
    kill_worker_mid_item(tmp_path, queue, killed)

    report = work(queue)
    assert [item.id for item in report.interrupted_found] == [killed]
    assert [(item.id, item.state) for item in report.ran] == [(killed, "completed"), (following, "completed")]
    continued = queue.get(killed)
    folder = Path(continued.run_folder)
    meta = json.loads((folder / METADATA_FILE).read_text())
    assert meta["state"] == "completed" and meta["resumed_times"] == 1
    assert "resumed" in [json.loads(line)["event"] for line in (folder / "events.jsonl").read_text().splitlines()]
    assert continued.reason.startswith("discharge capacity")  # the run's one-line result
    assert len(list((tmp_path / "runs").glob("*capacity-check_sim_stack1"))) == 1  # the same run, not a new one


def test_automatic_resume_stops_after_a_few_so_a_crashing_run_cannot_loop_all_night(tmp_path):
    from stackcycler.queue import MAX_AUTOMATIC_RESUMES

    queue = TestQueue(tmp_path / "runs")
    killed = quick(queue, bench="sim", on_interrupt="resume").id
    kill_worker_mid_item(tmp_path, queue, killed)
    folder = Path(queue.get(killed).run_folder)
    meta = json.loads((folder / METADATA_FILE).read_text())
    (folder / METADATA_FILE).write_text(json.dumps({**meta, "resumed_times": MAX_AUTOMATIC_RESUMES}))

    report = work(queue)
    left = queue.get(killed)
    assert [(item.id, item.state) for item in report.ran] == [(killed, "interrupted")]
    assert f"resumed {MAX_AUTOMATIC_RESUMES} times already" in left.reason
    assert json.loads((folder / METADATA_FILE).read_text())["state"] == "running"  # untouched: nothing resumed


def test_an_unknown_interruption_policy_is_refused(queue):
    with pytest.raises(InvalidInput, match="--on-interrupt 'retry': use one of leave, resume"):
        quick(queue, on_interrupt="retry")
