"""Control: what each step asks of the channel's supply, tick by tick.

On a bidirectional supply the native law is a voltage with source and sink current clamps and,
on supplies that have them, power limits (see drivers/roles.py). A step's control gives the
command for the current tick, or None for open circuit.

* CC: the current clamp is the step current; the voltage is set just beyond the step's voltage
  end, so the supply stays in CC until the runner sees the end voltage, and a host that dies
  leaves the stack only a little past it. A step with no voltage end of its own (a pulse, a
  profile, a timed CC) is clamped at the DUT's end-of-charge or end-of-discharge voltage: like
  an ISO 12405-4 pulse that reaches the limit, it turns CV there, inside the safety envelope.
* CC-CV: current clamp = the step current, voltage = the CV voltage; the supply crosses over.
* CV: the voltage, with the step's current limit (or the envelope's) both ways.
* CP: native on a supply with power limits (power limit = the step power, the current clamp
  at the envelope's limit); otherwise a software loop: I = P / V measured, every tick.
* CR (discharge only): a software loop, I = V / R measured, every tick.
* Pulse trains and profiles: the waveform's value at this tick's step time, as CC or CP.
"""

from __future__ import annotations

from dataclasses import dataclass

from stackcycler.drivers.roles import SupplyRatings

from .bench import DutSpec
from .plan import PlannedStep
from .safety import SafetyEnvelope
from .sample import Sample

# How far past a step's end voltage the supply's own voltage clamp sits: wide enough that
# measurement noise cannot hide the end, narrow enough to limit an orphaned over-charge.
CLAMP_MARGIN_FRACTION = 0.005
CLAMP_MARGIN_MIN_V = 0.05


@dataclass(frozen=True)
class OutputCommand:
    voltage_V: float
    source_limit_A: float
    sink_limit_A: float
    source_power_W: float | None = None  # None: no power limit
    sink_power_W: float | None = None
    # True: the voltage is the step's setpoint, reached and held (CV, CC-CV); False: only a clamp
    # beyond the step's end. A bidirectional supply does both alike; a source/load channel picks
    # the load's mode by it (CC, or CV with a current limit).
    holds_voltage: bool = False


class StepControl:
    """The command for a step; `dynamic` ones change from tick to tick.

    `steps_on_change`: a change of command is a step in current (a step start, a pulse edge), so
    the runner measures again at once and the charge count sees the edge where it happened;
    smooth controls (software loops, linear profiles) change a little every tick and need not."""

    dynamic = False
    steps_on_change = True

    def command(self, step_time_s: float, sample: Sample | None) -> OutputCommand | None:
        raise NotImplementedError

    def next_change_s(self, step_time_s: float) -> float | None:
        """Step time of the next scheduled change of setpoint (a profile's next point), if any."""
        return None


@dataclass(frozen=True)
class StaticControl(StepControl):
    fixed: OutputCommand | None

    def command(self, step_time_s: float, sample: Sample | None) -> OutputCommand | None:
        return self.fixed


class _Limits:
    """The clamps a step's commands are built with."""

    def __init__(self, step: PlannedStep, envelope: SafetyEnvelope, ratings: SupplyRatings, dut: DutSpec):
        self.charge_A = envelope.max_charge_current_A or ratings.current_A
        self.discharge_A = envelope.max_discharge_current_A or ratings.current_A
        ceiling = envelope.max_voltage_V or ratings.voltage_V
        floor = envelope.min_voltage_V or 0.0
        self.high_V = self._clamp(step, ceiling, dut.charge_voltage_V, "above", +1)
        self.low_V = self._clamp(step, floor, dut.discharge_voltage_V, "below", -1)

    @staticmethod
    def _clamp(step: PlannedStep, envelope_V: float, operating_V: float | None, direction: str, sign: int) -> float:
        ends = [e.value for e in step.ends if e.quantity == "voltage" and e.direction == direction]
        if ends:
            target = min(ends) if sign > 0 else max(ends)
            clamp = target + sign * max(CLAMP_MARGIN_FRACTION * target, CLAMP_MARGIN_MIN_V)
        else:
            clamp = operating_V if operating_V is not None else envelope_V
        return min(clamp, envelope_V) if sign > 0 else max(clamp, envelope_V)

    def current(self, amps: float) -> OutputCommand:
        """Constant current: + charges towards the upper clamp, - discharges towards the lower."""
        if amps >= 0:
            return OutputCommand(self.high_V, amps, 0.0)
        return OutputCommand(self.low_V, 0.0, -amps)

    def power(self, watts: float) -> OutputCommand:
        """Native constant power: the power limit acts, the current clamp sits at the safety limit."""
        if watts >= 0:
            return OutputCommand(self.high_V, self.charge_A, 0.0, source_power_W=watts)
        return OutputCommand(self.low_V, 0.0, self.discharge_A, sink_power_W=-watts)


@dataclass(frozen=True)
class SoftwarePower(StepControl):
    watts: float
    limits: _Limits
    dynamic = True
    steps_on_change = False

    def command(self, step_time_s, sample):
        voltage = sample.voltage_V if sample is not None and sample.voltage_V > 0 else None
        return self.limits.current(self.watts / voltage) if voltage else self.limits.current(0.0)


@dataclass(frozen=True)
class SoftwareResistance(StepControl):
    ohms: float
    limits: _Limits
    dynamic = True
    steps_on_change = False

    def command(self, step_time_s, sample):
        voltage = sample.voltage_V if sample is not None else 0.0
        return self.limits.current(-max(voltage, 0.0) / self.ohms)


@dataclass(frozen=True)
class WaveformControl(StepControl):
    step: PlannedStep
    limits: _Limits
    native_power: bool
    dynamic = True

    @property
    def steps_on_change(self) -> bool:
        return self.step.waveform.interpolation == "step"

    def next_change_s(self, step_time_s: float) -> float:
        return self.step.waveform.next_point_after(step_time_s)

    def command(self, step_time_s, sample):
        value = self.step.waveform.value_at(step_time_s)
        if self.step.waveform.quantity == "current":
            return self.limits.current(value)
        if self.native_power:
            return self.limits.power(value)
        return SoftwarePower(value, self.limits).command(step_time_s, sample)


def control_for(step: PlannedStep, envelope: SafetyEnvelope, ratings: SupplyRatings, native_power: bool,
                dut: DutSpec) -> StepControl:
    limits = _Limits(step, envelope, ratings, dut)
    if step.kind == "rest":
        return StaticControl(None)
    if step.kind == "cc":
        return StaticControl(limits.current(step.current_A))
    if step.kind == "cccv":
        charging = step.current_A > 0
        return StaticControl(OutputCommand(step.voltage_V, step.current_A if charging else 0.0,
                                           0.0 if charging else -step.current_A, holds_voltage=True))
    if step.kind == "cv":
        return StaticControl(OutputCommand(step.voltage_V, step.current_limit_A or limits.charge_A,
                                           step.current_limit_A or limits.discharge_A, holds_voltage=True))
    if step.kind == "cp":
        return StaticControl(limits.power(step.power_W)) if native_power else SoftwarePower(step.power_W, limits)
    if step.kind == "cr":
        return SoftwareResistance(step.resistance_ohm, limits)
    if step.kind in ("pulse", "profile"):
        return WaveformControl(step, limits, native_power)
    raise ValueError(f"no control for a {step.kind} step")  # EIS is refused when the plan is bound


def rating_problems(steps, controls: dict[int, StepControl], ratings: SupplyRatings) -> list[str]:
    """Steps whose fixed command needs more than the supply can give (dynamic ones are checked as they run)."""
    problems = []
    for step in steps:
        control = controls[step.number]
        command = None if control.dynamic else control.command(0.0, None)
        if command is None:
            continue
        current = max(command.source_limit_A, command.sink_limit_A)
        if command.voltage_V > ratings.voltage_V or current > ratings.current_A:
            problems.append(f"step {step.number} ({step.setpoint()}) needs {command.voltage_V:.4g} V / "
                            f"{current:.4g} A, beyond the supply's rating of {ratings.voltage_V:g} V / "
                            f"{ratings.current_A:g} A")
    return problems
