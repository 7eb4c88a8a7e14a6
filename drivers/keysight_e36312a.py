"""Keysight E36312A triple-output DC power supply, one output as a unidirectional source (SCPI).

Why one output of a triple supply: its 25 V / 1 A outputs (CH2, CH3) charge a cell or a few
layers in series at constant current with a constant-voltage limit, natively; with an
electronic load beside it (break-before-make in cycler/channel.py) it makes a small cycler.
The bench file names the output wired to the DUT (`output: 2`); the other two are left alone.

Facts used (shared/reference/instruments.md §1; "sigrok" = libsigrok scpi-pps, tested on a
real E36312A over LAN; "pymeasure" = pymeasure keysightE36312A.py and its tests; "qcodes" =
Qcodes_contrib_drivers Keysight_E36313A.py; "pas-gpib" = keysighte3631xa.pas, citing the
E36300 Programming Guide):
* every output command takes a channel list as its last parameter, after a comma:
  `VOLT 4.25,(@2)`, `CURR 0.07,(@2)`, `OUTP ON,(@2)`; queries `VOLT? (@2)`, `OUTP? (@2)` -> 0/1,
  `MEAS:VOLT? (@2)`, `MEAS:CURR? (@2)` (pymeasure, qcodes, pas-gpib; INST:NSEL then unqualified
  commands also works, sigrok, but a channel list on every command cannot hit the wrong output);
* programmable ranges read back from a real unit with `VOLT? MAX,(@N)`: CH1 0-6.18 V,
  0.002-5.15 A, OVP 0.5-6.6 V; CH2 and CH3 0-25.75 V, 0.001-1.03 A, OVP 0.5-27.5 V (sigrok
  profiles.c); nominal 6 V / 5 A and 25 V / 1 A (pymeasure's ranges; 80 W model);
* OVP level `VOLT:PROT v,(@N)`, tripped `VOLT:PROT:TRIP? (@N)`; OCP on/off
  `CURR:PROT:STAT 0|1,(@N)`, tripped `CURR:PROT:TRIP? (@N)` (sigrok). OVP is always armed: the
  E36300 has no `VOLT:PROT:STAT` (pas-gpib notes). OCP has no level of its own: enabled, it
  switches the output off when the output goes into current limit ([uncertain]: as on the
  N6700, reference §2), which is where a constant-current charge regulates; so it stays off and
  the over-current threshold is kept as a ceiling on the current limit, which is the hardware
  clamp;
* `STAT:QUES:INST:ISUM<N>:COND?`: value & 3 = 1 CC, 2 CV, 3 hardware failure, 0 unregulated;
  bit 4 (16) over-temperature (sigrok api.c, tested on an E36312A; summaries that give bit 0 = CV
  are wrong);
* `OUTP:PAIR?` answers OFF, PAR or SER (pas-gpib): paired, CH2 and CH3 are one output, so a
  bench wired to one of them is refused;
* `SYST:REM` / `SYST:LOC` (sigrok); `SYST:ERR?` answers `+0,"No error"` (pas-gpib).

Not used, because no source found confirms the spelling on the E36300 ([uncertain] in the
reference): `OUTP:PROT:CLE (@N)` to clear a latched protection (a tripped output is refused at
connect with the front panel named instead), `APPL` with a channel list (VOLT and CURR are sent
apart, in an order that never allows more current than either command), `CURR:PROT:DEL`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

from stackcycler.errors import InstrumentError, InvalidInput

from .roles import BenchSetting, PowerSource, SupplyRatings
from .scpi import ScpiDriver, Setting, format_channel_list, parse_number, parse_on_off


@dataclass(frozen=True)
class OutputRange:
    """What one output accepts: set values and OVP levels (sigrok profiles.c, read from a real unit)."""

    max_voltage_V: float
    min_current_A: float
    max_current_A: float
    min_over_voltage_V: float
    max_over_voltage_V: float
    ratings: SupplyRatings  # nominal


OUTPUT_RANGES: dict[int, OutputRange] = {
    1: OutputRange(6.18, 0.002, 5.15, 0.5, 6.6,
                   SupplyRatings(voltage_V=6.0, current_A=5.0, power_W=30.0, max_over_voltage_V=6.6,
                                 max_over_current_A=5.15)),
    2: OutputRange(25.75, 0.001, 1.03, 0.5, 27.5,
                   SupplyRatings(voltage_V=25.0, current_A=1.0, power_W=25.0, max_over_voltage_V=27.5,
                                 max_over_current_A=1.03)),
}
OUTPUT_RANGES[3] = OUTPUT_RANGES[2]

# STAT:QUES:INST:ISUM<N>:COND? (sigrok api.c)
ISUM_REGULATION_MASK = 3
ISUM_REGULATION = {0: "unregulated", 1: "CC", 2: "CV", 3: "hardware failure"}
ISUM_OVER_TEMPERATURE = 16

Regulation = Literal["CC", "CV", "unregulated"]


def _range(field: str, low_field: str | None = None):
    def limits(driver: "KeysightE36312a") -> tuple[float, float]:
        output = OUTPUT_RANGES[driver.output_number]
        return (getattr(output, low_field) if low_field else 0.0), getattr(output, field)
    return limits


class KeysightE36312a(ScpiDriver, PowerSource):
    FRIENDLY_NAME = "Keysight E36312A"
    MODEL = "E36312A"
    BENCH_SETTINGS: ClassVar[dict[str, BenchSetting]] = {
        "output": BenchSetting("the output wired to the DUT (1: 6 V / 5 A; 2, 3: 25 V / 1 A)", (1, 2, 3),
                               required=True),
    }

    voltage_V = Setting("VOLT {},{channels}", "VOLT? {channels}", "voltage set value",
                        limits=_range("max_voltage_V"))
    current_limit_A = Setting("CURR {},{channels}", "CURR? {channels}", "current limit",
                              limits=_range("max_current_A", "min_current_A"))
    over_voltage_V = Setting("VOLT:PROT {},{channels}", "VOLT:PROT? {channels}", "over-voltage protection level",
                             limits=_range("max_over_voltage_V", "min_over_voltage_V"))
    over_current_protection = Setting("CURR:PROT:STAT {},{channels}", "CURR:PROT:STAT? {channels}",
                                      "switch off when the output goes into current limit", parse=parse_on_off,
                                      to_text=lambda on: "1" if on else "0")
    output = Setting("OUTP {},{channels}", "OUTP? {channels}", "output on/off", parse=parse_on_off,
                     to_text=lambda on: "ON" if on else "OFF")

    def __init__(self, transport, output: int):
        super().__init__(transport)
        if output not in OUTPUT_RANGES:
            raise InvalidInput(f"{self.FRIENDLY_NAME} at {transport.resource}: output {output!r} is not one of "
                               f"{', '.join(map(str, OUTPUT_RANGES))}")
        self.output_number = output
        self._connected = False
        self._sent: dict[str, float] = {}  # last values sent, so unchanged ones are not resent
        self._over_current_ceiling_A: float | None = None

    @property
    def command_fields(self) -> dict[str, str]:
        return {"channels": format_channel_list([self.output_number])}

    @property
    def ratings(self) -> SupplyRatings:
        if not self._connected:
            raise InstrumentError(f"{self.FRIENDLY_NAME} at {self.resource}: not connected")
        return OUTPUT_RANGES[self.output_number].ratings

    def _where(self) -> str:
        return f"{self.FRIENDLY_NAME} output {self.output_number} at {self.resource}"

    # --- connection ----------------------------------------------------------------------

    def connect(self) -> str:
        identity = self.identify()
        fields = [field.strip() for field in identity.split(",")]
        if len(fields) < 2 or fields[1].upper() != self.MODEL:
            raise InstrumentError(f"{self.resource} is not a {self.FRIENDLY_NAME}: *IDN? answered {identity!r}")
        self.write("*CLS")  # errors left by an earlier session are not this run's
        self.write_checked("SYST:REM")
        self.output_found_on = self.output  # after a host crash it may still be on: worth knowing
        self.output = False
        if self.output_number in (2, 3):
            pairing = self.query("OUTP:PAIR?").upper()
            if pairing != "OFF":
                raise InstrumentError(f"{self._where()}: outputs 2 and 3 are paired (OUTP:PAIR? = {pairing!r}), "
                                      "so output 2 is not the output the bench file wires; unpair them "
                                      "(front panel or OUTP:PAIR OFF)")
        self._connected = True
        self._raise_on_trips()
        self._sent = {}
        return identity

    # --- protection ----------------------------------------------------------------------

    def set_protection(self, over_voltage_V: float, over_current_A: float) -> None:
        ratings = self.ratings
        if not (isinstance(over_current_A, (int, float)) and math.isfinite(over_current_A)
                and 0 < over_current_A <= ratings.max_over_current_A):
            raise InvalidInput(f"{self._where()}: over_current_A = {over_current_A!r} is outside 0 to "
                               f"{ratings.max_over_current_A:g} A; nothing was sent")
        with self.batch():
            self.over_voltage_V = over_voltage_V
            self.over_current_protection = False  # it would trip at the current limit: see the module notes
        self._over_current_ceiling_A = over_current_A

    # --- regulation ----------------------------------------------------------------------

    def regulate(self, voltage_V: float, current_limit_A: float) -> None:
        cls = type(self)
        cls.voltage_V.check(self, voltage_V)
        cls.current_limit_A.check(self, current_limit_A)
        if self._over_current_ceiling_A is not None and current_limit_A > self._over_current_ceiling_A:
            raise InvalidInput(f"{self._where()}: a current limit of {current_limit_A:g} A is above the armed "
                               f"over-current threshold ({self._over_current_ceiling_A:g} A); nothing was sent")
        wanted = {"voltage_V": voltage_V, "current_limit_A": current_limit_A}
        changed = {name: value for name, value in wanted.items() if self._sent.get(name) != value}
        if not changed:
            return
        # A falling current limit goes before the new voltage and a rising one after it, so
        # that between the two commands no more current flows than either allows.
        falling = changed.get("current_limit_A", math.inf) < self._sent.get("current_limit_A", math.inf)
        ordered = dict(sorted(changed.items(), key=lambda item: (item[0] == "current_limit_A") != falling))
        self.set_many(ordered)
        self._sent.update(ordered)

    def set_output(self, on: bool) -> None:
        self.output = on

    def output_is_on(self) -> bool:
        return self.output

    def regulation(self) -> Regulation:
        """What the output regulates now, from its questionable-instrument summary register."""
        value = int(parse_number(self.query(f"STAT:QUES:INST:ISUM{self.output_number}:COND?")))
        state = ISUM_REGULATION[value & ISUM_REGULATION_MASK]
        if state == "hardware failure":
            raise InstrumentError(f"{self._where()} reports a hardware failure (ISUM condition {value})")
        return state

    # --- measurement and health ----------------------------------------------------------

    def measure(self) -> tuple[float, float]:
        channels = self.command_fields["channels"]
        voltage = parse_number(self.query(f"MEAS:VOLT? {channels}"))
        current = parse_number(self.query(f"MEAS:CURR? {channels}"))
        return voltage, current  # it sources: current into the DUT, + = charge

    def _raise_on_trips(self) -> None:
        channels = self.command_fields["channels"]
        problems = []
        if parse_on_off(self.query(f"VOLT:PROT:TRIP? {channels}")):
            problems.append("over-voltage protection tripped")
        if parse_on_off(self.query(f"CURR:PROT:TRIP? {channels}")):
            problems.append("over-current protection tripped")
        condition = int(parse_number(self.query(f"STAT:QUES:INST:ISUM{self.output_number}:COND?")))
        if condition & ISUM_REGULATION_MASK == 3:
            problems.append("hardware failure")
        if condition & ISUM_OVER_TEMPERATURE:
            problems.append("over-temperature")
        if problems:
            raise InstrumentError(f"{self._where()} reports {'; '.join(problems)} (the output stays off until "
                                  "the cause is found and the protection is cleared at the front panel)")

    def check_errors(self) -> None:
        self.check_error_queue()
        self._raise_on_trips()

    # --- the way out ---------------------------------------------------------------------

    def safe_state(self) -> None:
        # Sent unchecked first, so that a full error queue cannot delay the switch-off.
        self._sent.clear()
        self.write(f"OUTP OFF,{self.command_fields['channels']}")
        if self.output:
            raise InstrumentError(f"{self._where()}: output still on after OUTP OFF")

    def close(self) -> None:
        try:
            self.write("SYST:LOC")
        finally:
            super().close()
