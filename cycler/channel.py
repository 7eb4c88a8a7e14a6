"""A channel at run time: one DUT, its supply and the meter inputs wired to it.

It measures a Sample per tick, applies output commands (sending only what changed), checks
that the instruments are still in the state it put them in, and brings the outputs to the
safe state. It knows the wiring from the bench file; the runner knows none of it.
"""

from __future__ import annotations

import math

import numpy as np

from stackcycler.drivers.roles import BidirectionalSupply, MeterChannel, ScanningMeter

from .bench import ChannelConfig
from .clock import Clock
from .control import OutputCommand
from .errors import InstrumentError, InstrumentLinkError
from .safety import SafetyEnvelope
from .sample import Sample

# The instrument's own protection sits this far beyond the software safety limits, so the
# runner trips first and the instrument catches what a dead host cannot.
HARDWARE_PROTECTION_MARGIN = 1.05


class Channel:
    def __init__(self, name: str, config: ChannelConfig, supply: BidirectionalSupply,
                 meters: dict[str, ScanningMeter], clock: Clock):
        self.name = name
        self.config = config
        self.supply = supply
        self.meters = meters
        self.clock = clock
        self._command: OutputCommand | None = None
        self._output_on = False
        self.layer_channels = config.layer_voltages.channel_numbers() if config.layer_voltages else []
        self.dut_sensors = [t.sensor for t in config.temperatures if t.sensor != "ambient"]
        self.has_ambient = any(t.sensor == "ambient" for t in config.temperatures)
        self.lost_meters: set[str] = set()  # meters that stopped answering (see measure)

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

    def configure(self, envelope: SafetyEnvelope) -> None:
        """Set up the meter scans and arm the supply's own protection; outputs stay off."""
        for name, inputs in self.meter_inputs().items():
            self.meters[name].configure_scan(inputs)
        ratings = self.supply.ratings
        over_voltage = (envelope.max_voltage_V or ratings.voltage_V) * HARDWARE_PROTECTION_MARGIN
        currents = [c for c in (envelope.max_charge_current_A, envelope.max_discharge_current_A) if c]
        over_current = (max(currents) if currents else ratings.current_A) * HARDWARE_PROTECTION_MARGIN
        self.supply.set_protection(min(over_voltage, ratings.max_over_voltage_V),
                                   min(over_current, ratings.max_over_current_A))

    def measure(self, tolerate_lost_meters: bool = False) -> Sample:
        """One sample. With `tolerate_lost_meters`, a meter that does not answer is put in
        `lost_meters` and its readings are left out of the sample (not NaN: nothing was read),
        and a lost meter is set up again and read as soon as it answers."""
        t = self.clock.now()
        unix = self.clock.unix_time()
        voltage, current = self.supply.measure()
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
        return Sample(t, unix, voltage, current, layers, temperatures, ambient, pressure)

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

    def check_health(self) -> None:
        """Error queues empty and outputs where we left them; raises InstrumentError otherwise."""
        self.supply.check_errors()
        if self.supply.output_is_on() != self._output_on:
            state = "off" if self._output_on else "on"
            raise InstrumentError(f"supply at {self.supply.resource} switched its output {state} by itself "
                                  "(a protection trip?)")
        for name, meter in self.meters.items():
            if name not in self.lost_meters:
                meter.check_errors()

    def safe_state(self) -> None:
        """Output off, confirmed by the instrument."""
        self._output_on = False
        self._command = None
        self.supply.safe_state()
