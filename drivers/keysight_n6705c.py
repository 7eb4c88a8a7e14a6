"""Keysight N6705C DC Power Analyzer with an N6781A two-quadrant SMU module: one mainframe
channel as a bidirectional supply (SCPI). See shared/reference/instruments.md §2.

Why the N6781A fits the role: in voltage priority "the output voltage remains regulated at its
programmed setting as long as the load current remains within the positive or negative current
limit"; at either limit it regulates that current instead (CL+ / CL- status) (N6705 User's Guide
p. 159, "N678xA Multi-Quadrant Operation"; N6700 User's Guide appendix E p. 122). With the two
limits set apart (tracking off) that is the role's law, both clamps in hardware: CC charge and
discharge, CV and CC-CV are native, and a cell above the set voltage is discharged, not ignored.

Sources: "UG" = the N6705 User's Guide (pp. 64, 159) and the N6705C User's Guide (p. 88); "PR" =
the N6700 Programmer's Reference page for VOLTage:PROTection:REMote (as reproduced with the
N6702C manual, p. 304); "drivers" = google/py-lab-hal keysight_n6705c.py, Ben3094/pyVirtualLab
KeysightN6705C/Outputs.py and an N6700B driver (CURR:LIM, CURR:LIM:NEG, FUNC, MEAS), [secondary]
where only they give a spelling.
* `*IDN?` -> `Keysight Technologies,N6705C,MY56006098,E.02.09.3271` (reference §2); the module in
  a slot: `SYST:CHAN:MOD? (@n)` -> `N6781A` (pyVirtualLab);
* every output command takes the channel list `(@n)` last (reference §2);
* emulation `EMUL PS2Q,(@n)`: a two-quadrant supply, +V with current both ways (UG p. 64;
  drivers); priority `FUNC VOLT,(@n)` (py-lab-hal). Switching the priority turns the output off
  and returns the settings to their reset values (N6705C UG p. 88): both are set at connect, with
  the output off, before any setting;
* voltage `VOLT v,(@n)`; positive (source) current limit `CURR:LIM a,(@n)`; negative (sink) limit
  `CURR:LIM:NEG -a,(@n)`, a negative number (drivers; reference §2). The negative limit tracks the
  positive by default (UG p. 64): `CURR:LIM:COUP 0,(@n)` sets them apart (pyVirtualLab);
* envelope, from the voltage-priority locus (UG p. 159): ±3 A in the 6 V range, ±1 A in the 20 V
  range; `VOLT:RANG v,(@n)` selects the range (py-lab-hal);
* remote over-voltage protection `VOLT:PROT:REM v,(@n)`, 0 to 22 V: above it the output is
  disabled and the OV bit set (PR); a latched trip is cleared with `OUTP:PROT:CLE (@n)`
  (reference §2; pyVirtualLab);
* `STAT:QUES:COND? (@n)`: OV 1, OC 2, PF 4, CP+ 8, OT 16, CP- 32, OV- 64, LIM+ 128, LIM- 256,
  INH 512, UNR 1024, PROT 2048, OSC 4096 (pyVirtualLab; reference §2); LIM+ and LIM- are the
  UG's CL+ and CL-;
* `MEAS:VOLT? (@n)`, `MEAS:CURR? (@n)` in NR3; the current is positive out of the + terminal,
  into the DUT, i.e. + = charge, and negative while the module sinks;
* `SYST:ERR?` -> `+0,"No error"` ([uncertain] for this model: the Keysight form).

Over-current. OCP (`CURR:PROT:STAT`) switches the output off when it goes into current limit
(reference §2 [uncertain]), which is where CC charge and discharge regulate: it is switched off
at connect. The two current limits are the hardware clamp; the over-current threshold is kept as
a ceiling regulate() refuses to exceed (as for the E36312A and the Keithley SMUs). The
over-voltage protection is the instrument's own: armed at set_protection, it trips.

Range. set_protection selects the lowest range that holds the over-voltage threshold, which lies
above every voltage the run commands: a cell gets the 6 V range and its 3 A, a stack above 6 V the
20 V range and 1 A. It is chosen once, with the output off (before it: the 20 V range);
regulate() refuses a voltage or a limit outside it.

[uncertain] Rests: the output is switched off and MEAS:VOLT? is taken as the DUT's voltage. If a
real module's output relays open and it then reads about 0 V, the first rest trips the
min_voltage safety limit (the run ends in its safe state, nothing is harmed); the remedy would be
a standby as in keithley_smu.py (output on at a negligible current limit).

Watchdog (roles.HostWatchdog: a host that dies must not leave the output on). Sources: "OSG" =
the N6700C Operating and Service Guide p. 158, "Watchdog Timer Protection"; "APS" = the
N6900/N7900 Operating and Service Guide pp. 251-252 and 287 and the RP7900 one p. 226, the same
command set in Keysight's later supplies; "blog" = Keysight's power-supply blog, "Let's see the
watchdog timer in action" (2015) and "You can get a watchdog with your power supply?" (2010),
both naming the N6700 family; "IVI" = NI's N6900/N7900 IVI driver (agn6k7kni.c), [secondary].
* `OUTP:PROT:WDOG ON|OFF` and `OUTP:PROT:WDOG:DEL <s>` (OSG; blog; long forms
  `OUTPut:PROTection:WDOG[:STATe] 0|OFF|1|ON` and `OUTPut:PROTection:WDOG:DELay <value>|MIN|MAX`,
  queries `OUTP:PROT:WDOG?` -> 0 or 1 and `OUTP:PROT:WDOG:DEL? [MIN|MAX]`, APS; IVI);
* it takes NO channel list: it is the mainframe's, and when it trips "all outputs go into
  protection mode" (OSG). Every example is without one (OSG, APS, blog). So arming it for the
  DUT's slot arms it for every slot of the mainframe, and any SCPI traffic on any remote
  interface (USB, LAN, GPIB; not the front panel or the web server) keeps it from tripping (OSG);
* the delay: 1 to 3600 s in 1 s steps (OSG; blog; APS); 60 s as shipped (OSG), the *RST value on
  the APS (APS p. 252); *RST switches it off (APS) [uncertain for the N6700 family: the OSG
  only says its state and delay are volatile];
* when it trips, "the outputs will be disabled, but the programmed output state is not changed"
  and the PROT bit (2048) of the questionable status register is set (OSG; APS p. 252 "latched
  off"); the N6705C guide (p. 350) describes PROT only as a protection coupled from another
  channel, the APS guide (p. 287) as the watchdog's. So after a trip OUTP? still reads 1
  [uncertain: read from "programmed state not changed"];
* it is cleared as any protection: `OUTP:PROT:CLE (@n)` (OSG), which "restores the output to the
  state it was in before the fault" (APS p. 251; the 66xx guides say the same of OUTP:PROT:CLE):
  the output is therefore switched off (OUTP OFF) before a trip is cleared, never after.
* [uncertain] that the N6705C DC Power Analyzer has it at all: the sources name the N6700 modular
  power system (OSG) and "the N6700 series" (blog); the N6705C's own guide was not found saying
  so. A mainframe that answers the watchdog commands with -113 (undefined header) is taken as one
  without a watchdog: arm_watchdog() then returns None, and runs go on without one (logged).

Several channels on one mainframe (a module per slot, each a channel's supply): the bench lists
an instrument per slot, on one resource; they share one connection and one `Mainframe`. What
belongs to the mainframe is done once: the first connect clears the error queue and switches the
watchdog off; later connects recognise a dead host's trip on their own slot from what the first
found. The watchdog stays armed while any slot's channel still wants it, at the longest delay
any of them asked for, and is switched off when the last of them disarms. A trip takes every slot
into protection, those of no channel on this bench too: they are left so, outputs off, and a later
run on such a slot finds PROT with the watchdog off and is refused, naming OUTP:PROT:CLE.

Connect switches the watchdog off (a previous host's must not trip before this run arms it).
A latched PROT with no other fault, found while the watchdog is on, is taken as the watchdog's
trip (a host that died): connect reports it (`watchdog_trip_found`, beside `output_found_on`) and
clears it once OUTP? reads 0; arming does the same, so that a trip while the outputs were off
(the host waiting for an operator before a resume) does not stop the run. [uncertain] A
protection coupled from another channel (also PROT) that happens while the watchdog is on would
be cleared the same way; with the watchdog off, PROT is refused at connect as any other fault.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from stackcycler.errors import InstrumentError, InstrumentTimeout, InvalidInput

from .roles import BenchSetting, BidirectionalSupply, SupplyRatings
from .scpi import ScpiDriver, Setting, format_channel_list, parse_number, parse_on_off

log = logging.getLogger(__name__)

MAINFRAMES = ("N6705C", "N6705B")  # the N6705B answers `Agilent Technologies,N6705B,...` (reference §2)
MODULE = "N6781A"
SLOTS = (1, 2, 3, 4)


@dataclass(frozen=True)
class VoltageRange:
    voltage_V: float
    current_A: float  # the current limit available, sourcing or sinking


# UG p. 159: the voltage-priority locus of the N678xA, "+20 V / +6 V", "+1 A / +3 A".
RANGES: tuple[VoltageRange, ...] = (VoltageRange(6.0, 3.0), VoltageRange(20.0, 1.0))
MAX_OVER_VOLTAGE_V = 22.0  # PR: VOLT:PROT:REM 0 to 22 V
N6781A_RATINGS = SupplyRatings(voltage_V=RANGES[-1].voltage_V, current_A=RANGES[0].current_A,
                               power_W=max(r.voltage_V * r.current_A for r in RANGES),
                               max_over_voltage_V=MAX_OVER_VOLTAGE_V, max_over_current_A=RANGES[0].current_A)

# STAT:QUES:COND? bits that mean the output cannot be trusted (the others are normal operation)
QUESTIONABLE_FAULTS = {
    1: "over-voltage protection tripped",
    2: "over-current protection tripped",
    4: "power failure",
    16: "over-temperature",
    64: "negative over-voltage protection tripped",
    512: "output inhibited (external inhibit input)",
    2048: "output disabled by a protection fault on a coupled channel or by the I/O watchdog (PROT)",
    4096: "oscillation detected",
}
LIMIT_POSITIVE = 128  # in its source (positive) current limit: CL+
LIMIT_NEGATIVE = 256  # in its sink (negative) current limit: CL-
PROTECTION = 2048  # PROT: a protection coupled from another channel, or the watchdog (module notes)
FAULT_BITS = sum(QUESTIONABLE_FAULTS)

WATCHDOG_DELAYS_S = (1, 3600)  # OUTP:PROT:WDOG:DEL, in whole seconds (OSG p. 158; APS p. 252)
UNDEFINED_HEADER = -113  # the SCPI error of a command the mainframe does not know

Regulation = Literal["CV", "CL+", "CL-"]


@dataclass
class Mainframe:
    """What the drivers of a mainframe's slots share (module notes: several channels on one mainframe)."""

    connected: bool = False  # the mainframe-wide part of connect is done
    watchdog_found_on: bool | None = None  # the watchdog's state before the first connect switched it off
    has_watchdog: bool | None = None  # False if the mainframe does not know it (answers -113)
    armed_s: dict[int, int] = field(default_factory=dict)  # slot -> the watchdog delay (s) its channel armed


def _zero_one(on: bool) -> str:
    return "1" if on else "0"


def _negative(amps: float) -> str:
    """A sink limit's magnitude as the negative number CURR:LIM:NEG takes."""
    return str(-amps) if amps else "0"


def _model(field: str):
    return lambda driver: (0.0, getattr(N6781A_RATINGS, field))


class KeysightN6705c(ScpiDriver, BidirectionalSupply):
    FRIENDLY_NAME = "Keysight N6705C"
    BENCH_SETTINGS: ClassVar[dict[str, BenchSetting]] = {
        "output": BenchSetting("the mainframe channel (slot) of the N6781A wired to the DUT", SLOTS, required=True),
    }

    emulation = Setting("EMUL {},{channels}", "EMUL? {channels}", "emulation mode", parse=str)
    priority = Setting("FUNC {},{channels}", "FUNC? {channels}", "voltage or current priority", parse=str)
    limit_tracking = Setting("CURR:LIM:COUP {},{channels}", "CURR:LIM:COUP? {channels}",
                             "the negative current limit tracks the positive", parse=parse_on_off, to_text=_zero_one)
    over_current_protection = Setting("CURR:PROT:STAT {},{channels}", "CURR:PROT:STAT? {channels}",
                                      "switch off when the output goes into current limit", parse=parse_on_off,
                                      to_text=_zero_one)
    voltage_range_V = Setting("VOLT:RANG {},{channels}", "VOLT:RANG? {channels}", "voltage range",
                              limits=_model("voltage_V"))
    voltage_V = Setting("VOLT {},{channels}", "VOLT? {channels}", "voltage set value (voltage priority)",
                        limits=_model("voltage_V"))
    source_limit_A = Setting("CURR:LIM {},{channels}", "CURR:LIM? {channels}", "positive (source) current limit",
                             limits=_model("current_A"))
    sink_limit_A = Setting("CURR:LIM:NEG {},{channels}", "CURR:LIM:NEG? {channels}",
                           "negative (sink) current limit, as a magnitude", parse=lambda reply: -parse_number(reply),
                           to_text=_negative, limits=_model("current_A"))
    over_voltage_V = Setting("VOLT:PROT:REM {},{channels}", "VOLT:PROT:REM? {channels}",
                             "remote over-voltage protection level", limits=lambda driver: (0.0, MAX_OVER_VOLTAGE_V))
    output = Setting("OUTP {},{channels}", "OUTP? {channels}", "output on/off", parse=parse_on_off,
                     to_text=lambda on: "ON" if on else "OFF")
    # the mainframe's, for every slot: no channel list (OSG p. 158; module notes)
    watchdog = Setting("OUTP:PROT:WDOG {}", "OUTP:PROT:WDOG?", "I/O watchdog on/off", parse=parse_on_off,
                       to_text=lambda on: "ON" if on else "OFF")
    watchdog_delay_s = Setting("OUTP:PROT:WDOG:DEL {}", "OUTP:PROT:WDOG:DEL?", "I/O watchdog delay, whole seconds",
                               limits=lambda driver: WATCHDOG_DELAYS_S)

    LIMITS = ("source_limit_A", "sink_limit_A")

    MAINFRAME: ClassVar[type] = Mainframe  # shared by the drivers of one mainframe's slots (session.open_bench)

    def __init__(self, transport, output: int, mainframe: Mainframe | None = None):
        super().__init__(transport)
        self.mainframe = mainframe or Mainframe()
        if output not in SLOTS:
            raise InvalidInput(f"{self.FRIENDLY_NAME} at {transport.resource}: channel {output!r} is not one of "
                               f"{', '.join(map(str, SLOTS))} (the mainframe's slots)")
        self.channel = output
        self._connected = False
        self._range = RANGES[-1]
        self._regulated = False  # regulate() since connect or the safe state: the output may go on
        self._sent: dict[str, float] = {}  # last values sent, so unchanged ones are not resent
        self._over_voltage_level_V: float | None = None
        self._over_current_ceiling_A: float | None = None
        self._watchdog_armed = False  # armed by this driver and not disarmed since

    @property
    def command_fields(self) -> dict[str, str]:
        return {"channels": format_channel_list([self.channel])}

    @property
    def ratings(self) -> SupplyRatings:
        if not self._connected:
            raise InstrumentError(f"{self.where()}: not connected")
        return N6781A_RATINGS

    @property
    def voltage_range(self) -> VoltageRange:
        return self._range

    def where(self) -> str:
        return f"{self.FRIENDLY_NAME} channel {self.channel} at {self.resource}"

    def _refuse(self, why: str) -> None:
        raise InvalidInput(f"{self.where()}: {why}; nothing was sent")

    # --- connection ------------------------------------------------------------------------

    def connect(self) -> str:
        identity = self.identify()
        fields = [field.strip() for field in identity.split(",")]
        if len(fields) < 2 or fields[1].upper() not in MAINFRAMES:
            raise InstrumentError(f"{self.resource} is not a {' or '.join(MAINFRAMES)}: *IDN? answered {identity!r}")
        module = self.query(f"SYST:CHAN:MOD? {self.command_fields['channels']}").strip('"')
        if module.upper() != MODULE:
            raise InstrumentError(f"{self.where()}: the slot holds {module!r}, not an {MODULE}; the bench file's "
                                  "`output` names the mainframe channel of the N6781A")
        mainframe = self.mainframe
        if not mainframe.connected:
            self.write("*CLS")  # errors left by an earlier session are not this run's
        self.output_found_on = self.output  # after a host crash it may still be on: worth knowing
        self.output = False
        self.watchdog_trip_found = False
        condition = self.questionable()
        if self._watchdog_tripped(condition, at_connect=True) and self._clear_watchdog_trip():
            condition = self.questionable()
        self._raise_on_faults(condition)
        if not mainframe.connected:
            # A watchdog a previous host left armed must not trip before this run arms its own.
            mainframe.has_watchdog = self._send_watchdog_command("OUTP:PROT:WDOG OFF")
            mainframe.connected = True
        self._watchdog_armed = False
        with self.batch():
            self.emulation = "PS2Q"  # two quadrants: +V, current both ways
            self.priority = "VOLT"  # resets the settings, so before any of them
            self.limit_tracking = False
            self.over_current_protection = False  # it would trip at the current limit: see the module notes
            self.voltage_range_V = RANGES[-1].voltage_V
        self._range = RANGES[-1]
        self._sent, self._regulated = {}, False
        self._connected = True
        return identity

    # --- protection ------------------------------------------------------------------------

    def set_protection(self, over_voltage_V: float, over_current_A: float) -> None:
        self.refuse_protection_out_of_range(over_voltage_V, over_current_A)
        chosen = next((r for r in RANGES if r.voltage_V >= over_voltage_V), RANGES[-1])
        with self.batch():
            self.voltage_range_V = chosen.voltage_V
            self.over_voltage_V = over_voltage_V
        self._range = chosen
        # A range change may move the settings: the next regulate() sends them all, before the output goes on.
        self._sent.clear()
        self._regulated = False
        self._over_voltage_level_V = over_voltage_V
        self._over_current_ceiling_A = over_current_A

    # --- the watchdog (module notes) ----------------------------------------------------------

    def arm_watchdog(self, silence_s: float) -> float | None:
        """The mainframe's I/O watchdog, at the smallest delay it has (whole seconds, 1 to 3600 s)
        that is at least `silence_s`; the delay armed, or None on a mainframe without one."""
        if not (isinstance(silence_s, (int, float)) and math.isfinite(silence_s) and silence_s > 0):
            self._refuse(f"a watchdog silence of {silence_s!r} s is not a positive number of seconds")
        low, high = WATCHDOG_DELAYS_S
        delay = max(low, math.ceil(silence_s - 1e-9))  # 1 s steps; a float's last bit is no reason for a longer one
        if delay > high:
            self._refuse(f"a watchdog delay of {silence_s:g} s is outside the mainframe's {low} to {high} s "
                         "(OUTP:PROT:WDOG:DEL, whole seconds)")
        if not self.mainframe.has_watchdog:
            return None
        # A trip while the outputs were off since connect (a host waiting, silent, for an operator)
        # would stop the run at its first check: it is reported and cleared as at connect.
        if self._watchdog_tripped(self.questionable()):
            self._clear_watchdog_trip()
        armed = self.mainframe.armed_s
        armed[self.channel] = delay
        longest = max(armed.values())  # the mainframe has one delay: long enough for every slot's channel
        self.set_many({"watchdog_delay_s": longest, "watchdog": True})
        self._watchdog_armed = True
        return float(longest)

    def disarm_watchdog(self) -> None:
        if not self._watchdog_armed:
            return  # connect switched it off, and this driver has not armed it since
        armed = self.mainframe.armed_s
        if armed.keys() - {self.channel}:  # another slot's channel still runs: it stays on for that one
            del armed[self.channel]
            self._watchdog_armed = False
            return
        self.watchdog = False
        armed.pop(self.channel, None)
        self._watchdog_armed = False

    def _send_watchdog_command(self, command: str) -> bool:
        """`command` sent and the error queue drained; False if the mainframe does not know the
        watchdog (every error it reports is -113, undefined header), InstrumentError on another error."""
        self.write(command)
        errors = self.drain_errors()
        if errors and all(self.error_code(reply) == UNDEFINED_HEADER for reply in errors):
            log.warning("%s does not know %r (%s): runs on it have no instrument-side watchdog", self.where(),
                        command, errors[0], extra={"resource": self.resource})
            return False
        if errors:
            raise InstrumentError(f"{self.where()} reported {'; '.join(errors)} (last command sent: {command!r})")
        return True

    def _watchdog_tripped(self, condition: int, at_connect: bool = False) -> bool:
        """PROT and no other fault, with the watchdog on: the watchdog tripped (module notes). At
        the connect of a further slot, "on" is as the first slot's connect found it before it
        switched it off (a trip takes every slot into PROT)."""
        if condition & FAULT_BITS != PROTECTION:
            return False
        mainframe = self.mainframe
        if at_connect and mainframe.connected and mainframe.watchdog_found_on is not None:
            return mainframe.watchdog_found_on
        try:
            on = self.watchdog
        except InstrumentTimeout:  # a mainframe without a watchdog does not answer the query
            return False
        if not mainframe.connected:
            mainframe.watchdog_found_on = on
        return on

    def _clear_watchdog_trip(self) -> bool:
        """Clear a watchdog trip, only with the output programmed off: OUTP:PROT:CLE restores the
        output to its programmed state (module notes). True if cleared."""
        if self.output:
            return False
        self.write_checked(f"OUTP:PROT:CLE {self.command_fields['channels']}")
        self.watchdog_trip_found = True
        log.warning("%s: its output had been switched off by the I/O watchdog (a host silent longer than the "
                    "delay); cleared with the output off", self.where(), extra={"resource": self.resource})
        return True

    # --- regulation ------------------------------------------------------------------------

    def regulate(self, voltage_V: float, source_limit_A: float, sink_limit_A: float,
                 source_power_W: float | None = None, sink_power_W: float | None = None) -> None:
        if source_power_W is not None or sink_power_W is not None:
            self._refuse("the N6781A driver has no power limit (has_power_limits is False)")
        wanted = {"voltage_V": voltage_V, "source_limit_A": source_limit_A, "sink_limit_A": sink_limit_A}
        cls = type(self)
        for name, value in wanted.items():
            getattr(cls, name).check(self, value)
        present = self._range
        if voltage_V > present.voltage_V:
            self._refuse(f"{voltage_V:g} V is beyond the {present.voltage_V:g} V range (chosen by set_protection "
                         "from the over-voltage threshold)")
        for name in self.LIMITS:
            if wanted[name] > present.current_A:
                self._refuse(f"{name} = {wanted[name]:g} A is beyond the {present.voltage_V:g} V range's "
                             f"{present.current_A:g} A")
            if self._over_current_ceiling_A is not None and wanted[name] > self._over_current_ceiling_A:
                self._refuse(f"{name} = {wanted[name]:g} A is above the armed over-current threshold "
                             f"({self._over_current_ceiling_A:g} A)")
        if self._over_voltage_level_V is not None and voltage_V > self._over_voltage_level_V:
            self._refuse(f"{voltage_V:g} V is above its armed over-voltage protection level "
                         f"({self._over_voltage_level_V:g} V)")
        changed = {name: value for name, value in wanted.items() if self._sent.get(name) != value}
        if changed:
            self.set_many(self._in_safe_order(changed))
            self._sent.update(changed)
        self._regulated = True

    def _in_safe_order(self, changed: dict[str, float]) -> dict[str, float]:
        """Falling limits, then the voltage, then rising limits: between two commands no more
        current flows either way than the old or the new setting allows. A limit whose value in
        force is unknown (never sent) goes first, as a falling one."""
        falling = [name for name in self.LIMITS if name in changed and changed[name] < self._sent.get(name, math.inf)]
        rising = [name for name in self.LIMITS if name in changed and name not in falling]
        order = falling + (["voltage_V"] if "voltage_V" in changed else []) + rising
        return {name: changed[name] for name in order}

    def set_output(self, on: bool) -> None:
        if on and not self._regulated:
            raise InstrumentError(f"{self.where()}: output on without a regulate() first: nothing to drive to")
        self.output = on

    def output_is_on(self) -> bool:
        return self.output

    def questionable(self) -> int:
        """The questionable status condition register of the channel (bits in the module notes)."""
        return int(parse_number(self.query(f"STAT:QUES:COND? {self.command_fields['channels']}")))

    def regulation(self) -> Regulation:
        """What the output regulates now: its voltage (CV) or one of its current limits."""
        condition = self.questionable()
        if condition & LIMIT_POSITIVE:
            return "CL+"
        if condition & LIMIT_NEGATIVE:
            return "CL-"
        return "CV"

    # --- measurement and health -------------------------------------------------------------

    def measure(self) -> tuple[float, float]:
        channels = self.command_fields["channels"]
        voltage = parse_number(self.query(f"MEAS:VOLT? {channels}"))
        current = parse_number(self.query(f"MEAS:CURR? {channels}"))
        return voltage, current  # + out of the + terminal into the DUT: + = charge

    def _raise_on_faults(self, condition: int | None = None) -> None:
        condition = self.questionable() if condition is None else condition
        problems = [text for bit, text in QUESTIONABLE_FAULTS.items() if condition & bit]
        if problems:
            raise InstrumentError(f"{self.where()} reports {'; '.join(problems)} (STAT:QUES:COND? = {condition}; "
                                  "the output stays off until the cause is found and the protection is cleared: "
                                  f"OUTP:PROT:CLE {self.command_fields['channels']} or the front panel)")

    def check_errors(self) -> None:
        self.check_error_queue()
        self._raise_on_faults()

    # --- the way out -----------------------------------------------------------------------

    def safe_state(self) -> None:
        # Sent unchecked first, so that a full error queue cannot delay the switch-off.
        self._sent.clear()
        self._regulated = False
        self.write(f"OUTP OFF,{self.command_fields['channels']}")
        if self.output:
            raise InstrumentError(f"{self.where()}: output still on after OUTP OFF")
        self._disarm_after_output_off()

    def close(self) -> None:
        # A session that ends without the safe state (a bench check) disarms here; never while the
        # output may still be on (a safe state that failed): then the watchdog is the last guard left.
        try:
            if self._watchdog_armed and not self.output:
                self._disarm_after_output_off()
        except InstrumentError as error:
            log.warning("%s: the output could not be read at close (%s); its watchdog is left armed", self.where(),
                        error, extra={"resource": self.resource})
        finally:
            super().close()

    def _disarm_after_output_off(self) -> None:
        """The watchdog off once nothing is on: a run that ended must not trip the mainframe later.
        Best effort: with the output off, a watchdog left on can only latch PROT, which the next
        connect recognises and clears; it is tried again at close."""
        try:
            self.disarm_watchdog()
        except InstrumentError as error:
            log.warning("%s: the watchdog could not be switched off (%s); it may trip the mainframe's outputs into "
                        "protection (PROT) until the next connect clears it", self.where(), error,
                        extra={"resource": self.resource})
