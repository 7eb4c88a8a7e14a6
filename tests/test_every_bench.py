"""Every built-in bench runs a short protocol end to end in all three ways of reaching its
simulators, with the same drivers: in process on the virtual clock; over loopback TCP in real
time (as LAN instruments, serial ones as raw byte streams); and, for a bench with serial
instruments, those on pseudo-terminals through pyserial as RS-232 ports. Each leaves its
outputs off."""

from __future__ import annotations

import pytest
import yaml

from stackcycler.bench import builtin_benches, load_bench
from stackcycler.cli import served_bench_text
from stackcycler.clock import WallClock
from stackcycler.drivers.registry import DRIVERS
from stackcycler.drivers.sim.serve import SimulationServer
from stackcycler.drivers.sim.simulation import build_simulation
from stackcycler.live import SilentReporter
from stackcycler.session import RunRequest, execute, prepare

# Charge, discharge, rest: exercises a supply both ways, or a source and then a load.
SHORT = """name: every-bench
record: {time_s: 0.25}
steps:
  - {step: cc, name: charge, current_C: 0.5, until: [{step_time_s: 0.75}]}
  - {step: cc, name: discharge, current_C: -0.5, until: [{step_time_s: 0.75}]}
  - {step: rest, name: rest, duration_s: 0.5}
"""
SERVED_TICK_S = 0.25  # real time over TCP: a quarter-second tick keeps each bench to a few seconds


def run_short(bench: str, tmp_path, channel: str | None = None):
    protocol = tmp_path / "short.yaml"
    protocol.write_text(SHORT)
    request = RunRequest(protocol=str(protocol), bench=bench, channel=channel, runs_dir=tmp_path / "runs",
                         operator="pytest")
    return execute(prepare(request), SilentReporter())


def assert_all_off(bench: str, instruments: dict) -> None:
    """Every simulated supply output and load input is off (chambers and meters have neither); a
    mainframe's are its modules'."""
    parts = {f"{name} slot {slot}": module for name, device in instruments.items()
             for slot, module in getattr(device, "modules", {}).items()} | instruments
    switchable = {name: getattr(device, attribute) for name, device in parts.items()
                  for attribute in ("output_on", "input_on") if hasattr(device, attribute)}
    assert switchable, f"{bench}: no simulated instrument with an output or input"
    assert not any(switchable.values()), f"{bench}: left on: {[n for n, on in switchable.items() if on]}"


def first_channel(bench: str) -> str:
    return sorted(load_bench(bench).config.channels)[0]


@pytest.mark.parametrize("bench", sorted(builtin_benches()))
def test_in_process_on_the_virtual_clock(bench, tmp_path):
    result = run_short(bench, tmp_path, first_channel(bench))
    assert result.outcome.state == "completed", result.outcome.reason
    assert result.outcome.outputs_confirmed_off
    assert_all_off(bench, result.simulation.instruments)


def serial_benches() -> list[str]:
    return sorted(name for name in builtin_benches()
                  if any(DRIVERS[i.driver].BYTE_PROTOCOL for i in load_bench(name).config.instruments.values()))


def test_the_serial_benches_are_the_ones_with_a_load_or_chamber_on_a_serial_line():
    assert serial_benches() == ["sim-chamber", "sim-e36312a-bk8500"]


@pytest.mark.parametrize("bench, serial", [(b, "tcp") for b in sorted(builtin_benches())]
                         + [(b, "pty") for b in serial_benches()])
def test_served_in_real_time(bench, serial, tmp_path, monkeypatch):
    monkeypatch.setenv("CYCLER_LOCK_DIR", str(tmp_path / "locks"))
    loaded = load_bench(bench)
    with SimulationServer(build_simulation(loaded.config.simulation, WallClock()), serial=serial) as server:
        served = yaml.safe_load(served_bench_text(loaded, server.resources()))
        for channel in served["channels"].values():
            channel["tick_s"] = SERVED_TICK_S
        path = tmp_path / "served.yaml"
        path.write_text(yaml.safe_dump(served, sort_keys=False))
        result = run_short(str(path), tmp_path, first_channel(bench))
        assert result.outcome.state == "completed", result.outcome.reason
        assert result.outcome.outputs_confirmed_off
        assert_all_off(bench, server.simulation.instruments)
        serial_prefix = "socket://" if serial == "tcp" else "/dev/"
        assert all(spec["resource"].startswith(("TCPIP::", serial_prefix)) for spec in served["instruments"].values())
