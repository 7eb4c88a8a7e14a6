"""PyBaMM-style step strings: "Charge at C/3 until 4.2 V", "Rest for 1 hour", ...

A string is accepted wherever a step is, and turned into the same typed step a protocol file
would spell out. It means what PyBaMM's own parser (pybamm.step.string, checked against
PyBaMM 26.10) means, translated to our sign convention: PyBaMM counts current and power
positive for discharge, we count them positive for charge.

Grammar: `INSTRUCTION [for DURATION] [or] [until END] [(PERIOD period)]`
    INSTRUCTION  Rest | Charge at VALUE | Discharge at VALUE | Hold at VOLTAGE
    VALUE        current (A, mA), C-rate (1C, 0.5 C, C/3), power (W, mW), voltage (V, mV),
                 resistance (Ohm, mOhm)
    DURATION     a number and s, sec, second(s), m, min, minute(s), h, hr, hour(s)
    END          a voltage, current or C-rate, optionally after < or >
    PERIOD       a duration: the recording period of the step

Where we deliberately differ from PyBaMM (its accidents and its silent no-ops):
* "Charge at 4.2 V" is a voltage hold at 4.2 V; PyBaMM makes it -4.2 V.
* "Charge at 4 Ohm" is refused: a resistor can only discharge (PyBaMM makes it -4 Ohm).
* "Hold at 1 A" is refused: hold takes a voltage (PyBaMM makes it a 1 A discharge).
* A voltage end without < or > on a rest ("Rest until 3 V") or a hold is refused, because the
  direction is not known; PyBaMM accepts it and never ends on it.
* "until > 1C" ends when the current rises above 1C; PyBaMM ignores the operator on C-rates.
* A power or resistance end is refused with a message; PyBaMM fails with a KeyError.
Friendlier than PyBaMM, with the same meaning: letter case and repeated spaces do not matter,
and "secs", "mins", "hrs" are accepted as time units.
"""

from __future__ import annotations

import re
from typing import Any

EXAMPLES = ('"Charge at C/3 until 4.2 V", "Discharge at 1 A for 30 minutes or until 3 V", '
            '"Hold at 4.2 V until C/50", "Rest for 1 hour", "Discharge at 2 W for 10 minutes"')

_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?"
_ELECTRIC = re.compile(rf"^(?:c\s*/\s*(?P<divisor>{_NUMBER})|(?P<number>{_NUMBER})\s*(?P<unit>[a-z]+))$")
_TIME = re.compile(rf"^(?P<number>{_NUMBER})\s*(?P<unit>[a-z]+)$")
_TIME_UNITS = {**dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1.0),
               **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60.0),
               **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600.0)}
_UNITS = {"a": "current", "v": "voltage", "w": "power", "ohm": "resistance", "c": "c_rate"}
_INSTRUCTION = re.compile(r"^(?P<verb>rest|charge|discharge|hold)(?:\s+at\s+(?P<value>.+))?$")


class StepStringError(ValueError):
    """A step string that cannot be read; the message says why and shows examples."""


def _fail(text: str, why: str) -> StepStringError:
    return StepStringError(f'step string "{text}": {why}. Examples: {EXAMPLES}')


def parse_electric(value: str, text: str) -> tuple[str, float]:
    """'C/3' -> ('c_rate', 0.333); '200 mA' -> ('current', 0.2); '4.2V' -> ('voltage', 4.2)."""
    match = _ELECTRIC.match(value.strip().lower())
    if match is None:
        raise _fail(text, f"'{value}' is not a value with a unit (A, mA, C, C/n, W, mW, V, mV, Ohm, mOhm)")
    if match["divisor"] is not None:
        divisor = float(match["divisor"])
        if divisor <= 0:
            raise _fail(text, f"'{value}': a C-rate C/n needs n > 0")
        return "c_rate", 1.0 / divisor
    number, unit = float(match["number"]), match["unit"]
    if unit in _UNITS:
        return _UNITS[unit], number
    if unit.startswith("m") and unit[1:] in _UNITS and unit != "mc":
        return _UNITS[unit[1:]], number / 1000.0
    raise _fail(text, f"unit '{unit}' in '{value}' is not one of A, mA, C, W, mW, V, mV, Ohm, mOhm")


def parse_duration(value: str, text: str) -> float:
    match = _TIME.match(value.strip().lower())
    if match is None or match["unit"] not in _TIME_UNITS:
        raise _fail(text, f"'{value}' is not a duration in seconds, minutes or hours (e.g. '30 minutes')")
    seconds = float(match["number"]) * _TIME_UNITS[match["unit"]]
    if seconds <= 0:
        raise _fail(text, f"the duration '{value}' must be positive")
    return seconds


def _end(until: str, text: str, verb: str, sign: int) -> dict[str, float]:
    """One end condition, in our sign convention (+ = charge)."""
    until = until.strip()
    operator = until[0] if until[:1] in ("<", ">") else None
    kind, value = parse_electric(until[1:] if operator else until, text)
    if kind == "voltage":
        if verb == "hold":
            raise _fail(text, "a hold keeps the voltage constant, so it cannot end on a voltage")
        if operator is None:
            if verb == "rest":
                raise _fail(text, f"a voltage end on a rest needs < or > (e.g. 'until < {value:g} V'): "
                                  "which way the voltage goes is not known")
            operator = ">" if sign > 0 else "<"
        return {"voltage_above_V" if operator == ">" else "voltage_below_V": value}
    if kind == "current":
        if operator is None:
            return {"current_below_A": abs(value)}
        # PyBaMM compares its own signed current (+ = discharge): flip it to ours.
        return {"signed_current_below_A" if operator == ">" else "signed_current_above_A": -value}
    if kind == "c_rate":
        return {"current_above_C" if operator == ">" else "current_below_C": abs(value)}
    raise _fail(text, f"a step can end on a voltage, a current or a C-rate, not on a {kind}")


def parse_step_string(text: str) -> dict[str, Any]:
    """The typed step (as protocol-file data) that a step string means."""
    original = text
    body = " ".join(text.split()).lower()
    if not body:
        raise _fail(original, "it is empty")
    if re.search(r"\d\s*oc\b", body):
        raise _fail(original, "a temperature cannot be part of a step string; set it on the bench's chamber")
    if body.startswith("run "):
        raise _fail(original, "'Run' (drive cycles) is not a step string; use `step: profile` with a table or file")

    step: dict[str, Any] = {"name": original.strip()}
    period = re.search(r"\s*\((.+?)\s+period\)$", body)
    if period:
        step["record_time_s"] = parse_duration(period[1], original)
        body = body[: period.start()]

    parts = re.split(r"\s+until\s+", body)
    if len(parts) > 2:
        raise _fail(original, "it has more than one 'until'; write the step as a mapping to give several ends")
    head, until = parts[0], (parts[1] if len(parts) == 2 else None)
    head = re.sub(r"\s+or$", "", head)
    parts = re.split(r"\s+for\s+", head)
    if len(parts) > 2:
        raise _fail(original, "it has more than one 'for'")
    head, duration = parts[0], (parts[1] if len(parts) == 2 else None)
    if until is None and duration is None:
        raise _fail(original, "it needs 'for' a duration or 'until' a condition (or both)")

    instruction = _INSTRUCTION.match(head)
    if instruction is None or (instruction["verb"] == "rest") != (instruction["value"] is None):
        raise _fail(original, f"'{head}' is not one of 'Rest', 'Charge at …', 'Discharge at …', 'Hold at … V'")
    verb = instruction["verb"]
    sign = {"charge": 1, "discharge": -1}.get(verb, 0)

    if verb == "rest":
        step["step"] = "rest"
    else:
        kind, value = parse_electric(instruction["value"], original)
        if value == 0:
            raise _fail(original, "a value of zero is a rest; write 'Rest for …'")
        if verb == "hold" and kind != "voltage":
            raise _fail(original, "'Hold at' takes a voltage, e.g. 'Hold at 4.2 V until C/50'")
        if kind == "voltage":
            step.update(step="cv", voltage_V=abs(value))
        elif kind == "current":
            step.update(step="cc", current_A=sign * abs(value))
        elif kind == "c_rate":
            step.update(step="cc", current_C=sign * abs(value))
        elif kind == "power":
            step.update(step="cp", power_W=sign * abs(value))
        else:
            if verb == "charge":
                raise _fail(original, "a resistance can only discharge; use 'Discharge at … Ohm'")
            step.update(step="cr", resistance_ohm=abs(value))

    if duration is not None:
        step["duration_s" if verb == "rest" else "max_duration_s"] = parse_duration(duration, original)
    if until is not None:
        step["until"] = [_end(until, original, verb, sign)]
    return step
