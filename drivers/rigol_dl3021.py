"""Rigol DL3021 / DL3021A / DL3031 / DL3031A DC electronic load (SCPI), as the load of a channel.

Facts used (shared/reference/instruments.md §3: [secondary] = dcps `RigolDL3000.py` and two
further DL3000 drivers that cite the programming guide; [confirmed] = Rigol DL3000 Programming
Guide, battery subsystem):
* `*IDN?` -> `RIGOL TECHNOLOGIES,DL3021,DL3A204800938,00.01.05.00.01`; any command puts the
  load in remote, and it has no `SYST:REM` [secondary];
* static mode `:SOUR:FUNC CURR|VOLT|RES|POW`; `:SOUR:FUNC?` answers either `CC/CV/CR/CP` or
  `CURR/VOLT/RES/POW` (drivers disagree: both are parsed) [secondary];
* `:SOUR:FUNC:MODE FIX` regulates from the static mode, not a list, a waveform or the battery
  function [secondary; MODE BATT confirmed];
* set values `:SOUR:CURR:LEV:IMM`, `:SOUR:VOLT:LEV:IMM`, `:SOUR:RES:LEV:IMM`, `:SOUR:POW:LEV:IMM`;
  CC range `:SOUR:CURR:RANG 4|40` (DL3031: 6|60); in CV the current limit `:SOUR:VOLT:ILIM`
  (a third-party DL3000 summary describes it as the current limit in CV mode, with the example
  `:SOUR:FUNC VOLT`, `:SOUR:VOLT 12.0`, `:SOUR:VOLT:ILIM 5.0`) [secondary];
* input `:SOUR:INP:STAT 1|0`, queried `1`/`0`; `:MEAS:VOLT?`, `:MEAS:CURR?` (the current it sinks,
  as a magnitude) [secondary];
* `:SYST:ERR?` empty-queue text [uncertain]: both `0,...` and `+0,...` are read as empty.

Ratings [uncertain: Rigol datasheet figures as quoted by a third-party DL3000 summary; not in the
reference]: DL3021(A) 150 V, 40 A, 200 W; DL3031(A) 150 V, 60 A, 350 W. CR range 0.08 Ohm to
15 kOhm [uncertain].

Protection. No over-voltage or over-current trip of the load is confirmed as a remote command,
so set_protection() arms the host's ceilings (set values above them are refused, as on the
Keithley SMUs) and picks the lowest current range that holds the over-current threshold (finer
resolution; the load cannot sink beyond its range). Leaving remote needs the front panel's
Local key (dcps presses it with `DEBug:KEY`, an undocumented command not used here).
"""

from __future__ import annotations

from typing import ClassVar

from stackcycler.errors import InstrumentError, InvalidInput

from .roles import LOAD_MODES, ElectronicLoad, LoadMode, LoadRatings
from .scpi import ScpiDriver, Setting, parse_number, parse_on_off

MODEL_RATINGS: dict[str, LoadRatings] = {
    "DL3021": LoadRatings(voltage_V=150.0, current_A=40.0, power_W=200.0, max_over_voltage_V=150.0,
                          max_over_current_A=40.0, min_resistance_ohm=0.08, max_resistance_ohm=15000.0),
    "DL3031": LoadRatings(voltage_V=150.0, current_A=60.0, power_W=350.0, max_over_voltage_V=150.0,
                          max_over_current_A=60.0, min_resistance_ohm=0.08, max_resistance_ohm=15000.0),
}
MODEL_RATINGS["DL3021A"] = MODEL_RATINGS["DL3021"]
MODEL_RATINGS["DL3031A"] = MODEL_RATINGS["DL3031"]

# CC ranges by the rating they belong to (reference §3: 4 or 40 A; DL3031: 6 or 60 A)
CURRENT_RANGES_A: dict[float, tuple[float, float]] = {40.0: (4.0, 40.0), 60.0: (6.0, 60.0)}

FUNCTIONS: dict[LoadMode, str] = {"CC": "CURR", "CV": "VOLT", "CR": "RES", "CP": "POW"}
_MODES_BY_REPLY: dict[str, LoadMode] = {**{mode: mode for mode in LOAD_MODES},
                                        **{function: mode for mode, function in FUNCTIONS.items()},
                                        "CURRENT": "CC", "VOLTAGE": "CV", "RESISTANCE": "CR", "POWER": "CP"}


def parse_function(reply: str) -> LoadMode:
    text = reply.strip().upper()
    if text not in _MODES_BY_REPLY:
        raise InstrumentError(f"expected a static mode (CC/CV/CR/CP or CURR/VOLT/RES/POW), got {reply!r}")
    return _MODES_BY_REPLY[text]


def _up_to(rating: str, ceiling: str | None = None):
    """0 up to the model's rating, and to the armed host ceiling where there is one."""
    def limits(driver: "RigolDl3021") -> tuple[float, float]:
        high = getattr(driver.ratings, rating)
        armed = driver.ceilings.get(ceiling) if ceiling else None
        return 0.0, high if armed is None else min(high, armed)
    return limits


class RigolDl3021(ScpiDriver, ElectronicLoad):
    FRIENDLY_NAME = "Rigol DL3021"
    MAKER = "RIGOL TECHNOLOGIES"
    HOLDS_VOLTAGE_WITH_CURRENT_LIMIT: ClassVar[bool] = True

    function = Setting(":SOUR:FUNC {}", ":SOUR:FUNC?", "static regulation mode", parse=parse_function,
                       to_text=lambda mode: FUNCTIONS[mode])
    regulation_source = Setting(":SOUR:FUNC:MODE {}", ":SOUR:FUNC:MODE?", "what it regulates from", parse=str)
    cc_current_A = Setting(":SOUR:CURR:LEV:IMM {}", ":SOUR:CURR:LEV:IMM?", "CC set value",
                           limits=lambda driver: (0.0, min(driver.range_A, driver.ceilings["current_A"])))
    cc_range_A = Setting(":SOUR:CURR:RANG {}", ":SOUR:CURR:RANG?", "CC range (A)", to_text=lambda amps: f"{amps:g}")
    cv_voltage_V = Setting(":SOUR:VOLT:LEV:IMM {}", ":SOUR:VOLT:LEV:IMM?", "CV set value",
                           limits=_up_to("voltage_V", "voltage_V"))
    cv_current_limit_A = Setting(":SOUR:VOLT:ILIM {}", ":SOUR:VOLT:ILIM?", "current limit in CV",
                                 limits=_up_to("current_A", "current_A"))
    cr_resistance_ohm = Setting(":SOUR:RES:LEV:IMM {}", ":SOUR:RES:LEV:IMM?", "CR set value",
                                limits=lambda driver: (driver.ratings.min_resistance_ohm,
                                                       driver.ratings.max_resistance_ohm))
    cp_power_W = Setting(":SOUR:POW:LEV:IMM {}", ":SOUR:POW:LEV:IMM?", "CP set value", limits=_up_to("power_W"))
    input = Setting(":SOUR:INP:STAT {}", ":SOUR:INP:STAT?", "input on/off", parse=parse_on_off,
                    to_text=lambda on: "1" if on else "0")

    MODE_SETTINGS: dict[LoadMode, str] = {"CC": "cc_current_A", "CV": "cv_voltage_V", "CR": "cr_resistance_ohm",
                                          "CP": "cp_power_W"}

    def __init__(self, transport):
        super().__init__(transport)
        self.model = ""
        self._ratings: LoadRatings | None = None
        self.range_A = 0.0  # the CC range in force, as last set
        self.ceilings: dict[str, float] = {}  # host ceilings armed by set_protection
        self._sent: dict[str, object] = {}  # set values and mode sent since the last safe state

    @property
    def ratings(self) -> LoadRatings:
        if self._ratings is None:
            raise InstrumentError(f"{self.FRIENDLY_NAME} at {self.resource}: not connected")
        return self._ratings

    def connect(self) -> str:
        identity = self.identify()
        fields = [field.strip() for field in identity.split(",")]
        if len(fields) < 2 or fields[0].upper() != self.MAKER or fields[1].upper() not in MODEL_RATINGS:
            raise InstrumentError(f"{self.resource} is not a Rigol DL3021/DL3031 load: *IDN? answered {identity!r}")
        self.model = fields[1].upper()
        self._ratings = MODEL_RATINGS[self.model]
        self.write("*CLS")  # errors left by an earlier session are not this run's
        self.input_found_on = self.input  # after a host crash it may still be on: worth knowing
        self.input = False
        self.regulation_source = "FIX"
        self.ceilings = {"current_A": self._ratings.current_A, "voltage_V": self._ratings.voltage_V}
        self._set_range(self._ratings.current_A)
        self._sent = {}
        return identity

    def _set_range(self, current_A: float) -> None:
        low, high = CURRENT_RANGES_A[self.ratings.current_A]
        wanted = low if current_A <= low else high
        self.cc_range_A = wanted
        self.range_A = wanted

    def set_protection(self, over_voltage_V: float, over_current_A: float) -> None:
        self.refuse_protection_out_of_range(over_voltage_V, over_current_A)
        self._set_range(over_current_A)
        self.ceilings = {"current_A": over_current_A, "voltage_V": over_voltage_V}
        self._sent.clear()

    def _send_changed(self, values: dict[str, object]) -> None:
        """Set values first, then the mode, so that the new mode starts at its new value; only what changed."""
        changed = {name: value for name, value in values.items() if self._sent.get(name) != value}
        if changed:
            self.set_many(changed)
            self._sent.update(changed)

    def set_mode(self, mode: LoadMode, value: float) -> None:
        if mode not in FUNCTIONS:
            raise InvalidInput(f"{self.FRIENDLY_NAME} at {self.resource}: mode {mode!r} is not one of "
                               f"{', '.join(LOAD_MODES)}")
        self._send_changed({self.MODE_SETTINGS[mode]: value, "function": mode})

    def hold_voltage(self, voltage_V: float, current_limit_A: float) -> None:
        self._send_changed({"cv_voltage_V": voltage_V, "cv_current_limit_A": current_limit_A, "function": "CV"})

    def set_input(self, on: bool) -> None:
        self.input = on

    def input_is_on(self) -> bool:
        return self.input

    def measure(self) -> tuple[float, float]:
        voltage = parse_number(self.query(":MEAS:VOLT?"))
        sunk = parse_number(self.query(":MEAS:CURR?"))
        return voltage, -sunk  # the load sinks: current out of the DUT is negative

    def safe_state(self) -> None:
        # Sent unchecked first, so that a full error queue cannot delay the switch-off.
        self._sent.clear()
        self.write(":SOUR:INP:STAT 0")
        if self.input:
            raise InstrumentError(f"{self.resource}: input still on after :SOUR:INP:STAT 0")
