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
    shorter than the inputs) the charge and discharge Ah and Wh, each as a magnitude. Written
    in place where it can be: ten million rows must not take ten temporary copies."""
    half_dt_h = np.diff(t)
    np.maximum(half_dt_h, 0.0, out=half_dt_h)
    half_dt_h *= 0.5 / 3600.0
    i0, i1, p0, p1 = i[:-1], i[1:], p[:-1], p[1:]
    ah = np.add(i0, i1)
    ah *= half_dt_h
    wh = np.add(p0, p1)
    wh *= half_dt_h
    charging = ah > 0
    parts = {"charge_Ah": np.where(charging, ah, 0.0), "charge_Wh": np.where(charging, wh, 0.0)}
    ah -= parts["charge_Ah"]  # what is left is the discharge, negative
    wh -= parts["charge_Wh"]
    np.negative(ah, out=ah)
    np.negative(wh, out=wh)
    parts["discharge_Ah"], parts["discharge_Wh"] = ah, wh
    # the few intervals in which the current changes sign are split at the zero crossing
    k = np.flatnonzero(i0 * i1 < 0)
    f = i0[k] / (i0[k] - i1[k])  # fraction of the interval before the crossing
    before_ah, before_wh = i0[k] * f * half_dt_h[k], p0[k] * f * half_dt_h[k]
    after_ah, after_wh = i1[k] * (1 - f) * half_dt_h[k], p1[k] * (1 - f) * half_dt_h[k]
    first_charges = i0[k] > 0
    parts["charge_Ah"][k] = np.where(first_charges, before_ah, after_ah)
    parts["discharge_Ah"][k] = -np.where(first_charges, after_ah, before_ah)
    parts["charge_Wh"][k] = np.where(first_charges, before_wh, after_wh)
    parts["discharge_Wh"][k] = -np.where(first_charges, after_wh, before_wh)
    return parts


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
