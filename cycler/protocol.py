"""The protocol model: a test program as validated, immutable data.

A protocol file (YAML or JSON) is a mapping; only `steps` is required:

    steps: ["Charge at 1 A until 4.1 V", "Rest for 1 hour"]

Everything else has a documented default that `cycler plan` shows: `name` (the file's name),
`description`, `parameters`, `record`, `safety`, `requires`.

Steps (each a mapping with `step:`, or a PyBaMM-style string, see stepstrings.py):
    rest        open circuit for `duration_s` or until an end
    cc          constant current: `current_A` or `current_C` (signed, + = charge)
    cv          hold `voltage_V`, optionally with `current_limit_A` / `current_limit_C`
    cccv        CC to `voltage_V`, then CV there, one step with one time bound
    cp          constant power `power_W` (signed, + = charge)
    cr          constant resistance `resistance_ohm` (discharge only)
    pulse       `segments` of (current or power, duration), repeated `repeat` times
    profile     a current or power profile from `table` or `file` (two columns: time, value),
                `interpolation: linear|step`, `scale`, looped while the step lasts longer than it
    eis         impedance spectroscopy placeholder: refused on benches that cannot do it
    next_cycle  advances `Cycle Count`
and loops, nested freely: `{repeat: N, steps: [...]}` or `{until: [...], max_repeats: N, steps: [...]}`.

Every step may carry `name`, `tag` (a goto target), `until` (end conditions, OR-combined, each
with an optional `goto`), `max_duration_s` (time bound) and `record_time_s` (its own record
period). Numbers may be literal, `$parameter` or `-$parameter`; a parameter may take its value
from the DUT (`dut.charge_voltage_V`).

Rules checked here, all at once: unknown fields, one current per step, tags unique, gotos go
forward to a tag that exists (repetition is what loops are for), `end_of_loop` only inside a
loop, loops that could run forever, steps that could run forever (no end of any kind), and
numbers whose size betrays a unit mistake (a 4200 V limit is 4200 mV).
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Iterator, Literal, Union

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, field_validator,
                      model_validator)

from .safety import SafetyLimits
from .stepstrings import parse_step_string
from .suspend import SuspendConditions

DUT_FIELDS = ("charge_voltage_V", "discharge_voltage_V", "nominal_capacity_Ah", "layers")
GOTO_KEYWORDS = ("next", "end_of_loop", "exit_loop", "end_of_test")
PARAMETER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
def _numeric_text(value: Any) -> Any:
    """YAML 1.1 reads '1e5' as text: a string that is a number is that number. NaN and infinity
    (YAML's .nan, .inf) are refused: no setpoint, limit or time may be one."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return value
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value} is not a finite number")
    return value


Number = Annotated[Union[float, str], BeforeValidator(_numeric_text)]  # a number, "$parameter" or "-$parameter"

# Sizes that mean a unit mistake on a lab bench (the value is probably in mV, mA or ms).
IMPLAUSIBLE = {"_V": 2000.0, "_A": 2000.0, "_W": 1e6, "_s": 400 * 86400.0}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def referenced_parameter(value: str) -> str | None:
    """'$rate' or '-$rate' -> 'rate'; None if `value` is not a reference."""
    name = value.removeprefix("-").removeprefix("$") if value.lstrip("-").startswith("$") else None
    return name if name and PARAMETER_NAME.match(name) else None


_NOT_NUMBERS = ("step", "name", "tag", "goto", "file", "interpolation", "quantity", "of_step", "description")


def _numbers(model: BaseModel, prefix: str) -> Iterator[tuple[str, Any]]:
    """Every number-or-reference field that is set, with its path (a loop's own steps excluded)."""
    for name in type(model).model_fields:
        if name == "steps":
            continue
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from _numbers(value, f"{prefix}.{name}")
        elif isinstance(value, list) and value and all(isinstance(v, BaseModel) for v in value):
            for i, item in enumerate(value):
                yield from _numbers(item, f"{prefix}.{name}[{i}]")
        elif isinstance(value, (int, float, str)) and not isinstance(value, bool) and name not in _NOT_NUMBERS:
            yield f"{prefix}.{name}", value


# --- end conditions -------------------------------------------------------------------------


class EndCondition(_Strict):
    """One way a step can end: exactly one quantity, and where to go then (default: next step)."""

    step_time_s: Number | None = None
    voltage_above_V: Number | None = None
    voltage_below_V: Number | None = None
    current_above_A: Number | None = Field(None, description="absolute value of the current")
    current_below_A: Number | None = Field(None, description="absolute value of the current")
    signed_current_above_A: Number | None = Field(None, description="signed, + = charge")
    signed_current_below_A: Number | None = Field(None, description="signed, + = charge")
    current_above_C: Number | None = None
    current_below_C: Number | None = None
    step_charge_above_Ah: Number | None = Field(None, description="charge moved in the step, either way")
    step_energy_above_Wh: Number | None = Field(None, description="energy moved in the step, either way")
    voltage_rate_above_mV_per_h: Number | None = Field(None, description="|dV/dt|, e.g. relaxation")
    voltage_rate_below_mV_per_h: Number | None = None
    temperature_above_degC: Number | None = Field(None, description="any temperature sensor on the DUT")
    temperature_below_degC: Number | None = None
    layer_voltage_above_V: Number | None = Field(None, description="any layer of the stack")
    layer_voltage_below_V: Number | None = None
    pressure_above_MPa: Number | None = None
    pressure_below_MPa: Number | None = None
    goto: str | None = Field(None, description="next, end_of_loop, exit_loop, end_of_test or a tag")

    @classmethod
    def quantities(cls) -> list[str]:
        return [name for name in cls.model_fields if name != "goto"]

    @model_validator(mode="after")
    def _exactly_one(self) -> "EndCondition":
        given = [name for name in self.quantities() if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"write exactly one condition per list item ({', '.join(self.quantities())}); "
                             f"got {', '.join(given) or 'none'}")
        return self

    @property
    def field(self) -> str:
        return next(name for name in self.quantities() if getattr(self, name) is not None)


class LoopCondition(_Strict):
    """Ends a loop after an iteration: discharge capacity compared with its first value.

    Without `of_step`, the capacity is the discharge of the whole iteration; with it, the
    discharge of the last run of the step with that tag (e.g. the check-up discharge)."""

    discharge_capacity_retention_below: Number | None = Field(None, description="fraction of the first, e.g. 0.8")
    discharge_capacity_below_Ah: Number | None = None
    of_step: str | None = Field(None, description="tag of the step whose discharge counts")

    @model_validator(mode="after")
    def _exactly_one(self) -> "LoopCondition":
        given = [n for n in ("discharge_capacity_retention_below", "discharge_capacity_below_Ah")
                 if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("write exactly one of discharge_capacity_retention_below, discharge_capacity_below_Ah")
        return self


# --- steps ------------------------------------------------------------------------------------


class _Step(_Strict):
    name: str | None = Field(None, description="label shown in plans, progress and data")
    tag: str | None = Field(None, description="a name a goto can jump to")
    until: list[EndCondition] = Field(default_factory=list, description="OR-combined end conditions")
    max_duration_s: Number | None = Field(None, description="time bound; a visible default applies if absent")
    record_time_s: Number | None = Field(None, description="record period in this step (default: record.time_s)")

    def has_intrinsic_end(self) -> bool:
        """True for steps that end by themselves (a rest with a duration, a pulse train, a profile)."""
        return False


def _one_of(model: BaseModel, names: tuple[str, ...], required: bool = True) -> None:
    given = [n for n in names if getattr(model, n) is not None]
    if len(given) > 1 or (required and not given):
        raise ValueError(f"give exactly one of {', '.join(names)}" + (f"; got {', '.join(given)}" if given else ""))


class RestStep(_Step):
    step: Literal["rest"]
    duration_s: Number | None = None

    def has_intrinsic_end(self) -> bool:
        return self.duration_s is not None


class CcStep(_Step):
    step: Literal["cc"]
    current_A: Number | None = Field(None, description="signed, + = charge")
    current_C: Number | None = Field(None, description="signed C-rate, + = charge")

    @model_validator(mode="after")
    def _one_current(self) -> "CcStep":
        _one_of(self, ("current_A", "current_C"))
        return self


class CvStep(_Step):
    step: Literal["cv"]
    voltage_V: Number
    current_limit_A: Number | None = None
    current_limit_C: Number | None = None

    @model_validator(mode="after")
    def _one_limit(self) -> "CvStep":
        _one_of(self, ("current_limit_A", "current_limit_C"), required=False)
        return self


class CcCvStep(CcStep):
    step: Literal["cccv"]  # type: ignore[assignment]
    voltage_V: Number


class CpStep(_Step):
    step: Literal["cp"]
    power_W: Number = Field(description="signed, + = charge")


class CrStep(_Step):
    step: Literal["cr"]
    resistance_ohm: Number = Field(description="the DUT discharges through it")


class PulseSegment(_Strict):
    current_A: Number | None = None
    current_C: Number | None = None
    power_W: Number | None = None
    duration_s: Number

    @model_validator(mode="after")
    def _one_level(self) -> "PulseSegment":
        _one_of(self, ("current_A", "current_C", "power_W"))
        return self


class PulseStep(_Step):
    step: Literal["pulse"]
    segments: list[PulseSegment] = Field(min_length=1)
    repeat: Number = 1

    def has_intrinsic_end(self) -> bool:
        return True


class ProfileStep(_Step):
    step: Literal["profile"]
    quantity: Literal["current_A", "current_C", "power_W"] = Field(description="what the second column is")
    table: list[tuple[float, float]] | None = Field(None, description="[[time_s, value], ...], from t = 0")
    file: str | None = Field(None, description="CSV with two columns (time_s, value); relative to the protocol")
    interpolation: Literal["linear", "step"] = Field(
        "linear", description="step: each value holds until the next point; the last point's time ends a pass")
    scale: Number = Field(1.0, description="multiplies every value, e.g. a peak power for a table of fractions")

    @model_validator(mode="after")
    def _one_source(self) -> "ProfileStep":
        _one_of(self, ("table", "file"))
        if self.table is not None:
            check_profile_table(self.table)
        return self

    def has_intrinsic_end(self) -> bool:
        return True


def check_profile_table(table) -> None:
    if len(table) < 2:
        raise ValueError("a profile needs at least two points")
    times = [row[0] for row in table]
    if times[0] != 0:
        raise ValueError(f"a profile starts at time 0, this one at {times[0]}")
    if any(b <= a for a, b in zip(times, times[1:])):
        raise ValueError("profile times must increase")


class EisStep(_Step):
    step: Literal["eis"]
    start_frequency_Hz: Number
    end_frequency_Hz: Number
    points_per_decade: Number = 10
    amplitude_V: Number | None = None
    amplitude_A: Number | None = None

    @model_validator(mode="after")
    def _one_amplitude(self) -> "EisStep":
        _one_of(self, ("amplitude_V", "amplitude_A"))
        return self

    def has_intrinsic_end(self) -> bool:
        return True


class NextCycle(_Strict):
    """Advances Cycle Count; takes no time."""

    step: Literal["next_cycle"]
    name: str | None = None
    tag: str | None = None


Step = Annotated[Union[RestStep, CcStep, CvStep, CcCvStep, CpStep, CrStep, PulseStep, ProfileStep, EisStep,
                       NextCycle], Field(discriminator="step")]
STEP_TYPES = ("rest", "cc", "cv", "cccv", "cp", "cr", "pulse", "profile", "eis", "next_cycle")


def _item_kind(value: Any) -> str:
    """A list item is a loop if it has `steps` (as data, or as a Loop when serialising)."""
    return "loop" if isinstance(value, Loop) or (isinstance(value, dict) and "steps" in value) else "step"


def _read_string_steps(value: Any) -> Any:
    """PyBaMM-style strings become the typed steps they mean."""
    return parse_step_string(value) if isinstance(value, str) else value


class Loop(_Strict):
    """A block of steps run `repeat` times, or until a condition (at most `max_repeats` times)."""

    name: str | None = None
    tag: str | None = None
    repeat: Number | None = Field(None, description="how many times the block runs")
    until: list[LoopCondition] = Field(default_factory=list, description="checked after each iteration")
    max_repeats: Number | None = Field(None, description="the bound on an `until` loop")
    steps: list["Item"] = Field(min_length=1)

    @model_validator(mode="after")
    def _bounded(self) -> "Loop":
        if (self.repeat is None) == (not self.until):
            raise ValueError("a loop has either `repeat: N` or `until:` conditions (with `max_repeats`)")
        if self.until and self.max_repeats is None:
            raise ValueError("a loop with `until` needs `max_repeats`, so that it cannot run forever")
        return self


Item = Annotated[
    Annotated[Union[Annotated[Step, Tag("step")], Annotated[Loop, Tag("loop")]], Discriminator(_item_kind)],
    BeforeValidator(_read_string_steps),
]
Loop.model_rebuild()


class RecordCriteria(_Strict):
    """When a sample is written: every `time_s`, or when voltage or current moved by more than a delta.
    Step starts and ends, trips and the end of the test are always written."""

    time_s: Number = 10.0
    voltage_V: Number | None = None
    current_A: Number | None = None


class Requirements(_Strict):
    """What the bench and DUT must offer for this protocol to run."""

    nominal_capacity: bool = Field(False, description="needed anyway when C-rates are used")
    layer_voltages: bool = False
    temperature: bool = False
    pressure: bool = False
    chamber: bool = False


class Protocol(_Strict):
    name: str = ""
    description: str = ""
    parameters: dict[str, Number] = Field(
        default_factory=dict, description="name -> number, or 'dut.<field>' to take it from the DUT")
    record: RecordCriteria = RecordCriteria()
    safety: SafetyLimits = SafetyLimits()
    suspend: SuspendConditions | None = Field(
        None, description="environment bands that put the test on hold while it is outside them")
    requires: Requirements = Requirements()
    steps: list[Item] = Field(min_length=1)

    @field_validator("parameters")
    @classmethod
    def _parameter_values(cls, parameters: dict) -> dict:
        for name, value in parameters.items():
            if not PARAMETER_NAME.match(name):
                raise ValueError(f"parameter name '{name}' must be letters, digits and _")
            if isinstance(value, str) and (not value.startswith("dut.") or value[4:] not in DUT_FIELDS):
                raise ValueError(f"parameter '{name}': '{value}' is not a number or one of "
                                 + ", ".join(f"dut.{f}" for f in DUT_FIELDS))
        return parameters

    def walk(self) -> Iterator[tuple[str, Any, tuple[Loop, ...]]]:
        """Every step and loop in file order: (path, item, enclosing loops)."""

        def visit(items, prefix, loops):
            for i, item in enumerate(items):
                path = f"{prefix}[{i}]"
                yield path, item, loops
                if isinstance(item, Loop):
                    yield from visit(item.steps, f"{path}.steps", loops + (item,))

        yield from visit(self.steps, "steps", ())

    @model_validator(mode="after")
    def _cross_checks(self) -> "Protocol":
        problems: list[str] = []
        items = list(self.walk())
        tags: dict[str, int] = {}
        numbers = [*_numbers(self.record, "record"), *_numbers(self.safety, "safety"),
                   *((f"parameters.{k}", v) for k, v in self.parameters.items() if not isinstance(v, str))]
        for index, (path, item, _) in enumerate(items):
            numbers += _numbers(item, path)
            if item.tag is None:
                continue
            if item.tag in GOTO_KEYWORDS or not PARAMETER_NAME.match(item.tag):
                problems.append(f"{path}.tag: '{item.tag}' must be a name (letters, digits, _) "
                                f"and not one of {', '.join(GOTO_KEYWORDS)}")
            elif item.tag in tags:
                problems.append(f"{path}.tag: '{item.tag}' is used twice")
            tags.setdefault(item.tag, index)
        for index, (path, item, loops) in enumerate(items):
            if isinstance(item, Loop):
                problems += [f"{path}.until[{j}].of_step: no step has the tag '{c.of_step}'"
                             for j, c in enumerate(item.until) if c.of_step is not None and c.of_step not in tags]
            elif isinstance(item, _Step):
                if not item.until and item.max_duration_s is None and not item.has_intrinsic_end():
                    problems.append(f"{path}: the step has no end (no `until`, no duration); give it one so it "
                                    "cannot run forever")
                problems += [p for j, end in enumerate(item.until)
                             if (p := _goto_problem(f"{path}.until[{j}].goto", end.goto, index, loops, tags))]
        for where, value in numbers:
            if isinstance(value, str):
                name = referenced_parameter(value)
                if name is None:
                    problems.append(f"{where}: '{value}' is neither a number nor a $parameter reference")
                elif name not in self.parameters:
                    problems.append(f"{where}: unknown parameter '{value}'; parameters: "
                                    + (", ".join(self.parameters) or "none"))
            elif (problem := implausible(where, value)) is not None:
                problems.append(problem)
        if problems:
            raise ValueError("\n".join(problems))
        return self


def _goto_problem(where: str, goto: str | None, index: int, loops: tuple, tags: dict[str, int]) -> str | None:
    if goto is None or goto in ("next", "end_of_test"):
        return None
    if goto in ("end_of_loop", "exit_loop"):
        return None if loops else f"{where}: '{goto}' is only possible inside a loop"
    if goto not in tags:
        return f"{where}: no step or loop has the tag '{goto}'; tags: " + (", ".join(tags) or "none")
    if tags[goto] <= index:
        return f"{where}: '{goto}' is not after this step; gotos go forward (to repeat steps, use a loop)"
    return None


def implausible(where: str, value: float) -> str | None:
    """A message if a number's size suggests a unit mistake (mV for V, ms for s)."""
    for suffix, limit in IMPLAUSIBLE.items():
        if where.endswith(suffix) and abs(value) > limit:
            hint = {"_V": "millivolts", "_A": "milliamperes", "_W": "milliwatts", "_s": "milliseconds"}[suffix]
            return f"{where}: {value:g} is implausibly large; the unit is {suffix[1:]} (was it in {hint}?)"
    return None
