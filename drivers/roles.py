"""Role interfaces: what the runner asks of an instrument, whatever its make.

The runner depends on these roles only, never on a model name. Units are SI; current is
positive into the DUT (charge), as everywhere in stackcycler.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal, Sequence


@dataclass(frozen=True)
class SupplyRatings:
    voltage_V: float
    current_A: float
    power_W: float
    max_over_voltage_V: float  # highest over-voltage protection threshold the model accepts
    max_over_current_A: float


class BidirectionalSupply(ABC):
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
        """Output off, confirmed. Raises InstrumentError only if that cannot be confirmed."""

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


class ScanningMeter(ABC):
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


class ElectronicLoad(ABC):
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
        """Input off, confirmed. Raises InstrumentError only if that cannot be confirmed."""

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
