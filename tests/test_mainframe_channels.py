"""Several channels on one multi-slot instrument: sim-n6781a-4ch, four cells on the four N6781A
modules of one N6705C, each cell a channel with its own run. The slots share one connection, one
error queue and the mainframe's watchdog, which must stay armed while any cell still runs."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml
from support import StopAfter, assert_continuous, cycler, events_of, killed_once_logging

from stackcycler.bench import load_bench
from stackcycler.cli import served_bench_text
from stackcycler.clock import WallClock
from stackcycler.drivers.sim.serve import SimulationServer
from stackcycler.drivers.sim.simulation import build_simulation
from stackcycler.errors import ExitCode
from stackcycler.live import SilentReporter
from stackcycler.runner import StopRequest
from stackcycler.session import RunRequest, execute_together, prepare, resume_together

BENCH = "sim-n6781a-4ch"
CELLS = ("cell1", "cell2", "cell3", "cell4")
# Each cell a different charge, so that each run's data can be told apart; cell1 ends first.
CHARGE = """name: charge-{amps}
record: {{time_s: 1}}
steps:
  - {{step: cc, name: charge, current_A: {amps}, until: [{{step_time_s: {seconds}}}]}}
  - {{step: rest, name: rest, duration_s: 30}}
"""
PLANS = {"cell1": (0.05, 60), "cell2": (0.1, 300), "cell3": (0.15, 300), "cell4": (0.2, 300)}
STACK_OF = {"cell1": "main", "cell2": "cell2", "cell3": "cell3", "cell4": "cell4"}  # the simulated cell of each


def prepared_runs(tmp_path, cells=CELLS, bench: str = BENCH) -> list:
    runs = []
    for cell in cells:
        amps, seconds = PLANS[cell]
        protocol = tmp_path / f"{cell}.yaml"
        protocol.write_text(CHARGE.format(amps=amps, seconds=seconds))
        runs.append(prepare(RunRequest(protocol=str(protocol), bench=bench, channel=cell, runs_dir=tmp_path / "runs",
                                       operator="pytest")))
    return runs


class WatchesTheMainframe(SilentReporter):
    """Notes, at every tick of its channel, whether the mainframe's watchdog is armed."""

    def __init__(self, simulations: list):
        self.simulations, self.armed_at = simulations, {}

    def tick(self, status) -> None:
        self.armed_at[status.test_time_s] = self.simulations[-1].instruments["analyzer"].watchdog_on


def test_four_cells_on_one_mainframe_run_together_each_on_its_own_slot(tmp_path, simulations, connections):
    watchers = {cell: WatchesTheMainframe(simulations) for cell in CELLS}
    results = execute_together(prepared_runs(tmp_path), [watchers[cell] for cell in CELLS])
    assert [r.outcome.state for r in results] == ["completed"] * 4
    assert all(r.outcome.outputs_confirmed_off for r in results)
    assert connections == ["sim://analyzer"]  # one connection for the four slots
    simulation = simulations[-1]
    for cell, result in zip(CELLS, results):
        amps, seconds = PLANS[cell]
        charge = pd.read_csv(result.outcome.folder / "samples.csv")["Charging Capacity / Ah"].iloc[-1]
        assert charge == pytest.approx(amps * seconds / 3600, rel=0.01)  # its own current, on its own cell
        stack = simulation.worlds[STACK_OF[cell]].stack
        assert stack.charged_Ah == pytest.approx(charge, rel=1e-3)
        armed = [e for e in events_of(result.outcome.folder) if e["event"] == "instrument_watchdogs"]
        assert armed and armed[0]["armed_s"] == {"supply": 30.0}
    # cell1 ended after 90 s; the other three ran on for minutes, the watchdog armed at every tick
    assert max(watchers["cell1"].armed_at) < 100
    later = {t: on for cell in CELLS[1:] for t, on in watchers[cell].armed_at.items() if t > 100}
    assert len(later) > 200 and all(later.values())
    analyzer = simulation.instruments["analyzer"]
    assert analyzer.watchdog_on is False  # the last one switched it off
    assert [module.output_on for module in analyzer.modules.values()] == [False] * 4


class KeepsAnEarlyCheckpoint(SilentReporter):
    """Copies its run's checkpoint as it stands at test time `t_s` (an early one, from a charge)."""

    def __init__(self, folder_of, t_s: float):
        self.folder_of, self.t_s, self.copy = folder_of, t_s, None

    def tick(self, status) -> None:
        if self.copy is None and status.test_time_s >= self.t_s:
            self.copy = json.loads((self.folder_of() / "checkpoint.json").read_text())


def test_two_cells_of_one_mainframe_stopped_together_resume_together(tmp_path, simulations):
    stop = StopRequest()
    early = KeepsAnEarlyCheckpoint(lambda: next((tmp_path / "runs").glob("*_cell3")), 60.0)
    results = execute_together(prepared_runs(tmp_path, ("cell2", "cell3")), [StopAfter(stop, 120), early], stop)
    assert [r.outcome.state for r in results] == ["interrupted", "interrupted"]
    folders = [r.outcome.folder for r in results]
    # cell3 crashed long before cell2: its last checkpoint is an early one, the mainframe's latest is cell2's
    (folders[1] / "checkpoint.json").write_text(json.dumps(early.copy))
    then = {"cell2": json.loads((folders[0] / "checkpoint.json").read_text())["simulation"],
            "cell3": early.copy["simulation"]}
    assert then["cell2"]["stacks"]["cell3"]["charged_Ah"] > then["cell3"]["stacks"]["cell3"]["charged_Ah"] + 1e-3
    seen = {}

    def confirm(previews):
        seen.update({cell: simulations[-1].worlds[cell].stack.charged_Ah for cell in then})
        return True

    resumed = resume_together(folders, lambda channel: SilentReporter(), confirm)
    # each cell from its own channel's checkpoint, through the slot wired to it (both slots off since:
    # the stop's safe state is the mainframe's latest state)
    assert seen == {cell: pytest.approx(then[cell]["stacks"][cell]["charged_Ah"], abs=1e-12) for cell in then}
    assert [r.outcome.state for r in resumed] == ["completed", "completed"]
    for cell, folder in zip(("cell2", "cell3"), folders):
        samples = assert_continuous(folder)
        amps, seconds = PLANS[cell]
        assert samples["Charging Capacity / Ah"].iloc[-1] == pytest.approx(amps * seconds / 3600, rel=0.01)
    assert simulations[-1].instruments["analyzer"].watchdog_on is False


def test_two_cells_killed_with_their_host_are_found_tripped_by_the_watchdog_and_resume(tmp_path, simulations):
    """SIGKILL: nobody switches the slots off. Over the gap the mainframe's watchdog trips both; the
    resume's connects find the trip on each slot (the second after the first has switched the
    watchdog off), clear it with the output off, and both cells go on to the end."""
    for cell in ("cell1", "cell2"):
        (tmp_path / f"{cell}.yaml").write_text(CHARGE.format(amps=PLANS["cell2"][0], seconds=600))
    process = subprocess.Popen([sys.executable, "-m", "stackcycler", "run", f"cell1={tmp_path / 'cell1.yaml'}",
                                f"cell2={tmp_path / 'cell2.yaml'}", "--bench", BENCH, "--speed", "100"],
                               cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folders = list(killed_once_logging(tmp_path, process, ("cell1", "cell2"), 100).values())  # well into the charge
    snapshot = json.loads((folders[0] / "checkpoint.json").read_text())["simulation"]["instruments"]["analyzer"]
    assert snapshot["watchdog_on"] and snapshot["output_on"] and snapshot["more_modules"]["2"]["output_on"]

    time.sleep(0.1)  # at the resume's 1000x, the gap since the checkpoints is then >= 100 s: past the watchdog's 30 s
    code, output = cycler("resume", *map(str, folders), "--yes", "--speed", "1000", cwd=tmp_path)

    assert code == ExitCode.COMPLETED, output
    for folder in folders:
        resumed = next(e for e in events_of(folder) if e["event"] == "resumed")
        assert resumed["watchdog_trip_found"] is True and resumed["output_found_on"] is True
        assert resumed["gap_s"] > 30.0  # longer than the watchdog's delay
        samples = assert_continuous(folder)
        assert samples["Step Time / s"].max() == pytest.approx(600.0, abs=1.0)  # the charge finished its 600 s
    analyzer = simulations[-1].instruments["analyzer"]
    assert analyzer.watchdog_on is False
    # the slots of the resumed cells cleared; the trip latched the two unused ones too, and those stay
    # in protection, outputs off, until a connect to them or the front panel clears them (module notes)
    assert [(module.latched, module.output_on) for module in analyzer.modules.values()] == [(0, False)] * 2 + [
        (2048, False)] * 2


def test_a_mainframe_gone_deaf_faults_its_cells_and_its_watchdog_switches_them_off(tmp_path, simulations):
    """The one thing the cells share fails: every channel on it faults, none can switch its slot
    off, and the mainframe's own watchdog does it once the host has been silent for its delay."""
    bench = tmp_path / "deaf.yaml"
    bench.write_text(f"extends: {BENCH}\nname: deaf\nsimulation:\n  faults:\n"
                     "    - {at_s: 100, instrument: analyzer, kind: no_reply}\n")
    results = execute_together(prepared_runs(tmp_path, ("cell2", "cell3"), bench=str(bench)),
                               [SilentReporter(), SilentReporter()])
    assert [(r.outcome.state, r.outcome.exit_code) for r in results] == [("faulted", ExitCode.INSTRUMENT_FAULT)] * 2
    assert not any(r.outcome.outputs_confirmed_off for r in results)
    simulation = simulations[-1]
    analyzer = simulation.instruments["analyzer"]
    assert [analyzer.modules[slot].latched for slot in (2, 3)] == [2048] * 2
    # the watchdog switched both off 30 s after the last message the mainframe heard, before the
    # host had given up retrying: each cell charged at its own current from 0 s until exactly then
    tripped_at = analyzer.last_io_s + 30.0
    assert max(r.end_test_time_s for r in results) > tripped_at
    for cell in ("cell2", "cell3"):
        stack = simulation.worlds[cell].stack
        assert stack.current_A == 0.0
        assert stack.charged_Ah == pytest.approx(PLANS[cell][0] * tripped_at / 3600, rel=1e-3)


def test_two_cells_of_a_served_mainframe_run_together_over_one_tcp_connection(tmp_path, monkeypatch, connections):
    """As a LAN mainframe: the served bench lists the one TCP resource twice; pyvisa opens it once."""
    monkeypatch.setenv("CYCLER_LOCK_DIR", str(tmp_path / "locks"))
    loaded = load_bench(BENCH)
    with SimulationServer(build_simulation(loaded.config.simulation, WallClock())) as server:
        served = yaml.safe_load(served_bench_text(loaded, server.resources()))
        for channel in served["channels"].values():
            channel["tick_s"] = 0.25
        path = tmp_path / "served.yaml"
        path.write_text(yaml.safe_dump(served, sort_keys=False))
        protocol = tmp_path / "short.yaml"
        protocol.write_text(CHARGE.format(amps=0.1, seconds=1).replace("duration_s: 30", "duration_s: 0.5"))
        runs = [prepare(RunRequest(protocol=str(protocol), bench=str(path), channel=cell, runs_dir=tmp_path / "runs",
                                   operator="pytest")) for cell in ("cell1", "cell2")]
        results = execute_together(runs, [SilentReporter(), SilentReporter()])
        assert [(r.outcome.state, r.outcome.outputs_confirmed_off) for r in results] == [("completed", True)] * 2
        analyzer = server.simulation.instruments["analyzer"]
        assert connections == [server.resources()["analyzer"]]  # one VISA session for both slots
        assert analyzer.watchdog_on is False and not any(m.output_on for m in analyzer.modules.values())
        for cell in ("cell1", "cell2"):
            stack = server.simulation.worlds[STACK_OF[cell]].stack
            assert stack.charged_Ah == pytest.approx(0.1 * 1.0 / 3600, rel=0.3)  # its own slot charged it
        assert [server.simulation.worlds[cell].stack.charged_Ah for cell in ("cell3", "cell4")] == [0.0, 0.0]
