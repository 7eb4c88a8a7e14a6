"""Record what PyBaMM's own parser makes of each step string.

    python tests/data/record_pybamm_meanings.py > tests/data/pybamm_step_meanings.json

needs PyBaMM installed (`pip install '.[pybamm]'`); test_stepstrings.py compares stackcycler's
parser with the recording, and with PyBaMM itself when it is installed."""
import json, sys
import pybamm

STRINGS = [
    # the examples and PyBaMM's own examples
    "Discharge at 1C until 3.3 V", "Charge at 1 A for 30 minutes or until 4.1 V", "Hold at 4.1 V until C/50",
    "Rest for 1 hour", "Discharge at 2 W for 30 minutes", "Discharge at 4 Ohm for 1 hour",
    "Discharge at 1C for 0.5 hours", "Discharge at C/20 for 0.5 hours", "Charge at 0.5 C for 45 minutes",
    "Discharge at 1 A for 0.5 hours", "Charge at 200 mA for 45 minutes", "Discharge at 1W for 0.5 hours",
    "Charge at 200mW for 45 minutes", "Rest for 10 minutes", "Hold at 1V for 20 seconds",
    "Charge at 1 C until 4.1V", "Hold at 4.1 V until 50mA", "Hold at 3V until C/50",
    "Discharge at C/3 for 2 hours or until 2.5 V",
    # units of time
    "Rest for 90 s", "Rest for 90 sec", "Rest for 90 second", "Rest for 90 seconds", "Rest for 2 m",
    "Rest for 2 min", "Rest for 2 minute", "Rest for 2 minutes", "Rest for 1.5 h", "Rest for 1.5 hr",
    "Rest for 1.5 hours", "Rest for 1e3 s",
    # values and prefixes
    "Discharge at C/2.5 until 3 V", "Charge at 0.05C until 4.2 V", "Discharge at 2.5e-1 A for 1 hour",
    "Charge at 1500 mA until 4.2 V", "Hold at 4200 mV until 100 mA", "Discharge at 1500 mOhm for 10 minutes",
    "Discharge at 0.5 W until 3 V", "Charge at 0.5W until 4.1 V",
    # terminations
    "Charge at 1 A until > 4.1 V", "Discharge at 1 A until < 3 V", "Hold at 4.1 V until 0.05 A",
    "Hold at 4.1 V until C/20", "Discharge at 2 A until 3.0V", "Charge at C/5 until 4.2 V",
    "Rest until < 3.5 V", "Rest until > 4 V", "Discharge at 1C until > 2 A", "Discharge at 1C until < 0.5 A",
    "Charge at 1 A until 0.1C", "Hold at 4.1 V for 1 hour or until 50 mA",
    # periods
    "Discharge at 1C until 3.3 V (1 minute period)", "Rest for 1 hour (5 minute period)",
    "Charge at 1 A for 10 minutes (1 second period)",
    # PyBaMM's accidents and silent no-ops
    "Charge at 4.2 V for 1 hour", "Discharge at 3 V for 1 hour", "Charge at 4 Ohm for 1 hour",
    "Rest until 3 V", "Hold at 4.1 V until 4.2 V",
    # what PyBaMM refuses
    "charge at 1 A for 1 hour", "Discharge  at 1 A for 1 hour", "Discharge at 1 A", "Discharge at 1 X for 1 hour",
    "Discharge at 1 A for 30", "Discharge at 1 A for 1 fortnight", "Run US06 for 1 hour", "Discharge at 1 A until 5 W",
    "Discharge at 1C at 25oC for 1 hour", "Heat at 1 A for 1 hour", "Discharge at C2 for 1 hour",
    "Discharge at 1 A until 3 V until 2 V", "Discharge at 1 A for 1 hour for 2 hours",
]


def meaning(text):
    try:
        step = pybamm.step.string(text)
    except Exception as error:  # noqa: BLE001 - recording what PyBaMM does
        return {"error": f"{type(error).__name__}: {error}"[:200]}
    terms = []
    for term in step.termination:
        terms.append({"kind": type(term).__name__, "value": term.value, "operator": getattr(term, "operator", None)})
    value = step.value
    return {"class": type(step).__name__, "value": float(value), "duration_s": float(step.duration),
            "default_duration": step.uses_default_duration, "period_s": step.period,
            "direction": step.direction, "terminations": terms}


if __name__ == "__main__":
    json.dump({"pybamm": pybamm.__version__, "meanings": {s: meaning(s) for s in STRINGS}}, sys.stdout, indent=1)
