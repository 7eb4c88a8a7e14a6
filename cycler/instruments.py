"""`cycler instruments`: the instruments this PC can reach, with their identities.

VISA resources come from pyvisa's resource manager (pyvisa-py by default: USB-TMC, GPIB, serial
and, where the network allows discovery, LAN instruments); each that is not a serial port is
asked `*IDN?`. Serial ports come from pyserial; they are listed, not queried: a binary-frame
instrument such as the BK 8500 would take `*IDN?` for garbage.
"""

from __future__ import annotations

from dataclasses import dataclass

from stackcycler.drivers.transport import VisaTransport

from .errors import StackcyclerError

IDENTIFY_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class SeenInstrument:
    resource: str
    kind: str  # "VISA" or "serial port"
    identity: str  # the *IDN? reply, or why there is none


def visa_resources(visa_library: str = "@py") -> list[str]:
    import warnings

    import pyvisa

    try:
        with warnings.catch_warnings():  # pyvisa-py's notes on optional discovery packages: not for a technician
            warnings.simplefilter("ignore")
            return sorted(pyvisa.ResourceManager(visa_library).list_resources())
    except (pyvisa.errors.VisaIOError, OSError, ValueError) as error:
        raise StackcyclerError(f"VISA ({visa_library}): cannot list resources ({error})") from None


def identify(resource: str, timeout_s: float = IDENTIFY_TIMEOUT_S) -> str:
    try:
        transport = VisaTransport(resource, timeout_s)
    except StackcyclerError as error:
        return f"cannot open: {error}"
    try:
        return transport.query("*IDN?").strip() or "empty reply to *IDN?"
    except StackcyclerError as error:
        return f"no answer to *IDN? ({error})"
    finally:
        transport.close()


def seen_instruments(resources: list[str] | None = None, query: bool = True) -> list[SeenInstrument]:
    """What this PC can see: `resources` (default: what VISA lists), and the serial ports."""
    from serial.tools import list_ports

    seen = []
    for resource in visa_resources() if resources is None else resources:
        if resource.upper().startswith("ASRL"):
            seen.append(SeenInstrument(resource, "VISA", "serial: not queried (see the serial ports)"))
        else:
            seen.append(SeenInstrument(resource, "VISA", identify(resource) if query else "not queried"))
    for port in sorted(list_ports.comports(), key=lambda p: p.device):
        seen.append(SeenInstrument(port.device, "serial port", f"{port.description} [{port.hwid}]"))
    return seen
