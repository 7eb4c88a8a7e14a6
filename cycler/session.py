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
import logging
import os
import platform
import signal
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Callable, Iterator

from stackcycler import __version__
from stackcycler.drivers.registry import DRIVERS
from stackcycler.drivers.sim.simulation import Simulation, build_simulation, driven_stack, snapshot_stacks
from stackcycler.drivers.transport import (DEFAULT_BAUD_RATE, SIM_SCHEME, SharedConnection, open_byte_transport,
                                         open_transport)
from stackcycler.protocols import ProtocolFile, load_protocol

from .analysis import SUMMARY_INPUTS, result_line, summarise, summary_records
from .dataset import load as load_data
from .bench import BenchConfig, BenchFile, ChannelConfig, load_bench
from .channel import Channel, chamber_for, drive_for, unsupported_steps
from .clock import Clock, VirtualClock, WallClock
from .operation import RunState, run_state, this_host
from .control import control_for
from .errors import InvalidInput, StackcyclerError, StorageFailure, UnreadableInput
from .locks import InstrumentLocks, canonical_resource
from .notify import event_from_run, load_config, notify, run_events_logger
from .plan import Plan, PlannedStep, bind
from .runner import ProgressReporter, RunOutcome, Runner, StopRequest, sample_columns
from .safety import SafetyEnvelope
from .scheduler import SharedMeter, run_together
from .sample import Sample
from .store import (CHECKPOINT_FILE, METADATA_FILE, SIGN_CONVENTION, SUMMARY_FILE, RunStore, bench_copy_name,
                    new_run_folder, read_json, utc_iso)
from .validation import validate_data


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
    return _bind(request, load_protocol(request.protocol), load_bench(request.bench))


def _bind(request: RunRequest, protocol: ProtocolFile, bench: BenchFile) -> PreparedRun:
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
    drivers = {name: instrument.driver for name, instrument in bench.config.instruments.items()}
    problems = unsupported_steps(plan.steps, channel, drivers)
    if problems:
        raise InvalidInput("\n".join(f"{protocol.path}: {problem} (channel '{channel_name}' of {bench.path})"
                                     for problem in problems))
    return PreparedRun(request, protocol, bench, channel_name, channel, plan)


@dataclass
class OpenBench:
    clock: Clock
    simulation: Simulation | None
    drivers: dict[str, object]
    identities: dict[str, str]
    locks: InstrumentLocks
    notices: list[logging.Handler] = field(default_factory=list)  # see _log_instrument_notices

    def close(self) -> None:
        try:
            for driver in self.drivers.values():
                try:
                    driver.close()
                except Exception:
                    pass  # closing is best effort; the safe state was reached before
        finally:
            self.locks.release_all()
            for handler in self.notices:
                logging.getLogger(DRIVER_LOGGER).removeHandler(handler)


def instruments_to_lock(config: BenchConfig, instrument_names: set[str]) -> dict[str, str]:
    """name -> resource of the instruments a program must hold alone: the real ones (a simulated
    instrument lives inside its own run)."""
    if config.simulated:
        return {}
    return {name: config.instruments[name].resource for name in sorted(instrument_names)}


def open_bench(bench: BenchFile, instrument_names: set[str], speed: float | None, start_s: float = 0.0,
               start_unix: float | None = None, simulation_state: dict | None = None,
               holder: str = "cycler") -> OpenBench:
    """Lock and connect the named instruments. A resumed run starts its clock at `start_s` and, on a
    simulated bench, restores the simulated hardware from its snapshot first."""
    config = bench.config
    locks = InstrumentLocks(holder)
    try:
        for name, resource in instruments_to_lock(config, instrument_names).items():
            locks.acquire(name, resource)  # before anything is sent to any of them
    except BaseException:
        locks.release_all()
        raise
    clock: Clock = (VirtualClock(speed, start_unix=start_unix, start_s=start_s) if config.simulated
                    else WallClock(start_s))
    simulation = build_simulation(config.simulation, clock) if config.simulated else None
    if simulation is not None and simulation_state is not None:
        simulation.restore(simulation_state)
    opened = OpenBench(clock, simulation, {}, {}, locks)
    simulated = simulation.instruments if simulation else None
    # The slots of one mainframe, each a channel's instrument (bench validation allows no other
    # sharing), go over one connection and share their driver's Mainframe.
    users = Counter(canonical_resource(config.instruments[name].resource) for name in instrument_names)
    shared: dict[str, tuple[SharedConnection, object]] = {}
    try:
        for name in sorted(instrument_names):
            instrument = config.instruments[name]
            driver_class = DRIVERS[instrument.driver]
            settings = instrument.driver_settings()
            resource = canonical_resource(instrument.resource)
            if users[resource] > 1:
                if resource not in shared:
                    shared[resource] = (SharedConnection(open_transport(instrument.resource, simulated,
                                                                        instrument.timeout_s), users[resource]),
                                        driver_class.MAINFRAME())
                transport, settings["mainframe"] = shared[resource]
            elif driver_class.BYTE_PROTOCOL:  # binary frames, not SCPI lines
                transport = open_byte_transport(instrument.resource, simulated, instrument.timeout_s,
                                                instrument.baud_rate or DEFAULT_BAUD_RATE)
            else:
                transport = open_transport(instrument.resource, simulated, instrument.timeout_s)
            driver = driver_class(transport, **settings)
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
        for connection, _ in shared.values():
            connection.close_now()  # whichever of its drivers were never made
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
        "pid": os.getpid(), "host": this_host(),  # so that `cycler status` can tell a crashed run
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
    """Setpoints against the ratings of what drives the DUT. Simulated instruments are asked in
    process; real ones only when a run connects. Returns (problems, a note on what was checked)."""
    if not prepared.bench.config.simulated:
        return [], "instrument ranges are checked when a run connects to the bench"
    config = prepared.channel
    names = set(config.drive_instruments().values())
    opened = open_bench(prepared.bench, names, speed=None)
    try:
        drive = drive_for(config, opened.drivers)
        controls = {step.number: control_for(step, prepared.plan.envelope, drive.ratings, drive.has_power_limits,
                                             prepared.plan.dut) for step in prepared.plan.steps}
        identities = " and ".join(opened.identities[name] for name in sorted(names))
        return drive.rating_problems(prepared.plan.steps, controls), f"checked against the simulated {identities}"
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


def _channel(prepared: PreparedRun, opened: OpenBench) -> Channel:
    config = prepared.channel
    return Channel(prepared.channel_name, config, drive_for(config, opened.drivers),
                   {name: opened.drivers[name] for name in config.meter_names()}, opened.clock,
                   chamber_for(config, opened.drivers), prepared.bench.config.lost_meter_wait_s())


def _instrument_names(prepared: PreparedRun) -> set[str]:
    return prepared.channel.instrument_names()


DRIVER_LOGGER = "stackcycler.drivers"


class _InstrumentNotices(logging.Handler):
    """The drivers' and transports' warnings about a run's own instruments (a late reply waited
    for, a connection made again after it dropped) as `instrument_notice` events of the run."""

    def __init__(self, store: RunStore, clock: Clock, resources: set[str]):
        super().__init__(logging.WARNING)
        self.store, self.clock, self.resources = store, clock, resources

    def emit(self, record: logging.LogRecord) -> None:
        resource = getattr(record, "resource", None)
        if resource not in self.resources:
            return
        try:
            self.store.event("instrument_notice", self.clock.now(), self.clock.unix_time(), resource=resource,
                             message=record.getMessage())
        except StorageFailure:
            pass  # the run stops on the storage failure at its own next write


def _log_instrument_notices(opened: OpenBench, store: RunStore, prepared: PreparedRun) -> None:
    instruments = prepared.bench.config.instruments
    resources = {instruments[name].resource for name in _instrument_names(prepared)}
    handler = _InstrumentNotices(store, opened.clock, resources)
    logging.getLogger(DRIVER_LOGGER).addHandler(handler)
    opened.notices.append(handler)


def _note_locks(opened: OpenBench, store: RunStore) -> None:
    """Name the run in its instrument locks, and log any lock a crashed run had left."""
    opened.locks.rename(f"run {store.folder.resolve()}")
    _log_stale_locks(opened, store)


def _log_stale_locks(opened: OpenBench, store: RunStore) -> None:
    for stale in opened.locks.stale:
        store.event("stale_lock_released", opened.clock.now(), opened.clock.unix_time(), lock=stale)


def _run_and_summarise(runner: Runner, store: RunStore, opened: OpenBench) -> RunResult:
    try:
        runner.run()
    finally:
        store.close()
    return _summarise(runner, store, opened)


def _summarise(runner: Runner, store: RunStore, opened: OpenBench) -> RunResult:
    """Per-cycle results and the run's ending into the run folder."""
    outcome = runner.outcome
    summary = summarise(load_data(store.folder, SUMMARY_INPUTS))
    line = result_line(summary)
    ended_unix = opened.clock.unix_time() - opened.clock.now() + runner.finished_at_s
    try:
        summary.to_csv(store.folder / SUMMARY_FILE, index=False)
        store.update_metadata(state=outcome.state, exit_code=int(outcome.exit_code), reason=outcome.reason,
                              ended=utc_iso(ended_unix), end_test_time_s=runner.finished_at_s,
                              outputs_confirmed_off=outcome.outputs_confirmed_off, result=line,
                              summary=summary_records(summary), **outcome.details)
    except (OSError, StorageFailure):
        pass  # the outcome already says the folder could not be written; what is there stays readable
    _notify_end(store.folder, outcome)
    return RunResult(outcome, line, opened.simulation, runner.finished_at_s)


def _notify_end(folder: Path, outcome: RunOutcome) -> None:
    """The notifications of notify.yaml (beside the runs folder), once the outputs are off; a
    notification that fails, or a bad notify.yaml, is logged in the run's events, never raised."""
    log = run_events_logger(folder)
    try:
        config = load_config(folder.parent)
    except StackcyclerError as error:
        log(f"notification settings: {error}")
        return
    notify(event_from_run(folder, outcome.state, outcome.reason), config, log)


def execute(prepared: PreparedRun, reporter: ProgressReporter, stop: StopRequest | None = None) -> RunResult:
    stop = stop or StopRequest()
    opened = open_bench(prepared.bench, _instrument_names(prepared), prepared.request.speed,
                        holder=f"a run of {prepared.plan.protocol.name} (starting)")
    try:
        channel = _channel(prepared, opened)
        runner, store = _new_run(prepared, opened, channel, reporter, stop)
        return _run_and_summarise(runner, store, opened)
    finally:
        opened.close()


def _new_run(prepared: PreparedRun, opened: OpenBench, channel: Channel, reporter: ProgressReporter,
             stop: StopRequest) -> tuple[Runner, RunStore]:
    """The run folder and the runner of a new run on `channel`."""
    columns = sample_columns(channel)
    stem = (f"{_folder_time(opened.clock.unix_time())}_{prepared.plan.protocol.name}_"
            f"{prepared.bench.config.name}_{prepared.channel_name}")
    store = RunStore.create(new_run_folder(prepared.request.runs_dir, _safe(stem)), columns,
                            _metadata(prepared, opened, channel, [c.name for c in columns]),
                            prepared.protocol.text, prepared.bench.text, prepared.bench.path)
    _note_locks(opened, store)
    _log_instrument_notices(opened, store, prepared)
    snapshot = opened.simulation.snapshot if opened.simulation else None
    return Runner(prepared.plan, channel, opened.clock, store, reporter, stop, snapshot), store


def execute_together(runs: list[PreparedRun], reporters: list[ProgressReporter],
                     stop: StopRequest | None = None) -> list[RunResult]:
    """Several channels of one bench at once, each with its own protocol, run folder and safety."""
    stop = stop or StopRequest()
    _check_together(runs)
    bench = runs[0].bench
    instruments = set().union(*(_instrument_names(prepared) for prepared in runs))
    opened = open_bench(bench, instruments, runs[0].request.speed,
                        holder="runs on channels " + ", ".join(p.channel_name for p in runs) + " (starting)")
    stores: list[RunStore] = []
    try:
        channels, shared = _channels_sharing_meters(runs, opened)
        runners = []
        for prepared, channel, reporter in zip(runs, channels, reporters):
            runner, store = _new_run(prepared, opened, channel, reporter, stop)
            runners.append(runner)
            stores.append(store)
        # each folder names its siblings, so that a resume of one after a crash can point to the others
        together = {prepared.channel_name: store.folder.name for prepared, store in zip(runs, stores)}
        for store in stores:
            store.update_metadata(run_together=together)
        return _run_together_and_summarise(runners, stores, opened, stop, shared)
    finally:
        opened.close()


def _channels_sharing_meters(runs: list[PreparedRun], opened: OpenBench) -> tuple[list[Channel], list[SharedMeter]]:
    """The channels of runs that go on together: what drives each DUT is its own; a meter several
    channels read is one SharedMeter that scans the union of their inputs."""
    meter_names = sorted(set().union(*(p.channel.meter_names() for p in runs)))
    wiring = {name: [] for name in meter_names}
    for prepared in runs:
        for name, inputs in _channel(prepared, opened).meter_inputs().items():
            wiring[name] += inputs
    shared = {name: SharedMeter(opened.drivers[name], name, wiring[name]) for name in meter_names}
    channels = []
    for prepared in runs:
        config = prepared.channel
        channels.append(Channel(prepared.channel_name, config, drive_for(config, opened.drivers),
                                {name: shared[name].view(prepared.channel_name) for name in config.meter_names()},
                                opened.clock, chamber_for(config, opened.drivers),
                                prepared.bench.config.lost_meter_wait_s()))
    return channels, list(shared.values())


def _run_together_and_summarise(runners: list[Runner], stores: list[RunStore], opened: OpenBench,
                                stop: StopRequest, shared: list[SharedMeter]) -> list[RunResult]:
    try:
        run_together(runners, opened.clock, stop, shared)
    finally:
        for store in stores:
            store.close()
    return [_summarise(runner, store, opened) for runner, store in zip(runners, stores)]


def _check_together(runs: list[PreparedRun]) -> None:
    names = [p.channel_name for p in runs]
    if len(set(names)) != len(names):
        raise InvalidInput("a channel is named twice: " + ", ".join(names))
    if len({p.bench.path for p in runs}) != 1 or len({p.request.speed for p in runs}) != 1:
        raise InvalidInput("channels run together must be on one bench, at one speed")
    _check_outputs_not_shared(runs)


def _check_outputs_not_shared(runs: list[PreparedRun]) -> None:
    users: dict[str, str] = {}
    for prepared in runs:
        for role, name in prepared.channel.drive_instruments().items():
            other = users.setdefault(name, prepared.channel_name)
            if other != prepared.channel_name:
                raise InvalidInput(f"{prepared.bench.path}: channels '{other}' and '{prepared.channel_name}' both use "
                                   f"{role} '{name}'; one output serves one channel")


# --- resuming a run after a crash, a power cut or an interruption ------------------------------

RESUMABLE = ("running", "interrupted", "faulted", "storage_failure", "error")
# What `cycler status` calls a run whose process is alive (a fresh heartbeat, or its pid on this
# host): see operation.run_state. "not responding" is alive but hung: still the folder's writer.
LIVE_STATES = ("running", "paused", "suspended", "not responding")
# How far the DUT may have moved from the checkpoint before a resume is refused: a stack that has
# only relaxed (current off) stays well inside; a different stack, or one discharged or charged
# during the gap, does not.
RESUME_VOLTAGE_TOLERANCE = 0.05  # of the stack voltage, and of each layer's
RESUME_TEMPERATURE_TOLERANCE_K = 10.0


@dataclass
class ResumePreview:
    """Where a resume would continue, and the DUT now against the DUT at the checkpoint."""

    folder: Path
    step: PlannedStep
    step_time_s: float
    cycle: int
    gap_s: float
    then: dict
    now: Sample
    output_found_on: bool
    problems: list[str]
    channel: str | None = None  # named when several runs are resumed together
    notes: list[str] = field(default_factory=list)  # e.g. a sibling run that could be resumed with this one
    watchdog_trip_found: bool = False  # an output had been switched off by its own watchdog (roles.HostWatchdog)

    def text(self) -> str:
        lines = [f"resume {self.folder.name}" + (f" (channel {self.channel})" if self.channel else ""),
                 f"  continue at step {self.step.number} ({self.step.name}: {self.step.setpoint()}) after "
                 f"{self.step_time_s:.0f} s of it, cycle {self.cycle}",
                 f"  gap since the last checkpoint: {self.gap_s:.0f} s",
                 f"  stack voltage at the checkpoint {self.then['voltage_V']:.3f} V, now {self.now.voltage_V:.3f} V"]
        if self.output_found_on:
            lines.append("  an output (supply, source or load) was still ON: it has been switched off; charge moved "
                         "during the gap is not in the data")
        if self.watchdog_trip_found:
            lines.append("  an output had switched itself off when the host went silent (its instrument's watchdog): "
                         "the trip has been cleared; charge moved before it is not in the data")
        lines += [f"  note: {note}" for note in self.notes]
        lines += [f"  NOT CONSISTENT: {p}" for p in self.problems]
        return "\n".join(lines)


def _consistency_problems(then: dict, now: Sample) -> list[str]:
    problems = []
    if abs(now.voltage_V - then["voltage_V"]) > RESUME_VOLTAGE_TOLERANCE * abs(then["voltage_V"]):
        problems.append(f"the stack voltage moved from {then['voltage_V']:.3f} V to {now.voltage_V:.3f} V, more "
                        f"than {RESUME_VOLTAGE_TOLERANCE:.0%}: is it the same stack, and was it left at rest?")
    layers_then = then["layer_voltages_V"]
    if len(layers_then) != now.layer_voltages_V.size:
        problems.append(f"{now.layer_voltages_V.size} layer voltages now, {len(layers_then)} at the checkpoint")
    else:
        for n, (a, b) in enumerate(zip(layers_then, now.layer_voltages_V.tolist()), start=1):
            if not abs(b - a) <= RESUME_VOLTAGE_TOLERANCE * abs(a):
                problems.append(f"layer {n:02d} moved from {a:.4f} V to {b:.4f} V")
    for sensor, value in then["temperatures_degC"].items():
        current = now.temperatures_degC.get(sensor)
        if current is None or not abs(current - value) <= RESUME_TEMPERATURE_TOLERANCE_K:
            problems.append(f"temperature {sensor} moved from {value:.1f} to {current} degC")
    return problems


KEEP_SPEED = object()
# Runs resumed together share one clock, so their test times must count from one moment: runs
# started together by `cycler run --channel a --channel b` began within milliseconds.
TOGETHER_START_TOLERANCE_S = 1.0


def resume(folder: Path, reporter: ProgressReporter, confirm, stop: StopRequest | None = None,
           force: bool = False, speed=KEEP_SPEED) -> RunResult | None:
    """Continue a run from its checkpoint. `confirm(preview)` decides after seeing where it would
    continue and how the DUT is now; None if it said no (nothing was switched on). A simulated
    run continues at its own speed unless `speed` is given (None: as fast as possible)."""
    results = resume_together([folder], lambda channel: reporter, lambda previews: confirm(previews[0]), stop, force,
                              speed)
    return None if results is None else results[0]


@dataclass
class _Resumable:
    """A run folder that can be resumed: what it recorded, its checkpoint, and its plan as it was run."""

    folder: Path
    meta: dict
    checkpoint: dict
    prepared: PreparedRun


def _resumable(folder: Path) -> _Resumable:
    folder = Path(folder)
    try:
        meta = read_json(folder / METADATA_FILE)
        checkpoint = read_json(folder / CHECKPOINT_FILE)
    except FileNotFoundError as missing:
        raise UnreadableInput(f"{folder}: not a run folder that can be resumed ({Path(missing.filename).name} "
                              "is missing: the run stopped before the end of its first tick)") from None
    if meta.get("state") not in RESUMABLE:
        raise InvalidInput(f"{folder}: the run ended {meta.get('state')} ({meta.get('reason', '')}); only a run that "
                           f"crashed or stopped ({', '.join(RESUMABLE)}) is resumed. Start a new run instead.")
    live = run_state(folder)
    if not _stopped_or_gone(live):  # two processes writing one folder would interleave its rows
        where = "this host" if meta.get("host") == this_host() else f"host {meta.get('host')}"
        raise InvalidInput(f"{folder}: the run is still going ({live.state}, process {meta.get('pid')} on {where}); "
                           f"a live run is not resumed. Stop it first (`cycler stop {folder}`), or wait until its "
                           "process has ended")
    prepared = _prepare_resume(folder, meta)
    if checkpoint["program_counter"] >= len(prepared.plan.program):
        # killed after its last step, before run.json said how it ended (see Runner._finish)
        raise InvalidInput(f"{folder}: the run had finished its protocol when its process stopped (its last "
                           "checkpoint is past the last step); nothing is left to resume. Start a new run instead.")
    return _Resumable(folder, meta, checkpoint, prepared)


def resume_together(folders: list[Path], reporter_for: Callable[[str], ProgressReporter], confirm,
                    stop: StopRequest | None = None, force: bool = False,
                    speed=KEEP_SPEED) -> list[RunResult] | None:
    """Continue several runs of one bench (the channels of a `cycler run --channel a --channel b`
    that crashed together) in one process, as they ran: one open bench, shared meters scanned for
    all, each runner from its own checkpoint and reporting to `reporter_for(channel name)`.
    `confirm(previews)` sees every channel's preview and decides for all; None if it said no.
    Nothing is switched on anywhere unless every channel's DUT is where its run left it (or
    `force`). One folder is `resume`."""
    stop = stop or StopRequest()
    runs = [_resumable(Path(folder)) for folder in folders]
    _check_resumed_together(runs)
    bench = runs[0].prepared.bench
    if speed is not KEEP_SPEED:
        if not bench.config.simulated:
            raise InvalidInput("--speed applies to simulated benches only; this run drives real instruments")
        for run in runs:
            run.prepared.request.speed = speed
    elif len({run.prepared.request.speed for run in runs}) > 1:
        raise InvalidInput("the runs ran at different speeds (" + ", ".join(
            f"{run.folder.name}: {run.meta['bench'].get('speed')}" for run in runs) + "); give one with --speed")
    now_s, gaps = _resume_clock(runs, runs[0].prepared.request.speed if bench.config.simulated else 1.0)
    single = len(runs) == 1
    holder = (f"run {runs[0].folder.resolve()}" if single
              else "runs " + ", ".join(str(run.folder.resolve()) for run in runs))
    opened = open_bench(bench, set().union(*(_instrument_names(run.prepared) for run in runs)),
                        runs[0].prepared.request.speed, start_s=now_s, start_unix=runs[0].meta["start_unix_time_s"],
                        simulation_state=_simulation_state(runs, bench.config), holder=f"{holder} (resuming)")
    channels: list[Channel] = []
    stores: list[RunStore] = []
    handed_over = False  # to the runners, which end in the safe state however they end
    try:
        if single:
            channels, shared = [_channel(runs[0].prepared, opened)], []
        else:
            channels, shared = _channels_sharing_meters([run.prepared for run in runs], opened)
        named = {run.prepared.channel_name for run in runs}
        previews = []
        for run, channel, gap_s in zip(runs, channels, gaps):
            columns = sample_columns(channel)
            if [c.name for c in columns] != run.meta["columns"]:
                raise InvalidInput(f"{run.folder}: the channel's inputs no longer match the run's columns")
            # a look only: the operator may take any time to answer, and an armed instrument watchdog
            # would trip meanwhile; the runner's own configure arms them
            channel.configure(run.prepared.plan.envelope, arm_watchdogs=False)
            now = channel.measure()
            checkpoint = run.checkpoint
            instruction = run.prepared.plan.program[checkpoint["program_counter"]]
            previews.append(ResumePreview(run.folder, instruction.step, checkpoint["step_time_s"],
                                          checkpoint["cycle_count"], gap_s, checkpoint["last_sample"], now,
                                          channel.drive.output_found_on,
                                          _consistency_problems(checkpoint["last_sample"], now),
                                          None if single else run.prepared.channel_name,
                                          _sibling_notes(run, named), channel.drive.watchdog_trip_found))
        inconsistent = [preview for preview in previews if preview.problems]
        if inconsistent and not force:
            if single:
                raise InvalidInput(previews[0].text() + "\nresume refused: the DUT is not where the run left it "
                                   "(--force continues anyway)")
            raise InvalidInput("\n".join(preview.text() for preview in previews) + "\nresume refused: the DUT of "
                               + " and of ".join(f"channel {p.channel} ({p.folder.name})" for p in inconsistent)
                               + " is not where its run left it; nothing was switched on on any channel "
                               "(--force continues anyway)")
        if not confirm(previews):
            return None
        rows_cut = []
        for run, channel in zip(runs, channels):  # every folder first: one that cannot be written stops them all
            store, cut = RunStore.reopen(run.folder, sample_columns(channel), run.checkpoint["records"])
            stores.append(store)
            rows_cut.append(cut)
        runners = [_restored_runner(run, channel, preview, store, cut, opened, reporter_for(run.prepared.channel_name),
                                    stop)
                   for run, channel, preview, store, cut in zip(runs, channels, previews, stores, rows_cut)]
        opened.locks.rename(holder)
        handed_over = True
        if single:
            return [_run_and_summarise(runners[0], stores[0], opened)]
        return _run_together_and_summarise(runners, stores, opened, stop, shared)
    finally:
        try:
            if not handed_over:
                _switch_off(channels)
            for store in stores:
                store.close()
        finally:
            opened.close()


def _restored_runner(run: _Resumable, channel: Channel, preview: ResumePreview, store: RunStore, rows_cut: int,
                     opened: OpenBench, reporter: ProgressReporter, stop: StopRequest) -> Runner:
    """The runner of a reopened run folder, at its checkpoint, with the gap and the resume recorded."""
    checkpoint, now = run.checkpoint, preview.now
    _log_stale_locks(opened, store)
    _log_instrument_notices(opened, store, run.prepared)
    snapshot = opened.simulation.snapshot if opened.simulation else None
    runner = Runner(run.prepared.plan, channel, opened.clock, store, reporter, stop, snapshot)
    runner.restore(checkpoint, opened.clock.now())
    store.event("resumed", opened.clock.now(), opened.clock.unix_time(), from_test_time_s=checkpoint["test_time_s"],
                gap_s=round(preview.gap_s, 3), rows_after_checkpoint_dropped=rows_cut, step=preview.step.number,
                output_found_on=preview.output_found_on, watchdog_trip_found=preview.watchdog_trip_found,
                voltage_at_checkpoint_V=preview.then["voltage_V"],
                voltage_now_V=now.voltage_V, forced=bool(preview.problems))
    store.update_metadata(state="running", pid=os.getpid(), host=this_host(),
                          resumed_times=run.meta.get("resumed_times", 0) + 1,
                          last_resume=utc_iso(time.time()))
    return runner


def _switch_off(channels: list[Channel]) -> None:
    """Outputs off on every channel a resume set up but did not hand to its runner (refused,
    declined, or an error). Connecting switched them off already; this confirms it, best effort."""
    for channel in channels:
        try:
            channel.safe_state()
        except Exception:
            pass  # the others must still be switched off; the error that ended the resume is reported


def _resume_clock(runs: list[_Resumable], speed: float | None) -> tuple[float, list[float]]:
    """The test time to continue at, and each run's gap since its checkpoint. A simulated run's
    gap is the wall time since its checkpoint at its speed; at least one tick, so that no
    timestamp repeats. Runs resumed together continue at one moment: the latest any of them
    reaches, so a run whose checkpoint is older has the longer gap."""
    ends = []
    for run in runs:
        checkpoint = run.checkpoint
        gap_s = max(max(time.time() - checkpoint["wall_unix_time_s"], 0.0) * (speed or 0.0),
                    run.prepared.channel.tick_s)
        ends.append((checkpoint["test_time_s"] + gap_s, gap_s))
    now_s = max(end for end, _ in ends)
    return now_s, [gap_s if end == now_s else now_s - run.checkpoint["test_time_s"]
                   for run, (end, gap_s) in zip(runs, ends)]


def _check_resumed_together(runs: list[_Resumable]) -> None:
    """Runs resumed together: each named once, one bench, one channel each, one clock."""
    seen: dict[Path, Path] = {}
    for run in runs:
        other = seen.setdefault(run.folder.resolve(), run.folder)
        if other is not run.folder:
            raise InvalidInput(f"{run.folder}: named twice; name each run folder once")
    first = runs[0]
    bench = first.meta["bench"]
    for run in runs[1:]:
        other = run.meta["bench"]
        if other["name"] != bench["name"]:
            raise InvalidInput(f"{first.folder} ran on bench '{bench['name']}' and {run.folder} on bench "
                               f"'{other['name']}': only runs of one bench are resumed together; resume them one "
                               "at a time")
        if other["resolved"] != bench["resolved"]:
            raise InvalidInput(f"{first.folder} and {run.folder} ran on different versions of bench '{bench['name']}' "
                               "(the bench file changed between them): only runs of one bench are resumed together; "
                               "resume them one at a time")
    channels: dict[str, Path] = {}
    for run in runs:
        other = channels.setdefault(run.prepared.channel_name, run.folder)
        if other is not run.folder:
            raise InvalidInput(f"{other} and {run.folder} both ran on channel '{run.prepared.channel_name}' of bench "
                               f"'{bench['name']}': a channel continues one run; resume the one you mean")
    for run in runs[1:]:
        apart_s = abs(run.meta["start_unix_time_s"] - first.meta["start_unix_time_s"])
        if apart_s > TOGETHER_START_TOLERANCE_S:
            raise InvalidInput(f"{first.folder} and {run.folder} were not started together (their test clocks began "
                               f"{apart_s:.0f} s apart), so they cannot continue on one clock: resume them one at a time")
    _check_outputs_not_shared([run.prepared for run in runs])


def _sibling_notes(run: _Resumable, named: set[str]) -> list[str]:
    """The runs started together with this one (`run_together` in run.json, see execute_together)
    that crashed or stopped too but are not being resumed with it: a hint to name them as well."""
    notes = []
    for channel, name in (run.meta.get("run_together") or {}).items():
        if channel in named or not _crashed_or_stopped(run.folder.parent / name):
            continue
        config = run.prepared.bench.config
        shared = sorted(run.prepared.channel.instrument_names() & config.channels[channel].instrument_names()
                        if channel in config.channels else ())
        why = (f"; resumed one at a time, the second waits until the first ends for {', '.join(shared)}, which they "
               "share" if shared and not config.simulated else "")
        notes.append(f"channel {channel} ran together with this run and can be resumed too: name both, "
                     f"`cycler resume {run.folder} {run.folder.parent / name}`, to continue them together{why}")
    return notes


def _stopped_or_gone(live: RunState) -> bool:
    """A run that ended short of its protocol, or whose process is gone: nobody writes its folder."""
    return live.meta.get("state") in RESUMABLE and live.state not in LIVE_STATES


def _crashed_or_stopped(folder: Path) -> bool:
    """Whether `cycler resume` would take this folder (as _resumable decides)."""
    try:
        live = run_state(folder)
    except StackcyclerError:
        return False
    return _stopped_or_gone(live) and (folder / CHECKPOINT_FILE).is_file()


def _simulation_state(runs: list[_Resumable], config: BenchConfig) -> dict | None:
    """The simulated hardware to continue from: one run's checkpoint holds a snapshot of it.

    Runs resumed together hold snapshots from different moments (each channel checkpoints on its
    own), and each run's data is cut back to its own checkpoint. So each simulated stack comes
    from the checkpoint of the channel that drives it, at that checkpoint's moment, together with
    what drives it (supply, source, load, chamber): the stack then carries on from exactly where
    that run's data left it, under the settings its instruments had then, and its counts
    (charge, energy) match the run's integrators; taking it from a later snapshot would add charge
    that is in no run's data. What no single channel owns (a shared DAQ, a stack no resumed
    channel drives) comes from the latest snapshot, the freshest knowledge of it; so does a fault
    of the schedule, unless it acts on an owned stack or instrument, when it comes with them."""
    snapshots = [(run, run.checkpoint.get("simulation")) for run in runs]
    snapshots = [(run, snapshot) for run, snapshot in snapshots if snapshot]
    if len(runs) == 1 or not snapshots:
        return snapshots[0][1] if snapshots else None
    latest = max((snapshot for _, snapshot in snapshots), key=lambda snapshot: snapshot["time_s"])
    simulated = config.simulation.instruments if config.simulation else {}
    drivers_of: dict[str, list[dict]] = {}  # simulated instrument -> snapshots of the channels that drive it
    stack_drivers: dict[str, list[dict]] = {}  # simulated stack -> the same, through the output wired to it
    for run, snapshot in snapshots:
        channel = run.prepared.channel
        for name in channel.instrument_names() - channel.meter_names():
            instrument = config.instruments[name]
            target = instrument.resource[len(SIM_SCHEME):]
            if instrument.resource.startswith(SIM_SCHEME) and target in simulated:
                drivers_of.setdefault(target, []).append(snapshot)
                stack_drivers.setdefault(driven_stack(simulated[target], instrument.output), []).append(snapshot)

    def one_owner(owners: list[dict] | None) -> dict | None:
        return owners[0] if owners and all(owner is owners[0] for owner in owners) else None

    instrument_source = {name: one_owner(owners) for name, owners in drivers_of.items()}
    stack_source = {stack: one_owner(owners) for stack, owners in stack_drivers.items()}

    stacks = {name: (stack_source.get(name) or latest) for name in snapshot_stacks(latest)}
    merged = {"time_s": latest["time_s"],
              "stacks": {name: snapshot_stacks(source)[name] for name, source in stacks.items()},
              "stack_times_s": {name: source["time_s"] for name, source in stacks.items()},
              "instruments": {name: (instrument_source.get(name) or latest)["instruments"][name]
                              for name in latest["instruments"]},
              "faults": latest.get("faults")}
    if merged["faults"] and config.simulation:
        applied, first = list(merged["faults"]["applied"]), list(merged["faults"]["first_applied_s"])
        for index, fault in enumerate(config.simulation.faults):
            source = stack_source.get(getattr(fault, "stack", None)) or instrument_source.get(
                getattr(fault, "instrument", None))
            faults = source.get("faults") if source else None
            if faults and len(faults["applied"]) == len(applied) and index < len(applied):
                applied[index], first[index] = faults["applied"][index], faults["first_applied_s"][index]
        merged["faults"] = {"applied": applied, "first_applied_s": first}
    return merged


def _prepare_resume(folder: Path, meta: dict) -> PreparedRun:
    """The plan as it was run: the bench as recorded (with its `extends` merged), the protocol
    file if it is unchanged (its profile files are beside it) or else the copy in the run folder."""
    bench_meta = meta["bench"]
    copy = folder / bench_copy_name(Path(bench_meta["file"]))
    config = validate_data(BenchConfig, bench_meta["resolved"], str(copy), {})
    bench = BenchFile(config, copy, copy.read_text(encoding="utf-8"), bench_meta["resolved"])
    original = Path(meta["protocol"]["file"])
    unchanged = original.is_file() and _sha256(original.read_text(encoding="utf-8")) == meta["protocol"]["sha256"]
    protocol = load_protocol(str(original if unchanged else folder / "protocol.yaml"))
    speed = bench_meta.get("speed")
    request = RunRequest(protocol=str(protocol.path), bench=str(bench.path), channel=bench_meta["channel"],
                         speed=None if speed in ("max", "real time") else float(speed), runs_dir=folder.parent,
                         operator=meta.get("operator", ""), dut_id=meta["dut"]["id"],
                         overrides=meta["protocol"]["parameters"])
    return _bind(request, protocol, bench)


def _folder_time(unix_time: float) -> str:
    return datetime.fromtimestamp(unix_time).strftime("%Y%m%d-%H%M%S")


def _safe(stem: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in stem)

