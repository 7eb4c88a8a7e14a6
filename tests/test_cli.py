"""The `cycler` command as a technician and a script meet it: output, exit codes, bad input, signals."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest
from support import QUICK, cycler, data_rows, events_of, start_logging_run

from stackcycler.errors import ExitCode

QUICK_ARGS = [arg for name, value in QUICK.items() for arg in ("--set", f"{name}={value}")]


def test_run_prints_the_run_folder_and_a_one_line_result(tmp_path):
    code, output = cycler("run", "capacity-check", *QUICK_ARGS, cwd=tmp_path)
    assert code == ExitCode.COMPLETED
    lines = output.splitlines()
    folder_line = next(line for line in lines if line.startswith("run folder: "))
    assert (tmp_path / folder_line.removeprefix("run folder: ") / "samples.csv").is_file()
    result = next(line for line in lines if line.startswith("result: "))
    assert "discharge capacity" in result and "Ah" in result and "Wh" in result and "coulombic efficiency" in result


def test_run_without_a_terminal_prints_timestamped_progress_lines(tmp_path):
    code, output = cycler("run", "capacity-check", *QUICK_ARGS, cwd=tmp_path)
    assert code == 0
    starts = [line for line in output.splitlines() if " start step " in line]
    assert len(starts) == 4
    assert starts[0][:4].isdigit() and starts[0][19] == "Z"  # 2026-11-23T12:00:00Z
    assert "\x1b[" not in output  # no colour codes or progress bars in logs


def test_safety_trip_exit_code_and_message(tmp_path):
    code, output = cycler("run", "capacity-check", "--bench", "sim-weak-layer", *QUICK_ARGS, cwd=tmp_path)
    assert code == ExitCode.SAFETY_TRIP
    assert "SAFETY TRIP: max_layer_voltage_V on layer 07" in output
    assert "outputs: off (confirmed)" in output


def test_help_documents_the_exit_codes(tmp_path):
    code, output = cycler("run", "--help", cwd=tmp_path)
    assert code == 0
    for text in ("0    completed", "2    invalid input", "3    safety trip", "4    instrument fault",
                 "130  interrupted"):
        assert text in output


@pytest.mark.parametrize("args, expected", [
    (["run", "capacity-chek"], ["unknown protocol 'capacity-chek'", "built-in protocols: assb-formation, ", " capacity-check, "]),
    (["run", "capacity-check", "--bench", "simm"], ["unknown bench 'simm'", "built-in benches: sim, sim-2ch, ", " sim-keithley2450, sim-n6781a, sim-n6781a-4ch, sim-weak-layer"]),
    (["run", "capacity-check", "--channel", "ch9"], ["no channel 'ch9'", "channels: stack1"]),
    (["run", "capacity-check", "--set", "charge_rat_C=1"], ["no such parameter", "charge_rate_C"]),
])
def test_bad_input_is_one_clear_line_with_exit_code_2_and_nothing_started(tmp_path, args, expected):
    code, output = cycler(*args, cwd=tmp_path)
    assert code == ExitCode.INVALID_INPUT
    error_lines = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1
    for text in expected:
        assert text in error_lines[0]
    assert not (tmp_path / "runs").exists()  # no run folder: nothing was opened or switched on


def test_a_protocol_file_that_does_not_parse_is_named_with_its_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: broken\nsteps:\n  - step: rest\n    duration_s: [60\n")
    code, output = cycler("run", str(bad), cwd=tmp_path)
    assert code == ExitCode.INVALID_INPUT
    assert f"{bad}, line 5: not valid YAML" in output or f"{bad}, line 4: not valid YAML" in output
    assert not (tmp_path / "runs").exists()


def test_an_unknown_field_is_named_with_file_line_and_accepted_fields(tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text("name: typo\nsteps:\n  - step: cc\n    curent_C: 0.5\n    until:\n      - voltage_above_V: 90\n")
    code, output = cycler("plan", str(bad), cwd=tmp_path)
    assert code == ExitCode.INVALID_INPUT
    assert f"{bad}, line 4: unknown field 'steps[0].curent_C'" in output
    assert "accepted here: name, tag, until, max_duration_s, record_time_s, step, current_A, current_C" in output


def test_plan_shows_steps_time_bounds_and_armed_limits_without_switching_anything_on(tmp_path):
    code, output = cycler("plan", "capacity-check", cwd=tmp_path)
    assert code == 0
    assert "CC +0.6666 A then CV 97.75 V" in output
    assert "6 h (default)" in output  # 2/C hours at C/3
    assert "max_layer_voltage_V = 4.4" in output
    assert not (tmp_path / "runs").exists()


def test_protocols_and_benches_are_listed(tmp_path):
    assert "capacity-check" in cycler("protocols", cwd=tmp_path)[1]
    listing = cycler("benches", cwd=tmp_path)[1]
    assert "sim " in listing and "sim-weak-layer" in listing


# --- signals, delivered to a real `cycler run` process ------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_during_a_run_ends_in_the_safe_state_and_keeps_the_data(tmp_path, signum):
    # at 100x real time the capacity check would take about five minutes: long enough to interrupt
    process, samples = start_logging_run(tmp_path, 20, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen_before_signal = float(data_rows(samples)[-1].split(",")[1])
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == ExitCode.INTERRUPTED, stderr
    assert "INTERRUPTED" in stderr and "outputs: off (confirmed)" in stderr
    folder = samples.parent
    meta = json.loads((folder / "run.json").read_text())
    assert meta["state"] == "interrupted"
    assert meta["reason"] == ("Ctrl+C" if signum == signal.SIGINT else "SIGTERM")
    kinds = [e["event"] for e in events_of(folder)]
    assert kinds[-3:] == ["interrupted", "safe_state", "run_end"]
    last_logged = float(data_rows(samples)[-1].split(",")[1])
    assert last_logged >= seen_before_signal  # nothing logged before the signal was lost


def test_a_run_killed_outright_leaves_a_readable_run_folder(tmp_path):
    """SIGKILL gives the process no chance to clean up: what it wrote must still read back."""
    from stackcycler.analysis import summarise
    from stackcycler.dataset import load

    process, samples = start_logging_run(tmp_path, 30, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows_seen = len(data_rows(samples))
    process.kill()
    process.wait(timeout=30)
    folder = samples.parent
    assert json.loads((folder / "run.json").read_text())["state"] == "running"  # it never got to say otherwise
    assert [e["event"] for e in events_of(folder)][:2] == ["instrument_watchdogs", "step_start"]
    data = load(folder)
    assert len(data.samples) >= rows_seen
    summary = summarise(data)
    assert summary["Charging Capacity / Ah"].iloc[0] > 0


def test_a_bench_wiring_more_layer_channels_than_the_simulated_stack_is_refused(tmp_path):
    bench = tmp_path / "small.yaml"
    bench.write_text("extends: sim\nsimulation:\n  stack:\n    layers: 20\n")
    code, output = cycler("run", "capacity-check", "--bench", str(bench), cwd=tmp_path)
    assert code == ExitCode.INVALID_INPUT
    assert str(bench) in output and "layer_channels wires 23 layers" in output and "stack.layers" in output
    assert not (tmp_path / "runs").exists()
