"""Driver names as written in bench files, and the classes behind them."""

from __future__ import annotations

from .bk8500 import Bk8500
from .ea_psb import EaPsb10000
from .espec_chamber import EspecChamber
from .keithley_smu import Keithley2400, Keithley2450
from .keysight_daq970a import KeysightDaq970a
from .keysight_e36312a import KeysightE36312a
from .keysight_n6705c import KeysightN6705c
from .rigol_dl3021 import RigolDl3021
from .roles import BidirectionalSupply, ElectronicLoad, PowerSource, ScanningMeter, TemperatureChamber

DRIVERS: dict[str, type] = {
    "bk-8500": Bk8500,
    "ea-psb-10000": EaPsb10000,
    "espec-chamber": EspecChamber,
    "keithley-2400": Keithley2400,
    "keithley-2450": Keithley2450,
    "keysight-daq970a": KeysightDaq970a,
    "keysight-e36312a": KeysightE36312a,
    "keysight-n6705c": KeysightN6705c,
    "rigol-dl3021": RigolDl3021,
}


def drivers_with_role(role: type) -> list[str]:
    return sorted(name for name, cls in DRIVERS.items() if issubclass(cls, role))


SUPPLY_DRIVERS = drivers_with_role(BidirectionalSupply)
SOURCE_DRIVERS = drivers_with_role(PowerSource)
LOAD_DRIVERS = drivers_with_role(ElectronicLoad)
METER_DRIVERS = drivers_with_role(ScanningMeter)
CHAMBER_DRIVERS = drivers_with_role(TemperatureChamber)
