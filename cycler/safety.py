"""The safety envelope: limits that are always armed, checked every tick before control.

Limits come from the DUT (its absolute ratings, in the bench file) and from the protocol
(a test may tighten them); the envelope keeps the tighter of each. They are separate from
step end conditions: a step end moves the test on, a safety limit ends it in the safe state.

A reading that cannot be taken (NaN: overload, open sensor) counts as out of range: a layer
whose voltage we cannot see is not a layer we may keep charging.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import SafetyTrip
from .sample import Sample


class SafetyLimits(BaseModel):
    """Safety limits as written in a bench (DUT) or protocol file. Every field is optional."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    max_voltage_V: float | None = Field(None, description="stack terminal voltage")
    min_voltage_V: float | None = None
    max_layer_voltage_V: float | None = Field(None, description="any single layer")
    min_layer_voltage_V: float | None = None
    max_charge_current_A: float | None = Field(None, gt=0)
    max_discharge_current_A: float | None = Field(None, gt=0, description="magnitude")
    max_temperature_degC: float | None = None
    min_temperature_degC: float | None = None
    max_pressure_MPa: float | None = None
    min_pressure_MPa: float | None = None
    max_test_charge_Ah: float | None = Field(
        None, gt=0, description="net charge into the DUT since the test started (charge - discharge)")
    # internal-short detection (see shorts.py for what they mean and their defaults)
    max_layer_drop_mV: float | None = Field(
        None, gt=0, description="a layer's voltage falling this far during a charge step at a steady current")
    max_layer_noise_mV: float | None = Field(
        None, gt=0, description="RMS second difference of a layer's voltage during a charge step")
    max_ce_drop_pct: float | None = Field(
        None, gt=0, description="a cycle's coulombic efficiency this many points below the previous cycles'")
    debounce_s: float | None = Field(None, ge=0, description="how long a limit must be exceeded before it trips")

    @model_validator(mode="after")
    def _max_above_min(self) -> "SafetyLimits":
        for high, low in (("max_voltage_V", "min_voltage_V"), ("max_layer_voltage_V", "min_layer_voltage_V"),
                          ("max_temperature_degC", "min_temperature_degC"),
                          ("max_pressure_MPa", "min_pressure_MPa")):
            a, b = getattr(self, high), getattr(self, low)
            if a is not None and b is not None and a <= b:
                raise ValueError(f"{high} ({a}) must be above {low} ({b})")
        return self


@dataclass(frozen=True)
class SafetyEnvelope:
    max_voltage_V: float | None = None
    min_voltage_V: float | None = None
    max_layer_voltage_V: float | None = None
    min_layer_voltage_V: float | None = None
    max_charge_current_A: float | None = None
    max_discharge_current_A: float | None = None
    max_temperature_degC: float | None = None
    min_temperature_degC: float | None = None
    max_pressure_MPa: float | None = None
    min_pressure_MPa: float | None = None
    max_test_charge_Ah: float | None = None
    max_layer_drop_mV: float | None = None
    max_layer_noise_mV: float | None = None
    max_ce_drop_pct: float | None = None
    debounce_s: float = 0.0

    @classmethod
    def tightest(cls, *sources: SafetyLimits) -> "SafetyEnvelope":
        values = {}
        for f in fields(cls):
            given = [getattr(s, f.name) for s in sources if getattr(s, f.name) is not None]
            if f.name == "debounce_s":
                values[f.name] = min(given) if given else 0.0
            elif given:
                values[f.name] = min(given) if f.name.startswith("max_") else max(given)
        return cls(**values)

    def armed(self) -> dict[str, float]:
        """The limits that are set, by name."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name != "debounce_s" and getattr(self, f.name) is not None}


def _crossed(value: float, low: float | None, high: float | None) -> str | None:
    """'max' or 'min' if `value` is outside the limits; NaN fails whichever limit is set."""
    if high is not None and not value <= high:
        return "max"
    if low is not None and not value >= low:
        return "min"
    return None


class SafetyMonitor:
    """Checks each sample against the envelope; raises SafetyTrip once a limit holds past the debounce."""

    def __init__(self, envelope: SafetyEnvelope):
        self.envelope = envelope
        self._since: dict[str, float] = {}
        e = envelope
        # worked out once: the bounds of each quantity, +-inf where no limit is set
        self._layer_low = -np.inf if e.min_layer_voltage_V is None else e.min_layer_voltage_V
        self._layer_high = np.inf if e.max_layer_voltage_V is None else e.max_layer_voltage_V
        self._layers_armed = e.max_layer_voltage_V is not None or e.min_layer_voltage_V is not None

    def _violations(self, sample: Sample, net_charge_Ah: float) -> list[tuple[str, str, float, float]]:
        """(limit name, where, value, limit) for every limit the sample is outside."""
        e = self.envelope
        found: list[tuple[str, str, float, float]] = []

        def check(quantity: str, where: str, value: float, low: float | None, high: float | None) -> None:
            side = _crossed(value, low, high)
            if side is not None:
                found.append((f"{side}_{quantity}", where, value, high if side == "max" else low))

        check("voltage_V", "stack", sample.voltage_V, e.min_voltage_V, e.max_voltage_V)
        if e.max_charge_current_A is not None and not sample.current_A <= e.max_charge_current_A:
            found.append(("max_charge_current_A", "stack", sample.current_A, e.max_charge_current_A))
        if e.max_discharge_current_A is not None and not -sample.current_A <= e.max_discharge_current_A:
            found.append(("max_discharge_current_A", "stack", sample.current_A, -e.max_discharge_current_A))
        layers = sample.layer_voltages_V
        # min() and max() see NaN (an unreadable layer): it makes the comparison fail, as it should
        if self._layers_armed and layers.size and not (layers.min() >= self._layer_low
                                                       and layers.max() <= self._layer_high):
            for index in np.flatnonzero(~((layers >= self._layer_low) & (layers <= self._layer_high))):
                check("layer_voltage_V", f"layer {index + 1:02d}", float(layers[index]),
                      e.min_layer_voltage_V, e.max_layer_voltage_V)
        for sensor, value in sample.temperatures_degC.items():
            check("temperature_degC", sensor, value, e.min_temperature_degC, e.max_temperature_degC)
        if sample.pressure_MPa is not None:
            check("pressure_MPa", "stack", sample.pressure_MPa, e.min_pressure_MPa, e.max_pressure_MPa)
        if e.max_test_charge_Ah is not None and net_charge_Ah > e.max_test_charge_Ah:
            found.append(("max_test_charge_Ah", "stack", net_charge_Ah, e.max_test_charge_Ah))
        return found

    def check(self, sample: Sample, net_charge_Ah: float = 0.0) -> None:
        """Raise SafetyTrip if a limit has held past the debounce. `net_charge_Ah`: charge - discharge so far."""
        violations = self._violations(sample, net_charge_Ah)
        if not violations and not self._since:
            return  # the usual tick
        now = sample.test_time_s
        active = set()
        for name, where, value, limit in violations:
            key = f"{name}@{where}"
            active.add(key)
            first = self._since.setdefault(key, now)
            if now - first >= self.envelope.debounce_s:
                raise SafetyTrip(name, value, limit, now, where)
        for key in list(self._since):
            if key not in active:
                del self._since[key]
