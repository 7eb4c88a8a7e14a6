"""The runner: executes a plan on a channel, tick by tick, and always ends in the safe state.

Each tick, in this order (safety before control, as on the bench):
    measure -> integrate -> check safety -> check step ends -> record -> apply control -> checkpoint
The sample is recorded before control acts on it, so a fault while applying control never
loses the last measurement taken before it.

Every way out (protocol finished, safety trip, instrument fault, bad setpoint, software error,
Ctrl+C, SIGTERM) passes through `_finish`, which switches the outputs off with stop signals
held back, confirms it with the instrument, and records why the run ended.
"""

from __future__ import annotations

import signal
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from .channel import Channel
from .clock import Clock
from .control import command_for
from .errors import ExitCode, InstrumentError, Interrupted, InvalidInput, SafetyTrip
from .integrators import Integrator
from .plan import Plan, PlannedEnd, PlannedStep
from .safety import SafetyMonitor
from .sample import Sample
from .store import Column, RunStore

HEALTH_CHECK_INTERVAL_S = 10.0  # test time between error-queue and output-state checks
CHECKPOINT_INTERVAL_WALL_S = 5.0
SAFE_STATE_ATTEMPTS = 3
MAX_OVERRUN_EVENTS = 20
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Set by signal handlers; the runner looks at it at every tick and while it sleeps."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.shutting_down = False

    def request(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason

    def __call__(self) -> bool:
        return self.reason is not None


@dataclass
class RunStatus:
    """What a progress display shows; refreshed every tick."""

    step: PlannedStep
    step_count: int
    steps_total: int
    sample: Sample
    step_time_s: float
    step_charge_Ah: float  # net, + = charged in this step
    step_progress: float
    overall_progress: float

    @property
    def test_time_s(self) -> float:
        return self.sample.test_time_s


@dataclass
class RunOutcome:
    state: str  # completed | tripped | faulted | interrupted | invalid | error
    exit_code: ExitCode
    reason: str
    folder: Path
    outputs_confirmed_off: bool = True
    details: dict = field(default_factory=dict)


class ProgressReporter(Protocol):
    def step_started(self, status: RunStatus) -> None: ...

    def tick(self, status: RunStatus) -> None: ...

    def finished(self, outcome: RunOutcome) -> None: ...


def sample_columns(channel: Channel) -> list[Column]:
    columns = [
        Column("Record Index / 1", "%d"), Column("Test Time / s", "%.3f"), Column("Unix Time / s", "%.3f"),
        Column("Cycle Count / 1", "%d"), Column("Step Count / 1", "%d"), Column("Step ID", "%d"),
        Column("Step Type", "%s"), Column("Step Time / s", "%.3f"),
        Column("Voltage / V", "%.5f"), Column("Current / A", "%.6f"), Column("Power / W", "%.5f"),
        Column("Charging Capacity / Ah", "%.7f"), Column("Discharging Capacity / Ah", "%.7f"),
        Column("Charging Energy / Wh", "%.6f"), Column("Discharging Energy / Wh", "%.6f"),
    ]
    columns += [Column(f"Temperature {sensor} / degC", "%.3f") for sensor in channel.dut_sensors]
    if channel.has_ambient:
        columns.append(Column("Ambient Temperature / degC", "%.3f"))
    if channel.config.pressure:
        columns.append(Column("Pressure / MPa", "%.4f"))
    columns += [Column(f"Layer {n:02d} Voltage / V", "%.5f") for n in range(1, len(channel.layer_channels) + 1)]
    return columns


class Runner:
    def __init__(self, plan: Plan, channel: Channel, clock: Clock, store: RunStore,
                 reporter: ProgressReporter, stop: StopRequest):
        self.plan = plan
        self.channel = channel
        self.clock = clock
        self.store = store
        self.reporter = reporter
        self.stop = stop
        self.tick_s = channel.config.tick_s
        self.safety = SafetyMonitor(plan.envelope)
        self.integrator = Integrator()
        self.step_index = 0
        self.step_count = 0
        self.cycle_count = 1
        self.step_started_at: float | None = None
        self.records = 0
        self.overruns = 0
        self._last_recorded: Sample | None = None
        self._force_record = True
        self._next_health_check = 0.0
        self._last_checkpoint_wall = time.monotonic()
        self._commands: list = []  # per step, worked out in _preflight

    # --- the run as a whole ----------------------------------------------------------

    def run(self) -> RunOutcome:
        try:
            self._preflight()
            self._execute()
            state, code, reason = "completed", ExitCode.COMPLETED, "protocol finished"
        except SafetyTrip as trip:
            state, code, reason = "tripped", trip.exit_code, str(trip)
            self._event("safety_trip", limit=trip.limit, where=trip.where, value=trip.value, threshold=trip.threshold)
        except (Interrupted, KeyboardInterrupt) as stop:
            state, code = "interrupted", ExitCode.INTERRUPTED
            reason = str(stop) or self.stop.reason or "interrupted"
            self._event("interrupted", reason=reason)
        except InstrumentError as fault:
            state, code, reason = "faulted", fault.exit_code, str(fault)
            self._event("instrument_fault", message=reason)
        except InvalidInput as error:
            state, code, reason = "invalid", error.exit_code, str(error)
            self._event("invalid_input", message=reason)
        except Exception as error:  # a bug: still reach the safe state and say what happened
            state, code, reason = "error", ExitCode.SOFTWARE_ERROR, f"{type(error).__name__}: {error}"
            self._event("software_error", message=reason, traceback=traceback.format_exc())
        return self._finish(state, code, reason)

    def _preflight(self) -> None:
        """Configure meters and instrument protection, and work out every step's command, checked
        against the supply's ratings, before anything is switched on."""
        self.channel.configure(self.plan.envelope)
        ratings = self.channel.supply.ratings
        self._commands = [command_for(step, self.plan.envelope, ratings) for step in self.plan.steps]
        for step, command in zip(self.plan.steps, self._commands):
            if command is None:
                continue
            current = max(command.source_limit_A, command.sink_limit_A)
            if command.voltage_V > ratings.voltage_V or current > ratings.current_A:
                raise InvalidInput(
                    f"{self.plan.protocol_path}: step {step.number} ({step.setpoint()}) needs "
                    f"{command.voltage_V:.4g} V / {current:.4g} A, beyond the supply's rating of "
                    f"{ratings.voltage_V:g} V / {ratings.current_A:g} A")

    def _execute(self) -> None:
        next_tick = self.clock.now()
        while True:
            self.clock.sleep_until(next_tick, self.stop)
            if self.stop():
                raise Interrupted(self.stop.reason)
            if self._tick():
                return
            next_tick += self.tick_s
            late = self.clock.now() - next_tick
            if late > 0:  # the tick outran its period: log it, skip the missed slots, keep the grid
                self.overruns += 1
                if self.overruns <= MAX_OVERRUN_EVENTS:
                    self._event("tick_overrun", late_s=round(late, 4), tick_s=self.tick_s,
                                note="logged individually up to %d times, then only counted" % MAX_OVERRUN_EVENTS)
                next_tick += (int(late // self.tick_s) + 1) * self.tick_s

    def _tick(self) -> bool:
        """One tick; True when the protocol has finished."""
        sample = self.channel.measure()
        self.integrator.update(sample)
        if self.step_started_at is None:
            self._start_step(sample)
        step = self.plan.steps[self.step_index]
        step_time = sample.test_time_s - self.step_started_at
        row = self._row(sample, step, step_time)  # the sample belongs to the step it was measured in

        try:
            self.safety.check(sample)
        except SafetyTrip:
            self._record(sample, row, forced=True)
            raise

        end = next((e for e in step.ends if e.reached(sample, step_time)), None)
        # Recorded before anything is acted on, so a fault while applying control cannot lose it.
        self._record(sample, row, forced=self._force_record or end is not None)
        self._force_record = False

        if end is not None:
            # A supply that tripped its own protection drops the current to zero, which looks
            # just like a CV taper ending: confirm the instruments first, so it is a fault, not an end.
            self.channel.check_health()
            if self._end_step(sample, step, step_time, end):
                return True
        self.channel.apply(self._commands[self.step_index])
        if end is not None or sample.test_time_s >= self._next_health_check:
            self.channel.check_health()
            self._next_health_check = sample.test_time_s + HEALTH_CHECK_INTERVAL_S
        if time.monotonic() - self._last_checkpoint_wall >= CHECKPOINT_INTERVAL_WALL_S:
            self._checkpoint(sample)
        self.reporter.tick(self._status(sample))
        return False

    # --- steps -----------------------------------------------------------------------

    def _start_step(self, sample: Sample) -> None:
        step = self.plan.steps[self.step_index]
        self.step_started_at = sample.test_time_s
        self.step_count += 1
        self.integrator.start_step()
        self._force_record = True
        self._event("step_start", step=step.number, name=step.name, setpoint=step.setpoint(),
                    step_count=self.step_count, at=sample.test_time_s)
        self.reporter.step_started(self._status(sample))

    def _end_step(self, sample: Sample, step: PlannedStep, step_time: float, end: PlannedEnd) -> bool:
        throughput = self.integrator.step
        self._event("step_end", step=step.number, name=step.name, reason=end.describe(), origin=end.origin,
                    step_time_s=round(step_time, 3), voltage_V=sample.voltage_V, current_A=sample.current_A,
                    charge_Ah=throughput.charge_Ah, discharge_Ah=throughput.discharge_Ah,
                    charge_Wh=throughput.charge_Wh, discharge_Wh=throughput.discharge_Wh)
        if self.step_index + 1 >= len(self.plan.steps):
            return True
        self.step_index += 1
        self._start_step(sample)
        self._checkpoint(sample)
        return False

    # --- recording -------------------------------------------------------------------

    def _row(self, sample: Sample, step: PlannedStep, step_time: float) -> list:
        test = self.integrator.test
        values = [0, sample.test_time_s, sample.unix_time_s, self.cycle_count, self.step_count, step.number,
                  step.step_type, step_time, sample.voltage_V, sample.current_A, sample.power_W,
                  test.charge_Ah, test.discharge_Ah, test.charge_Wh, test.discharge_Wh]
        values += [sample.temperatures_degC[s] for s in self.channel.dut_sensors]
        if self.channel.has_ambient:
            values.append(sample.ambient_degC)
        if self.channel.config.pressure:
            values.append(sample.pressure_MPa)
        values += sample.layer_voltages_V.tolist()
        return values

    def _record(self, sample: Sample, row: list, forced: bool) -> None:
        last = self._last_recorded
        plan = self.plan
        due = (forced or last is None
               or sample.test_time_s - last.test_time_s >= plan.record_time_s - 1e-9
               or (plan.record_voltage_V is not None and abs(sample.voltage_V - last.voltage_V) >= plan.record_voltage_V)
               or (plan.record_current_A is not None and abs(sample.current_A - last.current_A) >= plan.record_current_A))
        if not due:
            return
        self.records += 1
        row[0] = self.records
        self.store.append_sample(row)
        self._last_recorded = sample

    def _checkpoint(self, sample: Sample) -> None:
        test, step = self.integrator.test, self.integrator.step
        self.store.checkpoint({
            "test_time_s": sample.test_time_s, "step_index": self.step_index, "step_count": self.step_count,
            "cycle_count": self.cycle_count, "step_started_at_s": self.step_started_at,
            "records": self.records, "test_throughput": vars(test), "step_throughput": vars(step),
            "cycle_throughput": vars(self.integrator.cycle),
        })
        self._last_checkpoint_wall = time.monotonic()

    def _event(self, kind: str, **fields) -> None:
        self.store.event(kind, self.clock.now(), self.clock.unix_time(), **fields)

    def _status(self, sample: Sample) -> RunStatus:
        step = self.plan.steps[self.step_index]
        started = sample.test_time_s if self.step_started_at is None else self.step_started_at
        step_time = sample.test_time_s - started
        step_progress = min(step_time / step.expected_s, 0.99) if step.expected_s > 0 else 0.0
        done = sum(s.expected_s for s in self.plan.steps[: self.step_index])
        total = self.plan.expected_duration_s
        overall = min((done + step_progress * step.expected_s) / total, 0.999) if total > 0 else 0.0
        throughput = self.integrator.step
        return RunStatus(step, self.step_index + 1, len(self.plan.steps), sample, step_time,
                         throughput.charge_Ah - throughput.discharge_Ah, step_progress, overall)

    # --- the one way out -------------------------------------------------------------

    def _finish(self, state: str, code: ExitCode, reason: str) -> RunOutcome:
        self.stop.shutting_down = True
        previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # finish the shutdown first
        try:
            problem = _retry(self.channel.safe_state, SAFE_STATE_ATTEMPTS)
            if problem is None:
                self._event("safe_state", outputs="off, confirmed by the instrument")
            else:
                self._event("safe_state_failed", message=problem,
                            action="outputs may still be ON: switch the supply off at the bench")
                if code in (ExitCode.COMPLETED, ExitCode.INTERRUPTED):
                    code = ExitCode.INSTRUMENT_FAULT
            self._event("run_end", state=state, reason=reason, records=self.records, overruns=self.overruns,
                        steps_run=self.step_count)
            outcome = RunOutcome(state, code, reason, self.store.folder, outputs_confirmed_off=problem is None,
                                 details={"overruns": self.overruns, "records": self.records})
            self.reporter.finished(outcome)
            return outcome
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)


def _retry(action: Callable[[], None], attempts: int) -> str | None:
    """Run `action` until it succeeds; the last error's text if it never does."""
    problem = None
    for _ in range(attempts):
        try:
            action()
            return None
        except Exception as error:
            problem = f"{type(error).__name__}: {error}"
    return problem
