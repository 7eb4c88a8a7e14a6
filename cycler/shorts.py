"""Internal-short detection on a stacked cell, from the data, as a safety condition.

A soft internal short in one layer of a bipolar stack drains that layer through itself: while
the stack charges, the layer's voltage stops rising, falls, or jitters as a dendrite
fuses and reforms, long before the stack voltage shows anything. Three signs are watched:

1. A layer's voltage falls during a charge step. Charging at a steady current, a healthy
   layer's voltage only rises (its open-circuit voltage rises with its charge, its
   polarisation builds up). Compared only with earlier samples of the same step at the same
   current (within 2 %), so that a CV taper's smaller IR drop is not taken for a fall.
   Trips when a layer is `max_layer_drop_mV` below its highest voltage at that current, on
   CONFIRM_TICKS ticks in a row. Default 5 mV: on the simulated 23-layer stack the largest
   such fall over the library's charge steps is 0.25 mV; a 10 ohm short across one
   2 Ah layer drains 0.4 A, which turns a C/3 charge into a fall within seconds.
2. A layer's voltage is noisy during a charge step: its noise, estimated from its second
   differences (which cancel the steady rise) over the last NOISE_WINDOW ticks at a steady
   current (judged every NOISE_CHECK_EVERY ticks), exceeds `max_layer_noise_mV`. The estimate is the median absolute second difference
   scaled to a standard deviation (/ 0.6745 / sqrt 6 for Gaussian noise), so a single glitch does
   not count: more than half the window must be noisy. Default 1 mV: a DAQ970A on its 10 V range
   reads with about 0.02 mV of noise.
3. Coulombic efficiency falls: at the end of a cycle, its CE is more than `max_ce_drop_pct`
   percentage points below the median of up to five previous comparable cycles. Off unless
   set: it means something only when successive cycles are alike (a cycle-life loop), and a
   rate test's cycles are not.

The thresholds are safety limits (bench DUT or protocol; the tighter applies) and are listed
by `cycler plan`.
"""

from __future__ import annotations

import math
from collections import deque
from statistics import median

import numpy as np

from .errors import SafetyTrip
from .safety import SafetyEnvelope
from .sample import Sample

DEFAULT_MAX_LAYER_DROP_MV = 5.0
DEFAULT_MAX_LAYER_NOISE_MV = 1.0
SAME_CURRENT_FRACTION = 0.02
CONFIRM_TICKS = 3
NOISE_WINDOW = 30
NOISE_CHECK_EVERY = 5
SECOND_DIFFERENCE_MAD_PER_SIGMA = 0.6745 * math.sqrt(6)  # median |V[k] - 2 V[k-1] + V[k-2]| of white noise
CE_HISTORY = 5
CE_MIN_COMPARABLE = 2
CE_MIN_CHARGE_FRACTION = 0.1  # a cycle that charged less than this of the largest so far is not compared
CHARGING_STEP_KINDS = ("cc", "cccv", "cv", "cp")  # pulses and profiles change current by design


class ShortDetector:
    def __init__(self, envelope: SafetyEnvelope, layers: int, nominal_capacity_Ah: float | None):
        self.layers = layers
        self.max_drop_V = _threshold(envelope.max_layer_drop_mV, DEFAULT_MAX_LAYER_DROP_MV) if layers else None
        self.max_noise_V = _threshold(envelope.max_layer_noise_mV, DEFAULT_MAX_LAYER_NOISE_MV) if layers else None
        self.max_ce_drop = None if envelope.max_ce_drop_pct is None else envelope.max_ce_drop_pct / 100.0
        self.min_charge_A = 0.005 * nominal_capacity_Ah if nominal_capacity_Ah else 0.01  # C/200
        self._bin_step = math.log1p(SAME_CURRENT_FRACTION)
        self.ce_history: deque[tuple[float, float]] = deque(maxlen=CE_HISTORY)  # (CE, charge Ah)
        self.start_step()

    def thresholds(self) -> dict[str, float]:
        """The thresholds in force, for plans and run.json."""
        found = {"max_layer_drop_mV": self.max_drop_V, "max_layer_noise_mV": self.max_noise_V,
                 "max_ce_drop_pct": self.max_ce_drop}
        return {name: value * (100.0 if name.endswith("pct") else 1e3) for name, value in found.items()
                if value is not None}

    def start_step(self) -> None:
        self._highest: dict[int, np.ndarray] = {}  # current bin -> each layer's highest voltage there
        self._low_ticks: np.ndarray | None = None
        self._steady: deque[np.ndarray] = deque(maxlen=3)  # the last layer voltages at a steady current
        self._steady_bin: int | None = None
        self._second_diffs = np.zeros((NOISE_WINDOW, self.layers))  # a ring of the last |second differences|
        self._filled = 0  # second differences at this steady current so far

    def check(self, sample: Sample, step_kind: str) -> None:
        """During charge steps, each tick; raises SafetyTrip on a layer that looks shorted."""
        layers = sample.layer_voltages_V
        if (self.max_drop_V is None or step_kind not in CHARGING_STEP_KINDS or sample.current_A < self.min_charge_A
                or not layers.size or not np.isfinite(layers).all()):
            self._steady.clear()
            self._steady_bin = None
            self._low_ticks = None
            return
        current_bin = round(math.log(sample.current_A) / self._bin_step)
        self._check_drop(sample, current_bin)
        self._check_noise(sample, current_bin)

    def _check_drop(self, sample: Sample, current_bin: int) -> None:
        layers = sample.layer_voltages_V
        highest = None
        for neighbour in (current_bin - 1, current_bin, current_bin + 1):
            known = self._highest.get(neighbour)
            if known is not None:
                highest = known if highest is None else np.maximum(highest, known)
        if highest is not None:
            deficit = highest - layers
            if deficit.max() <= self.max_drop_V:  # the usual case: nothing to count
                self._low_ticks = None
            else:
                low = deficit > self.max_drop_V
                self._low_ticks = np.where(low, (self._low_ticks if self._low_ticks is not None else 0) + 1, 0)
                worst = int(np.argmax(self._low_ticks))
                if self._low_ticks[worst] >= CONFIRM_TICKS:
                    raise SafetyTrip("max_layer_drop_mV", deficit[worst] * 1e3, self.max_drop_V * 1e3,
                                     sample.test_time_s, f"layer {worst + 1:02d} (internal short suspected)")
        known = self._highest.get(current_bin)
        self._highest[current_bin] = layers.copy() if known is None else np.maximum(known, layers)

    def _check_noise(self, sample: Sample, current_bin: int) -> None:
        if current_bin != self._steady_bin:
            self._steady.clear()
            self._filled = 0
            self._steady_bin = current_bin
        self._steady.append(sample.layer_voltages_V)
        if len(self._steady) < 3:
            return
        a, b, c = self._steady
        self._second_diffs[self._filled % NOISE_WINDOW] = np.abs(c - 2 * b + a)
        self._filled += 1
        # the median costs more than the rest of a tick: judged every NOISE_CHECK_EVERY ticks
        if self._filled < NOISE_WINDOW or self._filled % NOISE_CHECK_EVERY:
            return
        noise = np.median(self._second_diffs, axis=0) / SECOND_DIFFERENCE_MAD_PER_SIGMA
        worst = int(np.argmax(noise))
        if noise[worst] > self.max_noise_V:
            raise SafetyTrip("max_layer_noise_mV", noise[worst] * 1e3, self.max_noise_V * 1e3, sample.test_time_s,
                             f"layer {worst + 1:02d} (internal short suspected)")

    def end_cycle(self, charge_Ah: float, discharge_Ah: float, test_time_s: float) -> None:
        """At the end of a cycle: compare its coulombic efficiency with the cycles before it."""
        if self.max_ce_drop is None or charge_Ah <= 0:
            return
        largest = max([charge for _, charge in self.ce_history] + [charge_Ah])
        if charge_Ah < CE_MIN_CHARGE_FRACTION * largest:
            return
        efficiency = discharge_Ah / charge_Ah
        comparable = [ce for ce, _ in self.ce_history]
        self.ce_history.append((efficiency, charge_Ah))
        if len(comparable) >= CE_MIN_COMPARABLE:
            usual = median(comparable)
            if usual - efficiency > self.max_ce_drop:
                raise SafetyTrip("max_ce_drop_pct", (usual - efficiency) * 100.0, self.max_ce_drop * 100.0,
                                 test_time_s, f"stack (coulombic efficiency {efficiency:.2%} after {usual:.2%}; "
                                              "internal short suspected)")


def _threshold(configured_mV: float | None, default_mV: float) -> float:
    return (default_mV if configured_mV is None else configured_mV) / 1e3
