"""Keysight DAQ970A (and 34970A/34972A) scanning data-acquisition mainframe, SCPI.

Facts used (DAQ970A/DAQ973A Programming Guide; 34970A User's Guide; instruments.md §6):
* CONFigure redefines the scan list, so all channels are configured first and the full list
  is set last with ROUTe:SCAN;
* READ? scans the list once; with FORMat:READing:CHANnel ON every reading is followed by its
  channel number, which lets us check the wiring on every scan;
* an overload or open thermocouple reads +9.9E+37.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Sequence

from stackcycler.errors import InstrumentError

from .roles import MeterChannel, ScanningMeter
from .scpi import ScpiDriver, format_channel_list, parse_number

OVERLOAD_THRESHOLD = 9.0e37
DCV_RANGES_V = (0.1, 1.0, 10.0, 100.0, 300.0)


class KeysightDaq970a(ScpiDriver, ScanningMeter):
    FRIENDLY_NAME = "Keysight DAQ970A"

    def __init__(self, transport):
        super().__init__(transport)
        self._channels: list[int] = []
        self._channel_texts: list[str] = []  # the channel fields of a READ? reply, as the DAQ writes them

    def connect(self) -> str:
        identity = self.identify()
        if not any(model in identity for model in ("DAQ970A", "DAQ973A", "34970A", "34972A")):
            raise InstrumentError(f"{self.resource} is not a DAQ970A/34970A: *IDN? answered {identity!r}")
        self.write("*CLS")
        self.write_checked("*RST")
        return identity

    def configure_scan(self, inputs: Sequence[MeterChannel]) -> None:
        voltage_groups: dict[float | None, list[int]] = defaultdict(list)
        thermocouple_groups: dict[str, list[int]] = defaultdict(list)
        for item in inputs:
            if item.function == "dc_voltage":
                if item.range_V is not None and item.range_V not in DCV_RANGES_V:
                    raise InstrumentError(f"DC voltage range {item.range_V} V on channel {item.channel}: "
                                          f"the DAQ970A has {', '.join(map(str, DCV_RANGES_V))} V or autorange")
                voltage_groups[item.range_V].append(item.channel)
            else:
                thermocouple_groups[item.thermocouple_type].append(item.channel)
        with self.batch():
            for range_V, channels in voltage_groups.items():
                self.write(f"CONF:VOLT:DC {'AUTO' if range_V is None else range_V},{format_channel_list(channels)}")
            for tc_type, channels in thermocouple_groups.items():
                self.write(f"CONF:TEMP TC,{tc_type},{format_channel_list(channels)}")
                self.write(f"SENS:TEMP:TRAN:TC:RJUN:TYPE INT,{format_channel_list(channels)}")
            self._channels = sorted(item.channel for item in inputs)
            self._channel_texts = [str(channel) for channel in self._channels]
            self.write(f"ROUT:SCAN {format_channel_list(self._channels)}")
            self.write("FORM:READ:CHAN ON")
            self.write("TRIG:COUN 1")
            self.write("TRIG:SOUR IMM")
        size = int(parse_number(self.query("ROUT:SCAN:SIZE?")))
        if size != len(self._channels):
            raise InstrumentError(f"{self.resource}: scan list holds {size} channels, expected {len(self._channels)}")

    def scan(self) -> dict[int, float]:
        reply = self.query("READ?")
        fields = reply.split(",")
        if len(fields) != 2 * len(self._channels):
            raise InstrumentError(f"{self.resource}: READ? gave {len(fields)} fields, "
                                  f"expected a value and a channel for each of {len(self._channels)} channels")
        value_texts, channel_texts = fields[0::2], fields[1::2]
        try:
            values = [float(text) for text in value_texts]
            # The usual reply names the channels exactly as we listed them: nothing to convert.
            channels = self._channels if channel_texts == self._channel_texts else [int(t) for t in channel_texts]
        except ValueError:
            value_text, channel_text = next(pair for pair in zip(value_texts, channel_texts) if not _is_reading(*pair))
            raise InstrumentError(f"{self.resource}: READ? answered {reply!r}; "
                                  f"'{value_text},{channel_text}' is not a reading and a channel") from None
        if channels is not self._channels and sorted(set(channels)) != self._channels:
            raise InstrumentError(f"{self.resource}: READ? returned channels {sorted(set(channels))}, "
                                  f"expected {self._channels}")
        if -OVERLOAD_THRESHOLD < min(values) and max(values) < OVERLOAD_THRESHOLD:
            return dict(zip(channels, values))  # the usual scan: no overload to mark
        return {channel: math.nan if abs(value) >= OVERLOAD_THRESHOLD else value
                for channel, value in zip(channels, values)}


def _is_reading(value_text: str, channel_text: str) -> bool:
    try:
        float(value_text), int(channel_text)
    except ValueError:
        return False
    return True
