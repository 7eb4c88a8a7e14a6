"""Charge and energy counting: trapezoidal, split at zero crossings, charge and discharge apart."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stackcycler.analysis import cycle_summary
from stackcycler.integrators import Integrator, trapezoid_arrays, trapezoid_parts
from stackcycler.sample import Sample


def feed(currents, voltage: float = 80.0, dt: float = 1.0) -> Integrator:
    integrator = Integrator()
    for k, current in enumerate(currents):
        integrator.update(Sample(k * dt, 0.0, voltage, current))
    return integrator


def test_constant_current_counts_exactly():
    integrator = feed([2.0] * 3601)  # 2 A for one hour
    assert integrator.test.charge_Ah == pytest.approx(2.0, abs=1e-12)
    assert integrator.test.charge_Wh == pytest.approx(160.0, abs=1e-9)
    assert integrator.test.discharge_Ah == 0.0


def test_a_linear_ramp_is_integrated_exactly():
    # 0 -> 3600 A over 3600 s: the area is 1800 * 3600 As = 1800 Ah
    integrator = feed(np.linspace(0, 3600, 3601))
    assert integrator.test.charge_Ah == pytest.approx(1800.0)


def test_a_sign_change_inside_an_interval_is_split_at_the_zero_crossing():
    parts = trapezoid_parts(0.0, 1.0, 80.0, 3600.0, -3.0, -240.0)
    # the current crosses zero a quarter of the way through
    assert parts[0] == pytest.approx((0.125, 10.0))
    assert parts[1] == pytest.approx((-1.125, -90.0))


def test_step_scope_restarts_and_the_test_scope_keeps_counting():
    integrator = feed([1.0] * 3601)  # +1 A for 3600 s
    integrator.start_step()
    for k in range(3601, 5401):
        integrator.update(Sample(float(k), 0.0, 80.0, -1.0))
    # the first interval goes from +1 A to -1 A: 0.25 As charge, then 0.25 As + 1799 As discharge
    assert integrator.step.charge_Ah == pytest.approx(0.25 / 3600)
    assert integrator.step.discharge_Ah == pytest.approx(1799.25 / 3600)
    assert integrator.test.charge_Ah == pytest.approx(3600.25 / 3600)


@given(st.lists(st.floats(-10, 10, allow_nan=False), min_size=2, max_size=60))
def test_parts_add_up_to_the_net_trapezoid(currents):
    integrator = feed(currents)
    net = sum((a + b) / 2 for a, b in zip(currents, currents[1:])) / 3600.0
    assert integrator.test.charge_Ah - integrator.test.discharge_Ah == pytest.approx(net, abs=1e-9)
    assert integrator.test.charge_Ah >= 0 and integrator.test.discharge_Ah >= 0


def absolute_area_As(currents) -> float:
    """Area under |I| with I linear between samples, one second apart."""
    area = 0.0
    for a, b in zip(currents, currents[1:]):
        if a * b >= 0:
            area += (abs(a) + abs(b)) / 2
        else:  # two triangles meeting at the zero crossing
            area += (a * a + b * b) / (2 * (abs(a) + abs(b)))
    return area


@given(st.lists(st.floats(-10, 10, allow_nan=False), min_size=2, max_size=60))
def test_charge_plus_discharge_is_the_area_under_the_absolute_current(currents):
    integrator = feed(currents)
    total = integrator.test.charge_Ah + integrator.test.discharge_Ah
    assert total == pytest.approx(absolute_area_As(currents) / 3600.0, abs=1e-9)


def test_cycle_summary_from_cumulative_columns_equals_integration_of_the_rows():
    t = np.arange(0, 14400.0, 10.0)
    current = np.select([t < 3600, t < 7200, t < 10800], [1.0, -0.9, 1.1], -1.0)
    voltage = np.where(current > 0, 85.0, 80.0)
    cycle = np.where(t < 7200, 1, 2)
    rows = pd.DataFrame({"Test Time / s": t, "Current / A": current, "Voltage / V": voltage, "Cycle Count / 1": cycle})
    integrated = cycle_summary(rows)
    integrator, counted = Integrator(), []
    for k in range(len(t)):  # the runner's cumulative counters, row by row
        integrator.update(Sample(t[k], 0.0, voltage[k], current[k]))
        test = integrator.test
        counted.append((test.charge_Ah, test.discharge_Ah, test.charge_Wh, test.discharge_Wh))
    labels = ["Charging Capacity / Ah", "Discharging Capacity / Ah", "Charging Energy / Wh", "Discharging Energy / Wh"]
    from_columns = cycle_summary(rows.join(pd.DataFrame(counted, columns=labels)))
    for label in labels:
        assert from_columns[label].to_numpy() == pytest.approx(integrated[label].to_numpy())
    # cycle 1: +1 A for 3600 s (the interval into -0.9 A straddles zero), cycle 2 starts with the
    # interval from -0.9 A to +1.1 A
    assert integrated["Charging Capacity / Ah"].iloc[0] == pytest.approx((3590 + 10 * 0.5 * 1 / 1.9) / 3600)
    assert integrated["Coulombic Efficiency / 1"].iloc[0] == pytest.approx(
        integrated["Discharging Capacity / Ah"].iloc[0] / integrated["Charging Capacity / Ah"].iloc[0])


@given(st.lists(st.tuples(st.floats(-10, 10, allow_nan=False), st.floats(0, 100, allow_nan=False)),
                min_size=2, max_size=60))
def test_the_vectorised_integration_agrees_with_the_tick_by_tick_one(rows):
    currents = np.array([r[0] for r in rows])
    voltages = np.array([r[1] for r in rows])
    integrator = Integrator()
    for k in range(len(rows)):
        integrator.update(Sample(float(k), 0.0, voltages[k], currents[k]))
    parts = trapezoid_arrays(np.arange(len(rows), dtype=float), currents, voltages * currents)
    assert parts["charge_Ah"].sum() == pytest.approx(integrator.test.charge_Ah, abs=1e-12)
    assert parts["discharge_Ah"].sum() == pytest.approx(integrator.test.discharge_Ah, abs=1e-12)
    assert parts["charge_Wh"].sum() == pytest.approx(integrator.test.charge_Wh, abs=1e-9)
    assert parts["discharge_Wh"].sum() == pytest.approx(integrator.test.discharge_Wh, abs=1e-9)
