"""Fault injection: a bench's `simulation.faults` schedule, and how each fault ends a run.

Every fault injected into a run on the built-in simulated bench either ends it in the safe state
with the cause recorded (events.jsonl, run.json), with the data logged before it intact, or, for
a transient one (one late reply), is waited for and the run goes on. The runs are the quick
capacity check (QUICK), about 7800 s of test time; the faults come at 600 s, inside the charge.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest
from support import QUICK, events_of, samples_of

from stackcycler.bench import load_bench
from stackcycler.clock import VirtualClock, WallClock
from stackcycler.drivers.sim.serve import SimulationServer
from stackcycler.drivers.sim.simulation import SimulationConfig, build_simulation
from stackcycler.drivers.transport import InProcessTransport, VisaTransport
from stackcycler.errors import ExitCode, InstrumentLinkError, InstrumentTimeout, InvalidInput
from stackcycler.live import SilentReporter
from stackcycler.session import RunRequest, execute, prepare, resume

FAULT_AT_S = 600.0


def bench_with_faults(folder: Path, *faults: str) -> str:
    """The built-in bench `sim` with a fault schedule (each fault a YAML flow mapping)."""
    path = folder / "faulty-bench.yaml"
    path.write_text("extends: sim\nname: sim-faulty\nsimulation:\n  faults:\n"
                    + "".join(f"    - {fault}\n" for fault in faults))
    return str(path)


@pytest.fixture(scope="module")
def fault_free_samples(tmp_path_factory) -> pd.DataFrame:
    """The quick capacity check on the bench without faults: what every row before a fault must equal."""
    request = RunRequest(protocol="capacity-check", bench="sim", runs_dir=tmp_path_factory.mktemp("runs"),
                         operator="pytest", overrides=dict(QUICK))
    return samples_of(execute(prepare(request), SilentReporter()))


def assert_ended_safely(result, state: str, exit_code: ExitCode, *reason_names: str) -> None:
    """The ending, its cause in events.jsonl and run.json, and the outputs confirmed off."""
    outcome = result.outcome
    assert (outcome.state, outcome.exit_code) == (state, exit_code), outcome.reason
    for name in reason_names:
        assert name in outcome.reason
    events = [e["event"] for e in events_of(result)]
    assert events[-2:] == ["safe_state", "run_end"]
    assert events[-3] in ("instrument_fault", "safety_trip")
    meta = json.loads((outcome.folder / "run.json").read_text())
    assert (meta["state"], meta["reason"], meta["outputs_confirmed_off"]) == (state, outcome.reason, True)
    assert not result.simulation.instruments["supply"].output_on


def assert_rows_before_the_fault_intact(result, fault_free: pd.DataFrame, fault_at_s: float = FAULT_AT_S) -> None:
    """Every row logged before the fault is the row the run without it logged (but for the wall clock)."""
    samples = samples_of(result).drop(columns="Unix Time / s")
    assert samples["Record Index / 1"].tolist() == list(range(1, len(samples) + 1))
    before = samples[samples["Test Time / s"] < fault_at_s].reset_index(drop=True)
    expected = fault_free.drop(columns="Unix Time / s")
    expected = expected[expected["Test Time / s"] < fault_at_s].reset_index(drop=True)
    assert len(before) > 10
    pd.testing.assert_frame_equal(before, expected)


# --- the schedule in a bench file ----------------------------------------------------------------------


def test_a_bench_file_carries_a_fault_schedule(tmp_path):
    bench = load_bench(bench_with_faults(
        tmp_path, "{at_s: 1200, instrument: daq, kind: no_reply, for_s: 30}",
        "{at_s: 600, instrument: supply, kind: garbage, count: 1}",
        "{at_s: 900, kind: layer_short, layer: 7, resistance_ohm: 5}",
        "{at_s: 0, kind: pressure_drift, MPa_per_h: -0.5}"))
    faults = bench.config.simulation.faults
    assert [f.kind for f in faults] == ["no_reply", "garbage", "layer_short", "pressure_drift"]
    assert (faults[0].instrument, faults[0].for_s) == ("daq", 30)
    assert (faults[2].stack, faults[2].layer, faults[2].resistance_ohm) == ("main", 7, 5)
    assert faults[3].MPa_per_h == -0.5


def test_an_unknown_fault_field_is_refused_with_the_file_line_and_field(tmp_path):
    path = bench_with_faults(tmp_path, "{at_s: 10, instrument: daq, kind: no_reply}",
                             "{at_s: 600, instrument: supply, kind: garbage, duration_s: 3}")
    with pytest.raises(InvalidInput) as refused:
        load_bench(path)
    assert str(refused.value) == (f"{path}, line 6: unknown field 'simulation.faults[1].duration_s'; "
                                  "accepted here: at_s, instrument, count, for_s, kind")


@pytest.mark.parametrize("fault, problem", [
    ("{at_s: 10, instrument: dmm, kind: no_reply}",
     "faults[0].instrument: no simulated instrument 'dmm'; simulated: supply, daq"),
    ("{at_s: 900, kind: layer_short, layer: 30, resistance_ohm: 5}",
     "faults[0].layer: 30, but the simulated stack 'main' has 23 layers"),
    ("{at_s: 900, kind: pressure_drift, MPa_per_h: 1, stack: second}",
     "faults[0].stack: no simulated stack 'second'; stacks: main"),
    ("{at_s: 900, kind: thermocouple_open, instrument: daq, channel: 206}",
     "faults[0].channel: no thermocouple is wired to channel 206 of 'daq'; thermocouples: 204, 205"),
    ("{at_s: 900, kind: protection_trip, instrument: daq}",
     "faults[0].instrument: 'daq' (SimDaq970a) has no protection to simulate a protection_trip with"),
    ("{at_s: 900, kind: late, instrument: daq, count: 2, for_s: 3}", "give count or for_s, not both"),
    ("{at_s: 900, kind: explode, instrument: daq}", "Input tag 'explode' found using 'kind' does not match"),
    ("{at_s: -1, kind: pressure_drift, MPa_per_h: 1}", "'simulation.faults[0].at_s': Input should be greater"),
])
def test_a_fault_that_does_not_fit_the_bench_is_refused_naming_the_field(tmp_path, fault, problem):
    path = bench_with_faults(tmp_path, fault)
    with pytest.raises(InvalidInput) as refused:
        load_bench(path)
    assert str(refused.value).startswith(f"{path}, line 5: ") and problem in str(refused.value)


# --- each fault ends the run in the safe state, with its cause ------------------------------------------


@pytest.mark.parametrize("fault, state, exit_code, reason_names", [
    ("{at_s: 600, instrument: daq, kind: no_reply, for_s: 30}", "faulted", ExitCode.INSTRUMENT_FAULT,
     ["sim://daq", "no reply"]),
    # a supply deaf for 30 s: the safe state waits for it and still confirms the output off
    ("{at_s: 600, instrument: supply, kind: no_reply, for_s: 30}", "faulted", ExitCode.INSTRUMENT_FAULT,
     ["sim://supply", "no reply"]),
    ("{at_s: 600, instrument: supply, kind: late, delay_s: 10}", "faulted", ExitCode.INSTRUMENT_FAULT,
     ["sim://supply", "no reply"]),  # later than twice the timeout: not waited for
    ("{at_s: 600, instrument: supply, kind: garbage}", "faulted", ExitCode.INSTRUMENT_FAULT,
     ["sim://supply", "MEAS:ARR? answered", "expected 'V, A, W'"]),
    ("{at_s: 600, instrument: daq, kind: garbage}", "faulted", ExitCode.INSTRUMENT_FAULT,
     ["sim://daq", "READ? gave 1 fields"]),
    ("{at_s: 600, instrument: supply, kind: truncated}", "faulted", ExitCode.INSTRUMENT_FAULT,
     ["sim://supply", "MEAS:ARR? answered"]),
    ("{at_s: 600, instrument: daq, kind: truncated}", "faulted", ExitCode.INSTRUMENT_FAULT,
     ["sim://daq", "READ? gave 26 fields, expected a value and a channel for each of 26 channels"]),
    ("{at_s: 600, instrument: daq, kind: disconnect}", "faulted", ExitCode.INSTRUMENT_FAULT,
     ["sim://daq", "connection lost"]),
    ("{at_s: 600, instrument: supply, kind: error}", "faulted", ExitCode.INSTRUMENT_FAULT,
     ["sim://supply", 'reported -300,"Device-specific error"']),
    ("{at_s: 600, instrument: daq, kind: error, code: -310, message: System error}", "faulted",
     ExitCode.INSTRUMENT_FAULT, ["sim://daq", 'reported -310,"System error"']),
    ("{at_s: 600, instrument: supply, kind: protection_trip, protection: OCP}", "faulted", ExitCode.INSTRUMENT_FAULT,
     ["supply at sim://supply switched its output off by itself (a protection trip?)"]),
    ("{at_s: 600, instrument: daq, kind: thermocouple_open, channel: 204}", "tripped", ExitCode.SAFETY_TRIP,
     ["max_temperature_degC on T1: measured nan", "at test time 600.0 s"]),
    ("{at_s: 600, kind: layer_short, layer: 7, resistance_ohm: 0.01}", "tripped", ExitCode.SAFETY_TRIP,
     ["on layer 07 (internal short suspected)"]),
    ("{at_s: 600, kind: layer_short, layer: 7, resistance_ohm: 5}", "tripped", ExitCode.SAFETY_TRIP,
     ["min_layer_voltage_V on layer 07"]),  # a soft short: the layer runs empty first on discharge
    ("{at_s: 600, kind: pressure_drift, MPa_per_h: -5}", "tripped", ExitCode.SAFETY_TRIP,
     ["min_pressure_MPa on stack"]),
])
def test_a_fault_ends_the_run_in_the_safe_state_with_its_cause(run_protocol, tmp_path, fault_free_samples,
                                                               fault, state, exit_code, reason_names):
    result = run_protocol(bench=bench_with_faults(tmp_path, fault))
    assert_ended_safely(result, state, exit_code, *reason_names)
    assert_rows_before_the_fault_intact(result, fault_free_samples)
    injected = result.simulation.faults.report()[0]
    assert injected["applied"] >= 1 and injected["first_applied_s"] >= FAULT_AT_S


def test_a_dropped_supply_connection_is_opened_again_for_the_safe_state(run_protocol, tmp_path):
    result = run_protocol(bench=bench_with_faults(tmp_path, "{at_s: 600, instrument: supply, kind: disconnect}"))
    assert_ended_safely(result, "faulted", ExitCode.INSTRUMENT_FAULT, "sim://supply: connection lost")
    notice = next(e for e in events_of(result) if e["event"] == "instrument_notice")
    assert notice == {**notice, "resource": "sim://supply",
                      "message": "sim://supply: connected again after the connection dropped"}


def test_a_supply_that_never_answers_again_is_reported_with_its_output_maybe_on(run_protocol, tmp_path):
    result = run_protocol(bench=bench_with_faults(tmp_path, "{at_s: 600, instrument: supply, kind: no_reply}"))
    outcome = result.outcome
    assert (outcome.state, outcome.exit_code, outcome.outputs_confirmed_off) == ("faulted", 4, False)
    failed = next(e for e in events_of(result) if e["event"] == "safe_state_failed")
    assert "sim://supply: no reply" in failed["message"] and "switch them off at the bench" in failed["action"]
    assert json.loads((outcome.folder / "run.json").read_text())["outputs_confirmed_off"] is False


# --- transient faults: the run goes on ----------------------------------------------------------------


@pytest.mark.parametrize("instrument, query", [("supply", "MEAS:ARR?"), ("daq", "READ?")])
def test_one_late_reply_is_waited_for_and_the_run_completes(run_protocol, tmp_path, fault_free_samples,
                                                            instrument, query):
    result = run_protocol(bench=bench_with_faults(tmp_path, f"{{at_s: 600, instrument: {instrument}, kind: late}}"))
    assert result.outcome.state == "completed" and result.outcome.exit_code == ExitCode.COMPLETED
    assert result.simulation.faults.report()[0]["applied"] == 1
    notices = [e for e in events_of(result) if e["event"] == "instrument_notice"]
    assert [(n["test_time_s"], n["message"]) for n in notices] == [
        (FAULT_AT_S, f"sim://{instrument}: the reply to '{query}' came after the timeout; it was waited for once more")]
    # the late reply is the right one: the whole run logged what the run without the fault did
    pd.testing.assert_frame_equal(samples_of(result).drop(columns="Unix Time / s"),
                                  fault_free_samples.drop(columns="Unix Time / s"))


SUSPEND_ON_A_LOST_METER = """\
record: {time_s: 10}
suspend: {instrument_link_lost: true, clear_for_s: 5}
steps: ["Charge at 2 A for 20 minutes", "Rest for 5 minutes"]
"""


def test_a_meter_deaf_for_a_while_holds_the_test_and_it_goes_on(run_text, tmp_path):
    result = run_text(SUSPEND_ON_A_LOST_METER,
                      bench=bench_with_faults(tmp_path, "{at_s: 600, instrument: daq, kind: no_reply, for_s: 30}"))
    assert result.outcome.state == "completed"
    events = events_of(result)
    suspended = next(e for e in events if e["event"] == "suspended")
    cleared = next(e for e in events if e["event"] == "suspension_cleared")
    assert suspended["test_time_s"] == FAULT_AT_S and "no answer from daq" in suspended["reason"]
    assert cleared["test_time_s"] == FAULT_AT_S + 30 + 5  # answering again, then clear for clear_for_s
    charge_end = next(e for e in events if e["event"] == "step_end" and e["step"] == 1)
    assert charge_end["test_time_s"] == 1200 + 35  # the step's clock stood still while it was held
    assert charge_end["charge_Ah"] == pytest.approx(2.0 * 1200 / 3600, rel=0.002)  # with the output off


def test_a_fault_that_formed_before_a_resume_does_not_form_again(run_protocol, tmp_path):
    first = run_protocol(bench=bench_with_faults(tmp_path, "{at_s: 600, instrument: supply, kind: error}"))
    assert first.outcome.state == "faulted"
    again = resume(first.outcome.folder, SilentReporter(), confirm=lambda preview: True, force=True)
    assert again.outcome.state == "completed", again.outcome.reason
    assert again.simulation.faults.report()[0]["applied"] == 1


# --- the schedule on the simulated world and on the links -------------------------------------------------


def simulation_with(*faults: dict, clock=None, **stack):
    """The simulation of the bench `sim` with these faults (and stack parameters)."""
    built = load_bench("sim").resolved["simulation"]
    data = {**built, "stack": {**built["stack"], **stack}, "faults": list(faults)}
    clock = clock or VirtualClock()
    return build_simulation(SimulationConfig.model_validate(data), clock), clock


def test_a_layer_short_drains_its_layer_from_the_moment_it_forms():
    simulation, clock = simulation_with({"at_s": 100, "kind": "layer_short", "layer": 3, "resistance_ohm": 4.0},
                                        initial_soc=0.5)
    stack = simulation.world.stack
    clock.sleep_until(99.0)
    simulation.world.sync()
    soc_before, ocv_before, others_before = stack.soc[2], stack.layer_ocv_V()[2], stack.soc[3]
    assert not stack.short_active
    clock.sleep_until(160.0)  # one sync across the moment it forms: 60 s of short
    simulation.world.sync()
    leak_A = (ocv_before + stack.layer_ocv_V()[2]) / 2 / 4.0
    assert stack.soc[2] == pytest.approx(soc_before - leak_A * 60 / 3600 / stack.capacity_Ah[2], rel=1e-3)
    assert stack.soc[3] == others_before


def test_pressure_drifts_at_its_rate_from_its_start():
    simulation, clock = simulation_with({"at_s": 3600, "kind": "pressure_drift", "MPa_per_h": -0.5})
    world = simulation.world
    world.sync()
    start = world.stack.pressure_MPa()
    clock.sleep_until(3600 * 3)
    world.sync()
    assert world.stack.pressure_MPa() == pytest.approx(start - 1.0, abs=1e-9)


def test_a_late_reply_is_there_for_a_read_that_waits_once_more(caplog):
    simulation, _ = simulation_with({"at_s": 0, "instrument": "daq", "kind": "late", "delay_s": 3.0})
    transport = InProcessTransport(simulation.instruments["daq"], "sim://daq", timeout_s=2.0)
    with caplog.at_level(logging.WARNING, logger="stackcycler.drivers"):
        assert transport.query("*IDN?").startswith("Keysight Technologies,DAQ970A")
    assert caplog.messages == ["sim://daq: the reply to '*IDN?' came after the timeout; it was waited for once more"]


def test_a_reply_later_than_two_timeouts_is_not_taken_for_the_next_one():
    simulation, _ = simulation_with({"at_s": 0, "instrument": "daq", "kind": "late", "delay_s": 5.0})
    transport = InProcessTransport(simulation.instruments["daq"], "sim://daq", timeout_s=2.0)
    with pytest.raises(InstrumentTimeout):
        transport.query("*IDN?")
    assert transport.query("SYST:ERR?") == '+0,"No error"'  # not the late *IDN? reply


def test_a_dropped_connection_fails_one_message_and_the_next_connects_again():
    simulation, _ = simulation_with({"at_s": 0, "instrument": "supply", "kind": "disconnect"})
    transport = InProcessTransport(simulation.instruments["supply"], "sim://supply")
    with pytest.raises(InstrumentLinkError, match="connection lost"):
        transport.query("*IDN?")
    assert "PSB" in transport.query("*IDN?")


def test_served_instruments_misbehave_on_the_wire_as_scheduled():
    simulation, _ = simulation_with({"at_s": 0, "instrument": "supply", "kind": "garbage", "count": 1},
                                    {"at_s": 0, "instrument": "supply", "kind": "late", "delay_s": 0.3},
                                    {"at_s": 0, "instrument": "daq", "kind": "no_reply", "for_s": 3600},
                                    clock=WallClock())
    with SimulationServer(simulation) as server:
        supply = VisaTransport(server.resources()["supply"], timeout_s=0.2)
        daq = VisaTransport(server.resources()["daq"], timeout_s=0.2)
        try:
            garbage = supply.query("*IDN?")
            assert garbage and set(garbage) <= set("#$%&*!?~^|<>{}@")
            assert "PSB" in supply.query("*IDN?")  # 0.3 s late, waited for once more
            assert "PSB" in supply.query("*IDN?")
            with pytest.raises(InstrumentTimeout):
                daq.query("*IDN?")
        finally:
            supply.close()
            daq.close()
