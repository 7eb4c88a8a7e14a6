"""Message transports: how a driver's text reaches an instrument.

A driver only ever calls write/read/query/close. The same driver runs on:

* `sim://NAME`: a simulated instrument in this process (fast, on the virtual clock), with a
  socket's semantics: replies queue up, reading with no reply pending times out;
* any VISA resource string (`TCPIP::10.0.0.5::5025::SOCKET`, `USB0::...::INSTR`,
  `ASRL/dev/ttyUSB0::INSTR`): through pyvisa, with pyvisa-py as the default backend so that
  no vendor library is needed (`@ivi` uses an installed vendor VISA).

What a transport does about a link that misbehaves, the same on both:

* a query whose reply does not come within the timeout waits once more before it fails: a busy
  instrument's one late reply is taken (and logged); the query is not sent again, so no second
  reply can come later and be taken for the answer to the next query;
* after a query has failed so, or the connection has dropped (InstrumentLinkError), the next
  message goes over a new connection: a reply later still cannot be read as the next one, a
  connection the instrument closed is opened again (logged), and the safe state still reaches an
  instrument that is back.

A simulated instrument may carry `link_faults` (sim/faults.py): the faults of its cable, which
the in-process transport (and `cycler sim serve`) put between the driver and the simulator.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Callable, Protocol

from stackcycler.errors import InstrumentError, InstrumentLinkError, InstrumentTimeout

# Warnings (a late reply, a reconnection) name the instrument's resource in `extra={"resource": ...}`,
# so that a run can log those of its own instruments as events.
log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class Delivery:
    """What comes back over a simulated link for one message (see LinkFaults in sim/faults.py)."""

    reply: str | bytes | None  # None (or no bytes): nothing comes back
    delay_s: float = 0.0  # the reply arrives this long after the message
    link_dropped: bool = False  # the connection dropped; the message was lost


class SimulatedLink(Protocol):
    def deliver(self, message, answer: Callable) -> Delivery:
        """Carry `message` to the instrument (`answer(message)` is it handling it) and say what comes back."""


def link_faults_of(device) -> SimulatedLink | None:
    return getattr(device, "link_faults", None)


def query_waiting_once_more(transport, message: str) -> str:
    """Send a query and read its reply; a reply later than the timeout is waited for once more (logged).
    If it does not come then either, the transport starts afresh at the next message."""
    transport.write(message)
    try:
        return transport.read()
    except InstrumentTimeout:
        try:
            reply = transport.read()
        except InstrumentTimeout:
            transport.needs_new_connection = True  # the reply may still come: not as the answer to the next query
            raise
        log.warning("%s: the reply to %r came after the timeout; it was waited for once more", transport.resource,
                    message, extra={"resource": transport.resource})
        return reply


def _note_reconnection(resource: str) -> None:
    log.warning("%s: connected again after the connection dropped", resource, extra={"resource": resource})


class InProcessTransport:
    """Talks to a simulated instrument object in this process; its replies wait in a queue, and a
    read that does not find one (or finds it still later than `timeout_s`) times out at once, since
    the virtual clock does not move while the host waits."""

    def __init__(self, device: SimulatedDevice, resource: str, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.device = device
        self.resource = resource
        self.timeout_s = timeout_s
        self._link = link_faults_of(device)
        self._replies: deque[list] = deque()  # [reply, how much later than now it arrives (s)]
        self.closed = False
        self.link_dropped = False
        self.needs_new_connection = False

    def _check_open(self) -> None:
        if self.closed:
            raise InstrumentError(f"{self.resource}: transport is closed")

    def write(self, message: str) -> None:
        self._check_open()
        if self.needs_new_connection:
            self.needs_new_connection = False
            self._replies.clear()  # whatever the old connection still held
            if self.link_dropped:
                self.link_dropped = False
                _note_reconnection(self.resource)
        if self._link is None:
            reply = self.device.handle(message)
            if reply is not None:
                self._replies.append([reply, 0.0])
            return
        delivery = self._link.deliver(message, self.device.handle)
        if delivery.link_dropped:
            self.link_dropped = self.needs_new_connection = True
            raise InstrumentLinkError(f"{self.resource}: connection lost (the instrument closed it)")
        if delivery.reply is not None:
            self._replies.append([delivery.reply, delivery.delay_s])

    def read(self) -> str:
        self._check_open()
        if self._replies and self._replies[0][1] <= self.timeout_s:
            return self._replies.popleft()[0]
        if self._replies:
            self._replies[0][1] -= self.timeout_s  # waited a whole timeout for it
        raise InstrumentTimeout(f"{self.resource}: no reply (timeout)")

    def query(self, message: str) -> str:
        return query_waiting_once_more(self, message)

    def close(self) -> None:
        self.closed = True


class VisaTransport:
    """A VISA resource through pyvisa; errors become InstrumentError / InstrumentTimeout /
    InstrumentLinkError. A new connection is a new VISA session: pyvisa-py reads a connection the
    instrument closed as a timeout, and a session cleared after one can hang, so a failed query is
    followed by a fresh session rather than by a device clear."""

    def __init__(self, resource: str, timeout_s: float = DEFAULT_TIMEOUT_S, visa_library: str = "@py"):
        import pyvisa  # imported here: it is slow to import and simulated benches never need it

        self.resource = resource
        self._errors = (pyvisa.errors.VisaIOError, OSError, ValueError)
        self._timeout_code = pyvisa.constants.StatusCode.error_timeout
        self._connection_lost_code = pyvisa.constants.StatusCode.error_connection_lost
        self._manager_of = lambda: pyvisa.ResourceManager(visa_library)
        self._timeout_ms = int(timeout_s * 1000)
        self.link_dropped = False
        self.needs_new_connection = False
        try:
            self._session = self._open()
        except self._errors as error:
            raise InstrumentError(f"{resource}: cannot open ({error})") from error

    def _open(self):
        return self._manager_of().open_resource(self.resource, read_termination="\n", write_termination="\n",
                                                timeout=self._timeout_ms)

    def _translate(self, error: Exception) -> InstrumentError:
        if getattr(error, "error_code", None) == self._timeout_code:
            return InstrumentTimeout(f"{self.resource}: no reply (timeout)")
        if isinstance(error, OSError) or getattr(error, "error_code", None) == self._connection_lost_code:
            self.link_dropped = self.needs_new_connection = True
            return InstrumentLinkError(f"{self.resource}: connection lost ({error})")
        return InstrumentError(f"{self.resource}: {error}")

    def _reconnect(self) -> None:
        try:
            self._session.close()
        except self._errors:
            pass
        try:
            self._session = self._open()
        except self._errors as error:
            raise InstrumentLinkError(f"{self.resource}: cannot connect again ({error})") from error
        self.needs_new_connection = False
        if self.link_dropped:
            self.link_dropped = False
            _note_reconnection(self.resource)

    def write(self, message: str) -> None:
        if self.needs_new_connection:
            self._reconnect()
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
        return query_waiting_once_more(self, message)

    def close(self) -> None:
        try:
            self._session.close()
        except self._errors:
            pass


class SharedConnection:
    """One connection to an instrument whose outputs serve several channels (a mainframe's slots),
    each through its own driver: each driver closes it when done, the last close closes it."""

    def __init__(self, transport: MessageTransport, users: int):
        self._transport = transport
        self._users = users

    def __getattr__(self, name: str):
        return getattr(self._transport, name)

    def close(self) -> None:
        self._users -= 1
        if self._users == 0:
            self._transport.close()

    def close_now(self) -> None:
        """Close it for every user at once (opening the bench failed part way through)."""
        self._users = 0
        self._transport.close()


def open_transport(resource: str, simulated: dict[str, SimulatedDevice] | None = None,
                   timeout_s: float = DEFAULT_TIMEOUT_S) -> MessageTransport:
    if resource.startswith(SIM_SCHEME):
        return InProcessTransport(simulated_device(resource, simulated), resource, timeout_s)
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
    semantics: replies queue up as bytes, a read of more than is queued times out (at once: the
    virtual clock does not move while the host waits), and bytes that come later than the read's
    timeout are not there yet."""

    def __init__(self, device: SimulatedByteDevice, resource: str, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.device = device
        self.resource = resource
        self.timeout_s = timeout_s
        self._link = link_faults_of(device)
        self._pending = bytearray()
        self._arriving: deque[list] = deque()  # [bytes, how much later than now they arrive (s)]
        self.closed = False
        self.link_dropped = False

    def _check_open(self) -> None:
        if self.closed:
            raise InstrumentError(f"{self.resource}: transport is closed")

    def write(self, data: bytes) -> None:
        self._check_open()
        if self.link_dropped:
            self.link_dropped = False  # a new connection: what the old one held is gone
            self._pending.clear()
            self._arriving.clear()
            _note_reconnection(self.resource)
        if self._link is None:
            self._pending += self.device.receive(bytes(data))
            return
        delivery = self._link.deliver(bytes(data), self.device.receive)
        if delivery.link_dropped:
            self.link_dropped = True
            raise InstrumentLinkError(f"{self.resource}: connection lost (the instrument closed it)")
        if delivery.reply:
            self._arriving.append([delivery.reply, delivery.delay_s])

    def read(self, n: int) -> bytes:
        self._check_open()
        while self._arriving and self._arriving[0][1] <= self.timeout_s:
            self._pending += self._arriving.popleft()[0]
        if len(self._pending) < n:
            got = len(self._pending)
            self._pending.clear()
            for late in self._arriving:
                late[1] -= self.timeout_s  # waited a whole timeout for them
            raise InstrumentTimeout(f"{self.resource}: no complete reply (timeout after {got} of {n} bytes)")
        data = bytes(self._pending[:n])
        del self._pending[:n]
        return data

    def discard_input(self) -> None:
        self._pending.clear()  # what is still on its way arrives later, as on a serial line

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
        return InProcessByteTransport(device, resource, timeout_s)
    return SerialByteTransport(resource, baud_rate, timeout_s)
