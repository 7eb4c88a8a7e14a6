"""Channels driven by a source that only charges and a load that only discharges: bench files,
refusals when the plan is bound, break-before-make on the simulated instruments, the safe state
on every way out, and whole runs on the built-in source/load benches."""

from __future__ import annotations

import pandas as pd
import pytest
from support import QUICK, cycler, events_of, samples_of

from stackcycler import session
from stackcycler.bench import load_bench
from stackcycler.clock import WallClock
from stackcycler.drivers.bk8500 import Bk8500, Code
from stackcycler.drivers.registry import DRIVERS, LOAD_DRIVERS, SOURCE_DRIVERS
from stackcycler.drivers.sim.keysight_e36312a import SimKeysightE36312a
from stackcycler.drivers.sim.serve import SimulationServer
from stackcycler.drivers.sim.simulation import build_simulation
from stackcycler.drivers.transport import InProcessByteTransport, SerialByteTransport
from stackcycler.errors import ExitCode, InstrumentError, InvalidInput
from stackcycler.live import SilentReporter
from stackcycler.runner import StopRequest
from stackcycler.session import RunRequest, check_against_instruments, execute, open_bench, prepare

BK_BENCH = "sim-e36312a-bk8500"
RIGOL_BENCH = "sim-e36312a-dl3021"


def both_off(result) -> bool:
    instruments = result.simulation.instruments
    return not instruments["psu"].output_on and not instruments["eload"].input_on


def bench_file(tmp_path, text: str, name: str = "bench.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def prepared(tmp_path, protocol: str, bench: str, overrides: dict | None = None):
    if "\n" in protocol:
        path = tmp_path / "protocol.yaml"
        path.write_text(protocol)
        protocol = str(path)
    return prepare(RunRequest(protocol=protocol, bench=bench, runs_dir=tmp_path / "runs", operator="pytest",
                              overrides=dict(overrides or {})))


def run(tmp_path, protocol: str, bench: str, overrides: dict | None = None, reporter=None, stop=None):
    return execute(prepared(tmp_path, protocol, bench, overrides), reporter or SilentReporter(), stop)


# --- the drivers in the registry -------------------------------------------------------------------


def test_the_new_drivers_are_registered_in_their_roles():
    assert SOURCE_DRIVERS == ["keysight-e36312a"]
    assert LOAD_DRIVERS == ["bk-8500", "rigol-dl3021"]
    assert DRIVERS["bk-8500"].BYTE_PROTOCOL and not DRIVERS["rigol-dl3021"].BYTE_PROTOCOL


def test_open_bench_opens_the_bk_8500_on_a_byte_transport_with_its_address(tmp_path):
    opened = open_bench(load_bench(BK_BENCH), {"eload", "psu"}, speed=None)
    try:
        load = opened.drivers["eload"]
        assert isinstance(load, Bk8500) and isinstance(load.transport, InProcessByteTransport)
        assert load.address == 0
        assert opened.identities["eload"].startswith("B&K Precision,8500,")
        assert opened.drivers["psu"].output_number == 2
    finally:
        opened.close()


def test_a_served_bk_8500_is_reached_as_a_raw_byte_stream(monkeypatch, tmp_path):
    bench = load_bench(BK_BENCH)
    with SimulationServer(build_simulation(bench.config.simulation, WallClock())) as server:
        resources = server.resources()
        assert resources["eload"].startswith("socket://127.0.0.1:")
        assert resources["psu"].startswith("TCPIP::127.0.0.1::")
        load = Bk8500(SerialByteTransport(resources["eload"], timeout_s=2.0))
        try:
            assert load.connect().startswith("B&K Precision,8500,")
            voltage, current = load.measure()
            assert voltage == pytest.approx(server.simulation.world.stack.terminal_voltage_V(), abs=0.05)
        finally:
            load.close()


def test_a_protocol_runs_on_the_served_source_load_bench_in_real_time(monkeypatch, tmp_path):
    from stackcycler.cli import served_bench_text

    monkeypatch.setenv("CYCLER_LOCK_DIR", str(tmp_path / "locks"))
    bench = load_bench(BK_BENCH)
    protocol = ("name: short\nrecord: {time_s: 0.5}\nsteps:\n"
                "  - {step: cc, name: charge, current_A: 0.1, until: [{step_time_s: 2}]}\n"
                "  - {step: cc, name: discharge, current_A: -0.1, until: [{step_time_s: 2}]}\n")
    with SimulationServer(build_simulation(bench.config.simulation, WallClock())) as server:
        served = bench_file(tmp_path, served_bench_text(bench, server.resources()), "served.yaml")
        result = run(tmp_path, protocol, served)
        assert result.outcome.state == "completed", result.outcome.reason
        instruments = server.simulation.instruments
        assert not instruments["psu"].output_on and not instruments["eload"].input_on
    samples = samples_of(result)
    assert samples[samples["Step ID"] == 1]["Current / A"].iloc[1:].min() == pytest.approx(0.1, abs=0.002)
    assert samples[samples["Step ID"] == 2]["Current / A"].iloc[1:].max() == pytest.approx(-0.1, abs=0.002)


# --- bench files ---------------------------------------------------------------------------------------


BAD_BENCHES = [
    ("channels:\n  stack1:\n    supply: eload\n    source: null\n    load: null\n",
     "instrument 'eload' (bk-8500) cannot act as a supply; supply drivers: ea-psb-10000, keithley-2400, keithley-2450"),
    ("channels:\n  stack1:\n    source: eload\n    load: null\n",
     "instrument 'eload' (bk-8500) cannot act as a source; source drivers: keysight-e36312a"),
    ("channels:\n  stack1:\n    load: psu\n    source: null\n",
     "instrument 'psu' (keysight-e36312a) cannot act as a load; load drivers: bk-8500, rigol-dl3021"),
    ("channels:\n  stack1:\n    source: null\n    load: null\n",
     "line 3: supply: the channel names nothing to drive its DUT; give 'supply'"),
    ("instruments:\n  psu: {output: 4}\n",
     "line 3: output: 4 is not accepted by the keysight-e36312a driver (the output wired to the DUT (1: 6 V / 5 A; "
     "2, 3: 25 V / 1 A)); accepted: 1, 2, 3"),
    ("instruments:\n  psu: {output: null}\n", "output: the keysight-e36312a driver needs 'output'"),
    ("instruments:\n  psu: {address: 3}\n",
     "address: the keysight-e36312a driver takes no 'address' (settings it takes: output)"),
    ("instruments:\n  eload: {baud_rate: 115200}\n", "accepted: 4800, 9600, 19200, 38400"),
    ("instruments:\n  eload: {address: 255}\n", "accepted: 0 to 254"),
    ("instruments:\n  psu: {output: 3}\n",
     "instruments.psu.output: 3, but the simulated supply has output 2 wired to the stack "
     "(simulation.instruments.psu.output)"),
]


@pytest.mark.parametrize("override, message", BAD_BENCHES)
def test_a_bad_source_load_bench_is_refused_naming_the_field_and_what_is_accepted(tmp_path, override, message):
    path = bench_file(tmp_path, f"extends: {BK_BENCH}\n{override}")
    with pytest.raises(InvalidInput) as refused:
        load_bench(path)
    assert message in str(refused.value)
    assert str(refused.value).startswith(path)


def test_a_channel_with_both_a_supply_and_a_source_is_refused_at_the_field(tmp_path):
    path = bench_file(tmp_path, "extends: sim\nchannels:\n  stack1:\n    source: supply\n")
    with pytest.raises(InvalidInput, match=r"line 4: source: a channel has either a bidirectional 'supply' or a "
                                           r"'source' and/or a 'load', not both"):
        load_bench(path)


# --- refused when the plan is bound -----------------------------------------------------------------------


SOURCE_ONLY = f"extends: {BK_BENCH}\nchannels:\n  stack1:\n    load: null\n"
LOAD_ONLY = f"extends: {BK_BENCH}\nchannels:\n  stack1:\n    source: null\n"


def test_a_discharge_on_a_bench_without_a_load_is_refused_naming_the_step_and_what_the_bench_has(tmp_path,
                                                                                                 monkeypatch):
    opened = []
    monkeypatch.setattr(session, "open_bench", lambda *args, **kwargs: opened.append(args))
    bench = bench_file(tmp_path, SOURCE_ONLY)
    with pytest.raises(InvalidInput) as refused:
        prepared(tmp_path, "capacity-check", bench)
    message = str(refused.value)
    assert ("step 3 'discharge' (CC -0.06666 A) needs to discharge, but the channel has no load; "
            "it has source 'psu' (keysight-e36312a)") in message
    assert f"channel 'stack1' of {bench}" in message
    assert opened == []  # nothing was opened, let alone switched on


def test_a_charge_on_a_bench_without_a_source_is_refused(tmp_path):
    with pytest.raises(InvalidInput, match=r"step 1 'charge' \(CC \+0.06666 A then CV 21.25 V\) needs to charge, "
                                           r"but the channel has no source; it has load 'eload' \(bk-8500\)"):
        prepared(tmp_path, "capacity-check", bench_file(tmp_path, LOAD_ONLY))


CCCV_DISCHARGE = """
name: cccv-discharge
steps:
  - {step: cccv, name: charge, current_A: 0.1, voltage_V: 4.0, until: [{current_below_A: 0.02}]}
  - {step: cccv, name: discharge to 3.6 V, current_A: -0.1, voltage_V: 3.6, until: [{current_below_A: 0.02}]}
"""


def test_cc_cv_discharge_is_refused_with_a_load_whose_driver_cannot_hold_a_voltage(tmp_path):
    protocol = CCCV_DISCHARGE.replace("4.0", "20.0").replace("3.6", "18.0")
    with pytest.raises(InvalidInput, match=r"step 2 'discharge to 18.0 V' \(CC -0.1 A then CV 18 V\) needs CV "
                                           r"discharge \(CC-CV\), but the load's driver has no CV mode with a current "
                                           r"limit; it has source 'psu' \(keysight-e36312a\) and load 'eload' "
                                           r"\(bk-8500\)"):
        prepared(tmp_path, protocol, BK_BENCH)


def test_cc_cv_discharge_runs_on_the_dl3021_in_cv_with_its_current_limit(tmp_path):
    result = run(tmp_path, CCCV_DISCHARGE, RIGOL_BENCH)
    assert result.outcome.state == "completed", result.outcome.reason
    samples = samples_of(result)
    discharge = samples[samples["Step ID"] == 2]
    assert discharge["Current / A"].iloc[2:20].mean() == pytest.approx(-0.1, abs=0.002)  # CC at the limit first
    cv = discharge[discharge["Current / A"] > -0.09]
    assert cv["Voltage / V"].iloc[3:].sub(3.6).abs().max() < 0.005  # then the voltage held
    assert discharge["Current / A"].iloc[-1] == pytest.approx(-0.02, abs=0.002)
    assert both_off(result)


def test_every_source_load_rating_is_checked_against_the_simulated_instruments(tmp_path):
    bench = bench_file(tmp_path, f"extends: {BK_BENCH}\nchannels:\n  stack1:\n    dut:\n      safety:\n"
                                 "        max_charge_current_A: 3.0\n")
    protocol = "name: too-much\nsteps:\n  - {step: cc, name: fast, current_A: 2.0, until: [{step_time_s: 60}]}\n"
    problems, note = check_against_instruments(prepared(tmp_path, protocol, bench))
    assert problems == ["step 1 (CC +2 A) needs 21.25 V / 2 A from the source 'psu' at sim://psu, beyond its "
                        "rating of 25 V / 1 A"]
    assert "E36312A" in note and "8500" in note


# --- break-before-make, proven on the simulated instruments --------------------------------------------------


def frame_code(frame: bytes) -> int:
    return frame[2]


@pytest.fixture
def wire_log(monkeypatch):
    """Every message to the simulated source or load as (instrument, message, reply, source on, load on),
    the two states taken right after the message was executed."""
    log: list[tuple[str, object, object, bool, bool]] = []
    build = session.build_simulation

    def recording_build(config, clock):
        simulation = build(config, clock)
        source, load = simulation.instruments["psu"], simulation.instruments["eload"]

        def record(name, execute):
            def recorded(message):
                reply = execute(message)
                log.append((name, message, reply, source.output_on, load.input_on))
                return reply
            return recorded

        source.handle = record("psu", source.handle)
        if hasattr(load, "receive"):
            load.receive = record("eload", load.receive)
        else:
            load.handle = record("eload", load.handle)
        return simulation

    monkeypatch.setattr(session, "build_simulation", recording_build)
    return log


DIRECTION_CHANGES = """
name: direction-changes
record: {time_s: 1}
steps:
  - {step: cc, name: charge, current_A: 0.1, until: [{step_time_s: 20}]}
  - {step: cc, name: discharge, current_A: -0.1, until: [{step_time_s: 20}]}
  - step: pulse
    name: alternating
    segments: [{current_A: 0.1, duration_s: 5}, {current_A: -0.1, duration_s: 5}, {current_A: 0, duration_s: 5}]
    repeat: 3
  - {step: rest, name: rest, duration_s: 10}
  - {step: cc, name: charge again, current_A: 0.05, until: [{step_time_s: 10}]}
"""


def switches(log, instrument: str, on: bool, source_output: int = 2) -> list[int]:
    """Indices in the log of the commands that switch `instrument` on or off."""
    found = []
    for k, (name, message, *_rest) in enumerate(log):
        if name != instrument:
            continue
        if instrument == "psu" and message == f"OUTP {'ON' if on else 'OFF'},(@{source_output})":
            found.append(k)
        elif isinstance(message, bytes) and frame_code(message) == Code.INPUT and message[3] == int(on):
            found.append(k)
        elif message == f":SOUR:INP:STAT {int(on)}":
            found.append(k)
    return found


def read_back_off(entry) -> bool:
    """A read of the instrument's own on/off state that answered off."""
    name, message, reply, *_ = entry
    if name == "psu":
        return message.startswith("OUTP? (@") and reply == "0"
    if isinstance(message, bytes):
        return frame_code(message) == Code.READ_INPUT and not reply[3 + 12] & 0x08  # operation byte: input off
    return message == ":SOUR:INP:STAT?" and reply == "0"


@pytest.mark.parametrize("bench, output", [(BK_BENCH, 2), (RIGOL_BENCH, 1)])
def test_break_before_make_the_source_and_the_load_are_never_on_together(tmp_path, wire_log, bench, output):
    start_charged = bench_file(tmp_path, f"extends: {bench}\nsimulation:\n  stack:\n    initial_soc: 0.5\n")
    result = run(tmp_path, DIRECTION_CHANGES, start_charged)
    assert result.outcome.state == "completed", result.outcome.reason

    assert not [entry for entry in wire_log if entry[3] and entry[4]], "source and load on together"
    source_on, load_on = switches(wire_log, "psu", True, output), switches(wire_log, "eload", True)
    assert len(source_on) == 5 and len(load_on) == 4  # every change of direction switched instruments
    # before each make, the other instrument's own read-back said it was off
    for makes, other in ((load_on, "psu"), (source_on, "eload")):
        for k in makes:
            last_word_of_other = next(entry for entry in reversed(wire_log[:k]) if entry[0] == other)
            assert read_back_off(last_word_of_other)
    # and the current followed the direction of each step
    samples = samples_of(result)
    assert samples[samples["Step ID"] == 1]["Current / A"].iloc[2:].min() == pytest.approx(0.1, abs=0.002)
    assert samples[samples["Step ID"] == 2]["Current / A"].iloc[2:].max() == pytest.approx(-0.1, abs=0.002)
    rest = samples[samples["Step ID"] == 4]
    assert (rest["Current / A"] == 0.0).all()  # both off: open circuit
    assert both_off(result)


def test_a_switch_of_direction_breaks_the_source_reads_it_back_then_makes_the_load(tmp_path, wire_log):
    protocol = """
name: charge-then-discharge
steps:
  - {step: cc, name: charge, current_A: 0.1, until: [{step_time_s: 5}]}
  - {step: cc, name: discharge, current_A: -0.1, until: [{step_time_s: 5}]}
"""
    run(tmp_path, protocol, BK_BENCH)
    source_off = switches(wire_log, "psu", False)
    load_on = switches(wire_log, "eload", True)[0]
    break_ = max(k for k in source_off if k < load_on)
    between = wire_log[break_ + 1:load_on]
    assert any(read_back_off(entry) for entry in between if entry[0] == "psu")  # confirmed off before the make
    assert all(not entry[3] for entry in between)
    # the load was set up while the source was off, then switched on
    assert any(entry[0] == "eload" and frame_code(entry[1]) == Code.SET_CC_CURRENT for entry in between)


# --- the safe state on every way out --------------------------------------------------------------------------


def test_a_safety_trip_on_discharge_ends_with_both_off(tmp_path):
    protocol = "name: over-discharge\nsteps:\n" \
               "  - {step: cc, name: too deep, current_A: -0.2, until: [{step_time_s: 7200}]}\n"
    result = run(tmp_path, protocol, BK_BENCH)
    assert result.outcome.state == "tripped" and result.outcome.exit_code == ExitCode.SAFETY_TRIP
    trip = next(e for e in events_of(result) if e["event"] == "safety_trip")
    assert trip["limit"] == "min_voltage_V" and trip["value"] < 12.5
    assert result.outcome.outputs_confirmed_off and both_off(result)


def test_an_error_reported_by_the_source_mid_charge_is_a_fault_with_both_off(tmp_path, monkeypatch):
    original = SimKeysightE36312a.current_into_dut
    raised = []

    def fail_once_after_ten_minutes(self, emf, resistance):
        if self.world.clock.now() > 600 and not raised:
            raised.append(self.world.clock.now())
            self.push_error(-200, "Execution error; output fault")
        return original(self, emf, resistance)

    monkeypatch.setattr(SimKeysightE36312a, "current_into_dut", fail_once_after_ten_minutes)
    result = run(tmp_path, "capacity-check", BK_BENCH, QUICK)
    assert result.outcome.state == "faulted" and result.outcome.exit_code == ExitCode.INSTRUMENT_FAULT
    assert "output fault" in result.outcome.reason and "sim://psu" in result.outcome.reason
    assert result.outcome.outputs_confirmed_off and both_off(result)


def test_a_load_that_refuses_its_setting_at_the_switch_to_discharge_is_a_fault_with_both_off(tmp_path,
                                                                                            monkeypatch):
    from stackcycler.drivers.sim import bk8500 as sim_bk8500

    original = sim_bk8500.SimBk8500._answer

    def refuse_the_cc_setting(self, frame):
        if frame[2] == Code.SET_CC_CURRENT:
            return self._status(sim_bk8500.STATUS_PARAMETER_INCORRECT)
        return original(self, frame)

    monkeypatch.setattr(sim_bk8500.SimBk8500, "_answer", refuse_the_cc_setting)
    result = run(tmp_path, "capacity-check", BK_BENCH, QUICK)
    assert result.outcome.state == "faulted"
    assert "refused 0x2A (SET_CC_CURRENT): status 0xA0 (parameter incorrect)" in result.outcome.reason
    ends = [e["name"] for e in events_of(result) if e["event"] == "step_end"]
    assert ends == ["charge", "rest after charge"]  # it failed as the discharge began
    assert result.outcome.outputs_confirmed_off and both_off(result)


class StopDuring(SilentReporter):
    """Asks the run to stop (as Ctrl+C or SIGTERM do) a minute into a step; notes which instrument was on."""

    def __init__(self, stop: StopRequest, step: str):
        self.stop, self.step = stop, step
        self.requested_in: str | None = None

    def tick(self, status):
        if self.requested_in is None and status.step.name == self.step and status.step_time_s > 60:
            self.stop.request("SIGTERM")
            self.requested_in = f"{status.step.name} at {status.sample.current_A:+.3f} A"


@pytest.mark.parametrize("step, current", [("charge", 0.2), ("discharge", -0.2)])
def test_a_stop_request_ends_with_both_off(tmp_path, step, current):
    stop = StopRequest()
    reporter = StopDuring(stop, step)
    result = run(tmp_path, "capacity-check", BK_BENCH, QUICK, reporter=reporter, stop=stop)
    assert reporter.requested_in == f"{step} at {current:+.3f} A"  # the source, or the load, was on
    assert result.outcome.state == "interrupted" and result.outcome.exit_code == ExitCode.INTERRUPTED
    kinds = [e["event"] for e in events_of(result)]
    assert kinds[-3:] == ["interrupted", "safe_state", "run_end"]
    assert result.outcome.outputs_confirmed_off and both_off(result)


class CtrlCDuringDischarge(SilentReporter):
    def tick(self, status):
        if status.step.name == "discharge" and status.step_time_s > 60:
            raise KeyboardInterrupt("second Ctrl+C")


def test_a_ctrl_c_raised_mid_discharge_ends_with_both_off(tmp_path):
    result = run(tmp_path, "capacity-check", RIGOL_BENCH, QUICK, reporter=CtrlCDuringDischarge())
    assert result.outcome.state == "interrupted"
    assert result.outcome.outputs_confirmed_off and both_off(result)


def test_a_safe_state_that_cannot_confirm_one_instrument_still_switches_the_other_off(tmp_path, monkeypatch):
    from stackcycler.drivers.keysight_e36312a import KeysightE36312a

    def cannot_confirm(self):
        raise InstrumentError("output still on after OUTP OFF")

    monkeypatch.setattr(KeysightE36312a, "safe_state", cannot_confirm)
    stop = StopRequest()
    result = run(tmp_path, "capacity-check", BK_BENCH, QUICK, reporter=StopDuring(stop, "discharge"), stop=stop)
    assert not result.outcome.outputs_confirmed_off
    assert not result.simulation.instruments["eload"].input_on
    failed = next(e for e in events_of(result) if e["event"] == "safe_state_failed")
    assert "source 'psu' at sim://psu" in failed["message"]


# --- whole runs on the built-in benches -------------------------------------------------------------------------


@pytest.mark.parametrize("bench, layers", [(BK_BENCH, 5), (RIGOL_BENCH, 1)])
def test_the_capacity_check_measures_the_simulated_capacity(tmp_path, bench, layers):
    result = run(tmp_path, "capacity-check", bench)  # as shipped: C/3, 1 h rests
    assert result.outcome.state == "completed", result.outcome.reason
    stack = result.simulation.world.stack
    assert stack.layers == layers
    summary = pd.read_csv(result.outcome.folder / "summary.csv").iloc[0]
    assert summary["Discharging Capacity / Ah"] == pytest.approx(stack.discharged_Ah, rel=0.002)
    assert summary["Charging Capacity / Ah"] == pytest.approx(stack.charged_Ah, rel=0.002)
    # the cell's capacity: a C/3 discharge to 3.0 V per layer finds the 0.2 Ah of its layers
    # (five layers in series: their spread of 0.8 % bounds it)
    capacity = summary["Discharging Capacity / Ah"]
    assert 0.99 * min(stack.capacity_Ah) < capacity < max(stack.capacity_Ah)
    assert capacity == pytest.approx(0.2, rel=0.01)
    assert 0.99 < summary["Coulombic Efficiency / 1"] < 1.0
    ends = [e for e in events_of(result) if e["event"] == "step_end"]
    assert ends[0]["cv_reached"] and ends[2]["reason"] == f"V ≤ {3.0 * layers:g} V"
    assert both_off(result)


def test_cycler_run_capacity_check_on_the_source_load_bench(tmp_path):
    code, output = cycler("run", "capacity-check", "--bench", BK_BENCH, cwd=tmp_path)
    assert code == 0, output
    assert "result: discharge capacity 0.19" in output or "result: discharge capacity 0.20" in output


def test_a_run_stopped_in_the_discharge_resumes_on_the_load_and_completes(tmp_path):
    from stackcycler.session import resume

    stop = StopRequest()
    first = run(tmp_path, "capacity-check", RIGOL_BENCH, QUICK, reporter=StopDuring(stop, "discharge"), stop=stop)
    assert first.outcome.state == "interrupted" and both_off(first)
    previews = []
    result = resume(first.outcome.folder, SilentReporter(), confirm=lambda preview: previews.append(preview) or True)
    assert previews[0].step.name == "discharge" and not previews[0].output_found_on
    assert result.outcome.state == "completed", result.outcome.reason
    assert both_off(result)


# --- one-sided benches and voltage holds ---------------------------------------------------------------------


def test_a_source_only_bench_charges_cc_cv_with_the_sources_own_voltage_limit(tmp_path):
    protocol = """
name: charge-only
steps:
  - {step: cccv, name: charge, current_C: 1.0, voltage_V: $charge_voltage_V, until: [{current_below_C: 0.05}]}
  - {step: rest, name: rest, duration_s: 60}
parameters: {charge_voltage_V: dut.charge_voltage_V}
"""
    result = run(tmp_path, protocol, bench_file(tmp_path, SOURCE_ONLY))
    assert result.outcome.state == "completed", result.outcome.reason
    samples = samples_of(result)
    charge = samples[samples["Step ID"] == 1]
    assert charge["Current / A"].iloc[2:30].mean() == pytest.approx(0.2, abs=0.001)
    assert charge["Voltage / V"].max() < 21.25 + 0.01  # the source's CV held the end-of-charge voltage
    assert (samples[samples["Step ID"] == 2]["Current / A"] == 0.0).all()
    assert not result.simulation.instruments["psu"].output_on


def test_a_load_only_bench_discharges(tmp_path):
    bench = bench_file(tmp_path, LOAD_ONLY + "simulation:\n  stack:\n    initial_soc: 0.5\n")
    protocol = ("name: discharge-only\nsteps:\n"
                "  - {step: cc, name: discharge, current_C: -1, until: [{step_time_s: 600}]}\n")
    result = run(tmp_path, protocol, bench)
    assert result.outcome.state == "completed", result.outcome.reason
    summary = pd.read_csv(result.outcome.folder / "summary.csv").iloc[0]
    assert summary["Discharging Capacity / Ah"] == pytest.approx(0.2 * 600 / 3600, rel=0.002)
    assert not result.simulation.instruments["eload"].input_on


@pytest.mark.parametrize("voltage, sign", [(3.78, -1), (3.90, +1)])
def test_a_cv_step_holds_with_the_load_above_the_cell_and_with_the_source_below_it(tmp_path, voltage, sign):
    bench = bench_file(tmp_path, f"extends: {RIGOL_BENCH}\nsimulation:\n  stack:\n    initial_soc: 0.5\n")
    protocol = (f"name: hold\nsteps:\n  - {{step: cv, name: hold, voltage_V: {voltage}, current_limit_A: 0.2, "
                "until: [{step_time_s: 900}]}\n")
    result = run(tmp_path, protocol, bench)
    assert result.outcome.state == "completed", result.outcome.reason
    samples = samples_of(result)
    assert (samples["Current / A"].iloc[2:] * sign > 0).all()
    assert samples["Voltage / V"].iloc[-1] == pytest.approx(voltage, abs=0.005)
