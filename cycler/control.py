"""Control: what a planned step asks of the channel's supply.

On a bidirectional supply every step type is native (see drivers/roles.py): the command is a
voltage with a source and a sink current clamp, or None for open circuit.

* CC charge/discharge: the current clamp is the step current; the voltage is set just beyond
  the step's voltage end (or at the safety envelope when the step has none), so the supply
  stays in CC until the runner sees the end voltage, and a host that dies leaves the stack
  floating only a little past it.
* CC-CV: current clamp = step current, voltage = the CV voltage; the supply crosses over.
* CV: the voltage, with the step's current limit (or the DUT's) both ways.
"""

from __future__ import annotations

from dataclasses import dataclass

from stackcycler.drivers.roles import SupplyRatings

from .plan import PlannedStep
from .safety import SafetyEnvelope

# How far past a CC step's end voltage the supply's own voltage clamp sits: wide enough that
# measurement noise cannot hide the end, narrow enough to limit an orphaned over-charge.
CLAMP_MARGIN_FRACTION = 0.005
CLAMP_MARGIN_MIN_V = 0.05


@dataclass(frozen=True)
class OutputCommand:
    voltage_V: float
    source_limit_A: float
    sink_limit_A: float


def _clamp_voltage(step: PlannedStep, envelope: SafetyEnvelope, ratings: SupplyRatings, charging: bool) -> float:
    direction = "above" if charging else "below"
    ends = [e.value for e in step.ends if e.quantity == "voltage" and e.direction == direction]
    if charging:
        ceiling = envelope.max_voltage_V if envelope.max_voltage_V is not None else ratings.voltage_V
        if not ends:
            return ceiling
        target = min(ends)
        return min(target + max(CLAMP_MARGIN_FRACTION * target, CLAMP_MARGIN_MIN_V), ceiling)
    floor = envelope.min_voltage_V if envelope.min_voltage_V is not None else 0.0
    if not ends:
        return floor
    target = max(ends)
    return max(target - max(CLAMP_MARGIN_FRACTION * target, CLAMP_MARGIN_MIN_V), floor)


def command_for(step: PlannedStep, envelope: SafetyEnvelope, ratings: SupplyRatings) -> OutputCommand | None:
    if step.kind == "rest":
        return None
    if step.kind in ("cc", "cccv"):
        current = step.current_A
        charging = current > 0
        voltage = step.voltage_V if step.kind == "cccv" else _clamp_voltage(step, envelope, ratings, charging)
        return OutputCommand(voltage, current if charging else 0.0, 0.0 if charging else -current)
    source = step.current_limit_A or envelope.max_charge_current_A or ratings.current_A
    sink = step.current_limit_A or envelope.max_discharge_current_A or ratings.current_A
    return OutputCommand(step.voltage_V, source, sink)
