"""What the reliability campaign found, pinned: each was a traceback or a wrong state before."""

from __future__ import annotations

import json

import pytest
from support import ended_pid, events_of

import stackcycler.session as session
from stackcycler.bench import load_bench
from stackcycler.errors import InvalidInput
from stackcycler.live import SilentReporter


def test_a_run_killed_while_it_works_out_its_summary_has_its_ending_in_run_json(run_protocol, tmp_path, monkeypatch):
    def killed(*args, **kwargs):
        raise SystemExit(-9)  # as far as the run folder can tell, the process died here

    monkeypatch.setattr(session, "summarise", killed)
    with pytest.raises(SystemExit):
        run_protocol()
    folder = next((tmp_path / "runs").iterdir())
    meta = json.loads((folder / "run.json").read_text())
    assert (meta["state"], meta["exit_code"], meta["reason"], meta["outputs_confirmed_off"]) == (
        "completed", 0, "protocol finished", True)
    with pytest.raises(InvalidInput, match="the run ended completed"):
        session.resume(folder, SilentReporter(), confirm=lambda preview: True)


def test_a_run_killed_after_its_last_step_but_before_run_json_said_so_is_not_resumed(run_protocol):
    folder = run_protocol().outcome.folder
    assert events_of(folder)[-1]["event"] == "run_end"
    meta = json.loads((folder / "run.json").read_text())
    # the kill came before it was written (and the killed process has gone)
    (folder / "run.json").write_text(json.dumps({**meta, "state": "running", "pid": ended_pid()}))
    with pytest.raises(InvalidInput, match="the run had finished its protocol when its process stopped"):
        session.resume(folder, SilentReporter(), confirm=lambda preview: True)


@pytest.mark.parametrize("simulation, problem", [
    ("  seed: -3\n", "'simulation.seed': Input should be greater than or equal to 0"),
    ("  instruments:\n    daq: {load_cell_channel: 421}\n",
     "no DAQ channel 421: channels are slot 1 to 3 times 100 plus 1 to 20 (101 to 320)"),
])
def test_a_simulation_numpy_or_the_daq_would_choke_on_is_refused_when_the_bench_is_read(tmp_path, simulation, problem):
    path = tmp_path / "bench.yaml"
    path.write_text("extends: sim\nname: fuzzed\nsimulation:\n" + simulation)
    with pytest.raises(InvalidInput) as refused:
        load_bench(str(path))
    assert str(refused.value).startswith(str(path)) and problem in str(refused.value)
