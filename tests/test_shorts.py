"""Internal-short detection: the three signs, their thresholds, and no alarm on healthy data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from support import events_of

from stackcycler.errors import SafetyTrip
from stackcycler.safety import SafetyEnvelope, SafetyLimits
from stackcycler.sample import Sample
from stackcycler.shorts import CONFIRM_TICKS, NOISE_WINDOW, ShortDetector

LAYERS = 5


def charging(t: float, layers, current_A: float = 0.66) -> Sample:
    return Sample(t, t, float(np.sum(layers)), current_A, np.asarray(layers, float))


def healthy_charge(seconds: int, rng, noise_V: float = 20e-6, current_A=lambda t: 0.66):
    """Layers rising 0.3 mV/s with DAQ-like noise; `current_A(t)` may taper as in CV."""
    base = np.linspace(3.70, 3.72, LAYERS)
    for t in range(seconds):
        i = current_A(t)
        yield charging(t, base + 3e-4 * t + i * 0.02 + noise_V * rng.standard_normal(LAYERS), i)


def detector(**limits) -> ShortDetector:
    return ShortDetector(SafetyEnvelope(**limits), LAYERS, nominal_capacity_Ah=2.0)


def test_healthy_charging_with_a_cv_taper_raises_nothing():
    rng = np.random.default_rng(1)
    watch = detector()
    # a CV taper: the current halves every 10 min, so the IR part of every layer voltage falls by
    # several mV; compared only at the same current, that is no fall
    for sample in healthy_charge(3600, rng, current_A=lambda t: 2.0 * 0.5 ** (t / 600)):
        watch.check(sample, "cccv")


def test_a_layer_that_falls_during_charge_trips_naming_it():
    rng = np.random.default_rng(2)
    watch = detector()
    with pytest.raises(SafetyTrip) as caught:
        for k, sample in enumerate(healthy_charge(600, rng)):
            if k >= 300:  # layer 4 shorts: from here it loses 1 mV a second instead of rising
                sample.layer_voltages_V[3] -= 1.3e-3 * (k - 300)
            watch.check(sample, "cc")
    trip = caught.value
    assert trip.limit == "max_layer_drop_mV" and trip.where.startswith("layer 04")
    assert trip.value > 5.0 and trip.threshold == 5.0
    assert trip.test_time_s <= 300 + 6 + CONFIRM_TICKS  # within seconds of falling 5 mV


def test_one_noisy_reading_is_not_a_fall():
    rng = np.random.default_rng(3)
    watch = detector()
    for k, sample in enumerate(healthy_charge(300, rng)):
        if k == 200:
            sample.layer_voltages_V[1] -= 0.02  # a single glitch, below the threshold for one tick only
        watch.check(sample, "cc")


def test_a_noisy_layer_trips():
    rng = np.random.default_rng(4)
    watch = detector()
    with pytest.raises(SafetyTrip, match="max_layer_noise_mV on layer 02") as caught:
        for k, sample in enumerate(healthy_charge(600, rng)):
            if k >= 100:
                sample.layer_voltages_V[1] += 1.5e-3 * rng.standard_normal()  # a dendrite fusing and reforming
            watch.check(sample, "cc")
    assert caught.value.test_time_s <= 100 + NOISE_WINDOW + 5


def test_only_charge_steps_at_a_steady_current_are_judged():
    watch = detector()
    falling = [charging(t, np.full(LAYERS, 3.8 - 1e-3 * t)) for t in range(100)]
    for sample in falling:
        watch.check(sample, "profile")  # a drive cycle's regen pulses: current changes by design
    for sample in falling:
        watch.check(Sample(sample.test_time_s, 0, 0, -0.66, sample.layer_voltages_V), "cc")  # discharging


def test_the_tighter_threshold_applies_and_a_channel_without_layers_is_not_watched():
    assert detector(max_layer_drop_mV=2.0).thresholds() == {"max_layer_drop_mV": 2.0, "max_layer_noise_mV": 1.0}
    assert ShortDetector(SafetyEnvelope(), 0, 2.0).thresholds() == {}
    bench_dut, protocol = SafetyLimits(max_layer_drop_mV=8.0), SafetyLimits(max_layer_drop_mV=3.0)
    assert SafetyEnvelope.tightest(bench_dut, protocol).max_layer_drop_mV == 3.0


def test_a_coulombic_efficiency_drop_trips_at_the_end_of_the_cycle():
    watch = detector(max_ce_drop_pct=2.0)
    for cycle in range(4):
        watch.end_cycle(2.0, 2.0 * 0.998, cycle * 3600.0)
    watch.end_cycle(0.05, 0.0, 14400.0)  # a tiny top-up cycle is not compared
    with pytest.raises(SafetyTrip, match="max_ce_drop_pct") as caught:
        watch.end_cycle(2.0, 2.0 * 0.95, 18000.0)
    assert caught.value.value == pytest.approx(4.8, abs=0.01)
    assert "coulombic efficiency 95.00% after 99.80%" in str(caught.value)


def test_no_coulombic_efficiency_check_unless_set():
    watch = detector()
    for cycle in range(4):
        watch.end_cycle(2.0, 2.0 * 0.998, cycle * 3600.0)
    watch.end_cycle(2.0, 1.0, 5 * 3600.0)


def test_a_short_forming_in_a_simulated_layer_during_charge_trips_naming_it(run_protocol, tmp_path):
    bench = tmp_path / "shorting.yaml"
    bench.write_text("extends: sim\nsimulation:\n  stack:\n"
                     "    internal_short: {layer: 7, resistance_ohm: 2.0, from_soc: 0.5}\n")
    result = run_protocol(bench=str(bench), overrides={})  # C/3 charge: the short drains more than it gets
    outcome = result.outcome
    assert outcome.state == "tripped" and outcome.outputs_confirmed_off
    assert "max_layer_drop_mV on layer 07 (internal short suspected)" in outcome.reason
    stack = result.simulation.world.stack
    assert stack.short_active
    trip = next(e for e in events_of(result) if e["event"] == "safety_trip")
    samples = pd.read_csv(outcome.folder / "samples.csv")
    charging = samples[samples["Step ID"] == 1]
    assert trip["test_time_s"] < charging["Test Time / s"].iloc[-1] + 1  # during the charge, not after it
    # before the short, no other layer came near the stack's limits: it is the detector that tripped
    assert samples["Voltage / V"].max() < 97.75 and samples[[f"Layer {n:02d} Voltage / V" for n in range(1, 24)]].max().max() < 4.4


def test_a_healthy_stack_charges_without_an_alarm(run_protocol):
    assert run_protocol(overrides={}).outcome.state == "completed"  # full C/3 CC-CV with the detector on
