"""One run from request to results: the use case behind `cycler run`.

    prepare()  read and validate the protocol and bench, bind the plan: files only, nothing is
               opened, so every input error is found before an instrument is touched
    execute()  open the bench, create the run folder, run, write the summary, close

Stop signals (Ctrl+C, SIGTERM) are turned into a stop request the runner honours at the next
tick; a second Ctrl+C while the runner is stuck raises at once (and the safe state still runs).
"""

from __future__ import annotations

import getpass
import hashlib
import platform
import signal
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Iterator

from stackcycler import __version__
from stackcycler.drivers.registry import DRIVERS
from stackcycler.drivers.sim.simulation import Simulation, build_simulation
from stackcycler.drivers.transport import open_transport
from stackcycler.protocols import ProtocolFile, load_protocol

from .analysis import SUMMARY_COLUMNS, cycle_summary, read_samples, result_line
from .bench import BenchFile, ChannelConfig, load_bench
from .channel import Channel
from .clock import Clock, VirtualClock, WallClock
from .control import control_for, rating_problems
from .errors import InvalidInput
from .plan import Plan, bind
from .runner import ProgressReporter, RunOutcome, Runner, StopRequest, sample_columns
from .safety import SafetyEnvelope
from .store import SIGN_CONVENTION, SUMMARY_FILE, RunStore, new_run_folder, utc_iso


@dataclass
class RunRequest:
    protocol: str
    bench: str = "sim"
    channel: str | None = None
    speed: float | None = None  # simulated benches: None = as fast as possible, 1 = real time
    runs_dir: Path = Path("runs")
    operator: str = field(default_factory=getpass.getuser)
    dut_id: str | None = None
    overrides: dict[str, float] = field(default_factory=dict)


@dataclass
class PreparedRun:
    request: RunRequest
    protocol: ProtocolFile
    bench: BenchFile
    channel_name: str
    channel: ChannelConfig
    plan: Plan


def prepare(request: RunRequest) -> PreparedRun:
    protocol = load_protocol(request.protocol)
    bench = load_bench(request.bench)
    channels = bench.config.channels
    channel_name = request.channel or next(iter(channels))
    if channel_name not in channels:
        raise InvalidInput(f"{bench.path}: no channel '{channel_name}'; channels: {', '.join(channels)}")
    if request.speed is not None and not bench.config.simulated:
        raise InvalidInput(f"--speed applies to simulated benches only; {bench.path} drives real instruments")
    channel = channels[channel_name]
    if request.dut_id:
        channel = channel.model_copy(update={"dut": channel.dut.model_copy(update={"id": request.dut_id})})
    envelope = SafetyEnvelope.tightest(channel.dut.safety, protocol.model.safety)
    plan = bind(protocol.model, protocol.path, protocol.text, channel, envelope, request.overrides)
    return PreparedRun(request, protocol, bench, channel_name, channel, plan)


@dataclass
class OpenBench:
    clock: Clock
    simulation: Simulation | None
    drivers: dict[str, object]
    identities: dict[str, str]

    def close(self) -> None:
        for driver in self.drivers.values():
            try:
                driver.close()
            except Exception:
                pass  # closing is best effort; the safe state was reached before


def open_bench(bench: BenchFile, instrument_names: set[str], speed: float | None) -> OpenBench:
    config = bench.config
    clock: Clock = VirtualClock(speed) if config.simulated else WallClock()
    simulation = build_simulation(config.simulation, clock) if config.simulated else None
    opened = OpenBench(clock, simulation, {}, {})
    try:
        for name in sorted(instrument_names):
            instrument = config.instruments[name]
            transport = open_transport(instrument.resource, simulation.instruments if simulation else None,
                                       instrument.timeout_s)
            driver = DRIVERS[instrument.driver](transport)
            opened.drivers[name] = driver
            opened.identities[name] = driver.connect()
    except BaseException:
        for driver in opened.drivers.values():
            safe_state = getattr(driver, "safe_state", None)
            if safe_state is not None:
                try:
                    safe_state()
                except Exception:
                    pass
        opened.close()
        raise
    return opened


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _software_versions() -> dict[str, str]:
    versions = {"stackcycler": __version__, "python": platform.python_version(), "platform": platform.platform()}
    for package in ("numpy", "pandas", "pydantic", "pyvisa", "pyvisa-py"):
        try:
            versions[package] = package_metadata.version(package)
        except package_metadata.PackageNotFoundError:
            pass
    return versions


def _metadata(prepared: PreparedRun, opened: OpenBench, channel: Channel, columns: list[str]) -> dict:
    plan, bench, request = prepared.plan, prepared.bench, prepared.request
    instruments = {name: {"driver": bench.config.instruments[name].driver,
                          "resource": bench.config.instruments[name].resource,
                          "identity": identity}
                   for name, identity in opened.identities.items()}
    return {
        "format": "stackcycler run folder, version 1",
        "state": "running",
        "started": utc_iso(opened.clock.unix_time()),
        "start_unix_time_s": opened.clock.unix_time(),
        "operator": request.operator,
        "dut": prepared.channel.dut.model_dump(),
        "protocol": {"name": plan.protocol.name, "file": str(plan.protocol_path), "sha256": _sha256(plan.protocol_text),
                     "parameters": plan.parameters,
                     "steps": [{"step": s.number, "name": s.name, "setpoint": s.setpoint(),
                                "ends": [e.describe() for e in s.ends]} for s in plan.steps]},
        "bench": {"name": bench.config.name, "file": str(bench.path), "sha256": _sha256(bench.text),
                  "simulated": bench.config.simulated, "channel": prepared.channel_name,
                  "clock": "virtual (simulated time)" if bench.config.simulated else "wall clock",
                  "tick_s": channel.config.tick_s,
                  "speed": ("max" if request.speed is None else request.speed) if bench.config.simulated else "real time",
                  "resolved": bench.resolved},  # with any `extends` base merged in
        "instruments": instruments,
        "safety_envelope": {**plan.envelope.armed(), "debounce_s": plan.envelope.debounce_s},
        "record": {"time_s": plan.record_time_s, "voltage_V": plan.record_voltage_V, "current_A": plan.record_current_A},
        "sign_convention": SIGN_CONVENTION,
        "columns": columns,
        "software": _software_versions(),
    }


def check_against_instruments(prepared: PreparedRun) -> tuple[list[str], str]:
    """Setpoints against the supply's ratings. Simulated instruments are asked in process;
    real ones only when a run connects. Returns (problems, a note on what was checked)."""
    if not prepared.bench.config.simulated:
        return [], "instrument ranges are checked when a run connects to the bench"
    config = prepared.channel
    opened = open_bench(prepared.bench, {config.supply}, speed=None)
    try:
        supply = opened.drivers[config.supply]
        controls = {step.number: control_for(step, prepared.plan.envelope, supply.ratings, supply.has_power_limits,
                                             prepared.plan.dut) for step in prepared.plan.steps}
        return rating_problems(prepared.plan.steps, controls, supply.ratings), \
            f"checked against the simulated {opened.identities[config.supply]}"
    finally:
        opened.close()


@dataclass
class DryRun:
    """What a quick simulation of a plan on its simulated bench found."""

    duration_s: float | None  # test time to the end; None if the wall-time budget ran out first
    state: str  # completed, tripped, faulted, ... or "unfinished"
    reason: str


class _WallBudget:
    """A silent reporter that asks the dry run to stop when its wall-time budget is spent."""

    def __init__(self, stop: StopRequest, budget_s: float):
        self.stop, self.deadline = stop, time.monotonic() + budget_s

    def step_started(self, status) -> None:
        self.tick(status)

    def tick(self, status) -> None:
        if time.monotonic() > self.deadline:
            self.stop.request("wall-time budget of the dry run spent")

    def finished(self, outcome) -> None:
        pass


DRY_RUN_TICK_S = 10.0
DRY_RUN_WALL_BUDGET_S = 10.0


def dry_run(prepared: PreparedRun, tick_s: float = DRY_RUN_TICK_S,
            wall_budget_s: float = DRY_RUN_WALL_BUDGET_S) -> DryRun | None:
    """Run the plan on the bench's simulated world at a coarse tick; None for a real bench."""
    if not prepared.bench.config.simulated:
        return None
    coarse = replace(prepared, channel=prepared.channel.model_copy(
        update={"tick_s": max(tick_s, prepared.channel.tick_s)}))
    with tempfile.TemporaryDirectory() as runs:
        coarse.request = replace(prepared.request, runs_dir=Path(runs), speed=None)
        stop = StopRequest()
        result = execute(coarse, _WallBudget(stop, wall_budget_s), stop)
    outcome = result.outcome
    if outcome.state == "interrupted":
        return DryRun(None, "unfinished", f"not finished within {wall_budget_s:g} s of simulation")
    return DryRun(result.end_test_time_s, outcome.state, outcome.reason)


@contextmanager
def stop_on_signals(stop: StopRequest) -> Iterator[None]:
    """Ctrl+C and SIGTERM ask the runner to stop at the next tick; a second Ctrl+C raises at once."""

    def on_sigint(signum, frame):
        if stop() and not stop.shutting_down:
            raise KeyboardInterrupt("second Ctrl+C")
        stop.request("Ctrl+C")

    def on_sigterm(signum, frame):
        stop.request("SIGTERM")

    previous = {signal.SIGINT: signal.signal(signal.SIGINT, on_sigint),
                signal.SIGTERM: signal.signal(signal.SIGTERM, on_sigterm)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@dataclass
class RunResult:
    outcome: RunOutcome
    summary_line: str
    simulation: Simulation | None  # the simulated world, for tests that check against its physics
    end_test_time_s: float = 0.0


def execute(prepared: PreparedRun, reporter: ProgressReporter, stop: StopRequest | None = None) -> RunResult:
    stop = stop or StopRequest()
    config = prepared.channel
    names = {config.supply, *config.meter_names()}
    opened = open_bench(prepared.bench, names, prepared.request.speed)
    try:
        channel = Channel(prepared.channel_name, config, opened.drivers[config.supply],
                          {name: opened.drivers[name] for name in config.meter_names()}, opened.clock)
        columns = sample_columns(channel)
        stem = (f"{_folder_time(opened.clock.unix_time())}_{prepared.plan.protocol.name}_"
                f"{prepared.bench.config.name}_{prepared.channel_name}")
        store = RunStore(new_run_folder(prepared.request.runs_dir, _safe(stem)), columns,
                         _metadata(prepared, opened, channel, [c.name for c in columns]),
                         prepared.protocol.text, prepared.bench.text)
        try:
            outcome = Runner(prepared.plan, channel, opened.clock, store, reporter, stop).run()
        finally:
            store.close()
        summary = cycle_summary(read_samples(store.folder))
        summary.to_csv(store.folder / SUMMARY_FILE, index=False)
        line = result_line(summary)
        store.update_metadata(state=outcome.state, exit_code=int(outcome.exit_code), reason=outcome.reason,
                              ended=utc_iso(opened.clock.unix_time()), end_test_time_s=opened.clock.now(),
                              outputs_confirmed_off=outcome.outputs_confirmed_off, result=line,
                              summary=summary.rename(columns={v: k for k, v in SUMMARY_COLUMNS.items()})
                              .to_dict(orient="records"), **outcome.details)
        return RunResult(outcome, line, opened.simulation, opened.clock.now())
    finally:
        opened.close()


def _folder_time(unix_time: float) -> str:
    return datetime.fromtimestamp(unix_time).strftime("%Y%m%d-%H%M%S")


def _safe(stem: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in stem)

