"""The scenarios of the reliability campaign, each a function of its size that returns what it
found: trials, passed, rows of data lost, and why any trial failed.

    crash    `cycler run` killed with SIGKILL at random moments of a multi-cycle test and resumed
             with `cycler resume --yes` each time; the data must be the uninterrupted run's but
             for the gaps (no duplicated rows, nothing lost beyond the last second before a kill,
             the counters carried over every resume)
    faults   every fault kind of the fault schedule (drivers/sim/faults.py) at a random moment:
             the run recovers (a transient) or ends in the safe state with the cause recorded,
             never with an output on, and the rows logged before the fault are intact
    input    property-based fuzzing: mutated bench files, arbitrary BK 8500 reply frames and SCPI
             reply lines at any moment of a run; only clear errors, never a crash or an output on
    load     eight channels on one simulated bench at 1 s recording, `cycler status` queried
             from another process all the while; every channel completes, no status query fails
    disk     the disk fills up mid-run (writes fail with ENOSPC after a random number of rows,
             in a `cycler run` subprocess): storage-failure exit code, output off, the data
             written before readable

"Rows lost" counts, per scenario: rows a resume cut back (crash; they are measured again after
it), rows before a fault that differ from the run without it (faults), rows logged but never on
the disk (disk).

Plain functions, so that the campaign script and the short form in CI (test_campaign_short.py)
run the same code; they need the tests folder on sys.path (for `support`).
"""

from __future__ import annotations

import json
import math
import random
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator
from unittest import mock

import pandas as pd
import yaml
from support import QUICK, assert_continuous, data_rows, events_of, start_logging_run, wait_for_rows

from stackcycler.drivers.transport import Delivery
from stackcycler.errors import ExitCode, InvalidInput, StackcyclerError
from stackcycler.live import SilentReporter
from stackcycler.runner import StopRequest
from stackcycler.session import RunRequest, execute, prepare
from stackcycler.store import EVENTS_FILE, read_events

# --- what a scenario reports ----------------------------------------------------------------------------


@dataclass
class ScenarioResult:
    scenario: str
    trials: int = 0
    passed: int = 0
    rows_lost: int = 0
    failures: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)

    def judge(self, problems: list[str], what: str) -> bool:
        """Count one trial; it passed if there were no problems (else they are kept, with `what`)."""
        self.trials += 1
        if problems:
            self.failures += [f"{what}: {problem}" for problem in problems]
            return False
        self.passed += 1
        return True

    @property
    def ok(self) -> bool:
        return self.trials > 0 and self.passed == self.trials


def check(problems: list[str], condition: bool, problem: str) -> None:
    if not condition:
        problems.append(problem)


def run_in_process(protocol: str, bench: str, runs_dir: Path, overrides: dict | None = None):
    request = RunRequest(protocol=protocol, bench=bench, runs_dir=runs_dir, operator="campaign",
                         overrides=dict(overrides or {}))
    return execute(prepare(request), SilentReporter())


def cycler_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "stackcycler", *args]


def without_wall_clock(samples: pd.DataFrame) -> pd.DataFrame:
    return samples.drop(columns="Unix Time / s")


def safe_ending_problems(result, expected_states: tuple[str, ...]) -> list[str]:
    """An ending among `expected_states`, the outputs confirmed off and every simulated output off."""
    outcome, problems = result.outcome, []
    check(problems, outcome.state in expected_states,
          f"ended {outcome.state} (exit {int(outcome.exit_code)}: {outcome.reason}), "
          f"expected {' or '.join(expected_states)}")
    check(problems, outcome.outputs_confirmed_off, f"outputs not confirmed off ({outcome.reason})")
    events = [e["event"] for e in events_of(result)]
    check(problems, events[-2:] == ["safe_state", "run_end"], f"the run's last events are {events[-3:]}")
    for name, instrument in result.simulation.instruments.items():
        for flag in ("output_on", "input_on"):
            check(problems, not getattr(instrument, flag, False), f"simulated {name} left with {flag}")
    return problems


# --- crash: kill -9 at random moments, resume each time ----------------------------------------------------

CRASH_PROTOCOL = """\
name: crash-cycles
record: {{time_s: 10}}
steps:
  - repeat: {cycles}
    steps:
      - {{step: cccv, name: charge, current_A: 2.0, voltage_V: 97.75, until: [{{current_below_A: 0.2}}],
         max_duration_s: 7200}}
      - {{step: rest, name: rest after charge, duration_s: 600}}
      - {{step: cc, name: discharge, current_A: -2.0, until: [{{voltage_below_V: 69.0}}], max_duration_s: 7200}}
      - {{step: rest, name: rest after discharge, duration_s: 600}}
      - {{step: next_cycle}}
"""
LOST_WALL_S = 1.0  # a kill may lose what was logged in the last second before it, no more
COUNTERS = ("Charging Capacity / Ah", "Discharging Capacity / Ah")


def crash(workdir: Path, rng: random.Random, cycles: int = 4, kills: int = 3, speed: str = "5000") -> ScenarioResult:
    """One run of a `cycles`-cycle test killed `kills` times; each kill and the finished run are trials.
    A resumed run goes at full speed and makes its rows durable every half second, hundreds of rows at a
    time, so each kill takes the run some way on: `cycles` must leave room for `kills` (about 1 cycle each)."""
    result = ScenarioResult("crash")
    protocol = workdir / "crash-cycles.yaml"
    protocol.write_text(CRASH_PROTOCOL.format(cycles=cycles))
    reference = pd.read_csv(run_in_process(str(protocol), "sim", workdir / "reference").outcome.folder / "samples.csv")
    targets = sorted(rng.sample(range(len(reference) // 20, len(reference) * 6 // 10), kills))
    process, samples = start_logging_run(workdir, targets[0], protocol=str(protocol), speed=speed,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = samples.parent
    kill_log = []
    running_since = 0.0  # wall time the present process took over the run (the first: before its checkpoint)
    for k, target in enumerate(targets):
        if k > 0:
            # A resume's gap is the wall time since the checkpoint times the speed: at high speed that
            # is hours of test time with the supply on (it outlives the crash). At `--speed max` the
            # gap is one tick, so the data stays comparable with the uninterrupted run's.
            process = subprocess.Popen(cycler_command("resume", str(folder), "--yes", "--speed", "max"), cwd=workdir,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _wait_for_resumes(folder, k, process)
            running_since = time.time()
            # the run may have got past this target before the last kill: then kill it a little later
            target = max(target, len(data_rows(samples)) + rng.randint(1, 30))
            if not wait_for_rows(samples, target, process):
                if process.returncode != ExitCode.COMPLETED:
                    result.judge([f"the resumed run ended (exit {process.returncode}) before row {target}"],
                                 f"kill {k + 1}")
                break  # completed: the test ran out before the kills did
        time.sleep(rng.uniform(0.0, 0.5))  # at a random phase of the half-second checkpoints
        killed_at = time.time()
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        checkpoint = json.loads((folder / "checkpoint.json").read_text())
        # what this process logged and never made durable: since its last checkpoint, or since it took over
        lost_wall_s = killed_at - max(checkpoint["wall_unix_time_s"], running_since)
        if process.returncode == ExitCode.COMPLETED:
            break  # it completed while the kill waited: the test ran out before the kills did
        kill_log.append({"row_target": target, "test_time_s": checkpoint["test_time_s"],
                         "lost_wall_s": round(lost_wall_s, 3)})
        problems = []
        check(problems, process.returncode == -signal.SIGKILL,
              f"it had ended (exit {process.returncode}) before the kill")
        check(problems, lost_wall_s <= LOST_WALL_S, f"the last checkpoint was {lost_wall_s:.2f} s of wall time "
                                                    f"before the kill (more than {LOST_WALL_S} s of data lost)")
        result.judge(problems, f"kill {k + 1} at row {target}")
    final = subprocess.run(cycler_command("resume", str(folder), "--yes", "--speed", "max"), cwd=workdir,
                           capture_output=True, text=True, timeout=600)
    # a kill that came after the run had ended leaves it completed: then there is nothing to resume
    ended_before = json.loads((folder / "run.json").read_text())["state"] == "completed"
    problems = [] if final.returncode == ExitCode.COMPLETED or ended_before else [
        f"the last resume exited {final.returncode}: {final.stdout[-500:]}{final.stderr[-500:]}"]
    if not problems:
        problems = _crashed_run_problems(folder, reference)
    resumes = [e for e in events_of(folder) if e["event"] == "resumed"]
    result.rows_lost = sum(e["rows_after_checkpoint_dropped"] for e in resumes)
    result.judge(problems, "the resumed run against the uninterrupted one")
    result.details = {"cycles": cycles, "speed": speed, "rows_uninterrupted": len(reference), "kills": kill_log,
                      "kills_not_made": kills - len(kill_log)}
    return result


def _wait_for_resumes(folder: Path, resumes: int, process: subprocess.Popen, timeout_s: float = 60.0) -> None:
    """Until the run folder shows `resumes` resumes: the new process has cut the file and carries on."""
    deadline = time.monotonic() + timeout_s
    while sum(e["event"] == "resumed" for e in read_events(folder / EVENTS_FILE)) < resumes:  # as it is written
        if process.poll() is not None or time.monotonic() > deadline:
            return
        time.sleep(0.01)


def _crashed_run_problems(folder: Path, reference: pd.DataFrame) -> list[str]:
    problems: list[str] = []
    try:
        samples = assert_continuous(folder)  # no duplicated row, time and counters never going back
    except AssertionError as error:
        return [f"not one unbroken record: {error}"]
    meta = json.loads((folder / "run.json").read_text())
    resumes = [e for e in events_of(folder) if e["event"] == "resumed"]
    if not resumes:
        return ["the run was never resumed"]
    check(problems, (meta["state"], meta.get("resumed_times")) == ("completed", len(resumes)),
          f"run.json says {meta['state']}, resumed {meta.get('resumed_times')} times; expected completed, "
          f"{len(resumes)} (the resumed events)")
    # Before the first resume point the run is the uninterrupted one, row for row. (At the point itself a
    # row taken right after the output switched may have been cut: the resume measures it again.)
    first = resumes[0]["from_test_time_s"]
    before = samples[samples["Test Time / s"] < first].reset_index(drop=True)
    expected = reference[reference["Test Time / s"] < first].reset_index(drop=True)
    if not without_wall_clock(before).equals(without_wall_clock(expected)):
        problems.append(f"the rows up to the first resume point ({first} s) differ from the uninterrupted run's")
    # The same program ran: the same steps in the same cycles, in the same order.
    steps = samples.groupby("Step Count / 1")[["Cycle Count / 1", "Step ID"]].first()
    expected_steps = reference.groupby("Step Count / 1")[["Cycle Count / 1", "Step ID"]].first()
    check(problems, steps.equals(expected_steps), "the steps and cycles run differ from the uninterrupted run's")
    # Over each resume the counters carry on from the checkpoint: nothing counted twice or lost,
    # at most the charge of the rows a resume cut back and measured again.
    for resume in resumes:
        t = resume["from_test_time_s"]
        last, after = samples[samples["Test Time / s"] <= t].iloc[-1], samples[samples["Test Time / s"] > t].iloc[0]
        most_Ah = 2.0 * (after["Test Time / s"] - last["Test Time / s"]) / 3600 + 1e-6  # the test's 2 A
        for counter in COUNTERS:
            moved = after[counter] - last[counter]
            check(problems, -1e-9 <= moved <= most_Ah,
                  f"{counter} moved {moved:.6f} Ah over the resume at {t} s (at most {most_Ah:.6f})")
    # Each cycle's discharge is the uninterrupted run's (the DUT was restored at every resume).
    got, want = _discharge_per_cycle(samples), _discharge_per_cycle(reference)
    for cycle in want.index:
        check(problems, abs(got.get(cycle, 0.0) - want[cycle]) <= 0.005 * want[cycle],
              f"cycle {cycle} discharged {got.get(cycle, 0.0):.4f} Ah, uninterrupted {want[cycle]:.4f} Ah")
    return problems


def _discharge_per_cycle(samples: pd.DataFrame) -> pd.Series:
    cumulative = samples.groupby("Cycle Count / 1")["Discharging Capacity / Ah"].max()
    return cumulative.diff().fillna(cumulative.iloc[0])


# --- instrument and DUT faults at random moments ----------------------------------------------------------

# The quick capacity check: CC-CV charge at 2 A from about 60 s to 3700 s, rests of 60 s.
CHARGING_S = (60.0, 3000.0)
ANY_TIME_S = (60.0, 7000.0)
SUSPENDING_CAPACITY_CHECK = """\
name: capacity-check-suspending
parameters: {charge_rate_C: 1.0, discharge_rate_C: 1.0, rest_s: 60}
record: {time_s: 10, voltage_V: 0.05, current_A: 0.05}
suspend: {instrument_link_lost: true, clear_for_s: 5}
steps:
  - {step: cccv, name: charge, current_C: $charge_rate_C, voltage_V: 97.75, until: [{current_below_C: 0.05}]}
  - {step: rest, name: rest after charge, duration_s: $rest_s}
  - {step: cc, name: discharge, current_C: -$discharge_rate_C, until: [{voltage_below_V: 69.0}]}
  - {step: rest, name: rest after discharge, duration_s: $rest_s}
"""
TIMEOUT_S = 2.0  # the bench's instruments' (the default)


def random_fault(kind: str, rng: random.Random) -> dict:
    """One fault of `kind` on the bench `sim`, at a random moment, with random parameters."""
    instrument = rng.choice(["supply", "daq"])
    at = lambda window: round(rng.uniform(*window), 1)  # noqa: E731
    if kind == "no_reply":
        return {"kind": kind, "instrument": instrument, "at_s": at(ANY_TIME_S), "for_s": round(rng.uniform(2, 60), 1)}
    if kind == "late":
        return {"kind": kind, "instrument": instrument, "at_s": at(ANY_TIME_S),
                "delay_s": round(rng.uniform(2.1, 8), 2)}
    if kind in ("garbage", "truncated"):
        return {"kind": kind, "instrument": instrument, "at_s": at(ANY_TIME_S), "count": rng.randint(1, 3)}
    if kind == "disconnect":
        return {"kind": kind, "instrument": instrument, "at_s": at(ANY_TIME_S)}
    if kind == "error":
        return {"kind": kind, "instrument": instrument, "at_s": at(ANY_TIME_S), "code": rng.choice([-300, -310, -350])}
    if kind == "protection_trip":  # a supply trips while its output is on
        return {"kind": kind, "instrument": "supply", "at_s": at(CHARGING_S), "protection": rng.choice(["OVP", "OCP"])}
    if kind == "thermocouple_open":  # the stack's thermocouple (the ambient one guards nothing)
        return {"kind": kind, "instrument": "daq", "at_s": at(ANY_TIME_S), "channel": 204}
    if kind == "layer_short":  # while charging, where the short detector looks
        return {"kind": kind, "at_s": at(CHARGING_S), "layer": rng.randint(1, 23),
                "resistance_ohm": round(10 ** rng.uniform(-2, 0), 4)}
    if kind == "pressure_drift":
        return {"kind": kind, "at_s": at(CHARGING_S), "MPa_per_h": round(rng.choice([-1, 1]) * rng.uniform(5, 20), 2)}
    raise ValueError(f"no random {kind} fault")


def expected_ending(fault: dict, suspends: bool) -> tuple[str, str]:
    """(state, what the reason must name) of a run with `fault`; a protocol that `suspends` holds the
    test while a meter does not answer (a timeout or a dropped connection) instead of ending it."""
    kind, instrument = fault["kind"], fault.get("instrument")
    if kind == "late" and fault["delay_s"] <= 2 * TIMEOUT_S:
        return "completed", ""  # waited for once more
    if kind == "thermocouple_open":
        return "tripped", "T1: measured nan"
    if kind == "layer_short":
        return "tripped", f"layer {fault['layer']:02d}"
    if kind == "pressure_drift":
        return "tripped", "pressure_MPa"
    lost_link = kind in ("no_reply", "late", "disconnect")
    if lost_link and instrument == "daq" and suspends:
        return "completed", ""
    return "faulted", f"sim://{instrument}"


def faults(workdir: Path, rng: random.Random, per_kind: int = 1) -> ScenarioResult:
    """Every fault kind `per_kind` times, each in a quick capacity check of its own."""
    from stackcycler.drivers.sim.faults import FAULT_KINDS

    result = ScenarioResult("faults")
    suspending = workdir / "capacity-check-suspending.yaml"
    suspending.write_text(SUSPENDING_CAPACITY_CHECK)
    references = {suspends: without_wall_clock(pd.read_csv(run_in_process(
        str(suspending) if suspends else "capacity-check", "sim", workdir / "reference",
        {} if suspends else QUICK).outcome.folder / "samples.csv")) for suspends in (False, True)}
    tally = {kind: {"injected": 0, "survived": 0, "recovered": 0, "ended safely": 0} for kind in FAULT_KINDS}
    for trial in range(per_kind * len(FAULT_KINDS)):
        kind = FAULT_KINDS[trial % len(FAULT_KINDS)]
        fault, suspends = random_fault(kind, rng), rng.random() < 0.5
        bench = workdir / f"bench-{trial}.yaml"
        bench.write_text(yaml.safe_dump({"extends": "sim", "name": "sim-faulty", "simulation": {"faults": [fault]}}))
        run = run_in_process(str(suspending) if suspends else "capacity-check", str(bench), workdir / "runs",
                             {} if suspends else QUICK)
        state, names = expected_ending(fault, suspends)
        problems = safe_ending_problems(run, (state,))
        check(problems, names in run.outcome.reason, f"the reason '{run.outcome.reason}' does not name '{names}'")
        injected = run.simulation.faults.report()[0]["applied"] > 0
        check(problems, injected, "the fault never acted")
        samples = without_wall_clock(pd.read_csv(run.outcome.folder / "samples.csv"))
        reference = references[suspends]
        intact = _rows_alike(samples[samples["Test Time / s"] < fault["at_s"]],
                             reference[reference["Test Time / s"] < fault["at_s"]])
        result.rows_lost += intact
        check(problems, intact == 0, f"{intact} rows before the fault differ from the run without it")
        tally[kind]["injected"] += injected
        if result.judge(problems, f"{json.dumps(fault)}{' (protocol suspends)' if suspends else ''}"):
            tally[kind]["survived"] += 1
            tally[kind]["recovered" if state == "completed" else "ended safely"] += 1
    result.details = {"per_kind": tally}
    return result


def _rows_alike(got: pd.DataFrame, expected: pd.DataFrame) -> int:
    """How many rows of `expected` are missing from `got` or differ in it."""
    got, expected = got.reset_index(drop=True), expected.reset_index(drop=True)
    common = min(len(got), len(expected))
    differing = (got.iloc[:common] != expected.iloc[:common]).any(axis=1).sum()
    return int(differing) + len(expected) - common


# --- bad input: bench files, BK 8500 frames and SCPI lines, fuzzed ------------------------------------------

SHORT_PROTOCOL = 'steps: ["Charge at C/2 for 2 minutes", "Rest for 1 minute", "Discharge at C/2 for 2 minutes"]\n'
# the built-in benches, the first with a fault schedule whose numbers are fuzzed too
FUZZED_BENCHES = ("sim", "sim-e36312a-bk8500", "sim-2ch")
FUZZED_FAULTS = [{"at_s": 60, "instrument": "daq", "kind": "late", "delay_s": 3.0},
                 {"at_s": 90, "kind": "pressure_drift", "MPa_per_h": 1.0}]
# never "error" (a bug) nor "storage_failure"; "interrupted" by the wall-time budget of a run whose bench
# is valid but slow (a tick of a microsecond)
RUN_ENDINGS = ("completed", "faulted", "tripped", "invalid", "interrupted")
FUZZED_RUN_WALL_S = 2.0


class WallBudget(SilentReporter):
    """Asks the run to stop once it has taken `seconds` of wall time."""

    def __init__(self, stop: StopRequest, seconds: float):
        self.stop, self.deadline = stop, time.monotonic() + seconds

    def tick(self, status) -> None:
        if time.monotonic() > self.deadline:
            self.stop.request("wall-time budget of a fuzzed run spent")


class ReplacedReply:
    """A link that replaces the reply to the `at`-th message (counted from 1) by `reply`."""

    def __init__(self, at: int, reply):
        self.at, self.reply, self.seen, self.used = at, reply, 0, False

    def deliver(self, message, answer) -> Delivery:
        self.seen += 1
        reply = answer(message)
        if self.seen == self.at and reply:
            self.used = True
            return Delivery(self.reply)
        return Delivery(reply)


@contextmanager
def links_on(instrument: str, link) -> Iterator[None]:
    """Simulations built meanwhile carry `link` on `instrument`."""
    import stackcycler.session as session

    build = session.build_simulation

    def build_with_link(config, clock):
        simulation = build(config, clock)
        simulation.instruments[instrument].link_faults = link
        return simulation

    with mock.patch.object(session, "build_simulation", build_with_link):
        yield


def _fuzzed_run(workdir: Path, bench: str, protocol: Path) -> tuple[str, list[str]]:
    """(how it ended, the problems with that) of a short run on a fuzzed bench or link."""
    stop = StopRequest()
    request = RunRequest(protocol=str(protocol), bench=bench, runs_dir=workdir / "runs", operator="campaign")
    try:
        run = execute(prepare(request), WallBudget(stop, FUZZED_RUN_WALL_S), stop)
    except StackcyclerError as refused:  # refused before anything was switched on: bad input, no instrument
        return "refused", [] if str(refused) else ["refused without saying why"]
    except Exception as crash:  # a bug: said so with the input that found it
        return "crashed", [f"{type(crash).__name__}: {crash}"]
    return run.outcome.state, safe_ending_problems(run, RUN_ENDINGS)


def fuzz_input(workdir: Path, rng: random.Random, examples: int = 25) -> ScenarioResult:
    """Four properties, each tried on `examples` generated inputs; every example is a trial."""
    from collections import Counter

    from hypothesis import HealthCheck, Phase, given, seed, settings
    from hypothesis import strategies as st
    from test_fuzz_inputs import _mutate, _numeric_leaves, scalars

    from stackcycler.bench import BenchConfig, load_bench
    from stackcycler.validation import validate_data

    result = ScenarioResult("input")
    protocol = workdir / "short.yaml"
    protocol.write_text(SHORT_PROTOCOL)
    # no shrinking: a failing example is reported as found (shrinking reruns whole runs for minutes)
    settled = settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck),
                       phases=(Phase.explicit, Phase.reuse, Phase.generate))
    endings: Counter = Counter()

    def fuzz(test):
        return seed(rng.randrange(2**32))(settled(test))

    def trial(what: str, ending: str, problems: list[str]) -> None:
        endings[ending] += 1
        assert not problems, f"{what}: {problems}"

    def bench_data(base: str) -> dict:
        data = json.loads(json.dumps(load_bench(base).resolved))
        if base == "sim":
            data["simulation"]["faults"] = json.loads(json.dumps(FUZZED_FAULTS))
        return data

    def refused_or_run_safely(data) -> None:
        try:
            validate_data(BenchConfig, data, "fuzz-bench.yaml", {})
        except InvalidInput as refused:
            return trial("bench refused", "refused", [] if str(refused) else ["refused without saying why"])
        path = workdir / "fuzz-bench.yaml"
        path.write_text(yaml.safe_dump(data))
        trial(f"bench {data}", *_fuzzed_run(workdir, str(path), protocol))

    @fuzz
    @given(st.sampled_from(FUZZED_BENCHES), st.data(), scalars)
    def mutated_bench_files_are_refused_or_run_safely(base, choice, value):
        refused_or_run_safely(_mutate(bench_data(base), choice, value))

    @fuzz
    @given(st.sampled_from(FUZZED_BENCHES), st.data(),
           st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**9, 10**9)))
    def any_number_in_a_bench_file_is_refused_or_runs_safely(base, choice, number):
        data = bench_data(base)
        *parents, last = choice.draw(st.sampled_from(_numeric_leaves(data)))
        target = data
        for key in parents:
            target = target[key]
        target[last] = number
        refused_or_run_safely(data)

    @fuzz
    @given(st.integers(1, 120), st.binary(max_size=40))
    def any_bk8500_reply_frame_ends_the_run_cleanly(at, frame):
        link = ReplacedReply(at, frame)
        with links_on("eload", link):
            ending, problems = _fuzzed_run(workdir, "sim-e36312a-bk8500", protocol)
        trial(f"frame {frame.hex(' ')} as reply {at}", ending if link.used else "not replaced", problems)

    @fuzz
    @given(st.sampled_from(["supply", "daq"]), st.integers(1, 200),
           st.text(st.characters(blacklist_characters="\n\r"), max_size=60))
    def any_scpi_reply_line_ends_the_run_cleanly(instrument, at, line):
        link = ReplacedReply(at, line)
        with links_on(instrument, link):
            ending, problems = _fuzzed_run(workdir, "sim", protocol)
        trial(f"{line!r} as reply {at} of {instrument}", ending if link.used else "not replaced", problems)

    for prop in (mutated_bench_files_are_refused_or_run_safely, any_number_in_a_bench_file_is_refused_or_runs_safely,
                 any_bk8500_reply_frame_ends_the_run_cleanly, any_scpi_reply_line_ends_the_run_cleanly):
        endings.clear()
        try:
            prop()
            problem = []
        except Exception as error:  # hypothesis re-raises the (shrunk) failing example
            problem = [f"{type(error).__name__}: {str(error)[:800]}"]
        tried = sum(endings.values())
        result.details[prop.__name__] = dict(endings)
        result.trials += tried
        result.passed += tried - len(problem)
        result.failures += [f"{prop.__name__}: {p}" for p in problem]
    return result


# --- load: eight channels, `cycler status` from another process ----------------------------------------------

LOAD_LAYERS = 4  # 8 stacks x (4 layers, a thermocouple, a load cell) on the DAQ's 60 channels
LOAD_PROTOCOL = """\
name: load-cycles
parameters: {{charge_V: dut.charge_voltage_V, floor_V: dut.discharge_voltage_V}}
record: {{time_s: 1}}
steps:
  - repeat: {cycles}
    steps:
      - {{step: cccv, name: charge, current_C: 1.0, voltage_V: $charge_V, until: [{{current_below_C: 0.1}}],
         max_duration_s: 7200}}
      - {{step: rest, name: rest after charge, duration_s: 600}}
      - {{step: cc, name: discharge, current_C: -1.0, until: [{{voltage_below_V: $floor_V}}], max_duration_s: 7200}}
      - {{step: rest, name: rest after discharge, duration_s: 600}}
      - {{step: next_cycle}}
"""
CYCLE_S = 8800  # about one cycle of LOAD_PROTOCOL
FIXTURE = {"active_area_cm2": 620, "load_cell": {"rated_force_kN": 500, "sensitivity_mV_per_V": 2.0,
                                                 "excitation_V": 10.0}}


def many_channel_bench(channels: int = 8, layers: int = LOAD_LAYERS) -> dict:
    """A simulated bench of `channels` stacks, each on its own EA PSB, all read by one DAQ970A."""
    daq_inputs = [100 * slot + number for slot in (1, 2, 3) for number in range(1, 21)]
    per_stack = layers + 2
    if channels * per_stack > len(daq_inputs):
        raise ValueError(f"{channels} stacks of {layers} layers need more than the DAQ's {len(daq_inputs)} inputs")
    stack = {"layers": layers, "layer_capacity_Ah": 2.05, "initial_soc": 0.003}
    stacks = ["main"] + [f"stack{k + 1}" for k in range(1, channels)]
    wiring, instruments, bench_channels = {}, {}, {}
    for k, name in enumerate(stacks):
        inputs = daq_inputs[per_stack * k: per_stack * (k + 1)]
        wiring[name] = {"layer_channels": ",".join(map(str, inputs[:layers])),
                        "thermocouples": {inputs[layers]: "stack"},
                        "load_cell_channel": inputs[layers + 1]}
        instruments[f"supply{k + 1}"] = {"kind": "ea-psb-10000", "stack": name, "serial": f"23061700{k + 1:02d}"}
        bench_channels[f"stack{k + 1}"] = {
            "supply": f"supply{k + 1}", "tick_s": 1.0,
            "layer_voltages": {"meter": "daq", "channels": wiring[name]["layer_channels"], "range_V": 10},
            "temperatures": [{"meter": "daq", "channel": inputs[layers], "sensor": "T1"}],
            "pressure": {"meter": "daq", "channel": inputs[layers + 1], "range_V": 0.1, "fixture": FIXTURE},
            "dut": {"id": f"load-stack-{k + 1}", "layers": layers, "nominal_capacity_Ah": 2.0,
                    "charge_voltage_V": 4.25 * layers, "discharge_voltage_V": 3.0 * layers,
                    "safety": {"max_voltage_V": 4.3 * layers, "min_voltage_V": 2.5 * layers, "max_layer_voltage_V": 4.4,
                               "min_layer_voltage_V": 2.5, "max_charge_current_A": 2.2, "max_discharge_current_A": 2.2,
                               "max_temperature_degC": 60}}}
    instruments["daq"] = {"kind": "keysight-daq970a", **wiring["main"],
                          "more_stacks": {name: wiring[name] for name in stacks[1:]}}
    return {"name": f"sim-{channels}ch", "description": f"{channels} simulated {layers}-layer stacks, one DAQ970A",
            "simulation": {"stack": stack, "more_stacks": {name: stack for name in stacks[1:]}, "fixture": FIXTURE,
                           "instruments": instruments},
            "instruments": {**{f"supply{k + 1}": {"driver": "ea-psb-10000", "resource": f"sim://supply{k + 1}"}
                               for k in range(channels)},
                            "daq": {"driver": "keysight-daq970a", "resource": "sim://daq"}},
            "channels": bench_channels}


# Plays a script watching the runs: the list of runs, then each run it lists, over and over.
STATUS_HAMMER = textwrap.dedent("""\
    import json, sys, time
    from pathlib import Path
    from click.testing import CliRunner
    from stackcycler.cli import main
    runs, stop = Path(sys.argv[1]), Path(sys.argv[2])
    queries, errors = 0, []

    def status(*args):
        global queries
        queries += 1
        time.sleep(0.02)  # fifty a second: a script gone wild, without taking a whole core from the runs
        got = CliRunner().invoke(main, ["status", "--runs-dir", str(runs), "--json", *args])
        try:
            assert got.exit_code == 0, got.output
            return json.loads(got.output)
        except Exception as error:
            errors.append(f"status {' '.join(args)}: {type(error).__name__}: {error} {got.exception!r}")
            return []

    while not stop.exists():
        for listed in status():
            status(listed["run"])
    print(json.dumps({"queries": queries, "errors": errors[:20], "error_count": len(errors)}))
""")


def load(workdir: Path, rng: random.Random, channels: int = 8, cycles: int = 1) -> ScenarioResult:
    """`cycles` cycles (about 2.4 h of test time each) on `channels` channels at once; one trial per channel,
    and one for the status queries."""
    result = ScenarioResult("load")
    bench, protocol, runs, stop = (workdir / "many-channels.yaml", workdir / "load-cycles.yaml", workdir / "runs",
                                   workdir / "stop-hammering")
    bench.write_text(yaml.safe_dump(many_channel_bench(channels)))
    protocol.write_text(LOAD_PROTOCOL.format(cycles=cycles))
    hammer = subprocess.Popen([sys.executable, "-c", STATUS_HAMMER, str(runs), str(stop)], cwd=workdir,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = time.monotonic()
    run = subprocess.run(cycler_command("run", str(protocol), "--bench", str(bench), "--channel", "all", "--speed",
                                        "max", "--runs-dir", str(runs)), cwd=workdir, capture_output=True, text=True)
    wall_s = time.monotonic() - started
    stop.touch()
    out, err = hammer.communicate(timeout=120)
    folders = sorted(p for p in runs.glob("*") if p.is_dir())
    check_exit = [] if run.returncode == ExitCode.COMPLETED else [f"exit {run.returncode}: {run.stderr[-800:]}"]
    rows = []
    for folder in folders:
        meta = json.loads((folder / "run.json").read_text())
        rows.append(len(data_rows(folder / "samples.csv")))
        problems = list(check_exit)
        check(problems, meta["state"] == "completed", f"ended {meta['state']}: {meta.get('reason')}")
        check(problems, meta.get("outputs_confirmed_off") is True, "outputs not confirmed off")
        check(problems, rows[-1] >= 0.9 * cycles * CYCLE_S, f"only {rows[-1]} rows at 1 s recording")
        result.judge(problems, folder.name)
    check_channels = len(folders) == channels
    if not check_channels:
        result.judge([f"{len(folders)} run folders for {channels} channels"], "channels")
    try:
        hammered = json.loads(out.strip().splitlines()[-1])
        failed = hammered["error_count"]
        problems = [f"{failed} status queries failed: {hammered['errors']}"] if failed else []
        check(problems, hammered["queries"] > channels, f"only {hammered['queries']} status queries were made")
    except (IndexError, ValueError, KeyError):
        hammered, problems = {}, [f"the status process said nothing readable: {out[-500:]} {err[-500:]}"]
    result.judge(problems, "cycler status from another process")
    result.details = {"channels": channels, "test_time_s": cycles * CYCLE_S, "rows_per_channel": rows,
                      "status_queries": hammered.get("queries"), "wall_s": round(wall_s, 1)}
    return result


# --- a full disk mid-run ----------------------------------------------------------------------------------

FULL_DISK_RUN = textwrap.dedent("""\
    # `cycler run` whose disk fills up after a given number of sample rows: every write to the run
    # folder fails with ENOSPC from then on. At exit it says how many rows reached the disk and
    # whether the simulated supply's output is off.
    import errno, json, sys, atexit
    from stackcycler import session, store
    from stackcycler.cli import main

    rows_until_full, report = int(sys.argv[1]), sys.argv[2]
    disk = {"rows_appended": 0, "rows_on_disk": 0, "full": False}
    simulations = []

    def no_space():
        raise OSError(errno.ENOSPC, "No space left on device")

    class FillingFile:
        def __init__(self, handle, counts_rows):
            self.handle, self.counts_rows = handle, counts_rows
        def write(self, text):
            if disk["full"]:
                no_space()
            if self.counts_rows:
                disk["rows_on_disk"] += text.count("\\n")
            return self.handle.write(text)
        def __getattr__(self, name):
            return getattr(self.handle, name)

    original_init, original_append = store.RunStore.__init__, store.RunStore.append_sample
    original_atomic = store.atomic_write_text
    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self._samples, self._events = FillingFile(self._samples, True), FillingFile(self._events, False)
    def append_sample(self, values):
        original_append(self, values)
        disk["rows_appended"] += 1
        disk["full"] = disk["full"] or disk["rows_appended"] > rows_until_full
    def atomic_write_text(*args, **kwargs):
        if disk["full"]:
            no_space()
        return original_atomic(*args, **kwargs)
    store.RunStore.__init__, store.RunStore.append_sample = init, append_sample
    store.atomic_write_text = atomic_write_text

    original_build = session.build_simulation
    def build_simulation(config, clock):
        simulations.append(original_build(config, clock))
        return simulations[-1]
    session.build_simulation = build_simulation

    @atexit.register
    def say():
        supply = simulations[-1].instruments["supply"] if simulations else None
        with open(report, "w") as handle:
            json.dump({**disk, "supply_output_on": getattr(supply, "output_on", None)}, handle)

    main(sys.argv[3:])
""")


def full_disk(workdir: Path, rng: random.Random, trials: int = 1) -> ScenarioResult:
    result = ScenarioResult("disk")
    script = workdir / "full_disk_run.py"
    script.write_text(FULL_DISK_RUN)
    fill_ups = []
    for trial in range(trials):
        rows_until_full = rng.randint(20, 700)  # the quick capacity check logs about 800
        report, runs = workdir / f"disk-{trial}.json", workdir / f"runs-{trial}"
        overrides = [arg for name, value in QUICK.items() for arg in ("--set", f"{name}={value}")]
        done = subprocess.run([sys.executable, str(script), str(rows_until_full), str(report), "run", "capacity-check",
                               "--runs-dir", str(runs), *overrides], cwd=workdir, capture_output=True, text=True,
                              timeout=300)
        problems: list[str] = []
        check(problems, done.returncode == ExitCode.STORAGE_FAILURE,
              f"exit {done.returncode}, expected {int(ExitCode.STORAGE_FAILURE)}: {done.stderr[-500:]}")
        disk = json.loads(report.read_text())
        check(problems, disk["supply_output_on"] is False, f"the supply's output is {disk['supply_output_on']}")
        folder = next(runs.glob("*"))
        try:
            samples = pd.read_csv(folder / "samples.csv")
            check(problems, len(samples) == disk["rows_on_disk"],
                  f"{len(samples)} rows readable, {disk['rows_on_disk']} reached the disk")
            check(problems, samples["Record Index / 1"].tolist() == list(range(1, len(samples) + 1)),
                  "the rows on the disk are not rows 1..N")
            check(problems, not samples["Voltage / V"].isna().any(), "a row on the disk is torn")
        except (OSError, ValueError, KeyError) as error:
            problems.append(f"samples.csv unreadable: {error}")
        lost = min(rows_until_full, disk["rows_appended"]) - disk["rows_on_disk"]  # logged before it filled, not kept
        result.rows_lost += lost
        fill_ups.append({"rows_until_full": rows_until_full, "rows_on_disk": disk["rows_on_disk"], "rows_lost": lost})
        result.judge(problems, f"disk full after {rows_until_full} rows")
    result.details = {"fill_ups": fill_ups}
    return result


# --- the campaign's sizes ---------------------------------------------------------------------------------

Scenario = Callable[..., ScenarioResult]
SCENARIOS: dict[str, Scenario] = {"crash": crash, "faults": faults, "input": fuzz_input, "load": load,
                                  "disk": full_disk}
SHORT = {"crash": {"cycles": 4, "kills": 3}, "faults": {"per_kind": 1}, "input": {"examples": 20},
         "load": {"channels": 8, "cycles": 1}, "disk": {"trials": 2}}
# A simulated week of load at about 2.4 h a cycle.
LONG = {"crash": {"cycles": 30, "kills": 30}, "faults": {"per_kind": 10}, "input": {"examples": 300},
        "load": {"channels": 8, "cycles": math.ceil(7 * 86400 / CYCLE_S)}, "disk": {"trials": 20}}
