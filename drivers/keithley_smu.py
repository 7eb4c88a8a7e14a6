"""Keithley SourceMeter SMUs as bidirectional supplies: the 2450 (Touch-Test-Invent SCPI) and
the 2400 (2400-series SCPI). See shared/reference/instruments.md §4a, §4b.

Why an SMU fits the role: it is a four-quadrant voltage source with a current limit. Keithley's
own battery method is exactly our control law (2400 Series User's Manual p. 3-23; 2450 User's
Manual §8 "Rechargeable battery measurements"): source voltage, set the current limit to the
charge or discharge current; with the voltage beyond the cell's it stays in the limit, i.e. CC
charge (set above) or CC discharge (set below, current flows into HI and reads negative), and
when the cell reaches the set voltage it is CV. Its current is positive out of HI into the DUT,
which is our + = charge.

One symmetric limit for two. The SMU has one current limit that holds in both directions,
where the role asks for a source (charge) and a sink (discharge) limit. The driver sends the
larger of the two. That is exact for CC steps and CC-CV, where the command zeroes the side
that cannot act (the set voltage lies beyond the DUT's, so only one direction can flow). In a
CV step with two different limits the instrument enforces only the larger one both ways; the
smaller side is then held by the host's safety envelope (max_charge_current_A /
max_discharge_current_A), not by the instrument.

Rests and "output off". These SMUs do not measure with their output off (2400 manual p. 18-55:
"Measurements cannot be made while the source is off"; a READ? is refused with +803 "Not
permitted with OUTPUT off", Table B-1), yet the runner reads the DUT's voltage on every tick,
rests included. So the driver distinguishes:
* driving: output on, the commanded voltage and current limit (the role's output ON);
* standby: output on with the current limit at STANDBY_CURRENT_LIMIT_A, so at most a
  microampere flows either way while the SMU reads the DUT's voltage (the role's output OFF:
  no current that matters, voltage still measured). It is entered when the DUT must be
  measured, and after driving;
* off: `OUTP OFF` with the high-impedance off state (the output relay opens), from connect
  until the first measurement, and after safe_state() and close().
The high-impedance off state is set before anything is switched, because the instruments'
reset default (normal: a 0 V source with a small current limit) would drain a cell while
"off" (2450 Reference Manual "Output-off state"; 2400 manual p. 18-57; the 2450 battery
example selects high impedance for this reason). The relay then opens only at the safe state,
not at each rest (Keithley advises against switching the high-impedance relay often).

Protection. Neither SMU has an over-current trip: the current limit is the hardware clamp, and
set_protection keeps the over-current threshold as a ceiling that regulate() refuses to exceed.
Over-voltage protection clamps the source voltage (it is not a trip). The 2450 has levels 2 V
to 180 V and NONE (Reference Manual, `smu.source.protect.level` p. 8-141, `:SOUR:VOLT:PROT`).
The 2400 has `:SOUR:VOLT:PROT` too, but only in steps of 20, 40, 60, 80, 100, 120, 160 V and
NONE (User's Manual p. 18-81), so for a cell of a few volts its lowest step, 20 V, guards
against nothing nearer than the 21 V range; below the steps the instrument's own guard is
its compliance (the current limit). Both drivers arm the lowest level at or above the
threshold asked for, so the protection can never block a voltage inside the envelope
(the 2400 itself would round a value between steps down).
"""

from __future__ import annotations

import math

from stackcycler.errors import InstrumentError, InvalidInput

from .roles import BidirectionalSupply, SupplyRatings
from .scpi import ScpiDriver, Setting, parse_number, parse_on_off

# Current limit in standby: small enough that an hour's rest moves a microampere-hour, large
# enough for any current range to hold. [uncertain: the smallest limit each model accepts is
# not stated in the manual pages consulted; both have a 1 uA (2400) or smaller (2450) range]
STANDBY_CURRENT_LIMIT_A = 1e-6

# Operating envelope (the same on both models): 1.05 A up to 21 V (the 20 V range), 105 mA up
# to 210 V (the 200 V range). 2400 Series User's Manual pp. 3-23 and 6-10 ("actual maximum
# output magnitudes 1.05 A, 21 V and 105 mA, 210 V"); 2450 Reference Manual p. 6-70 (source
# levels -210 V to 210 V, -1.05 A to 1.05 A) and its 20 V / 200 V source ranges. The 2400's
# 1 A range is derated in the sink quadrants (p. 6-10); not enforced here.
ENVELOPE: tuple[tuple[float, float], ...] = ((21.0, 1.05), (210.0, 0.105))
MAX_VOLTAGE_V = ENVELOPE[-1][0]
MAX_CURRENT_A = ENVELOPE[0][1]

# A reading of +9.9E37 is an overflow, +9.91E37 an element that was not measured (2400 manual
# p. 18-51); either means the reading cannot be used.
OVERFLOW = 9.9e37


def max_current_at(voltage_V: float) -> float:
    """The largest current limit the SMU can hold at a source voltage of this magnitude."""
    for volts, amps in ENVELOPE:
        if abs(voltage_V) <= volts:
            return amps
    return 0.0


SMU_RATINGS = SupplyRatings(voltage_V=MAX_VOLTAGE_V, current_A=MAX_CURRENT_A,
                            power_W=max(volts * amps for volts, amps in ENVELOPE),
                            max_over_voltage_V=MAX_VOLTAGE_V,  # OVP "NONE": the source's own maximum
                            max_over_current_A=MAX_CURRENT_A)


def _positive_voltage(driver: "KeithleySmu") -> tuple[float, float]:
    # The SMU could source a negative voltage; across a cell that would reverse-charge it.
    return 0.0, MAX_VOLTAGE_V


def _current_limit(driver: "KeithleySmu") -> tuple[float, float]:
    return STANDBY_CURRENT_LIMIT_A, MAX_CURRENT_A


def _on_off(on: bool) -> str:
    return "ON" if on else "OFF"


class KeithleySmu(ScpiDriver, BidirectionalSupply):
    """What the 2450 and 2400 share; a model class gives its identity, the commands that
    differ, its set-up at connect and its reading format."""

    MAKER = ""  # first *IDN? field
    MODEL = ""  # second *IDN? field
    OVP_LEVELS_V: tuple[float, ...] = ()
    SET_UP: tuple[str, ...] = ()  # sent at connect, after the output is off
    READ_QUERY = ":READ?"

    voltage_V = Setting(":SOUR:VOLT {}", ":SOUR:VOLT?", "source voltage level", limits=_positive_voltage)
    output = Setting(":OUTP {}", ":OUTP?", "output on/off", parse=parse_on_off, to_text=_on_off)
    off_state = Setting(":OUTP:SMOD {}", ":OUTP:SMOD?", "what the output does when off", parse=str)
    current_limit_A: Setting  # per model: the dialects differ
    over_voltage_protection: Setting  # per model: the level's token

    def __init__(self, transport):
        super().__init__(transport)
        self._connected = False
        self._on = False  # the output is on (standby or driving)
        self._driving = False  # ... with the commanded voltage and limit: the role's output ON
        self._wanted: dict[str, float] | None = None  # the last regulate(), sent when driving
        self._sent: dict[str, float] = {}  # last values sent, so unchanged ones are not resent
        self._over_voltage_level_V: float | None = None  # the armed OVP level; None: NONE or not armed
        self._over_current_ceiling_A: float | None = None

    # --- identity and connection -------------------------------------------------------

    @property
    def ratings(self) -> SupplyRatings:
        if not self._connected:
            raise InstrumentError(f"{self.FRIENDLY_NAME} at {self.resource}: not connected")
        return SMU_RATINGS

    def check_identity(self, identity: str) -> None:
        fields = [field.strip().upper() for field in identity.split(",")]
        if len(fields) < 2 or fields[0] != self.MAKER or fields[1] != self.MODEL:
            raise InstrumentError(f"{self.resource} is not a {self.FRIENDLY_NAME} ('{self.MAKER},{self.MODEL},...'): "
                                  f"*IDN? answered {identity!r}")

    def check_command_set(self) -> None:
        """Refuse an instrument that would not understand this dialect (the 2450 has three)."""

    def _found_driving(self) -> bool:
        """An output found on drives the DUT unless it is our standby (sourcing voltage at the
        standby limit), as a host that crashed during a rest leaves it."""
        function = self.query(":SOUR:FUNC?").upper()
        return not (function.startswith("VOLT") and self.current_limit_A <= STANDBY_CURRENT_LIMIT_A * 1.01)

    def connect(self) -> str:
        identity = self.identify()
        self.check_identity(identity)
        self.check_command_set()
        self.write("*CLS")  # errors left by an earlier session are not this run's
        self.output_found_on = self.output and self._found_driving()  # after a host crash: worth knowing
        with self.batch():
            self.off_state = "HIMP"  # before switching off: a normal off state drains a cell
            self.output = False
        self._on = self._driving = False
        with self.batch():
            for command in self.SET_UP:
                self.write(command)
            self.voltage_V = 0.0
            self.current_limit_A = STANDBY_CURRENT_LIMIT_A
        self._sent = {"voltage_V": 0.0, "current_limit_A": STANDBY_CURRENT_LIMIT_A}
        self._wanted = None
        self._connected = True
        return identity

    # --- protection --------------------------------------------------------------------

    def over_voltage_token(self, level_V: float | None) -> str:
        """The parameter that selects an OVP level (None: NONE)."""
        raise NotImplementedError

    def over_voltage_level(self, threshold_V: float) -> float | None:
        """The lowest OVP level at or above the threshold; None (NONE) above the highest."""
        return next((level for level in self.OVP_LEVELS_V if level >= threshold_V), None)

    def set_protection(self, over_voltage_V: float, over_current_A: float) -> None:
        self.refuse_protection_out_of_range(over_voltage_V, over_current_A)
        level = self.over_voltage_level(over_voltage_V)
        self.over_voltage_protection = self.over_voltage_token(level)
        self._over_voltage_level_V = level
        self._over_current_ceiling_A = over_current_A

    # --- regulation --------------------------------------------------------------------

    def _refuse(self, why: str) -> None:
        raise InvalidInput(f"{self.FRIENDLY_NAME} at {self.resource}: {why}; nothing was sent")

    def regulate(self, voltage_V: float, source_limit_A: float, sink_limit_A: float,
                 source_power_W: float | None = None, sink_power_W: float | None = None) -> None:
        if source_power_W is not None or sink_power_W is not None:
            self._refuse("an SMU has no power limit (has_power_limits is False)")
        for name, value in (("source_limit_A", source_limit_A), ("sink_limit_A", sink_limit_A)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                self._refuse(f"{name} = {value!r} must be a current of 0 A or more")
        limit = max(source_limit_A, sink_limit_A, STANDBY_CURRENT_LIMIT_A)  # one limit, both ways
        wanted = {"voltage_V": voltage_V, "current_limit_A": limit}
        for name, value in wanted.items():
            getattr(type(self), name).check(self, value)
        if limit > max_current_at(voltage_V):
            self._refuse(f"a current limit of {limit:g} A at {voltage_V:g} V is outside its envelope "
                         f"(at most {max_current_at(voltage_V):g} A above {ENVELOPE[0][0]:g} V)")
        if self._over_voltage_level_V is not None and voltage_V > self._over_voltage_level_V:
            self._refuse(f"{voltage_V:g} V is above its armed over-voltage protection level "
                         f"({self._over_voltage_level_V:g} V)")
        if self._over_current_ceiling_A is not None and limit > self._over_current_ceiling_A:
            self._refuse(f"a current limit of {limit:g} A is above the armed over-current threshold "
                         f"({self._over_current_ceiling_A:g} A)")
        self._wanted = wanted
        if self._driving:
            self._send(wanted)

    def _changes(self, wanted: dict[str, float]) -> dict[str, float]:
        """What differs from the last values sent, in an order that never lets more current flow
        than the old or the new command allows: a falling limit before the new voltage, a rising
        one after it."""
        changed = {name: value for name, value in wanted.items() if self._sent.get(name) != value}
        falling = changed.get("current_limit_A", math.inf) < self._sent.get("current_limit_A", math.inf)
        return dict(sorted(changed.items(), key=lambda item: (item[0] == "current_limit_A") != falling))

    def _send(self, wanted: dict[str, float]) -> None:
        changed = self._changes(wanted)
        if changed:
            self.set_many(changed)
            self._sent.update(changed)

    def set_output(self, on: bool) -> None:
        if on:
            if self._wanted is None:
                raise InstrumentError(f"{self.FRIENDLY_NAME} at {self.resource}: output on without a "
                                      "regulate() first: nothing to drive to")
            if self._changes(self._wanted) or not self._on:
                with self.batch():
                    self._send(self._wanted)
                    if not self._on:
                        self.output = True
            self._on = self._driving = True
        elif self._driving:
            self._send({"current_limit_A": STANDBY_CURRENT_LIMIT_A})  # standby: the voltage stays measured
            self._driving = False

    def output_is_on(self) -> bool:
        """Driving the DUT. In standby the instrument's output is on, but it holds at most
        STANDBY_CURRENT_LIMIT_A: the role's output is off."""
        return self.output and self._driving

    # --- measurement -------------------------------------------------------------------

    def _standby(self) -> None:
        """Output on at the standby limit, so that the DUT can be measured."""
        with self.batch():
            self.current_limit_A = STANDBY_CURRENT_LIMIT_A  # always: after safe_state nothing is known
            self.output = True
        self._sent["current_limit_A"] = STANDBY_CURRENT_LIMIT_A
        self._on = True

    def parse_reading(self, reply: str) -> tuple[float, float]:
        raise NotImplementedError

    def measure(self) -> tuple[float, float]:
        if not self._on:
            self._standby()
        voltage, current = self.parse_reading(self.query(self.READ_QUERY))
        if abs(voltage) >= OVERFLOW or abs(current) >= OVERFLOW:
            raise InstrumentError(f"{self.resource}: {self.READ_QUERY} answered an overflow or an unmeasured "
                                  f"element ({voltage:g} V, {current:g} A)")
        return voltage, current

    def _two_numbers(self, reply: str, expected: str) -> tuple[float, float]:
        fields = reply.split(",")
        if len(fields) != 2:
            raise InstrumentError(f"{self.resource}: {self.READ_QUERY} answered {reply!r}, expected '{expected}'")
        return parse_number(fields[0]), parse_number(fields[1])

    # --- the way out -------------------------------------------------------------------

    def safe_state(self) -> None:
        # Sent unchecked first, so that a full error queue cannot delay the switch-off; with the
        # high-impedance off state the output relay opens.
        self._sent.clear()
        self._on = self._driving = False
        self.write(":OUTP OFF")
        if self.output:
            raise InstrumentError(f"{self.resource}: output still on after :OUTP OFF")

    def close(self) -> None:
        try:
            if self._on:  # standby (e.g. a resume that was declined): leave it off
                self.write(":OUTP OFF")
        finally:
            super().close()


class Keithley2450(KeithleySmu):
    """Keithley 2450 in its SCPI command set (2450 Reference Manual, 2450-901-01).

    Dialect: the limit while sourcing voltage is `:SOUR:VOLT:ILIM` (p. 6-71; the 2400's
    `:SENS:CURR:PROT` is an undefined header here); `:READ?` returns one buffer reading (the
    measure function's) unless buffer elements are named (p. 6-6), so one
    `:READ? "defbuffer1",SOUR,READ` gives the source readback (the measured voltage, with
    `:SOUR:VOLT:READ:BACK ON`, p. 6-77) and the measured current; numbers as `4.100000e+00`;
    `SYST:ERR?` answers `0,"No error;0;0 0"` (message;event type;time); `*IDN?` maker field
    `KEITHLEY INSTRUMENTS` without INC.; `*LANG?` must answer SCPI (not TSP, not SCPI2400).
    """

    FRIENDLY_NAME = "Keithley 2450"
    MAKER = "KEITHLEY INSTRUMENTS"
    MODEL = "MODEL 2450"
    # 2450 Reference Manual p. 8-141 (smu.source.protect.level); SCPI tokens PROT2 ... PROT180, NONE
    OVP_LEVELS_V = (2.0, 5.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0, 120.0, 140.0, 160.0, 180.0)
    SET_UP = (
        ":SOUR:FUNC VOLT",
        ":SOUR:VOLT:RANG:AUTO ON",
        ":SOUR:VOLT:READ:BACK ON",  # the SOUR element is the measured voltage, not the set value
        ':SENS:FUNC "CURR"',
        ":SENS:CURR:RANG:AUTO ON",
    )
    READ_QUERY = ':READ? "defbuffer1",SOUR,READ'

    current_limit_A = Setting(":SOUR:VOLT:ILIM {}", ":SOUR:VOLT:ILIM?",
                              "current limit while sourcing voltage, both ways", limits=_current_limit)
    over_voltage_protection = Setting(":SOUR:VOLT:PROT {}", ":SOUR:VOLT:PROT?", "over-voltage protection level",
                                      parse=str)

    def check_command_set(self) -> None:
        language = self.query("*LANG?").upper()
        if language != "SCPI":
            raise InstrumentError(f"{self.resource}: the 2450's command set is {language!r}, not SCPI; choose SCPI "
                                  "(MENU > System > Settings > Command Set) and power-cycle it")

    def over_voltage_token(self, level_V: float | None) -> str:
        return "NONE" if level_V is None else f"PROT{level_V:.0f}"

    def parse_reading(self, reply: str) -> tuple[float, float]:
        return self._two_numbers(reply, "source voltage,current")


class Keithley2400(KeithleySmu):
    """Keithley 2400 SourceMeter (2400 Series User's Manual, 2400S-900-01).

    Dialect: the limit while sourcing voltage is the current compliance `:SENS:CURR:PROT`
    (p. 18-68); `:READ?` answers voltage, current, resistance, time, status unless
    `:FORM:ELEM` narrows it (pp. 18-51 to 18-53), and its voltage element is the *set* voltage
    unless voltage is measured too, hence concurrent sensing of voltage and current; numbers as
    `+4.100000E+00`; `SYST:ERR?` answers `0,"No error"`; `*IDN?` maker field
    `KEITHLEY INSTRUMENTS INC.`; with auto output-off disabled (the default) a `:READ?` needs
    the output on.
    """

    FRIENDLY_NAME = "Keithley 2400"
    MAKER = "KEITHLEY INSTRUMENTS INC."
    MODEL = "MODEL 2400"
    # 2400 Series User's Manual p. 18-81: V-source protection steps; above 160 V: NONE
    OVP_LEVELS_V = (20.0, 40.0, 60.0, 80.0, 100.0, 120.0, 160.0)
    SET_UP = (
        ":SOUR:FUNC VOLT",
        ":SOUR:VOLT:MODE FIX",
        ":SOUR:VOLT:RANG:AUTO ON",
        ":SOUR:CLE:AUTO OFF",  # auto output-off would switch the output (and its relay) at every reading
        ":SENS:FUNC:CONC ON",
        ':SENS:FUNC "VOLT","CURR"',  # measure the voltage: otherwise READ? returns the set value
        ":SENS:CURR:RANG:AUTO ON",
        ":FORM:ELEM VOLT,CURR",
    )
    READ_QUERY = ":READ?"

    current_limit_A = Setting(":SENS:CURR:PROT {}", ":SENS:CURR:PROT?", "current compliance while sourcing voltage",
                              limits=_current_limit)
    over_voltage_protection = Setting(":SOUR:VOLT:PROT {}", ":SOUR:VOLT:PROT?", "V-source protection level",
                                      parse=parse_number)

    def over_voltage_token(self, level_V: float | None) -> str:
        return f"{MAX_VOLTAGE_V if level_V is None else level_V:.0f}"  # 161 V to 210 V select NONE

    def parse_reading(self, reply: str) -> tuple[float, float]:
        return self._two_numbers(reply, "voltage,current (FORM:ELEM VOLT,CURR)")
