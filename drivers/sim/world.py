"""The simulated world of a bench: the stack model, the clock, and what drives its terminals.

Physics is integrated lazily: every simulated instrument calls `sync()` before it reads or
changes anything, so the stack has carried the old setpoints up to this moment and the reply
is computed from the state at this moment. Between ticks nothing runs.

An instrument that drives the terminals calls `settings_changed()` when it executes a command;
the next `sync()` then settles the current to the new settings. When neither the time nor any
setting has changed since the last sync, the current is already settled and sync does nothing.

A change planned for a moment (`at`: a fault that forms, see faults.py) is made when the
integration reaches that moment, so its effect starts exactly then, however far apart the syncs.
"""

from __future__ import annotations

import heapq
import itertools
import math
import zlib
from typing import Callable, Protocol

import numpy as np

from stackcycler.clock import Clock

from ..sensors import PressureFixture
from .scpi import ScpiInstrument
from .stack import StackModel

# Longest interval integrated with one constant current; well below the RC time constant.
MAX_STEP_S = 1.0
# A gap longer than this many steps (over a day) is integrated in longer steps: a bench file with a tick
# of years must not keep the simulation busy for hours.
MAX_STEPS_PER_INTERVAL = 100_000


class TerminalSource(Protocol):
    """A simulated instrument wired to the stack terminals."""

    def current_into_dut(self, emf_V: float, resistance_ohm: float) -> float:
        """Current (A, + = charge) it drives into a Thevenin source `emf_V` behind `resistance_ohm`."""


class KeepsSettings:
    """A simulated instrument whose settings (`_STATE`, the attribute names) outlive a host crash,
    as a real one's do: they go into the simulation's snapshot and come back from it."""

    _STATE: tuple[str, ...] = ()
    world: "SimWorld"

    def snapshot(self) -> dict:
        return {name: getattr(self, name) for name in self._STATE}

    def restore(self, state: dict) -> None:
        for name in self._STATE:
            setattr(self, name, state[name])
        self.world.settings_changed()  # the current settles to the restored settings at the next sync


class TerminalScpiInstrument(KeepsSettings, ScpiInstrument):
    """A simulated SCPI instrument on the stack's terminals (a supply, an SMU, a load): every
    message first carries the stack up to now under the old settings, and every command that ran
    may have changed a setting, so the current settles anew at the next sync."""

    def handle(self, message: str) -> str | None:
        self.world.sync()
        return super().handle(message)

    def command_executed(self) -> None:
        self.world.settings_changed()


class SimWorld:
    def __init__(self, stack: StackModel, clock: Clock, fixture: PressureFixture | None = None, seed: int = 1):
        self.stack = stack
        self.clock = clock
        self.fixture = fixture
        self.seed = seed
        self._t = clock.now()
        self._sources: list[TerminalSource] = []
        self._settled = False  # the stack carries the current the sources drive at its present state
        self._planned: list[tuple[float, int, Callable[[], None]]] = []  # (test time, order, change): a heap
        self._order = itertools.count()

    def set_time(self, t: float) -> None:
        """The stack's state is that of time `t` (after restoring a snapshot)."""
        self._t = t
        self._settled = False

    def at(self, t: float, change: Callable[[], None]) -> None:
        """Make `change` (to the stack or an instrument) at test time `t`: the physics runs up to `t`
        with the old state and on from `t` with the new. A `t` already past is made at the next sync."""
        heapq.heappush(self._planned, (t, next(self._order), change))

    def connect(self, source: TerminalSource) -> None:
        self._sources.append(source)
        self._settled = False

    def settings_changed(self) -> None:
        """A source's settings may have changed: the next sync settles the current again."""
        self._settled = False

    def noise_rng(self, instrument_name: str) -> np.random.Generator:
        """A measurement-noise generator per instrument, reproducible from the world seed."""
        return np.random.default_rng([self.seed, zlib.crc32(instrument_name.encode())])

    def load_cell_output_V(self) -> float:
        if self.fixture is None:
            return 0.0
        return self.fixture.output_V(self.stack.pressure_MPa())

    def _present_current(self) -> float:
        emf, resistance = self.stack.thevenin()
        return sum(source.current_into_dut(emf, resistance) for source in self._sources)

    def sync(self) -> None:
        """Integrate the stack up to the clock's now, then settle the current to the present setpoints."""
        now = self.clock.now()
        while self._planned and self._planned[0][0] <= now:
            t, _, change = heapq.heappop(self._planned)
            self._integrate_to(t)
            change()
            self._settled = False
        if not self._integrate_to(now) and self._settled:
            return  # same time, same settings, same state: the settled current still holds
        # Instruments regulate in milliseconds, far below a tick: the current follows a
        # setpoint change at once.
        self.stack.advance(self._present_current(), 0.0)
        self._settled = True

    def _integrate_to(self, t: float) -> bool:
        """Carry the present current from the stack's time up to `t`; False if `t` is not later."""
        dt = t - self._t
        if dt <= 0:
            return False
        steps = min(max(1, math.ceil(dt / MAX_STEP_S)), MAX_STEPS_PER_INTERVAL)
        h = dt / steps
        for _ in range(steps):
            self.stack.advance(self._present_current(), h)
        self._t = t
        return True
