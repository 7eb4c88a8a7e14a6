"""Stack diagnostics: per-layer capacities, the weakest layer, the spread, and internal shorts
found after the fact; exact on hand-built layers, the model's truth on the simulated stack."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
from support import LEAF_CYCLING, events_of

from stackcycler.dataset import load
from stackcycler.errors import InvalidInput
from stackcycler.layers import diagnose, layer_cycles, layer_spread, runner_shorts, shorts_in_data, weakest_layers
from stackcycler.safety import SafetyEnvelope
from stackcycler.shorts import CONFIRM_TICKS

LEAF = LEAF_CYCLING
# 4 layers; cutoffs 3.0 V and 4.1 V per layer
DUT = {"layers": 4, "discharge_voltage_V": 12.0, "charge_voltage_V": 16.4}


def rows(t, current_A, volts, cycle, step, kind) -> pd.DataFrame:
    frame = pd.DataFrame({"Test Time / s": t, "Current / A": current_A, "Voltage / V": np.sum(volts, axis=1),
                          "Cycle Count / 1": cycle, "Step Count / 1": step, "Step Type": kind})
    for k in range(volts.shape[1]):
        frame[f"Layer {k + 1:02d} Voltage / V"] = volts[:, k]
    return frame


def hand_built_stack() -> pd.DataFrame:
    """Cycle 1: 1.0 Ah charge at 3.6 A (1 mAh a row), 100 s rest, 1.2 Ah discharge; each layer's
    voltage linear in the charge. Cycle 2: a 0.5 Ah discharge that takes no layer to 3.0 V."""
    q = np.arange(1001) / 1000  # Ah charged
    charge = 3.0 + np.outer(q, [1.2, 1.0, 1.25, 0.8])  # layer 1 reaches 4.1 V at 0.91667 Ah, layer 3 at 0.88
    top = charge[-1]  # 4.2, 4.0, 4.25, 3.8 V
    d = np.arange(1201) / 1000  # Ah discharged
    # 3.0 V at 1.0 Ah (layer 1) and 0.8 Ah (layer 2); layers 3 and 4 never get there
    discharge = top - np.outer(d, [1.2, 1.25, 1.0, 0.6])
    d2 = np.arange(501) / 1000
    second = np.array([4.0, 3.9, 4.0, 4.0]) - np.outer(d2, [1.1, 1.0, 1.0, 1.0])
    return pd.concat([
        rows(q * 1000, 3.6, charge, 1, 1, "CC_CHG"),
        # a step's first row has the time of the last one's, as the runner records them
        rows(np.arange(1000, 1101, 10.0), 0.0, np.tile(top, (11, 1)), 1, 2, "REST"),
        rows(1100 + d * 1000, -3.6, discharge, 1, 3, "CC_DCH"),
        rows(2300 + d2 * 1000, -3.6, second, 2, 4, "CC_DCH"),
    ], ignore_index=True)


def by_layer(table: pd.DataFrame, cycle: int, column: str) -> list:
    return table[table["cycle"] == cycle].sort_values("layer")[column].tolist()


# --- hand-built layers ----------------------------------------------------------------------------


def test_end_voltages_are_the_layers_at_the_last_row_of_each_part():
    table = layer_cycles(hand_built_stack(), DUT)
    assert by_layer(table, 1, "end_of_charge_V") == pytest.approx([4.2, 4.0, 4.25, 3.8])
    assert by_layer(table, 1, "end_of_discharge_V") == pytest.approx([2.76, 2.5, 3.05, 3.08])
    assert np.isnan(by_layer(table, 2, "end_of_charge_V")).all()  # cycle 2 does not charge


def test_layer_capacity_is_the_charge_moved_until_it_reached_its_cutoff_else_the_whole_part():
    table = layer_cycles(hand_built_stack(), DUT)  # cutoffs from the DUT: 12.0 / 4 and 16.4 / 4 V
    assert by_layer(table, 1, "discharge_capacity_Ah") == pytest.approx([1.0, 0.8, 1.2, 1.2], abs=1e-9)
    assert by_layer(table, 1, "reached_discharge_cutoff") == [True, True, False, False]
    assert by_layer(table, 1, "charge_capacity_Ah") == pytest.approx([1.1 / 1.2, 1.0, 1.1 / 1.25, 1.0], abs=1e-9)
    assert by_layer(table, 2, "discharge_capacity_Ah") == pytest.approx([0.5] * 4, abs=1e-9)
    assert layer_cycles(hand_built_stack(), DUT, discharge_cutoff_V=3.5).pipe(
        by_layer, 2, "discharge_capacity_Ah") == pytest.approx([0.5 / 1.1, 0.4, 0.5, 0.5], abs=1e-9)


def test_relative_capacity_is_the_charge_through_the_common_voltage_window():
    table = layer_cycles(hand_built_stack(), DUT)
    # cycle 1: every layer crossed 3.08-3.80 V; less 10 % at each end: 3.152-3.728 V, 0.576 V,
    # which takes 0.576 V / (V per Ah) of charge; the median of the four is 0.528 Ah
    assert by_layer(table, 1, "window_low_V")[0] == pytest.approx(3.152)
    assert by_layer(table, 1, "window_high_V")[0] == pytest.approx(3.728)
    window = [0.576 / 1.2, 0.576 / 1.25, 0.576 / 1.0, 0.576 / 0.6]
    assert by_layer(table, 1, "window_Ah") == pytest.approx(window, abs=1e-9)
    assert by_layer(table, 1, "relative_capacity") == pytest.approx(np.array(window) / 0.528, abs=1e-9)


def test_the_weakest_layer_has_the_lowest_capacity_and_ties_go_to_the_lowest_end_voltage():
    stack = hand_built_stack()
    cycles = weakest_layers(layer_cycles(stack, DUT), layer_spread(stack)).set_index("cycle")
    assert cycles.loc[1, "weakest_layer"] == 2 and cycles.loc[1, "weakest_discharge_capacity_Ah"] == pytest.approx(0.8)
    assert cycles.loc[1, "lowest_relative_layer"] == 2
    # cycle 2: no layer reached 3.0 V, all four have the whole 0.5 Ah; layer 2 ended lowest (3.4 V)
    # though layer 1, whose voltage fell fastest, has the least capacity
    assert cycles.loc[2, "weakest_layer"] == 2 and cycles.loc[2, "weakest_discharge_capacity_Ah"] == pytest.approx(0.5)
    assert cycles.loc[2, "lowest_relative_layer"] == 1
    assert cycles.loc[2, "lowest_relative_capacity"] == pytest.approx(1 / 1.1)


def test_spread_is_max_minus_min_at_each_row_and_its_cycle_mean_is_time_weighted():
    stack = hand_built_stack()
    spread = layer_spread(stack)
    assert spread["spread_V"].iloc[1000] == pytest.approx(0.45)  # end of charge: 4.25 - 3.80
    assert spread["lowest_layer"].iloc[1000] == 4 and spread["highest_layer"].iloc[1000] == 3
    cycles = weakest_layers(layer_cycles(stack, DUT), spread).set_index("cycle")
    assert cycles.loc[1, "max_spread_V"] == pytest.approx(0.58)  # end of discharge: 3.08 - 2.50
    # charge: 0.45 V x Q/1 Ah for 1000 s (225 V s); rest: 0.45 V for 100 s (45 V s); discharge:
    # three straight pieces (layers 3|4 on top, 4|2 at the bottom) worth 0.511894 V Ah x 1000 s/Ah
    assert cycles.loc[1, "mean_spread_V"] == pytest.approx((225 + 45 + 511.894) / 2300, abs=1e-6)
    assert cycles.loc[2, "max_spread_V"] == pytest.approx(0.1)  # 4.0 - 3.9 at the start, 3.5 - 3.45 at the end


def test_a_layer_falling_during_charge_is_found_in_recorded_rows():
    t = np.arange(600.0)
    volts = np.linspace(3.70, 3.72, 4) + 3e-4 * t[:, None] + 20e-6 * np.random.default_rng(2).standard_normal((600, 4))
    volts[300:, 3] -= 1.3e-3 * (t[300:] - 300)  # layer 4 shorts: it loses 1 mV a second instead of rising
    found = shorts_in_data(rows(t, 0.66, volts, 1, 1, "CC_CHG"))
    assert found[["source", "layer", "limit"]].values.tolist() == [["data", 4, "max_layer_drop_mV"]]
    assert 300 < found["test_time_s"].item() <= 300 + 6 + CONFIRM_TICKS  # 5 mV below its best, 3 rows running
    # the same rows while discharging are not what the detector judges
    assert shorts_in_data(rows(t, -0.66, volts, 1, 1, "CC_DCH")).empty


def test_a_coulombic_efficiency_drop_is_found_at_the_end_of_its_cycle_even_without_layers():
    cycles, start = [], 0.0
    for cycle, kept_Ah in enumerate((0.998, 0.998, 0.998, 0.95), start=1):  # 1 Ah in, this much out
        cycles += [pd.DataFrame({"Test Time / s": start + np.arange(1001.0), "Current / A": 3.6, "Voltage / V": 4.0,
                                 "Cycle Count / 1": cycle, "Step Count / 1": 2 * cycle - 1, "Step Type": "CC_CHG"}),
                   pd.DataFrame({"Test Time / s": start + 1001 + np.arange(round(kept_Ah * 1000) + 1.0),
                                 "Current / A": -3.6, "Voltage / V": 3.5, "Cycle Count / 1": cycle,
                                 "Step Count / 1": 2 * cycle, "Step Type": "CC_DCH"})]
        start = cycles[-1]["Test Time / s"].iloc[-1] + 1.0
    samples = pd.concat(cycles, ignore_index=True)
    assert shorts_in_data(samples).empty  # off unless set (shorts.py)
    found = shorts_in_data(samples, SafetyEnvelope(max_ce_drop_pct=2.0))
    # at the last row of cycle 4: three cycles of 1000 + 1 + 998 s, 1 s apart, then 1000 + 1 + 950 s
    assert found[["limit", "test_time_s"]].values.tolist() == [["max_ce_drop_pct", 3 * 2000 + 1951.0]]
    assert pd.isna(found["layer"].item())
    assert found["value"].item() == pytest.approx(4.8, abs=0.01)  # 99.8 % then 95.0 %


def test_runner_short_trips_are_read_from_the_events():
    events = [{"event": "step_start", "test_time_s": 0.0},
              {"event": "safety_trip", "test_time_s": 1072.0, "limit": "max_layer_drop_mV",
               "where": "layer 07 (internal short suspected)", "value": 5.8, "threshold": 5.0},
              {"event": "safety_trip", "test_time_s": 9.0, "limit": "max_voltage_V", "where": "stack",
               "value": 99.1, "threshold": 99.0}]
    found = runner_shorts(events)
    assert found[["source", "test_time_s", "layer", "limit"]].values.tolist() == [
        ["runner", 1072.0, 7, "max_layer_drop_mV"]]


def test_data_without_layer_columns_gives_empty_tables_and_says_why():
    report = diagnose(load(LEAF))
    for table in (report.layers, report.cycles, report.spread, report.shorts):
        assert table.empty
    assert any("no layer columns" in note for note in report.notes)


def test_missing_columns_are_named():
    with pytest.raises(InvalidInput, match="'Current / A'"):
        layer_cycles(hand_built_stack().drop(columns="Current / A"), DUT)


# --- the simulated stack: a weak layer 7 at 0.85 of the capacity (cycler/benches/sim-weak-layer.yaml) ---

ONE_CYCLE = """
name: one-cycle-to-the-weakest-layer
record: {time_s: 10}
steps:
  - {step: cc, name: first, current_C: %s, until: [{%s: %s}]}
  - {step: rest, duration_s: 60}
  - {step: cc, name: second, current_C: %s, until: [{%s: %s}]}
"""
DISCHARGE_FIRST = ONE_CYCLE % (-1, "layer_voltage_below_V", 3.0, 1, "layer_voltage_above_V", 4.25)
CHARGE_FIRST = ONE_CYCLE % (1, "layer_voltage_above_V", 4.25, -1, "layer_voltage_below_V", 3.0)


def weak_layer_truth(result) -> tuple[np.ndarray, float]:
    """Each layer's capacity over the median's, and layer 7's, from the simulated stack itself."""
    capacity = result.simulation.world.stack.capacity_Ah
    relative = capacity / np.median(capacity)
    return relative, relative[6]


def test_a_charged_stack_discharging_names_the_weak_layer_with_its_capacity(run_text, tmp_path):
    # In series a layer's capacity limits a discharge only if every layer starts full: this
    # stack is delivered charged (from an empty start all layers reach empty together, and the
    # weak one limits the charge instead: see the next test).
    bench = tmp_path / "charged-weak-layer.yaml"
    bench.write_text("extends: sim-weak-layer\nsimulation:\n  stack:\n    initial_soc: 1.0\n")
    result = run_text(DISCHARGE_FIRST, bench=str(bench))
    assert result.outcome.state == "completed"
    data = load(result.outcome.folder)
    report = diagnose(data)
    cycle = report.cycles.iloc[0]
    assert cycle["weakest_layer"] == 7 and cycle["lowest_relative_layer"] == 7
    layers = report.layers.set_index("layer")
    assert layers.loc[7, "reached_discharge_cutoff"] and not layers.drop(7)["reached_discharge_cutoff"].any()
    # it ran out at 3.0 V while the others still had 3.5 V: 85 % of their charge at 1C
    assert layers.loc[7, "end_of_discharge_V"] <= 3.0 and layers.drop(7)["end_of_discharge_V"].min() > 3.45
    truth, weak = weak_layer_truth(result)
    # Window error: the layers' resistance spread (8 % of 25 mOhm) shifts their voltages by up to
    # ~4 mV at 2 A, times the difference of dQ/dV between the window's ends (~0.5 Ah/V), plus
    # 10 s rows (5.6 mAh) interpolated at the crossings: a few tenths of a percent (0.15 % measured)
    assert layers["relative_capacity"].to_numpy() == pytest.approx(truth, rel=0.005)
    # the bench file says 0.85; the model adds its seeded 0.8 % spread to layer 7 and to the median
    assert cycle["lowest_relative_capacity"] == pytest.approx(0.85, abs=3 * 0.008 * 0.85)
    assert report.shorts.empty  # a weak layer is not a shorted one


def test_a_stack_charged_from_empty_shows_the_weak_layer_in_its_relative_capacity(run_text):
    result = run_text(CHARGE_FIRST, bench="sim-weak-layer")
    assert result.outcome.state == "completed"
    report = diagnose(load(result.outcome.folder))
    truth, weak = weak_layer_truth(result)
    assert report.cycles.iloc[0]["lowest_relative_layer"] == 7
    # The window now runs from 3.17 V, low on the OCV's steep foot (dQ/dV 0.15 Ah/V), to 3.93 V
    # (2.6 Ah/V): a layer's resistance offset (8 % spread of 25 mOhm: +-4 mV at 2 A) moves its
    # window charge by up to ~10 mAh of 1.4 Ah, 0.7 % a standard deviation (1.4 % measured at worst)
    assert report.layers.sort_values("layer")["relative_capacity"].to_numpy() == pytest.approx(truth, rel=0.02)
    assert report.cycles.iloc[0]["lowest_relative_capacity"] == pytest.approx(weak, rel=0.01)


# --- the simulated stack: a short forming in layer 7 ---------------------------------------------

SHORTING = ("extends: sim\nsimulation:\n  stack:\n"
            "    internal_short: {layer: 7, resistance_ohm: 2.0, from_soc: 0.1}\n")
CHARGE_A_WHILE = ("name: charge-a-while\nrecord: {time_s: %d}\nsteps:\n"
                  "  - {step: cc, current_C: 0.3333, until: [{step_time_s: 1500}]}\n")


def test_the_runners_short_trip_is_listed_and_every_tick_recorded_gives_the_same_finding(run_text, tmp_path):
    bench = tmp_path / "shorting.yaml"
    bench.write_text(SHORTING)
    result = run_text(CHARGE_A_WHILE % 1, bench=str(bench))  # every tick recorded
    assert result.outcome.state == "tripped" and result.simulation.world.stack.short_active
    found = diagnose(load(result.outcome.folder)).shorts
    assert found[["source", "layer", "limit"]].values.tolist() == [["runner", 7, "max_layer_drop_mV"],
                                                                   ["data", 7, "max_layer_drop_mV"]]
    assert found["test_time_s"].iloc[0] == found["test_time_s"].iloc[1]  # the same tick
    assert found["cycle"].tolist() == [1, 1]


def test_a_short_the_run_was_not_stopped_for_is_found_in_its_records(run_text, tmp_path):
    bench = tmp_path / "shorting.yaml"
    bench.write_text(SHORTING)
    on_the_bench = run_text(CHARGE_A_WHILE % 1, bench=str(bench)).outcome  # where the runner stops it
    tripped_at = next(e for e in events_of(on_the_bench.folder) if e["event"] == "safety_trip")["test_time_s"]
    # the same stack with the detector set too loose to trip, recorded every 10 s
    loose = tmp_path / "shorting-unwatched.yaml"
    loose.write_text(SHORTING + "channels:\n  stack1:\n    dut:\n"
                                "      safety: {max_layer_drop_mV: 10000, max_layer_noise_mV: 10000}\n")
    result = run_text(CHARGE_A_WHILE % 10, bench=str(loose))
    assert result.outcome.state == "completed" and result.simulation.world.stack.short_active
    data = load(result.outcome.folder)
    assert diagnose(data).shorts.empty  # with the thresholds the run had, nothing
    found = diagnose(data, envelope=SafetyEnvelope()).shorts  # with the detector's defaults
    assert found[["source", "layer", "limit"]].values.tolist() == [["data", 7, "max_layer_drop_mV"]]
    # confirmed over CONFIRM_TICKS recorded rows 10 s apart instead of ticks 1 s apart
    assert tripped_at <= found["test_time_s"].item() <= tripped_at + CONFIRM_TICKS * 10
