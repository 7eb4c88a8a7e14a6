"""ESPEC environmental chambers (P-300 and SCP-220 controllers, and the SH-series bench-top
chambers that speak the same set): ESPEC's ASCII command set on an RS-232 or RS-485 line.

Why ESPEC, of the chambers in shared/reference/instruments.md §7c: its protocol is the best
documented. ESPEC North America publishes the library it drives its own controllers with
(ChamberConnectLibrary, "CCL" below: `especinteract.py` for the line and its error texts,
`p300.py` for every command and reply: [confirmed] in the reference), and a second, independent
driver for an SH-641 agrees with it (akaeba/ATWG `sh641.py`, "ATWG", [secondary]). Binder's MK53
register map comes from one third-party driver, the TestEquity/Watlow F4T from one unverified
one. It is also plain text lines, readable on a terminal when a bench misbehaves.

Facts used:
* 9600 baud, 8 data bits, no parity, one stop bit (CCL's defaults); every message either way
  ends in CR LF (CCL, ATWG); on RS-485 a message starts with the chamber's address and a comma,
  `1,TEMP?` (CCL EspecSerial.interact);
* a refused command is answered `NA:<reason>`, e.g. `NA:CMD ERR`, `NA:PARA ERR`,
  `NA:DATA OUT OF RANGE`, `NA:PROTECT ON` (CCL's ERROR_DESCIPTIONS, the meanings below);
* a setting is answered `OK:` and the command as received, `OK:TEMP,S25` (ATWG [uncertain]);
  the driver takes any reply that starts with `OK` as accepted;
* `TYPE?` -> `T,S2,160.0`: dry-bulb sensor, controller, highest temperature; with a wet-bulb
  sensor (humidity) `T,T,S2,160.0` (CCL read_type; ATWG's SH-641 answers the latter);
* `ROM?` -> the controller's firmware version (CCL read_rom; its format [uncertain]);
* `MON?` -> `temperature,humidity,mode,alarms`, the humidity empty without a humidity sensor:
  `23.0,,CONSTANT,0` (CCL read_mon);
* `TEMP?` -> `measured,set-point,upper alarm,lower alarm`: `23.5,25.0,100.0,-50.0` (CCL read_temp);
* `MODE?` -> OFF, STANDBY, CONSTANT or RUN (CCL read_mode);
* `ALARM?` -> the number of alarms, then their codes: `0`, `2,3,17` (CCL read_alarm);
* set-point `TEMP, S25.0`, one decimal (CCL write_temp); run at the constant set-point
  `MODE,CONSTANT`, stop `MODE,STANDBY` (CCL write_mode_constant, write_mode_standby).

A set-point must lie between the chamber's own lower and upper alarm temperatures (TEMP?) and
not above its highest temperature (TYPE?); the driver refuses one outside before sending it.
"""

from __future__ import annotations

import math
from typing import ClassVar

from stackcycler.errors import InstrumentError, InstrumentTimeout, InvalidInput

from .roles import BenchSetting, ChamberReading, TemperatureChamber
from .transport import ByteTransport

TERMINATOR = b"\r\n"
MAX_LINE_BYTES = 256  # a reply longer than any the command set has is garbage, not a reply
BAUD_RATES = (4800, 9600, 19200)  # 9600: CCL's default; [uncertain] the others, as on most ESPEC controllers
RS485_ADDRESSES = range(1, 17)  # [uncertain] the controller's address setting, 1 to 16
SETPOINT_RESOLUTION_DEGC = 0.1  # CCL sends set-points with one decimal
MODES = ("OFF", "STANDBY", "CONSTANT", "RUN")
RUNNING_MODES = ("CONSTANT", "RUN")

# What an `NA:` reply means (CCL's ERROR_DESCIPTIONS, reworded).
REFUSALS = {
    "CMD ERR": "unknown command",
    "ADDR ERR": "bad address",
    "PARA ERR": "a parameter is missing or cannot be read",
    "DATA OUT OF RANGE": "a value is outside the chamber's range",
    "DATA NOT READY": "no such program",
    "PROTECT ON": "settings are locked at the chamber's panel",
    "CONT NOT READY-1": "the chamber has no humidity (or product temperature) control",
    "CONT NOT READY-2": "the chamber is not running a program",
    "INVALID REQ": "the chamber does not have that function",
    "CHB NOT READY": "the chamber cannot act on it in its present state",
}


def read_line(transport: ByteTransport, terminator: bytes = TERMINATOR, max_bytes: int = MAX_LINE_BYTES) -> bytes:
    """One reply line from a byte transport, without its terminator. The transport's timeout
    bounds each byte; InstrumentTimeout names what arrived before it ran out."""
    line = bytearray()
    while not line.endswith(terminator):
        if len(line) >= max_bytes:
            raise InstrumentError(f"{transport.resource}: no line end in {max_bytes} bytes ({bytes(line)!r})")
        try:
            line += transport.read(1)
        except InstrumentTimeout:
            raise InstrumentTimeout(f"{transport.resource}: no complete reply line (timeout after "
                                    f"{bytes(line)!r})") from None
    return bytes(line[:-len(terminator)])


def _number(text: str, what: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InstrumentError(f"{where}: {what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise InstrumentError(f"{where}: {what} {text!r} is not a finite number")
    return value


class EspecChamber(TemperatureChamber):
    FRIENDLY_NAME = "ESPEC chamber"
    BYTE_PROTOCOL = True  # opened on a ByteTransport: ASCII lines on a serial port
    BENCH_SETTINGS: ClassVar[dict[str, BenchSetting]] = {
        "address": BenchSetting("the controller's RS-485 address (leave it out on RS-232)", RS485_ADDRESSES),
        "baud_rate": BenchSetting("the serial line's baud rate, as set on the controller (default 9600)",
                                  BAUD_RATES, transport=True),
    }

    def __init__(self, transport: ByteTransport, address: int | None = None):
        if address is not None and address not in RS485_ADDRESSES:
            raise InvalidInput(f"{self.FRIENDLY_NAME} at {transport.resource}: address {address!r} is not "
                               f"{RS485_ADDRESSES.start} to {RS485_ADDRESSES.stop - 1}")
        self.transport = transport
        self.address = address
        self.identity = ""
        self.has_humidity = False
        self.max_temperature_degC = math.inf  # from TYPE? at connect
        self.alarm_band_degC: tuple[float, float] | None = None  # (lower, upper) from TEMP? at connect

    @property
    def resource(self) -> str:
        return self.transport.resource

    def _where(self) -> str:
        return f"{self.FRIENDLY_NAME} at {self.resource}"

    # --- one exchange: a line out, its one reply line back -----------------------------------

    def exchange(self, command: str) -> str:
        """Send one command line and read its reply line; an `NA:` reply raises, naming why."""
        self.transport.discard_input()  # a late reply to an earlier, failed exchange is not this one's
        prefix = f"{self.address}," if self.address is not None else ""
        self.transport.write((prefix + command).encode("ascii") + TERMINATOR)
        raw = read_line(self.transport)
        try:
            reply = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            raise InstrumentError(f"{self._where()}: garbled reply to {command!r}: {raw!r}") from None
        if reply.startswith("NA:"):
            reason = reply[3:].strip()
            meaning = REFUSALS.get(reason, "a reason the ESPEC command set does not list")
            raise InstrumentError(f"{self._where()} refused {command!r}: {reason} ({meaning})")
        return reply

    def command(self, command: str) -> None:
        """A setting: accepted with `OK` or `OK:<the command>`."""
        reply = self.exchange(command)
        if not reply.startswith("OK"):
            raise InstrumentError(f"{self._where()}: {command!r} was answered {reply!r}, expected OK")

    def _fields(self, query: str, count: int | tuple[int, ...]) -> list[str]:
        reply = self.exchange(query)
        fields = [field.strip() for field in reply.split(",")]
        counts = (count,) if isinstance(count, int) else count
        if len(fields) not in counts:
            raise InstrumentError(f"{self._where()}: {query} answered {reply!r}, expected "
                                  f"{' or '.join(map(str, counts))} comma-separated fields")
        return fields

    # --- the role ---------------------------------------------------------------------------

    def connect(self) -> str:
        """Read what the chamber is (TYPE?, ROM?) and its alarm band (TEMP?); its state is left alone."""
        where = self._where()
        kind = self._fields("TYPE?", (3, 4))
        self.has_humidity = len(kind) == 4  # a wet-bulb sensor
        controller = kind[-2]
        self.max_temperature_degC = _number(kind[-1], "TYPE? highest temperature", where)
        firmware = self.exchange("ROM?")
        _, _, upper, lower = self._temperatures()
        self.alarm_band_degC = (lower, upper)
        sensors = "temperature and humidity" if self.has_humidity else "temperature"
        self.identity = (f"ESPEC,{controller} controller ({sensors}, up to {self.max_temperature_degC:g} degC),"
                         f"ROM {firmware}")
        return self.identity

    def _temperatures(self) -> tuple[float, float, float, float]:
        """(measured, set-point, upper alarm, lower alarm) from TEMP?."""
        where = self._where()
        fields = self._fields("TEMP?", 4)
        names = ("measured temperature", "set-point", "upper alarm temperature", "lower alarm temperature")
        measured, setpoint, upper, lower = (_number(text, f"TEMP? {name}", where) for text, name in zip(fields, names))
        return measured, setpoint, upper, lower

    def setpoint_range(self) -> tuple[float, float]:
        if self.alarm_band_degC is None:
            raise InstrumentError(f"{self._where()}: not connected")
        lower, upper = self.alarm_band_degC
        return lower, min(upper, self.max_temperature_degC)

    def set_temperature(self, setpoint_degC: float) -> None:
        low, high = self.setpoint_range()
        if not (isinstance(setpoint_degC, (int, float)) and math.isfinite(setpoint_degC)
                and low <= setpoint_degC <= high):
            raise InvalidInput(f"{self._where()}: set-point {setpoint_degC!r} degC is outside the chamber's "
                               f"alarm band {low:g} to {high:g} degC; nothing was sent")
        self.command(f"TEMP, S{setpoint_degC:.1f}")

    def setpoint_degC(self) -> float:
        return self._temperatures()[1]

    def run(self) -> None:
        self.command("MODE,CONSTANT")

    def stop(self) -> None:
        self.command("MODE,STANDBY")

    def mode(self) -> str:
        mode = self.exchange("MODE?")
        if mode not in MODES:
            raise InstrumentError(f"{self._where()}: MODE? answered {mode!r}, expected one of {', '.join(MODES)}")
        return mode

    def read(self) -> ChamberReading:
        where = self._where()
        temperature, humidity, mode, alarms = self._fields("MON?", 4)
        try:
            alarm_count = int(alarms)
        except ValueError:
            raise InstrumentError(f"{where}: MON? alarm count {alarms!r} is not a whole number") from None
        return ChamberReading(temperature_degC=_number(temperature, "MON? temperature", where),
                              humidity_pct=_number(humidity, "MON? humidity", where) if humidity else None,
                              running=mode in RUNNING_MODES, alarms=alarm_count)

    def alarms(self) -> list[int]:
        reply = self.exchange("ALARM?")
        try:
            count, *codes = (int(field) for field in reply.split(","))
        except ValueError:
            raise InstrumentError(f"{self._where()}: ALARM? answered {reply!r}, expected a count and codes") from None
        if count != len(codes):
            raise InstrumentError(f"{self._where()}: ALARM? answered {reply!r}: {count} alarms but "
                                  f"{len(codes)} codes")
        return codes

    def check_errors(self) -> None:
        codes = self.alarms()
        if codes:
            raise InstrumentError(f"{self._where()} reports alarm{'s' if len(codes) > 1 else ''} "
                                  f"{', '.join(map(str, codes))} (ALARM?; the codes are in the controller's "
                                  "alarm list, shown on its panel)")

    def close(self) -> None:
        self.transport.close()  # the controller has no remote lock to release; it keeps running
