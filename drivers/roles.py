"""Role interfaces: what the runner asks of an instrument, whatever its make.

The runner depends on these roles only, never on a model name. Units are SI; current is
positive into the DUT (charge), as everywhere in stackcycler.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal, Sequence


@dataclass(frozen=True)
class BenchSetting:
    """A setting a bench file gives a driver beside its resource (an output channel, a bus
    address), so that a bad value is refused with the file and field named, before anything opens."""

    doc: str
    accepted: tuple[int, ...] | range
    required: bool = False
    transport: bool = False  # a setting of the link (a baud rate), not passed to the driver

    def accepted_text(self) -> str:
        if isinstance(self.accepted, range):
            return f"{self.accepted.start} to {self.accepted.stop - 1}"
        return ", ".join(str(value) for value in self.accepted)


class HostWatchdog:
    """The instrument's own watchdog on its link to the host: an output the host stops talking to
    switches itself off.

    Why: everything else that keeps the DUT safe runs in the host. The software safety limits,
    the step ends, the safe state on a trip, Ctrl+C or SIGTERM all need a live process; a host
    that dies (kill -9, a kernel panic, a power cut to the PC, a frozen process, a cable pulled)
    leaves the last setpoint in force, the output on, for as long as nobody notices. The
    instrument's own over-voltage and over-current protection bound the voltage and the current,
    not the charge moved or the time: a weak layer of a stack, a temperature limit, a step's time
    or capacity end are the host's to watch. A watchdog in the instrument closes that gap: armed
    with a delay longer than the host is ever silent while alive, it switches the output off once
    the host has been silent for that long.

    `arm_watchdog(silence_s)` arms it with the smallest delay the model supports that is at least
    `silence_s` and returns that delay (s); a model with no watchdog (the default here) arms
    nothing and returns None. `disarm_watchdog()` switches it off; a driver's safe_state() and
    close() leave a watchdog it armed disarmed, after the output is off, so that a run that ended
    does not trip the instrument's protection later. A driver whose connect() finds the output
    switched off by its watchdog (a host that died) says so in `watchdog_trip_found`, as
    `output_found_on` says the output was left on, and clears it so that the run can go on.
    """

    watchdog_trip_found: bool = False  # whether connect() (or arming) found a watchdog trip latched, and cleared it

    def arm_watchdog(self, silence_s: float) -> float | None:
        """Arm the watchdog to trip after `silence_s` (or the next longer delay the model has) of
        host silence; the delay armed (s), or None if the model has no watchdog."""
        return None

    def disarm_watchdog(self) -> None:
        """Switch the watchdog off (nothing to do on a model without one)."""


class Instrument:
    """What every driver class declares for the bench files and session that open it."""

    # Settings a bench file may give it, by field name (see BenchSetting).
    BENCH_SETTINGS: ClassVar[dict[str, BenchSetting]] = {}
    # True: it speaks fixed-length binary frames and is opened on a ByteTransport; False: SCPI text lines.
    BYTE_PROTOCOL: ClassVar[bool] = False


@dataclass(frozen=True)
class SupplyRatings:
    voltage_V: float
    current_A: float
    power_W: float
    max_over_voltage_V: float  # highest over-voltage protection threshold the model accepts
    max_over_current_A: float


class BidirectionalSupply(Instrument, HostWatchdog, ABC):
    """A DC supply that both sources and sinks (regenerative supply, four-quadrant SMU).

    Its one control law is voltage priority with two current clamps: it holds `voltage_V`
    while the current stays within [-sink_limit_A, +source_limit_A], and otherwise holds the
    clamp. With the voltage set beyond the DUT's, that is constant-current charge or
    discharge; when the DUT reaches it, constant voltage: CC, CV and CC-CV are all native.
    """

    identity: str
    resource: str
    has_power_limits: bool = False  # True if regulate() honours source/sink power limits natively
    output_found_on: bool = False  # whether connect() found the output on (it switches it off)

    @abstractmethod
    def connect(self) -> str:
        """Take remote control, switch the output off, read the ratings; return the identity."""

    @property
    @abstractmethod
    def ratings(self) -> SupplyRatings: ...

    @abstractmethod
    def set_protection(self, over_voltage_V: float, over_current_A: float) -> None:
        """Arm the instrument's own protection: the second line of defence if the host fails."""

    @abstractmethod
    def regulate(self, voltage_V: float, source_limit_A: float, sink_limit_A: float,
                 source_power_W: float | None = None, sink_power_W: float | None = None) -> None:
        """Voltage priority with current clamps and, where the model has them, power limits (None: none)."""

    @abstractmethod
    def set_output(self, on: bool) -> None: ...

    @abstractmethod
    def output_is_on(self) -> bool: ...

    @abstractmethod
    def measure(self) -> tuple[float, float]:
        """(terminal voltage V, current A, + = charge). Also with the output "off": the runner
        reads the DUT at every tick, rests included (an SMU that cannot measure with its output
        off keeps it on at a negligible current limit instead; see keithley_smu.py)."""

    @abstractmethod
    def check_errors(self) -> None: ...

    @abstractmethod
    def safe_state(self) -> None:
        """Output off, confirmed; then a watchdog it armed disarmed (HostWatchdog). Raises
        InstrumentError only if the output off cannot be confirmed."""

    @abstractmethod
    def close(self) -> None:
        """Release remote control and the connection (after safe_state)."""


class PowerSource(Instrument, HostWatchdog, ABC):
    """A DC power supply that only sources (a bench PSU, one output of a multi-output one).

    Its control law is a voltage with a current limit: it holds `voltage_V` while the current it
    sources stays below `current_limit_A`, and otherwise holds the limit. With the voltage set
    above the DUT's that is constant-current charge; when the DUT reaches it, constant voltage:
    CC, CV and CC-CV charge are native. It cannot take current out of the DUT: a DUT above the
    set voltage just sees no current.
    """

    identity: str
    resource: str
    output_found_on: bool = False  # whether connect() found the output on (it switches it off)

    @abstractmethod
    def connect(self) -> str:
        """Take remote control, switch the output off, read the ratings; return the identity."""

    @property
    @abstractmethod
    def ratings(self) -> SupplyRatings: ...

    @abstractmethod
    def set_protection(self, over_voltage_V: float, over_current_A: float) -> None:
        """Arm the instrument's own protection: the second line of defence if the host fails."""

    @abstractmethod
    def regulate(self, voltage_V: float, current_limit_A: float) -> None:
        """The voltage and the current limit; range-checked before anything is sent."""

    @abstractmethod
    def set_output(self, on: bool) -> None: ...

    @abstractmethod
    def output_is_on(self) -> bool: ...

    @abstractmethod
    def measure(self) -> tuple[float, float]:
        """(terminal voltage V, current A, + = charge: it only ever sources)."""

    @abstractmethod
    def check_errors(self) -> None: ...

    @abstractmethod
    def safe_state(self) -> None:
        """Output off, confirmed; then a watchdog it armed disarmed (HostWatchdog). Raises
        InstrumentError only if the output off cannot be confirmed."""

    @abstractmethod
    def close(self) -> None:
        """Release remote control and the connection (after safe_state)."""


@dataclass(frozen=True)
class MeterChannel:
    """One input of a scanning meter: a DC voltage (with its range) or a thermocouple."""

    channel: int
    function: Literal["dc_voltage", "thermocouple"]
    range_V: float | None = None  # None = autorange
    thermocouple_type: str = "K"


class ScanningMeter(Instrument, ABC):
    """A multiplexed meter (scanning DAQ) read once per tick."""

    identity: str
    resource: str

    @abstractmethod
    def connect(self) -> str: ...

    @abstractmethod
    def configure_scan(self, inputs: Sequence[MeterChannel]) -> None: ...

    @abstractmethod
    def scan(self) -> dict[int, float]:
        """One reading per configured channel; NaN where the meter reports an overload or open input."""

    @abstractmethod
    def check_errors(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...


LoadMode = Literal["CC", "CV", "CR", "CP"]
LOAD_MODES: tuple[LoadMode, ...] = ("CC", "CV", "CR", "CP")
LOAD_MODE_UNITS: dict[LoadMode, str] = {"CC": "A", "CV": "V", "CR": "ohm", "CP": "W"}


@dataclass(frozen=True)
class LoadRatings:
    voltage_V: float
    current_A: float
    power_W: float
    max_over_voltage_V: float  # highest over-voltage protection threshold the model accepts
    max_over_current_A: float
    min_resistance_ohm: float  # range of the CR set value
    max_resistance_ohm: float


class ElectronicLoad(Instrument, HostWatchdog, ABC):
    """A DC electronic load: it only sinks. It regulates in one of its native modes: constant
    current (CC: the current it sinks), constant voltage (CV: it sinks whatever holds the DUT at
    the set voltage), constant resistance (CR: it sinks V/R) or constant power (CP: it sinks P/V).

    Set values are magnitudes (a CC value of 2.0 sinks 2 A); measured current keeps the
    stackcycler sign, + into the DUT, so a load's current is negative. The terminal switch is
    its *input*; `set_output`, `output_is_on` and `output_found_on` name it as
    BidirectionalSupply does, so the runner can switch and check either the same way.
    """

    identity: str
    resource: str
    input_found_on: bool = False  # whether connect() found the input on (it switches it off)
    # True if hold_voltage() is native: CV with a current limit, i.e. the CC-CV crossover of a
    # discharge (a plain CV mode would sink whatever the DUT gives at the step's start).
    HOLDS_VOLTAGE_WITH_CURRENT_LIMIT: ClassVar[bool] = False

    @abstractmethod
    def connect(self) -> str:
        """Take remote control, switch the input off, read the ratings; return the identity."""

    @property
    @abstractmethod
    def ratings(self) -> LoadRatings: ...

    @abstractmethod
    def set_protection(self, over_voltage_V: float, over_current_A: float) -> None:
        """Arm the instrument's own limits: the second line of defence if the host fails."""

    @abstractmethod
    def set_mode(self, mode: LoadMode, value: float) -> None:
        """Regulate in `mode` at `value` (A, V, ohm or W, a magnitude); range-checked before anything is sent."""

    def hold_voltage(self, voltage_V: float, current_limit_A: float) -> None:
        """CV at `voltage_V`, sinking at most `current_limit_A`: it holds the limit while the DUT is
        above the voltage and tapers once the DUT is down to it. Only where HOLDS_VOLTAGE_WITH_CURRENT_LIMIT."""
        raise NotImplementedError(f"{type(self).__name__} has no CV mode with a current limit")

    @abstractmethod
    def set_input(self, on: bool) -> None: ...

    @abstractmethod
    def input_is_on(self) -> bool: ...

    @abstractmethod
    def measure(self) -> tuple[float, float]:
        """(terminal voltage V, current A, + = charge: negative while the load sinks)."""

    @abstractmethod
    def check_errors(self) -> None:
        """Raise InstrumentError if the load reports a fault (protection state, lost remote control)."""

    @abstractmethod
    def safe_state(self) -> None:
        """Input off, confirmed; then a watchdog it armed disarmed (HostWatchdog). Raises
        InstrumentError only if the input off cannot be confirmed."""

    @abstractmethod
    def close(self) -> None:
        """Release remote control and the connection (after safe_state)."""

    # The terminal switch under BidirectionalSupply's names.
    def set_output(self, on: bool) -> None:
        self.set_input(on)

    def output_is_on(self) -> bool:
        return self.input_is_on()

    @property
    def output_found_on(self) -> bool:
        return self.input_found_on


@dataclass(frozen=True)
class ChamberReading:
    """What an environmental chamber reports about the air around the DUT."""

    temperature_degC: float
    humidity_pct: float | None  # relative humidity; None on a chamber without a humidity sensor
    running: bool  # regulating towards its set-point (not stopped, not off)
    alarms: int  # how many alarms it reports


class TemperatureChamber(Instrument, ABC):
    """An environmental chamber the DUT sits in: the channel reads its air temperature every tick.

    It is not an output of the channel: the safe state leaves it as it is. A chamber switched off
    at a trip would take a cell held at -20 degC through condensation or one at 60 degC through an
    uncontrolled cool-down, and its own over-temperature protection is its second line of
    defence; what the chamber does after a trip is the operator's decision.
    """

    identity: str
    resource: str

    @abstractmethod
    def connect(self) -> str:
        """Take remote control, read its ratings and state (changing neither); return the identity."""

    @abstractmethod
    def set_temperature(self, setpoint_degC: float) -> None:
        """The air temperature to regulate to; range-checked against the chamber before anything is sent."""

    @abstractmethod
    def run(self) -> None:
        """Start regulating to the set-point."""

    @abstractmethod
    def stop(self) -> None:
        """Stop regulating; the air drifts towards the room's temperature."""

    @abstractmethod
    def read(self) -> ChamberReading: ...

    @abstractmethod
    def check_errors(self) -> None:
        """Raise InstrumentError if the chamber reports an alarm."""

    @abstractmethod
    def close(self) -> None:
        """Release remote control and the connection (the chamber keeps running)."""
