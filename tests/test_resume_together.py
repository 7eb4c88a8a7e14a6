"""`cycler resume RUN RUN ...`: the channels of one multi-channel run, crashed together, continue
together in one process, as they ran: one open bench (the shared DAQ opened once), each runner from
its own checkpoint, each simulated stack from its own channel's checkpoint, one confirmation for
all, and nothing switched on anywhere while any channel's DUT is not where its run left it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import QUICK, StopAfter, assert_continuous, cycler, events_of, killed_once_logging

from stackcycler import session
from stackcycler.errors import ExitCode, InvalidInput
from stackcycler.live import SilentReporter
from stackcycler.runner import StopRequest
from stackcycler.session import (RESUME_VOLTAGE_TOLERANCE, RunRequest, execute, execute_together, prepare, resume,
                                 resume_together)

# Four short cycles: a kill lands well inside them, and the cycle count has somewhere to go after it.
SHORT_CYCLES = """\
name: short-cycles
description: four short cycles of 1C charge and discharge
record: {time_s: 10}
steps:
  - repeat: 4
    name: cycles
    steps:
      - {step: cc, name: charge, current_C: 1, until: [{step_time_s: 300}]}
      - {step: cc, name: discharge, current_C: -1, until: [{step_time_s: 240}]}
      - {step: rest, name: rest, duration_s: 60}
      - {step: next_cycle}
"""

# A short charge, a rest, then a long charge: a checkpoint from the rest and one from the second
# charge hold a stack at very different states of charge.
REST_THEN_CHARGE = """\
name: rest-then-charge
description: a short charge, a rest, then a charge at 1C
record: {time_s: 10}
steps:
  - {step: cc, name: first charge, current_C: 1, until: [{step_time_s: 60}]}
  - {step: rest, name: rest, duration_s: 300}
  - {step: cc, name: charge, current_C: 1, until: [{step_time_s: 1200}]}
"""

STACK_OF = {"stack1": "main", "stack2": "second"}


def run_together_until(tmp_path: Path, ticks: int, protocol: str = "capacity-check", bench: str = "sim-2ch",
                       reporters: dict | None = None) -> dict[str, Path]:
    """stack1 and stack2 run together and are stopped (as by SIGTERM) after `ticks` ticks; channel -> folder."""
    stop = StopRequest()
    overrides = QUICK if protocol == "capacity-check" else {}
    runs = [prepare(RunRequest(protocol=protocol, bench=bench, channel=channel, runs_dir=tmp_path / "runs",
                               operator="pytest", overrides=dict(overrides)))
            for channel in ("stack1", "stack2")]
    chosen = {"stack1": StopAfter(stop, ticks), "stack2": SilentReporter(), **(reporters or {})}
    results = execute_together(runs, [chosen["stack1"], chosen["stack2"]], stop)
    assert [r.outcome.state for r in results] == ["interrupted", "interrupted"]
    return {channel: result.outcome.folder for channel, result in zip(("stack1", "stack2"), results)}


def interrupted_alone(tmp_path: Path, channel: str, bench: str = "sim-2ch") -> Path:
    stop = StopRequest()
    request = RunRequest(protocol="capacity-check", bench=bench, channel=channel, runs_dir=tmp_path / "runs",
                         operator="pytest", overrides=dict(QUICK))
    result = execute(prepare(request), StopAfter(stop, 300), stop)
    assert result.outcome.state == "interrupted"
    return result.outcome.folder


def silent(channel: str) -> SilentReporter:
    return SilentReporter()


def untouched(*folders: Path) -> dict[Path, tuple[str, str]]:
    """What a refused or declined resume must leave exactly as it was."""
    return {folder: ((folder / "samples.csv").read_text(), json.loads((folder / "run.json").read_text())["state"])
            for folder in folders}


# --- killed together, resumed together from the command line -----------------------------------------


def test_two_channels_killed_together_resume_together_and_complete(tmp_path, simulations, connections):
    protocol = tmp_path / "short-cycles.yaml"
    protocol.write_text(SHORT_CYCLES)
    process = subprocess.Popen([sys.executable, "-m", "stackcycler", "run", str(protocol), "--bench", "sim-2ch",
                                "--channel", "all", "--speed", "100"],
                               cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folders = killed_once_logging(tmp_path, process, ("stack1", "stack2"), 90)  # into the 2nd cycle (~60 rows each)
    checkpoints = {channel: json.loads((folder / "checkpoint.json").read_text()) for channel, folder in folders.items()}
    assert all(checkpoint["cycle_count"] >= 2 for checkpoint in checkpoints.values())

    code, output = cycler("resume", str(folders["stack1"]), str(folders["stack2"]), "--yes", "--speed", "max",
                          cwd=tmp_path)

    assert code == ExitCode.COMPLETED, output
    assert connections.count("sim://daq") == 1  # one open bench: the shared DAQ opened once, for both
    assert len(simulations) == 1
    for channel, folder in folders.items():
        checkpoint = checkpoints[channel]
        samples = assert_continuous(folder)  # record indices 1..N: nothing lost twice, nothing written twice
        resumed = [e for e in events_of(folder) if e["event"] == "resumed"]
        assert len(resumed) == 1 and resumed[0]["from_test_time_s"] == checkpoint["test_time_s"]
        assert resumed[0]["gap_s"] >= 1.0
        after = samples[samples["Test Time / s"] > checkpoint["test_time_s"]]
        assert after["Cycle Count / 1"].iloc[0] == checkpoint["cycle_count"]  # the count went on from the checkpoint
        assert samples["Cycle Count / 1"].iloc[-1] == 4
        # the charge and discharge counts went on from the checkpoint: they are the simulated stack's own,
        # less what its supply, still on after the kill, moved during the gap (not in the data)
        stack = simulations[0].worlds[STACK_OF[channel]].stack
        moved_Ah = checkpoint["last_sample"]["current_A"] * resumed[0]["gap_s"] / 3600
        assert samples["Charging Capacity / Ah"].iloc[-1] + max(moved_Ah, 0) == pytest.approx(stack.charged_Ah,
                                                                                              rel=0.005)
        assert samples["Discharging Capacity / Ah"].iloc[-1] + max(-moved_Ah, 0) == pytest.approx(
            stack.discharged_Ah, rel=0.005)
        meta = json.loads((folder / "run.json").read_text())
        assert meta["state"] == "completed" and meta["resumed_times"] == 1
    assert output.count("run folder: ") == 2
    assert "(channel stack1)" in output and "(channel stack2)" in output


# --- the simulated world: each stack from its own channel's checkpoint --------------------------------


class CopyCheckpointAt(SilentReporter):
    """Keeps a copy of the channel's checkpoint as it was at test time `t_s` (an older checkpoint,
    as a crash that came right after it would have left). A pause of the wall clock a few ticks
    before makes sure the runner checkpointed in between (it does so every half second of wall time)."""

    def __init__(self, folder_of, t_s: float):
        self.folder_of, self.t_s, self.copy, self.paused = folder_of, t_s, None, False

    def tick(self, status) -> None:
        if not self.paused and status.test_time_s >= self.t_s - 5:
            self.paused = True
            time.sleep(0.6)
        elif self.copy is None and status.test_time_s >= self.t_s:
            self.copy = json.loads((self.folder_of() / "checkpoint.json").read_text())


def test_each_simulated_stack_continues_from_its_own_channels_checkpoint(tmp_path, simulations):
    protocol = tmp_path / "rest-then-charge.yaml"
    protocol.write_text(REST_THEN_CHARGE)
    older = CopyCheckpointAt(lambda: next((tmp_path / "runs").glob("*_stack2")), 200.0)
    folders = run_together_until(tmp_path, 900, protocol=str(protocol), reporters={"stack2": older})
    # stack2's last checkpoint is from the rest (its supply off); stack1's from the second charge, 700 s later
    assert older.copy["step_number"] == 2 and older.copy["test_time_s"] >= 195
    assert older.copy["simulation"]["instruments"]["supply2"]["output_on"] is False
    (folders["stack2"] / "checkpoint.json").write_text(json.dumps(older.copy))
    latest = json.loads((folders["stack1"] / "checkpoint.json").read_text())
    assert latest["step_number"] == 3
    soc = {"stack1": latest["simulation"]["stacks"]["main"]["soc"],
           "stack2": older.copy["simulation"]["stacks"]["second"]["soc"]}
    # the later snapshot holds stack2 charged well past its own checkpoint: the wrong one to take it from
    assert min(latest["simulation"]["stacks"]["second"]["soc"]) > max(soc["stack2"]) + 0.05

    seen = {}

    def confirm(previews):
        world = simulations[-1].worlds
        seen.update({channel: world[stack].stack.soc.tolist() for channel, stack in STACK_OF.items()})
        return not any(preview.problems for preview in previews)

    results = resume_together([folders["stack1"], folders["stack2"]], silent, confirm)

    # both outputs were off at the checkpoints, so over the gap each layer's state of charge stood still
    assert seen["stack1"] == pytest.approx(soc["stack1"], abs=1e-6)
    assert seen["stack2"] == pytest.approx(soc["stack2"], abs=1e-6)
    assert [r.outcome.state for r in results] == ["completed", "completed"]
    for channel, result in zip(("stack1", "stack2"), results):
        samples = assert_continuous(result.outcome.folder)
        stack = result.simulation.worlds[STACK_OF[channel]].stack
        assert samples["Charging Capacity / Ah"].iloc[-1] == pytest.approx(stack.charged_Ah, rel=0.005)


def test_each_simulated_stack_carries_on_from_its_own_checkpoints_moment(tmp_path, simulations):
    """A supply that outlived the crash drove its stack for the whole gap since its own channel's
    checkpoint, not only since the latest checkpoint of any channel."""
    protocol = tmp_path / "rest-then-charge.yaml"
    protocol.write_text(REST_THEN_CHARGE)
    older = CopyCheckpointAt(lambda: next((tmp_path / "runs").glob("*_stack2")), 600.0)
    folders = run_together_until(tmp_path, 900, protocol=str(protocol), reporters={"stack2": older})
    assert older.copy["step_number"] == 3  # charging: the supply is on in the snapshot
    (folders["stack2"] / "checkpoint.json").write_text(json.dumps(older.copy))
    latest = json.loads((folders["stack1"] / "checkpoint.json").read_text())
    then = {"stack1": latest["simulation"], "stack2": older.copy["simulation"]}
    seen = {}

    def confirm(previews):
        simulation = simulations[-1]
        seen["now_s"] = simulation.world.clock.now()
        seen.update({channel: simulation.worlds[stack].stack.charged_Ah for channel, stack in STACK_OF.items()})
        seen["found_on"] = [preview.output_found_on for preview in previews]
        return False

    assert resume_together([folders["stack1"], folders["stack2"]], silent, confirm, force=True) is None
    assert seen["found_on"] == [False, True]
    assert seen["stack1"] == pytest.approx(then["stack1"]["stacks"]["main"]["charged_Ah"], abs=1e-9)
    current_A = older.copy["last_sample"]["current_A"]
    gap_s = seen["now_s"] - then["stack2"]["time_s"]
    assert gap_s > 250  # from stack2's checkpoint to the moment both continue
    assert seen["stack2"] == pytest.approx(then["stack2"]["stacks"]["second"]["charged_Ah"] + current_A * gap_s / 3600,
                                           rel=1e-3)


# --- previews, one confirmation, the hint -------------------------------------------------------------


def test_the_preview_lists_every_channel_and_one_answer_decides_for_all(tmp_path):
    folders = run_together_until(tmp_path, 300)
    before = untouched(*folders.values())
    asked = []
    assert resume_together(list(folders.values()), silent, lambda previews: asked.append(previews) or False) is None
    assert len(asked) == 1  # one question for all
    assert [preview.channel for preview in asked[0]] == ["stack1", "stack2"]
    for preview, folder in zip(asked[0], folders.values()):
        assert preview.folder == folder and not preview.problems and not preview.notes
        checkpoint = json.loads((folder / "checkpoint.json").read_text())
        assert preview.step.number == checkpoint["step_number"] and preview.cycle == checkpoint["cycle_count"]
    assert untouched(*folders.values()) == before  # declined: nothing switched on, nothing written


def test_the_command_shows_every_channels_preview_before_it_asks(tmp_path):
    folders = run_together_until(tmp_path, 300)
    before = untouched(*folders.values())
    code, output = cycler("resume", str(folders["stack1"]), str(folders["stack2"]), cwd=tmp_path)
    assert code == ExitCode.INVALID_INPUT and "pass --yes" in output  # no terminal to ask on
    for channel, folder in folders.items():
        assert f"resume {folder.name} (channel {channel})" in output
    assert output.count("continue at step") == 2 and output.count("stack voltage at the checkpoint") == 2
    assert untouched(*folders.values()) == before


def test_resuming_one_of_two_crashed_channels_hints_at_the_other(tmp_path):
    folders = run_together_until(tmp_path, 300)
    previews = []
    assert resume(folders["stack1"], SilentReporter(), lambda preview: previews.append(preview) or False) is None
    (note,) = previews[0].notes
    assert "channel stack2" in note and folders["stack2"].name in note
    assert f"cycler resume {folders['stack1']} {folders['stack2']}" in note
    code, output = cycler("resume", str(folders["stack2"]), cwd=tmp_path)
    assert "note: channel stack1 ran together with this run" in output and folders["stack1"].name in output


def test_the_hint_is_not_given_for_a_sibling_that_cannot_be_resumed(tmp_path):
    folders = run_together_until(tmp_path, 300)
    meta_path = folders["stack2"] / "run.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "state": "completed"}))
    previews = []
    resume(folders["stack1"], SilentReporter(), lambda preview: previews.append(preview) or False)
    assert previews[0].notes == []


def test_the_hint_names_a_sibling_whose_host_went_quiet_as_resume_would_take_it(tmp_path):
    # run.json still says running, on another machine, and its heartbeat is long stale: `cycler
    # resume` takes such a run (it cannot see the process), so the hint must name it too.
    folders = run_together_until(tmp_path, 300)
    meta_path, status_path = folders["stack2"] / "run.json", folders["stack2"] / "status.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "state": "running", "host": "another-bench-pc", "pid": 1}))
    status = json.loads(status_path.read_text())
    status_path.write_text(json.dumps({**status, "heartbeat_unix_s": time.time() - 3600}))
    assert session.run_state(folders["stack2"]).state == "no heartbeat"
    previews = []
    resume(folders["stack1"], SilentReporter(), lambda preview: previews.append(preview) or False)
    (note,) = previews[0].notes
    assert "channel stack2" in note and folders["stack2"].name in note


def test_a_hinted_run_still_resumes_alone(tmp_path):
    folders = run_together_until(tmp_path, 300)
    result = resume(folders["stack1"], SilentReporter(), lambda preview: True)
    assert result.outcome.state == "completed"
    assert json.loads((folders["stack2"] / "run.json").read_text())["state"] == "interrupted"


# --- refusals: nothing opened, or nothing switched on ---------------------------------------------------


def test_runs_of_different_benches_are_refused(tmp_path):
    folders = run_together_until(tmp_path, 300)
    other = interrupted_alone(tmp_path, "stack1", bench="sim")
    with pytest.raises(InvalidInput, match="only runs of one bench are resumed together") as refused:
        resume_together([folders["stack1"], other], silent, lambda previews: True)
    assert str(folders["stack1"]) in str(refused.value) and str(other) in str(refused.value)
    code, output = cycler("resume", str(other), str(folders["stack2"]), "--yes", cwd=tmp_path)
    assert code == ExitCode.INVALID_INPUT and "bench 'sim'" in output and "bench 'sim-2ch'" in output


def test_the_same_folder_twice_is_refused(tmp_path):
    folders = run_together_until(tmp_path, 300)
    with pytest.raises(InvalidInput, match="named twice"):
        resume_together([folders["stack1"], folders["stack1"]], silent, lambda previews: True)


def test_two_runs_of_the_same_channel_are_refused(tmp_path):
    first = interrupted_alone(tmp_path, "stack1")
    second = interrupted_alone(tmp_path, "stack1")
    with pytest.raises(InvalidInput, match="both ran on channel 'stack1'"):
        resume_together([first, second], silent, lambda previews: True)


def test_runs_not_started_together_are_refused(tmp_path):
    first = interrupted_alone(tmp_path, "stack1")
    time.sleep(1.5)
    second = interrupted_alone(tmp_path, "stack2")
    with pytest.raises(InvalidInput, match="were not started together"):
        resume_together([first, second], silent, lambda previews: True)


def test_a_folder_that_is_not_resumable_is_refused_with_the_single_resume_message(tmp_path):
    folders = run_together_until(tmp_path, 300)
    meta_path = folders["stack2"] / "run.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "state": "completed"}))
    before = untouched(folders["stack1"])
    with pytest.raises(InvalidInput, match=f"{folders['stack2'].name}: the run ended completed"):
        resume_together(list(folders.values()), silent, lambda previews: True)
    assert untouched(folders["stack1"]) == before


def test_one_inconsistent_dut_switches_nothing_on_anywhere_unless_forced(tmp_path, simulations):
    folders = run_together_until(tmp_path, 300)
    path = folders["stack2"] / "checkpoint.json"
    checkpoint = json.loads(path.read_text())
    checkpoint["last_sample"]["voltage_V"] *= 1 + 2 * RESUME_VOLTAGE_TOLERANCE  # a different stack on stack2
    path.write_text(json.dumps(checkpoint))
    before = untouched(*folders.values())
    asked = []
    with pytest.raises(InvalidInput, match="resume refused: the DUT of channel stack2") as refused:
        resume_together(list(folders.values()), silent, lambda previews: asked.append(previews) or True)
    assert not asked
    assert "(channel stack1)" in str(refused.value) and "NOT CONSISTENT: the stack voltage moved" in str(refused.value)
    instruments = simulations[-1].instruments
    assert not instruments["supply"].output_on and not instruments["supply2"].output_on
    assert untouched(*folders.values()) == before

    results = resume_together(list(folders.values()), silent, lambda previews: True, force=True)
    assert [r.outcome.state for r in results] == ["completed", "completed"]
    forced = {channel: next(e for e in events_of(folder) if e["event"] == "resumed")["forced"]
              for channel, folder in folders.items()}
    assert forced == {"stack1": False, "stack2": True}


def test_runs_at_different_speeds_need_a_speed(tmp_path):
    folders = run_together_until(tmp_path, 300)
    meta_path = folders["stack2"] / "run.json"
    meta = json.loads(meta_path.read_text())
    meta["bench"]["speed"] = 60
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(InvalidInput, match="different speeds"):
        resume_together(list(folders.values()), silent, lambda previews: False)
    assert resume_together(list(folders.values()), silent, lambda previews: False, speed=None) is None


def test_a_stop_during_a_resume_together_ends_every_channel_safely(tmp_path, simulations):
    folders = run_together_until(tmp_path, 300)
    stop = StopRequest()
    results = resume_together(list(folders.values()),
                              lambda channel: StopAfter(stop, 50) if channel == "stack1" else SilentReporter(),
                              lambda previews: True, stop)
    assert [r.outcome.state for r in results] == ["interrupted", "interrupted"]
    assert all(r.outcome.outputs_confirmed_off for r in results)
    instruments = simulations[-1].instruments
    assert not instruments["supply"].output_on and not instruments["supply2"].output_on
    for folder in folders.values():
        assert_continuous(folder)
        assert json.loads((folder / "run.json").read_text())["state"] == "interrupted"
