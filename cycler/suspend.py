"""Suspending a test while its environment is out of band, and continuing when it is back.

A safety limit ends the test; a suspend band only pauses it. A stack whose fixture pressure
has drifted out of its test band, or whose chamber is off its set temperature, is not in
danger, but data taken then is not data of the test: the step is held (output off, step clock
stopped, safety and recording going on), and continues when the condition has been clear for
`clear_for_s`, or waits for the operator (`resume: operator`). A suspension longer than
`max_suspended_s` ends the run in the safe state (it can be resumed with `cycler resume`).

    suspend:
      pressure_MPa: {min: 4.5, max: 7.5}
      ambient_degC: {min: 20, max: 30}
      resume: automatic          # or: operator
      clear_for_s: 60
      max_suspended_s: 14400
      instrument_link_lost: true # a meter that stops answering holds the test too

A lost meter (no reply, connection dropped) is set up again and read every tick until it
answers. Its readings are missing from the data meanwhile, and the safety limits on them are
not judged while the output is off; the supply's voltage and current still are. A supply that
stops answering always ends the run: its output cannot be confirmed off otherwise.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .sample import Sample


class Band(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _one_side_at_least(self) -> "Band":
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.max <= self.min:
            raise ValueError(f"max ({self.max}) must be above min ({self.min})")
        return self

    def outside(self, value: float | None) -> str | None:
        """Why `value` is out of the band, or None. A reading that cannot be taken is out."""
        if value is None or math.isnan(value):
            return "cannot be read"
        if self.max is not None and value > self.max:
            return f"{value:.4g} above {self.max:g}"
        if self.min is not None and value < self.min:
            return f"{value:.4g} below {self.min:g}"
        return None


class SuspendConditions(BaseModel):
    """The `suspend:` block of a protocol."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    pressure_MPa: Band | None = Field(None, description="stack pressure band of the test")
    ambient_degC: Band | None = Field(None, description="chamber or room temperature band")
    resume: Literal["automatic", "operator"] = Field(
        "automatic", description="when the condition clears: continue, or wait for `cycler continue`")
    clear_for_s: float = Field(60.0, ge=0, description="how long the condition must stay clear")
    max_suspended_s: float | None = Field(None, gt=0, description="a longer suspension ends the run")
    instrument_link_lost: bool = Field(
        False, description="hold while a meter does not answer, instead of ending the run as a fault")

    def watched(self) -> dict[str, Band]:
        return {name: band for name in ("pressure_MPa", "ambient_degC") if (band := getattr(self, name)) is not None}


def _reading(sample: Sample, quantity: str) -> float | None:
    return sample.pressure_MPa if quantity == "pressure_MPa" else sample.ambient_degC


class SuspendMonitor:
    """Each tick: which conditions start a suspension, and which have been clear long enough."""

    def __init__(self, conditions: SuspendConditions | None):
        self.conditions = conditions
        self.bands = conditions.watched() if conditions else {}
        self.suspended: set[str] = set()
        self._clear_since: dict[str, float] = {}

    def update(self, sample: Sample, lost_meters: set[str] = frozenset()) -> tuple[dict[str, str], list[str]]:
        """({condition: why} newly out of band, [conditions clear for long enough])."""
        started: dict[str, str] = {}
        cleared: list[str] = []
        problems = {quantity: (None if (why := band.outside(_reading(sample, quantity))) is None
                               else f"{quantity} {why} (suspend band)") for quantity, band in self.bands.items()}
        if self.conditions is not None and self.conditions.instrument_link_lost:
            problems["instrument_link"] = (f"no answer from {', '.join(sorted(lost_meters))} (instrument link lost)"
                                           if lost_meters else None)
        for quantity, problem in problems.items():
            if problem is not None:
                self._clear_since.pop(quantity, None)
                if quantity not in self.suspended:
                    self.suspended.add(quantity)
                    started[quantity] = problem
            elif quantity in self.suspended:
                since = self._clear_since.setdefault(quantity, sample.test_time_s)
                if sample.test_time_s - since >= self.conditions.clear_for_s:
                    self.suspended.discard(quantity)
                    del self._clear_since[quantity]
                    cleared.append(quantity)
        return started, cleared
