"""BK Precision 8500-series DC electronic load: 26-byte binary frames over RS-232.

Facts used (shared/reference/instruments.md §5), each checked against the source named
("manual" = BK Precision 8500 Series DC Load User Manual, programming chapter, version
September 2, 2009; "8500B manual" = the 8500B series manual, §12; "sigrok" = libsigrok
src/hardware/itech-it8500/protocol.c, protocol.h, api.c):

* every message either way is one frame of exactly 26 bytes: 0xAA, the address (0x00-0xFE,
  set on the front panel, default 0), the command code, 22 data bytes (unused ones 0), and a
  checksum, the sum of bytes 0-24 modulo 256 (manual p. 45 "Packet structure", p. 46; sigrok's
  itech_it8500_checksum sums the first 25 bytes);
* every command gets exactly one 26-byte reply. A command that returns no data is answered with
  a status frame, code 0x12, status byte at offset 3: 0x80 success, 0x90 checksum incorrect,
  0xA0 parameter incorrect, 0xB0 unrecognized command, 0xC0 invalid command; a query that fails
  gets that status frame instead of its data (manual p. 46 "Status packets", p. 52). A data
  reply repeats the query's command code (sigrok checks it);
* integers are little-endian unsigned, 4 bytes; units: 1 mV, **0.1 mA** (not 1 mA), 1 mW, 1 mOhm
  (manual pp. 52-57: "1 represents 0.1 mA", 3.12 A -> 31200 = 0x79E0; 16.23 V -> 16230;
  213.45 W -> 213450; 8500B manual §12.10: 200.000 Ohm -> 200000; sigrok divides current by 10000);
* mode codes 0 CC, 1 CV, 2 CW, 3 CR (manual p. 54; sigrok);
* 0x5F answers voltage (3-6), current (7-10), power (11-14), the operation state byte (15: bit 2
  remote, bit 3 input on) and the demand state (16-17: bit 0 reverse voltage, 1 OV, 2 OC,
  3 OP, 4 OT, 5 sense wire disconnected, 6-9 CC/CV/CW/CR) (8500B manual §12.29-12.30; sigrok);
* 0x6A answers the model (3-7, ASCII), firmware minor (8) and major (9) and the serial number
  (10-19, ASCII) (manual p. 69; sigrok's scan);
* the max voltage/current/power settings (0x22-0x27) are the load's own limits: above the max
  voltage (by about 5 %) it switches its input off; at the max current it holds the current there
  (OC state, input stays on); set values above the max power are limited to it; each max value
  goes up to the model's rating (manual p. 41 "Over Voltage/Over Current protection").

The load has no error queue: every command's status is checked as it is answered, and
check_errors reads the protection flags of the demand state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Callable

from stackcycler.errors import InstrumentError, InstrumentLinkError, InvalidInput

from .roles import LOAD_MODES, BenchSetting, ElectronicLoad, LoadMode, LoadRatings
from .transport import ByteTransport

# --- the frame (manual p. 45) -----------------------------------------------------------------

FRAME_LENGTH = 26
DATA_LENGTH = 22  # bytes 3-24
START_BYTE = 0xAA
MAX_ADDRESS = 0xFE  # 0xFF is the IT8500+ broadcast address, not one a load can have
BAUD_RATES = (4800, 9600, 19200, 38400)  # manual p. 45

# --- status frames (manual p. 46) -------------------------------------------------------------

STATUS_REPLY = 0x12
STATUS_OK = 0x80
STATUS_CHECKSUM_INCORRECT = 0x90
STATUS_PARAMETER_INCORRECT = 0xA0
STATUS_UNRECOGNIZED_COMMAND = 0xB0
STATUS_INVALID_COMMAND = 0xC0
STATUS_MEANINGS = {
    STATUS_OK: "command was successful",
    STATUS_CHECKSUM_INCORRECT: "checksum incorrect",
    STATUS_PARAMETER_INCORRECT: "parameter incorrect",
    STATUS_UNRECOGNIZED_COMMAND: "unrecognized command",
    STATUS_INVALID_COMMAND: "invalid command",
}


class Code(IntEnum):
    """The command codes this driver uses (manual pp. 49-51, command summary)."""

    REMOTE = 0x20  # u8: 1 remote, 0 front panel
    INPUT = 0x21  # u8: 1 on, 0 off
    SET_MAX_VOLTAGE = 0x22
    READ_MAX_VOLTAGE = 0x23
    SET_MAX_CURRENT = 0x24
    READ_MAX_CURRENT = 0x25
    SET_MAX_POWER = 0x26
    READ_MAX_POWER = 0x27
    SET_MODE = 0x28  # u8: MODE_CODES
    READ_MODE = 0x29
    SET_CC_CURRENT = 0x2A
    READ_CC_CURRENT = 0x2B
    SET_CV_VOLTAGE = 0x2C
    READ_CV_VOLTAGE = 0x2D
    SET_CW_POWER = 0x2E
    READ_CW_POWER = 0x2F
    SET_CR_RESISTANCE = 0x30
    READ_CR_RESISTANCE = 0x31
    READ_INPUT = 0x5F  # voltage, current, power, operation and demand state
    PRODUCT_INFO = 0x6A  # model, firmware, serial number


def describe(code: int) -> str:
    """'0x2A (SET_CC_CURRENT)' for a code this driver knows, '0x99' otherwise."""
    try:
        return f"0x{code:02X} ({Code(code).name})"
    except ValueError:
        return f"0x{code:02X}"


# Native mode numbers (manual p. 54). The load calls constant power "CW".
MODE_CODES: dict[LoadMode, int] = {"CC": 0, "CV": 1, "CP": 2, "CR": 3}
MODES_BY_CODE: dict[int, LoadMode] = {code: mode for mode, code in MODE_CODES.items()}

# Counts per SI unit on the wire (manual pp. 52-57).
COUNTS_PER_V = 1000  # 1 mV
COUNTS_PER_A = 10000  # 0.1 mA
COUNTS_PER_W = 1000  # 1 mW
COUNTS_PER_OHM = 1000  # 1 mOhm
U32_MAX = 0xFFFFFFFF

# Operation state byte (offset 15 of the 0x5F reply) and demand state word (16-17).
OPERATION_REMOTE = 1 << 2
OPERATION_INPUT_ON = 1 << 3
OPERATION_REMOTE_SENSE = 1 << 5
DEMAND_REVERSE_VOLTAGE = 1 << 0
DEMAND_OVER_VOLTAGE = 1 << 1
DEMAND_OVER_CURRENT = 1 << 2
DEMAND_OVER_POWER = 1 << 3
DEMAND_OVER_TEMPERATURE = 1 << 4
DEMAND_FAULTS = {  # the flags check_errors reports
    DEMAND_REVERSE_VOLTAGE: "reverse voltage at the input",
    DEMAND_OVER_VOLTAGE: "over-voltage (input switched off)",
    DEMAND_OVER_CURRENT: "over-current (current held at the max current setting)",
    DEMAND_OVER_POWER: "over-power (power held at the max power setting)",
    DEMAND_OVER_TEMPERATURE: "over-temperature",
}
DEMAND_SENSE_DISCONNECTED = 1 << 5
DEMAND_MODE_BITS: dict[LoadMode, int] = {"CC": 1 << 6, "CV": 1 << 7, "CP": 1 << 8, "CR": 1 << 9}

# Ratings by the model name the load reports in 0x6A. Voltage, current and power from the
# manual's specification tables (8500: 0-120 V, 1 mA-30 A, 300 W; 8502: 0-500 V, 1 mA-15 A,
# 300 W). The max settings go up to the rating (manual p. 41). [uncertain] the CR range: the
# 8500B datasheet gives 0.05 Ohm to 7.5 kOhm; 0.1 Ohm is BK's lower bound for the 85xx list mode.
# [uncertain] the exact text of the 0x6A model field (taken as '8500' padded with NULs or blanks).
# The other models of the series (8510 ... 8526) are left out until their ratings are checked.
MODEL_RATINGS: dict[str, LoadRatings] = {
    "8500": LoadRatings(voltage_V=120.0, current_A=30.0, power_W=300.0, max_over_voltage_V=120.0,
                        max_over_current_A=30.0, min_resistance_ohm=0.1, max_resistance_ohm=7500.0),
    "8502": LoadRatings(voltage_V=500.0, current_A=15.0, power_W=300.0, max_over_voltage_V=500.0,
                        max_over_current_A=15.0, min_resistance_ohm=0.1, max_resistance_ohm=7500.0),
}


# --- encoding and decoding ----------------------------------------------------------------------


class FrameError(ValueError):
    """Bytes that are not a well-formed frame; the message says what is wrong."""


def checksum(frame: bytes) -> int:
    """Sum of bytes 0-24 modulo 256 (manual p. 46)."""
    return sum(frame[:FRAME_LENGTH - 1]) % 256


def u8(value: int) -> bytes:
    return bytes([value])


def u32(counts: int) -> bytes:
    if not 0 <= counts <= U32_MAX:
        raise ValueError(f"{counts} does not fit an unsigned 32-bit field")
    return counts.to_bytes(4, "little")


def read_u32(data: bytes, offset: int = 0) -> int:
    return int.from_bytes(data[offset:offset + 4], "little")


def encode_frame(command: int, data: bytes = b"", address: int = 0) -> bytes:
    if len(data) > DATA_LENGTH:
        raise ValueError(f"{len(data)} data bytes; a frame holds {DATA_LENGTH}")
    if not (0 <= address <= 0xFF and 0 <= command <= 0xFF):
        raise ValueError(f"address {address} and command {command} must be bytes")
    body = bytes([START_BYTE, address, command]) + data.ljust(DATA_LENGTH, b"\x00")
    return body + u8(checksum(body))


@dataclass(frozen=True)
class Frame:
    address: int
    command: int
    data: bytes  # the 22 data bytes (frame bytes 3-24)

    @property
    def status(self) -> int | None:
        """The status byte of a status frame; None for a data frame."""
        return self.data[0] if self.command == STATUS_REPLY else None


def decode_frame(raw: bytes) -> Frame:
    """Check length, start byte and checksum; FrameError naming the first thing that is wrong."""
    if len(raw) != FRAME_LENGTH:
        raise FrameError(f"{len(raw)} bytes, a frame has {FRAME_LENGTH}")
    if raw[0] != START_BYTE:
        raise FrameError(f"start byte 0x{raw[0]:02X}, expected 0x{START_BYTE:02X}")
    if raw[-1] != checksum(raw):
        raise FrameError(f"checksum 0x{raw[-1]:02X}, the bytes sum to 0x{checksum(raw):02X}")
    return Frame(address=raw[1], command=raw[2], data=bytes(raw[3:FRAME_LENGTH - 1]))


@dataclass(frozen=True)
class InputState:
    """The 0x5F reply: what the load measures at its input and its state registers."""

    voltage_V: float
    current_A: float  # the current it sinks, as the load reports it (never negative)
    power_W: float
    operation: int
    demand: int

    @classmethod
    def from_data(cls, data: bytes) -> "InputState":
        return cls(voltage_V=read_u32(data, 0) / COUNTS_PER_V, current_A=read_u32(data, 4) / COUNTS_PER_A,
                   power_W=read_u32(data, 8) / COUNTS_PER_W, operation=data[12],
                   demand=int.from_bytes(data[13:15], "little"))

    @property
    def input_on(self) -> bool:
        return bool(self.operation & OPERATION_INPUT_ON)

    @property
    def remote(self) -> bool:
        return bool(self.operation & OPERATION_REMOTE)

    @property
    def mode(self) -> LoadMode | None:
        modes = [mode for mode, bit in DEMAND_MODE_BITS.items() if self.demand & bit]
        return modes[0] if len(modes) == 1 else None

    def faults(self) -> list[str]:
        faults = [text for bit, text in DEMAND_FAULTS.items() if self.demand & bit]
        if self.operation & OPERATION_REMOTE_SENSE and self.demand & DEMAND_SENSE_DISCONNECTED:
            faults.append("remote sense wires disconnected")
        return faults


# --- declarative set values -------------------------------------------------------------------


class Register:
    """One 4-byte set value: `load.cc_current_A = 1.5` checks the range, then sends the set frame;
    reading `load.cc_current_A` sends the read frame. `limits(driver)` gives the allowed (low, high)."""

    def __init__(self, set_code: Code, read_code: Code, doc: str, counts_per_unit: int,
                 limits: Callable[["Bk8500"], tuple[float, float]]):
        self.set_code = set_code
        self.read_code = read_code
        self.counts_per_unit = counts_per_unit
        self.limits = limits
        self.__doc__ = doc
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, driver: "Bk8500 | None", owner: type) -> Any:
        if driver is None:
            return self
        return read_u32(driver.query(self.read_code)) / self.counts_per_unit

    def __set__(self, driver: "Bk8500", value: float) -> None:
        self.check(driver, value)
        driver.command(self.set_code, u32(self.counts(value)))
        driver.register_was_set(self.name, value)

    def counts(self, value: float) -> int:
        return round(value * self.counts_per_unit)

    def check(self, driver: "Bk8500", value: float) -> None:
        low, high = self.limits(driver)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high):
            raise InvalidInput(f"{driver.FRIENDLY_NAME} at {driver.resource}: {self.name} = {value!r} is outside "
                               f"the range {low:g} to {high:g} (model rating and max setting); nothing was sent")


def _up_to_rating(rating: str) -> Callable[["Bk8500"], tuple[float, float]]:
    return lambda driver: (0.0, getattr(driver.ratings, rating))


def _up_to_max_setting(rating: str, max_setting: str) -> Callable[["Bk8500"], tuple[float, float]]:
    # Above its max setting the load limits or refuses a set value (manual p. 41): refused here.
    return lambda driver: (0.0, min(getattr(driver.ratings, rating), driver.max_settings[max_setting]))


class Bk8500(ElectronicLoad):
    FRIENDLY_NAME = "BK Precision 8500"
    BYTE_PROTOCOL = True  # opened on a ByteTransport (open_byte_transport), not a MessageTransport
    BENCH_SETTINGS = {
        "address": BenchSetting("the load's address, set on its front panel (default 0)", range(MAX_ADDRESS + 1)),
        "baud_rate": BenchSetting("the serial line's baud rate, as set on the load (default 9600)",
                                  BAUD_RATES, transport=True),
    }

    max_voltage_V = Register(Code.SET_MAX_VOLTAGE, Code.READ_MAX_VOLTAGE,
                             "max voltage: the input switches off about 5 % above it", COUNTS_PER_V,
                             _up_to_rating("max_over_voltage_V"))
    max_current_A = Register(Code.SET_MAX_CURRENT, Code.READ_MAX_CURRENT,
                             "max current: the load holds the current there", COUNTS_PER_A,
                             _up_to_rating("max_over_current_A"))
    max_power_W = Register(Code.SET_MAX_POWER, Code.READ_MAX_POWER, "max power", COUNTS_PER_W,
                           _up_to_rating("power_W"))
    cc_current_A = Register(Code.SET_CC_CURRENT, Code.READ_CC_CURRENT, "CC set value", COUNTS_PER_A,
                            _up_to_max_setting("current_A", "max_current_A"))
    cv_voltage_V = Register(Code.SET_CV_VOLTAGE, Code.READ_CV_VOLTAGE, "CV set value", COUNTS_PER_V,
                            _up_to_max_setting("voltage_V", "max_voltage_V"))
    cw_power_W = Register(Code.SET_CW_POWER, Code.READ_CW_POWER, "CW (constant power) set value", COUNTS_PER_W,
                          _up_to_max_setting("power_W", "max_power_W"))
    cr_resistance_ohm = Register(Code.SET_CR_RESISTANCE, Code.READ_CR_RESISTANCE, "CR set value", COUNTS_PER_OHM,
                                 lambda driver: (driver.ratings.min_resistance_ohm, driver.ratings.max_resistance_ohm))

    MODE_REGISTERS: dict[LoadMode, str] = {"CC": "cc_current_A", "CV": "cv_voltage_V",
                                           "CP": "cw_power_W", "CR": "cr_resistance_ohm"}
    MAX_SETTINGS = ("max_voltage_V", "max_current_A", "max_power_W")

    def __init__(self, transport: ByteTransport, address: int = 0):
        if not 0 <= address <= MAX_ADDRESS:
            raise InvalidInput(f"{self.FRIENDLY_NAME} at {transport.resource}: address {address} is not "
                               f"0 to {MAX_ADDRESS} (set on the load's front panel)")
        self.transport = transport
        self.address = address
        self.identity = ""
        self.model = ""
        self.serial_number = ""
        self.firmware = ""
        self._ratings: LoadRatings | None = None
        self.max_settings: dict[str, float] = {}  # the load's max settings, as read at connect or set since
        self._setpoints: dict[str, float] = {}  # set values sent since the last safe state
        self._mode: LoadMode | None = None  # the mode sent since the last safe state
        self._input_on = False  # as last commanded

    @property
    def resource(self) -> str:
        return self.transport.resource

    # --- one exchange: a command frame out, its one reply frame back ---------------------------

    def exchange(self, command: int, data: bytes = b"") -> Frame:
        """Send one frame, read its one reply and check every field of it."""
        where = f"{self.FRIENDLY_NAME} at {self.resource}"
        self.transport.discard_input()  # a late reply to an earlier, failed exchange must not be taken for this one
        self.transport.write(encode_frame(command, data, self.address))
        raw = self.transport.read(FRAME_LENGTH)
        try:
            reply = decode_frame(raw)
        except FrameError as error:
            raise InstrumentError(f"{where}: garbled reply to {describe(command)}: {error} "
                                  f"(received {raw.hex(' ')})") from None
        if reply.address != self.address:
            raise InstrumentError(f"{where}: reply to {describe(command)} came from address {reply.address}, "
                                  f"expected {self.address}")
        if reply.command == STATUS_REPLY:
            if reply.status != STATUS_OK:
                meaning = STATUS_MEANINGS.get(reply.status, "undocumented status")
                raise InstrumentError(f"{where} refused {describe(command)}: status 0x{reply.status:02X} ({meaning})")
        elif reply.command != command:
            raise InstrumentError(f"{where}: reply to {describe(command)} carries command {describe(reply.command)}")
        return reply

    def command(self, command: int, data: bytes = b"") -> None:
        """A command that returns no data: success is a status frame with 0x80."""
        if self.exchange(command, data).command != STATUS_REPLY:
            raise InstrumentError(f"{self.FRIENDLY_NAME} at {self.resource}: {describe(command)} was answered "
                                  "with data, expected a status frame")

    def query(self, command: int) -> bytes:
        """A command that returns data: its 22 data bytes."""
        reply = self.exchange(command)
        if reply.command == STATUS_REPLY:
            raise InstrumentError(f"{self.FRIENDLY_NAME} at {self.resource}: {describe(command)} was answered "
                                  "with a success status and no data")
        return reply.data

    def register_was_set(self, name: str, value: float) -> None:
        if name in self.MAX_SETTINGS:
            self.max_settings[name] = value

    # --- the role ---------------------------------------------------------------------------------

    @property
    def ratings(self) -> LoadRatings:
        if self._ratings is None:
            raise InstrumentError(f"{self.FRIENDLY_NAME} at {self.resource}: not connected")
        return self._ratings

    def read_product_info(self) -> tuple[str, str, str]:
        """(model, serial number, firmware 'major.minor') from 0x6A."""
        data = self.query(Code.PRODUCT_INFO)
        model = data[0:5].decode("ascii", errors="replace").strip("\x00 ")
        serial = data[7:17].decode("ascii", errors="replace").strip("\x00 ")
        firmware = f"{data[6]:x}.{data[5]:02x}"  # sigrok prints it so, e.g. 1.84
        return model, serial, firmware

    def connect(self) -> str:
        self.model, self.serial_number, self.firmware = self.read_product_info()
        if self.model not in MODEL_RATINGS:
            raise InstrumentError(f"{self.resource}: the load reports model {self.model!r}; this driver knows the "
                                  f"ratings of models {', '.join(MODEL_RATINGS)} (add the model's ratings to "
                                  "MODEL_RATINGS in drivers/bk8500.py)")
        self._ratings = MODEL_RATINGS[self.model]
        self.identity = f"B&K Precision,{self.model},{self.serial_number},{self.firmware}"
        self.command(Code.REMOTE, u8(1))
        state = self.read_input()
        if not state.remote:
            raise InstrumentError(f"{self.resource}: remote control not granted (the 0x5F state shows local "
                                  "operation after the remote command)")
        self.input_found_on = state.input_on  # after a host crash it may still be on: worth knowing
        self.set_input(False)
        self._setpoints.clear()
        self._mode = None
        self.max_settings = {name: getattr(self, name) for name in self.MAX_SETTINGS}
        return self.identity

    def set_protection(self, over_voltage_V: float, over_current_A: float) -> None:
        """The load's max voltage (input off ~5 % above it) and max current (held there)."""
        cls = type(self)
        cls.max_voltage_V.check(self, over_voltage_V)  # both checked before either is sent
        cls.max_current_A.check(self, over_current_A)
        self.max_voltage_V = over_voltage_V
        self.max_current_A = over_current_A

    def set_mode(self, mode: LoadMode, value: float) -> None:
        """The mode's set value first, then the mode (so the new mode starts at its new value);
        unchanged ones are not resent."""
        if mode not in MODE_CODES:
            raise InvalidInput(f"{self.FRIENDLY_NAME} at {self.resource}: mode {mode!r} is not one of "
                               f"{', '.join(LOAD_MODES)}")
        name = self.MODE_REGISTERS[mode]
        getattr(type(self), name).check(self, value)
        if self._setpoints.get(name) != value:
            setattr(self, name, value)
            self._setpoints[name] = value
        if self._mode != mode:
            self.command(Code.SET_MODE, u8(MODE_CODES[mode]))
            self._mode = mode
            # Selecting another mode while the input is on switches the input off on the 8500B
            # (8500B manual §6.1) and from the 8500's front panel (manual p. 28); [uncertain] over
            # the serial link on an 8500. Switching it on again keeps what the caller asked for.
            if self._input_on:
                self.set_input(True)

    def set_input(self, on: bool) -> None:
        self.command(Code.INPUT, u8(1 if on else 0))
        self._input_on = on

    def read_mode(self) -> LoadMode:
        code = self.query(Code.READ_MODE)[0]
        if code not in MODES_BY_CODE:
            raise InstrumentError(f"{self.FRIENDLY_NAME} at {self.resource}: unknown mode code {code}")
        return MODES_BY_CODE[code]

    def read_input(self) -> InputState:
        return InputState.from_data(self.query(Code.READ_INPUT))

    def input_is_on(self) -> bool:
        return self.read_input().input_on

    def measure(self) -> tuple[float, float]:
        state = self.read_input()
        return state.voltage_V, -state.current_A  # the load sinks: current out of the DUT is negative

    def check_errors(self) -> None:
        state = self.read_input()
        problems = state.faults()
        if not state.remote:
            problems.append("remote control lost (front-panel Local key?)")
        if problems:
            raise InstrumentError(f"{self.FRIENDLY_NAME} at {self.resource} reports {'; '.join(problems)}")

    def safe_state(self) -> None:
        self._setpoints.clear()
        self._mode = None
        self._input_on = False
        refused: InstrumentError | None = None
        try:
            self.command(Code.INPUT, u8(0))
        except InstrumentLinkError:
            raise
        except InstrumentError as error:  # refused or garbled: the read-back decides
            refused = error
        if self.read_input().input_on:
            raise InstrumentError(f"{self.resource}: input still on after the input-off command"
                                  + (f" ({refused})" if refused else ""))

    def close(self) -> None:
        try:
            self.command(Code.REMOTE, u8(0))
        finally:
            self.transport.close()
