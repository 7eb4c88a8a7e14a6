"""Simulated ESPEC chamber: the ESPEC ASCII command set on a byte stream, and a first-order model
of its air temperature that is also the simulated stack's ambient temperature.

The command set, the reply formats and the `NA:` refusals are the real controller's (see
drivers/espec_chamber.py for the sources); the terminator and the refusal texts are shared from
there. One line in, one line out, CR LF; on RS-485 (`address` set) a line for another address
gets no reply, as on a shared bus.

Thermal model. The chamber's air approaches its target exponentially with the time constant
`time_constant_s`: T(t) = T_target + (T0 - T_target) exp(-t / tau), exact over any interval in
which the target does not change. The target is the set-point while the chamber runs
(CONSTANT), the room's temperature while it is stopped (STANDBY) or off. tau = 600 s by default:
a bench-top chamber closes 63 % of a step in ten minutes and 95 % in half an hour
(illustrative; set it from the chamber's own heat-up and pull-down curves).

The stack's ambient. The stack model cools towards `StackParameters.ambient_degC`; the chamber
sets it to the air temperature at every exchange, so the stack integrates each interval between
two exchanges with the air temperature of the first (a hold of one tick, far below both time
constants). The stack reads the value from its parameters, so the chamber replaces them with a
copy that differs in `ambient_degC` only; the thermal pressure term then counts from the chamber's
air, as it does from the room's.

Emulator choices where the sources are silent, each [uncertain]:
* readings carry one decimal (the manual's examples do); humidity is a constant reading
  (`humidity_pct`), not modelled;
* a setting is echoed as `OK:` and the command as received;
* `TEMP, S...` outside the lower and upper alarm temperatures, and an upper alarm temperature
  above TYPE?'s highest temperature, are refused with `NA:DATA OUT OF RANGE`; `MODE,RUN<n>` with `NA:DATA NOT READY` (no
  programs are stored); `POWER,ON` starts constant operation and `POWER,OFF` switches off, as CCL
  describes them;
* alarms are whatever a test puts in `alarms`: the controller's alarm logic is not modelled.
"""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..espec_chamber import MODES, RS485_ADDRESSES, TERMINATOR
from .world import KeepsSettings, SimWorld


class EspecChamberSimConfig(BaseModel):
    """The simulated chamber (`simulation.instruments.<name>`): what it holds, its state at power-on
    and its thermal time constant."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    kind: Literal["espec-chamber"] = "espec-chamber"
    stack: str = Field("main", description="the simulated stack inside the chamber")
    address: int | None = Field(None, ge=RS485_ADDRESSES.start, le=RS485_ADDRESSES.stop - 1,
                                description="RS-485 address; None on RS-232")
    controller: str = "S2"
    firmware: str = Field("P300 Ver1.20", description="what ROM? answers")
    max_temperature_degC: float = Field(150.0, description="highest temperature, as TYPE? reports it")
    humidity: bool = Field(False, description="it has a wet-bulb sensor (a temperature and humidity chamber)")
    humidity_pct: float = Field(45.0, ge=0, le=100, description="the constant humidity reading, if it has one")
    room_degC: float = Field(25.0, description="the lab's temperature: where the air drifts when stopped")
    initial_degC: float | None = Field(None, description="the air at power-on; None: the room's")
    set_point_degC: float = 25.0
    running: bool = Field(True, description="in constant operation at power-on (else in standby)")
    upper_alarm_degC: float = 100.0
    lower_alarm_degC: float = -40.0
    time_constant_s: float = Field(600.0, gt=0, description="first-order time constant of the air temperature")

    @model_validator(mode="after")
    def _set_point_inside_the_alarm_band(self) -> "EspecChamberSimConfig":
        if not self.lower_alarm_degC < self.upper_alarm_degC:
            raise ValueError(f"lower_alarm_degC ({self.lower_alarm_degC}) must be below upper_alarm_degC "
                             f"({self.upper_alarm_degC})")
        if self.upper_alarm_degC > self.max_temperature_degC:
            raise ValueError(f"upper_alarm_degC ({self.upper_alarm_degC}) must not be above max_temperature_degC "
                             f"({self.max_temperature_degC})")
        if not self.lower_alarm_degC <= self.set_point_degC <= self.upper_alarm_degC:
            raise ValueError(f"set_point_degC {self.set_point_degC} is outside the alarm band "
                             f"{self.lower_alarm_degC} to {self.upper_alarm_degC}")
        return self


_SETTING_WORD = re.compile(r"^([SHL])(-?\d+(?:\.\d*)?|OFF)$")


class SimEspecChamber(KeepsSettings):
    def __init__(self, world: SimWorld, name: str, config: EspecChamberSimConfig):
        self.world = world
        self.name = name
        self.config = config
        self._received = bytearray()
        self.mode = "CONSTANT" if config.running else "STANDBY"
        self.set_point_degC = config.set_point_degC
        self.upper_alarm_degC = config.upper_alarm_degC
        self.lower_alarm_degC = config.lower_alarm_degC
        self.air_degC = config.room_degC if config.initial_degC is None else config.initial_degC
        self.air_time_s = world.clock.now()
        self.alarms: list[int] = []
        self._set_stack_ambient()

    _STATE = ("mode", "set_point_degC", "upper_alarm_degC", "lower_alarm_degC", "air_degC", "air_time_s", "alarms")

    def restore(self, state: dict) -> None:
        super().restore(state)
        self._set_stack_ambient()

    # --- the thermal model ------------------------------------------------------------------------

    @property
    def target_degC(self) -> float:
        return self.set_point_degC if self.mode in ("CONSTANT", "RUN") else self.config.room_degC

    def air_temperature_at(self, t_s: float) -> float:
        """The air temperature at time t_s (not before the last update), the target held since."""
        decay = math.exp(-(t_s - self.air_time_s) / self.config.time_constant_s)
        return self.target_degC + (self.air_degC - self.target_degC) * decay

    def _advance_air(self) -> None:
        """Carry the air to the clock's now, and hand it to the stack as its ambient."""
        now = self.world.clock.now()
        if now > self.air_time_s:
            self.air_degC = self.air_temperature_at(now)
            self.air_time_s = now
        self._set_stack_ambient()

    def _set_stack_ambient(self) -> None:
        stack = self.world.stack
        if stack.params.ambient_degC != self.air_degC:
            stack.params = stack.params.model_copy(update={"ambient_degC": self.air_degC})

    # --- the serial line ----------------------------------------------------------------------------

    def receive(self, data: bytes) -> bytes:
        """Bytes from the host; every complete line among them is answered in order."""
        self._received += data
        replies = bytearray()
        while (end := self._received.find(TERMINATOR)) >= 0:
            line = bytes(self._received[:end]).decode("ascii", errors="replace").strip()
            del self._received[:end + len(TERMINATOR)]
            reply = self._answer(line)
            if reply is not None:
                replies += reply.encode("ascii") + TERMINATOR
        return bytes(replies)

    def _answer(self, line: str) -> str | None:
        if self.config.address is not None:
            address, comma, line = line.partition(",")
            if not comma or address.strip() != str(self.config.address):
                return None  # for another controller on the bus
        self.world.sync()  # the stack has carried the old ambient up to now
        self._advance_air()
        header, _, argument = line.partition(",")
        handler = self._QUERIES.get(header.strip().upper()) if not argument else None
        if handler is not None:
            return handler(self)
        setting = self._SETTINGS.get(header.strip().upper())
        if setting is None:
            return "NA:CMD ERR"
        refusal = setting(self, argument.strip().upper())
        if refusal is not None:
            return f"NA:{refusal}"
        return f"OK:{line}"

    # --- queries ----------------------------------------------------------------------------------

    def _type(self) -> str:
        sensors = "T,T" if self.config.humidity else "T"
        return f"{sensors},{self.config.controller},{self.config.max_temperature_degC:.1f}"

    def _rom(self) -> str:
        return self.config.firmware

    def _mode(self) -> str:
        return self.mode

    def _monitor(self) -> str:
        humidity = f"{self.config.humidity_pct:.0f}" if self.config.humidity else ""
        return f"{self.air_degC:.1f},{humidity},{self.mode},{len(self.alarms)}"

    def _temp(self) -> str:
        return f"{self.air_degC:.1f},{self.set_point_degC:.1f},{self.upper_alarm_degC:.1f},{self.lower_alarm_degC:.1f}"

    def _humi(self) -> str:
        if not self.config.humidity:
            return "NA:CONT NOT READY-1"
        return f"{self.config.humidity_pct:.0f},OFF,100,0"

    def _alarm(self) -> str:
        return ",".join(str(value) for value in (len(self.alarms), *self.alarms))

    _QUERIES = {"TYPE?": _type, "ROM?": _rom, "MODE?": _mode, "MON?": _monitor, "TEMP?": _temp,
                "HUMI?": _humi, "ALARM?": _alarm}

    # --- settings: each returns None when accepted, else the refusal -------------------------------

    def _set_temp(self, argument: str) -> str | None:
        """`S25.0`, `H100.0`, `L-40.0` or several of them separated by blanks."""
        values: dict[str, float] = {}
        for word in argument.split():
            match = _SETTING_WORD.match(word)
            if match is None or match.group(2) == "OFF" or match.group(1) in values:
                return "PARA ERR"
            values[match.group(1)] = float(match.group(2))
        if not values:
            return "PARA ERR"
        upper = values.get("H", self.upper_alarm_degC)
        lower = values.get("L", self.lower_alarm_degC)
        setpoint = values.get("S", self.set_point_degC)
        if not (lower < upper <= self.config.max_temperature_degC and lower <= setpoint <= upper):
            return "DATA OUT OF RANGE"
        self.upper_alarm_degC, self.lower_alarm_degC, self.set_point_degC = upper, lower, setpoint
        return None

    def _set_mode(self, argument: str) -> str | None:
        if argument.startswith("RUN"):
            return "DATA NOT READY"  # no programs stored
        if argument not in MODES:
            return "PARA ERR"
        self.mode = argument
        return None

    def _set_power(self, argument: str) -> str | None:
        if argument not in ("ON", "OFF"):
            return "PARA ERR"
        self.mode = "CONSTANT" if argument == "ON" else "OFF"
        return None

    _SETTINGS = {"TEMP": _set_temp, "MODE": _set_mode, "POWER": _set_power}
