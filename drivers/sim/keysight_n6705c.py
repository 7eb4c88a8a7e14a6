"""Simulated Keysight N6705C mainframe with N6781A SMUs, each wired to a stack.

It speaks the N6700 SCPI of drivers/keysight_n6705c.py (whose module notes give the sources; the
module's ranges and the status bits are shared from there): every output command takes the
channel list `(@n)` last. A module sits in the slot `output` of the simulation block, driving
`stack`; `more_modules` puts further ones in other slots, each driving its own stack. Settings,
output, protection and physics are each module's; the identity, the error queue and the I/O
watchdog are the mainframe's.

Physics (N678xA multi-quadrant operation, N6705 User's Guide p. 159), the stack being a Thevenin
source `emf` behind `R`:
* voltage priority: the current is (V_set - emf) / R, held between minus the negative limit and
  the positive limit: CV inside them, CL+ or CL- (status LIM+ / LIM-) at one of them. In PS2Q
  the module sinks; in PS1Q it only sources (a unipolar supply);
* current priority: the set current, until the terminal voltage would pass the voltage limit
  (it is held there) or 0 V (two quadrants: + voltage only);
* the voltage range caps the voltage and both limits: ±3 A up to 6 V, ±1 A up to 20 V;
* remote over-voltage protection: a terminal voltage above its level switches the output off
  and latches OV until OUTP:PROT:CLE; with OCP on, reaching a current limit switches the output
  off and latches OC;
* with the output off nothing flows, and MEAS:VOLT? reads the DUT ([uncertain], see the driver).

Emulator choices where the sources are silent, each [uncertain]:
* a command without a channel list is refused with -109, one naming another slot with -222
  "no module in that channel";
* *RST and power-on: PS2Q, voltage priority, 20 V range, 0 V, ±1 A tracked limits, OVP at its
  22 V maximum, OCP off, output off;
* a setting beyond the present range is refused with -222 (the range does not follow it);
  selecting a lower range clamps the settings into it;
* CURR:LIM:NEG takes -range to 0 A; with tracking on (CURR:LIM:COUP 1, the reset state) the
  negative limit is minus the positive, whichever of the two is set;
* changing the emulation mode switches the output off and resets the settings, as the User's
  Guide (p. 88) says changing the priority does; modes other than PS1Q and PS2Q are refused with
  -221 (not simulated; PS4Q exists on the N6784A only);
* OUTP ON with a latched protection is refused with -221; readings are NR3.

The I/O watchdog (commands, range and behaviour from the driver's module notes), on the simulated
world's clock: every SCPI message that reaches the mainframe is I/O activity. With the watchdog on,
every module's output trips at the moment last I/O + delay, however long it is until the next
message and whichever instrument next asks the world for its state (a DAQ read first): the trip is
a change the world makes at that test time (SimWorld.at), so the stack carries the current up to
that moment and none after it (each module's check is made in its own stack's world). One check
is pending at a time per module: when it comes due and there was I/O since, it is made again at
last I/O + delay; a shorter delay set meanwhile supersedes it. The trip latches PROT (2048) with
the programmed output state unchanged (OUTP? still reads 1) and no current; OUTP:PROT:CLE clears
it and the output returns to its programmed state; *RST switches the watchdog off (delay 60 s).
Emulator choices, each [uncertain]: the commands take no channel list (one is refused with -108,
parameter not allowed); a delay between whole seconds is rounded to the nearest;
OUTP:PROT:WDOG:DEL? answers NR3. The watchdog's state and the time of the last I/O are part of the
snapshot (beside the first module's settings, the further modules' under `more_modules`): a
simulation restored after a host crash trips at once if the checkpoint's last I/O is longer ago
than the delay.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..keysight_n6705c import (LIMIT_NEGATIVE, LIMIT_POSITIVE, MAX_OVER_VOLTAGE_V, MODULE, PROTECTION, RANGES, SLOTS,
                               WATCHDOG_DELAYS_S, VoltageRange)
from .scpi import ScpiError, ScpiInstrument, scpi
from .world import KeepsSettings, SimWorld

OVER_VOLTAGE = 1  # STAT:QUES:COND? bits this simulator latches
OVER_CURRENT = 2
WATCHDOG_TRIP = PROTECTION  # PROT (N6700C Operating and Service Guide p. 158)
WATCHDOG_RESET_DELAY_S = 60.0  # as shipped and after *RST (see the driver's module notes)
# EMUL parameters (manual spelling); the N6781A is simulated as a one- or two-quadrant supply
EMULATIONS = ("PS1Q", "PS2Q", "PS4Q", "BATTery", "CHARger", "CCLoad", "CVLoad", "VMETer", "AMETer")
SIMULATED_EMULATIONS = ("PS1Q", "PS2Q")


class KeysightN6705cSimConfig(BaseModel):
    """The simulated mainframe (`simulation.instruments.<name>`): the slot of its N6781A wired to
    `stack`, and any further N6781A modules with the stacks they drive."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    kind: Literal["keysight-n6705c"] = "keysight-n6705c"
    stack: str = Field("main", description="the simulated stack the N6781A's output drives")
    output: int = Field(1, ge=SLOTS[0], le=SLOTS[-1], description="the mainframe channel (slot) of the N6781A")
    more_modules: dict[int, str] = Field(
        default_factory=dict, description="further N6781A modules: mainframe channel (slot) -> the simulated stack "
                                          "its output drives")
    serial: str = "MY56006098"
    firmware: str = "E.02.09.3271"  # a real unit's identity (reference §2)
    voltage_noise_V: float = Field(1e-4, ge=0)
    current_noise_A: float = Field(1e-5, ge=0)

    @model_validator(mode="after")
    def _modules_in_free_slots(self) -> "KeysightN6705cSimConfig":
        for slot in self.more_modules:
            if slot not in SLOTS:
                raise ValueError(f"more_modules: the mainframe has channels {SLOTS[0]} to {SLOTS[-1]}, not {slot}")
            if slot == self.output:
                raise ValueError(f"more_modules: channel {slot} already holds the module of `output`")
        return self

    def modules(self) -> dict[int, str]:
        """Mainframe channel (slot) -> the simulated stack its N6781A drives."""
        return {self.output: self.stack, **self.more_modules}


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


class N6781aModule(KeepsSettings):
    """One N6781A in a mainframe slot, wired to a stack: its settings, output, protection and
    physics (the module notes), and its own pending check of the mainframe's watchdog."""

    _STATE = ("emulation", "priority", "ovp_V", "ocp_enabled", "latched", "output_on", "range_V", "voltage_V",
              "current_level_A", "voltage_limit_V", "positive_limit_A", "negative_limit_A", "tracking")

    def __init__(self, mainframe: "SimKeysightN6705c", world: SimWorld, rng):
        self.mainframe = mainframe
        self.world = world
        self._rng = rng
        self._check_at: float | None = None  # test time of the pending watchdog check
        self._check_generation = 0  # a check made at a superseded time does nothing
        self.reset()
        self.source_A = 0.0  # what the output drives into the stack at the present operating point
        self.limit_bits = 0  # LIM+ / LIM- of the present operating point
        world.connect(self)

    def reset(self) -> None:
        self.emulation = "PS2Q"
        self.priority = "VOLT"
        self.ovp_V = MAX_OVER_VOLTAGE_V
        self.ocp_enabled = False
        self.latched = 0  # protection bits that hold until OUTP:PROT:CLE
        self.reset_output_settings()

    def reset_output_settings(self) -> None:
        """Output off, the settings a change of emulation or priority returns to."""
        self.output_on = False
        self.range_V = RANGES[-1].voltage_V
        self.voltage_V = 0.0
        self.current_level_A = 0.0
        self.voltage_limit_V = RANGES[-1].voltage_V
        self.positive_limit_A = RANGES[-1].current_A
        self.negative_limit_A = -RANGES[-1].current_A
        self.tracking = True

    def restore(self, state: dict) -> None:
        super().restore(state)
        self._check_at = None
        self._check_generation += 1

    # --- the mainframe's watchdog, in this module's world ---------------------------------------

    def watch(self) -> None:
        """A check at the mainframe's last I/O + delay, unless one is pending at or before it."""
        deadline = self.mainframe.last_io_s + self.mainframe.watchdog_delay_s
        if self._check_at is not None and self._check_at <= deadline:
            return  # it comes due first and looks again (see _check)
        self._check_generation += 1
        self._check_at = deadline
        self.world.at(deadline, partial(self._check, self._check_generation, deadline))

    def _check(self, generation: int, due_at: float) -> None:
        """Made by the world at test time `due_at`: trip if the mainframe heard nothing for the delay."""
        if generation != self._check_generation:
            return  # superseded by an earlier deadline
        self._check_at = None
        mainframe = self.mainframe
        if not mainframe.watchdog_on:
            return
        if mainframe.last_io_s + mainframe.watchdog_delay_s <= due_at:
            self.latched |= WATCHDOG_TRIP  # output disabled, its programmed state unchanged
        else:
            self.watch()  # there was I/O since: look again at the new deadline

    @property
    def voltage_range(self) -> VoltageRange:
        return next(r for r in RANGES if r.voltage_V == self.range_V)

    @property
    def sink_limit_A(self) -> float:
        """The sink current allowed, as a magnitude: none in PS1Q; with tracking, the positive limit."""
        if self.emulation == "PS1Q":
            return 0.0
        return self.positive_limit_A if self.tracking else -self.negative_limit_A

    # --- physics: what the output does to the DUT -----------------------------------------------

    def current_into_dut(self, emf_V: float, resistance_ohm: float) -> float:
        self.source_A, self.limit_bits = self._operating_point(emf_V, max(resistance_ohm, 1e-9))
        if self.output_on and not self.latched:
            terminal = emf_V + self.source_A * resistance_ohm
            trip = (OVER_VOLTAGE if terminal > self.ovp_V else 0) | (OVER_CURRENT if self.ocp_enabled
                                                                     and self.limit_bits else 0)
            if trip:
                self.latched |= trip
                self.output_on = False
                self.source_A, self.limit_bits = 0.0, 0
        return self.source_A

    def _operating_point(self, emf_V: float, resistance_ohm: float) -> tuple[float, int]:
        if not self.output_on or self.latched:  # a latched protection disables the output
            return 0.0, 0
        if self.priority == "VOLT":
            wanted = (self.voltage_V - emf_V) / resistance_ohm
            if wanted > self.positive_limit_A:
                return self.positive_limit_A, LIMIT_POSITIVE
            if wanted < -self.sink_limit_A:
                return -self.sink_limit_A, LIMIT_NEGATIVE
            return wanted, 0
        current = self.current_level_A  # current priority: held unless the voltage would leave 0 ... the limit
        if emf_V + current * resistance_ohm > self.voltage_limit_V:
            return (self.voltage_limit_V - emf_V) / resistance_ohm, LIMIT_POSITIVE
        if emf_V + current * resistance_ohm < 0.0:
            return -emf_V / resistance_ohm, LIMIT_NEGATIVE
        return current, 0

    def measured(self) -> tuple[float, float]:
        c = self.mainframe.config
        return (self.world.stack.terminal_voltage_V() + c.voltage_noise_V * self._rng.standard_normal(),
                self.source_A + c.current_noise_A * self._rng.standard_normal())


class SimKeysightN6705c(KeepsSettings, ScpiInstrument):
    """The mainframe: identity, error queue and I/O watchdog; `modules`: slot -> its N6781A."""

    _STATE = ("watchdog_on", "watchdog_delay_s", "last_io_s")

    def __init__(self, world: SimWorld, name: str, config: KeysightN6705cSimConfig,
                 more_worlds: dict[str, SimWorld] | None = None):
        """`world`: that of `config.stack`, driven from `config.output`; `more_worlds`: stack name ->
        world, for `config.more_modules`."""
        super().__init__()
        self.world = world
        self.config = config
        self.IDENTITY = f"Keysight Technologies,N6705C,{config.serial},{config.firmware}"
        self.last_io_s = world.clock.now()  # test time of the last SCPI message (the watchdog's I/O activity)
        # The first module's noise stream is named as the instrument's, as it was with one module.
        self.modules = {config.output: N6781aModule(self, world, world.noise_rng(name))}
        for slot, stack in config.more_modules.items():
            self.modules[slot] = N6781aModule(self, (more_worlds or {})[stack], world.noise_rng(f"{name}:{slot}"))
        self._worlds = list({id(module.world): module.world for module in self.modules.values()}.values())
        self.reset()

    def reset(self) -> None:
        self.watchdog_on = False
        self.watchdog_delay_s = WATCHDOG_RESET_DELAY_S
        for module in self.modules.values():
            module.reset()

    def handle(self, message: str) -> str | None:
        for world in self._worlds:
            world.sync()  # the physics up to this message, a watchdog trip that came due included
        self.last_io_s = self.world.clock.now()
        reply = super().handle(message)
        if self.watchdog_on:
            for module in self.modules.values():
                module.watch()
        return reply

    def command_executed(self) -> None:
        for world in self._worlds:
            world.settings_changed()

    def snapshot(self) -> dict:
        """The mainframe's state with the first module's settings beside it (as with one module)
        and the further modules' under `more_modules`."""
        state = super().snapshot() | self.modules[self.config.output].snapshot()
        if self.config.more_modules:
            state["more_modules"] = {str(slot): self.modules[slot].snapshot() for slot in self.config.more_modules}
        return state

    def restore(self, state: dict) -> None:
        super().restore(state)
        self.modules[self.config.output].restore(state)
        for slot, module_state in state.get("more_modules", {}).items():
            self.modules[int(slot)].restore(module_state)
        if self.watchdog_on:
            for module in self.modules.values():
                module.watch()  # a deadline already past trips at the world's next sync

    # --- addressing ----------------------------------------------------------------------------

    def _parameters(self, args: list[str], count: int) -> tuple[N6781aModule, list[str]]:
        """The module the trailing channel list names, and the `count` parameters before it."""
        if not args or not args[-1].startswith("(@"):
            raise ScpiError(-109, "Missing parameter; a channel list (@n) is required")
        channels = self.channel_list(args[-1])
        if len(channels) != 1 or channels[0] not in self.modules:
            raise ScpiError(-222, "Data out of range; no module in that channel")
        if len(args) - 1 != count:
            raise ScpiError(-109 if len(args) - 1 < count else -108)
        return self.modules[channels[0]], args[:-1]

    def _module(self, args: list[str]) -> N6781aModule:
        """The module a query with no parameter but its channel list asks about."""
        return self._parameters(args, 0)[0]

    # --- mainframe and module -------------------------------------------------------------------

    @scpi("SYSTem:CHANnel:MODel?", nargs=(0, 1))
    def _model(self, args):
        self._module(args)
        return MODULE

    @scpi("[SOURce:]EMULation", nargs=(1, 2))
    def _emulation(self, args):
        module, (text,) = self._parameters(args, 1)
        chosen = self.choice(text, EMULATIONS)
        if chosen not in SIMULATED_EMULATIONS:
            raise ScpiError(-221, f"Settings conflict; emulation {chosen} is not simulated")
        if chosen != module.emulation:
            module.emulation = chosen
            module.reset_output_settings()

    @scpi("[SOURce:]EMULation?", nargs=(0, 1))
    def _emulation_q(self, args):
        return self._module(args).emulation

    @scpi("[SOURce:]FUNCtion", nargs=(1, 2))
    def _priority(self, args):
        module, (text,) = self._parameters(args, 1)
        chosen = self.choice(text, ("VOLTage", "CURRent"))[:4]
        if chosen != module.priority:  # N6705C User's Guide p. 88: output off, settings to their reset values
            module.priority = chosen
            module.reset_output_settings()

    @scpi("[SOURce:]FUNCtion?", nargs=(0, 1))
    def _priority_q(self, args):
        return self._module(args).priority

    # --- settings ---------------------------------------------------------------------------------

    @scpi("[SOURce:]VOLTage:RANGe", nargs=(1, 2))
    def _range(self, args):
        module, (text,) = self._parameters(args, 1)
        value = self.number(text, 0.0, RANGES[-1].voltage_V, units=("V",))
        chosen = next(r for r in RANGES if r.voltage_V >= value)
        module.range_V = chosen.voltage_V
        module.voltage_V = min(module.voltage_V, chosen.voltage_V)
        module.voltage_limit_V = min(module.voltage_limit_V, chosen.voltage_V)
        module.positive_limit_A = min(module.positive_limit_A, chosen.current_A)
        module.negative_limit_A = max(module.negative_limit_A, -chosen.current_A)
        module.current_level_A = _clamp(module.current_level_A, -chosen.current_A, chosen.current_A)

    @scpi("[SOURce:]VOLTage:RANGe?", nargs=(0, 1))
    def _range_q(self, args):
        return self.nr3(self._module(args).range_V)

    @scpi("[SOURce:]VOLTage[:LEVel][:IMMediate][:AMPLitude]", nargs=(1, 2))
    def _voltage(self, args):
        module, (text,) = self._parameters(args, 1)
        module.voltage_V = self.number(text, 0.0, module.range_V, units=("V",))  # PS1Q and PS2Q: + voltage only

    @scpi("[SOURce:]VOLTage[:LEVel][:IMMediate][:AMPLitude]?", nargs=(0, 1))
    def _voltage_q(self, args):
        return self.nr3(self._module(args).voltage_V)

    @scpi("[SOURce:]CURRent:LIMit[:POSitive][:IMMediate][:AMPLitude]", nargs=(1, 2))
    def _positive_limit(self, args):
        module, (text,) = self._parameters(args, 1)
        module.positive_limit_A = self.number(text, 0.0, module.voltage_range.current_A, units=("A",))
        if module.tracking:
            module.negative_limit_A = -module.positive_limit_A

    @scpi("[SOURce:]CURRent:LIMit[:POSitive][:IMMediate][:AMPLitude]?", nargs=(0, 1))
    def _positive_limit_q(self, args):
        return self.nr3(self._module(args).positive_limit_A)

    @scpi("[SOURce:]CURRent:LIMit:NEGative[:IMMediate][:AMPLitude]", nargs=(1, 2))
    def _negative_limit(self, args):
        module, (text,) = self._parameters(args, 1)
        module.negative_limit_A = self.number(text, -module.voltage_range.current_A, 0.0, units=("A",))
        if module.tracking:
            module.positive_limit_A = -module.negative_limit_A

    @scpi("[SOURce:]CURRent:LIMit:NEGative[:IMMediate][:AMPLitude]?", nargs=(0, 1))
    def _negative_limit_q(self, args):
        return self.nr3(self._module(args).negative_limit_A)

    @scpi("[SOURce:]CURRent:LIMit:COUPle", nargs=(1, 2))
    def _tracking(self, args):
        module, (text,) = self._parameters(args, 1)
        module.tracking = self.boolean(text)
        if module.tracking:
            module.negative_limit_A = -module.positive_limit_A

    @scpi("[SOURce:]CURRent:LIMit:COUPle?", nargs=(0, 1))
    def _tracking_q(self, args):
        return "1" if self._module(args).tracking else "0"

    @scpi("[SOURce:]CURRent[:LEVel][:IMMediate][:AMPLitude]", nargs=(1, 2))
    def _current_level(self, args):
        module, (text,) = self._parameters(args, 1)
        low = 0.0 if module.emulation == "PS1Q" else -module.voltage_range.current_A
        module.current_level_A = self.number(text, low, module.voltage_range.current_A, units=("A",))

    @scpi("[SOURce:]CURRent[:LEVel][:IMMediate][:AMPLitude]?", nargs=(0, 1))
    def _current_level_q(self, args):
        return self.nr3(self._module(args).current_level_A)

    @scpi("[SOURce:]VOLTage:LIMit[:POSitive][:IMMediate][:AMPLitude]", nargs=(1, 2))
    def _voltage_limit(self, args):
        module, (text,) = self._parameters(args, 1)
        module.voltage_limit_V = self.number(text, 0.0, module.range_V, units=("V",))

    @scpi("[SOURce:]VOLTage:LIMit[:POSitive][:IMMediate][:AMPLitude]?", nargs=(0, 1))
    def _voltage_limit_q(self, args):
        return self.nr3(self._module(args).voltage_limit_V)

    @scpi("[SOURce:]VOLTage:PROTection:REMote[:POSitive][:LEVel]", nargs=(1, 2))
    def _ovp(self, args):
        module, (text,) = self._parameters(args, 1)
        module.ovp_V = self.number(text, 0.0, MAX_OVER_VOLTAGE_V, units=("V",))

    @scpi("[SOURce:]VOLTage:PROTection:REMote[:POSitive][:LEVel]?", nargs=(0, 1))
    def _ovp_q(self, args):
        return self.nr3(self._module(args).ovp_V)

    @scpi("[SOURce:]CURRent:PROTection:STATe", nargs=(1, 2))
    def _ocp(self, args):
        module, (text,) = self._parameters(args, 1)
        module.ocp_enabled = self.boolean(text)

    @scpi("[SOURce:]CURRent:PROTection:STATe?", nargs=(0, 1))
    def _ocp_q(self, args):
        return "1" if self._module(args).ocp_enabled else "0"

    @scpi("OUTPut[:STATe]", nargs=(1, 2))
    def _output(self, args):
        module, (text,) = self._parameters(args, 1)
        on = self.boolean(text)
        if on and module.latched:
            raise ScpiError(-221, "Settings conflict; protection tripped, clear it first")
        module.output_on = on

    @scpi("OUTPut[:STATe]?", nargs=(0, 1))
    def _output_q(self, args):
        return "1" if self._module(args).output_on else "0"

    @scpi("OUTPut:PROTection:CLEar", nargs=(0, 1))
    def _clear_protection(self, args):
        self._module(args).latched = 0  # the output returns to its programmed state

    @scpi("OUTPut:PROTection:WDOG[:STATe]")
    def _watchdog(self, args):
        (text,) = args
        self.watchdog_on = self.boolean(text)

    @scpi("OUTPut:PROTection:WDOG[:STATe]?")
    def _watchdog_q(self, args):
        return "1" if self.watchdog_on else "0"

    @scpi("OUTPut:PROTection:WDOG:DELay")
    def _watchdog_delay(self, args):
        (text,) = args
        low, high = WATCHDOG_DELAYS_S
        # a shorter delay than one pending: see N6781aModule.watch
        self.watchdog_delay_s = float(round(self.number(text, low, high, units=("S",))))

    @scpi("OUTPut:PROTection:WDOG:DELay?", nargs=(0, 1))
    def _watchdog_delay_q(self, args):
        if args:
            return self.nr3(WATCHDOG_DELAYS_S[self.choice(args[0], ("MINimum", "MAXimum")) == "MAXIMUM"])
        return self.nr3(self.watchdog_delay_s)

    # --- measurements and status ------------------------------------------------------------------

    @scpi("STATus:QUEStionable:CONDition?", nargs=(0, 1))
    def _questionable(self, args):
        module = self._module(args)
        return str(module.latched | (module.limit_bits if module.output_on else 0))

    @scpi("MEASure[:SCALar]:VOLTage[:DC]?", nargs=(0, 1))
    def _meas_voltage(self, args):
        return self.nr3(self._module(args).measured()[0])

    @scpi("MEASure[:SCALar]:CURRent[:DC]?", nargs=(0, 1))
    def _meas_current(self, args):
        return self.nr3(self._module(args).measured()[1])
