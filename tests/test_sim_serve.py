"""`cycler sim serve`: the simulated instruments over TCP, driven through pyvisa-py like LAN instruments."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from stackcycler.bench import load_bench
from stackcycler.cli import served_bench_text
from stackcycler.clock import WallClock
from stackcycler.drivers.ea_psb import EaPsb10000
from stackcycler.drivers.sim.serve import SimulationServer
from stackcycler.drivers.sim.simulation import build_simulation
from stackcycler.drivers.transport import VisaTransport
from stackcycler.live import SilentReporter
from stackcycler.session import RunRequest, execute, prepare


@pytest.fixture
def served(monkeypatch, tmp_path):
    monkeypatch.setenv("CYCLER_LOCK_DIR", str(tmp_path / "locks"))
    bench = load_bench("sim")
    with SimulationServer(build_simulation(bench.config.simulation, WallClock())) as server:
        path = tmp_path / "served.yaml"
        path.write_text(served_bench_text(bench, server.resources()))
        yield server, path


def test_the_real_driver_talks_to_a_served_instrument_over_tcp(served):
    server, _ = served
    supply = EaPsb10000(VisaTransport(server.resources()["supply"], timeout_s=2.0))
    try:
        assert "PSB" in supply.connect()
        assert supply.ratings.voltage_V == 200.0
        volts, amps = supply.measure()
        stack = server.simulation.world.stack
        assert volts == pytest.approx(stack.terminal_voltage_V(), abs=0.05) and abs(amps) < 0.01
    finally:
        supply.close()


def test_a_protocol_runs_on_the_served_bench_in_real_time(served, tmp_path):
    server, bench = served
    protocol = tmp_path / "short.yaml"
    protocol.write_text("name: short\nrecord: {time_s: 0.5}\nsteps:\n"
                        "  - {step: cc, name: charge, current_A: 1.0, until: [{step_time_s: 3}]}\n"
                        "  - {step: rest, name: rest, duration_s: 1}\n")
    result = execute(prepare(RunRequest(protocol=str(protocol), bench=str(bench), runs_dir=tmp_path / "runs",
                                        operator="pytest")), SilentReporter())
    assert result.outcome.state == "completed", result.outcome.reason
    samples = pd.read_csv(result.outcome.folder / "samples.csv")
    charging = samples[samples["Step ID"] == 1]["Current / A"].iloc[1:]
    assert charging.min() == pytest.approx(1.0, abs=0.01)
    meta = json.loads((result.outcome.folder / "run.json").read_text())
    assert meta["bench"]["clock"] == "wall clock" and meta["instruments"]["supply"]["resource"].startswith("TCPIP::")
    assert not server.simulation.instruments["supply"].output_on  # the safe state reached the served supply
    stack = server.simulation.world.stack
    assert samples["Charging Capacity / Ah"].iloc[-1] == pytest.approx(stack.charged_Ah, rel=0.05)
