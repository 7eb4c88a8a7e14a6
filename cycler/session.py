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
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Iterator

from stackcycler import __version__
from stackcycler.drivers.registry import DRIVERS
from stackcycler.drivers.sim.simulation import Simulation, build_simulation
from stackcycler.drivers.transport import DEFAULT_BAUD_RATE, open_byte_transport, open_transport
from stackcycler.protocols import ProtocolFile, load_protocol

from .analysis import SUMMARY_INPUTS, result_line, summarise, summary_records
from .dataset import load as load_data
from .bench import BenchConfig, BenchFile, ChannelConfig, load_bench
from .channel import Channel, chamber_for, drive_for, unsupported_steps
from .clock import Clock, VirtualClock, WallClock
from .operation import this_host
from .control import control_for
from .errors import InvalidInput, StackcyclerError, StorageFailure, UnreadableInput
from .locks import InstrumentLocks
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
    try:
        for name in sorted(instrument_names):
            instrument = config.instruments[name]
            driver_class = DRIVERS[instrument.driver]
            if driver_class.BYTE_PROTOCOL:  # binary frames, not SCPI lines
                transport = open_byte_transport(instrument.resource, simulated, instrument.timeout_s,
                                                instrument.baud_rate or DEFAULT_BAUD_RATE)
            else:
                transport = open_transport(instrument.resource, simulated, instrument.timeout_s)
            driver = driver_class(transport, **instrument.driver_settings())
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
                   chamber_for(config, opened.drivers))


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
        meter_names = sorted(set().union(*(p.channel.meter_names() for p in runs)))
        wiring = {name: [] for name in meter_names}
        for prepared in runs:
            for name, inputs in _channel(prepared, opened).meter_inputs().items():
                wiring[name] += inputs
        shared = {name: SharedMeter(opened.drivers[name], name, wiring[name]) for name in meter_names}
        runners = []
        for prepared, reporter in zip(runs, reporters):
            config = prepared.channel
            channel = Channel(prepared.channel_name, config, drive_for(config, opened.drivers),
                              {name: shared[name].view(prepared.channel_name) for name in config.meter_names()},
                              opened.clock, chamber_for(config, opened.drivers))
            runner, store = _new_run(prepared, opened, channel, reporter, stop)
            runners.append(runner)
            stores.append(store)
        try:
            run_together(runners, opened.clock, stop, list(shared.values()))
        finally:
            for store in stores:
                store.close()
        return [_summarise(runner, store, opened) for runner, store in zip(runners, stores)]
    finally:
        opened.close()


def _check_together(runs: list[PreparedRun]) -> None:
    names = [p.channel_name for p in runs]
    if len(set(names)) != len(names):
        raise InvalidInput("a channel is named twice: " + ", ".join(names))
    if len({p.bench.path for p in runs}) != 1 or len({p.request.speed for p in runs}) != 1:
        raise InvalidInput("channels run together must be on one bench, at one speed")
    users: dict[str, str] = {}
    for prepared in runs:
        for role, name in prepared.channel.drive_instruments().items():
            other = users.setdefault(name, prepared.channel_name)
            if other != prepared.channel_name:
                raise InvalidInput(f"{prepared.bench.path}: channels '{other}' and '{prepared.channel_name}' both use "
                                   f"{role} '{name}'; one output serves one channel")


# --- resuming a run after a crash, a power cut or an interruption ------------------------------

RESUMABLE = ("running", "interrupted", "faulted", "storage_failure", "error")
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

    def text(self) -> str:
        lines = [f"resume {self.folder.name}",
                 f"  continue at step {self.step.number} ({self.step.name}: {self.step.setpoint()}) after "
                 f"{self.step_time_s:.0f} s of it, cycle {self.cycle}",
                 f"  gap since the last checkpoint: {self.gap_s:.0f} s",
                 f"  stack voltage at the checkpoint {self.then['voltage_V']:.3f} V, now {self.now.voltage_V:.3f} V"]
        if self.output_found_on:
            lines.append("  an output (supply, source or load) was still ON: it has been switched off; charge moved "
                         "during the gap is not in the data")
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


def resume(folder: Path, reporter: ProgressReporter, confirm, stop: StopRequest | None = None,
           force: bool = False, speed=KEEP_SPEED) -> RunResult | None:
    """Continue a run from its checkpoint. `confirm(preview)` decides after seeing where it would
    continue and how the DUT is now; None if it said no (nothing was switched on). A simulated
    run continues at its own speed unless `speed` is given (None: as fast as possible)."""
    stop = stop or StopRequest()
    folder = Path(folder)
    try:
        meta = read_json(folder / METADATA_FILE)
        checkpoint = read_json(folder / CHECKPOINT_FILE)
    except FileNotFoundError as missing:
        raise UnreadableInput(f"{folder}: not a run folder that can be resumed ({Path(missing.filename).name} "
                              "is missing: the run stopped before its first step)") from None
    if meta.get("state") not in RESUMABLE:
        raise InvalidInput(f"{folder}: the run ended {meta.get('state')} ({meta.get('reason', '')}); only a run that "
                           f"crashed or stopped ({', '.join(RESUMABLE)}) is resumed. Start a new run instead.")
    prepared = _prepare_resume(folder, meta)
    if checkpoint["program_counter"] >= len(prepared.plan.program):
        # killed after its last step, before run.json said how it ended (see Runner._finish)
        raise InvalidInput(f"{folder}: the run had finished its protocol when its process stopped (its last "
                           "checkpoint is past the last step); nothing is left to resume. Start a new run instead.")
    if speed is not KEEP_SPEED:
        if not prepared.bench.config.simulated:
            raise InvalidInput("--speed applies to simulated benches only; this run drives real instruments")
        prepared.request.speed = speed
    speed = prepared.request.speed if prepared.bench.config.simulated else 1.0
    # at least one tick of gap, so that no timestamp of the run repeats
    gap_s = max(max(time.time() - checkpoint["wall_unix_time_s"], 0.0) * (speed or 0.0), prepared.channel.tick_s)
    now_s = checkpoint["test_time_s"] + gap_s
    opened = open_bench(prepared.bench, _instrument_names(prepared), prepared.request.speed, start_s=now_s,
                        start_unix=meta["start_unix_time_s"], simulation_state=checkpoint.get("simulation"),
                        holder=f"run {folder.resolve()} (resuming)")
    try:
        channel = _channel(prepared, opened)
        columns = sample_columns(channel)
        if [c.name for c in columns] != meta["columns"]:
            raise InvalidInput(f"{folder}: the channel's inputs no longer match the run's columns")
        channel.configure(prepared.plan.envelope)
        now = channel.measure()
        instruction = prepared.plan.program[checkpoint["program_counter"]]
        preview = ResumePreview(folder, instruction.step, checkpoint["step_time_s"], checkpoint["cycle_count"],
                                gap_s, checkpoint["last_sample"], now, channel.drive.output_found_on,
                                _consistency_problems(checkpoint["last_sample"], now))
        if preview.problems and not force:
            raise InvalidInput(preview.text() + "\nresume refused: the DUT is not where the run left it "
                               "(--force continues anyway)")
        if not confirm(preview):
            return None
        store, rows_cut = RunStore.reopen(folder, columns, checkpoint["records"])
        _note_locks(opened, store)
        _log_instrument_notices(opened, store, prepared)
        snapshot = opened.simulation.snapshot if opened.simulation else None
        runner = Runner(prepared.plan, channel, opened.clock, store, reporter, stop, snapshot)
        runner.restore(checkpoint, opened.clock.now())
        store.event("resumed", opened.clock.now(), opened.clock.unix_time(), from_test_time_s=checkpoint["test_time_s"],
                    gap_s=round(gap_s, 3), rows_after_checkpoint_dropped=rows_cut, step=instruction.step.number,
                    output_found_on=preview.output_found_on, voltage_at_checkpoint_V=preview.then["voltage_V"],
                    voltage_now_V=now.voltage_V, forced=bool(preview.problems))
        store.update_metadata(state="running", pid=os.getpid(), host=this_host(),
                              resumed_times=meta.get("resumed_times", 0) + 1,
                              last_resume=utc_iso(time.time()))
        return _run_and_summarise(runner, store, opened)
    finally:
        opened.close()


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

