"""End-to-end runs on the simulated benches: data, results, and every way a run can end."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from stackcycler.errors import ExitCode
from stackcycler.live import SilentReporter
from stackcycler.runner import StopRequest

from support import StopAfter, events_of, samples_of


def supply_output_on(result) -> bool:
    return result.simulation.instruments["supply"].output_on


def test_full_capacity_check_logs_the_capacity_the_simulated_stack_counted(run_protocol):
    result = run_protocol(overrides={})  # the protocol as shipped: C/3, 1 h rests
    assert result.outcome.state == "completed"
    stack = result.simulation.world.stack
    summary = pd.read_csv(result.outcome.folder / "summary.csv").iloc[0]
    assert summary["Discharging Capacity / Ah"] == pytest.approx(stack.discharged_Ah, rel=0.005)
    assert summary["Charging Capacity / Ah"] == pytest.approx(stack.charged_Ah, rel=0.005)
    assert summary["Discharging Energy / Wh"] == pytest.approx(stack.discharged_Wh, rel=0.005)
    # about 2 Ah nominal, and a coulombic efficiency that the model's 99.8 % storage explains
    assert 1.9 < summary["Discharging Capacity / Ah"] < 2.1
    assert 0.99 < summary["Coulombic Efficiency / 1"] < 1.0


def test_discharge_step_in_the_samples_matches_the_coulomb_count(run_protocol):
    result = run_protocol()
    samples = samples_of(result)
    discharge = samples[samples["Step ID"] == 3]
    logged = discharge["Discharging Capacity / Ah"].iloc[-1] - samples[samples["Step ID"] == 2][
        "Discharging Capacity / Ah"].iloc[-1]
    assert logged == pytest.approx(result.simulation.world.stack.discharged_Ah, rel=0.005)


def test_capacity_check_runs_its_four_steps_in_order_with_end_reasons(run_protocol):
    result = run_protocol()
    ends = [e for e in events_of(result) if e["event"] == "step_end"]
    assert [e["name"] for e in ends] == ["charge", "rest after charge", "discharge", "rest after discharge"]
    assert ends[0]["reason"] == "|I| ≤ 0.1 A"  # CV taper to C/20 of 2 Ah
    assert ends[1]["reason"] == "step time 1 min" and ends[3]["reason"] == "step time 1 min"
    assert ends[2]["reason"] == "V ≤ 69 V"
    assert ends[2]["voltage_V"] <= 69.0


def test_the_run_records_that_its_supply_has_no_instrument_watchdog_before_the_first_step(run_protocol):
    events = events_of(run_protocol())
    kinds = [e["event"] for e in events]
    watchdogs = events[kinds.index("instrument_watchdogs")]
    assert kinds.index("instrument_watchdogs") < kinds.index("step_start")  # before anything is switched on
    # the EA PSB has no confirmed watchdog command (drivers/ea_psb.py); the N6705C's is in test_n6705c.py
    assert watchdogs["armed_s"] == {"supply": None} and watchdogs["trip_found_at_connect"] is False


def test_samples_use_battery_data_format_names_with_per_layer_columns(run_protocol):
    samples = samples_of(run_protocol())
    for column in ("Test Time / s", "Voltage / V", "Current / A", "Unix Time / s", "Cycle Count / 1",
                   "Step Count / 1", "Temperature T1 / degC", "Pressure / MPa", "Layer 01 Voltage / V",
                   "Layer 23 Voltage / V"):
        assert column in samples.columns
    assert "Step Index / 1" not in samples.columns
    assert "Layer 24 Voltage / V" not in samples.columns
    layers = samples[[f"Layer {n:02d} Voltage / V" for n in range(1, 24)]].sum(axis=1)
    # the stack voltage is the sum of its layers (measured by two instruments)
    assert np.allclose(layers, samples["Voltage / V"], atol=0.05)


def test_current_is_positive_on_charge_and_negative_on_discharge(run_protocol):
    samples = samples_of(run_protocol())
    charge = samples[samples["Step Type"] == "CCCV_CHG"]["Current / A"]
    discharge = samples[samples["Step Type"] == "CC_DCH"]["Current / A"]
    assert charge.iloc[1:].min() > 0
    assert discharge.iloc[1:].max() < 0
    assert discharge.iloc[1:].median() == pytest.approx(-2.0, abs=0.01)  # 1C of 2 Ah


def test_every_step_start_and_end_is_recorded(run_protocol):
    result = run_protocol()
    samples = samples_of(result)
    times = set(samples["Test Time / s"].round(3))
    for event in events_of(result):
        if event["event"] in ("step_start", "step_end"):
            assert round(event["test_time_s"], 3) in times


def test_run_folder_describes_itself(run_protocol):
    result = run_protocol()
    folder = result.outcome.folder
    meta = json.loads((folder / "run.json").read_text())
    assert meta["state"] == "completed" and meta["exit_code"] == 0
    assert meta["protocol"]["name"] == "capacity-check"
    assert meta["bench"]["name"] == "sim" and meta["bench"]["simulated"] is True
    assert meta["dut"]["id"] == "sim-assb-23L-001"
    assert meta["operator"] == "pytest"
    assert "positive for charge" in meta["sign_convention"]
    assert "PSB" in meta["instruments"]["supply"]["identity"]
    assert "DAQ970A" in meta["instruments"]["daq"]["identity"]
    assert meta["software"]["stackcycler"]
    assert meta["started"] and meta["ended"]
    assert (folder / "protocol.yaml").read_text().startswith("# Capacity check")
    assert 'name = "sim"' in (folder / "bench.toml").read_text()
    assert meta["summary"][0]["discharge_capacity_Ah"] > 1.9


def test_a_layer_over_its_voltage_limit_trips_to_outputs_off(run_protocol):
    result = run_protocol(bench="sim-weak-layer")
    outcome = result.outcome
    assert outcome.state == "tripped" and outcome.exit_code == ExitCode.SAFETY_TRIP
    assert outcome.outputs_confirmed_off and not supply_output_on(result)
    trip = next(e for e in events_of(result) if e["event"] == "safety_trip")
    assert trip["limit"] == "max_layer_voltage_V" and trip["where"] == "layer 07"
    assert trip["value"] > trip["threshold"] == 4.40
    samples = samples_of(result)
    assert samples["Layer 07 Voltage / V"].iloc[-1] > 4.40  # the tripping sample is in the data
    assert samples["Test Time / s"].iloc[-1] == pytest.approx(trip["test_time_s"], abs=1e-3)
    # the other layers were still in range: the stack never reached its end-of-charge voltage
    assert samples["Voltage / V"].iloc[-1] < 97.75
    meta = json.loads((outcome.folder / "run.json").read_text())
    assert meta["state"] == "tripped"
    # the bench file says only `extends: sim`; the run folder keeps the whole bench as run
    assert meta["bench"]["resolved"]["simulation"]["stack"]["layer_capacity_scale"] == {"7": 0.85}
    assert meta["bench"]["resolved"]["channels"]["stack1"]["dut"]["layers"] == 23


def test_a_stop_request_ends_in_the_safe_state_and_keeps_the_data(run_protocol):
    stop = StopRequest()
    reporter = StopAfter(stop, ticks=500)
    result = run_protocol(reporter=reporter, stop=stop)
    assert result.outcome.state == "interrupted" and result.outcome.exit_code == ExitCode.INTERRUPTED
    assert not supply_output_on(result)
    samples = samples_of(result)
    assert samples["Test Time / s"].iloc[-1] == pytest.approx(reporter.last_time, abs=10.0)
    kinds = [e["event"] for e in events_of(result)]
    assert kinds[-3:] == ["interrupted", "safe_state", "run_end"]


class Recorder(SilentReporter):
    def __init__(self):
        self.statuses = []

    def tick(self, status):
        self.statuses.append(status)


def test_progress_advances_through_the_first_step_and_the_whole_run(run_protocol):
    reporter = Recorder()
    run_protocol(reporter=reporter)
    first_step = [s for s in reporter.statuses if s.step_count == 1]
    halfway = first_step[len(first_step) // 2]
    assert halfway.step_time_s == pytest.approx(halfway.test_time_s)  # step 1 starts at test time 0
    assert 0.3 < halfway.step_progress < 0.7
    overall = [s.overall_progress for s in reporter.statuses]
    assert overall == sorted(overall) and overall[-1] > 0.9


class FailingReporter(SilentReporter):
    def __init__(self, ticks: int):
        self.ticks, self.seen = ticks, 0

    def tick(self, status):
        self.seen += 1
        if self.seen == self.ticks:
            raise RuntimeError("display crashed")


def test_a_software_error_still_ends_in_the_safe_state(run_protocol):
    result = run_protocol(reporter=FailingReporter(ticks=300))
    assert result.outcome.state == "error" and result.outcome.exit_code == ExitCode.SOFTWARE_ERROR
    assert not supply_output_on(result)
    error = next(e for e in events_of(result) if e["event"] == "software_error")
    assert "display crashed" in error["message"] and "Traceback" in error["traceback"]


def test_an_instrument_that_stops_answering_is_a_fault_with_outputs_off(run_protocol, monkeypatch):
    from stackcycler.drivers.sim.daq970a import SimDaq970a

    original = SimDaq970a.handle
    calls = {"n": 0}

    def mute_after_a_while(self, message):
        if message.startswith("READ?"):
            calls["n"] += 1
            if calls["n"] > 200:
                return None  # the DAQ went quiet: the driver's read times out
        return original(self, message)

    monkeypatch.setattr(SimDaq970a, "handle", mute_after_a_while)
    result = run_protocol()
    assert result.outcome.state == "faulted" and result.outcome.exit_code == ExitCode.INSTRUMENT_FAULT
    assert not supply_output_on(result)
    fault = next(e for e in events_of(result) if e["event"] == "instrument_fault")
    assert "sim://daq" in fault["message"] and "timeout" in fault["message"]


def test_a_supply_protection_trip_is_detected_as_a_fault(run_protocol, monkeypatch):
    from stackcycler.drivers.sim import ea_psb

    original = ea_psb.SimEaPsb.current_into_dut

    def trip_after_ten_minutes(self, emf, resistance):
        if self.world.clock.now() > 600 and self.output_on:
            self.alarm, self.output_on = "OCP", False
        return original(self, emf, resistance)

    monkeypatch.setattr(ea_psb.SimEaPsb, "current_into_dut", trip_after_ten_minutes)
    result = run_protocol()
    assert result.outcome.state == "faulted"
    assert "switched its output off by itself" in result.outcome.reason
    assert not supply_output_on(result)


def test_a_cccv_step_reports_its_cc_and_cv_phases(run_protocol):
    result = run_protocol()
    events = events_of(result)
    entry = next(e for e in events if e["event"] == "cv_phase")
    charge = next(e for e in events if e["event"] == "step_end" and e["step"] == 1)
    assert charge["cv_reached"] is True
    assert charge["cc_Ah"] + charge["cv_Ah"] == pytest.approx(charge["charge_Ah"] + charge["discharge_Ah"])
    assert charge["cc_s"] == entry["step_time_s"] and charge["cv_s"] == pytest.approx(charge["step_time_s"] - charge["cc_s"])
    samples = pd.read_csv(result.outcome.folder / "samples.csv")
    step1 = samples[samples["Step ID"] == 1]
    cc = step1[step1["Step Time / s"] < entry["step_time_s"] - 5]
    cv = step1[step1["Step Time / s"] > entry["step_time_s"] + 5]
    assert cc["Current / A"].iloc[5:].min() == pytest.approx(2.0, abs=0.01)  # 1C in CC
    assert cv["Voltage / V"].sub(97.75).abs().max() < 0.05  # held at the CV voltage
    assert 0 < charge["cv_Ah"] < charge["cc_Ah"]
