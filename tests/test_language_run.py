"""Every step type, end condition and control construct of the protocol language, run on the
simulated bench. Protocols are short (minutes of test time at a 1 s tick).

Timing rule the expectations use: control applied at step time t holds over [t, t + 1 s), so the
sample at t + 1 shows the setpoint for t. A waveform therefore changes exactly at its points.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from support import events_of, samples_of

from stackcycler.errors import ExitCode, InvalidInput

CHARGE_A_LITTLE = "  - Charge at 2 A for 15 minutes\n"  # 0.5 Ah in, so that there is something to discharge


def rows_of_step(result, step_id: int) -> pd.DataFrame:
    samples = samples_of(result)
    return samples[samples["Step ID"] == step_id]


def step_ends(result) -> list[dict]:
    return [e for e in events_of(result) if e["event"] == "step_end"]


def dense(protocol_body: str) -> str:
    """A protocol recording every tick, with the given steps."""
    return "record: {time_s: 1}\nsteps:\n" + protocol_body


# --- step types ------------------------------------------------------------------------------


def test_cp_charge_holds_its_power(run_text):
    result = run_text(dense("  - {step: cp, power_W: 60, max_duration_s: 300}\n"))
    power = rows_of_step(result, 1)["Power / W"].iloc[2:]
    assert result.outcome.state == "completed"
    assert power.to_numpy() == pytest.approx(60.0, rel=0.01)


def test_cp_discharge_holds_its_power(run_text):
    result = run_text(dense(CHARGE_A_LITTLE + "  - {step: cp, power_W: -80, max_duration_s: 300}\n"))
    power = rows_of_step(result, 2)["Power / W"].iloc[2:]
    assert power.to_numpy() == pytest.approx(-80.0, rel=0.01)


def test_cr_discharges_through_the_resistance(run_text):
    result = run_text(dense(CHARGE_A_LITTLE + "  - {step: cr, resistance_ohm: 100, max_duration_s: 300}\n"))
    rows = rows_of_step(result, 2).iloc[2:]
    # software loop on the previous tick's voltage: the voltage barely moves in a second
    assert rows["Current / A"].to_numpy() == pytest.approx(-rows["Voltage / V"].to_numpy() / 100, rel=0.005)


def test_a_pulse_train_follows_its_segments_and_ends_after_its_repeats(run_text):
    result = run_text(dense(CHARGE_A_LITTLE + """\
  - step: pulse
    segments: [{current_A: 1.0, duration_s: 10}, {current_A: 0, duration_s: 5}, {current_C: -0.25, duration_s: 10}]
    repeat: 2
"""))
    rows = rows_of_step(result, 2)
    current = dict(zip(rows["Step Time / s"].round(3), rows["Current / A"]))
    for t in (2, 9, 27, 34):
        assert current[t] == pytest.approx(1.0, abs=0.003)
    for t in (12, 14, 37):
        assert current[t] == pytest.approx(0.0, abs=0.003)
    for t in (17, 24, 42, 49):
        assert current[t] == pytest.approx(-0.5, abs=0.003)  # C/4 of 2 Ah
    end = step_ends(result)[1]
    assert end["step_time_s"] == 50.0 and end["origin"] == "duration"


def test_a_linear_profile_is_interpolated_and_looped(run_text):
    result = run_text(dense("""\
  - step: profile
    quantity: current_A
    table: [[0, 0.5], [20, 1.5]]
    max_duration_s: 45
"""))
    rows = rows_of_step(result, 1)
    current = dict(zip(rows["Step Time / s"].round(3), rows["Current / A"]))
    for t in (6, 11, 16, 26, 31):  # sample at t shows the value at t - 1, modulo the 20 s period
        assert current[t] == pytest.approx(0.5 + ((t - 1) % 20) / 20, abs=0.003)


def test_a_stepwise_profile_from_a_file_in_c_rates(run_text, tmp_path):
    (tmp_path / "drive.csv").write_text("time_s,c_rate\n0,0.5\n10,-0.25\n20,0.0\n30,0.0\n")
    result = run_text(dense(CHARGE_A_LITTLE + """\
  - {step: profile, quantity: current_C, file: drive.csv, interpolation: step}
"""))
    rows = rows_of_step(result, 2)
    current = dict(zip(rows["Step Time / s"].round(3), rows["Current / A"]))
    # at 10 s and 20 s the row taken right after the switch already shows the new value
    assert [current[t] for t in (5, 10, 15, 20, 25, 30)] == pytest.approx([1.0, -0.5, -0.5, 0.0, 0.0, 0.0], abs=0.003)
    at_ten = rows[rows["Step Time / s"] == 10.0]["Current / A"].tolist()
    assert at_ten == pytest.approx([1.0, -0.5], abs=0.003)  # before and after the edge, both recorded
    assert step_ends(result)[1]["step_time_s"] == 30.0  # one pass: the last point's time


def test_eis_is_refused_on_a_bench_that_cannot_measure_impedance(run_text):
    with pytest.raises(InvalidInput, match="EIS is refused on this bench"):
        run_text("steps:\n  - {step: eis, start_frequency_Hz: 1e5, end_frequency_Hz: 0.01, amplitude_V: 0.01}\n")


# --- end conditions --------------------------------------------------------------------------


@pytest.mark.parametrize("condition, measured", [
    ("step_charge_above_Ah: 0.1", ("charge_Ah", 0.1, 2.0 / 3600)),
    ("step_energy_above_Wh: 5", ("charge_Wh", 5.0, 0.05)),
])
def test_step_charge_and_energy_ends(run_text, condition, measured):
    result = run_text(dense(f"  - {{step: cc, current_A: 2, until: [{{{condition}}}]}}\n"))
    key, value, one_tick = measured
    end = step_ends(result)[0]
    assert end["origin"] == "until[0]"
    assert value <= end[key] <= value + one_tick


def test_rest_until_the_voltage_has_relaxed(run_text):
    result = run_text(CHARGE_A_LITTLE.join(["steps:\n", "  - {step: rest, until: [{voltage_rate_below_mV_per_h: 50}], "
                                            "max_duration_s: 7200}\n"]))
    end = step_ends(result)[1]
    assert end["reason"] == "|dV/dt| ≤ 50 mV/h"
    assert 600 <= end["step_time_s"] < 7200  # not before its 10-minute window has filled


@pytest.mark.parametrize("condition, column, value", [
    ("temperature_above_degC: 26.5", "Temperature T1 / degC", 26.5),
    ("layer_voltage_above_V: 3.6", None, 3.6),
    ("pressure_above_MPa: 5.3", "Pressure / MPa", 5.3),
    ("voltage_above_V: 80", "Voltage / V", 80.0),
])
def test_ends_on_sensors_layers_and_voltage(run_text, condition, column, value):
    result = run_text(dense(f"  - {{step: cc, current_A: 2, until: [{{{condition}}}], max_duration_s: 7200}}\n"))
    end = step_ends(result)[0]
    assert end["origin"] == "until[0]"
    last = rows_of_step(result, 1).iloc[-1]
    reading = last[column] if column else max(last[f"Layer {n:02d} Voltage / V"] for n in range(1, 24))
    assert reading >= value
    before = rows_of_step(result, 1).iloc[-2]
    previous = before[column] if column else max(before[f"Layer {n:02d} Voltage / V"] for n in range(1, 24))
    assert previous < value  # it ended on the first sample past the value


def test_cv_ends_when_the_current_falls(run_text):
    result = run_text(dense(CHARGE_A_LITTLE + "  - {step: cv, voltage_V: 90, current_limit_A: 1.5, "
                                              "until: [{current_below_C: 0.2}], max_duration_s: 7200}\n"))
    rows = rows_of_step(result, 2)
    assert rows["Current / A"].iloc[2] == pytest.approx(1.5, abs=0.003)  # limited at first
    assert abs(rows["Current / A"].iloc[-1]) <= 0.4  # C/5 of 2 Ah
    assert step_ends(result)[1]["reason"] == "|I| ≤ 0.4 A"


@pytest.mark.parametrize("condition, end_time", [
    ("current_above_A: 1.49", 76),  # |I| = 2 t / 100 passes 1.49 A at t = 74.5: set at 75, seen at 76
    ("signed_current_below_A: -0.49", 76),  # I = 1 - 2 t / 100 passes -0.49 A at t = 74.5
])
def test_current_ends_on_a_ramp(run_text, condition, end_time):
    table = "[[0, 0], [100, 2]]" if "above" in condition else "[[0, 1], [100, -1]]"
    result = run_text(dense(CHARGE_A_LITTLE + f"  - {{step: profile, quantity: current_A, table: {table}, "
                                              f"until: [{{{condition}}}]}}\n"))
    assert step_ends(result)[1]["step_time_s"] == end_time


# --- loops, cycles, gotos ---------------------------------------------------------------------


def test_nested_loops_run_their_counts_and_next_cycle_counts_cycles(run_text):
    result = run_text(dense("""\
  - repeat: 2
    steps:
      - repeat: 3
        steps:
          - Charge at 1 A for 20 seconds
          - Discharge at 1 A for 20 seconds
          - {step: next_cycle}
      - Rest for 10 seconds
"""))
    names = [e["name"] for e in events_of(result) if e["event"] == "step_start"]
    assert names == (["Charge at 1 A for 20 seconds", "Discharge at 1 A for 20 seconds"] * 3
                     + ["Rest for 10 seconds"]) * 2
    samples = samples_of(result)
    assert sorted(samples["Cycle Count / 1"].unique()) == [1, 2, 3, 4, 5, 6, 7]
    summary = pd.read_csv(result.outcome.folder / "summary.csv")
    # each 20 s charge counted as 20 s: the sample taken right after each switch keeps the edges sharp
    assert summary["Charging Capacity / Ah"].iloc[:6].to_numpy() == pytest.approx(20 / 3600, rel=0.002)
    assert len([e for e in events_of(result) if e["event"] == "cycle_end"]) == 6


def test_goto_a_tag_skips_forward(run_text):
    result = run_text(dense("""\
  - {step: cc, current_A: 1, until: [{step_time_s: 10, goto: after}]}
  - {step: cc, current_A: -1, max_duration_s: 10, name: skipped}
  - {step: rest, duration_s: 10, tag: after, name: landed}
"""))
    assert [e["name"] for e in step_ends(result)] == ["cc_chg", "landed"]


def test_goto_end_of_test_ends_the_run(run_text):
    result = run_text(dense("""\
  - {step: cc, current_A: 1, until: [{voltage_above_V: 70, goto: end_of_test}], max_duration_s: 600}
  - Rest for 1 hour
"""))
    assert result.outcome.state == "completed"
    assert [e["name"] for e in step_ends(result)] == ["cc_chg"]


def test_end_of_loop_and_exit_loop(run_text):
    result = run_text(dense("""\
  - repeat: 3
    steps:
      - {step: cc, current_A: 1, until: [{step_time_s: 5, goto: end_of_loop}], name: a}
      - {step: rest, duration_s: 5, name: never}
  - repeat: 3
    steps:
      - {step: cc, current_A: 1, until: [{step_time_s: 5, goto: exit_loop}], name: b}
  - {step: rest, duration_s: 5, name: after}
"""))
    assert [e["name"] for e in step_ends(result)] == ["a", "a", "a", "b", "after"]


def test_a_loop_until_stops_when_its_condition_is_met(run_text):
    result = run_text(dense("""\
  - until: [{discharge_capacity_below_Ah: 1.0}]
    max_repeats: 5
    steps:
      - Charge at 1 A for 30 seconds
      - Discharge at 1 A for 30 seconds
"""))
    iterations = [e for e in events_of(result) if e["event"] == "loop_iteration"]
    assert len(iterations) == 1 and "below 1 Ah" in iterations[0]["end"]


def test_a_loop_until_that_is_never_met_stops_at_max_repeats(run_text):
    result = run_text(dense("""\
  - until: [{discharge_capacity_retention_below: 0.5}]
    max_repeats: 3
    steps:
      - Charge at 1 A for 30 seconds
      - Discharge at 1 A for 30 seconds
"""))
    iterations = [e for e in events_of(result) if e["event"] == "loop_iteration"]
    assert len(iterations) == 3 and iterations[-1]["end"] == "reached max_repeats = 3 before its condition"


def test_cycling_to_end_of_life_on_a_fast_ageing_stack(run_text, tmp_path):
    bench = tmp_path / "ageing.yaml"
    bench.write_text("extends: sim\nname: ageing\nsimulation:\n  stack:\n    capacity_fade_per_efc: 0.1\n")
    result = run_text("""\
steps:
  - until: [{discharge_capacity_retention_below: 0.85, of_step: check}]
    max_repeats: 10
    steps:
      - {step: cccv, current_C: 1, voltage_V: 97.75, until: [{current_below_C: 0.1}]}
      - {step: cc, current_C: -1, until: [{voltage_below_V: 69}], tag: check}
      - {step: next_cycle}
""", bench=str(bench))
    iterations = [e for e in events_of(result) if e["event"] == "loop_iteration"]
    discharges = [e["discharge_Ah"] for e in step_ends(result) if e["name"] == "cc_dch"]
    assert "of its first value" in iterations[-1]["end"]
    assert discharges[-1] / discharges[0] < 0.85 <= discharges[-2] / discharges[0]
    assert 2 <= len(iterations) < 10


# --- test-wide blocks ------------------------------------------------------------------------


def test_a_step_can_record_faster_than_the_protocol(run_text):
    result = run_text("""\
record: {time_s: 30}
steps:
  - {step: cc, current_A: 1, max_duration_s: 120}
  - {step: cc, current_A: 1, max_duration_s: 20, record_time_s: 1}
""")
    assert len(rows_of_step(result, 1)) <= 6
    assert len(rows_of_step(result, 2)) >= 20


def test_max_test_charge_trips_a_charge_that_does_not_end(run_text):
    result = run_text("safety: {max_test_charge_Ah: 0.05}\nsteps:\n  - Charge at 2 A for 1 hour\n")
    assert result.outcome.exit_code == ExitCode.SAFETY_TRIP
    trip = next(e for e in events_of(result) if e["event"] == "safety_trip")
    assert trip["limit"] == "max_test_charge_Ah" and 0.05 < trip["value"] < 0.05 + 2.0 / 3600
    assert not result.simulation.instruments["supply"].output_on


def test_a_protocol_that_requires_a_chamber_is_refused_on_a_bench_without_one(run_text):
    with pytest.raises(InvalidInput, match="requires.chamber: the protocol needs a temperature chamber"):
        run_text("requires: {chamber: true}\nsteps: ['Rest for 1 minute']\n")


def test_the_smallest_protocol_is_a_list_of_strings(run_text):
    result = run_text("steps: ['Charge at 1 A for 1 minute', 'Rest for 1 minute']\n")
    assert result.outcome.state == "completed"
    assert [e["name"] for e in step_ends(result)] == ["Charge at 1 A for 1 minute", "Rest for 1 minute"]
    assert np.isclose(samples_of(result)["Test Time / s"].iloc[-1], 120.0)


@pytest.mark.parametrize("condition, column, direction", [
    ("layer_voltage_below_V: 3.6", None, "below"),
    ("pressure_below_MPa: 5.5", "Pressure / MPa", "below"),
])
def test_ends_on_layers_and_pressure_while_discharging(run_text, condition, column, direction):
    result = run_text(dense("  - Charge at 2 A for 30 minutes\n"
                            f"  - {{step: cc, current_A: -2, until: [{{{condition}}}], max_duration_s: 7200}}\n"))
    rows = rows_of_step(result, 2)
    value = float(condition.split(": ")[1])
    reading = rows[column] if column else rows[[f"Layer {n:02d} Voltage / V" for n in range(1, 24)]].min(axis=1)
    assert step_ends(result)[1]["origin"] == "until[0]"
    assert reading.iloc[-1] <= value < reading.iloc[-2]


def test_rest_until_the_stack_has_cooled(run_text):
    result = run_text(dense("  - Charge at 2 A for 30 minutes\n"
                            "  - {step: rest, until: [{temperature_below_degC: 26.5}], max_duration_s: 7200}\n"))
    rows = rows_of_step(result, 2)
    assert rows["Temperature T1 / degC"].iloc[1] > 26.5  # it was warm
    assert rows["Temperature T1 / degC"].iloc[-1] <= 26.5 and step_ends(result)[1]["origin"] == "until[0]"


@pytest.mark.parametrize("table, condition, end_time", [
    ("[[0, -1], [100, 1]]", "signed_current_above_A: 0.49", 76),  # I = -1 + 2 t / 100 passes 0.49 A at 74.5 s
    ("[[0, 0], [100, 2]]", "current_above_C: 0.745", 76),  # 0.745 C = 1.49 A, passed at 74.5 s
])
def test_signed_and_c_rate_current_ends_on_a_ramp(run_text, table, condition, end_time):
    result = run_text(dense(CHARGE_A_LITTLE + f"  - {{step: profile, quantity: current_A, table: {table}, "
                                              f"until: [{{{condition}}}]}}\n"))
    assert step_ends(result)[1]["step_time_s"] == end_time


def test_an_end_on_a_fast_voltage_change_waits_for_its_window(run_text):
    result = run_text(dense("  - Charge at 2 A for 30 minutes\n"
                            "  - {step: cc, current_A: -2, until: [{voltage_rate_above_mV_per_h: 1000}], "
                            "max_duration_s: 3600}\n"))
    end = step_ends(result)[1]
    assert end["reason"] == "|dV/dt| ≥ 1000 mV/h" and end["step_time_s"] == 600.0


def test_a_profile_is_followed_at_its_own_time_points_between_ticks(run_text):
    result = run_text("""
name: off-grid
record: {time_s: 0.25}
steps:
  - step: profile
    quantity: current_A
    interpolation: step
    table: [[0, 0.5], [10.5, -0.5], [20.25, 0.5], [30, 0.5]]
    max_duration_s: 60
""")
    assert result.outcome.state == "completed"
    samples = pd.read_csv(result.outcome.folder / "samples.csv")
    step_times = samples["Step Time / s"].round(3)
    for point in (10.5, 20.25, 40.5, 50.25):  # in both passes of the 30 s profile
        at = samples[step_times == point]
        assert len(at) >= 1, point  # a tick at the point itself, off the 1 s grid
    after = samples[step_times == 10.5]["Current / A"].iloc[-1]
    assert after == pytest.approx(-0.5, abs=0.01)  # switched at 10.5 s, measured at once
    # the 1 s grid carried on around the extra ticks
    assert set(range(0, 61)) <= set(step_times[step_times % 1 == 0].astype(int))
    # the charge is the profile's own: 10.5 s at +0.5, 9.75 s at -0.5, 9.75 s at +0.5, each pass
    net = samples["Charging Capacity / Ah"].iloc[-1] - samples["Discharging Capacity / Ah"].iloc[-1]
    assert net == pytest.approx(2 * (10.5 * 0.5 - 9.75 * 0.5 + 9.75 * 0.5) / 3600, abs=2e-5)


def test_a_pulse_segment_starts_when_summed_ticks_land_a_rounding_error_short_of_it():
    from stackcycler.plan import Waveform

    pulse = Waveform("current", (0.0, 30.0, 70.0, 80.0), (-3.0, 0.0, 2.25, 0.0), "step", 90.0)
    ticks = sum([0.1] * 800)  # 79.99999999999...: eight hundred 0.1 s ticks
    assert ticks < 80.0
    assert pulse.value_at(ticks) == 0.0  # the regen segment ended at 80 s, not a tick later
    assert pulse.next_point_after(ticks) == 90.0
