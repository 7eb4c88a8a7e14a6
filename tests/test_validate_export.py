"""`cycler validate`, `cycler plan --json` and `cycler export-protocol`."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml
from support import cycler

from stackcycler.protocol import Protocol
from stackcycler.protocols import builtin_protocols, load_protocol
from stackcycler.validation import validate_data

DOCS = Path(__file__).resolve().parents[1] / "docs"


# --- validate ----------------------------------------------------------------------------------


def test_validate_a_good_protocol_exits_0(tmp_path):
    code, output = cycler("validate", "hppc", "--bench", "sim", cwd=tmp_path)
    assert code == 0
    assert output.startswith("valid: ") and "checked against the simulated EA Elektro-Automatik" in output


def test_validate_reports_every_problem_and_exits_1(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("steps:\n  - {step: cc, current_A: 1, curent: 2, until: [{voltage_above_V: 90}]}\n"
                    "  - {step: rest, duraton_s: 10}\n  - Charge at 1 X for 1 hour\n")
    code, output = cycler("validate", str(path), cwd=tmp_path)
    assert code == 1
    assert len(re.findall(rf"{re.escape(str(path))}, line \d+:", output)) == 3


def test_validate_against_a_bench_refuses_what_the_dut_cannot_take(tmp_path):
    path = tmp_path / "hot.yaml"
    path.write_text("steps:\n  - {step: cc, current_C: 1.5, until: [{voltage_above_V: 90}]}\n"
                    "  - {step: cv, voltage_V: 120, max_duration_s: 60}\n")
    code, output = cycler("validate", str(path), "--bench", "sim", cwd=tmp_path)
    assert code == 1
    assert "steps[0]: a current of +3 A is not at least 2% below the safety limit" in output
    assert "steps[1]: the voltage 120 V is outside the safety envelope 57.5 to 99.0 V" in output


@pytest.mark.parametrize("args", [["no-such-protocol"], ["capacity-check", "--bench", "no-such-bench"]])
def test_validate_something_that_cannot_be_read_exits_2(tmp_path, args):
    code, output = cycler("validate", *args, cwd=tmp_path)
    assert code == 2 and "unreadable:" in output


def test_validate_unparsable_yaml_exits_2(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("steps: [\n")
    code, output = cycler("validate", str(path), cwd=tmp_path)
    assert code == 2 and "not valid YAML" in output


# --- plan --json ---------------------------------------------------------------------------------


def test_plan_json_follows_its_documented_schema(tmp_path):
    code, output = cycler("plan", "hppc", "--json", cwd=tmp_path)
    assert code == 0
    plan = json.loads(output)
    documented = (DOCS / "plan-json.md").read_text()
    assert plan["schema"] == "stackcycler.plan/1"
    for key in plan:
        assert f"`{key}`" in documented, f"top-level key {key} is not documented"
    for entry in plan["program"]:
        for key in entry:
            assert f"`{key}`" in documented, f"program key {key} is not documented"
    kinds = [entry["kind"] for entry in plan["program"]]
    assert kinds == ["step", "step", "loop_start", "step", "step", "step", "loop_end"]
    pulse = plan["program"][3]
    assert pulse["setpoint"]["waveform"]["values"] == [-2.0, 0.0, 1.5, 0.0]  # 1C, rest, 0.75C regen, rest
    assert pulse["ends"][0] | {"text": None} == {"quantity": "voltage", "direction": "below", "value": 69.0,
                                                 "unit": "V", "goto": "exit_loop", "target_index": 7,
                                                 "origin": "until[0]", "text": None}
    assert pulse["runs_at_most"] == 10
    assert plan["duration"]["worst_case_s"] >= plan["duration"]["expected_s"] > 0


# --- export-protocol -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(builtin_protocols()))
@pytest.mark.parametrize("to", ["json", "yaml"])
def test_export_round_trips_without_loss(tmp_path, name, to):
    code, text = cycler("export-protocol", name, "--to", to, cwd=tmp_path)
    assert code == 0
    again = validate_data(Protocol, yaml.safe_load(text), f"exported.{to}", {})
    assert again == load_protocol(name).model
    assert yaml.safe_load(text) == yaml.safe_load(cycler("export-protocol", name, "--to", to, cwd=tmp_path)[1])


def test_export_to_pybamm_flips_the_sign_and_keeps_the_ends(tmp_path):
    code, text = cycler("export-protocol", "capacity-check", "--to", "pybamm", cwd=tmp_path)
    assert code == 0
    compile(text, "experiment.py", "exec")
    # 0.3333 C: the default time bound is 2 / 0.3333 h = 21602.2 s
    assert ("pybamm.step.current(-0.6666, duration=21602.2, termination=['> 97.75 V'], "
            "description='charge (CC part)')") in text
    assert "pybamm.step.voltage(97.75, duration=21602.2, termination=['0.1 A'], description='charge')" in text
    assert "pybamm.step.current(0.6666, duration=21602.2, termination=['< 69 V'], description='discharge')" in text
    assert 'period="10 seconds"' in text


@pytest.mark.parametrize("text, reason", [
    ("steps:\n  - {step: cc, current_A: 1, until: [{voltage_above_V: 80, goto: last}]}\n"
     "  - {step: rest, duration_s: 5}\n  - {step: rest, duration_s: 5, tag: last}\n", "PyBaMM has no goto"),
    ("steps:\n  - until: [{discharge_capacity_below_Ah: 1}]\n    max_repeats: 3\n    steps: ['Rest for 1 minute']\n",
     "runs until a condition"),
    ("steps:\n  - {step: cc, current_A: 1, until: [{temperature_above_degC: 40}]}\n",
     "cannot end a step on 'any T ≥ 40 degC'"),
])
def test_export_to_pybamm_refuses_what_pybamm_cannot_express(tmp_path, text, reason):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    code, output = cycler("export-protocol", str(path), "--to", "pybamm", cwd=tmp_path)
    assert code == 2 and "cannot export to PyBaMM" in output and reason in output


def test_library_protocols_that_leave_loops_by_goto_are_not_exported(tmp_path):
    code, output = cycler("export-protocol", "hppc", "--to", "pybamm", cwd=tmp_path)
    assert code == 2 and "PyBaMM cannot end a whole pulse train on a condition" in output


@pytest.mark.skipif(importlib.util.find_spec("pybamm") is None, reason="PyBaMM is not installed")
@pytest.mark.parametrize("name", ["capacity-check", "rate-capability", "drive-cycle-dst", "formation", "self-discharge"])
def test_the_pybamm_export_builds_a_pybamm_experiment(tmp_path, name):
    code, text = cycler("export-protocol", name, "--to", "pybamm", cwd=tmp_path)
    assert code == 0
    namespace: dict = {}
    exec(compile(text, f"{name}.py", "exec"), namespace)
    experiment = namespace["experiment"]
    assert len(experiment.steps) >= len(load_protocol(name).model.steps)


def test_a_dry_run_on_the_simulated_bench_gives_the_expected_duration_and_foresees_a_trip():
    from stackcycler.session import RunRequest, dry_run, prepare

    completed = dry_run(prepare(RunRequest(protocol="capacity-check")))
    assert completed.state == "completed" and 7.5 * 3600 < completed.duration_s < 9 * 3600
    tripped = dry_run(prepare(RunRequest(protocol="capacity-check", bench="sim-weak-layer")))
    assert tripped.state == "tripped" and "layer 07" in tripped.reason


def test_a_dry_run_that_runs_out_of_time_says_so():
    from stackcycler.session import RunRequest, dry_run, prepare

    unfinished = dry_run(prepare(RunRequest(protocol="cycle-life")), wall_budget_s=0.5)
    assert unfinished.state == "unfinished" and unfinished.duration_s is None
