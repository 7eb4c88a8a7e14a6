"""`cycler instruments`: what the PC can reach, asked for its identity over real pyvisa-py I/O."""

from __future__ import annotations

from stackcycler.bench import load_bench
from stackcycler.clock import WallClock
from stackcycler.drivers.sim.serve import SimulationServer
from stackcycler.drivers.sim.simulation import build_simulation
from stackcycler.instruments import seen_instruments


def test_a_lan_instrument_answers_with_its_identity_and_a_missing_one_is_named():
    simulation = build_simulation(load_bench("sim").config.simulation, WallClock())
    with SimulationServer(simulation, "127.0.0.1", 0) as server:
        served = server.resources()
        seen = seen_instruments([served["supply"], "TCPIP::127.0.0.1::1::SOCKET"])
    by_resource = {item.resource: item for item in seen}
    assert by_resource[served["supply"]].identity.startswith("EA Elektro-Automatik GmbH & Co. KG, PSB 10200")
    assert "Connection refused" in by_resource["TCPIP::127.0.0.1::1::SOCKET"].identity


def test_serial_resources_are_listed_but_not_sent_text():
    seen = seen_instruments(["ASRL/dev/ttyUSB7::INSTR"])
    assert seen[0].identity.startswith("serial: not queried")
