"""The protocol model: a test program as validated, immutable data.

A protocol file (YAML or JSON) has a name, parameters, recording criteria, safety limits and a
list of steps. Numbers may be written literally or as `$parameter`; a parameter may take its
value from the DUT (`dut.charge_voltage_V`), so one protocol serves every stack. Currents are
signed, positive for charge, in amperes (`current_A`) or as a C-rate (`current_C`) resolved
against the DUT's nominal capacity when the protocol is bound to a bench (see plan.py).

Unknown fields are refused everywhere, with the file, the line and the accepted fields named.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .safety import SafetyLimits

# Fields of the DUT a parameter may refer to as `dut.<field>`.
DUT_FIELDS = ("charge_voltage_V", "discharge_voltage_V", "nominal_capacity_Ah", "layers")

PARAMETER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
Number = Union[float, str]  # a number, or "$parameter" / "-$parameter"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def referenced_parameter(value: str) -> str | None:
    """'$rate' or '-$rate' -> 'rate'; None if `value` is not a reference."""
    name = value.removeprefix("-").removeprefix("$") if value.lstrip("-").startswith("$") else None
    return name if name and PARAMETER_NAME.match(name) else None


def _reference_problem(value: Number) -> str | None:
    if isinstance(value, str) and referenced_parameter(value) is None:
        return f"'{value}' is neither a number nor a $parameter reference (or -$parameter)"
    return None


class EndCondition(_Strict):
    """One way a step can end; write exactly one of the fields. A step's conditions are OR-combined."""

    step_time_s: Number | None = None
    voltage_above_V: Number | None = None
    voltage_below_V: Number | None = None
    current_above_A: Number | None = Field(None, description="absolute value of the current")
    current_below_A: Number | None = Field(None, description="absolute value of the current")
    current_above_C: Number | None = None
    current_below_C: Number | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "EndCondition":
        given = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(given) != 1:
            accepted = ", ".join(type(self).model_fields)
            raise ValueError(f"write exactly one condition per list item ({accepted}); got {given or 'none'}")
        problem = _reference_problem(getattr(self, given[0]))
        if problem:
            raise ValueError(problem)
        return self

    @property
    def field(self) -> str:
        return next(name for name in type(self).model_fields if getattr(self, name) is not None)


class _Step(_Strict):
    name: str | None = Field(None, description="label shown in plans, progress and data")
    until: list[EndCondition] = Field(default_factory=list, description="OR-combined end conditions")
    max_duration_s: Number | None = Field(None, description="time bound; a visible default applies if absent")

    def numbers(self) -> dict[str, Number]:
        """Every numeric field that is set, by name (for reference checking)."""
        return {name: getattr(self, name) for name, f in type(self).model_fields.items()
                if name not in ("step", "name", "until") and getattr(self, name) is not None}


class _Current(_Step):
    current_A: Number | None = Field(None, description="signed, + = charge")
    current_C: Number | None = Field(None, description="signed C-rate, + = charge")

    @model_validator(mode="after")
    def _one_current(self) -> "_Current":
        if (self.current_A is None) == (self.current_C is None):
            raise ValueError("give the current as exactly one of current_A or current_C")
        return self


class RestStep(_Step):
    """Open circuit: outputs off, the stack relaxes."""

    step: Literal["rest"]
    duration_s: Number


class CcStep(_Current):
    """Constant current until an end condition."""

    step: Literal["cc"]


class CvStep(_Step):
    """Hold the stack at a voltage; current limited to `current_limit_A` (or the DUT's limits)."""

    step: Literal["cv"]
    voltage_V: Number
    current_limit_A: Number | None = None


class CcCvStep(_Current):
    """Constant current to `voltage_V`, then hold that voltage: one step with one time bound."""

    step: Literal["cccv"]
    voltage_V: Number


Step = Annotated[Union[RestStep, CcStep, CvStep, CcCvStep], Field(discriminator="step")]


class RecordCriteria(_Strict):
    """When a sample is written: every `time_s`, or when voltage or current moved by more than a delta.
    Step starts and ends and safety trips are always written."""

    time_s: Number = 10.0
    voltage_V: Number | None = None
    current_A: Number | None = None


class Protocol(_Strict):
    name: str
    description: str = ""
    parameters: dict[str, Union[float, str]] = Field(
        default_factory=dict, description="name -> number, or 'dut.<field>' to take it from the DUT")
    record: RecordCriteria = RecordCriteria()
    safety: SafetyLimits = SafetyLimits()
    steps: list[Step] = Field(min_length=1)

    @model_validator(mode="after")
    def _references_resolve(self) -> "Protocol":
        for name, value in self.parameters.items():
            if not PARAMETER_NAME.match(name):
                raise ValueError(f"parameter name '{name}' must be letters, digits and _")
            if isinstance(value, str):
                field = value.removeprefix("dut.")
                if not value.startswith("dut.") or field not in DUT_FIELDS:
                    raise ValueError(f"parameter '{name}': '{value}' is not a number or one of "
                                     + ", ".join(f"dut.{f}" for f in DUT_FIELDS))
        numbers: list[tuple[str, Number]] = [(f"record.{k}", v) for k, v in self.record.model_dump().items()]
        for i, step in enumerate(self.steps):
            numbers += [(f"steps[{i}].{k}", v) for k, v in step.numbers().items()]
            numbers += [(f"steps[{i}].until[{j}].{end.field}", getattr(end, end.field))
                        for j, end in enumerate(step.until)]
        for where, value in numbers:
            if isinstance(value, str):
                problem = _reference_problem(value)
                if problem:
                    raise ValueError(f"{where}: {problem}")
                if referenced_parameter(value) not in self.parameters:
                    known = ", ".join(self.parameters) or "none defined"
                    raise ValueError(f"{where}: unknown parameter '{value}'; parameters: {known}")
        return self
