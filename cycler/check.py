"""`cycler check RUN --expect ...`: a finished run's results against expected values.

The regression check of unattended and CI runs: a nightly job queues the lab's protocols on
the simulated benches, then checks each run folder, and a non-zero exit fails the job loudly
when a result drifted.

An expectation is `NAME OP VALUE`:

    capacity_Ah=2.0±2%            within 2 % of 2.0 (`+-` works as well as `±`)
    capacity_Ah=2.05±0.01         within 0.01 (in the quantity's unit) of 2.05
    coulombic_efficiency>=0.99    also <=, >, <
    state=completed               also state!=tripped

Cycle quantities (capacity, energy, efficiencies) are those of the cycle the run's one-line
result reports: the last cycle that discharged (see `analysis.result_line`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from . import analysis
from .errors import StackcyclerError
from .operation import find_run
from .store import METADATA_FILE

CHECK_EXIT_HELP = """\b
Exit codes:
  0  every expectation holds
  1  a result drifted (or was not measured: the run did not discharge, or did not finish)
  2  a malformed expectation, or no readable run folder"""

HOLDS, DRIFTED, MALFORMED = 0, 1, 2

# name -> (summary key of the reported cycle, unit)
CYCLE_QUANTITIES = {
    "capacity_Ah": ("discharge_capacity_Ah", "Ah"),
    "energy_Wh": ("discharge_energy_Wh", "Wh"),
    "discharge_capacity_Ah": ("discharge_capacity_Ah", "Ah"),
    "charge_capacity_Ah": ("charge_capacity_Ah", "Ah"),
    "discharge_energy_Wh": ("discharge_energy_Wh", "Wh"),
    "charge_energy_Wh": ("charge_energy_Wh", "Wh"),
    "coulombic_efficiency": ("coulombic_efficiency", ""),
    "energy_efficiency": ("energy_efficiency", ""),
}
RUN_QUANTITIES = {"cycles": "", "test_time_s": "s", "exit_code": ""}
TEXT_QUANTITIES = ("state",)
QUANTITIES = (*CYCLE_QUANTITIES, *RUN_QUANTITIES, *TEXT_QUANTITIES)

_EXPECTATION = re.compile(r"^\s*(?P<name>[A-Za-z_]\w*)\s*(?P<op>>=|<=|!=|==|=|>|<)\s*(?P<value>\S.*?)\s*$")
_TOLERANCE = re.compile(r"^(?P<value>[^±+]+?)\s*(?:±|\+-|\+/-)\s*(?P<tolerance>[^%]+?)\s*(?P<percent>%?)$")


@dataclass(frozen=True)
class Expectation:
    text: str  # as the user wrote it
    name: str
    op: str  # "=", "!=", ">=", "<=", ">", "<"
    value: float | str
    tolerance: float = 0.0  # absolute, in the quantity's unit, for "="
    percent: bool = False  # tolerance given in % of value


@dataclass(frozen=True)
class Outcome:
    expectation: str
    quantity: str
    measured: float | str | None
    expected: str
    holds: bool
    note: str = ""


def parse_expectation(text: str) -> Expectation:
    """`capacity_Ah=2.0±2%` -> Expectation; ValueError with what would be accepted."""
    match = _EXPECTATION.match(text)
    if not match:
        raise ValueError(f"'{text}': not NAME=VALUE[±TOL[%]], NAME>=VALUE, NAME<=VALUE, NAME>VALUE, NAME<VALUE "
                         "or NAME!=VALUE")
    name, op, value = match["name"], "=" if match["op"] == "==" else match["op"], match["value"]
    if name not in QUANTITIES:
        raise ValueError(f"'{text}': unknown quantity '{name}'; accepted: {', '.join(QUANTITIES)}")
    if name in TEXT_QUANTITIES:
        if op not in ("=", "!="):
            raise ValueError(f"'{text}': {name} is compared with = or != (e.g. {name}=completed)")
        return Expectation(text, name, op, value)
    if op == "!=":
        raise ValueError(f"'{text}': a number is compared with =, >=, <=, > or <")
    tolerance, percent = 0.0, False
    toleranced = _TOLERANCE.match(value)
    if toleranced:
        if op != "=":
            raise ValueError(f"'{text}': a tolerance (±) goes with = only")
        value, percent = toleranced["value"], bool(toleranced["percent"])
        tolerance = _number(toleranced["tolerance"], text, "tolerance")
        if tolerance < 0:
            raise ValueError(f"'{text}': the tolerance must not be negative")
    return Expectation(text, name, op, _number(value, text, "value"), tolerance, percent)


def _number(text: str, expectation: str, what: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"'{expectation}': the {what} '{text}' is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"'{expectation}': the {what} must be a finite number")
    return number


def reported_cycle(summary: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The cycle of run.json's summary that the one-line result reports (analysis.reported_cycle)."""
    index = analysis.reported_cycle([_finite(row.get("charge_capacity_Ah")) for row in summary],
                                    [_finite(row.get("discharge_capacity_Ah")) for row in summary])
    return None if index is None else summary[index]


def _finite(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0.0


def measure(meta: dict[str, Any], name: str) -> tuple[float | str | None, str]:
    """The measured value of a quantity in a run's run.json, or None and why it is missing."""
    if name == "state":
        return str(meta.get("state", "unknown")), ""
    if name in RUN_QUANTITIES:
        key = {"cycles": None, "test_time_s": "end_test_time_s", "exit_code": "exit_code"}[name]
        if key is None:
            summary = meta.get("summary")
            return (len(summary), "") if isinstance(summary, list) else (None, _no_summary(meta))
        value = meta.get(key)
        return (float(value), "") if isinstance(value, (int, float)) else (None, _no_summary(meta))
    summary = meta.get("summary")
    if not isinstance(summary, list):
        return None, _no_summary(meta)
    cycle = reported_cycle(summary)
    if cycle is None:
        return None, "no cycle discharged"
    value = cycle.get(CYCLE_QUANTITIES[name][0])
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None, f"not measured in cycle {cycle.get('cycle')}"
    return float(value), ""


def _no_summary(meta: dict[str, Any]) -> str:
    return f"no results in {METADATA_FILE} (the run is {meta.get('state', 'unknown')}: not finished?)"


def evaluate(expectation: Expectation, meta: dict[str, Any]) -> Outcome:
    measured, why = measure(meta, expectation.name)
    expected = _describe_expected(expectation)
    if measured is None:
        return Outcome(expectation.text, expectation.name, None, expected, False, why)
    target = expectation.value
    if isinstance(target, str):
        holds = (measured == target) == (expectation.op == "=")
    else:
        value = float(measured)
        if expectation.op == "=":
            allowed = abs(target) * expectation.tolerance / 100 if expectation.percent else expectation.tolerance
            # a bound written with as many digits as the measurement must hold at that bound
            holds = abs(value - target) <= allowed + 1e-12 * max(1.0, abs(target))
        else:
            holds = {">=": value >= target, "<=": value <= target, ">": value > target, "<": value < target}[
                expectation.op]
    return Outcome(expectation.text, expectation.name, measured, expected, holds)


def _describe_expected(expectation: Expectation) -> str:
    unit = _unit(expectation.name)
    target = expectation.value
    if isinstance(target, str):
        return f"{'' if expectation.op == '=' else 'not '}{target}"
    if expectation.op != "=":
        return f"{expectation.op} {target:g}{unit}"
    if expectation.tolerance == 0:
        return f"{target:g}{unit}"
    allowed = abs(target) * expectation.tolerance / 100 if expectation.percent else expectation.tolerance
    tolerance = f"{expectation.tolerance:g} %" if expectation.percent else f"{expectation.tolerance:g}{unit}"
    return f"{target:g}{unit} ± {tolerance} ({target - allowed:.6g} to {target + allowed:.6g})"


def _unit(name: str) -> str:
    unit = CYCLE_QUANTITIES[name][1] if name in CYCLE_QUANTITIES else RUN_QUANTITIES.get(name, "")
    return f" {unit}" if unit else ""


def _line(outcome: Outcome) -> str:
    measured = outcome.measured
    shown = ("not measured" if measured is None else measured if isinstance(measured, str)
             else f"{measured:.6g}{_unit(outcome.quantity)}")
    verdict = "ok   " if outcome.holds else "DRIFT"
    note = f"; {outcome.note}" if outcome.note else ""
    return f"{verdict} {outcome.quantity}: measured {shown}, expected {outcome.expected}{note}"


def read_run(folder: Path) -> dict[str, Any]:
    """A run folder's run.json as a dict; raises OSError or ValueError for the caller to report."""
    meta = json.loads((Path(folder) / METADATA_FILE).read_text(encoding="utf-8"))
    if not isinstance(meta, dict):
        raise ValueError(f"{METADATA_FILE} is not a JSON object")
    return meta


def check_run(folder: Path, expectations: Sequence[str], as_json: bool = False) -> tuple[int, list[str]]:
    """Check a run folder's results; returns (exit code, lines to print). See CHECK_EXIT_HELP."""
    folder = Path(folder)
    if not expectations:
        return MALFORMED, ["nothing to check: give at least one --expect NAME=VALUE (e.g. capacity_Ah=2.0±2%)"]
    parsed, problems = [], []
    for text in expectations:
        try:
            parsed.append(parse_expectation(text))
        except ValueError as error:
            problems.append(f"malformed expectation {error}")
    if problems:
        return MALFORMED, problems
    try:
        meta = read_run(folder)
    except FileNotFoundError:
        return MALFORMED, [f"{folder}: not a run folder (no {METADATA_FILE})"]
    except OSError as error:
        return MALFORMED, [f"{folder / METADATA_FILE}: cannot read it ({error.strerror})"]
    except (ValueError, UnicodeDecodeError) as error:
        return MALFORMED, [f"{folder / METADATA_FILE}: not readable JSON ({error})"]
    outcomes = [evaluate(expectation, meta) for expectation in parsed]
    code = HOLDS if all(o.holds for o in outcomes) else DRIFTED
    if as_json:
        document = {"run": str(folder), "holds": code == HOLDS, "exit_code": code,
                    "expectations": [asdict(o) for o in outcomes]}
        return code, [json.dumps(document, indent=1)]
    return code, [_line(o) for o in outcomes]


def check_command(run_name: str, expectations: Sequence[str], runs_dir: Path,
                  as_json: bool = False, newest: bool = False) -> tuple[int, list[str]]:
    """`cycler check RUN --expect ...`: RUN as `cycler status` takes it (a folder, or a piece of its
    name; `newest`: the newest run whose name has it)."""
    try:
        folder = find_run(run_name, Path(runs_dir), newest)
    except (StackcyclerError, OSError) as error:
        return MALFORMED, [str(error)]
    return check_run(folder, expectations, as_json)
