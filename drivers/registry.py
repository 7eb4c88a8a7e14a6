"""Driver names as written in bench files, and the classes behind them."""

from __future__ import annotations

from .ea_psb import EaPsb10000
from .keithley_smu import Keithley2400, Keithley2450
from .keysight_daq970a import KeysightDaq970a
from .roles import BidirectionalSupply, ScanningMeter

DRIVERS: dict[str, type] = {
    "ea-psb-10000": EaPsb10000,
    "keithley-2400": Keithley2400,
    "keithley-2450": Keithley2450,
    "keysight-daq970a": KeysightDaq970a,
}


def drivers_with_role(role: type) -> list[str]:
    return sorted(name for name, cls in DRIVERS.items() if issubclass(cls, role))


SUPPLY_DRIVERS = drivers_with_role(BidirectionalSupply)
METER_DRIVERS = drivers_with_role(ScanningMeter)
