"""Several channels of one bench, each with its own protocol, run folder, tick period and
safety, run together in one thread.

One thread, on purpose: the channels take turns, tick by tick, in time order, so a shared
instrument is only ever talked to by one channel at a time (no interleaved query and reply),
a simulated bench keeps one virtual clock for all its stacks, and a trip, a fault or an
operator's stop on one channel ends that channel alone, in its safe state, while the others go on.

A meter shared between channels (one scanning DAQ for several stacks) scans the union of
their inputs; channels due at the same moment share that one scan, as on a commercial
multi-channel cycler, and a channel that measures again within its own tick (right after it
switched its output) gets a fresh scan.
"""

from __future__ import annotations

from stackcycler.drivers.roles import MeterChannel, ScanningMeter

from .clock import Clock
from .errors import InvalidInput
from .runner import RunOutcome, Runner, StopRequest


class SharedMeter:
    """One scanning meter read by several channels; `view(channel)` is what each channel holds."""

    def __init__(self, meter: ScanningMeter, name: str, inputs: list[MeterChannel]):
        self.meter = meter
        union: dict[int, MeterChannel] = {}
        for item in inputs:  # two channels may read one input (an ambient sensor), set up alike
            if union.setdefault(item.channel, item) != item:
                raise InvalidInput(f"meter '{name}' input {item.channel} is wired to two channels with different "
                                   f"settings ({union[item.channel]} and {item}); check the bench file")
        self.inputs = sorted(union.values(), key=lambda item: item.channel)
        self._configured = False
        self._readings: dict[int, float] | None = None
        self._served: set[str] = set()

    def new_round(self) -> None:
        """The clock has moved on: the next scan is a new one."""
        self._readings = None

    def view(self, channel: str) -> "SharedMeterView":
        return SharedMeterView(self, channel)

    def configure(self, inputs: list[MeterChannel]) -> None:
        wanted = {item.channel: item for item in self.inputs}
        if any(wanted.get(item.channel) != item for item in inputs):
            raise InvalidInput(f"{self.meter.resource}: a channel asks for inputs the shared scan does not hold")
        if not self._configured:
            self.meter.configure_scan(self.inputs)
            self._configured = True

    def scan(self, channel: str) -> dict[int, float]:
        if self._readings is None or channel in self._served:
            self._readings = self.meter.scan()
            self._served = set()
        self._served.add(channel)
        return self._readings


class SharedMeterView:
    """The ScanningMeter role for one channel of a shared meter."""

    def __init__(self, shared: SharedMeter, channel: str):
        self.shared = shared
        self.channel = channel
        self.resource = shared.meter.resource

    def configure_scan(self, inputs: list[MeterChannel]) -> None:
        self.shared.configure(inputs)

    def scan(self) -> dict[int, float]:
        return self.shared.scan(self.channel)

    def check_errors(self) -> None:
        self.shared.meter.check_errors()


def run_together(runners: list[Runner], clock: Clock, stop: StopRequest,
                 shared_meters: list[SharedMeter]) -> list[RunOutcome]:
    """Run every channel to its end; a stop request (Ctrl+C, SIGTERM) ends them all safely."""
    for runner in runners:
        runner.start()
    while True:
        active = [runner for runner in runners if runner.outcome is None]
        if not active:
            return [runner.outcome for runner in runners]
        clock.sleep_until(min(runner.next_tick_s for runner in active), stop)
        for meter in shared_meters:
            meter.new_round()
        now = clock.now()
        for runner in active:
            if stop() or runner.next_tick_s <= now:
                runner.advance()  # on a stop, each channel ends at once in its safe state
