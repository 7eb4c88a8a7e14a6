"""Several channels of one bench at once: own protocol, tick period, safety and run folder each;
one DAQ shared between them, scanned once per moment."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from support import QUICK, RequestAt, cycler, events_of

from stackcycler.drivers.sim.daq970a import SimDaq970a
from stackcycler.errors import ExitCode, InvalidInput
from stackcycler.live import SilentReporter
from stackcycler.session import RunRequest, execute_together, prepare

QUICK_ARGS = [arg for name, value in QUICK.items() for arg in ("--set", f"{name}={value}")]


def together(tmp_path, assignments: dict[str, str], bench: str = "sim-2ch", overrides=QUICK, reporters=None):
    runs = [prepare(RunRequest(protocol=protocol, bench=bench, channel=channel, runs_dir=tmp_path / "runs",
                               operator="pytest", overrides=dict(overrides if protocol == "capacity-check" else {})))
            for channel, protocol in assignments.items()]
    return execute_together(runs, reporters or [SilentReporter() for _ in runs])


def test_two_channels_run_together_each_with_its_own_folder_and_physics(tmp_path):
    first, second = together(tmp_path, {"stack1": "capacity-check", "stack2": "capacity-check"})
    assert first.outcome.state == second.outcome.state == "completed"
    assert first.outcome.folder != second.outcome.folder
    simulation = first.simulation
    for result, stack in ((first, "main"), (second, "second")):
        samples = pd.read_csv(result.outcome.folder / "samples.csv")
        truth = simulation.worlds[stack].stack
        assert samples["Discharging Capacity / Ah"].iloc[-1] == pytest.approx(truth.discharged_Ah, rel=0.005)
        meta = json.loads((result.outcome.folder / "run.json").read_text())
        assert meta["bench"]["channel"] == ("stack1" if stack == "main" else "stack2")
    # the two stacks are two prototypes: their data differ
    a = pd.read_csv(first.outcome.folder / "samples.csv")["Layer 07 Voltage / V"]
    b = pd.read_csv(second.outcome.folder / "samples.csv")["Layer 07 Voltage / V"]
    assert not a.head(50).equals(b.head(50))


def test_different_protocols_and_tick_periods_per_channel(tmp_path):
    bench = tmp_path / "slow-second.yaml"
    bench.write_text("extends: sim-2ch\nchannels:\n  stack2:\n    tick_s: 2.0\n")
    first, second = together(tmp_path, {"stack1": "dcir-iec61960", "stack2": "capacity-check"}, bench=str(bench))
    assert first.outcome.state == second.outcome.state == "completed"
    assert json.loads((first.outcome.folder / "run.json").read_text())["protocol"]["name"] == "dcir-iec61960"
    assert json.loads((second.outcome.folder / "run.json").read_text())["protocol"]["name"] == "capacity-check"
    times = pd.read_csv(second.outcome.folder / "samples.csv")["Test Time / s"]
    gaps = times.diff().dropna()
    assert (gaps[gaps > 0] % 2.0 == 0).all()  # stack2 ticks every 2 s, whatever stack1 does


def test_a_trip_on_one_channel_leaves_the_other_running(tmp_path):
    bench = tmp_path / "weak-second.yaml"
    bench.write_text("extends: sim-2ch\nsimulation:\n  more_stacks:\n    second:\n"
                     "      layer_capacity_scale: {7: 0.85}\n")
    first, second = together(tmp_path, {"stack1": "capacity-check", "stack2": "capacity-check"}, bench=str(bench))
    assert second.outcome.state == "tripped" and "layer 07" in second.outcome.reason
    assert first.outcome.state == "completed"
    supplies = first.simulation.instruments
    assert not supplies["supply"].output_on and not supplies["supply2"].output_on
    tripped_at = second.end_test_time_s
    assert first.end_test_time_s > tripped_at  # stack1 went on after stack2 stopped
    assert events_of(second)[-1]["event"] == "run_end"


def test_the_shared_daq_is_scanned_once_for_channels_due_together(tmp_path, monkeypatch):
    reads = {"n": 0}
    real_read = SimDaq970a._read

    def counting_read(self, args):
        reads["n"] += 1
        return real_read(self, args)

    monkeypatch.setattr(SimDaq970a, "_read", counting_read)
    first, second = together(tmp_path, {"stack1": "capacity-check", "stack2": "capacity-check"})
    ticks = sum(int(r.end_test_time_s) for r in (first, second))  # 1 s ticks
    assert 0 < reads["n"] < 0.6 * ticks  # one scan per moment for both, plus the few after a switch


def test_channels_that_share_a_supply_are_refused(tmp_path):
    bench = tmp_path / "one-supply.yaml"
    bench.write_text("extends: sim-2ch\nchannels:\n  stack2:\n    supply: supply\n")
    with pytest.raises(InvalidInput, match="channels 'stack1' and 'stack2' both use supply 'supply'"):
        together(tmp_path, {"stack1": "capacity-check", "stack2": "capacity-check"}, bench=str(bench))
    assert not (tmp_path / "runs").exists()


def test_the_cli_runs_chosen_channels_and_reports_the_most_serious_ending(tmp_path):
    code, output = cycler("run", "capacity-check", "--bench", "sim-2ch", "--channel", "all", *QUICK_ARGS, cwd=tmp_path)
    assert code == ExitCode.COMPLETED, output
    assert output.count("run folder: ") == 2 and "[stack1] start step 1/4" in output and "[stack2]" in output
    bench = tmp_path / "weak-second.yaml"
    bench.write_text("extends: sim-2ch\nsimulation:\n  more_stacks:\n    second:\n"
                     "      layer_capacity_scale: {7: 0.85}\n")
    code, output = cycler("run", "stack1=capacity-check", "stack2=capacity-check", "--bench", str(bench),
                          *QUICK_ARGS, cwd=tmp_path)
    assert code == ExitCode.SAFETY_TRIP
    assert "SAFETY TRIP: max_layer_voltage_V on layer 07" in output and "result: discharge capacity" in output


def test_an_operator_stop_ends_only_its_own_channel(tmp_path):
    stop_stack2 = RequestAt(lambda: next((tmp_path / "runs").glob("*_stack2")), (300.0, "stop"))
    first, second = together(tmp_path, {"stack1": "capacity-check", "stack2": "capacity-check"},
                             reporters=[SilentReporter(), stop_stack2])
    assert second.outcome.state == "interrupted" and second.outcome.reason == "stopped by operator"
    assert first.outcome.state == "completed"
