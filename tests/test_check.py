"""`cycler check RUN --expect ...`: a run's results against expected values, for nightly regression runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stackcycler.check import DRIFTED, HOLDS, MALFORMED, check_command, check_run, parse_expectation


def _run_json(folder: Path, state: str = "completed", summary: list | None = None, **extra) -> Path:
    folder.mkdir(parents=True)
    cycles = [
        {"cycle": 1, "charge_capacity_Ah": 2.10, "discharge_capacity_Ah": 2.00, "charge_energy_Wh": 190.0,
         "discharge_energy_Wh": 180.0, "coulombic_efficiency": 2.00 / 2.10, "energy_efficiency": 180 / 190},
        {"cycle": 2, "charge_capacity_Ah": 2.00, "discharge_capacity_Ah": 1.90, "charge_energy_Wh": 180.0,
         "discharge_energy_Wh": 170.0, "coulombic_efficiency": 0.95, "energy_efficiency": 170 / 180},
        {"cycle": 3, "charge_capacity_Ah": 0.5, "discharge_capacity_Ah": 0.001, "charge_energy_Wh": 45.0,
         "discharge_energy_Wh": 0.08, "coulombic_efficiency": 0.002, "energy_efficiency": 0.002},
    ]
    meta = {"state": state, "reason": "protocol finished", "exit_code": 0, "end_test_time_s": 30000.0,
            "summary": cycles if summary is None else summary, **extra}
    (folder / "run.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One real quick capacity check on the simulated bench (about 2.04 Ah, 177.5 Wh, CE 99.7 %)."""
    from support import QUICK

    from stackcycler.live import SilentReporter
    from stackcycler.session import RunRequest, execute, prepare

    runs = tmp_path_factory.mktemp("check") / "runs"
    request = RunRequest(protocol="capacity-check", bench="sim", runs_dir=runs, operator="pytest",
                         overrides=dict(QUICK))
    return execute(prepare(request), SilentReporter()).outcome.folder


def test_a_real_run_within_its_expectations_exits_0_with_one_line_each(quick_run):
    code, lines = check_run(quick_run, ["capacity_Ah=2.04±1%", "energy_Wh=177.5+-1", "coulombic_efficiency>=0.99",
                                        "state=completed", "cycles=1"])
    assert code == HOLDS == 0
    assert len(lines) == 5 and all(line.startswith("ok ") for line in lines)
    assert lines[0].startswith("ok    capacity_Ah: measured 2.04")
    assert "expected 2.04 Ah ± 1 % (2.0196 to 2.0604)" in lines[0]


def test_a_real_run_that_drifted_from_the_expected_capacity_exits_1(quick_run):
    code, lines = check_run(quick_run, ["capacity_Ah=2.5±2%", "state=completed"])
    assert code == DRIFTED == 1
    assert lines[0].startswith("DRIFT capacity_Ah: measured 2.04") and "(2.45 to 2.55)" in lines[0]
    assert lines[1].startswith("ok    state")


def test_the_cli_function_finds_the_run_by_a_piece_of_its_name(quick_run):
    code, lines = check_command("capacity-check", ["state=completed"], quick_run.parent)
    assert (code, lines) == (0, ["ok    state: measured completed, expected completed"])


def test_capacity_is_the_last_cycle_that_discharged_not_a_trailing_charge(tmp_path):
    folder = _run_json(tmp_path / "run")
    assert check_run(folder, ["capacity_Ah=1.90±0.001"])[0] == HOLDS
    assert check_run(folder, ["energy_Wh=170±0.1%", "coulombic_efficiency=0.95±0.0001"])[0] == HOLDS
    assert check_run(folder, ["capacity_Ah=2.00±0.01"])[0] == DRIFTED


def test_a_relative_tolerance_is_a_percentage_of_the_expected_value(tmp_path):
    folder = _run_json(tmp_path / "run")
    assert check_run(folder, ["capacity_Ah=1.93±2%"])[0] == HOLDS  # 1.8914 .. 1.9686
    assert check_run(folder, ["capacity_Ah=1.93±1%"])[0] == DRIFTED  # 1.9107 .. 1.9493


def test_a_measurement_exactly_on_the_bound_holds(tmp_path):
    folder = _run_json(tmp_path / "run")
    assert check_run(folder, ["capacity_Ah=2.0±5%", "capacity_Ah=1.8+-0.1"])[0] == HOLDS


def test_comparisons_against_a_threshold(tmp_path):
    folder = _run_json(tmp_path / "run")
    assert check_run(folder, ["coulombic_efficiency>=0.95", "coulombic_efficiency<0.96", "energy_Wh>169"])[0] == HOLDS
    code, lines = check_run(folder, ["coulombic_efficiency>=0.99"])
    assert (code, lines) == (DRIFTED, ["DRIFT coulombic_efficiency: measured 0.95, expected >= 0.99"])


def test_a_tripped_run_fails_a_state_expectation(tmp_path):
    folder = _run_json(tmp_path / "run", state="tripped")
    code, lines = check_run(folder, ["state=completed", "state!=faulted"])
    assert code == DRIFTED
    assert lines == ["DRIFT state: measured tripped, expected completed", "ok    state: measured tripped, expected not faulted"]


def test_a_run_with_no_results_has_drifted_and_says_why(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({"state": "running"}))
    code, lines = check_run(folder, ["capacity_Ah=2±2%"])
    assert code == DRIFTED
    assert lines == ["DRIFT capacity_Ah: measured not measured, expected 2 Ah ± 2 % (1.96 to 2.04); "
                     "no results in run.json (the run is running: not finished?)"]


def test_a_run_that_never_discharged_has_no_capacity(tmp_path):
    folder = _run_json(tmp_path / "run", summary=[{"cycle": 1, "charge_capacity_Ah": 1.0, "discharge_capacity_Ah": 0.0}])
    code, lines = check_run(folder, ["capacity_Ah=2±2%"])
    assert code == DRIFTED and lines[0].endswith("; no cycle discharged")


@pytest.mark.parametrize("text, problem", [
    ("capacity=2", "unknown quantity 'capacity'; accepted: capacity_Ah, energy_Wh"),
    ("capacity_Ah=two", "the value 'two' is not a number"),
    ("capacity_Ah=2±x%", "the tolerance 'x' is not a number"),
    ("capacity_Ah>=2±1%", "a tolerance (±) goes with = only"),
    ("state>=completed", "state is compared with = or !="),
    ("capacity_Ah", "not NAME=VALUE[±TOL[%]]"),
    ("capacity_Ah=nan", "must be a finite number"),
])
def test_a_malformed_expectation_exits_2_naming_it(tmp_path, text, problem):
    folder = _run_json(tmp_path / "run")
    code, lines = check_run(folder, ["state=completed", text])
    assert code == MALFORMED == 2
    assert len(lines) == 1 and lines[0].startswith(f"malformed expectation '{text}': ") and problem in lines[0]


def test_plus_minus_spellings_are_the_same():
    assert parse_expectation("capacity_Ah=2.0±2%") == parse_expectation("capacity_Ah = 2.0 +- 2 %").__class__(
        "capacity_Ah=2.0±2%", "capacity_Ah", "=", 2.0, 2.0, True)
    assert parse_expectation("capacity_Ah=2.05+/-0.01").tolerance == 0.01


def test_an_unreadable_run_folder_exits_2(tmp_path):
    assert check_run(tmp_path / "missing", ["state=completed"]) == (
        MALFORMED, [f"{tmp_path / 'missing'}: not a run folder (no run.json)"])
    folder = tmp_path / "torn"
    folder.mkdir()
    (folder / "run.json").write_text("{\"state\": ")
    code, lines = check_run(folder, ["state=completed"])
    assert code == MALFORMED and lines[0].startswith(f"{folder / 'run.json'}: not readable JSON")
    assert check_command("nothing-like-it", ["state=completed"], tmp_path)[0] == MALFORMED


def test_no_expectations_is_a_usage_error(tmp_path):
    assert check_run(_run_json(tmp_path / "run"), [])[0] == MALFORMED


def test_json_output_for_scripts(tmp_path):
    folder = _run_json(tmp_path / "run")
    code, lines = check_run(folder, ["capacity_Ah=1.9±1%", "state=tripped"], as_json=True)
    document = json.loads("\n".join(lines))
    assert code == DRIFTED and document["holds"] is False and document["exit_code"] == 1
    assert [(e["quantity"], e["measured"], e["holds"]) for e in document["expectations"]] == [
        ("capacity_Ah", 1.9, True), ("state", "completed", False)]


def test_the_newest_of_several_runs_is_checked_on_request(run_protocol, tmp_path):
    from stackcycler.cli import main
    from click.testing import CliRunner

    first, second = run_protocol().outcome.folder, run_protocol().outcome.folder
    assert first != second
    runner = CliRunner()
    ambiguous = runner.invoke(main, ["check", "capacity-check", "--expect", "state=completed",
                                     "--runs-dir", str(tmp_path / "runs")])
    assert ambiguous.exit_code == 2 and "matches 2 runs" in ambiguous.output
    newest = runner.invoke(main, ["check", "capacity-check", "--newest", "--expect", "state=completed",
                                  "--runs-dir", str(tmp_path / "runs")])
    assert newest.exit_code == 0 and "ok" in newest.output
