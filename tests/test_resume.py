"""Crash safety and `cycler resume`: the same step, loops, cycle and counts after a crash; no lost
rows beyond the last half second, no duplicated rows; refusals when resuming would be wrong."""

from __future__ import annotations

import errno
import json
import random
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from support import StopAfter, assert_continuous, data_rows, events_of, start_logging_run

from stackcycler.errors import ExitCode, InvalidInput
from stackcycler.live import SilentReporter
from stackcycler.runner import StopRequest
from stackcycler.session import RESUME_VOLTAGE_TOLERANCE, resume


def interrupted_run(run_protocol, ticks: int = 2000):
    stop = StopRequest()
    first = run_protocol(reporter=StopAfter(stop, ticks), stop=stop)
    assert first.outcome.state == "interrupted"
    return first.outcome.folder


def test_an_interrupted_run_resumes_where_it_stopped_and_completes(run_protocol):
    folder = interrupted_run(run_protocol)
    checkpoint = json.loads((folder / "checkpoint.json").read_text())
    rows_before = len(pd.read_csv(folder / "samples.csv"))
    seen = []
    result = resume(folder, SilentReporter(), confirm=lambda preview: seen.append(preview) or True)
    assert result.outcome.state == "completed"
    assert seen[0].step.number == checkpoint["step_number"] and not seen[0].problems
    samples = assert_continuous(folder)
    assert len(samples) > rows_before
    resumed = next(e for e in events_of(folder) if e["event"] == "resumed")
    assert resumed["from_test_time_s"] == checkpoint["test_time_s"] and resumed["rows_after_checkpoint_dropped"] == 0
    meta = json.loads((folder / "run.json").read_text())
    assert meta["state"] == "completed" and meta["resumed_times"] == 1
    # the counts carried over: the run's discharge is the simulated stack's own, as if never stopped
    stack = result.simulation.world.stack
    assert samples["Discharging Capacity / Ah"].iloc[-1] == pytest.approx(stack.discharged_Ah, rel=0.005)


def test_the_step_clock_holds_over_the_gap(run_protocol):
    folder = interrupted_run(run_protocol, ticks=700)  # inside the first charge
    checkpoint = json.loads((folder / "checkpoint.json").read_text())
    resume(folder, SilentReporter(), confirm=lambda preview: True)
    samples = pd.read_csv(folder / "samples.csv")
    after = samples[samples["Test Time / s"] > checkpoint["test_time_s"]]
    first = after.iloc[0]
    assert first["Test Time / s"] == checkpoint["test_time_s"] + 1.0  # one tick of gap at full speed
    assert first["Step ID"] == checkpoint["step_number"]
    assert first["Step Time / s"] == pytest.approx(checkpoint["step_time_s"])  # its clock held over the gap
    # the charge went on: the output off across the gap did not look like the end of the CV taper
    same_step = after[after["Step ID"] == checkpoint["step_number"]]
    assert same_step["Current / A"].iloc[3:].max() == pytest.approx(2.0, abs=0.01)


def test_declining_switches_nothing_on(run_protocol):
    folder = interrupted_run(run_protocol)
    before = (folder / "samples.csv").read_text()
    assert resume(folder, SilentReporter(), confirm=lambda preview: False) is None
    assert (folder / "samples.csv").read_text() == before
    assert json.loads((folder / "run.json").read_text())["state"] == "interrupted"


def test_a_completed_run_is_not_resumed(run_protocol):
    folder = run_protocol().outcome.folder
    with pytest.raises(InvalidInput, match="the run ended completed"):
        resume(folder, SilentReporter(), confirm=lambda preview: True)


def test_a_tripped_run_is_not_resumed(run_protocol):
    folder = run_protocol(bench="sim-weak-layer").outcome.folder
    with pytest.raises(InvalidInput, match="the run ended tripped"):
        resume(folder, SilentReporter(), confirm=lambda preview: True)


def test_a_dut_that_is_not_where_the_run_left_it_is_refused_unless_forced(run_protocol):
    folder = interrupted_run(run_protocol)
    path = folder / "checkpoint.json"
    checkpoint = json.loads(path.read_text())
    voltage = checkpoint["last_sample"]["voltage_V"]
    checkpoint["last_sample"]["voltage_V"] = voltage * (1 + 2 * RESUME_VOLTAGE_TOLERANCE)  # a different stack
    path.write_text(json.dumps(checkpoint))
    with pytest.raises(InvalidInput, match="the stack voltage moved .* is it the same stack"):
        resume(folder, SilentReporter(), confirm=lambda preview: True)
    result = resume(folder, SilentReporter(), confirm=lambda preview: True, force=True)
    assert result.outcome.state == "completed"
    assert next(e for e in events_of(folder) if e["event"] == "resumed")["forced"] is True


def test_a_full_disk_stops_the_run_safely_and_keeps_what_was_written(run_protocol, monkeypatch):
    from stackcycler import store

    calls = {"n": 0}
    real_fsync = store.os.fsync

    def fsync_until_the_disk_is_full(descriptor):
        calls["n"] += 1
        if calls["n"] > 15:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(descriptor)

    monkeypatch.setattr(store.os, "fsync", fsync_until_the_disk_is_full)
    result = run_protocol()
    monkeypatch.undo()
    assert result.outcome.state == "storage_failure" and result.outcome.exit_code == ExitCode.STORAGE_FAILURE
    assert "No space left on device" in result.outcome.reason
    assert not result.simulation.instruments["supply"].output_on  # the safe state came first
    assert len(pd.read_csv(result.outcome.folder / "samples.csv")) > 0


# --- kill -9 at random moments, resumed from the command line --------------------------------


def test_killed_outright_at_random_moments_and_resumed_until_done(tmp_path):
    rng = random.Random(7)
    process, samples = start_logging_run(tmp_path, 10, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = samples.parent
    process.kill()
    process.wait(timeout=30)
    for attempt in range(3):
        rows = len(data_rows(samples))
        # --force: at 100x real time, a slow start on a loaded machine lets the stack drift past the
        # resume tolerances during the gap (the supply outlives the crash); those are tested above
        log = tmp_path / f"resume-{attempt}.log"
        with open(log, "w") as output:
            resumed = subprocess.Popen([sys.executable, "-m", "stackcycler", "resume", str(folder), "--yes", "--force"],
                                       cwd=tmp_path, stdout=output, stderr=subprocess.STDOUT)
            deadline_rows = rows + rng.randint(20, 200)
            while resumed.poll() is None and len(data_rows(samples)) < deadline_rows:
                time.sleep(0.01)
            resumed.kill()
            resumed.wait(timeout=30)
        assert resumed.returncode == -signal.SIGKILL, log.read_text()  # it was running when killed
    final = subprocess.run([sys.executable, "-m", "stackcycler", "resume", str(folder), "--yes", "--speed", "max"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert final.returncode == ExitCode.COMPLETED, final.stdout + final.stderr
    assert_continuous(folder)
    events = events_of(folder)
    assert len([e for e in events if e["event"] == "resumed"]) == 4
    assert events[-1]["event"] == "run_end" and events[-1]["state"] == "completed"
    assert json.loads((folder / "run.json").read_text())["resumed_times"] == 4


def test_a_run_still_going_is_not_resumed_beside_itself(tmp_path):
    process, samples = start_logging_run(tmp_path, 10, speed="10", stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
    try:
        refused = subprocess.run([sys.executable, "-m", "stackcycler", "resume", str(samples.parent), "--yes",
                                  "--force"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert refused.returncode == ExitCode.INVALID_INPUT, refused.stdout + refused.stderr
        assert "the run is still going" in refused.stderr and f"process {process.pid}" in refused.stderr
        assert process.poll() is None  # the run itself goes on, its folder untouched by the refusal
        assert not [e for e in events_of(samples.parent) if e["event"] == "resumed"]
    finally:
        process.kill()
        process.wait(timeout=30)


def test_resume_without_a_terminal_needs_yes(run_protocol, tmp_path):
    folder = interrupted_run(run_protocol)
    done = subprocess.run([sys.executable, "-m", "stackcycler", "resume", str(folder)], cwd=tmp_path,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert done.returncode == ExitCode.INVALID_INPUT
    assert "pass --yes" in done.stderr
    assert "continue at step" in done.stdout  # it showed where it would continue, then asked nothing

