"""What the progress display says about a stack: layers, sensors, progress."""

from __future__ import annotations

import io

import numpy as np

from stackcycler.live import PlainReporter, layers_text, status_line
from stackcycler.plan import PlannedEnd, PlannedStep
from stackcycler.runner import RunStatus
from stackcycler.sample import Sample

STEP = PlannedStep(number=1, name="charge", kind="cccv", step_type="CCCV_CHG",
                   ends=(PlannedEnd("current", "below", 0.1, "until[0]"),
                         PlannedEnd("step_time", "above", 21600, "time bound")),
                   time_bound_s=21600, time_bound_is_default=True, expected_s=12000, current_A=0.6666, voltage_V=97.75)


def status(layers) -> RunStatus:
    sample = Sample(3723.0, 0.0, 85.1, 0.667, np.array(layers, float), {"T1": 26.04}, 25.0, 5.731)
    return RunStatus(STEP, 1, 4, sample, 3723.0, 0.6897, 0.31, 0.12)


def test_layers_are_summarised_by_range_spread_and_the_lowest_layer():
    assert layers_text(status([3.70, 3.65, 3.72]).sample) == "3.650-3.720 V, spread 70 mV, lowest layer 02"


def test_an_unreadable_layer_does_not_hide_the_others():
    assert layers_text(status([3.70, np.nan, 3.72]).sample) == "3.700-3.720 V, spread 20 mV, lowest layer 01"


def test_status_line_has_step_electricals_layers_sensors_and_progress():
    assert status_line(status([3.70, 3.65, 3.72])) == (
        "step 1/4 charge | V 85.100 V | I +0.6670 A | step charge +0.6897 Ah | test time 1:02:03 | "
        "layers 3.650-3.720 V, spread 70 mV, lowest layer 02 | T1 26.0 degC, pressure 5.73 MPa | "
        "step ~31% | overall ~12%")


def test_plain_reporter_prints_timestamped_lines_at_its_interval():
    stream = io.StringIO()
    reporter = PlainReporter(stream, interval_s=0.0)
    reporter.step_started(status([3.7]))
    reporter.tick(status([3.7]))
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith("start step 1/4 charge: CC +0.6666 A then CV 97.75 V; ends on |I| ≤ 0.1 A, step time 6 h")
    assert lines[1][19:21] == "Z " and "| V 85.100 V |" in lines[1]
