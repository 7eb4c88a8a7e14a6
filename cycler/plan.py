"""Binding a protocol to a channel: the program the runner executes and `cycler plan` prints.

Binding resolves every `$parameter` and `dut.` reference, turns C-rates into amperes with the
DUT's nominal capacity, reads profile files, gives every step its time bound, merges the
safety envelope, and checks the plan against the channel: setpoints inside the envelope,
limits and end conditions that the channel has inputs for, requirements met. Every problem is
reported, not just the first, before anything is switched on.

The protocol's tree of steps and loops becomes a flat program of instructions (a step, a loop
start, a loop end, a cycle mark), and every goto becomes an index into it.

Rules (printed by `cycler plan`):
* default time bound: 2/C hours for a current step at C-rate C (PyBaMM's rule), one pass for a
  pulse train or a profile, 24 h otherwise;
* current-based ends are blanked for the first 5 s of a step, and again for 5 s whenever the
  output comes back on within a step (after a resume or a pause), as the Cadex C8000 does
  (manual p. 201), so that switching transients do not end a step; a voltage-rate end waits
  for its averaging window to fill;
* when several ends are reached on one tick, the first listed non-time end wins, then
  step-time ends, then the time bound (non-time limits win over time, as open-source Arbin
  schedule simulators do).
"""

from __future__ import annotations

import bisect
import csv
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal, Union

import numpy as np

from .bench import ChannelConfig, DutSpec
from .errors import InvalidInput
from .protocol import (CcCvStep, CcStep, CpStep, CrStep, CvStep, EisStep, EndCondition, Loop, NextCycle, Number,
                       ProfileStep, Protocol, PulseStep, RestStep, check_profile_table, referenced_parameter)
from .safety import SafetyEnvelope
from .sample import Sample
from .shorts import ShortDetector

DEFAULT_TIME_BOUND_S = 24 * 3600.0
C_RATE_TIME_BOUND_FACTOR = 2.0
CURRENT_END_BLANKING_S = 5.0
VOLTAGE_RATE_WINDOW_S = 600.0
CV_EXPECTED_S = 3600.0  # a guess for progress display only
MAX_TIME_BOUND_S = 400 * 86400.0  # longer than any real step: a unit mistake or a vanishing current
# A step current this close to its safety limit would trip on measurement noise alone
# (Arbin's default current safety scope sits at 105 % of the step current).
CURRENT_LIMIT_MARGIN = 0.02

TIME_POINT_TOLERANCE_S = 1e-9  # waveform time points are reached within rounding of the summed ticks


# --- what a tick offers to end conditions ---------------------------------------------------


@dataclass
class EndContext:
    sample: Sample
    step_time_s: float
    step_charge_Ah: float  # moved either way in this step
    step_energy_Wh: float
    voltage_rate_V_per_s: float | None  # over the averaging window; None until it has filled
    current_ends_armed: bool = True  # False for CURRENT_END_BLANKING_S after the output came on


_UNITS = {"step_time": "s", "voltage": "V", "current": "A", "signed_current": "A", "step_charge": "Ah",
          "step_energy": "Wh", "voltage_rate": "mV/h", "temperature": "degC", "layer_voltage": "V",
          "pressure": "MPa"}


@dataclass(frozen=True)
class PlannedEnd:
    quantity: Literal["step_time", "voltage", "current", "signed_current", "step_charge", "step_energy",
                      "voltage_rate", "temperature", "layer_voltage", "pressure"]
    direction: Literal["above", "below"]
    value: float  # SI: s, V, A, A, Ah, Wh, V/s, degC, V, MPa
    origin: str  # where it was written ("until[1]"), or "time bound"
    goto: str = "next"  # next, end_of_loop, exit_loop, end_of_test, or a tag
    target: int | None = None  # program index to continue at; None = the next instruction

    def measured(self, ctx: EndContext) -> float | None:
        s = ctx.sample
        q = self.quantity
        if q == "step_time":
            return ctx.step_time_s
        if q == "voltage":
            return s.voltage_V
        if q in ("current", "signed_current"):
            if not ctx.current_ends_armed:
                return None
            return abs(s.current_A) if q == "current" else s.current_A
        if q == "step_charge":
            return ctx.step_charge_Ah
        if q == "step_energy":
            return ctx.step_energy_Wh
        if q == "voltage_rate":
            return None if ctx.voltage_rate_V_per_s is None else abs(ctx.voltage_rate_V_per_s)
        if q == "temperature":
            values = list(s.temperatures_degC.values())
        elif q == "layer_voltage":
            values = s.layer_voltages_V.tolist()
        else:
            values = [] if s.pressure_MPa is None else [s.pressure_MPa]
        values = [v for v in values if not math.isnan(v)]
        if not values:
            return None
        return max(values) if self.direction == "above" else min(values)

    def reached(self, ctx: EndContext) -> bool:
        measured = self.measured(ctx)
        if measured is None:
            return False
        return measured >= self.value if self.direction == "above" else measured <= self.value

    def describe(self) -> str:
        symbol = "≥" if self.direction == "above" else "≤"
        q = self.quantity
        if q == "step_time":
            text = f"step time {format_duration(self.value)}"
        elif q == "voltage":
            text = f"V {symbol} {self.value:.4g} V"
        elif q == "current":
            text = f"|I| {symbol} {self.value:.4g} A"
        elif q == "signed_current":
            text = f"I {symbol} {self.value:+.4g} A"
        elif q == "voltage_rate":
            text = f"|dV/dt| {symbol} {self.value * 3.6e6:.4g} mV/h"
        else:
            label = {"step_charge": "step charge", "step_energy": "step energy", "temperature": "any T",
                     "layer_voltage": "any layer", "pressure": "pressure"}[q]
            text = f"{label} {symbol} {self.value:.4g} {_UNITS[q]}"
        return text if self.goto == "next" else f"{text} → {self.goto}"


# --- waveforms: pulse trains and profiles -------------------------------------------------------


@dataclass(frozen=True)
class Waveform:
    """A setpoint that follows time in the step: current (A) or power (W), + = charge."""

    quantity: Literal["current", "power"]
    times_s: tuple[float, ...]
    values: tuple[float, ...]
    interpolation: Literal["linear", "step"]
    period_s: float  # one pass; the waveform repeats after it

    def value_at(self, step_time_s: float) -> float:
        t = step_time_s % self.period_s if self.period_s > 0 else 0.0
        times = np.asarray(self.times_s)
        if self.interpolation == "step":
            # a step time a rounding error short of a time point is at that point (0.1 s ticks add up to 79.999...)
            return self.values[max(int(np.searchsorted(times, t + TIME_POINT_TOLERANCE_S, side="right")) - 1, 0)]
        return float(np.interp(t, times, self.values))

    def next_point_after(self, step_time_s: float) -> float:
        """Step time of the waveform's next time point after `step_time_s` (it repeats each period)."""
        if self.period_s <= 0:
            return math.inf
        passes, t = divmod(step_time_s, self.period_s)
        k = bisect.bisect_right(self.times_s, t + TIME_POINT_TOLERANCE_S)
        following = self.times_s[k] if k < len(self.times_s) else self.period_s + self.times_s[0]
        return passes * self.period_s + following

    def extremes(self) -> tuple[float, float]:
        return min(self.values), max(self.values)


# --- the program -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedStep:
    number: int  # Step ID: its place among the protocol's steps in file order, from 1
    name: str
    kind: Literal["rest", "cc", "cv", "cccv", "cp", "cr", "pulse", "profile", "eis"]
    step_type: str  # Battery Data Format step type
    ends: tuple[PlannedEnd, ...]  # in the order they are checked; the time bound last
    time_bound_s: float
    time_bound_is_default: bool
    expected_s: float  # for progress estimates only
    current_A: float | None = None
    voltage_V: float | None = None
    current_limit_A: float | None = None
    power_W: float | None = None
    resistance_ohm: float | None = None
    waveform: Waveform | None = None
    record_time_s: float | None = None
    tag: str | None = None
    source: str = ""  # where in the file ("steps[2].steps[0]")

    def setpoint(self) -> str:
        if self.kind == "rest":
            return "open circuit"
        if self.kind == "cc":
            return f"CC {self.current_A:+.4g} A"
        if self.kind == "cccv":
            return f"CC {self.current_A:+.4g} A then CV {self.voltage_V:.4g} V"
        if self.kind == "cv":
            limit = f", |I| ≤ {self.current_limit_A:.4g} A" if self.current_limit_A is not None else ""
            return f"CV {self.voltage_V:.4g} V{limit}"
        if self.kind == "cp":
            return f"CP {self.power_W:+.4g} W"
        if self.kind == "cr":
            return f"CR {self.resistance_ohm:.4g} Ohm (discharge)"
        if self.kind == "eis":
            return "EIS"
        w = self.waveform
        low, high = w.extremes()
        unit = "A" if w.quantity == "current" else "W"
        return (f"{self.kind} of {len(w.values)} points, {low:+.4g} to {high:+.4g} {unit}, "
                f"{w.interpolation}, period {format_duration(w.period_s)}")


@dataclass(frozen=True)
class PlannedLoop:
    number: int  # order of appearance
    name: str
    tag: str | None
    repeat: int | None
    max_repeats: int  # = repeat for counted loops
    until: tuple[tuple[str, float, str | None], ...]  # (condition, value, of_step tag)
    start: int  # program index of its LoopStart
    end: int  # program index of its LoopEnd


@dataclass(frozen=True)
class RunStep:
    step: PlannedStep


@dataclass(frozen=True)
class LoopStart:
    loop: PlannedLoop


@dataclass(frozen=True)
class LoopEnd:
    loop: PlannedLoop


@dataclass(frozen=True)
class CycleMark:
    name: str
    tag: str | None = None


Instruction = Union[RunStep, LoopStart, LoopEnd, CycleMark]


@dataclass(frozen=True)
class Plan:
    protocol: Protocol
    protocol_path: Path
    protocol_text: str
    dut: DutSpec
    parameters: dict[str, float]
    program: tuple[Instruction, ...]
    record_time_s: float
    record_voltage_V: float | None
    record_current_A: float | None
    envelope: SafetyEnvelope
    multiplicity: dict[int, int] = field(default_factory=dict)  # program index -> worst-case executions
    layer_inputs: int = 0  # layer voltages the channel measures

    def short_detection(self) -> dict[str, float]:
        """Internal-short thresholds in force (the defaults where none is set), by limit name."""
        return ShortDetector(self.envelope, self.layer_inputs, self.dut.nominal_capacity_Ah).thresholds()

    # The runner asks for these every tick; a plan does not change once made.
    @cached_property
    def steps(self) -> tuple[PlannedStep, ...]:
        """Each step of the protocol once, in file order."""
        return tuple(i.step for i in self.program if isinstance(i, RunStep))

    @cached_property
    def expected_duration_s(self) -> float:
        return sum(i.step.expected_s * self.multiplicity.get(k, 1) for k, i in enumerate(self.program)
                   if isinstance(i, RunStep))

    @cached_property
    def worst_case_duration_s(self) -> float:
        return sum(i.step.time_bound_s * self.multiplicity.get(k, 1) for k, i in enumerate(self.program)
                   if isinstance(i, RunStep))


def format_duration(seconds: float) -> str:
    if seconds >= 86400 * 2:
        return f"{seconds / 86400:.3g} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.3g} h"
    if seconds >= 60:
        return f"{seconds / 60:.3g} min"
    return f"{seconds:.3g} s"


# --- binding ---------------------------------------------------------------------------------


class _Problems(Exception):
    pass


class _Binder:
    def __init__(self, protocol: Protocol, source: Path, channel: ChannelConfig, envelope: SafetyEnvelope,
                 overrides: dict[str, float]):
        self.protocol = protocol
        self.source = source
        self.channel = channel
        self.dut = channel.dut
        self.envelope = envelope
        self.problems: list[str] = []
        self.parameters = self._resolve_parameters(overrides)

    def problem(self, message: str) -> None:
        self.problems.append(message)

    def _resolve_parameters(self, overrides: dict[str, float]) -> dict[str, float]:
        for name in sorted(set(overrides) - set(self.protocol.parameters)):
            known = ", ".join(self.protocol.parameters) or "none"
            self.problem(f"--set {name}: the protocol has no such parameter; parameters: {known}")
        values = {}
        for name, value in self.protocol.parameters.items():
            if name in overrides:
                values[name] = float(overrides[name])
            elif isinstance(value, str):
                dut_field = value.removeprefix("dut.")
                resolved = getattr(self.dut, dut_field)
                if resolved is None:
                    self.problem(f"parameter '{name}' takes {value}, but DUT '{self.dut.id}' has no {dut_field}; "
                                 f"add it to the DUT in the bench file or pass --set {name}=VALUE")
                    resolved = math.nan
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
            self.problem(f"{where} is a C-rate, but DUT '{self.dut.id}' has no nominal_capacity_Ah; "
                         "give the DUT its capacity in the bench file, or write the current in amperes")
            return math.nan
        amperes = rate * self.dut.nominal_capacity_Ah
        if not math.isfinite(amperes):
            self.problem(f"{where}: {rate:g} C of {self.dut.nominal_capacity_Ah:g} Ah is not a finite current")
        return amperes

    def amps(self, amperes: Number | None, c_rate: Number | None, where: str) -> float:
        if amperes is not None:
            return self.number(amperes)
        return self.amps_from_c(self.number(c_rate), where)

    def end(self, condition: EndCondition, where: str) -> PlannedEnd:
        name = condition.field
        value = self.number(getattr(condition, name))
        if name.endswith("_C"):
            value = abs(self.amps_from_c(value, f"{where}.{name}"))
        if name.endswith("_mV_per_h"):
            value = abs(value) / 3.6e6  # V/s
        direction = "below" if "_below_" in name else "above"
        quantity = name.split(f"_{direction}_")[0] if name != "step_time_s" else "step_time"
        if quantity == "current" and value < 0:
            value = abs(value)
        return PlannedEnd(quantity, direction, value, where.rsplit(".", 1)[-1], condition.goto or "next")


def _read_profile(binder: _Binder, step: ProfileStep, where: str) -> list[tuple[float, float]]:
    if step.table is not None:
        return [tuple(map(float, row)) for row in step.table]
    path = Path(step.file)
    if not path.is_absolute():
        path = binder.source.parent / path
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = []
            for number, row in enumerate(csv.reader(handle), start=1):
                cells = [c.strip() for c in row if c.strip()]
                if not cells or cells[0].startswith("#"):
                    continue
                try:
                    rows.append((float(cells[0]), float(cells[1])))
                except (ValueError, IndexError):
                    if rows:  # a header is allowed on top, nowhere else
                        binder.problem(f"{where}.file: {path}, line {number}: expected two numbers (time_s, value)")
                        return []
    except OSError as error:
        binder.problem(f"{where}.file: cannot read {path} ({error.strerror})")
        return []
    try:
        check_profile_table(rows)
    except ValueError as error:
        binder.problem(f"{where}.file: {path}: {error}")
        return []
    return rows


def _waveform(binder: _Binder, step: PulseStep | ProfileStep, where: str) -> Waveform | None:
    if isinstance(step, PulseStep):
        times, values, t = [], [], 0.0
        quantity = None
        for j, segment in enumerate(step.segments):
            kind = "power" if segment.power_W is not None else "current"
            if quantity not in (None, kind):
                binder.problem(f"{where}.segments[{j}]: a pulse train is all currents or all powers, not both")
            quantity = kind
            value = (binder.number(segment.power_W) if kind == "power"
                     else binder.amps(segment.current_A, segment.current_C, f"{where}.segments[{j}].current_C"))
            duration = binder.number(segment.duration_s)
            if not duration > 0:
                binder.problem(f"{where}.segments[{j}].duration_s must be > 0, got {duration}")
            times.append(t)
            values.append(value)
            t += duration
        return Waveform(quantity, tuple(times), tuple(values), "step", t)
    rows = _read_profile(binder, step, where)
    if not rows:
        return None
    times = [r[0] for r in rows]
    scale = binder.number(step.scale)
    values = [r[1] * scale for r in rows]
    if step.quantity == "current_C":
        values = [binder.amps_from_c(v, f"{where}.quantity") for v in values]
    quantity = "power" if step.quantity == "power_W" else "current"
    # The last point's time ends one pass of the profile (linear or stepwise alike).
    return Waveform(quantity, tuple(times), tuple(values), step.interpolation, times[-1])


def _step_type(kind: str, sign: float) -> str:
    direction = "CHG" if sign > 0 else "DCH"
    return {"rest": "REST", "cc": f"CC_{direction}", "cccv": f"CCCV_{direction}", "cv": "CV",
            "cp": f"CP_{direction}", "cr": "CR_DCH", "pulse": "PULSE", "profile": "PROFILE", "eis": "EIS"}[kind]


def _plan_step(binder: _Binder, step, number: int, where: str, ends: list[PlannedEnd]) -> PlannedStep:
    dut = binder.channel.dut
    values: dict = {}
    sign = 0.0
    if isinstance(step, RestStep):
        kind = "rest"
    elif isinstance(step, CvStep):
        kind = "cv"
        values["voltage_V"] = binder.number(step.voltage_V)
        if step.current_limit_A is not None or step.current_limit_C is not None:
            values["current_limit_A"] = abs(binder.amps(step.current_limit_A, step.current_limit_C,
                                                        f"{where}.current_limit_C"))
    elif isinstance(step, (CcStep, CcCvStep)):
        kind = "cccv" if isinstance(step, CcCvStep) else "cc"
        values["current_A"] = sign = binder.amps(step.current_A, step.current_C, f"{where}.current_C")
        if values["current_A"] == 0:
            binder.problem(f"{where}: a current of 0 A is a rest; use step: rest")
        if kind == "cccv":
            values["voltage_V"] = binder.number(step.voltage_V)
    elif isinstance(step, CpStep):
        kind = "cp"
        values["power_W"] = sign = binder.number(step.power_W)
        if values["power_W"] == 0:
            binder.problem(f"{where}: a power of 0 W is a rest; use step: rest")
    elif isinstance(step, CrStep):
        kind = "cr"
        values["resistance_ohm"] = binder.number(step.resistance_ohm)
        if not values["resistance_ohm"] > 0:
            binder.problem(f"{where}.resistance_ohm must be > 0, got {values['resistance_ohm']}")
    elif isinstance(step, EisStep):
        kind = "eis"
        binder.problem(f"{where}: EIS is refused on this bench: none of its instruments can measure impedance")
    else:
        kind = step.step
        values["waveform"] = _waveform(binder, step, where)

    # time bound
    waveform = values.get("waveform")
    intrinsic = None
    if isinstance(step, RestStep) and step.duration_s is not None:
        intrinsic = binder.number(step.duration_s)
    elif isinstance(step, PulseStep) and waveform is not None:
        intrinsic = waveform.period_s * binder.number(step.repeat)
    elif isinstance(step, ProfileStep) and waveform is not None:
        intrinsic = waveform.period_s
    if getattr(step, "max_duration_s", None) is not None:
        bound, default = binder.number(step.max_duration_s), False
    elif intrinsic is not None:
        bound, default = intrinsic, False
    elif "current_A" in values and dut.nominal_capacity_Ah and values["current_A"]:
        bound, default = C_RATE_TIME_BOUND_FACTOR * 3600.0 * dut.nominal_capacity_Ah / abs(values["current_A"]), True
    else:
        bound, default = DEFAULT_TIME_BOUND_S, True
    if not 0 < bound <= MAX_TIME_BOUND_S:
        binder.problem(f"{where}: the step's time bound would be {format_duration(bound)}; it must be more than "
                       f"0 and at most {format_duration(MAX_TIME_BOUND_S)} (a current this small? "
                       "give the step a max_duration_s)")
        bound = DEFAULT_TIME_BOUND_S
    origin = "duration" if intrinsic is not None and getattr(step, "max_duration_s", None) is None else "time bound"
    ends = sorted(ends, key=lambda e: e.quantity == "step_time")
    ends.append(PlannedEnd("step_time", "above", bound, origin))

    if waveform is not None:
        low, high = waveform.extremes()
        sign = high if abs(high) >= abs(low) else low
    record = getattr(step, "record_time_s", None)
    return PlannedStep(
        number=number, name=step.name or _step_type(kind, sign).lower(), kind=kind,
        step_type=_step_type(kind, sign), ends=tuple(ends), time_bound_s=bound, time_bound_is_default=default,
        expected_s=_expected(kind, values, ends, bound, dut.nominal_capacity_Ah),
        record_time_s=None if record is None else binder.number(record), tag=step.tag, source=where, **values)


def _expected(kind: str, values: dict, ends: list[PlannedEnd], bound: float, capacity_Ah: float | None) -> float:
    timed = [e.value for e in ends if e.quantity == "step_time"]
    current = values.get("current_A")
    if kind in ("rest", "pulse", "profile"):
        guess = bound
    elif current and capacity_Ah:
        guess = 3600.0 * capacity_Ah / abs(current) * (1.1 if kind == "cccv" else 1.0)
    else:
        guess = CV_EXPECTED_S
    return min([guess, bound, *timed])


def _check_step(binder: _Binder, step: PlannedStep) -> None:
    """Setpoints inside the safety envelope, before anything is switched on."""
    e = binder.envelope
    where = step.source
    currents: list[float] = []
    if step.current_A is not None:
        currents.append(step.current_A)
    if step.waveform is not None and step.waveform.quantity == "current":
        currents += [min(step.waveform.values), max(step.waveform.values)]
    powers = [step.power_W] if step.power_W is not None else []
    if step.waveform is not None and step.waveform.quantity == "power":
        powers += [min(step.waveform.values), max(step.waveform.values)]
    low_V = e.min_voltage_V or binder.dut.discharge_voltage_V
    high_V = e.max_voltage_V or binder.dut.charge_voltage_V
    for power in powers:  # the current a power needs at the lowest voltage it may see
        voltage = low_V if low_V else None
        if voltage:
            currents.append(power / voltage)
    if step.resistance_ohm and high_V:
        currents.append(-high_V / step.resistance_ohm)
    for current in currents:
        if math.isnan(current) or current == 0:
            continue
        bound = e.max_charge_current_A if current > 0 else e.max_discharge_current_A
        if bound is not None and abs(current) > bound * (1 - CURRENT_LIMIT_MARGIN):
            kind = "charge" if current > 0 else "discharge"
            binder.problem(f"{where}: a current of {current:+.4g} A is not at least {CURRENT_LIMIT_MARGIN:.0%} below "
                           f"the safety limit max_{kind}_current_A = {bound:g} A (it would trip on measurement "
                           f"noise); lower the setpoint or raise the limit in the bench file")
    if step.voltage_V is not None:
        high, low = e.max_voltage_V, e.min_voltage_V
        if (high is not None and step.voltage_V > high) or (low is not None and step.voltage_V < low):
            binder.problem(f"{where}: the voltage {step.voltage_V:g} V is outside the safety envelope "
                           f"{low if low is not None else '-inf'} to {high if high is not None else 'inf'} V")
    if step.current_limit_A is not None and not step.current_limit_A > 0:
        binder.problem(f"{where}.current_limit_A must be > 0, got {step.current_limit_A}")


def _check_inputs(binder: _Binder, plan_steps: list[PlannedStep]) -> None:
    channel = binder.channel
    wired = {"layer voltage": channel.layer_voltages is not None,
             "temperature": any(t.sensor != "ambient" for t in channel.temperatures),
             "pressure": channel.pressure is not None}
    armed = binder.envelope.armed()
    for what, limits in (("layer voltage", ("max_layer_voltage_V", "min_layer_voltage_V", "max_layer_drop_mV",
                                            "max_layer_noise_mV")),
                         ("temperature", ("max_temperature_degC", "min_temperature_degC")),
                         ("pressure", ("max_pressure_MPa", "min_pressure_MPa"))):
        if not wired[what] and any(name in armed for name in limits):
            binder.problem(f"a {what} safety limit is armed but the channel has no {what} input to check it; "
                           "wire one in the bench file or remove the limit")
    suspend = binder.protocol.suspend
    if suspend is not None:
        has_ambient = any(t.sensor == "ambient" for t in channel.temperatures) or channel.chamber is not None
        for name, available, what in (("pressure_MPa", wired["pressure"], "pressure input"),
                                      ("ambient_degC", has_ambient, "ambient temperature sensor or chamber")):
            if getattr(suspend, name) is not None and not available:
                binder.problem(f"suspend.{name}: the channel has no {what} to watch it with")
    for step in plan_steps:
        for end in step.ends:
            what = {"layer_voltage": "layer voltage", "temperature": "temperature", "pressure": "pressure"}.get(
                end.quantity)
            if what and not wired[what]:
                binder.problem(f"{step.source}.{end.origin}: ends on {what}, but the channel has no {what} input")
    requires = binder.protocol.requires
    needs = [("nominal_capacity", binder.dut.nominal_capacity_Ah is not None, "a DUT with nominal_capacity_Ah"),
             ("layer_voltages", wired["layer voltage"], "per-layer voltage inputs"),
             ("temperature", wired["temperature"], "a temperature sensor on the DUT"),
             ("pressure", wired["pressure"], "a pressure input"),
             ("chamber", channel.chamber is not None, "a temperature chamber")]
    for name, available, what in needs:
        if getattr(requires, name) and not available:
            binder.problem(f"requires.{name}: the protocol needs {what}, which this channel does not have")


def bind(protocol: Protocol, protocol_path: Path, protocol_text: str, channel: ChannelConfig,
         envelope: SafetyEnvelope, overrides: dict[str, float] | None = None) -> Plan:
    binder = _Binder(protocol, Path(protocol_path), channel, envelope, overrides or {})

    # Pass 1: lay out the program, so that tags and loops have indices.
    layout: list[tuple[str, object, str, tuple[int, ...]]] = []  # (kind, item, path, enclosing loop ids)
    loop_ids: dict[int, int] = {}

    def lay_out(items, prefix, loops):
        for i, item in enumerate(items):
            path = f"{prefix}[{i}]"
            if isinstance(item, Loop):
                loop_id = len(loop_ids)
                loop_ids[id(item)] = loop_id
                layout.append(("loop_start", item, path, loops))
                lay_out(item.steps, f"{path}.steps", loops + (loop_id,))
                layout.append(("loop_end", item, path, loops))
            elif isinstance(item, NextCycle):
                layout.append(("cycle", item, path, loops))
            else:
                layout.append(("step", item, path, loops))

    lay_out(protocol.steps, "steps", ())
    tag_index = {item.tag: k for k, (kind, item, _, _) in enumerate(layout)
                 if kind != "loop_end" and getattr(item, "tag", None)}
    loop_start = {loop_ids[id(item)]: k for k, (kind, item, _, _) in enumerate(layout) if kind == "loop_start"}
    loop_end = {loop_ids[id(item)]: k for k, (kind, item, _, _) in enumerate(layout) if kind == "loop_end"}

    def target(goto: str, loops: tuple[int, ...]) -> int | None:
        if goto == "next":
            return None
        if goto == "end_of_test":
            return len(layout)
        if goto == "end_of_loop":
            return loop_end[loops[-1]]
        if goto == "exit_loop":
            return loop_end[loops[-1]] + 1
        return tag_index[goto]

    # Pass 2: plan every instruction.
    program: list[Instruction] = []
    planned_loops: dict[int, PlannedLoop] = {}
    number = 0
    for kind, item, path, loops in layout:
        if kind == "loop_start":
            loop_id = loop_ids[id(item)]
            repeat = None if item.repeat is None else binder.number(item.repeat)
            bound = repeat if repeat is not None else binder.number(item.max_repeats)
            if not (bound >= 1 and float(bound).is_integer()):
                binder.problem(f"{path}: a loop runs a whole number of times, at least 1; got {bound}")
                bound = 1
            until = tuple((("retention" if c.discharge_capacity_retention_below is not None else "capacity"),
                           binder.number(c.discharge_capacity_retention_below
                                         if c.discharge_capacity_retention_below is not None
                                         else c.discharge_capacity_below_Ah), c.of_step) for c in item.until)
            planned_loops[loop_id] = PlannedLoop(loop_id + 1, item.name or f"loop {loop_id + 1}", item.tag,
                                                 None if repeat is None else int(repeat), int(bound), until,
                                                 loop_start[loop_id], loop_end[loop_id])
            program.append(LoopStart(planned_loops[loop_id]))
        elif kind == "loop_end":
            program.append(LoopEnd(planned_loops[loop_ids[id(item)]]))
        elif kind == "cycle":
            program.append(CycleMark(item.name or "next cycle", item.tag))
        else:
            number += 1
            ends = []
            for j, condition in enumerate(item.until):
                end = binder.end(condition, f"{path}.until[{j}]")
                ends.append(PlannedEnd(end.quantity, end.direction, end.value, end.origin, end.goto,
                                       target(end.goto, loops)))
            step = _plan_step(binder, item, number, path, ends)
            _check_step(binder, step)
            program.append(RunStep(step))

    multiplicity = {}
    for k, (_, _, _, loops) in enumerate(layout):
        multiplicity[k] = int(np.prod([planned_loops[i].max_repeats for i in loops])) if loops else 1
    _check_inputs(binder, [i.step for i in program if isinstance(i, RunStep)])
    record = protocol.record
    plan = Plan(
        protocol=protocol, protocol_path=Path(protocol_path), protocol_text=protocol_text, dut=channel.dut,
        parameters=binder.parameters, program=tuple(program),
        record_time_s=binder.number(record.time_s),
        record_voltage_V=None if record.voltage_V is None else binder.number(record.voltage_V),
        record_current_A=None if record.current_A is None else binder.number(record.current_A),
        envelope=envelope, multiplicity=multiplicity,
        layer_inputs=len(channel.layer_voltages.channel_numbers()) if channel.layer_voltages else 0,
    )
    if not plan.record_time_s > 0:
        binder.problem(f"record.time_s must be > 0, got {plan.record_time_s}")
    if binder.problems:
        raise InvalidInput("\n".join(f"{protocol_path}: {p}" for p in binder.problems))
    return plan
