"""Simulated Keysight N6705C mainframe with an N6781A SMU in one slot, wired to the stack.

It speaks the N6700 SCPI of drivers/keysight_n6705c.py (whose module notes give the sources; the
module's ranges and the status bits are shared from there): every output command takes the
channel list `(@n)` last; the one module sits in the slot `output` of the simulation block.

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
the output trips at the moment last I/O + delay, however long it is until the next message and
whichever instrument next asks the world for its state (a DAQ read first): the trip is a change
the world makes at that test time (SimWorld.at), so the stack carries the current up to that
moment and none after it. One check is pending at a time: when it comes due and there was I/O
since, it is made again at last I/O + delay; a shorter delay set meanwhile supersedes it. The trip
latches PROT (2048) with the programmed output state unchanged (OUTP? still reads 1) and no
current; OUTP:PROT:CLE clears it and the output returns to its programmed state; *RST switches the
watchdog off (delay 60 s). Emulator choices, each [uncertain]: the commands take no channel list
(one is refused with -108, parameter not allowed); a delay between whole seconds is rounded to the
nearest; OUTP:PROT:WDOG:DEL? answers NR3. The watchdog's state and the time of the last I/O are
part of the snapshot: a simulation restored after a host crash trips at once if the checkpoint's
last I/O is longer ago than the delay.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..keysight_n6705c import (LIMIT_NEGATIVE, LIMIT_POSITIVE, MAX_OVER_VOLTAGE_V, MODULE, PROTECTION, RANGES, SLOTS,
                               WATCHDOG_DELAYS_S, VoltageRange)
from .scpi import ScpiError, scpi
from .world import SimWorld, TerminalScpiInstrument

OVER_VOLTAGE = 1  # STAT:QUES:COND? bits this simulator latches
OVER_CURRENT = 2
WATCHDOG_TRIP = PROTECTION  # PROT (N6700C Operating and Service Guide p. 158)
WATCHDOG_RESET_DELAY_S = 60.0  # as shipped and after *RST (see the driver's module notes)
# EMUL parameters (manual spelling); the N6781A is simulated as a one- or two-quadrant supply
EMULATIONS = ("PS1Q", "PS2Q", "PS4Q", "BATTery", "CHARger", "CCLoad", "CVLoad", "VMETer", "AMETer")
SIMULATED_EMULATIONS = ("PS1Q", "PS2Q")


class KeysightN6705cSimConfig(BaseModel):
    """The simulated mainframe (`simulation.instruments.<name>`): the slot of its N6781A, wired to the stack."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    kind: Literal["keysight-n6705c"] = "keysight-n6705c"
    stack: str = Field("main", description="the simulated stack the N6781A's output drives")
    output: int = Field(1, ge=SLOTS[0], le=SLOTS[-1], description="the mainframe channel (slot) of the N6781A")
    serial: str = "MY56006098"
    firmware: str = "E.02.09.3271"  # a real unit's identity (reference §2)
    voltage_noise_V: float = Field(1e-4, ge=0)
    current_noise_A: float = Field(1e-5, ge=0)


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


class SimKeysightN6705c(TerminalScpiInstrument):
    def __init__(self, world: SimWorld, name: str, config: KeysightN6705cSimConfig):
        super().__init__()
        self.world = world
        self.config = config
        self.IDENTITY = f"Keysight Technologies,N6705C,{config.serial},{config.firmware}"
        self._rng = world.noise_rng(name)
        self.last_io_s = world.clock.now()  # test time of the last SCPI message (the watchdog's I/O activity)
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
        self.watchdog_on = False
        self.watchdog_delay_s = WATCHDOG_RESET_DELAY_S
        self._reset_output_settings()

    def _reset_output_settings(self) -> None:
        """Output off, the settings a change of emulation or priority returns to."""
        self.output_on = False
        self.range_V = RANGES[-1].voltage_V
        self.voltage_V = 0.0
        self.current_level_A = 0.0
        self.voltage_limit_V = RANGES[-1].voltage_V
        self.positive_limit_A = RANGES[-1].current_A
        self.negative_limit_A = -RANGES[-1].current_A
        self.tracking = True

    _STATE = ("emulation", "priority", "ovp_V", "ocp_enabled", "latched", "output_on", "range_V", "voltage_V",
              "current_level_A", "voltage_limit_V", "positive_limit_A", "negative_limit_A", "tracking",
              "watchdog_on", "watchdog_delay_s", "last_io_s")

    # --- the I/O watchdog ---------------------------------------------------------------------

    def handle(self, message: str) -> str | None:
        self.world.sync()  # the physics up to this message, a watchdog trip that came due included
        self.last_io_s = self.world.clock.now()
        reply = super().handle(message)  # its own sync finds the world already there
        if self.watchdog_on:
            self._watch()
        return reply

    def restore(self, state: dict) -> None:
        super().restore(state)
        self._check_at = None
        self._check_generation += 1
        if self.watchdog_on:
            self._watch()  # a deadline already past trips at the world's next sync

    def _watch(self) -> None:
        """A check at last I/O + delay, unless one is pending at or before it."""
        deadline = self.last_io_s + self.watchdog_delay_s
        if self._check_at is not None and self._check_at <= deadline:
            return  # it comes due first and looks again (see _check)
        self._check_generation += 1
        self._check_at = deadline
        self.world.at(deadline, partial(self._check, self._check_generation, deadline))

    def _check(self, generation: int, due_at: float) -> None:
        """Made by the world at test time `due_at`: trip if nothing was heard for the delay."""
        if generation != self._check_generation:
            return  # superseded by an earlier deadline
        self._check_at = None
        if not self.watchdog_on:
            return
        if self.last_io_s + self.watchdog_delay_s <= due_at:
            self.latched |= WATCHDOG_TRIP  # output disabled, its programmed state unchanged
        else:
            self._watch()  # there was I/O since: look again at the new deadline

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

    def _measured(self) -> tuple[float, float]:
        c = self.config
        return (self.world.stack.terminal_voltage_V() + c.voltage_noise_V * self._rng.standard_normal(),
                self.source_A + c.current_noise_A * self._rng.standard_normal())

    # --- addressing ----------------------------------------------------------------------------

    def _parameters(self, args: list[str], count: int) -> list[str]:
        """The `count` parameters before the trailing channel list, which must name the module's slot."""
        if not args or not args[-1].startswith("(@"):
            raise ScpiError(-109, "Missing parameter; a channel list (@n) is required")
        if self.channel_list(args[-1]) != [self.config.output]:
            raise ScpiError(-222, "Data out of range; no module in that channel")
        if len(args) - 1 != count:
            raise ScpiError(-109 if len(args) - 1 < count else -108)
        return args[:-1]

    def _value(self, args: list[str], low: float, high: float, unit: str) -> float:
        (text,) = self._parameters(args, 1)
        return self.number(text, low, high, units=(unit,))

    # --- mainframe and module -------------------------------------------------------------------

    @scpi("SYSTem:CHANnel:MODel?", nargs=(0, 1))
    def _module(self, args):
        self._parameters(args, 0)
        return MODULE

    @scpi("[SOURce:]EMULation", nargs=(1, 2))
    def _emulation(self, args):
        (text,) = self._parameters(args, 1)
        chosen = self.choice(text, EMULATIONS)
        if chosen not in SIMULATED_EMULATIONS:
            raise ScpiError(-221, f"Settings conflict; emulation {chosen} is not simulated")
        if chosen != self.emulation:
            self.emulation = chosen
            self._reset_output_settings()

    @scpi("[SOURce:]EMULation?", nargs=(0, 1))
    def _emulation_q(self, args):
        self._parameters(args, 0)
        return self.emulation

    @scpi("[SOURce:]FUNCtion", nargs=(1, 2))
    def _priority(self, args):
        (text,) = self._parameters(args, 1)
        chosen = self.choice(text, ("VOLTage", "CURRent"))[:4]
        if chosen != self.priority:  # N6705C User's Guide p. 88: output off, settings to their reset values
            self.priority = chosen
            self._reset_output_settings()

    @scpi("[SOURce:]FUNCtion?", nargs=(0, 1))
    def _priority_q(self, args):
        self._parameters(args, 0)
        return self.priority

    # --- settings ---------------------------------------------------------------------------------

    @scpi("[SOURce:]VOLTage:RANGe", nargs=(1, 2))
    def _range(self, args):
        value = self._value(args, 0.0, RANGES[-1].voltage_V, "V")
        chosen = next(r for r in RANGES if r.voltage_V >= value)
        self.range_V = chosen.voltage_V
        self.voltage_V = min(self.voltage_V, chosen.voltage_V)
        self.voltage_limit_V = min(self.voltage_limit_V, chosen.voltage_V)
        self.positive_limit_A = min(self.positive_limit_A, chosen.current_A)
        self.negative_limit_A = max(self.negative_limit_A, -chosen.current_A)
        self.current_level_A = _clamp(self.current_level_A, -chosen.current_A, chosen.current_A)

    @scpi("[SOURce:]VOLTage:RANGe?", nargs=(0, 1))
    def _range_q(self, args):
        self._parameters(args, 0)
        return self.nr3(self.range_V)

    @scpi("[SOURce:]VOLTage[:LEVel][:IMMediate][:AMPLitude]", nargs=(1, 2))
    def _voltage(self, args):
        self.voltage_V = self._value(args, 0.0, self.range_V, "V")  # PS1Q and PS2Q: + voltage only

    @scpi("[SOURce:]VOLTage[:LEVel][:IMMediate][:AMPLitude]?", nargs=(0, 1))
    def _voltage_q(self, args):
        self._parameters(args, 0)
        return self.nr3(self.voltage_V)

    @scpi("[SOURce:]CURRent:LIMit[:POSitive][:IMMediate][:AMPLitude]", nargs=(1, 2))
    def _positive_limit(self, args):
        self.positive_limit_A = self._value(args, 0.0, self.voltage_range.current_A, "A")
        if self.tracking:
            self.negative_limit_A = -self.positive_limit_A

    @scpi("[SOURce:]CURRent:LIMit[:POSitive][:IMMediate][:AMPLitude]?", nargs=(0, 1))
    def _positive_limit_q(self, args):
        self._parameters(args, 0)
        return self.nr3(self.positive_limit_A)

    @scpi("[SOURce:]CURRent:LIMit:NEGative[:IMMediate][:AMPLitude]", nargs=(1, 2))
    def _negative_limit(self, args):
        self.negative_limit_A = self._value(args, -self.voltage_range.current_A, 0.0, "A")
        if self.tracking:
            self.positive_limit_A = -self.negative_limit_A

    @scpi("[SOURce:]CURRent:LIMit:NEGative[:IMMediate][:AMPLitude]?", nargs=(0, 1))
    def _negative_limit_q(self, args):
        self._parameters(args, 0)
        return self.nr3(self.negative_limit_A)

    @scpi("[SOURce:]CURRent:LIMit:COUPle", nargs=(1, 2))
    def _tracking(self, args):
        (text,) = self._parameters(args, 1)
        self.tracking = self.boolean(text)
        if self.tracking:
            self.negative_limit_A = -self.positive_limit_A

    @scpi("[SOURce:]CURRent:LIMit:COUPle?", nargs=(0, 1))
    def _tracking_q(self, args):
        self._parameters(args, 0)
        return "1" if self.tracking else "0"

    @scpi("[SOURce:]CURRent[:LEVel][:IMMediate][:AMPLitude]", nargs=(1, 2))
    def _current_level(self, args):
        low = 0.0 if self.emulation == "PS1Q" else -self.voltage_range.current_A
        self.current_level_A = self._value(args, low, self.voltage_range.current_A, "A")

    @scpi("[SOURce:]CURRent[:LEVel][:IMMediate][:AMPLitude]?", nargs=(0, 1))
    def _current_level_q(self, args):
        self._parameters(args, 0)
        return self.nr3(self.current_level_A)

    @scpi("[SOURce:]VOLTage:LIMit[:POSitive][:IMMediate][:AMPLitude]", nargs=(1, 2))
    def _voltage_limit(self, args):
        self.voltage_limit_V = self._value(args, 0.0, self.range_V, "V")

    @scpi("[SOURce:]VOLTage:LIMit[:POSitive][:IMMediate][:AMPLitude]?", nargs=(0, 1))
    def _voltage_limit_q(self, args):
        self._parameters(args, 0)
        return self.nr3(self.voltage_limit_V)

    @scpi("[SOURce:]VOLTage:PROTection:REMote[:POSitive][:LEVel]", nargs=(1, 2))
    def _ovp(self, args):
        self.ovp_V = self._value(args, 0.0, MAX_OVER_VOLTAGE_V, "V")

    @scpi("[SOURce:]VOLTage:PROTection:REMote[:POSitive][:LEVel]?", nargs=(0, 1))
    def _ovp_q(self, args):
        self._parameters(args, 0)
        return self.nr3(self.ovp_V)

    @scpi("[SOURce:]CURRent:PROTection:STATe", nargs=(1, 2))
    def _ocp(self, args):
        (text,) = self._parameters(args, 1)
        self.ocp_enabled = self.boolean(text)

    @scpi("[SOURce:]CURRent:PROTection:STATe?", nargs=(0, 1))
    def _ocp_q(self, args):
        self._parameters(args, 0)
        return "1" if self.ocp_enabled else "0"

    @scpi("OUTPut[:STATe]", nargs=(1, 2))
    def _output(self, args):
        (text,) = self._parameters(args, 1)
        on = self.boolean(text)
        if on and self.latched:
            raise ScpiError(-221, "Settings conflict; protection tripped, clear it first")
        self.output_on = on

    @scpi("OUTPut[:STATe]?", nargs=(0, 1))
    def _output_q(self, args):
        self._parameters(args, 0)
        return "1" if self.output_on else "0"

    @scpi("OUTPut:PROTection:CLEar", nargs=(0, 1))
    def _clear_protection(self, args):
        self._parameters(args, 0)
        self.latched = 0  # the output returns to its programmed state

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
        self.watchdog_delay_s = float(round(self.number(text, low, high, units=("S",))))  # a shorter one: see _watch

    @scpi("OUTPut:PROTection:WDOG:DELay?", nargs=(0, 1))
    def _watchdog_delay_q(self, args):
        if args:
            return self.nr3(WATCHDOG_DELAYS_S[self.choice(args[0], ("MINimum", "MAXimum")) == "MAXIMUM"])
        return self.nr3(self.watchdog_delay_s)

    # --- measurements and status ------------------------------------------------------------------

    @scpi("STATus:QUEStionable:CONDition?", nargs=(0, 1))
    def _questionable(self, args):
        self._parameters(args, 0)
        return str(self.latched | (self.limit_bits if self.output_on else 0))

    @scpi("MEASure[:SCALar]:VOLTage[:DC]?", nargs=(0, 1))
    def _meas_voltage(self, args):
        self._parameters(args, 0)
        return self.nr3(self._measured()[0])

    @scpi("MEASure[:SCALar]:CURRent[:DC]?", nargs=(0, 1))
    def _meas_current(self, args):
        self._parameters(args, 0)
        return self.nr3(self._measured()[1])
