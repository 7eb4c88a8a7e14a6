"""Simulated Keysight DAQ970A data-acquisition mainframe with DAQM901A multiplexer cards.

Behaviour per the DAQ970A/DAQ973A Programming Guide and the 34970A User's Guide (same command
set): CONFigure and ROUTe:SCAN each *redefine* the scan list; channels are scanned in
ascending slot/channel order; READ? returns one NR3 reading per channel in that order;
CONFigure and *RST switch the FORMat:READing fields off; an overload reads +9.9E+37;
ROUTe:SCAN? answers a definite-length block such as #214(@101,102,103).

Wiring: which DAQ channel sees which layer voltage, thermocouple or load-cell output.
The scan is instantaneous on the virtual clock (a real 27-channel scan at 1 PLC takes
about half a second; not modelled yet).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..scpi import format_channel_list, parse_channel_list
from .scpi import ScpiError, ScpiInstrument, scpi
from .world import SimWorld

DCV_RANGES_V = (0.1, 1.0, 10.0, 100.0, 300.0)  # DAQ970A internal DMM DC voltage ranges
OVERRANGE_FACTOR = 1.2  # readings up to 120 % of range
OVERLOAD = 9.9e37
SLOTS = (1, 2, 3)
CHANNELS_PER_CARD = 20  # DAQM901A: 20 two-wire voltage channels per slot
THERMOCOUPLE_TYPES = ("B", "E", "J", "K", "N", "R", "S", "T")


class Daq970aSimConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    kind: Literal["keysight-daq970a"] = "keysight-daq970a"
    serial: str = "MY58031276"
    firmware: str = "A.02.04-00.16-11.29-00.02-02-01"
    layer_channels: str = Field(description="DAQ channels wired to layers 1..N, e.g. '101:120,201:203'")
    thermocouples: dict[int, Literal["stack", "ambient"]] = Field(default_factory=dict)
    load_cell_channel: int | None = None
    voltage_noise_V: float = Field(20e-6, ge=0)
    temperature_noise_degC: float = Field(0.05, ge=0)


class _ChannelSetup:
    __slots__ = ("function", "range_V", "tc_type")

    def __init__(self) -> None:
        self.function = "VOLT"
        self.range_V: float | None = None  # None = autorange
        self.tc_type = "J"


class SimDaq970a(ScpiInstrument):
    def __init__(self, world: SimWorld, name: str, config: Daq970aSimConfig):
        super().__init__()
        self.world = world
        self.config = config
        self.IDENTITY = f"Keysight Technologies,DAQ970A,{config.serial},{config.firmware}"
        self._rng = world.noise_rng(name)
        self._layer_of = {ch: i for i, ch in enumerate(parse_channel_list(config.layer_channels))}
        if len(self._layer_of) > world.stack.layers:
            raise ValueError(f"{name}: layer_channels wires {len(self._layer_of)} layers; the stack has "
                             f"{world.stack.layers}")
        for channel in [*self._layer_of, *config.thermocouples, config.load_cell_channel]:
            if channel is not None:
                self._check_channel(channel)
        self._tc_offset = {ch: 0.2 * self._rng.standard_normal() for ch in config.thermocouples}
        self.reset()

    def reset(self) -> None:
        self._setup: dict[int, _ChannelSetup] = {}
        self.scan_list: list[int] = []
        self.format_channel = False
        self.trigger_count = 1
        self._scan: _Scan | None = None  # worked out at the first READ? after a change

    def handle(self, message: str) -> str | None:
        self.world.sync()
        return super().handle(message)

    def snapshot(self) -> dict:
        return {}  # the driver configures its scan again when it reconnects

    def restore(self, state: dict) -> None:
        pass

    @staticmethod
    def _check_channel(channel: int) -> None:
        slot, number = divmod(channel, 100)
        if slot not in SLOTS or not 1 <= number <= CHANNELS_PER_CARD:
            raise ScpiError(-224, f"Illegal parameter value; no channel {channel}")

    def _channels(self, arg: str) -> list[int]:
        channels = self.channel_list(arg)
        for channel in channels:
            self._check_channel(channel)
        return sorted(set(channels))  # scanned in ascending order, each once

    def _configure(self, channels: list[int], function: str, range_V: float | None = None, tc_type: str = "J"):
        for channel in channels:
            setup = self._setup.setdefault(channel, _ChannelSetup())
            setup.function, setup.range_V, setup.tc_type = function, range_V, tc_type
        self.scan_list = channels
        self.format_channel = False
        self._scan = None

    @scpi("CONFigure:VOLTage[:DC]", nargs=(1, 3))
    def _conf_volt(self, args):
        channels = self._channels(args[-1])
        range_V = None
        if len(args) >= 2 and args[0].strip().upper() not in ("AUTO", "DEF", "DEFAULT"):
            requested = self.number(args[0], 0.0, DCV_RANGES_V[-1])
            range_V = next(r for r in DCV_RANGES_V if r >= requested)
        self._configure(channels, "VOLT", range_V)

    @scpi("CONFigure:TEMPerature", nargs=(3, 5))
    def _conf_temp(self, args):
        transducer = self.choice(args[0], ["TCouple", "DEFault"])
        if transducer not in ("TCOUPLE", "DEFAULT"):
            raise ScpiError(-224)
        tc_type = args[1].strip().upper()
        if tc_type in ("DEF", "DEFAULT"):
            tc_type = "J"
        if tc_type not in THERMOCOUPLE_TYPES:
            raise ScpiError(-224)
        self._configure(self._channels(args[-1]), "TEMP", tc_type=tc_type)

    @scpi("ROUTe:SCAN")
    def _route_scan(self, args):
        self.scan_list = self._channels(args[0])
        self._scan = None

    @scpi("ROUTe:SCAN?")
    def _route_scan_q(self, args):
        body = format_channel_list(self.scan_list)
        return f"#{len(str(len(body)))}{len(body)}{body}"

    @scpi("ROUTe:SCAN:SIZE?")
    def _route_scan_size(self, args):
        return f"{len(self.scan_list):+d}"

    @scpi("FORMat:READing:CHANnel[:STATe]")
    def _format_channel(self, args):
        self.format_channel = self.boolean(args[0])
        self._scan = None

    @scpi("FORMat:READing:CHANnel[:STATe]?")
    def _format_channel_q(self, args):
        return "1" if self.format_channel else "0"

    @scpi("TRIGger:COUNt")
    def _trigger_count(self, args):
        self.trigger_count = int(self.number(args[0], 1, 1_000_000, default=1))

    @scpi("TRIGger:COUNt?")
    def _trigger_count_q(self, args):
        return self.nr3(self.trigger_count)

    @scpi("TRIGger:SOURce")
    def _trigger_source(self, args):
        self.choice(args[0], ["IMMediate", "BUS", "EXTernal", "TIMer"])

    @scpi("SENSe:TEMPerature:TRANsducer:TCouple:RJUNction:TYPE", nargs=(2, 2))
    def _reference_junction(self, args):
        self.choice(args[0], ["INTernal", "EXTernal", "FIXed"])
        self._channels(args[1])

    @scpi("READ?")
    def _read(self, args):
        if not self.scan_list:
            raise ScpiError(-221, "Settings conflict; empty scan list")
        if self._scan is None:
            self._scan = self._plan_scan()
        return ",".join(self._scan_reply(self._scan) for _ in range(self.trigger_count))

    def _plan_scan(self) -> _Scan:
        """What each channel of the scan list reads, worked out once per configuration."""
        layers, config = self.world.stack.layers, self.config
        load_cell, stack_tc, ambient_tc, unwired, open_tc = range(layers, layers + 5)  # see _scan_reply
        source, offset, noise, limit = [], [], [], []
        for channel in self.scan_list:
            setup = self._setup.get(channel) or _ChannelSetup()
            if setup.function == "TEMP":
                where = config.thermocouples.get(channel)
                if where is None:
                    source.append(open_tc)
                    offset.append(0.0)
                    noise.append(0.0)
                else:
                    source.append(stack_tc if where == "stack" else ambient_tc)
                    offset.append(self._tc_offset[channel])
                    noise.append(config.temperature_noise_degC)
                limit.append(math.inf)
                continue
            if channel in self._layer_of:
                source.append(self._layer_of[channel])
            elif channel == config.load_cell_channel:
                source.append(load_cell)
            else:
                source.append(unwired)
            offset.append(0.0)
            noise.append(config.voltage_noise_V)
            # Autorange picks the smallest range that holds the reading, so with autorange a
            # reading overloads only beyond the top range.
            limit.append((setup.range_V or DCV_RANGES_V[-1]) * OVERRANGE_FACTOR)
        template = ",".join(f"%+.8E,{channel}" if self.format_channel else "%+.8E"
                            for channel in self.scan_list)  # NR3, as nr3()
        return _Scan(np.array(source), np.array(offset), np.array(noise), np.array(limit),
                     reads_load_cell=load_cell in source, template=template)

    def _scan_reply(self, scan: _Scan) -> str:
        """Every channel of the scan read once, from the physics now, with one noise draw each."""
        stack = self.world.stack
        # Indexed by _Scan.source: each layer voltage, the load cell, the stack and ambient
        # thermocouples, an unwired (shorted) input, an open thermocouple.
        signals = np.concatenate((stack.layer_voltages_V(),
                                  (self.world.load_cell_output_V() if scan.reads_load_cell else 0.0,
                                   stack.temperature_degC, stack.params.ambient_degC, 0.0, OVERLOAD)))
        readings = signals[scan.source] + scan.offset + scan.noise * self._rng.standard_normal(len(scan.source))
        readings = np.where(np.abs(readings) <= scan.limit, readings, OVERLOAD)
        return scan.template % tuple(readings.tolist())


@dataclass(frozen=True)
class _Scan:
    """Per channel of the scan list, in scan order: the signal it reads, the thermocouple's
    offset, the noise's standard deviation and the overload threshold; the reply's format."""

    source: np.ndarray
    offset: np.ndarray
    noise: np.ndarray
    limit: np.ndarray
    reads_load_cell: bool
    template: str
