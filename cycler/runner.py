"""The runner: executes a plan on a channel, tick by tick, and always ends in the safe state.

Each tick, in this order (safety before control, as on the bench):
    measure -> integrate -> check safety -> check step ends -> record -> apply control -> checkpoint
The sample is recorded before control acts on it, so a fault while applying control never
loses the last measurement taken before it.

Between steps the program's control instructions (loop starts and ends, cycle marks) run at
once; a step end's goto says where the program continues.

Every way out (protocol finished, safety trip, instrument fault, bad setpoint, software error,
Ctrl+C, SIGTERM) passes through `_finish`, which switches the outputs off with stop signals
held back, confirms it with the instrument, and records why the run ended.
"""

from __future__ import annotations

import os
import signal
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from .channel import Channel
from .clock import Clock
from .control import StepControl, control_for
from .errors import ExitCode, InstrumentError, Interrupted, InvalidInput, SafetyTrip, StorageFailure
from .integrators import Integrator, Throughput
from .operation import STATUS_INTERVAL_WALL_S, ControlInbox
from .plan import (CURRENT_END_BLANKING_S, VOLTAGE_RATE_WINDOW_S, CycleMark, EndContext, LoopEnd, LoopStart, Plan, PlannedEnd, PlannedLoop,
                   PlannedStep, RunStep)
from .safety import SafetyMonitor
from .shorts import ShortDetector
from .sample import Sample
from .store import Column, RunStore, utc_iso
from .suspend import SuspendMonitor

# A CC-CV step has crossed into CV when the current is this far below its CC setpoint while the
# voltage is this close to its CV setpoint.
CV_CURRENT_FRACTION = 0.98
CV_VOLTAGE_FRACTION = 0.005
HEALTH_CHECK_INTERVAL_S = 10.0  # test time between error-queue and output-state checks
CHECKPOINT_INTERVAL_WALL_S = 0.5  # at most this much of the data is lost when the host dies
# Waits (on the run's clock) before each attempt at the safe state: a supply that stops answering
# for up to a minute (a network switch restarting, a busy instrument) is still switched off, and
# confirmed, rather than left on after the first three attempts of a second.
SAFE_STATE_WAITS_S = (0.0, 0.0, 0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
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
    step_count: int  # steps run so far, this one included
    steps_total: int  # distinct steps in the protocol
    sample: Sample
    step_time_s: float
    step_charge_Ah: float  # net, + = charged in this step
    step_progress: float
    overall_progress: float
    cycle: int = 1
    loops: str = ""  # e.g. "loop 1: 3/10"

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
    if channel.config.chamber:
        columns.append(Column("Chamber Temperature / degC", "%.2f"))
    columns += [Column(f"Layer {n:02d} Voltage / V", "%.5f") for n in range(1, len(channel.layer_channels) + 1)]
    return columns


class _VoltageRate:
    """|dV/dt| over the last VOLTAGE_RATE_WINDOW_S of a step: the slope of a least-squares line."""

    def __init__(self, window_s: float = VOLTAGE_RATE_WINDOW_S):
        self.window_s = window_s
        self.points: deque[tuple[float, float]] = deque()

    def add(self, t: float, voltage: float) -> float | None:
        self.points.append((t, voltage))
        while self.points and t - self.points[0][0] > self.window_s:
            self.points.popleft()
        if len(self.points) < 3 or t - self.points[0][0] < self.window_s * 0.999:
            return None
        times, volts = np.array(self.points).T
        times = times - times.mean()
        return float(np.dot(times, volts - volts.mean()) / np.dot(times, times))


class Runner:
    def __init__(self, plan: Plan, channel: Channel, clock: Clock, store: RunStore,
                 reporter: ProgressReporter, stop: StopRequest, snapshot: Callable[[], dict] | None = None):
        """`snapshot`: the simulated hardware's state, saved with each checkpoint (None on real benches)."""
        self.plan = plan
        self.channel = channel
        self.clock = clock
        self.store = store
        self.reporter = reporter
        self.stop = stop
        self.tick_s = channel.config.tick_s
        self.safety = SafetyMonitor(plan.envelope)
        self.shorts = ShortDetector(plan.envelope, plan.layer_inputs, plan.dut.nominal_capacity_Ah)
        self.integrator = Integrator()
        self.pc = 0  # program counter: the instruction being run
        self.step: PlannedStep | None = None
        self.control: StepControl | None = None
        self.step_count = 0
        self.cycle_count = 1
        self.step_started_at: float | None = None
        self.loop_iteration: dict[int, int] = {}  # loop number -> iterations completed
        self.loop_discharge_at_start: dict[int, float] = {}  # test discharge Ah when the iteration began
        self.loop_first_capacity: dict[int, float] = {}
        self.step_discharges: dict[str, list[float]] = {}  # tag -> discharge Ah of each run of that step
        self.records = 0
        self.overruns = 0
        self.expected_done_s = 0.0
        self._controls: dict[int, StepControl] = {}  # per step number, worked out in _preflight
        self._rate: _VoltageRate | None = None
        self._last_recorded: Sample | None = None
        self._force_record = True
        self._next_health_check = 0.0
        self._last_checkpoint_wall = -float("inf")  # the first tick ends with one: a run killed early resumes
        self._snapshot = snapshot
        self._resumed = False
        self._last_sample: Sample | None = None
        self._current_ends_armed_at = 0.0  # test time from which current-based ends may fire
        self._cv_phase: tuple[float, float] | None = None  # CC-CV step in CV: (step time, step Ah) at entry
        self.next_tick_s = 0.0  # when the next tick is due (test time)
        self._grid_s = 0.0  # the next tick of the regular grid, every tick_s
        self.outcome: RunOutcome | None = None
        self.finished_at_s = 0.0  # test time the run ended
        # Holding: output off, step clock stopped, ends not evaluated, safety and recording going on.
        self.holds: dict[str, str] = {}  # who holds the step ("operator", a suspend condition) -> why
        self._hold_started: dict[str, float] = {}
        self.suspension = SuspendMonitor(plan.protocol.suspend)
        self._tolerate_lost_meters = bool(plan.protocol.suspend and plan.protocol.suspend.instrument_link_lost)
        self._held_since: float | None = None  # test time the hold began
        self.held_total_s = 0.0
        self._inbox = ControlInbox(store.folder)
        self._acknowledged: str | None = None  # the last operator request acted on
        self._next_status_wall = 0.0
        self._loops_text_for: tuple = ()
        self._loops_text_cached = ""

    # --- the run as a whole ----------------------------------------------------------

    def run(self) -> RunOutcome:
        """The whole run on this channel alone."""
        self.start()
        while self.outcome is None:
            self.clock.sleep_until(self.next_tick_s, self.stop)
            self.advance()
        return self.outcome

    # Several channels run in one thread by a scheduler that calls these (see scheduler.py):
    # `start()` once, then `advance()` whenever the clock reaches `next_tick_s`, until `outcome`.

    def start(self) -> None:
        """Preflight and the protocol's first instructions; sets `outcome` if it ends already."""
        self._guarded(self._start)

    def advance(self) -> None:
        """One tick, at (or after) `next_tick_s`; sets `outcome` when the run has ended."""
        self._guarded(self._advance)

    def _start(self) -> None:
        self._preflight()
        self.next_tick_s = self._grid_s = self.clock.now()
        if not self._resumed and not self._run_instructions(0):
            self._complete()  # a protocol of loops and cycle marks only

    def _advance(self) -> None:
        if self.stop():
            raise Interrupted(self.stop.reason)
        ticked_at = self.next_tick_s
        if self._tick():
            self._complete()
            return
        if ticked_at >= self._grid_s:  # a tick of the regular grid, not one at a profile's point
            self._grid_s += self.tick_s
            late = self.clock.now() - self._grid_s
            if late > 0:  # the tick outran its period: log it, skip the missed slots, keep the grid
                self.overruns += 1
                if self.overruns <= MAX_OVERRUN_EVENTS:
                    self._event("tick_overrun", late_s=round(late, 4), tick_s=self.tick_s,
                                note="logged individually up to %d times, then only counted" % MAX_OVERRUN_EVENTS)
                self._grid_s += (int(late // self.tick_s) + 1) * self.tick_s
        change = self._next_setpoint_change()
        self.next_tick_s = change if change < self._grid_s - 1e-6 else self._grid_s

    def _next_setpoint_change(self) -> float:
        """Test time of the step's next scheduled setpoint change (a profile's next point): an
        extra tick then, so that the profile is followed at its own time points, not the grid's."""
        if self._held_since is not None or self.step_started_at is None:
            return float("inf")
        step_time = self._step_time(self.clock.now())
        change = self.control.next_change_s(step_time)
        return float("inf") if change is None else self.step_started_at + change

    def _complete(self) -> None:
        self.outcome = self._finish("completed", ExitCode.COMPLETED, "protocol finished", None)

    def _guarded(self, action: Callable[[], None]) -> None:
        """Run `action`; whatever goes wrong ends the run in the safe state with its reason."""
        ending: tuple[str, dict] | None = None  # the event that says why, logged after the safe state
        try:
            action()
            return
        except SafetyTrip as trip:
            state, code, reason = "tripped", trip.exit_code, str(trip)
            ending = ("safety_trip", dict(limit=trip.limit, where=trip.where, value=trip.value,
                                          threshold=trip.threshold))
        except (Interrupted, KeyboardInterrupt) as stop:
            state, code = "interrupted", ExitCode.INTERRUPTED
            reason = str(stop) or self.stop.reason or "interrupted"
            ending = ("interrupted", dict(reason=reason))
        except InstrumentError as fault:
            state, code, reason = "faulted", fault.exit_code, str(fault)
            ending = ("instrument_fault", dict(message=reason))
        except InvalidInput as error:
            state, code, reason = "invalid", error.exit_code, str(error)
            ending = ("invalid_input", dict(message=reason))
        except StorageFailure as failure:
            state, code, reason = "storage_failure", failure.exit_code, str(failure)
        except Exception as error:  # a bug: still reach the safe state and say what happened
            state, code, reason = "error", ExitCode.SOFTWARE_ERROR, f"{type(error).__name__}: {error}"
            ending = ("software_error", dict(message=reason, traceback=traceback.format_exc()))
        self.outcome = self._finish(state, code, reason, ending)

    def _preflight(self) -> None:
        """Configure meters and instrument protection, and work out every step's control,
        checked against the instruments' ratings, before anything is switched on."""
        self.channel.configure(self.plan.envelope)
        drive = self.channel.drive
        # which outputs switch themselves off if this process dies, and after how long (None: no watchdog)
        self._event("instrument_watchdogs", armed_s=dict(self.channel.watchdogs),
                    trip_found_at_connect=drive.watchdog_trip_found)
        self._controls = {step.number: control_for(step, self.plan.envelope, drive.ratings, drive.has_power_limits,
                                                   self.plan.dut) for step in self.plan.steps}
        problems = drive.rating_problems(self.plan.steps, self._controls)
        if problems:
            raise InvalidInput("\n".join(f"{self.plan.protocol_path}: {p}" for p in problems))

    def _tick(self) -> bool:
        """One tick; True when the protocol has finished."""
        if self.control is None:  # resumed: the step's control is known once preflight has run
            self.control = self._controls[self.step.number]
        sample = self.channel.measure(self._tolerate_lost_meters)
        self._last_sample = sample
        self.integrator.update(sample)
        if self.step_started_at is None:
            self._start_step(sample)
        step = self.step
        row = self._row(sample, step, self._step_time(sample.test_time_s))  # in the step it was measured in

        test = self.integrator.test
        try:
            self.safety.check(sample, test.charge_Ah - test.discharge_Ah)
            self.shorts.check(sample, "rest" if self._held_since is not None else step.kind)
        except SafetyTrip:
            self._record(sample, row, forced=True)
            raise
        self._watch_environment(sample)
        self._operator_requests(sample)
        held = self._held_since is not None

        step_time = self._step_time(sample.test_time_s)
        if step.kind == "cccv" and self._cv_phase is None and not held:
            self._watch_cv_entry(sample, step_time)
        end = None if held else self._reached_end(sample, step_time)
        # Recorded before anything is acted on, so a fault while applying control cannot lose it.
        self._record(sample, row, forced=self._force_record or end is not None)
        self._force_record = False

        if end is not None:
            # A supply that tripped its own protection drops the current to zero, which looks
            # just like a CV taper ending: confirm the instruments first, so it is a fault, not an end.
            self.channel.check_health()
            if self._end_step(sample, step_time, end):
                return True
            step_time = 0.0
        starting = end is not None or self.step_count == 1 and step_time == 0
        command = None if held else self.control.command(step_time, sample)
        changed = self.channel.apply(command)
        if end is not None or sample.test_time_s >= self._next_health_check:
            self.channel.check_health()
            self._next_health_check = sample.test_time_s + HEALTH_CHECK_INTERVAL_S
        if changed and not held and (starting or self.control.steps_on_change):
            self._measure_after_switch()
        if time.monotonic() - self._last_checkpoint_wall >= CHECKPOINT_INTERVAL_WALL_S:
            self._checkpoint(sample)
        self._publish_status(sample)
        self.reporter.tick(self._status(sample))
        return False

    def _step_time(self, test_time_s: float) -> float:
        """Time in the step, not counting time on hold."""
        now = test_time_s if self._held_since is None else self._held_since
        return now - self.step_started_at

    # --- holding the step: operator pause, environment suspend --------------------------

    def hold(self, who: str, why: str, sample: Sample) -> None:
        """Output off and the step clock stopped until every holder has released."""
        if who in self.holds:
            return
        self.holds[who] = why
        self._hold_started[who] = sample.test_time_s
        if self._held_since is None:
            self._held_since = sample.test_time_s
        self._force_record = True
        self._event("paused" if who == "operator" else "suspended", by=who, reason=why, step=self.step.number,
                    step_time_s=round(self._step_time(sample.test_time_s), 3))

    def release(self, who: str, sample: Sample) -> None:
        if self.holds.pop(who, None) is None:
            return
        del self._hold_started[who]
        held_s = sample.test_time_s - self._held_since
        self._event("continued" if who == "operator" else "suspension_cleared", by=who,
                    **({"still_held_by": sorted(self.holds)} if self.holds else {"held_s": round(held_s, 3)}))
        if self.holds:
            return
        self.step_started_at += held_s  # the step's clock carries on where it stopped
        self.held_total_s += held_s
        self._held_since = None
        self._force_record = True
        self._current_ends_armed_at = sample.test_time_s + CURRENT_END_BLANKING_S  # the output comes back on
        self.shorts.start_step()  # the layers relaxed while held: compare only with what comes after
        if self._rate is not None:
            self._rate = _VoltageRate()  # the rest's relaxation says nothing about the step's own rate

    def _watch_environment(self, sample: Sample) -> None:
        """Suspend while a `suspend:` band of the protocol is left; continue when it is back."""
        started, cleared = self.suspension.update(sample, self.channel.lost_meters)
        for condition, why in started.items():
            self.hold(condition, why, sample)
        for condition in cleared:
            if self.suspension.conditions.resume == "operator":
                self.hold("operator", f"{condition} back in band; waiting for `cycler continue`", sample)
            self.release(condition, sample)
        limit = self.suspension.conditions.max_suspended_s if self.suspension.conditions else None
        for condition in self.suspension.suspended:
            if limit is not None and sample.test_time_s - self._hold_started[condition] > limit:
                raise Interrupted(f"suspended longer than max_suspended_s = {limit:g} s: {self.holds[condition]}")

    def _held_s(self) -> float:
        """Time on hold so far, the present hold included."""
        ongoing = 0.0
        if self._held_since is not None and self._last_sample is not None:
            ongoing = self._last_sample.test_time_s - self._held_since
        return self.held_total_s + ongoing

    def _operator_requests(self, sample: Sample) -> None:
        """Act on `cycler pause|continue|stop` from another terminal."""
        request = self._inbox.poll()
        if request is None:
            return
        kind, identifier = request
        self._acknowledged = identifier
        self._event("operator_request", request=kind)
        if kind == "stop":
            raise Interrupted("stopped by operator")  # acknowledged once the output is confirmed off
        if kind == "pause":
            self.hold("operator", "paused by operator", sample)
        else:
            self.release("operator", sample)
        self._publish_status(sample, now=True)

    def _watch_cv_entry(self, sample: Sample, step_time: float) -> None:
        """A CC-CV step is in its CV phase once the supply holds the voltage and the current has
        fallen below the CC setpoint (by more than noise): from then on its current tapers."""
        step = self.step
        if (abs(sample.current_A) < CV_CURRENT_FRACTION * abs(step.current_A)
                and abs(sample.voltage_V - step.voltage_V) <= CV_VOLTAGE_FRACTION * step.voltage_V):
            moved = self.integrator.step
            self._cv_phase = (step_time, moved.charge_Ah + moved.discharge_Ah)
            self._event("cv_phase", step=step.number, step_time_s=round(step_time, 3),
                        voltage_V=sample.voltage_V, current_A=sample.current_A)

    def _cccv_phases(self, step_time: float) -> dict:
        """How a CC-CV step split between its CC and CV phases (charge moved, duration)."""
        moved = self.integrator.step
        total = moved.charge_Ah + moved.discharge_Ah
        if self._cv_phase is None:
            return {"cc_Ah": total, "cc_s": round(step_time, 3), "cv_Ah": 0.0, "cv_s": 0.0,
                    "cv_reached": False}
        cv_at, moved_at = self._cv_phase
        return {"cc_Ah": moved_at, "cc_s": round(cv_at, 3), "cv_Ah": total - moved_at,
                "cv_s": round(step_time - cv_at, 3), "cv_reached": True}

    def _measure_after_switch(self) -> None:
        """A sample right after a step in current, as cyclers take one at every step change: the
        charge count then sees the edge where it happened, not spread over the tick before."""
        sample = self.channel.measure(self._tolerate_lost_meters)
        self.integrator.update(sample)
        if self._rate is not None:
            self._rate.add(sample.test_time_s, sample.voltage_V)  # the step's first point
        row = self._row(sample, self.step, self._step_time(sample.test_time_s))
        test = self.integrator.test
        try:
            self.safety.check(sample, test.charge_Ah - test.discharge_Ah)
        finally:
            self._record(sample, row, forced=True)

    def _reached_end(self, sample: Sample, step_time: float) -> PlannedEnd | None:
        throughput = self.integrator.step
        rate = self._rate.add(sample.test_time_s, sample.voltage_V) if self._rate is not None else None
        context = EndContext(sample, step_time, throughput.charge_Ah + throughput.discharge_Ah,
                             throughput.charge_Wh + throughput.discharge_Wh, rate,
                             sample.test_time_s >= self._current_ends_armed_at)
        return next((e for e in self.step.ends if e.reached(context)), None)

    # --- the program: steps, loops, cycles -------------------------------------------

    def _run_instructions(self, pc: int) -> bool:
        """Run control instructions from `pc` up to the next step; False if the program ended."""
        program = self.plan.program
        while pc < len(program):
            instruction = program[pc]
            if isinstance(instruction, RunStep):
                self.pc = pc
                self.step = instruction.step
                self.control = self._controls[instruction.step.number]
                self.step_started_at = None
                return True
            if isinstance(instruction, LoopStart):
                loop = instruction.loop
                self.loop_iteration[loop.number] = 0
                self.loop_discharge_at_start[loop.number] = self.integrator.test.discharge_Ah
                self.loop_first_capacity.pop(loop.number, None)
                pc += 1
            elif isinstance(instruction, LoopEnd):
                pc = self._end_iteration(instruction.loop)
            else:
                pc = self._next_cycle(instruction, pc)
        self.pc = len(program)
        return False

    def _end_iteration(self, loop: PlannedLoop) -> int:
        number = loop.number
        self.loop_iteration[number] += 1
        done = self.loop_iteration[number]
        capacity = self.integrator.test.discharge_Ah - self.loop_discharge_at_start[number]
        self.loop_first_capacity.setdefault(number, capacity)
        met = [text for text in (self._loop_condition(loop, c) for c in loop.until) if text]
        finished = bool(met) or done >= loop.max_repeats
        reason = met[0] if met else (f"ran {done} times" if loop.repeat is not None
                                     else f"reached max_repeats = {loop.max_repeats} before its condition")
        self._event("loop_iteration", loop=loop.name, iteration=done, discharge_Ah=capacity,
                    **({"end": reason} if finished else {}))
        if finished:
            return loop.end + 1
        self.loop_discharge_at_start[number] = self.integrator.test.discharge_Ah
        return loop.start + 1

    def _loop_condition(self, loop: PlannedLoop, condition: tuple[str, float, str | None]) -> str | None:
        kind, value, of_step = condition
        if of_step is None:
            history = [self.loop_first_capacity[loop.number],
                       self.integrator.test.discharge_Ah - self.loop_discharge_at_start[loop.number]]
            what = "the iteration's discharge"
        else:
            history = self.step_discharges.get(of_step, [])
            what = f"the discharge of step '{of_step}'"
            if not history:
                return None
        capacity, first = history[-1], history[0]
        if kind == "retention":
            if first > 0 and capacity / first < value:
                return f"{what} fell to {capacity / first:.1%} of its first value ({capacity:.4g} of {first:.4g} Ah)"
        elif capacity < value:
            return f"{what} fell to {capacity:.4g} Ah, below {value:g} Ah"
        return None

    def _next_cycle(self, mark: CycleMark, pc: int) -> int:
        cycle = self.integrator.cycle
        self._event("cycle_end", cycle=self.cycle_count, charge_Ah=cycle.charge_Ah, discharge_Ah=cycle.discharge_Ah,
                    charge_Wh=cycle.charge_Wh, discharge_Wh=cycle.discharge_Wh)
        self.shorts.end_cycle(cycle.charge_Ah, cycle.discharge_Ah, self.clock.now())
        self.cycle_count += 1
        self.integrator.start_cycle()
        return pc + 1

    # --- steps -----------------------------------------------------------------------

    def _start_step(self, sample: Sample) -> None:
        step = self.step
        self.step_started_at = sample.test_time_s
        self.step_count += 1
        self._current_ends_armed_at = sample.test_time_s + CURRENT_END_BLANKING_S
        self.integrator.start_step()
        self.shorts.start_step()
        self._cv_phase = None
        self._rate = _VoltageRate() if any(e.quantity == "voltage_rate" for e in step.ends) else None
        self._force_record = True
        self._event("step_start", step=step.number, name=step.name, setpoint=step.setpoint(),
                    step_count=self.step_count, cycle=self.cycle_count, at=sample.test_time_s,
                    **({"loops": self._loops_text()} if self.loop_iteration else {}))
        self.reporter.step_started(self._status(sample))

    def _end_step(self, sample: Sample, step_time: float, end: PlannedEnd) -> bool:
        """Close the step and move the program on; True when the protocol has finished."""
        step = self.step
        throughput = self.integrator.step
        self._event("step_end", step=step.number, name=step.name, reason=end.describe(), origin=end.origin,
                    step_time_s=round(step_time, 3), voltage_V=sample.voltage_V, current_A=sample.current_A,
                    charge_Ah=throughput.charge_Ah, discharge_Ah=throughput.discharge_Ah,
                    charge_Wh=throughput.charge_Wh, discharge_Wh=throughput.discharge_Wh,
                    **(self._cccv_phases(step_time) if step.kind == "cccv" else {}))
        if step.tag:
            self.step_discharges.setdefault(step.tag, []).append(throughput.discharge_Ah)
        self.expected_done_s += step.expected_s
        if not self._run_instructions(self.pc + 1 if end.target is None else end.target):
            return True
        self._start_step(sample)
        self._checkpoint(sample)
        return False

    # --- recording -------------------------------------------------------------------

    def _row(self, sample: Sample, step: PlannedStep, step_time: float) -> list:
        test = self.integrator.test
        values = [0, sample.test_time_s, sample.unix_time_s, self.cycle_count, self.step_count, step.number,
                  step.step_type, step_time, sample.voltage_V, sample.current_A, sample.power_W,
                  test.charge_Ah, test.discharge_Ah, test.charge_Wh, test.discharge_Wh]
        # a reading missing from the sample (its meter did not answer) is an empty cell
        values += [sample.temperatures_degC.get(s) for s in self.channel.dut_sensors]
        if self.channel.has_ambient:
            values.append(sample.ambient_degC)
        if self.channel.config.pressure:
            values.append(sample.pressure_MPa)
        if self.channel.config.chamber:
            values.append(sample.chamber_degC)
        layers = sample.layer_voltages_V
        values += layers.tolist() if layers.size else [None] * len(self.channel.layer_channels)
        return values

    def _record(self, sample: Sample, row: list, forced: bool) -> None:
        last = self._last_recorded
        plan = self.plan
        period = self.step.record_time_s or plan.record_time_s
        due = (forced or last is None
               or sample.test_time_s - last.test_time_s >= period - 1e-9
               or (plan.record_voltage_V is not None and abs(sample.voltage_V - last.voltage_V) >= plan.record_voltage_V)
               or (plan.record_current_A is not None and abs(sample.current_A - last.current_A) >= plan.record_current_A))
        if not due:
            return
        self.records += 1
        row[0] = self.records
        self.store.append_sample(row)
        self._last_recorded = sample

    def _checkpoint(self, sample: Sample) -> None:
        """Everything needed to continue after a crash, consistent with the rows on the disk."""
        integrators = {scope: vars(getattr(self.integrator, scope)) for scope in ("test", "cycle", "step")}
        self.store.checkpoint({
            "test_time_s": sample.test_time_s, "wall_unix_time_s": time.time(),
            "program_counter": self.pc, "step_number": self.step.number,
            "step_time_s": self._step_time(sample.test_time_s), "step_count": self.step_count,
            "cycle_count": self.cycle_count, "loop_iterations": self.loop_iteration,
            "loop_discharge_at_start": self.loop_discharge_at_start, "loop_first_capacity": self.loop_first_capacity,
            "step_discharges": self.step_discharges, "expected_done_s": self.expected_done_s,
            "overruns": self.overruns, "held_total_s": self.held_total_s, "integrators": integrators,
            "ce_history": list(self.shorts.ce_history), "cv_phase": self._cv_phase,
            "last_sample": {"test_time_s": sample.test_time_s, "voltage_V": sample.voltage_V,
                            "current_A": sample.current_A, "layer_voltages_V": sample.layer_voltages_V.tolist(),
                            "temperatures_degC": sample.temperatures_degC, "pressure_MPa": sample.pressure_MPa},
            "simulation": self._snapshot() if self._snapshot else None,
        })
        self._last_checkpoint_wall = time.monotonic()

    def restore(self, checkpoint: dict, now_s: float) -> None:
        """Continue a crashed run: the same step (its clock held over the gap), loops, cycle and counts."""
        self._resumed = True
        self.pc = checkpoint["program_counter"]
        instruction = self.plan.program[self.pc]
        assert isinstance(instruction, RunStep) and instruction.step.number == checkpoint["step_number"]
        self.step = instruction.step
        self.step_started_at = now_s - checkpoint["step_time_s"]
        self.step_count = checkpoint["step_count"]
        self.cycle_count = checkpoint["cycle_count"]
        self.loop_iteration = {int(k): v for k, v in checkpoint["loop_iterations"].items()}
        self.loop_discharge_at_start = {int(k): v for k, v in checkpoint["loop_discharge_at_start"].items()}
        self.loop_first_capacity = {int(k): v for k, v in checkpoint["loop_first_capacity"].items()}
        self.step_discharges = {k: list(v) for k, v in checkpoint["step_discharges"].items()}
        self.expected_done_s = checkpoint["expected_done_s"]
        self.overruns = checkpoint["overruns"]
        self.held_total_s = checkpoint.get("held_total_s", 0.0)
        self._cv_phase = tuple(checkpoint["cv_phase"]) if checkpoint.get("cv_phase") else None
        self.shorts.ce_history.extend(tuple(entry) for entry in checkpoint.get("ce_history", []))
        self.records = checkpoint["records"]
        for scope, values in checkpoint["integrators"].items():
            setattr(self.integrator, scope, Throughput(**values))
        self._force_record = True  # the first row after the gap is always written
        self._next_health_check = now_s
        self._current_ends_armed_at = now_s + CURRENT_END_BLANKING_S  # the output comes back on
        self.shorts.start_step()

    def _event(self, kind: str, **fields) -> None:
        self.store.event(kind, self.clock.now(), self.clock.unix_time(), **fields)

    def _loops_text(self) -> str:
        """'name: iteration/max' of each loop the program is in; worked out again only when the
        program counter or an iteration has moved (the status asks for it every tick)."""
        key = (self.pc, *self.loop_iteration.items())
        if key != self._loops_text_for:
            loops = {i.loop.number: i.loop for i in self.plan.program if isinstance(i, LoopStart)}
            self._loops_text_for = key
            self._loops_text_cached = ", ".join(f"{loops[n].name}: {done + 1}/{loops[n].max_repeats}"
                                                for n, done in self.loop_iteration.items()
                                                if loops[n].start < self.pc < loops[n].end)
        return self._loops_text_cached

    def _status(self, sample: Sample) -> RunStatus:
        step = self.step
        step_time = 0.0 if self.step_started_at is None else self._step_time(sample.test_time_s)
        step_progress = min(step_time / step.expected_s, 0.99) if step.expected_s > 0 else 0.0
        total = self.plan.expected_duration_s
        overall = min((self.expected_done_s + step_progress * step.expected_s) / total, 0.999) if total > 0 else 0.0
        throughput = self.integrator.step
        return RunStatus(step, self.step_count, len(self.plan.steps), sample, step_time,
                         throughput.charge_Ah - throughput.discharge_Ah, step_progress, overall,
                         self.cycle_count, self._loops_text() if self.loop_iteration else "")

    def _publish_status(self, sample: Sample, now: bool = False, ended: str | None = None,
                        outputs_off: bool | None = None) -> None:
        """status.json for `cycler status` in another terminal: about once a second of wall time."""
        wall = time.monotonic()
        if not (now or ended or wall >= self._next_status_wall):
            return
        self._next_status_wall = wall + STATUS_INTERVAL_WALL_S
        status = self._status(sample)
        step, test, cycle = self.step, self.integrator.test, self.integrator.cycle
        remaining = max(self.plan.expected_duration_s * (1.0 - status.overall_progress), 0.0)
        layers = sample.layer_voltages_V
        self.store.status({
            "heartbeat_unix_s": time.time(), "pid": os.getpid(), "acknowledged": self._acknowledged,
            "state": ended or ("paused" if "operator" in self.holds else "suspended" if self.holds else "running"),
            "held_by": self.holds,
            "protocol": self.plan.protocol.name, "channel": self.channel.name,
            "step": {"number": step.number, "name": step.name, "setpoint": step.setpoint(),
                     "count": self.step_count, "steps_in_protocol": len(self.plan.steps)},
            "step_time_s": round(status.step_time_s, 3), "test_time_s": round(sample.test_time_s, 3),
            "time": utc_iso(sample.unix_time_s),
            "voltage_V": sample.voltage_V, "current_A": sample.current_A, "power_W": sample.power_W,
            "layers": None if layers.size == 0 else {
                "min_V": float(layers.min()), "max_V": float(layers.max()),
                "spread_mV": float(layers.max() - layers.min()) * 1e3,
                "lowest": int(layers.argmin()) + 1, "highest": int(layers.argmax()) + 1},
            "temperatures_degC": sample.temperatures_degC, "ambient_degC": sample.ambient_degC,
            "pressure_MPa": sample.pressure_MPa,
            "cycle": self.cycle_count, "loops": status.loops,
            "cycle_charge_Ah": cycle.charge_Ah, "cycle_discharge_Ah": cycle.discharge_Ah,
            "test_charge_Ah": test.charge_Ah, "test_discharge_Ah": test.discharge_Ah,
            "held_total_s": round(self._held_s(), 3), "overruns": self.overruns,
            "progress": round(status.overall_progress, 4), "remaining_s": round(remaining, 1),
            "eta": utc_iso(sample.unix_time_s + remaining),  # on the run's clock, as in samples.csv
            **({"outputs_confirmed_off": outputs_off} if ended else {}),
        })

    # --- the one way out -------------------------------------------------------------

    def _finish(self, state: str, code: ExitCode, reason: str, ending: tuple[str, dict] | None) -> RunOutcome:
        self.stop.shutting_down = True
        self.finished_at_s = self.clock.now()
        previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # finish the shutdown first
        try:
            problem = _retry(self.channel.safe_state, SAFE_STATE_WAITS_S,
                             lambda wait_s: self.clock.sleep_until(self.clock.now() + wait_s))
            if problem is not None and code in (ExitCode.COMPLETED, ExitCode.INTERRUPTED):
                code = ExitCode.INSTRUMENT_FAULT
            try:
                if ending is not None:
                    self._event(ending[0], **ending[1])
                if self._last_sample is not None and state != "storage_failure":
                    self._checkpoint(self._last_sample)  # a resume continues from here
                if problem is None:
                    self._event("safe_state", outputs="off, confirmed by the instrument")
                else:
                    self._event("safe_state_failed", message=problem,
                                action="outputs may still be ON: switch them off at the bench")
                self._event("run_end", state=state, reason=reason, records=self.records, overruns=self.overruns,
                            steps_run=self.step_count, cycles=self.cycle_count)
                # in run.json at once: a process killed while it works out the summary has still ended so
                self.store.update_metadata(state=state, exit_code=int(code), reason=reason,
                                           outputs_confirmed_off=problem is None)
                if self._last_sample is not None and self.step is not None:
                    # acknowledges a stop now that the output is off
                    self._publish_status(self._last_sample, ended=state, outputs_off=problem is None)
            except StorageFailure as failure:
                if state != "storage_failure":
                    state, code, reason = "storage_failure", failure.exit_code, f"{reason}; then {failure}"
            outcome = RunOutcome(state, code, reason, self.store.folder, outputs_confirmed_off=problem is None,
                                 details={"overruns": self.overruns, "records": self.records,
                                          "held_s": round(self._held_s(), 3)})
            self.reporter.finished(outcome)
            return outcome
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)


def _retry(action: Callable[[], None], waits_s: tuple[float, ...], sleep: Callable[[float], None]) -> str | None:
    """Run `action` until it succeeds, after each wait of `waits_s`; the last error's text if it never does."""
    problem = None
    for wait_s in waits_s:
        if wait_s:
            sleep(wait_s)
        try:
            action()
            return None
        except Exception as error:
            problem = f"{type(error).__name__}: {error}"
    return problem
