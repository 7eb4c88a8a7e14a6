"""Faults a simulated bench develops during a test, on a schedule: the `simulation.faults` block of
a bench file, or a list a test builds.

    simulation:
      faults:
        - {at_s: 1200, instrument: daq, kind: no_reply, for_s: 30}     # deaf for 30 s
        - {at_s: 600, instrument: supply, kind: garbage, count: 1}     # one reply is garbage
        - {at_s: 900, kind: layer_short, layer: 7, resistance_ohm: 5}  # a soft short forms in layer 7
        - {at_s: 0, kind: pressure_drift, MPa_per_h: -0.5}             # the fixture slowly loosens

Times are test time on the simulation's clock: the virtual clock of a simulated run, the wall
clock since `cycler sim serve` started.

| kind              | what happens                                                          | where          |
|-------------------|-----------------------------------------------------------------------|----------------|
| no_reply          | the instrument hears nothing: messages are lost, every read times out | the link       |
| late              | replies come `delay_s` after their query (a host times out at 2 s)    | the link       |
| garbage           | replies are garbage of the same length                                | the link       |
| truncated         | replies are cut to their first half (a line cut short, half a frame)  | the link       |
| disconnect        | the connection drops: the message is lost, the host sees it closed    | the link       |
| error             | the instrument puts an error in its error queue                       | the instrument |
| protection_trip   | a supply's own OVP/OCP/OPP trips: output off, alarm latched           | the instrument |
| thermocouple_open | the thermocouple on a DAQ channel opens and reads as an open input    | the instrument |
| layer_short       | an internal short forms in a layer (soft: ohms; hard: milliohms)      | the stack      |
| pressure_drift    | the fixture's pressure drifts at `MPa_per_h`                          | the stack      |

A link fault stands between the driver and the simulator, in the in-process transport
(drivers/transport.py) and in `cycler sim serve` (serve.py), so the real driver sees exactly what
a broken instrument or cable gives it: a timeout, a cut line, a closed connection. no_reply lasts
`for_s` (for good without it). A reply fault (late, garbage, truncated) spoils the next `count`
replies from `at_s` (one if neither is given) or every reply for `for_s`; a command that has no
reply passes untouched. disconnect drops the connection once; the next message connects again.
The other kinds change the simulated world at `at_s` (SimWorld.at), so their effect starts
exactly then, however seldom the instruments are spoken to.
"""

from __future__ import annotations

import random
from functools import partial
from typing import Annotated, Callable, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from stackcycler.clock import Clock

from ..transport import Delivery
from .world import SimWorld

GARBAGE_CHARACTERS = "#$%&*!?~^|<>{}@"  # never a number, a separator or a line end: unmistakable garbage


class _Fault(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    at_s: float = Field(ge=0, description="test time at which it begins, on the simulation's clock")

    def problem(self, stacks: dict[str, int], instruments: dict[str, tuple[object, type]]) -> str | None:
        """What in this fault does not fit the simulated bench, as 'field: why'; None if it fits.
        `stacks`: stack name -> layers; `instruments`: name -> (its config, its simulator class)."""
        return None


class _OnInstrument(_Fault):
    instrument: str = Field(description="the simulated instrument, by its name in simulation.instruments")

    def problem(self, stacks, instruments):
        if self.instrument not in instruments:
            return f"instrument: no simulated instrument '{self.instrument}'; simulated: {', '.join(instruments)}"
        return self.instrument_problem(*instruments[self.instrument])

    def instrument_problem(self, config, simulator: type) -> str | None:
        return None

    def _needs(self, simulator: type, method: str, what: str) -> str | None:
        if callable(getattr(simulator, method, None)):
            return None
        return f"instrument: '{self.instrument}' ({simulator.__name__}) has no {what} to simulate a {self.kind} with"


class _OnStack(_Fault):
    stack: str = Field("main", description="the simulated stack: 'main' (simulation.stack) or a more_stacks name")

    def problem(self, stacks, instruments):
        if self.stack not in stacks:
            return f"stack: no simulated stack '{self.stack}'; stacks: {', '.join(stacks)}"
        return None


# --- link faults: between the driver and the simulator ---------------------------------------------------


class _LinkFault(_OnInstrument):
    def acting(self, now_s: float, applied: int) -> bool:
        """Whether it acts on a message at `now_s`, having acted `applied` times so far."""
        raise NotImplementedError


class NoReply(_LinkFault):
    kind: Literal["no_reply"] = "no_reply"
    for_s: float | None = Field(None, gt=0, description="how long it stays deaf; for good if not given")

    def acting(self, now_s, applied):
        return self.at_s <= now_s and (self.for_s is None or now_s < self.at_s + self.for_s)


class Disconnect(_LinkFault):
    kind: Literal["disconnect"] = "disconnect"

    def acting(self, now_s, applied):
        return self.at_s <= now_s and applied == 0


class _ReplyFault(_LinkFault):
    count: int | None = Field(None, ge=1, description="replies spoiled (1 if neither count nor for_s is given)")
    for_s: float | None = Field(None, gt=0, description="spoils every reply for this long")

    @model_validator(mode="after")
    def _count_or_duration(self):
        if self.count is not None and self.for_s is not None:
            raise ValueError("give count or for_s, not both")
        return self

    def acting(self, now_s, applied):
        if now_s < self.at_s:
            return False
        if self.for_s is not None:
            return now_s < self.at_s + self.for_s
        return applied < (self.count or 1)

    def spoil(self, reply: str | bytes, rng: random.Random) -> Delivery:
        raise NotImplementedError


class LateReply(_ReplyFault):
    kind: Literal["late"] = "late"
    delay_s: float = Field(3.0, gt=0, description="how long after its query the reply comes")

    def spoil(self, reply, rng):
        return Delivery(reply, delay_s=self.delay_s)


class Garbage(_ReplyFault):
    kind: Literal["garbage"] = "garbage"

    def spoil(self, reply, rng):
        if isinstance(reply, bytes):  # every byte changed: no frame survives it
            return Delivery(bytes(b ^ rng.randrange(1, 256) for b in reply))
        return Delivery("".join(rng.choice(GARBAGE_CHARACTERS) for _ in reply))


class Truncated(_ReplyFault):
    kind: Literal["truncated"] = "truncated"

    def spoil(self, reply, rng):
        return Delivery(reply[:len(reply) // 2])


# --- faults of an instrument itself ----------------------------------------------------------------------


class ErrorReport(_OnInstrument):
    kind: Literal["error"] = "error"
    code: int = Field(-300, description="SCPI error number; -300 is 'Device-specific error'")
    message: str = "Device-specific error"

    def instrument_problem(self, config, simulator):
        return self._needs(simulator, "push_error", "SCPI error queue")

    def form(self, instrument, world: SimWorld) -> None:
        instrument.push_error(self.code, self.message)


class ProtectionTrip(_OnInstrument):
    kind: Literal["protection_trip"] = "protection_trip"
    protection: Literal["OVP", "OCP", "OPP"] = "OVP"

    def instrument_problem(self, config, simulator):
        return self._needs(simulator, "trip_protection", "protection")

    def form(self, instrument, world: SimWorld) -> None:
        instrument.trip_protection(self.protection)


class ThermocoupleOpen(_OnInstrument):
    kind: Literal["thermocouple_open"] = "thermocouple_open"
    channel: int = Field(description="the DAQ channel the thermocouple is wired to")

    def instrument_problem(self, config, simulator):
        problem = self._needs(simulator, "open_thermocouple", "thermocouple inputs")
        if problem is not None:
            return problem
        wired = sorted(channel for wiring in config.wiring().values() for channel in wiring.thermocouples)
        if self.channel not in wired:
            return (f"channel: no thermocouple is wired to channel {self.channel} of '{self.instrument}'; "
                    f"thermocouples: {', '.join(map(str, wired)) or 'none'}")
        return None

    def form(self, instrument, world: SimWorld) -> None:
        instrument.open_thermocouple(self.channel)


# --- faults of the stack ---------------------------------------------------------------------------------


class LayerShort(_OnStack):
    kind: Literal["layer_short"] = "layer_short"
    layer: int = Field(ge=1, description="1-based")
    resistance_ohm: float = Field(gt=0, description="ohms for a soft short, milliohms for a hard one")

    def problem(self, stacks, instruments):
        problem = super().problem(stacks, instruments)
        if problem is None and self.layer > stacks[self.stack]:
            return f"layer: {self.layer}, but the simulated stack '{self.stack}' has {stacks[self.stack]} layers"
        return problem

    def form(self, instrument, world: SimWorld) -> None:
        world.stack.form_short(self.layer, self.resistance_ohm)


class PressureDrift(_OnStack):
    kind: Literal["pressure_drift"] = "pressure_drift"
    MPa_per_h: float = Field(description="negative: the fixture loosens")

    def form(self, instrument, world: SimWorld) -> None:
        world.stack.drift_pressure(self.MPa_per_h / 3600.0)


FAULT_CLASSES = (NoReply, LateReply, Garbage, Truncated, Disconnect, ErrorReport, ProtectionTrip, ThermocoupleOpen,
                 LayerShort, PressureDrift)
Fault = Annotated[Union[FAULT_CLASSES], Field(discriminator="kind")]
FAULT_KINDS = tuple(fault.model_fields["kind"].default for fault in FAULT_CLASSES)


def fault_problems(faults: list[_Fault], stacks: dict[str, int],
                   instruments: dict[str, tuple[object, type]]) -> list[str]:
    """Each fault that does not fit the simulated bench, as 'faults[i].field: why'."""
    return [f"faults[{index}].{problem}" for index, fault in enumerate(faults)
            if (problem := fault.problem(stacks, instruments)) is not None]


# --- the schedule at work -------------------------------------------------------------------------------


class FaultInjector:
    """A fault schedule at work on a built simulation. Link faults ride on their instrument's
    `link_faults` (LinkFaults); the others are planned on the world of their stack or instrument.
    `applied[i]`: how often fault i has acted so far (messages lost, replies spoiled, or 1 once it
    formed), part of the simulation's snapshot so that a resumed run does not live a fault twice."""

    def __init__(self, faults: list[_Fault], worlds: dict[str, SimWorld], instruments: dict[str, object],
                 instrument_stacks: dict[str, str], clock: Clock, seed: int = 1):
        self.faults = list(faults)
        self.clock = clock
        self.applied = [0] * len(self.faults)
        self.first_applied_s: list[float | None] = [None] * len(self.faults)
        self.rng = random.Random(f"faults:{seed}")
        on_link: dict[str, list[int]] = {}
        for index, fault in enumerate(self.faults):
            if isinstance(fault, _LinkFault):
                on_link.setdefault(fault.instrument, []).append(index)
            elif isinstance(fault, _OnInstrument):
                world = worlds[instrument_stacks[fault.instrument]]
                world.at(fault.at_s, partial(self._form, index, instruments[fault.instrument], world))
            else:
                world = worlds[fault.stack]
                world.at(fault.at_s, partial(self._form, index, None, world))
        for name, indices in on_link.items():
            instruments[name].link_faults = LinkFaults(self, indices)

    def note(self, index: int, at_s: float | None = None) -> None:
        """Fault `index` has acted (now, or at `at_s`)."""
        self.applied[index] += 1
        if self.first_applied_s[index] is None:
            self.first_applied_s[index] = self.clock.now() if at_s is None else at_s

    def _form(self, index: int, instrument, world: SimWorld) -> None:
        if self.applied[index]:
            return  # formed before a snapshot this simulation was restored from: its effect is in the state
        fault = self.faults[index]
        fault.form(instrument, world)
        self.note(index, fault.at_s)  # the world makes it at its time, however much later the sync

    def report(self) -> list[dict]:
        """Per fault: what it was, how often it acted and when first (None: it never did)."""
        return [{**fault.model_dump(), "applied": applied, "first_applied_s": first}
                for fault, applied, first in zip(self.faults, self.applied, self.first_applied_s)]

    def snapshot(self) -> dict:
        return {"applied": list(self.applied), "first_applied_s": list(self.first_applied_s)}

    def restore(self, state: dict) -> None:
        if len(state.get("applied", ())) == len(self.faults):  # the same schedule as at the snapshot
            self.applied = list(state["applied"])
            self.first_applied_s = list(state["first_applied_s"])


class LinkFaults:
    """The link faults of one simulated instrument: whatever carries its messages (the in-process
    transport, the TCP server) hands each one to `deliver`, which says what comes back."""

    def __init__(self, injector: FaultInjector, indices: list[int]):
        self.injector = injector
        self.indices = indices

    def deliver(self, message, answer: Callable) -> Delivery:
        injector = self.injector
        now = injector.clock.now()
        for index in self.indices:
            fault = injector.faults[index]
            if not fault.acting(now, injector.applied[index]):
                continue
            if isinstance(fault, NoReply):
                injector.note(index)
                return Delivery(None)
            if isinstance(fault, Disconnect):
                injector.note(index)
                return Delivery(None, link_dropped=True)
            reply = answer(message)
            if not reply:
                return Delivery(reply)  # a command: no reply to spoil
            injector.note(index)
            return fault.spoil(reply, injector.rng)
        return Delivery(answer(message))
