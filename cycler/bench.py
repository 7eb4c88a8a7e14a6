"""Bench files: which instruments, how they are wired to each channel, and the DUT on it.

A bench file names its instruments (driver + VISA resource), its channels (what drives the
DUT, the meter inputs for layer voltages, temperatures and pressure, the environmental
`chamber:` it sits in if any, the tick period) and the DUT on each channel (layers, capacity,
operating voltages, absolute safety limits). What drives the DUT is either one bidirectional
`supply:` or a `source:` (a power supply that only charges) and/or a `load:` (an electronic load
that only discharges). A simulated bench adds a `simulation:` block and uses `sim://NAME`
resources. `extends: BASE` starts from another bench (a built-in name or a path) and overrides
what it lists (`supply: null` drops a base's supply).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from stackcycler.drivers.registry import (CHAMBER_DRIVERS, DRIVERS, LOAD_DRIVERS, METER_DRIVERS, SOURCE_DRIVERS,
                                          SUPPLY_DRIVERS)
from stackcycler.drivers.scpi import parse_channel_list
from stackcycler.drivers.sensors import PressureFixture
from stackcycler.drivers.sim.simulation import SimulationConfig, wired_outputs
from stackcycler.drivers.transport import DEFAULT_TIMEOUT_S, SIM_SCHEME

from .errors import InvalidInput
from .locks import canonical_resource
from .safety import SafetyLimits
from .validation import builtin_files, find_data_file, parse_data_text, read_text, validate_data

MAX_EXTENDS_DEPTH = 8
MAX_TICK_S = 60.0
BENCH_SUFFIXES = (".toml", ".yaml", ".yml")  # TOML is the bench format; YAML is read as well


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DutSpec(_Strict):
    """The device under test on a channel."""

    id: str
    description: str = ""
    layers: int = Field(1, ge=1, description="cells in series (bipolar stack)")
    nominal_capacity_Ah: float | None = Field(None, gt=0, description="needed for C-rates")
    charge_voltage_V: float | None = Field(None, gt=0, description="end-of-charge stack voltage")
    discharge_voltage_V: float | None = Field(None, gt=0, description="end-of-discharge stack voltage")
    mass_kg: float | None = Field(None, gt=0, description="for specific energy (Wh/kg)")
    volume_L: float | None = Field(None, gt=0, description="for energy density (Wh/L)")
    fixture_excluded: bool | None = Field(
        None, description="mass and volume leave out the pressure fixture (else energy densities are flagged)")
    safety: SafetyLimits = SafetyLimits()


MAX_TIMEOUT_S = 120.0

# Settings a driver may take beside its resource (each driver says which it accepts: BENCH_SETTINGS).
DRIVER_SETTINGS = ("output", "address", "baud_rate")


class InstrumentConfig(_Strict):
    driver: str
    resource: str = Field(description="VISA resource string, or sim://NAME on a simulated bench")
    # An instrument silent for two minutes is lost; longer timeouts would also stretch the output
    # watchdogs past what they allow (channel.watchdog_silence_s; the N6705C's ends at 3600 s).
    timeout_s: float = Field(DEFAULT_TIMEOUT_S, gt=0, le=MAX_TIMEOUT_S)
    output: int | None = Field(None, description="the output wired to the DUT, on a multi-output supply")
    address: int | None = Field(None, description="bus address, on an instrument that has one (BK 8500)")
    baud_rate: int | None = Field(None, description="serial baud rate, on a serial instrument (BK 8500)")

    @field_validator("driver")
    @classmethod
    def _known_driver(cls, value: str) -> str:
        if value not in DRIVERS:
            raise ValueError(f"unknown driver '{value}'; drivers: {', '.join(sorted(DRIVERS))}")
        return value

    @model_validator(mode="after")
    def _settings_fit_the_driver(self) -> "InstrumentConfig":
        accepted = DRIVERS[self.driver].BENCH_SETTINGS
        problems = []
        for name in DRIVER_SETTINGS:
            value, setting = getattr(self, name), accepted.get(name)
            if setting is None:
                if value is not None:
                    takes = ", ".join(accepted) or "none"
                    problems.append(f"{name}: the {self.driver} driver takes no '{name}' (settings it takes: {takes})")
            elif value is None:
                if setting.required:
                    problems.append(f"{name}: the {self.driver} driver needs '{name}': {setting.doc}; "
                                    f"accepted: {setting.accepted_text()}")
            elif value not in setting.accepted:
                problems.append(f"{name}: {value} is not accepted by the {self.driver} driver ({setting.doc}); "
                                f"accepted: {setting.accepted_text()}")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def driver_settings(self) -> dict[str, int]:
        """The settings given for the driver itself (those of its link excluded)."""
        settings = DRIVERS[self.driver].BENCH_SETTINGS
        return {name: getattr(self, name) for name, setting in settings.items()
                if not setting.transport and getattr(self, name) is not None}


class LayerVoltageInputs(_Strict):
    meter: str
    channels: str = Field(description="meter channels of layers 1..N in order, e.g. '101:120,201:203'")
    range_V: float | None = Field(10.0, description="DC voltage range; null for autorange")

    def channel_numbers(self) -> list[int]:
        return parse_channel_list(self.channels)


class TemperatureInput(_Strict):
    meter: str
    channel: int
    sensor: str = Field(description="T1..T5 for sensors on the DUT, or 'ambient'")
    thermocouple_type: str = "K"

    @field_validator("sensor")
    @classmethod
    def _sensor_name(cls, value: str) -> str:
        if value != "ambient" and not (len(value) == 2 and value[0] == "T" and value[1] in "12345"):
            raise ValueError(f"sensor '{value}': use T1, T2, T3, T4, T5 (on the DUT) or ambient")
        return value


class PressureInput(_Strict):
    meter: str
    channel: int
    range_V: float | None = 0.1
    fixture: PressureFixture


# What may drive a channel's DUT: role -> (what it is, the drivers that can be it).
DRIVE_ROLES: dict[str, tuple[str, list[str]]] = {
    "supply": ("a bidirectional supply, which charges and discharges", SUPPLY_DRIVERS),
    "source": ("a power supply that only charges", SOURCE_DRIVERS),
    "load": ("an electronic load that only discharges", LOAD_DRIVERS),
}


class ChannelConfig(_Strict):
    supply: str | None = Field(None, description=DRIVE_ROLES["supply"][0])
    source: str | None = Field(None, description=DRIVE_ROLES["source"][0])
    load: str | None = Field(None, description=DRIVE_ROLES["load"][0])
    # Safety limits are checked once a tick: a tick of minutes would let a stack run past them
    # (the reliability campaign's 1e9 s tick reached 115 V before its first check).
    tick_s: float = Field(1.0, gt=0, le=MAX_TICK_S, description="control and measurement period, at most 60 s")
    layer_voltages: LayerVoltageInputs | None = None
    temperatures: list[TemperatureInput] = Field(default_factory=list)
    pressure: PressureInput | None = None
    chamber: str | None = Field(None, description="the environmental chamber the DUT sits in, read every tick")
    dut: DutSpec

    @model_validator(mode="after")
    def _one_way_to_drive_the_dut(self) -> "ChannelConfig":
        if self.supply is not None and (self.source is not None or self.load is not None):
            given = "source" if self.source is not None else "load"
            raise ValueError(f"{given}: a channel has either a bidirectional 'supply' or a 'source' and/or a 'load', "
                             f"not both (this one names supply '{self.supply}' and {given} "
                             f"'{getattr(self, given)}'); with `extends`, 'supply: null' drops the base's supply")
        if self.supply is None and self.source is None and self.load is None:
            raise ValueError("supply: the channel names nothing to drive its DUT; give 'supply' ("
                             f"{DRIVE_ROLES['supply'][0]}), or 'source' ({DRIVE_ROLES['source'][0]}) and/or 'load' "
                             f"({DRIVE_ROLES['load'][0]})")
        return self

    def drive_instruments(self) -> dict[str, str]:
        """role ('supply', 'source', 'load') -> instrument name, for the roles this channel fills."""
        return {role: getattr(self, role) for role in DRIVE_ROLES if getattr(self, role) is not None}

    @model_validator(mode="after")
    def _wiring_matches_dut(self) -> "ChannelConfig":
        if self.layer_voltages is not None:
            count = len(self.layer_voltages.channel_numbers())
            if count != self.dut.layers:
                raise ValueError(f"layer_voltages.channels lists {count} channels but dut.layers is {self.dut.layers}")
        sensors = [t.sensor for t in self.temperatures]
        duplicates = sorted({s for s in sensors if sensors.count(s) > 1})
        if duplicates:
            raise ValueError(f"temperature sensor names must be unique; repeated: {', '.join(duplicates)}")
        return self

    def meter_names(self) -> set[str]:
        names = {t.meter for t in self.temperatures}
        if self.layer_voltages:
            names.add(self.layer_voltages.meter)
        if self.pressure:
            names.add(self.pressure.meter)
        return names

    def instrument_names(self) -> set[str]:
        """Every instrument the channel uses: what drives the DUT, its meters and its chamber."""
        return {*self.drive_instruments().values(), *self.meter_names(), *([self.chamber] if self.chamber else [])}


def _mainframe_drivers() -> list[str]:
    """Drivers whose instrument may serve several channels, one slot each (a driver's MAINFRAME)."""
    return sorted(name for name, driver in DRIVERS.items() if getattr(driver, "MAINFRAME", None) is not None)


class BenchConfig(_Strict):
    name: str
    description: str = ""
    simulation: SimulationConfig | None = None
    instruments: dict[str, InstrumentConfig]
    channels: dict[str, ChannelConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _references_resolve(self) -> "BenchConfig":
        for channel_name, channel in self.channels.items():
            roles = [(role, name, DRIVE_ROLES[role][1]) for role, name in channel.drive_instruments().items()]
            roles += [("meter", meter, METER_DRIVERS) for meter in sorted(channel.meter_names())]
            roles += [("chamber", channel.chamber, CHAMBER_DRIVERS)] if channel.chamber else []
            for role, name, accepted in roles:
                instrument = self.instruments.get(name)
                if instrument is None:
                    raise ValueError(f"channel '{channel_name}': {role} '{name}' is not among the instruments "
                                     f"({', '.join(self.instruments)})")
                if instrument.driver not in accepted:
                    raise ValueError(f"channel '{channel_name}': instrument '{name}' ({instrument.driver}) cannot "
                                     f"act as a {role}; {role} drivers: {', '.join(accepted)}")
        on_one_resource: dict[str, list[str]] = {}
        for name, instrument in self.instruments.items():
            on_one_resource.setdefault(canonical_resource(instrument.resource), []).append(name)
        for names in on_one_resource.values():
            if len(names) > 1:
                self._check_outputs_of_one_instrument(names)
        simulated = self.simulation.instruments if self.simulation else {}
        for name, instrument in self.instruments.items():
            if instrument.resource.startswith(SIM_SCHEME):
                target = instrument.resource[len(SIM_SCHEME):]
                if target not in simulated:
                    raise ValueError(f"instrument '{name}': {instrument.resource} names no simulated instrument; "
                                     f"simulated: {', '.join(sorted(simulated)) or 'none (no simulation block)'}")
                wired = wired_outputs(simulated[target])  # the outputs of a multi-output supply wired to stacks
                if wired and instrument.output is not None and instrument.output not in wired:
                    outputs, fields = ((f"output {next(iter(wired))}", "output") if len(wired) == 1 else
                                       (f"outputs {', '.join(map(str, sorted(wired)))}", "output and .more_modules"))
                    raise ValueError(f"instruments.{name}.output: {instrument.output}, but the simulated supply has "
                                     f"{outputs} wired to the stack (simulation.instruments.{target}.{fields})")
        return self

    def _check_outputs_of_one_instrument(self, names: list[str]) -> None:
        """Entries naming one instrument are allowed only as different outputs of a mainframe
        whose driver shares it between them (its connection, error queue and watchdog)."""
        first, *others = names
        listed = self.instruments[first]
        shares = getattr(DRIVERS[listed.driver], "MAINFRAME", None) is not None
        outputs = [listed.output]
        for name in others:
            instrument = self.instruments[name]
            where = f"instruments.{name}"
            if not shares or instrument.driver != listed.driver:
                raise ValueError(f"{where}.resource: {instrument.resource} is already instrument '{first}'; each "
                                 "instrument is listed once (only the slots of a mainframe whose driver shares it, "
                                 f"such as {', '.join(_mainframe_drivers())}, may be listed once each)")
            if instrument.output in outputs:
                raise ValueError(f"{where}.output: {instrument.output} is already used on {instrument.resource} "
                                 f"(instrument '{names[outputs.index(instrument.output)]}'); each entry of one "
                                 "mainframe names its own slot")
            if instrument.timeout_s != listed.timeout_s:
                raise ValueError(f"{where}.timeout_s: {instrument.timeout_s:g} s, but '{first}' on the same "
                                 f"{instrument.resource} has {listed.timeout_s:g} s; the slots of one mainframe share "
                                 "one connection and its timeout")
            outputs.append(instrument.output)

    @property
    def simulated(self) -> bool:
        return self.simulation is not None

    def lost_meter_wait_s(self) -> float:
        """The longest one tick (of any channel: channels run together share a round) may wait on
        meters and chambers that stopped answering: each is waited for twice its timeout before it
        is taken as lost, and again every tick while it stays lost (transport.query_waiting_once_more)."""
        readers = {name for channel in self.channels.values()
                   for name in (*channel.meter_names(), *([channel.chamber] if channel.chamber else []))}
        return sum(2 * self.instruments[name].timeout_s for name in readers)


# --- finding and loading bench files ------------------------------------------------------


def builtin_benches() -> dict[str, Path]:
    return builtin_files(resources.files("stackcycler") / "benches", BENCH_SUFFIXES)


def resolve_bench(name_or_path: str, relative_to: Path | None = None) -> Path:
    return find_data_file(name_or_path, builtin_benches(), "bench", "benches", relative_to)


def _merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        merged = copy.deepcopy(base)
        for key, value in override.items():
            merged[key] = _merge(base.get(key), value) if key in base else copy.deepcopy(value)
        return merged
    return copy.deepcopy(override)


def _load_bench_data(path: Path, depth: int = 0) -> tuple[dict, dict, str]:
    text = read_text(path, "bench")
    data, lines = parse_data_text(text, path)
    if not isinstance(data, dict):
        raise InvalidInput(f"{path}: a bench file is a mapping of fields (name, instruments, channels, ...)")
    base_name = data.pop("extends", None)
    if base_name is not None:
        if depth >= MAX_EXTENDS_DEPTH:
            raise InvalidInput(f"{path}: 'extends' nests deeper than {MAX_EXTENDS_DEPTH} benches (a loop?)")
        base, _, _ = _load_bench_data(resolve_bench(str(base_name), path.parent), depth + 1)
        data = _merge(base, data)
    return data, lines, text


@dataclass(frozen=True)
class BenchFile:
    config: BenchConfig
    path: Path
    text: str  # the file as written (its `extends` base is recorded by name in the text)
    resolved: dict = field(default_factory=dict)  # the merged data the config was validated from


def load_bench(name_or_path: str) -> BenchFile:
    path = resolve_bench(name_or_path)
    data, lines, text = _load_bench_data(path)
    return BenchFile(validate_data(BenchConfig, data, str(path), lines), path, text, data)
