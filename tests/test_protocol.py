"""Protocol files: validation with file/line/field errors, and binding a protocol to a DUT."""

from __future__ import annotations

from pathlib import Path

import pytest

from stackcycler.bench import load_bench
from stackcycler.errors import InvalidInput
from stackcycler.plan import CURRENT_END_BLANKING_S, EndContext, PlannedEnd, bind
from stackcycler.protocols import builtin_protocols, load_protocol
from stackcycler.safety import SafetyEnvelope
from stackcycler.sample import Sample


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def plan_for(tmp_path: Path, text: str, overrides: dict | None = None, channel=None):
    protocol = load_protocol(str(write(tmp_path, text)))
    channel = channel or load_bench("sim").config.channels["stack1"]
    envelope = SafetyEnvelope.tightest(channel.dut.safety, protocol.model.safety)
    return bind(protocol.model, protocol.path, protocol.text, channel, envelope, overrides)


CC = "name: t\nsteps:\n  - step: cc\n    current_C: {rate}\n    until:\n      - voltage_above_V: 90\n"


def test_every_builtin_protocol_validates_and_binds_to_the_sim_bench(tmp_path):
    channel = load_bench("sim").config.channels["stack1"]
    for name in builtin_protocols():
        protocol = load_protocol(name)
        envelope = SafetyEnvelope.tightest(channel.dut.safety, protocol.model.safety)
        plan = bind(protocol.model, protocol.path, protocol.text, channel, envelope)
        assert all(step.time_bound_s > 0 for step in plan.steps)


def test_c_rates_resolve_against_the_dut_capacity(tmp_path):
    plan = plan_for(tmp_path, CC.format(rate=0.5))
    assert plan.steps[0].current_A == pytest.approx(1.0)  # 0.5 C of 2.0 Ah
    assert plan.steps[0].step_type == "CC_CHG"


def test_c_rates_are_refused_when_the_dut_has_no_capacity(tmp_path):
    channel = load_bench("sim").config.channels["stack1"]
    no_capacity = channel.model_copy(update={"dut": channel.dut.model_copy(update={"nominal_capacity_Ah": None})})
    with pytest.raises(InvalidInput, match=r"steps\[0\].current_C is a C-rate, but DUT 'sim-assb-23L-001' has no "
                                           r"nominal_capacity_Ah"):
        plan_for(tmp_path, CC.format(rate=0.5), channel=no_capacity)


def test_default_time_bound_is_two_over_c_hours(tmp_path):
    step = plan_for(tmp_path, CC.format(rate=0.5)).steps[0]
    assert step.time_bound_s == pytest.approx(4 * 3600)
    assert step.time_bound_is_default
    assert step.ends[-1] == PlannedEnd("step_time", "above", 4 * 3600, "time bound")


def test_explicit_time_bound_wins(tmp_path):
    text = CC.format(rate=0.5) + "    max_duration_s: 600\n"
    step = plan_for(tmp_path, text).steps[0]
    assert step.time_bound_s == 600 and not step.time_bound_is_default


def test_parameters_take_values_from_the_dut_and_can_be_negated_and_overridden(tmp_path):
    text = ("name: t\nparameters:\n  rate: 0.25\n  floor_V: dut.discharge_voltage_V\nsteps:\n"
            "  - step: cc\n    current_C: -$rate\n    until:\n      - voltage_below_V: $floor_V\n")
    plan = plan_for(tmp_path, text, overrides={"rate": 0.5})
    assert plan.parameters == {"rate": 0.5, "floor_V": 69.0}
    assert plan.steps[0].current_A == pytest.approx(-1.0)
    assert plan.steps[0].ends[0] == PlannedEnd("voltage", "below", 69.0, "until[0]")


def test_an_unknown_parameter_reference_is_refused(tmp_path):
    text = "name: t\nsteps:\n  - step: rest\n    duration_s: $rest\n"
    with pytest.raises(InvalidInput, match=r"steps\[0\].duration_s: unknown parameter '\$rest'; parameters: none"):
        load_protocol(str(write(tmp_path, text)))


def test_an_unknown_field_names_file_line_field_and_the_accepted_fields(tmp_path):
    path = write(tmp_path, "name: t\nsteps:\n  - step: rest\n    duration_s: 60\n    duraton_s: 60\n")
    with pytest.raises(InvalidInput) as caught:
        load_protocol(str(path))
    assert str(caught.value) == (f"{path}, line 5: unknown field 'steps[0].duraton_s'; "
                                 "accepted here: name, tag, until, max_duration_s, record_time_s, step, duration_s")


def test_an_unknown_step_type_lists_the_step_types(tmp_path):
    path = write(tmp_path, "name: t\nsteps:\n  - step: pulsar\n")
    with pytest.raises(InvalidInput) as caught:
        load_protocol(str(path))
    message = str(caught.value)
    assert f"{path}, line 3" in message
    assert "'rest', 'cc', 'cv', 'cccv', 'cp', 'cr', 'pulse', 'profile', 'eis', 'next_cycle'" in message


def test_a_missing_required_field_is_named(tmp_path):
    path = write(tmp_path, "name: t\nsteps:\n  - step: cv\n")
    with pytest.raises(InvalidInput, match=r"line 3: 'steps\[0\].voltage_V' is required"):
        load_protocol(str(path))


def test_an_end_condition_must_name_exactly_one_quantity(tmp_path):
    path = write(tmp_path, "name: t\nsteps:\n  - step: cc\n    current_A: 1\n    until:\n"
                           "      - voltage_above_V: 90\n        step_time_s: 10\n")
    with pytest.raises(InvalidInput, match=r"line 6: 'steps\[0\].until\[0\]': write exactly one condition"):
        load_protocol(str(path))


def test_a_step_current_beyond_the_safety_envelope_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(InvalidInput, match=r"steps\[0\]: a current of \+3 A is not at least 2% below the safety "
                                           r"limit max_charge_current_A = 2.2 A"):
        plan_for(tmp_path, CC.format(rate=1.5))


def test_a_cv_voltage_outside_the_envelope_is_refused(tmp_path):
    text = "name: t\nsteps:\n  - step: cv\n    voltage_V: 101\n    max_duration_s: 60\n"
    with pytest.raises(InvalidInput, match=r"the voltage 101 V is outside the safety envelope 57.5 to 99.0 V"):
        plan_for(tmp_path, text)


def test_a_protocol_may_tighten_but_not_loosen_the_dut_limits(tmp_path):
    text = ("name: t\nsafety:\n  max_layer_voltage_V: 4.3\n  max_temperature_degC: 80\n"
            "steps:\n  - step: rest\n    duration_s: 1\n")
    envelope = plan_for(tmp_path, text).envelope
    assert envelope.max_layer_voltage_V == 4.3  # tighter than the DUT's 4.40
    assert envelope.max_temperature_degC == 60  # the DUT's 60 stands


def test_a_limit_without_an_input_to_check_it_is_refused(tmp_path):
    channel = load_bench("sim").config.channels["stack1"].model_copy(update={"pressure": None})
    with pytest.raises(InvalidInput, match="a pressure safety limit is armed but the channel has no pressure input"):
        plan_for(tmp_path, "name: t\nsteps:\n  - step: rest\n    duration_s: 1\n", channel=channel)


def test_non_time_ends_are_checked_before_time_ends(tmp_path):
    text = ("name: t\nsteps:\n  - step: cc\n    current_A: 1\n    until:\n"
            "      - step_time_s: 100\n      - voltage_above_V: 90\n")
    ends = plan_for(tmp_path, text).steps[0].ends
    assert [e.quantity for e in ends] == ["voltage", "step_time", "step_time"]


def test_current_ends_are_blanked_at_the_start_of_a_step():
    end = PlannedEnd("current", "below", 0.1, "until[0]")
    quiet = Sample(0.0, 0.0, 90.0, 0.0)
    assert not end.reached(EndContext(quiet, CURRENT_END_BLANKING_S - 0.5, 0.0, 0.0, None, current_ends_armed=False))
    assert end.reached(EndContext(quiet, CURRENT_END_BLANKING_S, 0.0, 0.0, None, current_ends_armed=True))
