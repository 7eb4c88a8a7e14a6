"""Simulated BK Precision 8500-series DC electronic load, speaking the load's 26-byte binary frames.

The frame, the status codes, the units and the reply layouts are the real load's (see
drivers/bk8500.py for the manual pages; the frame encoding and the model ratings are shared
with the driver from there, and pinned by tests against the manual's worked frames).

What it does to the DUT, a Thevenin source `emf` behind `R` (the stack), with the input on:
* CC sinks the set current; CV sinks (emf - V_set) / R, nothing if the DUT is below V_set (a load
  cannot source); CR sinks emf / (R + R_set), that is V / R_set; CP sinks the smaller current
  that takes P_set at the terminals, I (emf - I R) = P_set;
* never more than the DUT can give (emf / R, its short-circuit current; a real load stops
  regulating a little earlier, at its minimum operating voltage, which is not modelled);
* at the max current setting the current is held there (OC flag) and at the max power setting
  the power is (OP flag), the input stays on (manual p. 41 for OC; [uncertain] for OP, whose text
  is cut off in the copy read); above the max voltage by 5 % the input switches off and the OV
  flag holds until the input is switched on again (manual p. 41). The real load also reverts
  CR or CW to CC at the max current; this one keeps the mode;
* with the input off, or a reversed DUT (RV flag), it sinks nothing.

Emulator choices where the manual is silent, each [uncertain]:
* a setting (any command but the reads) sent while the load is under front-panel control is
  refused with status 0xC0 "invalid command";
* a set value beyond the model's rating or the load's max setting is refused with 0xA0
  "parameter incorrect" (the front panel clamps it, manual p. 41);
* selecting another mode while the input is on switches the input off (as the front panel does,
  manual p. 28, and the 8500B, its manual §6.1);
* a frame for another address gets no reply; bytes before a start byte are dropped;
* the calibration commands (0x60-0x69) are refused with 0xC0; every command it does not
  implement (transients, lists, battery test, timers, ...) with 0xB0 "unrecognized command",
  although a real load knows them.
"""

from __future__ import annotations

import math
from typing import Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..bk8500 import (COUNTS_PER_A, COUNTS_PER_OHM, COUNTS_PER_V, COUNTS_PER_W, DEMAND_MODE_BITS,
                      DEMAND_OVER_CURRENT, DEMAND_OVER_POWER, DEMAND_OVER_VOLTAGE, DEMAND_REVERSE_VOLTAGE, FRAME_LENGTH,
                      MODE_CODES, MODEL_RATINGS, MODES_BY_CODE, OPERATION_INPUT_ON, OPERATION_REMOTE, START_BYTE,
                      STATUS_CHECKSUM_INCORRECT, STATUS_INVALID_COMMAND, STATUS_OK, STATUS_PARAMETER_INCORRECT,
                      STATUS_REPLY, STATUS_UNRECOGNIZED_COMMAND, U32_MAX, Code, checksum, encode_frame, read_u32,
                      u8, u32)
from ..roles import LoadMode, LoadRatings
from .world import KeepsSettings, SimWorld

BROADCAST_ADDRESS = 0xFF  # IT8500+ broadcast, answered by any address (sigrok probes with it)
CALIBRATION_CODES = range(0x60, 0x6A)
OVER_VOLTAGE_MARGIN = 1.05  # the input switches off ~5 % above the max voltage (manual p. 41)


class Bk8500SimConfig(BaseModel):
    """The simulated load (`simulation.instruments.<name>`): its model, address and measurement noise."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    kind: Literal["bk-8500"] = "bk-8500"
    stack: str = Field("main", description="the simulated stack its input is wired to")
    model: str = Field("8500", description="model as 0x6A reports it; its ratings are the manual's")
    serial: str = Field("8500000042", max_length=10, pattern=r"^[\x20-\x7e]*$")
    firmware: str = Field("1.84", pattern=r"^[0-9]{1,2}\.[0-9]{2}$", description="major.minor")
    address: int = Field(0, ge=0, le=0xFE, description="front-panel address")
    voltage_noise_V: float = Field(0.002, ge=0)
    current_noise_A: float = Field(0.0005, ge=0)

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in MODEL_RATINGS:
            raise ValueError(f"model {value!r}: simulated models are {', '.join(MODEL_RATINGS)}")
        return value

    @property
    def ratings(self) -> LoadRatings:
        return MODEL_RATINGS[self.model]


class _Refused(Exception):
    def __init__(self, status: int):
        self.status = status


def current_for_power(emf_V: float, resistance_ohm: float, power_W: float) -> float:
    """The smaller current I with I (emf - I R) = P; past the source's maximum power, the current
    of that maximum (emf / 2R): the load cannot get more."""
    discriminant = emf_V**2 - 4.0 * resistance_ohm * power_W
    if discriminant < 0:
        return emf_V / (2.0 * resistance_ohm)
    return 2.0 * power_W / (emf_V + math.sqrt(discriminant))  # = (emf - sqrt(disc)) / 2R, without cancellation


_Handler = Callable[["SimBk8500", bytes], "bytes | None"]
_COMMANDS: dict[int, tuple[_Handler, bool]] = {}


def _frame_command(code: Code, setting: bool):
    """Declare a handler: it gets the 22 data bytes and returns reply data, or None for a 0x80 status."""

    def register(handler: _Handler) -> _Handler:
        _COMMANDS[code] = (handler, setting)
        return handler

    return register


class SimBk8500(KeepsSettings):
    def __init__(self, world: SimWorld, name: str, config: Bk8500SimConfig):
        self.world = world
        self.name = name
        self.config = config
        self.ratings = config.ratings
        self._rng = world.noise_rng(name)
        self._received = bytearray()
        self.remote = False
        self.reset()
        world.connect(self)

    def reset(self) -> None:
        r = self.ratings
        self.input_on = False
        self.mode: LoadMode = "CC"
        self.cc_A = 0.0
        self.cv_V = r.voltage_V
        self.cw_W = 0.0
        self.cr_ohm = r.max_resistance_ohm
        self.max_V = r.max_over_voltage_V
        self.max_A = r.max_over_current_A
        self.max_W = r.power_W
        self.latched = 0  # demand flags that hold until the input is switched on again (OV)
        self.limiting = 0  # demand flags of the present operating point (RV, OC, OP)
        self.sink_A = 0.0  # the current it sinks at the present operating point

    _STATE = ("remote", "input_on", "mode", "cc_A", "cv_V", "cw_W", "cr_ohm", "max_V", "max_A", "max_W", "latched")

    # --- physics: what the load does to the DUT -------------------------------------------------

    def current_into_dut(self, emf_V: float, resistance_ohm: float) -> float:
        sink, flags = self._operating_point(emf_V, resistance_ohm)
        if self.input_on and emf_V - sink * resistance_ohm > self.max_V * OVER_VOLTAGE_MARGIN:
            self.input_on = False
            self.latched |= DEMAND_OVER_VOLTAGE
            sink, flags = 0.0, 0
        self.sink_A, self.limiting = sink, flags
        return -sink  # + = into the DUT: a load only takes current out

    def _operating_point(self, emf_V: float, resistance_ohm: float) -> tuple[float, int]:
        if emf_V < 0:
            return 0.0, DEMAND_REVERSE_VOLTAGE
        if not self.input_on or emf_V == 0:
            return 0.0, 0
        r = max(resistance_ohm, 1e-9)
        if self.mode == "CC":
            sink = self.cc_A
        elif self.mode == "CV":
            sink = max(emf_V - self.cv_V, 0.0) / r
        elif self.mode == "CR":
            sink = emf_V / (r + self.cr_ohm)
        else:
            sink = current_for_power(emf_V, r, self.cw_W)
        sink = min(sink, emf_V / r)
        flags = 0
        current_limit = min(self.max_A, self.ratings.current_A)
        if sink > current_limit:
            sink, flags = current_limit, flags | DEMAND_OVER_CURRENT
        power_limit = min(self.max_W, self.ratings.power_W)
        if sink * (emf_V - sink * r) > power_limit:
            sink, flags = current_for_power(emf_V, r, power_limit), flags | DEMAND_OVER_POWER
        return sink, flags

    # --- the serial line --------------------------------------------------------------------------

    def receive(self, data: bytes) -> bytes:
        """Bytes from the host; every complete frame among them is answered in order."""
        self._received += data
        replies = bytearray()
        while True:
            start = self._received.find(START_BYTE)
            if start < 0:
                self._received.clear()
                break
            del self._received[:start]
            if len(self._received) < FRAME_LENGTH:
                break
            frame = bytes(self._received[:FRAME_LENGTH])
            del self._received[:FRAME_LENGTH]
            replies += self._answer(frame)
        return bytes(replies)

    def _status(self, status: int) -> bytes:
        return encode_frame(STATUS_REPLY, u8(status), self.config.address)

    def _answer(self, frame: bytes) -> bytes:
        if frame[1] not in (self.config.address, BROADCAST_ADDRESS):
            return b""  # for another load on the bus
        self.world.sync()  # the stack has carried the old settings up to now
        if frame[-1] != checksum(frame):
            return self._status(STATUS_CHECKSUM_INCORRECT)
        command, data = frame[2], frame[3:FRAME_LENGTH - 1]
        if command in CALIBRATION_CODES:
            return self._status(STATUS_INVALID_COMMAND)
        if command not in _COMMANDS:
            return self._status(STATUS_UNRECOGNIZED_COMMAND)
        handler, setting = _COMMANDS[command]
        try:
            if setting and not self.remote and command != Code.REMOTE:
                raise _Refused(STATUS_INVALID_COMMAND)
            reply = handler(self, data)
        except _Refused as refused:
            return self._status(refused.status)
        if setting:
            self.world.settings_changed()  # the current settles to the new settings at the next sync
        return self._status(STATUS_OK) if reply is None else encode_frame(command, reply, self.config.address)

    # --- commands -----------------------------------------------------------------------------------

    @staticmethod
    def _flag(data: bytes) -> bool:
        if data[0] not in (0, 1):
            raise _Refused(STATUS_PARAMETER_INCORRECT)
        return data[0] == 1

    @staticmethod
    def _value(data: bytes, counts_per_unit: int, low: float, high: float) -> float:
        value = read_u32(data) / counts_per_unit
        if not low <= value <= high:
            raise _Refused(STATUS_PARAMETER_INCORRECT)
        return value

    @staticmethod
    def _counts(value: float, counts_per_unit: int) -> bytes:
        return u32(min(max(round(value * counts_per_unit), 0), U32_MAX))

    @_frame_command(Code.REMOTE, setting=True)
    def _remote(self, data):
        self.remote = self._flag(data)

    @_frame_command(Code.INPUT, setting=True)
    def _input(self, data):
        on = self._flag(data)
        if on:
            self.latched = 0  # switching on again clears a protection state
        self.input_on = on

    @_frame_command(Code.SET_MAX_VOLTAGE, setting=True)
    def _set_max_voltage(self, data):
        self.max_V = self._value(data, COUNTS_PER_V, 0.0, self.ratings.max_over_voltage_V)

    @_frame_command(Code.READ_MAX_VOLTAGE, setting=False)
    def _read_max_voltage(self, data):
        return self._counts(self.max_V, COUNTS_PER_V)

    @_frame_command(Code.SET_MAX_CURRENT, setting=True)
    def _set_max_current(self, data):
        self.max_A = self._value(data, COUNTS_PER_A, 0.0, self.ratings.max_over_current_A)

    @_frame_command(Code.READ_MAX_CURRENT, setting=False)
    def _read_max_current(self, data):
        return self._counts(self.max_A, COUNTS_PER_A)

    @_frame_command(Code.SET_MAX_POWER, setting=True)
    def _set_max_power(self, data):
        self.max_W = self._value(data, COUNTS_PER_W, 0.0, self.ratings.power_W)

    @_frame_command(Code.READ_MAX_POWER, setting=False)
    def _read_max_power(self, data):
        return self._counts(self.max_W, COUNTS_PER_W)

    @_frame_command(Code.SET_MODE, setting=True)
    def _set_mode(self, data):
        if data[0] not in MODES_BY_CODE:
            raise _Refused(STATUS_PARAMETER_INCORRECT)
        mode = MODES_BY_CODE[data[0]]
        if mode != self.mode:
            self.input_on = False
        self.mode = mode

    @_frame_command(Code.READ_MODE, setting=False)
    def _read_mode(self, data):
        return u8(MODE_CODES[self.mode])

    @_frame_command(Code.SET_CC_CURRENT, setting=True)
    def _set_cc(self, data):
        self.cc_A = self._value(data, COUNTS_PER_A, 0.0, min(self.ratings.current_A, self.max_A))

    @_frame_command(Code.READ_CC_CURRENT, setting=False)
    def _read_cc(self, data):
        return self._counts(self.cc_A, COUNTS_PER_A)

    @_frame_command(Code.SET_CV_VOLTAGE, setting=True)
    def _set_cv(self, data):
        self.cv_V = self._value(data, COUNTS_PER_V, 0.0, min(self.ratings.voltage_V, self.max_V))

    @_frame_command(Code.READ_CV_VOLTAGE, setting=False)
    def _read_cv(self, data):
        return self._counts(self.cv_V, COUNTS_PER_V)

    @_frame_command(Code.SET_CW_POWER, setting=True)
    def _set_cw(self, data):
        self.cw_W = self._value(data, COUNTS_PER_W, 0.0, min(self.ratings.power_W, self.max_W))

    @_frame_command(Code.READ_CW_POWER, setting=False)
    def _read_cw(self, data):
        return self._counts(self.cw_W, COUNTS_PER_W)

    @_frame_command(Code.SET_CR_RESISTANCE, setting=True)
    def _set_cr(self, data):
        self.cr_ohm = self._value(data, COUNTS_PER_OHM, self.ratings.min_resistance_ohm,
                                  self.ratings.max_resistance_ohm)

    @_frame_command(Code.READ_CR_RESISTANCE, setting=False)
    def _read_cr(self, data):
        return self._counts(self.cr_ohm, COUNTS_PER_OHM)

    @_frame_command(Code.READ_INPUT, setting=False)
    def _read_input(self, data):
        c = self.config
        volts = self.world.stack.terminal_voltage_V() + c.voltage_noise_V * self._rng.standard_normal()
        amps = self.sink_A + c.current_noise_A * self._rng.standard_normal()
        volts, amps = max(volts, 0.0), max(amps, 0.0)  # unsigned on the wire
        operation = (OPERATION_REMOTE if self.remote else 0) | (OPERATION_INPUT_ON if self.input_on else 0)
        demand = self.latched | self.limiting | DEMAND_MODE_BITS[self.mode]
        return (self._counts(volts, COUNTS_PER_V) + self._counts(amps, COUNTS_PER_A)
                + self._counts(volts * amps, COUNTS_PER_W) + u8(operation) + demand.to_bytes(2, "little"))

    @_frame_command(Code.PRODUCT_INFO, setting=False)
    def _product_info(self, data):
        c = self.config
        major, minor = c.firmware.split(".")
        return (c.model.encode("ascii").ljust(5, b"\x00") + u8(int(minor, 16)) + u8(int(major, 16))
                + c.serial.encode("ascii").ljust(10, b"\x00"))
