"""Message transports: how a driver's text reaches an instrument.

A driver only ever calls write/read/query/close. The same driver runs on:

* `sim://NAME`: a simulated instrument in this process (fast, on the virtual clock), with a
  socket's semantics: replies queue up, reading with no reply pending times out;
* any VISA resource string (`TCPIP::10.0.0.5::5025::SOCKET`, `USB0::...::INSTR`,
  `ASRL/dev/ttyUSB0::INSTR`): through pyvisa, with pyvisa-py as the default backend so that
  no vendor library is needed (`@ivi` uses an installed vendor VISA).
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

from stackcycler.errors import InstrumentError, InstrumentLinkError, InstrumentTimeout

DEFAULT_TIMEOUT_S = 2.0
SIM_SCHEME = "sim://"


class MessageTransport(Protocol):
    resource: str

    def write(self, message: str) -> None: ...

    def read(self) -> str: ...

    def query(self, message: str) -> str: ...

    def close(self) -> None: ...


class SimulatedDevice(Protocol):
    def handle(self, message: str) -> str | None: ...


class InProcessTransport:
    """Talks to a simulated instrument object in this process."""

    def __init__(self, device: SimulatedDevice, resource: str):
        self.device = device
        self.resource = resource
        self._replies: deque[str] = deque()
        self.closed = False

    def write(self, message: str) -> None:
        if self.closed:
            raise InstrumentError(f"{self.resource}: transport is closed")
        reply = self.device.handle(message)
        if reply is not None:
            self._replies.append(reply)

    def read(self) -> str:
        if self.closed:
            raise InstrumentError(f"{self.resource}: transport is closed")
        if not self._replies:
            raise InstrumentTimeout(f"{self.resource}: no reply (timeout)")
        return self._replies.popleft()

    def query(self, message: str) -> str:
        self.write(message)
        return self.read()

    def close(self) -> None:
        self.closed = True


class VisaTransport:
    """A VISA resource through pyvisa; errors become InstrumentError / InstrumentTimeout."""

    def __init__(self, resource: str, timeout_s: float = DEFAULT_TIMEOUT_S, visa_library: str = "@py"):
        import pyvisa  # imported here: it is slow to import and simulated benches never need it

        self.resource = resource
        self._errors = (pyvisa.errors.VisaIOError, OSError, ValueError)
        self._timeout_code = pyvisa.constants.StatusCode.error_timeout
        self._connection_lost_code = pyvisa.constants.StatusCode.error_connection_lost
        try:
            manager = pyvisa.ResourceManager(visa_library)
            self._session = manager.open_resource(
                resource, read_termination="\n", write_termination="\n", timeout=int(timeout_s * 1000)
            )
        except self._errors as error:
            raise InstrumentError(f"{resource}: cannot open ({error})") from error

    def _translate(self, error: Exception) -> InstrumentError:
        if getattr(error, "error_code", None) == self._timeout_code:
            return InstrumentTimeout(f"{self.resource}: no reply (timeout)")
        if isinstance(error, OSError) or getattr(error, "error_code", None) == self._connection_lost_code:
            return InstrumentLinkError(f"{self.resource}: connection lost ({error})")
        return InstrumentError(f"{self.resource}: {error}")

    def write(self, message: str) -> None:
        try:
            self._session.write(message)
        except self._errors as error:
            raise self._translate(error) from error

    def read(self) -> str:
        try:
            return self._session.read()
        except self._errors as error:
            raise self._translate(error) from error

    def query(self, message: str) -> str:
        self.write(message)
        return self.read()

    def close(self) -> None:
        try:
            self._session.close()
        except self._errors:
            pass


def open_transport(resource: str, simulated: dict[str, SimulatedDevice] | None = None,
                   timeout_s: float = DEFAULT_TIMEOUT_S) -> MessageTransport:
    if resource.startswith(SIM_SCHEME):
        return InProcessTransport(simulated_device(resource, simulated), resource)
    return VisaTransport(resource, timeout_s)


def simulated_device(resource: str, simulated: dict | None):
    """The simulated instrument a `sim://NAME` resource names."""
    name = resource[len(SIM_SCHEME):]
    if not simulated or name not in simulated:
        known = ", ".join(sorted(simulated or {})) or "none (this bench has no simulation block)"
        raise InstrumentError(f"{resource}: no simulated instrument '{name}'; simulated instruments: {known}")
    return simulated[name]


# --- byte transports: binary frame protocols (RS-232 instruments such as the BK 8500) --------
#
# A binary instrument answers every fixed-length frame with one fixed-length frame and has no
# terminator, so its driver reads an exact number of bytes. The same driver runs on:
#
# * `sim://NAME`: a simulated binary instrument in this process (its `receive` gets the bytes
#   written and returns the bytes it answers, which queue up until read);
# * a serial port through pyserial: a device path (`/dev/ttyUSB0`, `COM3`), the VISA spelling
#   of one (`ASRL/dev/ttyUSB0::INSTR`, `ASRLCOM3::INSTR`), or a pyserial URL (`socket://host:port`,
#   `rfc2217://host:port`), 8 data bits, no parity, one stop bit, no flow control.

DEFAULT_BAUD_RATE = 9600


class ByteTransport(Protocol):
    resource: str

    def write(self, data: bytes) -> None: ...

    def read(self, n: int) -> bytes:
        """Exactly `n` bytes; InstrumentTimeout if fewer arrive in time (the partial bytes are dropped)."""

    def discard_input(self) -> None:
        """Drop whatever has arrived unread (a late or stray reply), so the next read starts afresh."""

    def close(self) -> None: ...


class SimulatedByteDevice(Protocol):
    def receive(self, data: bytes) -> bytes:
        """Take the bytes the host wrote; return the bytes the device answers (possibly none)."""


class InProcessByteTransport:
    """Talks to a simulated binary instrument object in this process, with a serial port's
    semantics: replies queue up as bytes, a read of more than is queued times out."""

    def __init__(self, device: SimulatedByteDevice, resource: str):
        self.device = device
        self.resource = resource
        self._pending = bytearray()
        self.closed = False

    def _check_open(self) -> None:
        if self.closed:
            raise InstrumentError(f"{self.resource}: transport is closed")

    def write(self, data: bytes) -> None:
        self._check_open()
        self._pending += self.device.receive(bytes(data))

    def read(self, n: int) -> bytes:
        self._check_open()
        if len(self._pending) < n:
            got = len(self._pending)
            self._pending.clear()
            raise InstrumentTimeout(f"{self.resource}: no complete reply (timeout after {got} of {n} bytes)")
        data = bytes(self._pending[:n])
        del self._pending[:n]
        return data

    def discard_input(self) -> None:
        self._pending.clear()

    def close(self) -> None:
        self.closed = True


def serial_port_of(resource: str) -> str:
    """The pyserial port of a resource: 'ASRL/dev/ttyUSB0::INSTR' -> '/dev/ttyUSB0', 'ASRLCOM3::INSTR'
    -> 'COM3'; a device path or a pyserial URL as it is."""
    if resource.upper().startswith("ASRL") and resource.upper().endswith("::INSTR"):
        return resource[len("ASRL"):-len("::INSTR")]
    return resource


class SerialByteTransport:
    """A serial port through pyserial; a port that cannot be opened or fails is an
    InstrumentLinkError, a reply that does not arrive in full an InstrumentTimeout."""

    def __init__(self, resource: str, baud_rate: int = DEFAULT_BAUD_RATE, timeout_s: float = DEFAULT_TIMEOUT_S):
        import serial  # pyserial; imported here so that simulated benches never need a serial port

        self.resource = resource
        self._serial_errors = (serial.SerialException, OSError, ValueError)
        self._write_timeout = serial.SerialTimeoutException
        try:
            self._port = serial.serial_for_url(
                serial_port_of(resource), baudrate=baud_rate, bytesize=serial.EIGHTBITS,
                parity=serial.PARITY_NONE, stopbits=serial.STOPBITS_ONE, xonxoff=False, rtscts=False,
                dsrdtr=False, timeout=timeout_s, write_timeout=timeout_s)
        except self._serial_errors as error:
            raise InstrumentLinkError(f"{resource}: cannot open the serial port ({error})") from error

    def write(self, data: bytes) -> None:
        try:
            self._port.write(data)
            self._port.flush()
        except self._write_timeout as error:
            raise InstrumentTimeout(f"{self.resource}: write timed out ({error})") from error
        except self._serial_errors as error:
            raise InstrumentLinkError(f"{self.resource}: serial port failed ({error})") from error

    def read(self, n: int) -> bytes:
        try:
            data = self._port.read(n)  # pyserial's timeout bounds the whole read, not each byte
        except self._serial_errors as error:
            raise InstrumentLinkError(f"{self.resource}: serial port failed ({error})") from error
        if len(data) < n:
            raise InstrumentTimeout(f"{self.resource}: no complete reply (timeout after {len(data)} of {n} bytes)")
        return bytes(data)

    def discard_input(self) -> None:
        try:
            self._port.reset_input_buffer()
        except self._serial_errors as error:
            raise InstrumentLinkError(f"{self.resource}: serial port failed ({error})") from error

    def close(self) -> None:
        try:
            self._port.close()
        except self._serial_errors:
            pass


def open_byte_transport(resource: str, simulated: dict | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                        baud_rate: int = DEFAULT_BAUD_RATE) -> ByteTransport:
    """`sim://NAME` (a simulated binary instrument) or a serial port (see above)."""
    if resource.startswith(SIM_SCHEME):
        device = simulated_device(resource, simulated)
        if not callable(getattr(device, "receive", None)):
            raise InstrumentError(f"{resource}: the simulated instrument speaks text (SCPI), "
                                  "not binary frames; is the driver right for it?")
        return InProcessByteTransport(device, resource)
    return SerialByteTransport(resource, baud_rate, timeout_s)
