"""Charge and energy counting: trapezoidal, every tick, charge and discharge kept apart.

Between two samples current and power are taken as linear in time. When the current changes
sign inside the interval the trapezoid is split at the zero crossing, so a sample pair that
straddles charge and discharge puts each part on its own side. Power is V x I, so it crosses
zero with the current.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .sample import Sample


@dataclass
class Throughput:
    charge_Ah: float = 0.0
    discharge_Ah: float = 0.0
    charge_Wh: float = 0.0
    discharge_Wh: float = 0.0

    def add(self, ah: float, wh: float) -> None:
        """Add a signed charge (+ = into the DUT) and its energy."""
        if ah >= 0:
            self.charge_Ah += ah
            self.charge_Wh += wh
        else:
            self.discharge_Ah -= ah
            self.discharge_Wh -= wh


def trapezoid_parts(t0: float, i0: float, p0: float, t1: float, i1: float, p1: float) -> list[tuple[float, float]]:
    """Signed (Ah, Wh) pieces of the interval, one per sign of the current."""
    dt_h = (t1 - t0) / 3600.0
    if dt_h <= 0:
        return []
    if i0 * i1 >= 0:
        return [((i0 + i1) / 2 * dt_h, (p0 + p1) / 2 * dt_h)]
    f = i0 / (i0 - i1)  # fraction of the interval before the zero crossing
    return [(i0 / 2 * f * dt_h, p0 / 2 * f * dt_h), (i1 / 2 * (1 - f) * dt_h, p1 / 2 * (1 - f) * dt_h)]


def trapezoid_arrays(t: np.ndarray, i: np.ndarray, p: np.ndarray) -> dict[str, np.ndarray]:
    """`trapezoid_parts` for every interval between successive rows at once: per interval (one
    shorter than the inputs) the charge and discharge Ah and Wh, each as a magnitude."""
    dt_h = np.maximum(np.diff(t), 0.0) / 3600.0
    i0, i1, p0, p1 = i[:-1], i[1:], p[:-1], p[1:]
    straddles = i0 * i1 < 0
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.where(straddles, i0 / (i0 - i1), 1.0)  # fraction of the interval before the crossing
    # part before the crossing (the whole interval when there is none) and part after it
    ah_a = np.where(straddles, i0 / 2 * f, (i0 + i1) / 2) * dt_h
    wh_a = np.where(straddles, p0 / 2 * f, (p0 + p1) / 2) * dt_h
    ah_b = np.where(straddles, i1 / 2 * (1 - f), 0.0) * dt_h
    wh_b = np.where(straddles, p1 / 2 * (1 - f), 0.0) * dt_h
    return {
        "charge_Ah": np.where(ah_a >= 0, ah_a, 0.0) + np.where(ah_b > 0, ah_b, 0.0),
        "discharge_Ah": np.where(ah_a < 0, -ah_a, 0.0) + np.where(ah_b < 0, -ah_b, 0.0),
        "charge_Wh": np.where(ah_a >= 0, wh_a, 0.0) + np.where(ah_b > 0, wh_b, 0.0),
        "discharge_Wh": np.where(ah_a < 0, -wh_a, 0.0) + np.where(ah_b < 0, -wh_b, 0.0),
    }


class Integrator:
    """Test, cycle and step throughput, updated from each new sample."""

    def __init__(self) -> None:
        self.test = Throughput()
        self.cycle = Throughput()
        self.step = Throughput()
        self._previous: Sample | None = None

    def update(self, sample: Sample) -> None:
        previous = self._previous
        self._previous = sample
        if previous is None:
            return
        for ah, wh in trapezoid_parts(previous.test_time_s, previous.current_A, previous.power_W,
                                      sample.test_time_s, sample.current_A, sample.power_W):
            for scope in (self.test, self.cycle, self.step):
                scope.add(ah, wh)

    def start_step(self) -> None:
        self.step = Throughput()

    def start_cycle(self) -> None:
        self.cycle = Throughput()
