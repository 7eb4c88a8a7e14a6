"""A channel at run time: one DUT, what drives it and the meter inputs wired to it.

It measures a Sample per tick, applies output commands (sending only what changed), checks
that the instruments are still in the state it put them in, and brings the outputs to the
safe state. It knows the wiring from the bench file; the runner knows none of it.

What drives the DUT is a *drive*, one of two kinds:

* SupplyDrive: one bidirectional supply; every command is native to it (roles.py).
* SourceLoadDrive: a power source that only charges and/or an electronic load that only
  discharges. Charge commands go to the source (its CV limit gives CC-CV charge), discharge
  commands to the load (CC, or CV with a current limit for a held voltage), open circuit to
  neither. Break-before-make: when the current changes direction, the instrument that was on
  is switched off and read back off before the other is switched on, and before anything is
  switched on the other is read back off, so the two are never on together. A step the bench
  cannot do is refused when the plan is bound (`unsupported_steps`), before anything opens.
"""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import Iterable, Mapping

import numpy as np

from stackcycler.drivers.registry import DRIVERS
from stackcycler.drivers.roles import (BidirectionalSupply, ElectronicLoad, MeterChannel, PowerSource, ScanningMeter,
                                       SupplyRatings, TemperatureChamber)

from .bench import ChannelConfig
from .clock import Clock
from .control import OutputCommand, StepControl, rating_problems
from .errors import InstrumentError, InstrumentLinkError, InvalidInput
from .plan import PlannedStep
from .safety import SafetyEnvelope
from .sample import Sample

# The instrument's own protection sits this far beyond the software safety limits, so the
# runner trips first and the instrument catches what a dead host cannot.
HARDWARE_PROTECTION_MARGIN = 1.05

# The instruments' own watchdogs (roles.HostWatchdog) switch an output off once the host has been
# silent this long: max(WATCHDOG_MIN_S, WATCHDOG_TICKS ticks). A live runner speaks to every output
# instrument every tick (it measures, rests and holds included), so silence beyond a tick means a
# tick that overran: a slow disk at a checkpoint, a meter that times out twice (2 x 2 s by default)
# before it is taken as lost, a garbage collection, a machine under load. Five ticks and at least
# 30 s ride those out; 30 s is also what Microcycler allows a silent host (reference
# battery-testing.md §7). Short enough to matter: 30 s of a 1C charge is under 1 % of the
# capacity, against the hours until somebody notices a dead host. The longest tick (60 s) asks for
# 300 s, within every watchdog here (the N6705C's goes to 3600 s). Meters with long timeouts can
# hold a live tick longer than that (a lost meter is waited for twice its timeout, every tick):
# then the watchdog allows twice the longest such tick.
WATCHDOG_MIN_S = 30.0
WATCHDOG_TICKS = 5
WATCHDOG_MARGIN = 2.0


def watchdog_silence_s(tick_s: float, lost_meter_wait_s: float = 0.0) -> float:
    """The host silence after which an output instrument's watchdog switches it off, for a tick of
    `tick_s` that may also wait `lost_meter_wait_s` on meters that stopped answering."""
    return max(WATCHDOG_MIN_S, WATCHDOG_TICKS * tick_s, WATCHDOG_MARGIN * (tick_s + lost_meter_wait_s))


NO_WATCHDOGS: Mapping[str, float | None] = MappingProxyType({})


def protection_levels(envelope: SafetyEnvelope, ratings, currents: Iterable[float | None]) -> tuple[float, float]:
    """(over-voltage V, over-current A) to arm on an instrument with these ratings, guarding the
    envelope's voltage and the larger of `currents` (its rating where the envelope has none)."""
    over_voltage = (envelope.max_voltage_V or ratings.voltage_V) * HARDWARE_PROTECTION_MARGIN
    limits = [c for c in currents if c]
    over_current = (max(limits) if limits else ratings.current_A) * HARDWARE_PROTECTION_MARGIN
    return min(over_voltage, ratings.max_over_voltage_V), min(over_current, ratings.max_over_current_A)


class SupplyDrive:
    """One bidirectional supply drives the DUT."""

    watchdogs = NO_WATCHDOGS  # "supply" -> the delay (s) its watchdog was armed with, None: it has none

    def __init__(self, supply: BidirectionalSupply):
        self.supply = supply
        self._command: OutputCommand | None = None
        self._output_on = False

    @property
    def ratings(self) -> SupplyRatings:
        return self.supply.ratings

    @property
    def has_power_limits(self) -> bool:
        return self.supply.has_power_limits

    @property
    def output_found_on(self) -> bool:
        return self.supply.output_found_on

    def arm_protection(self, envelope: SafetyEnvelope) -> None:
        self.supply.set_protection(*protection_levels(
            envelope, self.ratings, (envelope.max_charge_current_A, envelope.max_discharge_current_A)))

    def arm_watchdog(self, silence_s: float) -> Mapping[str, float | None]:
        """The supply's own watchdog, tripping after `silence_s` of host silence (or the next longer
        delay it has); its safe_state() disarms it once the output is off (roles.HostWatchdog)."""
        self.watchdogs = MappingProxyType({"supply": self.supply.arm_watchdog(silence_s)})
        return self.watchdogs

    @property
    def watchdog_trip_found(self) -> bool:
        return self.supply.watchdog_trip_found

    def rating_problems(self, steps: Iterable[PlannedStep], controls: dict[int, StepControl]) -> list[str]:
        return rating_problems(steps, controls, self.ratings)

    def apply(self, command: OutputCommand | None) -> bool:
        """Bring the supply to `command` (None: output off); True if anything had to change."""
        if command is None:
            changed = self._output_on
            if self._output_on:
                self.supply.set_output(False)
                self._output_on = False
            self._command = None
            return changed
        changed = command != self._command or not self._output_on
        if command != self._command:
            self.supply.regulate(command.voltage_V, command.source_limit_A, command.sink_limit_A,
                                 command.source_power_W, command.sink_power_W)
            self._command = command
        if not self._output_on:
            self.supply.set_output(True)
            self._output_on = True
        return changed

    def measure(self) -> tuple[float, float]:
        return self.supply.measure()

    def check_health(self) -> None:
        self.supply.check_errors()
        if self.supply.output_is_on() != self._output_on:
            state = "off" if self._output_on else "on"
            raise InstrumentError(f"supply at {self.supply.resource} switched its output {state} by itself "
                                  "(a protection trip?)")

    def safe_state(self) -> None:
        """Output off, confirmed, then its watchdog disarmed (by the supply's own safe_state)."""
        self._output_on = False
        self._command = None
        self.supply.safe_state()


class SourceLoadDrive:
    """A source that only charges and/or a load that only discharges, with break-before-make."""

    has_power_limits = False  # constant power runs as a software loop over the current
    watchdogs = NO_WATCHDOGS  # "source" / "load" -> the delay (s) its watchdog was armed with, None: it has none

    def __init__(self, source: PowerSource | None, load: ElectronicLoad | None,
                 names: dict[str, str] | None = None):
        if source is None and load is None:
            raise ValueError("a source/load drive needs a source, a load or both")
        self.instruments: dict[str, PowerSource | ElectronicLoad] = {
            role: instrument for role, instrument in (("source", source), ("load", load)) if instrument is not None}
        self.names = names or {}
        self.on: str | None = None  # "source" or "load": the one switched on, as commanded
        self._programmed: tuple[str, OutputCommand] | None = None  # the side last set up, and for what
        self._command: OutputCommand | None = None

    @property
    def source(self) -> PowerSource | None:
        return self.instruments.get("source")

    @property
    def load(self) -> ElectronicLoad | None:
        return self.instruments.get("load")

    def describe(self, role: str) -> str:
        instrument = self.instruments[role]
        name = self.names.get(role)
        return f"{role} {name!r} at {instrument.resource}" if name else f"{role} at {instrument.resource}"

    @property
    def ratings(self) -> SupplyRatings:
        """For the step controls: the charge voltage ceiling is the source's (the load's on a
        discharge-only bench); a current limit that the bench must hold both ways is the smaller
        of the two instruments' ratings."""
        all_ratings = [instrument.ratings for instrument in self.instruments.values()]
        first = (self.source or self.load).ratings
        return SupplyRatings(voltage_V=first.voltage_V, current_A=min(r.current_A for r in all_ratings),
                             power_W=min(r.power_W for r in all_ratings), max_over_voltage_V=first.max_over_voltage_V,
                             max_over_current_A=min(r.max_over_current_A for r in all_ratings))

    @property
    def output_found_on(self) -> bool:
        return any(instrument.output_found_on for instrument in self.instruments.values())

    def arm_protection(self, envelope: SafetyEnvelope) -> None:
        if self.source is not None:
            self.source.set_protection(*protection_levels(envelope, self.source.ratings,
                                                          (envelope.max_charge_current_A,)))
        if self.load is not None:
            self.load.set_protection(*protection_levels(envelope, self.load.ratings,
                                                        (envelope.max_discharge_current_A,)))

    def arm_watchdog(self, silence_s: float) -> Mapping[str, float | None]:
        """Each instrument's own watchdog, tripping after `silence_s` of host silence; each one's
        safe_state() disarms it once its output is off (roles.HostWatchdog)."""
        self.watchdogs = MappingProxyType({role: instrument.arm_watchdog(silence_s)
                                           for role, instrument in self.instruments.items()})
        return self.watchdogs

    @property
    def watchdog_trip_found(self) -> bool:
        return any(instrument.watchdog_trip_found for instrument in self.instruments.values())

    def rating_problems(self, steps: Iterable[PlannedStep], controls: dict[int, StepControl]) -> list[str]:
        """Steps whose fixed command needs more than the instrument that would carry it can give.
        Two-sided commands (CV both ways) are held to each instrument's rating as they run."""
        problems = []
        for step in steps:
            control = controls[step.number]
            command = None if control.dynamic else control.command(0.0, None)
            if command is None or (command.source_limit_A > 0) == (command.sink_limit_A > 0):
                continue
            role = "source" if command.source_limit_A > 0 else "load"
            if role not in self.instruments:
                continue  # refused when the plan was bound (unsupported_steps)
            ratings = self.instruments[role].ratings
            current = command.source_limit_A or command.sink_limit_A
            voltage_matters = role == "source" or command.holds_voltage
            if current > ratings.current_A or (voltage_matters and command.voltage_V > ratings.voltage_V):
                problems.append(f"step {step.number} ({step.setpoint()}) needs {command.voltage_V:.4g} V / "
                                f"{current:.4g} A from the {self.describe(role)}, beyond its rating of "
                                f"{ratings.voltage_V:g} V / {ratings.current_A:g} A")
        return problems

    # --- commands ------------------------------------------------------------------------

    def apply(self, command: OutputCommand | None) -> bool:
        """Bring the instruments to `command` (None: both off); True if anything had to change."""
        if command is None or (command.source_limit_A == 0 and command.sink_limit_A == 0):
            changed = self.on is not None or command != self._command
            self._switch_off()  # no current wanted: open circuit
            self._command = command
            return changed
        if command.source_power_W is not None or command.sink_power_W is not None:
            raise InvalidInput("a source/load channel has no native power limit; constant power runs in software")
        role = self._role_for(command)
        changed = command != self._command or self.on != role
        if self.on is not None and self.on != role:
            self._switch_off()  # break before make
        if self._programmed != (role, command):
            self._program(role, command)
        if self.on != role:
            self._switch_on(role)
        self._command = command
        return changed

    def _role_for(self, command: OutputCommand) -> str:
        charge, discharge = command.source_limit_A > 0, command.sink_limit_A > 0
        if charge and discharge:  # a voltage held both ways (a CV step): whichever can act
            able = [role for role in self.instruments
                    if role == "source" or self.load.HOLDS_VOLTAGE_WITH_CURRENT_LIMIT]
            if not able:
                raise InvalidInput(f"the {self.describe('load')} cannot hold a voltage with a current limit "
                                   "(refused when the plan is bound; see unsupported_steps)")
            if self.on in able:
                return self.on  # it holds the voltage already; switching would only interrupt it
            if len(able) == 1:
                return able[0]  # a source alone holds it from below only: a DUT above sees no current
            voltage, _ = self.measure()
            return "source" if voltage < command.voltage_V else "load"
        role = "source" if charge else "load"
        if role not in self.instruments:
            what = "charge" if charge else "discharge"
            raise InvalidInput(f"the channel has no {role} to {what} with (it has a "
                               f"{' and a '.join(self.instruments)})")
        return role

    def _program(self, role: str, command: OutputCommand) -> None:
        if role == "source":
            current = min(command.source_limit_A, self.source.ratings.current_A) if command.sink_limit_A > 0 \
                else command.source_limit_A  # a two-sided limit is capped by the rating, as on a supply
            self.source.regulate(command.voltage_V, current)
        else:
            current = min(command.sink_limit_A, self.load.ratings.current_A) if command.source_limit_A > 0 \
                else command.sink_limit_A
            if not command.holds_voltage:
                self.load.set_mode("CC", current)
            elif self.load.HOLDS_VOLTAGE_WITH_CURRENT_LIMIT:
                self.load.hold_voltage(command.voltage_V, current)
            else:
                raise InvalidInput(f"the {self.describe('load')} cannot hold a voltage with a current limit "
                                   "(refused when the plan is bound; see unsupported_steps)")
        self._programmed = (role, command)

    def _switch_off(self) -> None:
        """The instrument that is on, off, and read back off."""
        if self.on is None:
            return
        role, self.on = self.on, None
        instrument = self.instruments[role]
        instrument.set_output(False)
        if instrument.output_is_on():
            raise InstrumentError(f"{self.describe(role)} is still on after being switched off")

    def _switch_on(self, role: str) -> None:
        """`role` on, once every other instrument has read back off."""
        for other, instrument in self.instruments.items():
            if other != role and instrument.output_is_on():
                raise InstrumentError(f"{self.describe(other)} is on; the {role} stays off (break-before-make)")
        self.instruments[role].set_output(True)
        self.on = role

    # --- measurement, health, the way out --------------------------------------------------

    def measure(self) -> tuple[float, float]:
        """From the instrument that carries the current. With both off, the voltage from the load
        if there is one (a load reads its input voltage with the input off), else from the source,
        and a current of exactly 0: the terminals are open, and an off instrument's reading is only
        its offset (the BK 8500 reports it unsigned, so it would add up as a discharge)."""
        if self.on is not None:
            return self.instruments[self.on].measure()
        voltage, _ = self.instruments["load" if self.load is not None else "source"].measure()
        return voltage, 0.0

    def check_health(self) -> None:
        for role, instrument in self.instruments.items():
            instrument.check_errors()
            expected = self.on == role
            if instrument.output_is_on() != expected:
                state = "off" if expected else "on"
                raise InstrumentError(f"{self.describe(role)} switched its output {state} by itself"
                                      + (" (a protection trip?)" if expected else ""))

    def safe_state(self) -> None:
        """Both off, each confirmed (and its watchdog then disarmed, by its own safe_state); the one
        that was on first. Raises if either cannot be confirmed."""
        order = sorted(self.instruments, key=lambda role: role != self.on)
        self.on, self._programmed, self._command = None, None, None
        problems = []
        for role in order:
            try:
                self.instruments[role].safe_state()
            except Exception as error:  # the other one must still be switched off
                problems.append(f"{self.describe(role)}: {type(error).__name__}: {error}")
        if problems:
            raise InstrumentError("; ".join(problems))


Drive = SupplyDrive | SourceLoadDrive


def drive_for(config: ChannelConfig, drivers: dict[str, object]) -> Drive:
    """The drive of a channel from its opened instruments."""
    if config.supply is not None:
        return SupplyDrive(drivers[config.supply])
    return SourceLoadDrive(drivers.get(config.source) if config.source else None,
                           drivers.get(config.load) if config.load else None,
                           names={role: name for role, name in config.drive_instruments().items()})


def chamber_for(config: ChannelConfig, drivers: dict[str, object]) -> TemperatureChamber | None:
    """The channel's chamber from its opened instruments, if the bench file names one."""
    return drivers[config.chamber] if config.chamber else None


# --- what a step needs of the bench, checked when the plan is bound ------------------------------


def step_needs(step: PlannedStep) -> set[str]:
    """'charge', 'discharge', 'hold discharge voltage' (CC-CV discharge) and 'hold voltage' (CV
    either way: a source, or a load that holds a voltage with a current limit, can do it)."""
    if step.kind == "cc":
        return {"charge" if step.current_A > 0 else "discharge"}
    if step.kind == "cccv":
        return {"charge"} if step.current_A > 0 else {"discharge", "hold discharge voltage"}
    if step.kind == "cv":
        return {"hold voltage"}
    if step.kind == "cp":
        return {"charge" if step.power_W > 0 else "discharge"}
    if step.kind == "cr":
        return {"discharge"}
    if step.kind in ("pulse", "profile") and step.waveform is not None:
        low, high = step.waveform.extremes()
        return {need for need, present in (("charge", high > 0), ("discharge", low < 0)) if present}
    return set()


def unsupported_steps(steps: Iterable[PlannedStep], config: ChannelConfig, instrument_drivers: dict[str, str],
                      ) -> list[str]:
    """Steps a source/load channel cannot do, each named with what the channel has.
    `instrument_drivers`: the bench's instrument name -> driver name."""
    if config.supply is not None:
        return []
    load_class = DRIVERS[instrument_drivers[config.load]] if config.load else None
    holds = bool(load_class and load_class.HOLDS_VOLTAGE_WITH_CURRENT_LIMIT)
    has = " and ".join(f"{role} '{name}' ({instrument_drivers[name]})"
                       for role, name in config.drive_instruments().items())
    able = {"charge": config.source is not None, "discharge": config.load is not None,
            "hold discharge voltage": holds, "hold voltage": config.source is not None or holds}
    why = {"charge": "to charge, but the channel has no source",
           "discharge": "to discharge, but the channel has no load",
           "hold discharge voltage": "CV discharge (CC-CV), but the load's driver has no CV mode with a current "
                                     "limit",
           "hold voltage": "to hold a voltage, but the channel has no source and the load's driver has no CV mode "
                           "with a current limit"}
    problems = []
    for step in steps:
        for need in sorted(step_needs(step)):
            if not able[need]:
                problems.append(f"step {step.number} '{step.name}' ({step.setpoint()}) needs {why[need]}; "
                                f"it has {has}")
                break
    return problems


class Channel:
    def __init__(self, name: str, config: ChannelConfig, drive: Drive | BidirectionalSupply,
                 meters: dict[str, ScanningMeter], clock: Clock, chamber: TemperatureChamber | None = None,
                 lost_meter_wait_s: float = 0.0):
        """`drive`: what drives the DUT (drive_for); a bare bidirectional supply is taken as its drive.
        `chamber`: the chamber the bench file names for the channel, read every tick, never switched.
        `lost_meter_wait_s`: the longest a tick may wait on meters that stopped answering
        (BenchConfig.lost_meter_wait_s); the watchdogs allow for it."""
        self.name = name
        self.config = config
        self.drive = drive if isinstance(drive, (SupplyDrive, SourceLoadDrive)) else SupplyDrive(drive)
        self.meters = meters
        self.chamber = chamber
        self.clock = clock
        self.layer_channels = config.layer_voltages.channel_numbers() if config.layer_voltages else []
        self.dut_sensors = [t.sensor for t in config.temperatures if t.sensor != "ambient"]
        self.has_ambient = any(t.sensor == "ambient" for t in config.temperatures)
        self.lost_meters: set[str] = set()  # meters (and the chamber) that stopped answering (see measure)
        self.lost_meter_wait_s = lost_meter_wait_s

    def meter_inputs(self) -> dict[str, list[MeterChannel]]:
        inputs: dict[str, list[MeterChannel]] = {name: [] for name in self.meters}
        if self.config.layer_voltages:
            lv = self.config.layer_voltages
            inputs[lv.meter] += [MeterChannel(c, "dc_voltage", lv.range_V) for c in self.layer_channels]
        for t in self.config.temperatures:
            inputs[t.meter].append(MeterChannel(t.channel, "thermocouple", thermocouple_type=t.thermocouple_type))
        if self.config.pressure:
            p = self.config.pressure
            inputs[p.meter].append(MeterChannel(p.channel, "dc_voltage", p.range_V))
        return inputs

    def configure(self, envelope: SafetyEnvelope, arm_watchdogs: bool = True) -> None:
        """Set up the meter scans, arm the instruments' own protection and then their watchdogs
        (see WATCHDOG_MIN_S); outputs stay off. `arm_watchdogs=False` for a look before the host
        may go quiet for an unknown time (a resume's preview, waiting for its operator): the
        runner's own configure arms them."""
        for name, inputs in self.meter_inputs().items():
            self.meters[name].configure_scan(inputs)
        self.drive.arm_protection(envelope)
        if arm_watchdogs:
            self.drive.arm_watchdog(watchdog_silence_s(self.config.tick_s, self.lost_meter_wait_s))

    @property
    def watchdogs(self) -> Mapping[str, float | None]:
        """Role of each output instrument -> the delay (s) its watchdog is armed with (None: it has
        none), as of the last configure()."""
        return self.drive.watchdogs

    def measure(self, tolerate_lost_meters: bool = False) -> Sample:
        """One sample. With `tolerate_lost_meters`, a meter that does not answer is put in
        `lost_meters` and its readings are left out of the sample (not NaN: nothing was read),
        and a lost meter is set up again and read as soon as it answers."""
        t = self.clock.now()
        unix = self.clock.unix_time()
        voltage, current = self.drive.measure()
        readings = {}
        for name, meter in self.meters.items():
            try:
                if name in self.lost_meters:
                    meter.configure_scan(self.meter_inputs()[name])  # it may have been power-cycled
                readings[name] = meter.scan()
                self.lost_meters.discard(name)
            except InstrumentLinkError:  # a timeout too; an instrument's own error report is not
                if not tolerate_lost_meters:
                    raise
                self.lost_meters.add(name)
        config = self.config
        layers = np.empty(0)
        if config.layer_voltages and config.layer_voltages.meter in readings:
            scanned = readings[config.layer_voltages.meter]
            layers = np.array([scanned[c] for c in self.layer_channels], float)
        temperatures, ambient = {}, None
        for t_input in config.temperatures:
            if t_input.meter not in readings:
                continue
            value = readings[t_input.meter][t_input.channel]
            if t_input.sensor == "ambient":
                ambient = value
            else:
                temperatures[t_input.sensor] = value
        pressure = None
        if config.pressure and config.pressure.meter in readings:
            volts = readings[config.pressure.meter][config.pressure.channel]
            pressure = config.pressure.fixture.pressure_MPa(volts) if math.isfinite(volts) else math.nan
        chamber = self._read_chamber(tolerate_lost_meters)
        if not self.has_ambient:
            ambient = chamber  # the chamber's air is the DUT's ambient (suspend bands watch it)
        return Sample(t, unix, voltage, current, layers, temperatures, ambient, pressure, chamber_degC=chamber)

    def _read_chamber(self, tolerate_lost: bool) -> float | None:
        """The chamber's air temperature; None without a chamber, or one that did not answer
        (tolerated as a lost meter is)."""
        if self.chamber is None:
            return None
        try:
            reading = self.chamber.read()
        except InstrumentLinkError:
            if not tolerate_lost:
                raise
            self.lost_meters.add(self.config.chamber)
            return None
        self.lost_meters.discard(self.config.chamber)
        return reading.temperature_degC

    def apply(self, command: OutputCommand | None) -> bool:
        """Bring the outputs to `command` (None: off); True if anything had to change."""
        return self.drive.apply(command)

    def check_health(self) -> None:
        """Error queues empty and outputs where we left them; raises InstrumentError otherwise."""
        self.drive.check_health()
        for name, meter in self.meters.items():
            if name not in self.lost_meters:
                meter.check_errors()
        if self.chamber is not None and self.config.chamber not in self.lost_meters:
            self.chamber.check_errors()

    def safe_state(self) -> None:
        """Outputs off, confirmed by the instruments; then their watchdogs disarmed (each
        instrument's safe_state does it once its output is off: roles.HostWatchdog)."""
        self.drive.safe_state()
