"""Per-cycle results, data import and export, reports: golden numbers from hand-built data, the
simulated bench's own bookkeeping, and real Bitrode recordings."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from support import LEAF_CYCLING, LEAF_DATA

from stackcycler.analysis import SUMMARY_COLUMNS, cycle_summary, summarise, summary_records
from stackcycler.bdf import export
from stackcycler.cli import main
from stackcycler.dataset import load
from stackcycler.errors import InvalidInput

LEAF = LEAF_DATA
C = SUMMARY_COLUMNS


def steps(*segments) -> pd.DataFrame:
    """Rows of constant-current steps, each (cycle, step type, current A, voltage V, duration s),
    one row every 10 s and a row at each step's end; the next step starts at the same instant, as
    a cycler records it, so the edge adds no charge."""
    rows, t = [], 0.0
    for count, (cycle, kind, current, voltage, duration) in enumerate(segments, start=1):
        for offset in [*np.arange(0.0, duration, 10.0), duration]:
            rows.append((t + offset, cycle, count, kind, current, voltage))
        t += duration
    return pd.DataFrame(rows, columns=["Test Time / s", "Cycle Count / 1", "Step Count / 1", "Step Type",
                                       "Current / A", "Voltage / V"])


TWO_CYCLES = steps(
    (1, "CC_CHG", 2.0, 4.0, 1800), (1, "REST", 0.0, 3.9, 600), (1, "CC_DCH", -1.0, 3.5, 3240), (1, "REST", 0.0, 3.6, 600),
    (2, "CC_CHG", 2.0, 4.0, 1800), (2, "REST", 0.0, 3.9, 600), (2, "CC_DCH", -1.0, 3.5, 2592), (2, "REST", 0.0, 3.6, 600),
)


def test_capacity_energy_and_efficiencies_of_hand_built_cycles():
    summary = cycle_summary(TWO_CYCLES, nominal_capacity_Ah=1.0)
    first, second = summary.iloc[0], summary.iloc[1]
    assert first[C["charge_capacity_Ah"]] == pytest.approx(1.0)  # 2 A for half an hour
    assert first[C["discharge_capacity_Ah"]] == pytest.approx(0.9)  # 1 A for 0.9 h
    assert first[C["charge_energy_Wh"]] == pytest.approx(4.0)
    assert first[C["discharge_energy_Wh"]] == pytest.approx(3.15)
    assert first[C["coulombic_efficiency"]] == pytest.approx(0.9)
    assert first[C["energy_efficiency"]] == pytest.approx(3.15 / 4.0)
    assert first[C["average_charge_voltage_V"]] == pytest.approx(4.0)
    assert first[C["average_discharge_voltage_V"]] == pytest.approx(3.5)
    assert first[C["voltage_gap_V"]] == pytest.approx(0.5)
    assert second[C["discharge_capacity_Ah"]] == pytest.approx(0.72)
    assert second[C["capacity_retention"]] == pytest.approx(0.8)
    assert list(summary[C["charge_throughput_Ah"]]) == pytest.approx([1.0, 2.0])
    assert list(summary[C["equivalent_full_cycles"]]) == pytest.approx([0.95, 1.81])
    assert first[C["duration_s"]] == pytest.approx(6240.0)
    assert second[C["start_time_s"]] == pytest.approx(6240.0)


def test_end_of_life_is_flagged_below_the_retention_threshold_only():
    assert not cycle_summary(TWO_CYCLES, eol_retention=0.79)[C["end_of_life"]].any()  # retention is 0.80
    assert list(cycle_summary(TWO_CYCLES, eol_retention=0.81)[C["end_of_life"]]) == [False, True]


def test_a_charge_only_cycle_has_no_efficiency_and_does_not_set_the_retention_reference():
    data = steps((1, "CC_CHG", 1.0, 4.0, 1800), (2, "CC_DCH", -1.0, 3.5, 1440), (2, "CC_CHG", 1.0, 4.0, 1800),
                 (3, "CC_DCH", -1.0, 3.5, 1800), (3, "CC_CHG", 1.0, 4.0, 1800))
    summary = cycle_summary(data)
    assert np.isnan(summary[C["coulombic_efficiency"]].iloc[0])
    assert np.isnan(summary[C["capacity_retention"]].iloc[0])
    assert not summary[C["end_of_life"]].iloc[0]
    assert summary[C["capacity_retention"]].iloc[2] == pytest.approx(1800 / 1440)  # against cycle 2


def test_temperatures_of_the_dut_and_pressure_per_cycle():
    data = TWO_CYCLES.copy()
    n = len(data)
    data["Temperature T1 / degC"] = np.linspace(20.0, 30.0, n)
    data["Temperature T2 / degC"] = 25.0
    data["Ambient Temperature / degC"] = 99.0  # not the DUT's: must not count
    data["Pressure / MPa"] = np.linspace(5.0, 7.0, n)
    data.loc[5, "Temperature T2 / degC"] = np.nan  # an open thermocouple leaves an empty cell
    summary = cycle_summary(data)
    first_cycle = data[data["Cycle Count / 1"] == 1]
    assert summary[C["min_temperature_degC"]].iloc[0] == pytest.approx(20.0)
    assert summary[C["max_temperature_degC"]].iloc[0] == pytest.approx(first_cycle["Temperature T1 / degC"].max())
    assert summary[C["max_temperature_degC"]].iloc[1] == pytest.approx(30.0)
    assert summary[C["min_pressure_MPa"]].iloc[1] == pytest.approx(data["Pressure / MPa"][first_cycle.index[-1] + 1])
    assert summary[C["max_pressure_MPa"]].iloc[1] == pytest.approx(7.0)


def test_a_data_gap_over_an_hour_counts_as_paused_in_data_without_events():
    data = TWO_CYCLES.copy()
    later = data["Test Time / s"] > 7000  # inside cycle 2's first rest... and everything after
    data.loc[later, "Test Time / s"] += 4000.0
    summary = cycle_summary(data)
    assert list(summary[C["paused_s"]]) == pytest.approx([0.0, 4000.0 + 10.0])  # the gap and its row spacing
    data.loc[later, "Test Time / s"] -= 1000.0  # 3000 s more is not a pause
    assert list(cycle_summary(data)[C["paused_s"]]) == [0.0, 0.0]


def test_held_and_interrupted_time_comes_from_the_runs_events():
    events = [
        {"event": "paused", "test_time_s": 100.0}, {"event": "continued", "test_time_s": 400.0, "held_s": 300.0},
        {"event": "resumed", "test_time_s": 7000.0, "from_test_time_s": 7000.0, "gap_s": 120.0},
        {"event": "suspended", "test_time_s": 11000.0},  # still held when the data ends
    ]
    summary = cycle_summary(TWO_CYCLES, events)
    end = TWO_CYCLES["Test Time / s"].iloc[-1]
    assert list(summary[C["paused_s"]]) == pytest.approx([300.0, 120.0 + end - 11000.0])


def cccv_charge() -> pd.DataFrame:
    """A CC-CV charge without events: 2 A to 4.2 V over 900 s, then 4.2 V while the current
    falls by 0.1 A every 10 s to 0.2 A (180 s), typed CCCV_CHG."""
    t = np.arange(0, 1090, 10.0)
    voltage = np.where(t <= 900, 3.6 + 0.6 * t / 900, 4.2)
    current = np.where(t <= 900, 2.0, 2.0 - 0.1 * (t - 900) / 10)
    return pd.DataFrame({"Test Time / s": t, "Voltage / V": voltage, "Current / A": current, "Cycle Count / 1": 1,
                         "Step Count / 1": 1, "Step Type": "CCCV_CHG"})


def test_the_cv_phase_is_found_in_data_without_events():
    summary = cycle_summary(cccv_charge())
    # by the runner's rule: from the first row below 98 % of the CC current (1.9 A at 910 s)
    assert summary[C["cv_time_s"]].iloc[0] == pytest.approx(170.0)
    # the trapezoids of a current falling linearly from 1.9 to 0.2 A over 170 s
    assert summary[C["cv_capacity_Ah"]].iloc[0] == pytest.approx((1.9 + 0.2) / 2 * 170 / 3600)


def test_a_cv_step_counts_whole_and_a_cc_step_not_at_all():
    cv = cccv_charge().assign(**{"Step Type": "CV_CHG"})
    assert cycle_summary(cv)[C["cv_time_s"]].iloc[0] == pytest.approx(1080.0)
    cc = cccv_charge().assign(**{"Step Type": "CC_CHG", "Current / A": 2.0})
    assert cycle_summary(cc)[C["cv_time_s"]].iloc[0] == 0.0


def test_without_a_step_counter_the_cv_phase_is_unknown_not_zero():
    summary = cycle_summary(cccv_charge().drop(columns=["Step Count / 1"]))
    assert np.isnan(summary[C["cv_time_s"]].iloc[0])


# --- the simulated bench's own bookkeeping --------------------------------------------------


@pytest.fixture(scope="module")
def sim_run(tmp_path_factory):
    from support import QUICK

    from stackcycler.live import SilentReporter
    from stackcycler.session import RunRequest, execute, prepare

    request = RunRequest(protocol="capacity-check", bench="sim", runs_dir=tmp_path_factory.mktemp("runs"),
                         operator="pytest", overrides=dict(QUICK))
    return execute(prepare(request), SilentReporter())


def test_charge_and_energy_agree_with_what_the_simulated_stack_took_and_gave(sim_run):
    summary = summarise(load(sim_run.outcome.folder))
    stack = sim_run.simulation.world.stack
    # the supply's read-back carries the simulated instrument's gain error and noise (0.1 %-level)
    assert summary[C["charge_capacity_Ah"]].sum() == pytest.approx(stack.charged_Ah, rel=0.005)
    assert summary[C["discharge_capacity_Ah"]].sum() == pytest.approx(stack.discharged_Ah, rel=0.005)
    assert summary[C["discharge_energy_Wh"]].sum() == pytest.approx(stack.discharged_Wh, rel=0.005)
    assert summary[C["charge_energy_Wh"]].sum() == pytest.approx(stack.charged_Wh, rel=0.005)


def test_the_cv_phase_found_in_the_data_matches_the_one_the_runner_timed(sim_run):
    data = load(sim_run.outcome.folder)
    timed = summarise(data).iloc[0]
    data.events = []  # as if the file came from another cycler
    found = summarise(data).iloc[0]
    assert timed[C["cv_time_s"]] > 0
    spacing = data.samples["Test Time / s"].diff().max()  # the data can place the CV start no closer
    assert found[C["cv_time_s"]] == pytest.approx(timed[C["cv_time_s"]], abs=spacing)


def test_the_run_json_summary_is_the_summary_of_the_run_folder(sim_run):
    meta = json.loads((sim_run.outcome.folder / "run.json").read_text())
    recomputed = summary_records(summarise(load(sim_run.outcome.folder)))
    assert meta["summary"] == recomputed


# --- real Bitrode data ----------------------------------------------------------------------


def bitrode_step_ends(path: Path) -> dict[tuple[int, str], tuple[float, float]]:
    """The Bitrode's own capacity and energy at the end of each (cycle, mode) step, read with
    the csv module (restart each step; Capacity(Ah) is column 11, Energy(Wh) 12, Mode 13)."""
    ends = {}
    with open(path, newline="") as handle:
        for row in csv.reader(handle):
            if row[0] == "No":
                ends[(int(row[2]), row[13].strip())] = (float(row[11]), float(row[12]))
    return ends


def test_leaf_cycling_capacities_match_the_bitrodes_own_counter():
    summary = summarise(load(LEAF_CYCLING)).set_index(C["cycle"])
    ends = bitrode_step_ends(LEAF_CYCLING)
    for cycle in range(2, 7):  # one charge and one discharge step each (cycle 7 spans two temperatures)
        # the Bitrode counts at its internal rate and rounds to 0.01 Ah
        assert summary.loc[cycle, C["discharge_capacity_Ah"]] == pytest.approx(-ends[(cycle, "DCHG")][0], abs=0.011)
        assert summary.loc[cycle, C["charge_capacity_Ah"]] == pytest.approx(ends[(cycle, "CHRG")][0], abs=0.011)


def test_leaf_energy_is_voltage_times_current_integrated():
    """The Bitrode's Energy(Wh) integrates its displayed Power(W), rounded to 0.5 W, so it is
    0.6 % low; our energy integrates V x I from the rows. Check against numpy's own trapezoid."""
    raw = pd.read_csv(LEAF_CYCLING, header=None, skiprows=1, usecols=range(15))
    discharge = raw[(raw[2] == 2) & (raw[13] == "DCHG")]
    edges = raw.iloc[discharge.index[0] - 1: discharge.index[-1] + 2]  # and the rest rows either side (0 A)
    assert (edges[8].iloc[[0, -1]] == 0).all()
    t, i, v = edges[1].to_numpy(float), edges[8].to_numpy(float), edges[9].to_numpy(float)
    summary = summarise(load(LEAF_CYCLING)).set_index(C["cycle"])
    assert summary.loc[2, C["discharge_energy_Wh"]] == pytest.approx(-np.trapezoid(v * i, t) / 3600, rel=1e-9)
    assert -np.trapezoid(discharge[10].to_numpy(float), discharge[1].to_numpy(float)) / 3600 == pytest.approx(
        -bitrode_step_ends(LEAF_CYCLING)[(2, "DCHG")][1], abs=0.01)


def test_leaf_cc_cv_charges_have_a_cv_phase_found_from_the_data():
    summary = summarise(load(LEAF_CYCLING)).set_index(C["cycle"])
    samples = load(LEAF_CYCLING).samples
    charge = samples[(samples["Cycle Count / 1"] == 2) & (samples["Step Type"] == "CHG")]
    at_top = charge[(charge["Current / A"] < 0.98 * 2.17) & (charge["Voltage / V"] >= 4.2 * 0.995)]
    # independently, by the runner's CV-entry rule: from the first such row to the end of the step
    assert summary.loc[2, C["cv_time_s"]] == pytest.approx(charge["Test Time / s"].iloc[-1] - at_top["Test Time / s"].iloc[0])
    assert 0 < summary.loc[2, C["cv_capacity_Ah"]] < summary.loc[2, C["charge_capacity_Ah"]]


def test_a_headerless_bitrode_export_reads_like_one_with_a_header(tmp_path):
    lines = LEAF_CYCLING.read_text().splitlines()
    headerless = tmp_path / "headerless.csv"
    headerless.write_text("\n".join(lines[1:]) + "\n")
    assert load(headerless).samples.equals(load(LEAF_CYCLING).samples)


# --- Battery Data Format in and out -----------------------------------------------------------


@pytest.mark.parametrize("fmt", ["bdf-csv", "parquet"])
def test_an_exported_run_summarises_exactly_like_the_run(sim_run, tmp_path, fmt):
    run = load(sim_run.outcome.folder)
    data_file, sidecar = export(run, fmt, tmp_path / f"x{'.bdf.csv' if fmt == 'bdf-csv' else '.bdf.parquet'}")
    assert sidecar.name == "x.bdf.metadata.json"
    again = load(data_file)
    pd.testing.assert_frame_equal(summarise(again), summarise(run), rtol=1e-9)
    assert "Applied Pressure / Pa" in pd.read_csv(data_file, nrows=1).columns if fmt == "bdf-csv" else True
    assert again.samples["Pressure / MPa"].to_numpy() == pytest.approx(run.samples["Pressure / MPa"].to_numpy())
    assert json.loads(sidecar.read_text())["test_object"]["id"] == run.dut["id"]


def test_xlsx_export_has_samples_summary_and_metadata_sheets(sim_run, tmp_path):
    run = load(sim_run.outcome.folder)
    path, _ = export(run, "xlsx", tmp_path / "x.bdf.xlsx", columns=["Layer 01 Voltage / V"])
    sheets = pd.read_excel(path, sheet_name=None)
    assert set(sheets) == {"samples", "summary", "metadata"}
    assert list(sheets["samples"].columns) == ["Test Time / s", "Voltage / V", "Current / A", "Layer 01 Voltage / V"]
    assert len(sheets["samples"]) == len(run.samples)
    assert sheets["summary"][C["discharge_capacity_Ah"]].iloc[0] == pytest.approx(
        summarise(run)[C["discharge_capacity_Ah"]].iloc[0])


def test_bdf_machine_names_and_older_labels_are_read(tmp_path):
    path = tmp_path / "other.bdf.csv"
    pd.DataFrame({"test_time_second": [0.0, 3600.0], "voltage_volt": [4.0, 4.0], "current_ampere": [1.0, 1.0],
                  "Step Index / 1": [1, 1], "applied_pressure_pascal": [5e6, 6e6]}).to_csv(path, index=False)
    data = load(path)
    assert list(data.samples.columns) == ["Test Time / s", "Voltage / V", "Current / A", "Step Count / 1", "Pressure / MPa"]
    assert summarise(data)[C["charge_capacity_Ah"]].iloc[0] == pytest.approx(1.0)
    assert summarise(data)[C["max_pressure_MPa"]].iloc[0] == pytest.approx(6.0)


def test_a_file_without_voltage_is_refused_naming_file_and_columns(tmp_path):
    path = tmp_path / "bad.csv"
    pd.DataFrame({"Test Time / s": [0.0], "Current / A": [1.0]}).to_csv(path, index=False)
    with pytest.raises(InvalidInput, match=r"bad\.csv: no column 'Voltage / V'.*voltage_volt.*found: Test Time / s"):
        load(path)
    with pytest.raises(InvalidInput, match="no such file or folder; expected a run folder"):
        load(tmp_path / "missing.csv")


def test_export_of_an_unknown_column_names_the_columns_there_are(sim_run, tmp_path):
    with pytest.raises(InvalidInput, match=r"--columns: 'Layer 99 Voltage / V' not in .*its columns: .*Layer 23"):
        export(load(sim_run.outcome.folder), "bdf-csv", tmp_path / "x.bdf.csv", columns=["Layer 99 Voltage / V"])


# --- commands ---------------------------------------------------------------------------------


def test_summary_json_is_one_object_per_cycle_with_documented_keys():
    result = CliRunner().invoke(main, ["summary", str(LEAF_CYCLING), "--json"])
    assert result.exit_code == 0, result.output
    cycles = json.loads(result.output)
    assert [c["cycle"] for c in cycles] == list(range(1, 8))
    assert set(cycles[1]) == set(SUMMARY_COLUMNS)
    assert cycles[0]["coulombic_efficiency"] is None  # a charge-only cycle: null, not NaN
    documented = (Path(__file__).resolve().parents[1] / "docs" / "results.md").read_text()
    assert all(f"`{key}`" in documented for key in SUMMARY_COLUMNS)


def test_summary_reads_a_run_that_is_still_being_written(sim_run, tmp_path):
    import shutil

    folder = tmp_path / "running"
    shutil.copytree(sim_run.outcome.folder, folder)
    with open(folder / "samples.csv", "a") as handle:
        handle.write("99999,123.4,17954")  # a row torn by a writer that is mid-line
    result = CliRunner().invoke(main, ["summary", str(folder), "--csv"])
    assert result.exit_code == 0, result.output
    assert float(result.output.splitlines()[1].split(",")[2]) == pytest.approx(
        summarise(load(sim_run.outcome.folder))[C["discharge_capacity_Ah"]].iloc[0])


def test_summary_of_something_unreadable_exits_2_and_names_it(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello\n")
    result = CliRunner().invoke(main, ["summary", str(path)])
    assert result.exit_code == 2
    assert "notes.txt" in result.output and "Test Time / s" in result.output


def test_report_renders_with_its_figures(sim_run, tmp_path):
    result = CliRunner().invoke(main, ["report", str(sim_run.outcome.folder), "-o", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report" / "report.html").read_text()
    pngs = sorted(p.name for p in (tmp_path / "report").glob("*.png"))
    assert pngs == ["01-voltage-and-current.png", "02-capacity-and-efficiency-per-cycle.png",
                    "03-layer-voltages.png", "04-temperature-and-pressure.png", "05-incremental-capacity.png"]
    assert page.count("data:image/png;base64,") == len(pngs)  # self-contained
    for heading in ("Test", "Result", "Events and trips", "Per cycle", "Stack layers", "Protocol as run"):
        assert f"<h2>{heading}</h2>" in page
    assert "sim-assb-23L-001" in page and "capacity-check" in page


def test_compare_puts_runs_side_by_side(sim_run, tmp_path):
    result = CliRunner().invoke(main, ["compare", str(sim_run.outcome.folder), str(LEAF_CYCLING), "--json",
                                       "-o", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    table = json.loads(result.output)
    leaf = table[LEAF_CYCLING.name]
    assert leaf["full_cycles"] == 6
    assert leaf["first_discharge_capacity_Ah"] == pytest.approx(summarise(load(LEAF_CYCLING))[C["discharge_capacity_Ah"]].iloc[1])
    assert (tmp_path / "cmp" / "discharge_capacity_Ah.png").exists()


def test_cycles_out_of_order_are_summarised_per_cycle_number():
    """Counters should never decrease, but a merged file can have them do so: each interval still
    counts for the cycle of its later row, by the general (unsorted) path."""
    data = TWO_CYCLES.copy()
    data["Cycle Count / 1"] = data["Cycle Count / 1"].map({1: 2, 2: 1})
    summary = cycle_summary(data)
    assert list(summary[C["cycle"]]) == [1, 2]
    assert list(summary[C["discharge_capacity_Ah"]]) == pytest.approx([0.72, 0.9])


def test_energy_density_of_the_leaf_cell_from_its_datasheet_mass_and_volume():
    """799 g, 290 x 216 x 7.1 mm (the data's README): the 1C discharge gives about 143 Wh/kg."""
    data = load(LEAF / "1C-Discharge-Bitrode-data.csv")
    volume_L = 29.0 * 21.6 * 0.71 / 1000
    summary = summarise(data, mass_kg=0.799, volume_L=volume_L).set_index(C["cycle"])
    energy = summary.loc[2, C["discharge_energy_Wh"]]
    assert summary.loc[2, C["specific_energy_Wh_per_kg"]] == pytest.approx(energy / 0.799)
    assert summary.loc[2, C["energy_density_Wh_per_L"]] == pytest.approx(energy / volume_L)
    assert 140 < summary.loc[2, C["specific_energy_Wh_per_kg"]] < 146
    assert np.isnan(summary.loc[1, C["specific_energy_Wh_per_kg"]])  # cycle 1 only charged


def test_energy_densities_are_flagged_unless_the_fixture_is_said_to_be_excluded():
    from stackcycler.analysis import fixture_note

    assert fixture_note({}) is None
    assert "do not say" in fixture_note({"mass_kg": 1.0})
    assert "include the pressure fixture" in fixture_note({"mass_kg": 1.0, "fixture_excluded": False})
    assert fixture_note({"volume_L": 0.5, "fixture_excluded": True}) is None


def test_the_report_of_an_hppc_file_has_its_blocks_and_the_resistance_figure(tmp_path):
    result = CliRunner().invoke(main, ["report", str(LEAF / "NissanLeaf-cell-Low-Current-HPPC-25C-2.csv"),
                                       "-o", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "r" / "report.html").read_text()
    assert "<h2>HPPC blocks</h2>" in page and "<h2>HPPC resistance against state of charge</h2>" in page
    assert page.count("<tr><td class='num'>") >= 10  # ten blocks, as the Bitrode program ran them
    assert len(list((tmp_path / "r").glob("*-hppc-resistance.png"))) == 1


def test_a_run_on_a_dut_with_mass_and_volume_reports_its_energy_densities(sim_run):
    summary = summarise(load(sim_run.outcome.folder))
    dut = load(sim_run.outcome.folder).dut
    energy = summary[C["discharge_energy_Wh"]].iloc[0]
    assert summary[C["specific_energy_Wh_per_kg"]].iloc[0] == pytest.approx(energy / dut["mass_kg"])
    assert summary[C["energy_density_Wh_per_L"]].iloc[0] == pytest.approx(energy / dut["volume_L"])
    from stackcycler.analysis import fixture_note
    assert fixture_note(dut) is None  # the bench says the fixture is excluded


def test_the_sidecar_lists_every_column_outside_the_bdf_ontology_as_an_extension(sim_run, tmp_path):
    _, sidecar = export(load(sim_run.outcome.folder), "bdf-csv", tmp_path / "x.bdf.csv")
    extensions = json.loads(sidecar.read_text())["extension_columns"]
    assert extensions == [f"Layer {k:02d} Voltage / V" for k in range(1, 24)]  # pressure became Applied Pressure / Pa
