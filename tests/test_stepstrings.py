"""PyBaMM step strings mean what PyBaMM's own parser means (sign flipped: + = charge here).

tests/data/pybamm_step_meanings.json records what PyBaMM 26.10's `pybamm.step.string` makes of
72 strings (step class, value, duration, terminations, period, or the error it raises); it was
produced by tests/data/record_pybamm_meanings.py. Here each recorded meaning is translated to
the typed step it should become, independently of the parser, and compared with the parser.
Where we deliberately differ (PyBaMM's accidents and silent no-ops), the table says so.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from stackcycler.protocol import Protocol
from stackcycler.stepstrings import StepStringError, parse_step_string

RECORDING = json.loads((Path(__file__).parent / "data" / "pybamm_step_meanings.json").read_text())
MEANINGS: dict[str, dict] = RECORDING["meanings"]

# Strings PyBaMM accepts but where its meaning is an accident: what we do instead.
DEVIATIONS = {
    "Charge at 4.2 V for 1 hour": {"step": "cv", "voltage_V": 4.2, "max_duration_s": 3600.0},  # PyBaMM: -4.2 V
    "Charge at 4 Ohm for 1 hour": "a resistance can only discharge",  # PyBaMM: -4 Ohm
    "Rest until 3 V": "needs < or >",  # PyBaMM: accepted, never ends on it
    "Hold at 4.1 V until 4.2 V": "cannot end on a voltage",  # PyBaMM: accepted, never ends on it
}
# Strings PyBaMM refuses though their meaning is plain: letter case, spacing.
FRIENDLIER = {
    "charge at 1 A for 1 hour": {"step": "cc", "current_A": 1.0, "max_duration_s": 3600.0},
    "Discharge  at 1 A for 1 hour": {"step": "cc", "current_A": -1.0, "max_duration_s": 3600.0},
}


def expected_from_pybamm(meaning: dict) -> dict:
    """The typed step (our sign) that PyBaMM's meaning corresponds to."""
    kind, value = meaning["class"], meaning["value"]
    step: dict = {
        "Rest": {"step": "rest"},
        "Current": {"step": "cc", "current_A": -value},
        "CRate": {"step": "cc", "current_C": -value},
        "Voltage": {"step": "cv", "voltage_V": value},
        "Power": {"step": "cp", "power_W": -value},
        "Resistance": {"step": "cr", "resistance_ohm": value},
    }[kind]
    if not meaning["default_duration"]:
        step["duration_s" if kind == "Rest" else "max_duration_s"] = meaning["duration_s"]
    if meaning["period_s"] is not None:
        step["record_time_s"] = meaning["period_s"]
    ends = []
    for term in meaning["terminations"]:
        op, v = term["operator"], term["value"]
        if term["kind"] == "VoltageTermination":
            if op is None:
                op = ">" if meaning["direction"] == "charge" else "<"
            ends.append({"voltage_above_V" if op == ">" else "voltage_below_V": v})
        elif term["kind"] == "CurrentTermination":
            if op is None:
                ends.append({"current_below_A": v})
            else:  # PyBaMM's signed current is + for discharge: I_pybamm > v  <=>  I_ours < -v
                ends.append({"signed_current_below_A" if op == ">" else "signed_current_above_A": -v})
        else:
            assert term["kind"] == "CRateTermination" and op is None
            ends.append({"current_below_C": v})
    if ends:
        step["until"] = ends
    return step


def ours(text: str) -> dict:
    parsed = parse_step_string(text)
    assert parsed.pop("name") == text.strip()
    return parsed


ACCEPTED = [s for s, m in MEANINGS.items() if "error" not in m and s not in DEVIATIONS]
REFUSED = [s for s, m in MEANINGS.items() if "error" in m and s not in FRIENDLIER]


def test_the_recording_covers_at_least_fifty_strings():
    assert len(MEANINGS) >= 50 and len(ACCEPTED) >= 50
    assert RECORDING["pybamm"].startswith("26.")


@pytest.mark.parametrize("text", ACCEPTED)
def test_a_string_pybamm_accepts_means_the_same_here(text):
    assert ours(text) == expected_from_pybamm(MEANINGS[text])


@pytest.mark.parametrize("text", REFUSED)
def test_a_string_pybamm_refuses_is_refused_here_with_examples(text):
    with pytest.raises(StepStringError, match=r"Examples: \"Charge at C/3 until 4.2 V\""):
        parse_step_string(text)


@pytest.mark.parametrize("text, expected", list(FRIENDLIER.items()))
def test_letter_case_and_spacing_do_not_matter(text, expected):
    assert "error" in MEANINGS[text]  # PyBaMM refuses these
    assert ours(text) == expected


@pytest.mark.parametrize("text, deviation", list(DEVIATIONS.items()))
def test_pybamm_accidents_are_not_copied(text, deviation):
    assert "error" not in MEANINGS[text]  # PyBaMM accepts these
    if isinstance(deviation, dict):
        assert ours(text) == deviation
    else:
        with pytest.raises(StepStringError, match=deviation):
            parse_step_string(text)


def test_refusals_say_why_more_clearly_than_pybamm():
    with pytest.raises(StepStringError, match="can end on a voltage, a current or a C-rate, not on a power"):
        parse_step_string("Discharge at 1 A until 5 W")  # PyBaMM: KeyError: 'power'
    with pytest.raises(StepStringError, match="more than one 'until'"):
        parse_step_string("Discharge at 1 A until 3 V until 2 V")  # PyBaMM: too many values to unpack
    with pytest.raises(StepStringError, match="'c2' is not a value with a unit"):
        parse_step_string("Discharge at C2 for 1 hour")  # PyBaMM: could not convert string to float: ''


def test_strings_stand_wherever_a_step_does_in_a_protocol():
    protocol = Protocol.model_validate({"steps": ["Charge at 1 A until 4.1 V",
                                                  {"repeat": 2, "steps": ["Discharge at 1C for 10 minutes",
                                                                          "Rest for 1 hour"]}]})
    assert protocol.steps[0].step == "cc" and protocol.steps[0].name == "Charge at 1 A until 4.1 V"
    assert [s.step for s in protocol.steps[1].steps] == ["cc", "rest"]


@pytest.mark.skipif(importlib.util.find_spec("pybamm") is None, reason="PyBaMM is not installed")
def test_the_recording_is_what_the_installed_pybamm_says():
    import sys

    sys.path.insert(0, str(Path(__file__).parent / "data"))
    try:
        from record_pybamm_meanings import STRINGS, meaning
    finally:
        sys.path.pop(0)
    for text in STRINGS:
        recorded, live = MEANINGS[text], meaning(text)
        if "error" in recorded:
            assert "error" in live, text
        else:
            assert live == recorded, text
