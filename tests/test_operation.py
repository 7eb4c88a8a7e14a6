"""Operating a running test from another terminal: status, pause, continue, stop."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pandas as pd
import pytest
from support import RequestAt, data_rows, events_of, start_logging_run

from stackcycler.errors import ExitCode
from stackcycler.live import SilentReporter
from stackcycler.operation import find_run, list_runs, run_state


def cycler_process(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stackcycler", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def newest_run(tmp_path):
    return sorted((tmp_path / "runs").iterdir())[-1]


def test_pause_rests_the_channel_and_holds_the_step_clock(run_text, tmp_path):
    protocol = """
name: timed
record: {time_s: 1}
steps:
  - {step: cc, name: charge, current_A: 1.0, until: [{step_time_s: 600}]}
  - {step: rest, name: rest, duration_s: 60}
"""
    reporter = RequestAt(lambda: newest_run(tmp_path), (200.0, "pause"), (260.0, "continue"))
    result = run_text(protocol, reporter=reporter)
    assert result.outcome.state == "completed"
    samples = pd.read_csv(result.outcome.folder / "samples.csv")
    events = events_of(result)
    paused = next(e for e in events if e["event"] == "paused")
    continued = next(e for e in events if e["event"] == "continued")
    held_s = continued["held_s"]
    assert held_s >= 60
    # the charge step still lasted its 600 s of step time: the pause is not counted in it
    charge_end = next(e for e in events if e["event"] == "step_end" and e["step"] == 1)
    assert charge_end["step_time_s"] == pytest.approx(600, abs=1.0)
    assert charge_end["test_time_s"] == pytest.approx(600 + held_s, abs=1.5)
    on_hold = samples[(samples["Test Time / s"] > paused["test_time_s"] + 1)
                      & (samples["Test Time / s"] < continued["test_time_s"])]
    assert len(on_hold) > 30  # safety and recording went on
    assert on_hold["Current / A"].abs().max() < 0.01  # output off
    assert on_hold["Step Time / s"].nunique() == 1  # the step clock stood still
    assert on_hold["Step ID"].eq(1).all()
    after = samples[samples["Test Time / s"] > continued["test_time_s"] + 2]
    assert after[after["Step ID"] == 1]["Current / A"].iloc[0] == pytest.approx(1.0, abs=0.01)
    # the charge counted is the current's, on hold or not: 600 s at 1 A
    assert samples["Charging Capacity / Ah"].iloc[-1] == pytest.approx(600 / 3600, rel=0.01)


def test_stop_ends_in_the_safe_state_stopped_by_operator(run_protocol, tmp_path):
    reporter = RequestAt(lambda: newest_run(tmp_path), (300.0, "stop"))
    result = run_protocol(reporter=reporter)
    outcome = result.outcome
    assert outcome.state == "interrupted" and outcome.exit_code == ExitCode.INTERRUPTED
    assert outcome.reason == "stopped by operator" and outcome.outputs_confirmed_off
    assert not result.simulation.instruments["supply"].output_on
    status = json.loads((outcome.folder / "status.json").read_text())
    assert status["state"] == "interrupted" and status["outputs_confirmed_off"] is True
    assert run_state(outcome.folder).state == "interrupted"


def test_a_request_left_from_before_a_resume_is_not_acted_on_again(run_protocol, tmp_path):
    from stackcycler.session import resume

    first = run_protocol(reporter=RequestAt(lambda: newest_run(tmp_path), (300.0, "stop")))
    folder = first.outcome.folder
    result = resume(folder, SilentReporter(), confirm=lambda preview: True)
    assert result.outcome.state == "completed"
    assert [e["request"] for e in events_of(folder) if e["event"] == "operator_request"] == ["stop"]


def test_status_pause_continue_stop_from_another_process(tmp_path):
    process, samples = start_logging_run(tmp_path, 5, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        folder = samples.parent
        listing = cycler_process("status", cwd=tmp_path)
        assert listing.returncode == 0
        assert folder.name in listing.stdout and " running " in listing.stdout

        one = cycler_process("status", folder.name[-20:], "--json", cwd=tmp_path)  # a piece of the name will do
        status = json.loads(one.stdout)
        assert status["state"] == "running" and status["protocol"] == "capacity-check"
        live = status["status"]
        for field in ("step", "step_time_s", "voltage_V", "current_A", "layers", "temperatures_degC",
                      "pressure_MPa", "cycle", "cycle_discharge_Ah", "test_time_s", "remaining_s", "eta"):
            assert field in live, field
        assert live["layers"]["min_V"] <= live["layers"]["max_V"] and 1 <= live["layers"]["lowest"] <= 23

        text = cycler_process("status", str(folder), cwd=tmp_path).stdout
        for label in ("step 1 'charge'", "voltage:", "layers: min", "pressure:", "progress:", "ETA"):
            assert label in text, label

        paused = cycler_process("pause", folder.name, cwd=tmp_path)
        assert paused.returncode == 0 and "paused" in paused.stdout
        assert run_state(folder).state == "paused"
        rows = len(data_rows(samples))
        while len(data_rows(samples)) < rows + 5:  # recording goes on while paused
            time.sleep(0.05)
        held = pd.read_csv(samples).iloc[rows + 1:]
        assert held["Current / A"].abs().max() < 0.01

        assert cycler_process("continue", folder.name, cwd=tmp_path).returncode == 0
        assert run_state(folder).state == "running"

        stopped = cycler_process("stop", folder.name, cwd=tmp_path)
        assert stopped.returncode == 0 and "off (confirmed)" in stopped.stdout
        output, _ = process.communicate(timeout=30)
        assert process.returncode == ExitCode.INTERRUPTED
        assert "stopped by operator" in output
    finally:
        process.kill()
    meta = json.loads((folder / "run.json").read_text())
    assert meta["state"] == "interrupted" and meta["reason"] == "stopped by operator"
    assert meta["outputs_confirmed_off"] is True
    kinds = [e["event"] for e in events_of(folder)]
    assert kinds.index("paused") < kinds.index("continued") < kinds.index("interrupted") < kinds.index("safe_state")


def test_a_killed_run_shows_as_crashed_and_refuses_requests(tmp_path):
    process, samples = start_logging_run(tmp_path, 5, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    process.kill()
    process.wait(timeout=30)
    folder = samples.parent
    assert run_state(folder).state == "crashed"
    assert [run.state for run in list_runs(tmp_path / "runs")] == ["crashed"]
    refused = cycler_process("pause", folder.name, cwd=tmp_path)
    assert refused.returncode == ExitCode.INVALID_INPUT
    assert "crashed" in refused.stderr and "cycler resume" in refused.stderr


def test_a_run_name_must_be_unambiguous(tmp_path):
    runs = tmp_path / "runs"
    for name in ("20261123-100000_capacity-check_sim_stack1", "20261123-110000_capacity-check_sim_stack1"):
        (runs / name).mkdir(parents=True)
        (runs / name / "run.json").write_text(json.dumps({"state": "completed"}))
    assert find_run("100000", runs).name.startswith("20261123-100000")
    with pytest.raises(Exception, match="matches 2 runs"):
        find_run("capacity-check", runs)
    with pytest.raises(Exception, match="no run 'gitt'"):
        find_run("gitt", runs)


# --- suspending while the environment is out of band --------------------------------------------

SUSPENDING = """
name: suspending
record: {time_s: 1}
suspend:
  pressure_MPa: {min: 4.0, max: 7.0}
  resume: %s
  clear_for_s: 30
  %s
steps:
  - {step: cc, name: charge, current_A: 1.0, until: [{step_time_s: 600}]}
  - {step: rest, name: rest, duration_s: 60}
"""


@pytest.fixture
def fixture_slips(monkeypatch):
    """The stack's fixture loses its pressure for a while: readings 150 to 300 of the load cell."""
    from stackcycler.drivers.sim.stack import StackModel

    real = StackModel.pressure_MPa
    calls = {"n": 0}

    def pressure(self):
        calls["n"] += 1
        return 2.5 if 150 <= calls["n"] < 300 else real(self)

    monkeypatch.setattr(StackModel, "pressure_MPa", pressure)


def test_out_of_band_pressure_suspends_and_the_step_continues_when_it_is_back(run_text, fixture_slips):
    result = run_text(SUSPENDING % ("automatic", ""))
    assert result.outcome.state == "completed"
    events = events_of(result)
    suspended = next(e for e in events if e["event"] == "suspended")
    cleared = next(e for e in events if e["event"] == "suspension_cleared")
    assert suspended["by"] == "pressure_MPa" and "below 4" in suspended["reason"]
    assert cleared["held_s"] >= 150 + 30 - 5  # out of band for ~150 ticks, then clear for 30 s
    samples = pd.read_csv(result.outcome.folder / "samples.csv")
    held = samples[(samples["Test Time / s"] > suspended["test_time_s"] + 1)
                   & (samples["Test Time / s"] < cleared["test_time_s"])]
    assert held["Current / A"].abs().max() < 0.01 and held["Step Time / s"].nunique() == 1
    charge_end = next(e for e in events if e["event"] == "step_end" and e["step"] == 1)
    assert charge_end["step_time_s"] == pytest.approx(600, abs=1.0)  # suspended time not in step time
    assert json.loads((result.outcome.folder / "run.json").read_text())["held_s"] == pytest.approx(cleared["held_s"])


def test_a_suspension_can_wait_for_the_operator(run_text, fixture_slips, tmp_path):
    reporter = RequestAt(lambda: newest_run(tmp_path), (800.0, "continue"))
    result = run_text(SUSPENDING % ("operator", ""), reporter=reporter)
    assert result.outcome.state == "completed"
    events = events_of(result)
    kinds = [e["event"] for e in events]
    assert kinds.index("suspended") < kinds.index("paused") < kinds.index("suspension_cleared") < kinds.index("continued")
    continued = next(e for e in events if e["event"] == "continued")
    assert continued["test_time_s"] >= 800  # held until the operator said so, long after the band was back


def test_a_suspension_longer_than_allowed_ends_the_run_safely(run_text, fixture_slips):
    result = run_text(SUSPENDING % ("automatic", "max_suspended_s: 60"))
    assert result.outcome.state == "interrupted" and result.outcome.outputs_confirmed_off
    assert "suspended longer than max_suspended_s = 60 s" in result.outcome.reason


def test_a_suspend_band_needs_an_input_to_watch(run_text, tmp_path):
    from stackcycler.errors import InvalidInput

    bench = tmp_path / "no-load-cell.yaml"
    bench.write_text("extends: sim\nchannels:\n  stack1:\n    pressure: null\n")
    with pytest.raises(InvalidInput, match="suspend.pressure_MPa: the channel has no pressure input"):
        run_text(SUSPENDING % ("automatic", ""), bench=str(bench))


@pytest.fixture
def daq_link_drops(monkeypatch):
    """The DAQ stops answering for a while (its 100th to 1000th message), then comes back."""
    from stackcycler.drivers.sim.daq970a import SimDaq970a

    real = SimDaq970a.handle
    calls = {"n": 0}

    def handle(self, message):
        calls["n"] += 1
        return None if 100 <= calls["n"] < 1000 else real(self, message)

    monkeypatch.setattr(SimDaq970a, "handle", handle)


def test_a_lost_meter_suspends_the_test_and_it_continues_when_the_meter_is_back(run_text, daq_link_drops):
    result = run_text(SUSPENDING.replace("pressure_MPa: {min: 4.0, max: 7.0}", "instrument_link_lost: true")
                      % ("automatic", ""))
    assert result.outcome.state == "completed", result.outcome.reason
    events = events_of(result)
    suspended = next(e for e in events if e["event"] == "suspended")
    assert suspended["by"] == "instrument_link" and "no answer from daq" in suspended["reason"]
    cleared = next(e for e in events if e["event"] == "suspension_cleared" and e["by"] == "instrument_link")
    samples = pd.read_csv(result.outcome.folder / "samples.csv")
    lost = samples[(samples["Test Time / s"] > suspended["test_time_s"])
                   & (samples["Test Time / s"] < cleared["test_time_s"] - 40)]
    assert len(lost) > 30
    assert lost["Layer 07 Voltage / V"].isna().all() and lost["Voltage / V"].notna().all()  # nothing made up
    assert lost["Current / A"].abs().max() < 0.01  # output off while the layers cannot be seen
    charge_end = next(e for e in events if e["event"] == "step_end" and e["step"] == 1)
    assert charge_end["step_time_s"] == pytest.approx(600, abs=1.0)
    assert samples["Layer 07 Voltage / V"].iloc[-1] > 3.0  # read again after it came back


def test_a_lost_meter_is_a_fault_unless_the_protocol_allows_suspending(run_text, daq_link_drops):
    result = run_text(SUSPENDING.replace("suspend:\n  pressure_MPa: {min: 4.0, max: 7.0}\n  resume: %s\n"
                                         "  clear_for_s: 30\n  %s\n", ""))
    assert result.outcome.state == "faulted" and "no reply" in result.outcome.reason
    assert result.outcome.outputs_confirmed_off
