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

from typing import Literal

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
        readings = []
        for _ in range(self.trigger_count):
            layer_V = self.world.stack.layer_voltages_V()
            for channel in self.scan_list:
                value = self.nr3(self._reading(channel, layer_V))
                readings.append(f"{value},{channel}" if self.format_channel else value)
        return ",".join(readings)

    def _reading(self, channel: int, layer_V) -> float:
        """What the DMM reads on `channel` now, from the physics (`layer_V`: layer voltages now)."""
        setup = self._setup.get(channel) or _ChannelSetup()
        stack = self.world.stack
        if setup.function == "TEMP":
            where = self.config.thermocouples.get(channel)
            if where is None:
                return OVERLOAD  # open thermocouple
            temperature = stack.temperature_degC if where == "stack" else stack.params.ambient_degC
            return temperature + self._tc_offset[channel] + self.config.temperature_noise_degC * self._rng.standard_normal()
        if channel in self._layer_of:
            volts = float(layer_V[self._layer_of[channel]])
        elif channel == self.config.load_cell_channel:
            volts = self.world.load_cell_output_V()
        else:
            volts = 0.0  # nothing wired: shorted input
        volts += self.config.voltage_noise_V * self._rng.standard_normal()
        range_V = setup.range_V or next((r for r in DCV_RANGES_V if abs(volts) <= r), DCV_RANGES_V[-1])
        return volts if abs(volts) <= range_V * OVERRANGE_FACTOR else OVERLOAD
