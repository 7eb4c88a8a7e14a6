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
        name = resource[len(SIM_SCHEME):]
        if not simulated or name not in simulated:
            known = ", ".join(sorted(simulated or {})) or "none (this bench has no simulation block)"
            raise InstrumentError(f"{resource}: no simulated instrument '{name}'; simulated instruments: {known}")
        return InProcessTransport(simulated[name], resource)
    return VisaTransport(resource, timeout_s)
