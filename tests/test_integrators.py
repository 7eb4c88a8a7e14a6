"""Charge and energy counting: trapezoidal, split at zero crossings, charge and discharge apart."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stackcycler.analysis import cycle_summary
from stackcycler.integrators import Integrator, trapezoid_parts
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
    t = np.arange(0, 7200.0, 10.0)
    current = np.where(t < 3600, 1.0, -0.9)
    voltage = np.where(t < 3600, 85.0, 80.0)
    rows = pd.DataFrame({"Test Time / s": t, "Current / A": current, "Voltage / V": voltage, "Cycle Count / 1": 1})
    integrated = cycle_summary(rows).iloc[0]
    integrator = Integrator()
    for k in range(len(t)):
        integrator.update(Sample(t[k], 0.0, voltage[k], current[k]))
    with_columns = rows.assign(**{
        "Charging Capacity / Ah": integrator.test.charge_Ah, "Discharging Capacity / Ah": integrator.test.discharge_Ah,
        "Charging Energy / Wh": integrator.test.charge_Wh, "Discharging Energy / Wh": integrator.test.discharge_Wh})
    from_columns = cycle_summary(with_columns).iloc[0]
    for label in ("Charging Capacity / Ah", "Discharging Capacity / Ah", "Charging Energy / Wh",
                  "Discharging Energy / Wh"):
        assert from_columns[label] == pytest.approx(integrated[label])
    assert integrated["Coulombic Efficiency / 1"] == pytest.approx(
        integrated["Discharging Capacity / Ah"] / integrated["Charging Capacity / Ah"])
