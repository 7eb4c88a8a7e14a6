"""The safety envelope: tightest of DUT and protocol limits, checked on every sample."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stackcycler.errors import SafetyTrip
from stackcycler.safety import SafetyEnvelope, SafetyLimits, SafetyMonitor
from stackcycler.sample import Sample

ENVELOPE = SafetyEnvelope(max_voltage_V=99.0, min_voltage_V=57.5, max_layer_voltage_V=4.4,
                          min_layer_voltage_V=2.5, max_charge_current_A=2.2, max_discharge_current_A=4.4,
                          max_temperature_degC=60, min_temperature_degC=0, max_pressure_MPa=10, min_pressure_MPa=2)


def sample(t: float = 0.0, voltage: float = 85.0, current: float = 0.5, layers=None, temperature: float = 25.0,
           pressure: float | None = 5.0) -> Sample:
    layers = np.full(23, voltage / 23) if layers is None else np.asarray(layers, float)
    return Sample(t, 1e9 + t, voltage, current, layers, {"T1": temperature}, 25.0, pressure)


def trip_of(monitor: SafetyMonitor, s: Sample) -> SafetyTrip:
    with pytest.raises(SafetyTrip) as caught:
        monitor.check(s)
    return caught.value


def test_a_sample_inside_every_limit_passes():
    SafetyMonitor(ENVELOPE).check(sample())


@pytest.mark.parametrize("changes, limit, where", [
    ({"voltage": 99.5}, "max_voltage_V", "stack"),
    ({"voltage": 57.0}, "min_voltage_V", "stack"),
    ({"current": 2.3}, "max_charge_current_A", "stack"),
    ({"current": -4.5}, "max_discharge_current_A", "stack"),
    ({"temperature": 61.0}, "max_temperature_degC", "T1"),
    ({"temperature": -1.0}, "min_temperature_degC", "T1"),
    ({"pressure": 10.5}, "max_pressure_MPa", "stack"),
    ({"pressure": 1.5}, "min_pressure_MPa", "stack"),
])
def test_each_limit_trips_and_says_which(changes, limit, where):
    trip = trip_of(SafetyMonitor(ENVELOPE), sample(**changes))
    assert (trip.limit, trip.where) == (limit, where)


def test_one_layer_over_its_limit_trips_and_names_the_layer():
    layers = np.full(23, 4.2)
    layers[6] = 4.41
    trip = trip_of(SafetyMonitor(ENVELOPE), sample(layers=layers))
    assert (trip.limit, trip.where, trip.value, trip.threshold) == ("max_layer_voltage_V", "layer 07", 4.41, 4.4)


def test_an_unreadable_layer_voltage_trips():
    layers = np.full(23, 3.7)
    layers[22] = math.nan
    trip = trip_of(SafetyMonitor(ENVELOPE), sample(layers=layers))
    assert trip.limit == "max_layer_voltage_V" and trip.where == "layer 23" and math.isnan(trip.value)


def test_an_unreadable_pressure_trips():
    assert trip_of(SafetyMonitor(ENVELOPE), sample(pressure=math.nan)).limit == "max_pressure_MPa"


def test_debounce_trips_only_once_the_limit_has_held_that_long():
    monitor = SafetyMonitor(SafetyEnvelope(max_voltage_V=99.0, debounce_s=2.0))
    monitor.check(sample(t=0.0, voltage=99.5))
    monitor.check(sample(t=1.0, voltage=99.5))
    assert trip_of(monitor, sample(t=2.0, voltage=99.5)).limit == "max_voltage_V"


def test_debounce_restarts_when_the_value_comes_back_in_range():
    monitor = SafetyMonitor(SafetyEnvelope(max_voltage_V=99.0, debounce_s=2.0))
    monitor.check(sample(t=0.0, voltage=99.5))
    monitor.check(sample(t=1.0, voltage=98.0))
    monitor.check(sample(t=2.0, voltage=99.5))
    monitor.check(sample(t=3.0, voltage=99.5))
    assert trip_of(monitor, sample(t=4.0, voltage=99.5)).limit == "max_voltage_V"


def test_tightest_takes_the_lower_maximum_and_the_higher_minimum():
    dut = SafetyLimits(max_voltage_V=99.0, min_voltage_V=57.5, max_temperature_degC=60, debounce_s=1.0)
    protocol = SafetyLimits(max_voltage_V=98.0, min_voltage_V=60.0, max_temperature_degC=70, debounce_s=0.5)
    envelope = SafetyEnvelope.tightest(dut, protocol)
    assert (envelope.max_voltage_V, envelope.min_voltage_V, envelope.max_temperature_degC) == (98.0, 60.0, 60)
    assert envelope.debounce_s == 0.5


def test_a_maximum_below_its_minimum_is_refused():
    with pytest.raises(ValueError, match=r"max_voltage_V \(50.0\) must be above min_voltage_V \(60.0\)"):
        SafetyLimits(max_voltage_V=50.0, min_voltage_V=60.0)
