"""One tick's measurement of a channel."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Sample:
    test_time_s: float
    unix_time_s: float
    voltage_V: float
    current_A: float  # + = charge
    layer_voltages_V: np.ndarray = field(default_factory=lambda: np.empty(0))
    temperatures_degC: dict[str, float] = field(default_factory=dict)  # DUT sensors, by sensor name
    ambient_degC: float | None = None  # around the DUT: an ambient sensor, else the chamber's air
    pressure_MPa: float | None = None
    chamber_degC: float | None = None  # the chamber's own air-temperature reading

    @property
    def power_W(self) -> float:
        return self.voltage_V * self.current_A
