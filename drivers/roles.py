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
    """A DC supply that both sources and sinks (regenerative supply, two-quadrant SMU).

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
        """(terminal voltage V, current A, + = charge)."""

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
