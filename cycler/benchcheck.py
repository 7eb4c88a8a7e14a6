"""`cycler bench check BENCH`: is the bench what its file says, before a test is started on it?

Connects to each instrument on its own (one that does not answer does not hide the others),
prints its identity and what its error queue holds; then, per channel, sets up the meter scans,
reads one sample and checks the wiring: the layer voltages add up to the stack voltage, the
temperatures and the pressure are readable and plausible, and no output is on. It switches
nothing on; it only arms the instruments' own protection at the DUT's limits, as a run's
preflight does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .bench import BenchFile
from .channel import Channel, chamber_for
from .errors import ExitCode, StackcyclerError
from .safety import SafetyEnvelope
from .session import drive_for, open_bench

# The layers and the stack are read by different instruments through different wires: they agree
# within the meters' accuracy plus the drop along the stack's interconnects at rest.
LAYER_SUM_TOLERANCE = 0.01  # of the stack voltage
LAYER_SUM_MIN_TOLERANCE_V = 0.05
PLAUSIBLE_TEMPERATURE_DEGC = (-40.0, 120.0)  # a reading outside is a wiring or sensor fault


@dataclass
class Finding:
    ok: bool
    what: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.what}"


@dataclass
class BenchCheck:
    bench: str
    findings: list[Finding] = field(default_factory=list)
    exit_code: ExitCode = ExitCode.COMPLETED

    def add(self, ok: bool, what: str, code: ExitCode = ExitCode.INVALID_INPUT) -> None:
        self.findings.append(Finding(ok, what))
        if not ok and (self.exit_code == ExitCode.COMPLETED or code == ExitCode.INSTRUMENT_FAULT):
            self.exit_code = code


def check_bench(bench: BenchFile) -> BenchCheck:
    report = BenchCheck(str(bench.path))
    answering = set()
    for name in sorted(bench.config.instruments):
        try:
            opened = open_bench(bench, {name}, speed=None, holder="cycler bench check")
        except StackcyclerError as error:
            report.add(False, f"instrument {name}: {error}", ExitCode.INSTRUMENT_FAULT)
            continue
        try:
            driver = opened.drivers[name]
            report.add(True, f"instrument {name}: {opened.identities[name]}")
            try:
                driver.check_errors()
                report.add(True, f"instrument {name}: error queue empty")
            except StackcyclerError as error:
                report.add(False, f"instrument {name}: error queue: {error}", ExitCode.INSTRUMENT_FAULT)
            answering.add(name)
        finally:
            opened.close()
    for channel_name, config in bench.config.channels.items():
        needed = config.instrument_names()
        if not needed <= answering:
            report.add(False, f"channel {channel_name}: not checked, {', '.join(sorted(needed - answering))} "
                              "did not answer")
            continue
        _check_channel(bench, channel_name, needed, report)
    return report


def _check_channel(bench: BenchFile, name: str, instruments: set[str], report: BenchCheck) -> None:
    config = bench.config.channels[name]
    opened = open_bench(bench, instruments, speed=None, holder="cycler bench check")
    try:
        channel = Channel(name, config, drive_for(config, opened.drivers),
                          {meter: opened.drivers[meter] for meter in config.meter_names()}, opened.clock,
                          chamber_for(config, opened.drivers), bench.config.lost_meter_wait_s())
        report.add(not channel.drive.output_found_on,
                   f"channel {name}: outputs off" if not channel.drive.output_found_on else
                   f"channel {name}: an output was found ON at connect (switched off)")
        channel.configure(SafetyEnvelope.tightest(config.dut.safety))
        sample = channel.measure()
        _check_sample(name, config, sample, report)
    except StackcyclerError as error:
        report.add(False, f"channel {name}: {error}", ExitCode.INSTRUMENT_FAULT)
    finally:
        opened.close()  # every output off, as on every exit path


def _check_sample(name: str, config, sample, report: BenchCheck) -> None:
    report.add(math.isfinite(sample.voltage_V), f"channel {name}: stack {sample.voltage_V:.4f} V, "
                                                  f"{sample.current_A:+.4f} A")
    layers = np.asarray(sample.layer_voltages_V, float)
    if len(layers):
        total = float(np.nansum(layers))
        tolerance = max(LAYER_SUM_TOLERANCE * abs(sample.voltage_V), LAYER_SUM_MIN_TOLERANCE_V)
        unread = int(np.isnan(layers).sum())
        report.add(unread == 0 and abs(total - sample.voltage_V) <= tolerance,
                   f"channel {name}: {len(layers)} layer voltages sum to {total:.4f} V against the stack's "
                   f"{sample.voltage_V:.4f} V (within ±{tolerance:.3g} V expected)"
                   + (f"; {unread} layer channel(s) unreadable" if unread else "")
                   + f"; lowest layer {np.nanmin(layers):.4f} V (layer {int(np.nanargmin(layers)) + 1}), "
                     f"highest {np.nanmax(layers):.4f} V (layer {int(np.nanargmax(layers)) + 1})")
    low, high = PLAUSIBLE_TEMPERATURE_DEGC
    temperatures = dict(sample.temperatures_degC)
    if sample.ambient_degC is not None:
        temperatures["ambient"] = sample.ambient_degC
    if sample.chamber_degC is not None:
        temperatures["chamber"] = sample.chamber_degC
    for sensor, value in temperatures.items():
        report.add(math.isfinite(value) and low <= value <= high,
                   f"channel {name}: temperature {sensor} {value:.2f} °C (plausible {low:g} to {high:g} °C)")
    if config.pressure is not None:
        safety = config.dut.safety
        low_p = safety.min_pressure_MPa if safety.min_pressure_MPa is not None else 0.0
        high_p = safety.max_pressure_MPa if safety.max_pressure_MPa is not None else math.inf
        value = sample.pressure_MPa if sample.pressure_MPa is not None else math.nan
        report.add(math.isfinite(value) and low_p <= value <= high_p,
                   f"channel {name}: stack pressure {value:.3f} MPa (the DUT's limits {low_p:g} to {high_p:g} MPa)")
