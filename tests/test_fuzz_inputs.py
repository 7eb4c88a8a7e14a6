"""Bad input never crashes: random and mutated protocol files, bench files and step strings end in a
model or in InvalidInput (with a message), never in any other exception."""

from __future__ import annotations

import copy
import json
import math
import string

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stackcycler.bench import BenchConfig, load_bench
from stackcycler.errors import InvalidInput
from stackcycler.plan import bind
from stackcycler.protocol import Protocol
from stackcycler.protocols import builtin_protocols, load_protocol
from stackcycler.safety import SafetyEnvelope
from stackcycler.stepstrings import StepStringError, parse_step_string
from stackcycler.validation import parse_yaml, validate_data

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CHANNEL = load_bench("sim").config.channels["stack1"]
LIBRARY = [load_protocol(name) for name in sorted(builtin_protocols())]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.sampled_from([float("nan"), float("inf"), -float("inf")]),
                    st.text(max_size=20), st.sampled_from(["$rate", "-$x", "dut.layers", "1e5", "C/3", "cc", "rest",
                                                           "next", "end_of_loop", "4200", ""]))
structures = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.sampled_from(["steps", "step", "until", "repeat", "name", "tag", "goto", "current_A",
                                     "current_C", "voltage_V", "duration_s", "safety", "record", "table",
                                     "segments", "parameters", "max_repeats", "extra"]) | st.text(max_size=8),
                    inner, max_size=5)), max_leaves=25)


def load_or_refuse(data) -> Protocol | None:
    """Validate data as a protocol: a model, or InvalidInput; anything else fails the test."""
    try:
        return validate_data(Protocol, data, "fuzz.yaml", {})
    except InvalidInput as error:
        assert str(error)  # every refusal says something
        return None


@FUZZ
@given(st.text(alphabet=string.printable + "äµ°→", max_size=300))
def test_random_text_is_parsed_or_refused(text):
    try:
        data, _ = parse_yaml(text, "fuzz.yaml")
    except InvalidInput:
        return
    load_or_refuse(data)


@FUZZ
@given(structures)
def test_random_structures_validate_or_are_refused(data):
    load_or_refuse(data)


def _mutate(data, choice, value):
    """Replace, delete or add at a random place in a nested structure."""
    target = data
    path = []
    while isinstance(target, (dict, list)) and target and choice.draw(st.booleans()):
        key = choice.draw(st.sampled_from(list(target) if isinstance(target, dict) else list(range(len(target)))))
        path.append((target, key))
        target = target[key]
    if not path:
        return value
    parent, key = path[-1]
    action = choice.draw(st.sampled_from(["replace", "delete", "add"]))
    if action == "replace":
        parent[key] = value
    elif action == "delete":
        del parent[key]
    elif isinstance(parent, dict):
        parent[choice.draw(st.text(min_size=1, max_size=6))] = value
    else:
        parent.append(value)
    return data


def check_loads_and_binds(protocol_file, data) -> None:
    """A protocol either loads and binds to the bench with every number finite, or is refused."""
    protocol = load_or_refuse(data)
    if protocol is None:
        return
    try:
        plan = bind(protocol, protocol_file.path, protocol_file.text, CHANNEL,
                    SafetyEnvelope.tightest(CHANNEL.dut.safety, protocol.safety))
    except InvalidInput as error:
        assert str(error)
        return
    for step in plan.steps:  # what binds is runnable
        numbers = [step.time_bound_s, *(e.value for e in step.ends)]
        numbers += [getattr(step, n) for n in ("current_A", "voltage_V", "current_limit_A", "power_W",
                                               "resistance_ohm") if getattr(step, n) is not None]
        assert all(math.isfinite(n) for n in numbers), (step, numbers)


@FUZZ
@given(st.sampled_from(LIBRARY), st.data(), scalars)
def test_mutated_library_protocols_load_and_bind_or_are_refused(protocol_file, choice, value):
    check_loads_and_binds(protocol_file, _mutate(copy.deepcopy(yaml.safe_load(protocol_file.text)), choice, value))


def _numeric_leaves(data, path=()):
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, list):
        items = enumerate(data)
    else:
        return [path] if isinstance(data, (int, float)) and not isinstance(data, bool) else []
    return [leaf for key, value in items for leaf in _numeric_leaves(value, path + (key,))]


@FUZZ
@given(st.sampled_from(LIBRARY), st.data(), st.floats(allow_nan=True, allow_infinity=True))
def test_any_number_in_a_library_protocol_is_checked(protocol_file, choice, number):
    data = copy.deepcopy(yaml.safe_load(protocol_file.text))
    leaves = _numeric_leaves(data)
    *parents, last = choice.draw(st.sampled_from(leaves))
    target = data
    for key in parents:
        target = target[key]
    target[last] = number
    check_loads_and_binds(protocol_file, data)


@FUZZ
@given(st.data(), scalars)
def test_mutated_bench_files_validate_or_are_refused(choice, value):
    bench = load_bench("sim")
    data = _mutate(copy.deepcopy(bench.resolved), choice, value)
    try:
        validate_data(BenchConfig, data, "fuzz-bench.yaml", {})
    except InvalidInput as error:
        assert str(error)


words = st.sampled_from(["Charge", "Discharge", "Hold", "Rest", "at", "for", "until", "or", "1", "0.5", "C/3",
                         "1C", "2 A", "200 mA", "4.2 V", "3 V", "2 W", "4 Ohm", "1 hour", "30 minutes", "10 s",
                         "<", ">", "(1 minute period)", "oC", "C/", "e5", "-1", "A", "V", ""])


@FUZZ
@given(st.one_of(st.lists(words, max_size=8).map(" ".join), st.text(max_size=60)))
def test_random_step_strings_parse_or_are_refused_with_examples(text):
    try:
        step = parse_step_string(text)
    except StepStringError as error:
        assert "Examples:" in str(error)
        return
    load_or_refuse({"steps": [step]})  # what a string means is itself a valid step, or refused as one


def test_json_protocols_are_yaml_too(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"steps": ["Charge at 1 A until 4.1 V", {"step": "rest", "duration_s": 60}]}))
    assert load_protocol(str(path)).model.steps[1].duration_s == 60
