"""Simulated Keysight DAQ970A data-acquisition mainframe with DAQM901A multiplexer cards.

Behaviour per the DAQ970A/DAQ973A Programming Guide and the 34970A User's Guide (same command
set): CONFigure and ROUTe:SCAN each *redefine* the scan list; channels are scanned in
ascending slot/channel order; READ? returns one NR3 reading per channel in that order;
CONFigure and *RST switch the FORMat:READing fields off; an overload reads +9.9E+37;
ROUTe:SCAN? answers a definite-length block such as #214(@101,102,103).

Wiring: which DAQ channel sees which layer voltage, thermocouple or load-cell output. A
thermocouple that opens (a broken junction, a lead pulled off: `open_thermocouple`) reads
+9.9E+37, as an unwired thermocouple input does.
The scan is instantaneous on the virtual clock (a real 27-channel scan at 1 PLC takes
about half a second; not modelled yet).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..scpi import format_channel_list, parse_channel_list
from .scpi import ScpiError, ScpiInstrument, scpi
from .world import SimWorld

DCV_RANGES_V = (0.1, 1.0, 10.0, 100.0, 300.0)  # DAQ970A internal DMM DC voltage ranges
OVERRANGE_FACTOR = 1.2  # readings up to 120 % of range
OVERLOAD = 9.9e37
SLOTS = (1, 2, 3)
CHANNELS_PER_CARD = 20  # DAQM901A: 20 two-wire voltage channels per slot
THERMOCOUPLE_TYPES = ("B", "E", "J", "K", "N", "R", "S", "T")


def _exists(channel: int) -> bool:
    slot, number = divmod(channel, 100)
    return slot in SLOTS and 1 <= number <= CHANNELS_PER_CARD


class StackWiring(BaseModel):
    """Which DAQ channels read one stack: its layers, its thermocouples, its load cell."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    layer_channels: str = Field(description="DAQ channels wired to layers 1..N, e.g. '101:120,201:203'")
    thermocouples: dict[int, Literal["stack", "ambient"]] = Field(default_factory=dict)
    load_cell_channel: int | None = None

    def channels(self) -> list[int]:
        return [*parse_channel_list(self.layer_channels), *self.thermocouples,
                *([self.load_cell_channel] if self.load_cell_channel is not None else [])]

    @model_validator(mode="after")
    def _channels_exist(self) -> "StackWiring":
        try:
            channels = self.channels()
        except ValueError as error:
            raise ValueError(f"layer_channels: {error}") from None
        missing = [channel for channel in channels if not _exists(channel)]
        if missing:
            raise ValueError(f"no DAQ channel {', '.join(map(str, missing))}: channels are slot 1 to {SLOTS[-1]} "
                             f"times 100 plus 1 to {CHANNELS_PER_CARD} (101 to {SLOTS[-1]}{CHANNELS_PER_CARD})")
        return self


class Daq970aSimConfig(StackWiring):
    """The DAQ and its wiring to the stack `stack`; `more_stacks` wires it to further stacks of a
    multi-channel bench (one DAQ scanning several stacks)."""

    kind: Literal["keysight-daq970a"] = "keysight-daq970a"
    serial: str = "MY58031276"
    firmware: str = "A.02.04-00.16-11.29-00.02-02-01"
    stack: str = "main"
    more_stacks: dict[str, StackWiring] = Field(default_factory=dict)
    voltage_noise_V: float = Field(20e-6, ge=0)
    temperature_noise_degC: float = Field(0.05, ge=0)

    def wiring(self) -> dict[str, StackWiring]:
        """Stack name -> its wiring, the DAQ's own stack first."""
        return {self.stack: self, **self.more_stacks}


class _ChannelSetup:
    __slots__ = ("function", "range_V", "tc_type")

    def __init__(self) -> None:
        self.function = "VOLT"
        self.range_V: float | None = None  # None = autorange
        self.tc_type = "J"


class SimDaq970a(ScpiInstrument):
    def __init__(self, world: SimWorld, name: str, config: Daq970aSimConfig,
                 more_worlds: dict[str, SimWorld] | None = None):
        """`world`: the DAQ's own stack's; `more_worlds`: those of `config.more_stacks`, by name."""
        super().__init__()
        self.world = world
        self.config = config
        self.IDENTITY = f"Keysight Technologies,DAQ970A,{config.serial},{config.firmware}"
        self._rng = world.noise_rng(name)
        self._wired: list[tuple[SimWorld, StackWiring]] = [(world, config)]
        self._wired += [((more_worlds or {})[stack], wiring) for stack, wiring in config.more_stacks.items()]
        seen: set[int] = set()
        for stack_world, wiring in self._wired:
            layers = len(parse_channel_list(wiring.layer_channels))
            if layers > stack_world.stack.layers:
                raise ValueError(f"{name}: layer_channels wires {layers} layers; the stack has "
                                 f"{stack_world.stack.layers}")
            for channel in wiring.channels():
                self._check_channel(channel)
                if channel in seen:
                    raise ValueError(f"{name}: channel {channel} is wired twice")
                seen.add(channel)
        self._tc_offset = {ch: 0.2 * self._rng.standard_normal()
                           for _, wiring in self._wired for ch in wiring.thermocouples}
        self.open_thermocouples: set[int] = set()  # wiring, not a setting: *RST does not mend them
        self.reset()

    def reset(self) -> None:
        self._setup: dict[int, _ChannelSetup] = {}
        self.scan_list: list[int] = []
        self.format_channel = False
        self.trigger_count = 1
        self._scan: _Scan | None = None  # worked out at the first READ? after a change

    def handle(self, message: str) -> str | None:
        for stack_world, _ in self._wired:
            stack_world.sync()
        return super().handle(message)

    def snapshot(self) -> dict:
        # the driver configures its scan again when it reconnects; broken wiring stays broken
        return {"open_thermocouples": sorted(self.open_thermocouples)}

    def restore(self, state: dict) -> None:
        self.open_thermocouples = set(state.get("open_thermocouples", ()))
        self._scan = None

    def open_thermocouple(self, channel: int) -> None:
        """The thermocouple wired to `channel` opens: from now on it reads as an open input."""
        if not any(channel in wiring.thermocouples for _, wiring in self._wired):
            raise ValueError(f"channel {channel} has no thermocouple wired to it")
        self.open_thermocouples.add(channel)
        self._scan = None

    @staticmethod
    def _check_channel(channel: int) -> None:
        if not _exists(channel):
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
        # Signals, in the order _scan_reply lays them out: per wired stack its layer voltages,
        # load cell, stack and ambient thermocouples; then an unwired (shorted) input and an
        # open thermocouple.
        reads: dict[int, int] = {}  # channel -> signal index
        thermocouple_signal: dict[int, int] = {}
        base = 0
        for stack_world, wiring in self._wired:
            layers = stack_world.stack.layers
            reads.update({ch: base + i for i, ch in enumerate(parse_channel_list(wiring.layer_channels))})
            if wiring.load_cell_channel is not None:
                reads[wiring.load_cell_channel] = base + layers
            thermocouple_signal.update({ch: base + layers + (1 if where == "stack" else 2)
                                        for ch, where in wiring.thermocouples.items()})
            base += layers + 3
        unwired, open_tc = base, base + 1
        config = self.config
        source, offset, noise, limit = [], [], [], []
        for channel in self.scan_list:
            setup = self._setup.get(channel) or _ChannelSetup()
            if setup.function == "TEMP":
                signal = None if channel in self.open_thermocouples else thermocouple_signal.get(channel)
                source.append(open_tc if signal is None else signal)
                offset.append(0.0 if signal is None else self._tc_offset[channel])
                noise.append(0.0 if signal is None else config.temperature_noise_degC)
                limit.append(math.inf)
                continue
            source.append(reads.get(channel, unwired))
            offset.append(0.0)
            noise.append(config.voltage_noise_V)
            # Autorange picks the smallest range that holds the reading, so with autorange a
            # reading overloads only beyond the top range.
            limit.append((setup.range_V or DCV_RANGES_V[-1]) * OVERRANGE_FACTOR)
        template = ",".join(f"%+.8E,{channel}" if self.format_channel else "%+.8E"
                            for channel in self.scan_list)  # NR3, as nr3()
        load_cells = {reads[w.load_cell_channel] for _, w in self._wired if w.load_cell_channel is not None}
        return _Scan(np.array(source), np.array(offset), np.array(noise), np.array(limit),
                     reads_load_cell=bool(load_cells & set(source)), template=template)

    def _scan_reply(self, scan: _Scan) -> str:
        """Every channel of the scan read once, from the physics now, with one noise draw each."""
        blocks = []
        for stack_world, _ in self._wired:
            stack = stack_world.stack
            blocks += [stack.layer_voltages_V(),
                       (stack_world.load_cell_output_V() if scan.reads_load_cell else 0.0,
                        stack.temperature_degC, stack.params.ambient_degC)]
        signals = np.concatenate((*blocks, (0.0, OVERLOAD)))
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
