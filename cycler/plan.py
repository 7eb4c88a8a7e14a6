"""Binding a protocol to a channel: the plan the runner executes and `cycler plan` prints.

Binding resolves every `$parameter` and `dut.` reference, turns C-rates into amperes with the
DUT's nominal capacity (refused if it has none), gives every step its time bound (explicit or
the default below), merges the safety envelope, and refuses, before anything is switched on,
a setpoint outside that envelope or a safety limit the channel has no input to check.

Rules (printed by `cycler plan`):
* default time bound: 2/C hours for a current step at C-rate C (PyBaMM's rule), else 24 h;
* current-based ends are blanked for the first 5 s of a step, as the Cadex C8000 does
  (manual p. 201), so that switching transients do not end a step;
* when several ends are reached on one tick, the first in the order voltage/current ends
  as listed, then step-time ends, then the time bound reports the reason (non-time limits
  win over time, as open-source Arbin schedule simulators do).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .bench import ChannelConfig, DutSpec
from .errors import InvalidInput
from .protocol import CcCvStep, CcStep, CvStep, EndCondition, Number, Protocol, RestStep, referenced_parameter
from .safety import SafetyEnvelope
from .sample import Sample

DEFAULT_TIME_BOUND_S = 24 * 3600.0
C_RATE_TIME_BOUND_FACTOR = 2.0
CURRENT_END_BLANKING_S = 5.0
CV_EXPECTED_S = 3600.0  # a guess for progress display only
# A step current this close to its safety limit would trip on measurement noise alone
# (Arbin's default current safety scope sits at 105 % of the step current).
CURRENT_LIMIT_MARGIN = 0.02


@dataclass(frozen=True)
class PlannedEnd:
    quantity: Literal["step_time", "voltage", "current"]
    direction: Literal["above", "below"]
    value: float  # s, V, or A (absolute)
    origin: str  # where it was written ("until[1]"), or "time bound"

    def reached(self, sample: Sample, step_time_s: float) -> bool:
        if self.quantity == "step_time":
            return step_time_s >= self.value
        if self.quantity == "voltage":
            measured = sample.voltage_V
        else:
            if step_time_s < CURRENT_END_BLANKING_S:
                return False
            measured = abs(sample.current_A)
        return measured >= self.value if self.direction == "above" else measured <= self.value

    def describe(self) -> str:
        if self.quantity == "step_time":
            return f"step time {format_duration(self.value)}"
        symbol = "≥" if self.direction == "above" else "≤"
        return f"V {symbol} {self.value:.3f} V" if self.quantity == "voltage" else f"|I| {symbol} {self.value:.4g} A"


@dataclass(frozen=True)
class PlannedStep:
    number: int  # Step ID: position in the protocol, from 1
    name: str
    kind: Literal["rest", "cc", "cv", "cccv"]
    step_type: str  # Battery Data Format step type
    current_A: float | None
    voltage_V: float | None
    current_limit_A: float | None
    ends: tuple[PlannedEnd, ...]  # in the order they are checked; the time bound last
    time_bound_s: float
    time_bound_is_default: bool
    expected_s: float  # for progress estimates only

    def setpoint(self) -> str:
        if self.kind == "rest":
            return "open circuit"
        if self.kind == "cc":
            return f"CC {self.current_A:+.4g} A"
        if self.kind == "cccv":
            return f"CC {self.current_A:+.4g} A then CV {self.voltage_V:.3f} V"
        limit = f", |I| ≤ {self.current_limit_A:.4g} A" if self.current_limit_A is not None else ""
        return f"CV {self.voltage_V:.3f} V{limit}"


@dataclass(frozen=True)
class Plan:
    protocol: Protocol
    protocol_path: Path
    protocol_text: str
    dut: DutSpec
    parameters: dict[str, float]
    steps: tuple[PlannedStep, ...]
    record_time_s: float
    record_voltage_V: float | None
    record_current_A: float | None
    envelope: SafetyEnvelope

    @property
    def expected_duration_s(self) -> float:
        return sum(step.expected_s for step in self.steps)

    @property
    def worst_case_duration_s(self) -> float:
        return sum(step.time_bound_s for step in self.steps)


def format_duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.3g} h"
    if seconds >= 60:
        return f"{seconds / 60:.3g} min"
    return f"{seconds:.3g} s"


class _Binder:
    def __init__(self, protocol: Protocol, source: str, channel: ChannelConfig, overrides: dict[str, float]):
        self.protocol = protocol
        self.source = source
        self.channel = channel
        self.dut = channel.dut
        self.parameters = self._resolve_parameters(overrides)

    def fail(self, message: str) -> InvalidInput:
        return InvalidInput(f"{self.source}: {message}")

    def _resolve_parameters(self, overrides: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(overrides) - set(self.protocol.parameters))
        if unknown:
            known = ", ".join(self.protocol.parameters) or "none"
            raise self.fail(f"--set {unknown[0]}: the protocol has no such parameter; parameters: {known}")
        values = {}
        for name, value in self.protocol.parameters.items():
            if name in overrides:
                values[name] = float(overrides[name])
            elif isinstance(value, str):
                field = value.removeprefix("dut.")
                resolved = getattr(self.dut, field)
                if resolved is None:
                    raise self.fail(f"parameter '{name}' takes {value}, but DUT '{self.dut.id}' has no {field}; "
                                    f"add it to the DUT in the bench file or pass --set {name}=VALUE")
                values[name] = float(resolved)
            else:
                values[name] = float(value)
        return values

    def number(self, value: Number) -> float:
        if isinstance(value, str):
            resolved = self.parameters[referenced_parameter(value)]
            return -resolved if value.startswith("-") else resolved
        return float(value)

    def amps_from_c(self, rate: float, where: str) -> float:
        if self.dut.nominal_capacity_Ah is None:
            raise self.fail(f"{where} is a C-rate, but DUT '{self.dut.id}' has no nominal_capacity_Ah; "
                            "give the DUT its capacity in the bench file, or write the current in amperes")
        return rate * self.dut.nominal_capacity_Ah

    def current(self, step: CcStep | CcCvStep, where: str) -> float:
        if step.current_A is not None:
            return self.number(step.current_A)
        return self.amps_from_c(self.number(step.current_C), f"{where}.current_C")

    def end(self, condition: EndCondition, where: str) -> PlannedEnd:
        field = condition.field
        value = self.number(getattr(condition, field))
        if field.endswith("_C"):
            value = self.amps_from_c(value, f"{where}.{field}")
        quantity = "step_time" if field == "step_time_s" else field.split("_")[0]
        direction = "above" if "above" in field or quantity == "step_time" else "below"
        if quantity == "current":
            value = abs(value)
        return PlannedEnd(quantity, direction, value, where.rsplit(".", 1)[-1])


def bind(protocol: Protocol, protocol_path: Path, protocol_text: str, channel: ChannelConfig,
         envelope: SafetyEnvelope, overrides: dict[str, float] | None = None) -> Plan:
    binder = _Binder(protocol, str(protocol_path), channel, overrides or {})
    steps = []
    for index, step in enumerate(protocol.steps):
        where = f"steps[{index}]"
        ends = [binder.end(c, f"{where}.until[{j}]") for j, c in enumerate(step.until)]
        ends.sort(key=lambda e: e.quantity == "step_time")  # non-time ends first, order otherwise kept
        current = voltage = limit = None
        if isinstance(step, RestStep):
            kind, step_type = "rest", "REST"
            duration = binder.number(step.duration_s)
            if duration <= 0:
                raise binder.fail(f"{where}.duration_s must be > 0, got {duration}")
        elif isinstance(step, CvStep):
            kind, step_type = "cv", "CV"
            voltage = binder.number(step.voltage_V)
            limit = binder.number(step.current_limit_A) if step.current_limit_A is not None else None
        else:
            current = binder.current(step, where)
            if current == 0:
                raise binder.fail(f"{where}: a current of 0 A is a rest; use step: rest")
            direction = "CHG" if current > 0 else "DCH"
            if isinstance(step, CcCvStep):
                kind, step_type = "cccv", f"CCCV_{direction}"
                voltage = binder.number(step.voltage_V)
            else:
                kind, step_type = "cc", f"CC_{direction}"
        _check_against_envelope(binder, where, current, voltage, limit, envelope)

        if isinstance(step, RestStep):
            time_bound, default = duration, False
        elif step.max_duration_s is not None:
            time_bound, default = binder.number(step.max_duration_s), False
        elif current is not None and channel.dut.nominal_capacity_Ah:
            c_rate = abs(current) / channel.dut.nominal_capacity_Ah
            time_bound, default = C_RATE_TIME_BOUND_FACTOR * 3600.0 / c_rate, True
        else:
            time_bound, default = DEFAULT_TIME_BOUND_S, True
        if not time_bound > 0:
            raise binder.fail(f"{where}.max_duration_s must be > 0, got {time_bound}")

        steps.append(PlannedStep(
            number=index + 1, name=step.name or step_type.lower(), kind=kind, step_type=step_type,
            current_A=current, voltage_V=voltage, current_limit_A=limit,
            ends=tuple(ends) + (PlannedEnd("step_time", "above", time_bound, "time bound"),),
            time_bound_s=time_bound, time_bound_is_default=default,
            expected_s=_expected_duration(kind, current, ends, time_bound, channel.dut.nominal_capacity_Ah),
        ))

    _check_inputs_for_limits(binder, envelope)
    record = protocol.record
    return Plan(
        protocol=protocol, protocol_path=protocol_path, protocol_text=protocol_text, dut=channel.dut,
        parameters=binder.parameters, steps=tuple(steps),
        record_time_s=binder.number(record.time_s),
        record_voltage_V=None if record.voltage_V is None else binder.number(record.voltage_V),
        record_current_A=None if record.current_A is None else binder.number(record.current_A),
        envelope=envelope,
    )


def _check_against_envelope(binder: _Binder, where: str, current: float | None, voltage: float | None,
                            limit: float | None, envelope: SafetyEnvelope) -> None:
    if current is not None:
        bound = envelope.max_charge_current_A if current > 0 else envelope.max_discharge_current_A
        if bound is not None and abs(current) > bound * (1 - CURRENT_LIMIT_MARGIN):
            kind = "charge" if current > 0 else "discharge"
            raise binder.fail(f"{where}: current {current:+.4g} A is not at least {CURRENT_LIMIT_MARGIN:.0%} below "
                              f"the safety limit max_{kind}_current_A = {bound:g} A (it would trip on measurement "
                              f"noise); lower the current or raise the limit in the bench file")
    if voltage is not None:
        high, low = envelope.max_voltage_V, envelope.min_voltage_V
        if (high is not None and voltage > high) or (low is not None and voltage < low):
            raise binder.fail(f"{where}: voltage {voltage:g} V is outside the safety envelope "
                              f"{low if low is not None else '-inf'} to {high if high is not None else 'inf'} V")
    if limit is not None and limit <= 0:
        raise binder.fail(f"{where}.current_limit_A must be > 0, got {limit}")


def _check_inputs_for_limits(binder: _Binder, envelope: SafetyEnvelope) -> None:
    channel = binder.channel
    armed = envelope.armed()
    needs = {
        "layer voltage": (("max_layer_voltage_V", "min_layer_voltage_V"), channel.layer_voltages is not None),
        "temperature": (("max_temperature_degC", "min_temperature_degC"),
                        any(t.sensor != "ambient" for t in channel.temperatures)),
        "pressure": (("max_pressure_MPa", "min_pressure_MPa"), channel.pressure is not None),
    }
    for what, (limits, wired) in needs.items():
        if not wired and any(name in armed for name in limits):
            raise binder.fail(f"a {what} safety limit is armed but the channel has no {what} input to check it; "
                              f"wire one in the bench file or remove the limit")


def _expected_duration(kind: str, current: float | None, ends: list[PlannedEnd], time_bound: float,
                       capacity_Ah: float | None) -> float:
    timed = [e.value for e in ends if e.quantity == "step_time"]
    if kind == "rest":
        guess = time_bound
    elif current is not None and capacity_Ah:
        guess = 3600.0 * capacity_Ah / abs(current) * (1.1 if kind == "cccv" else 1.0)
    else:
        guess = CV_EXPECTED_S
    return min([guess, time_bound, *timed]) if math.isfinite(guess) else time_bound
