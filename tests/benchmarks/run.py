"""Benchmarks: `python tests/benchmarks/run.py [--quick]` runs them all, prints one table and writes JSON.

Every figure is a median over repeats with its spread, and every speed figure is measured side
by side with its baseline in the same process run, interleaved (these machines are shared and
noisy). The issue's targets are printed beside the figures they apply to, judged on the median.
`--quick` runs the same benchmarks at small sizes, in about a minute; a size-dependent target
(memory over 1,000,000 samples, the summary of 10,000,000 rows) is judged at full size only.

1. ticks/s: the default simulated 23-layer bench, in process, through the real drivers:
   - baseline: a bare loop of the channel's measure() on the virtual clock (drivers + simulators);
   - the runner: a full capacity check (measure, integrate, safety, ends, control, record,
     checkpoint, events) with no display.
   The ratio is the runner's cost per tick over the bare measurement's.
   And the floor of any tick through the instruments' own text protocol: the two replies a tick
   needs on this bench (the DAQ970A's 26-reading READ?, the EA PSB's MEAS:ARR?) formatted as the
   simulators format them and parsed back with str.split and float, nothing else: no physics,
   no driver, no runner.
2. life test against PyBaMM: wall time per cycle of a 1C CC-CV life test recorded every second
   (life-test-1c.yaml) on the default simulated bench, and of PyBaMM's SPM solving the same
   experiment (Chen2020 parameters, output every second), interleaved; the ratio is ours over
   PyBaMM's. Skipped, and said so, when PyBaMM is not importable. The note sets PyBaMM's time
   per output point against the protocol floor of 1 and the cost of writing a row (6).
3. memory: peak RSS growth over a long run recorded every tick (the life test at full speed),
   from after a warm-up to the last sample, measured in a fresh process so that nothing run
   before it sets the peak. The peak after the end-of-run summary (which reads samples.csv back)
   is shown apart.
4. breach-to-off latency on the virtual clock: capacity-check on the sim-weak-layer bench,
   recorded every tick, trips on layer 7's over-voltage; the ticks from the first recorded
   sample over the limit to the moment OUTP OFF reaches the simulated supply.
5. runner overhead over loopback TCP: the default bench's simulators served by `cycler sim
   serve` (SimulationServer) on 127.0.0.1 and driven through pyvisa-py in real time; the
   runner's time inside a tick (median, 50 ms ticks) against the median time of the raw pyvisa
   queries a tick needs (MEAS:ARR? to the supply, READ? to the DAQ) on the same server, paced
   every 50 ms as well, interleaved.
6. sample writing: the run folder's writer (RunStore.append_sample, with a checkpoint every
   half second of wall time as the runner does, then close) writing rows of the default bench's
   real column set, the rows a capacity check recorded, against plain `csv.writer` writing the
   same rows to a file (then flush and fsync, as RunStore's close does), interleaved: rows/s and
   bytes/row of each. And the share of the runner's tick time spent in RunStore's sample calls
   (append_sample, flush, checkpoint; outermost calls only) during that capacity check.
7. the BK 8500 serial path: the simulated load served on the master side of a pseudo-terminal
   (os.openpty) from a thread, the real driver on the slave side through pyserial
   (SerialByteTransport); the round trip of a measurement (Bk8500.measure: a 0x5F frame out, its
   26-byte reply back, checked and decoded) against the same frame written and its reply read
   raw with pyserial on the same pty, alternating query by query.
8. breach-to-off latency over loopback TCP, in milliseconds: as 4, but the sim-weak-layer
   bench's simulators served over TCP in real time (50 ms ticks), started from the simulated
   hardware's state shortly before benchmark 4 tripped (the snapshot in the checkpoint of the
   same run on the virtual clock, stopped there), so that the trip comes within a second or two;
   from the moment the simulated DAQ returns the first READ? reply with a layer voltage over the
   limit to the moment OUTP OFF reaches the simulated supply (wall clock, both noted in the
   server's threads), and the runner ticks begun in between.
9. per-cycle summary of a big file (summary.py, which also runs on its own): ours against a
   plain pandas groupby, each in a fresh process, interleaved.
10. the drivers' own cost:
   - over loopback TCP: the default bench's simulators served as in 5; each instrument's
     measurement through its driver (the supply's measure(), the DAQ's scan()) against the one
     pyvisa query it makes, sent raw on the driver's own VISA session, alternating call by call;
     the ratio is the driver's overhead per query;
   - in process, on the virtual clock: every measurement call of every instrument of every
     built-in bench (measure(), scan(), the chamber's read()) through its driver and simulator,
     the clock moved one tick between calls so that the physics runs as in a run: calls/s.
"""

from __future__ import annotations

import argparse
import csv
import json
import operator
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from bisect import bisect_right
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd
import yaml

import summary
from bench_common import resident_MB, summarise
from stackcycler.bench import builtin_benches, load_bench
from stackcycler.channel import Channel, chamber_for, drive_for
from stackcycler.cli import served_bench_text
from stackcycler.clock import WallClock
from stackcycler.drivers.bk8500 import Bk8500, Code, encode_frame
from stackcycler.drivers.scpi import parse_channel_list
from stackcycler.drivers.sim.daq970a import SimDaq970a
from stackcycler.drivers.sim.ea_psb import SimEaPsb
from stackcycler.drivers.sim.serve import SimulationServer
from stackcycler.drivers.sim.simulation import build_simulation
from stackcycler.drivers.transport import DEFAULT_BAUD_RATE, SerialByteTransport
from stackcycler.live import SilentReporter
from stackcycler.runner import CHECKPOINT_INTERVAL_WALL_S, Runner, StopRequest
from stackcycler.safety import SafetyEnvelope
from stackcycler.session import RunRequest, execute, open_bench, prepare
from stackcycler.store import CHECKPOINT_FILE, EVENTS_FILE, SAMPLES_FILE, Column, RunStore, read_json

HERE = Path(__file__).parent
LIFE_TEST = HERE / "life-test-1c.yaml"
# The PyBaMM side of the life test: the same steps, at the limits of the Chen2020 cell (its
# upper cut-off is 4.2 V; our simulated layers charge to 4.25 V and discharge to 3.0 V).
PYBAMM_CYCLE = ("Charge at 1C until 4.2 V", "Hold at 4.2 V until C/20", "Rest for 10 minutes",
                "Discharge at 1C until 3.0 V", "Rest for 10 minutes")
PYBAMM_PARAMETERS = "Chen2020"
WEAK_BENCH = "sim-weak-layer"  # trips on layer 7's over-voltage during the capacity check's charge
BK8500_BENCH = "sim-e36312a-bk8500"
LOOPBACK_TICK_S = 0.05  # the runner's tick over loopback TCP (benchmarks 5 and 8)
BREACH_LEAD_S = 2.0  # benchmark 8 starts from a virtual run stopped this long (test time) before benchmark 4
# tripped; the stop lands at the next tick, so the served run trips about a second after it starts
BREACH_TIMEOUT_S = 30.0  # ... and gives up if no trip has come after this long


@dataclass(frozen=True)
class Sizes:
    repeats: int  # ticks/s, sample writing, the pty round trip, breach over TCP
    capacity_overrides: dict[str, float]  # of the capacity check (ticks/s, sample writing)
    life_cycles: int
    life_repeats: int
    memory_samples: int
    loopback_ticks: int
    loopback_repeats: int
    writer_rows: int
    pty_queries: int
    summary_rows: int
    summary_repeats: int
    driver_queries: int  # per instrument, over TCP and in process (benchmark 10)
    full: bool = True  # the sizes the issue's size-dependent targets are stated at


FULL = Sizes(repeats=5, capacity_overrides={}, life_cycles=100, life_repeats=3, memory_samples=1_000_000,
             loopback_ticks=1000, loopback_repeats=3, writer_rows=300_000, pty_queries=1000,
             summary_rows=summary.TARGET_ROWS, summary_repeats=3, driver_queries=2000)
QUICK = Sizes(repeats=3, capacity_overrides={"charge_rate_C": 1.0, "discharge_rate_C": 1.0, "rest_s": 60.0},
              life_cycles=3, life_repeats=2, memory_samples=50_000, loopback_ticks=100, loopback_repeats=2,
              writer_rows=50_000, pty_queries=200, summary_rows=summary.QUICK_ROWS, summary_repeats=2,
              driver_queries=300, full=False)
SMOKE = Sizes(repeats=1, capacity_overrides=QUICK.capacity_overrides, life_cycles=1, life_repeats=1,
              memory_samples=2000, loopback_ticks=5, loopback_repeats=1, writer_rows=2000, pty_queries=20,
              summary_rows=10_000, summary_repeats=1, driver_queries=20, full=False)  # does the harness still run? (the tests)


# --- instrumentation shared by several benchmarks ------------------------------------------------


def configured_channel(opened, config, name: str) -> Channel:
    """A channel on the opened instruments with its scans set up (the DAQ needs one to read)."""
    channel = Channel(name, config, drive_for(config, opened.drivers),
                      {meter: opened.drivers[meter] for meter in config.meter_names()}, opened.clock,
                      chamber_for(config, opened.drivers))
    channel.configure(SafetyEnvelope.tightest(config.dut.safety))
    return channel


@contextmanager
def timed_ticks(spans: list[list[float]]) -> Iterator[None]:
    """Note [start, end] wall times (perf_counter) of every tick of the runner; the start is noted
    as the tick begins, so a tick that is still running (or raised) has its start."""
    original = Runner._tick

    def timed(self):
        span = [time.perf_counter()]
        spans.append(span)
        try:
            return original(self)
        finally:
            span.append(time.perf_counter())

    Runner._tick = timed
    try:
        yield
    finally:
        Runner._tick = original


@contextmanager
def output_switches(log: list[tuple[float, float, bool]]) -> Iterator[None]:
    """Note (simulated clock's time, wall time (perf_counter), on) of every OUTP command the
    simulated supply executes, as it has executed it."""
    original = SimEaPsb._output

    def noted(self, args):
        original(self, args)
        log.append((self.world.clock.now(), time.perf_counter(), self.output_on))

    SimEaPsb._output = noted
    try:
        yield
    finally:
        SimEaPsb._output = original


@contextmanager
def layer_readings_over(limit_V: float, log: list[float]) -> Iterator[None]:
    """Note the wall time (perf_counter) at which the simulated DAQ returns each READ? reply with a
    layer voltage over `limit_V`."""
    original = SimDaq970a.handle

    def noted(self, message):
        reply = original(self, message)
        returned = time.perf_counter()
        if reply is not None and message.strip().upper() == "READ?":
            fields = reply.split(",")
            values = fields[0::2] if self.format_channel else fields  # in scan-list order
            layers = set(parse_channel_list(self.config.layer_channels))
            if any(float(value) > limit_V for value, channel in zip(values, self.scan_list) if channel in layers):
                log.append(returned)
        return reply

    SimDaq970a.handle = noted
    try:
        yield
    finally:
        SimDaq970a.handle = original


class StopAt(SilentReporter):
    """Asks the run to stop at its first tick at or after test time `test_time_s`."""

    def __init__(self, stop: StopRequest, test_time_s: float):
        self.stop, self.test_time_s = stop, test_time_s

    def tick(self, status) -> None:
        if status.sample.test_time_s >= self.test_time_s:
            self.stop.request(f"benchmark: stop at {self.test_time_s:g} s")


@contextmanager
def served_bench(name: str, tick_s: float, simulation_state: dict | None = None,
                 ) -> Iterator[tuple[Path, dict[str, str]]]:
    """The simulators of bench `name` served over loopback TCP in real time (continuing from
    `simulation_state`, a snapshot from a checkpoint, if given): a bench file that reaches them as
    real instruments, ticking every `tick_s`, in a temporary folder (for runs, too), and the
    instruments' resources."""
    bench = load_bench(name)
    clock = WallClock(simulation_state["time_s"] if simulation_state else 0.0)
    simulation = build_simulation(bench.config.simulation, clock)
    if simulation_state:
        simulation.restore(simulation_state)
    previous_lock_dir = os.environ.get("CYCLER_LOCK_DIR")
    with tempfile.TemporaryDirectory() as folder, SimulationServer(simulation) as server:
        os.environ["CYCLER_LOCK_DIR"] = str(Path(folder) / "locks")  # a served bench is a real one: locked
        try:
            data = yaml.safe_load(served_bench_text(bench, server.resources()))
            for channel in data["channels"].values():
                channel["tick_s"] = tick_s
            path = Path(folder) / "served.yaml"
            path.write_text(yaml.safe_dump(data))
            yield path, server.resources()
        finally:
            if previous_lock_dir is None:
                os.environ.pop("CYCLER_LOCK_DIR", None)
            else:
                os.environ["CYCLER_LOCK_DIR"] = previous_lock_dir


def capacity_check_every_tick(folder: Path) -> Path:
    """capacity-check as in the library, recorded every second (every tick on a 1 s bench), written
    into `folder`."""
    protocol = yaml.safe_load((resources.files("stackcycler.protocols") / "capacity-check.yaml").read_text())
    protocol["record"] = {"time_s": 1}
    path = folder / "capacity-check-every-tick.yaml"
    path.write_text(yaml.safe_dump(protocol, sort_keys=False))
    return path


def assert_completed(result) -> None:
    assert result.outcome.state == "completed", result.outcome.reason


def run_ticks(result, prepared) -> int:
    return int(result.simulation.world.clock.now() / prepared.channel.tick_s) + 1


# --- 1. ticks per second -------------------------------------------------------------------------


def bare_measure_ticks_per_s(ticks: int) -> float:
    bench = load_bench("sim")
    config = bench.config.channels["stack1"]
    opened = open_bench(bench, {config.supply, *config.meter_names()}, speed=None)
    try:
        channel = configured_channel(opened, config, "stack1")
        start = time.perf_counter()
        for k in range(ticks):
            opened.clock.sleep_until(float(k))
            channel.measure()
        return ticks / (time.perf_counter() - start)
    finally:
        opened.close()


def runner_ticks_per_s(overrides: dict[str, float]) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as runs:
        prepared = prepare(RunRequest("capacity-check", runs_dir=Path(runs), operator="benchmark", overrides=overrides))
        start = time.perf_counter()
        result = execute(prepared, SilentReporter())
        elapsed = time.perf_counter() - start
        assert_completed(result)
        ticks = run_ticks(result, prepared)
        return ticks / elapsed, ticks


Formatter = Callable[[float, float, float], str]


def protocol_replies() -> tuple[str, tuple[float, ...], tuple[float, float, float], Formatter]:
    """The default bench's DAQ970A READ? format (the simulator's template) and readings, and its EA
    PSB's MEAS:ARR? values and formatter, as the simulators have them after one real tick."""
    bench = load_bench("sim")
    config = bench.config.channels["stack1"]
    opened = open_bench(bench, {config.supply, *config.meter_names()}, speed=None)
    try:
        configured_channel(opened, config, "stack1").measure()
        daq, supply = (opened.drivers[name].transport.device for name in (config.layer_voltages.meter, config.supply))
        template = daq._plan_scan().template
        readings = tuple(float(text) for text in daq.handle("READ?").split(",")[0::2])
        volts, amps = supply._measured()
        return template, readings, (volts, amps, volts * amps), \
            lambda v, a, w: f"{supply._volts(v)}, {supply._amps(a)}, {supply._watts(w)}"
    finally:
        opened.close()


def protocol_floor_us(calls: int) -> float:
    """us per tick of formatting and parsing the two replies a tick needs, and nothing else."""
    template, readings, (volts, amps, watts), meas_array = protocol_replies()
    start = time.perf_counter()
    for _ in range(calls):
        fields = (template % readings).split(",")
        scanned = [float(text) for text in fields[0::2]]
        measured = [float(text.strip()[:-1]) for text in meas_array(volts, amps, watts).split(",")]
    elapsed = time.perf_counter() - start
    assert len(scanned) == len(readings) and len(measured) == 3
    return elapsed / calls * 1e6


def ticks_per_s(sizes: Sizes) -> dict:
    bare, runner, floor, ticks = [], [], [], 0
    for _ in range(sizes.repeats):  # interleaved, so drift on a shared machine hits both alike
        rate, ticks = runner_ticks_per_s(sizes.capacity_overrides)
        runner.append(rate)
        bare.append(bare_measure_ticks_per_s(ticks))
        floor.append(protocol_floor_us(ticks))
    return {"bare_measure": summarise(bare), "runner": summarise(runner),
            "runner_cost_over_bare_measure": summarise([b / r for b, r in zip(bare, runner)]), "ticks_per_run": ticks,
            "protocol_floor_us": summarise(floor)}


# --- 2. the life test, ours and PyBaMM's ------------------------------------------------------------


def our_life_test_s_per_cycle(cycles: int) -> tuple[float, float]:
    """(wall seconds per cycle, ticks per second) of the life test, end-of-run summary included."""
    with tempfile.TemporaryDirectory() as runs:
        prepared = prepare(RunRequest(str(LIFE_TEST), runs_dir=Path(runs), operator="benchmark",
                                      overrides={"cycles": cycles}))
        start = time.perf_counter()
        result = execute(prepared, SilentReporter())
        elapsed = time.perf_counter() - start
        assert_completed(result)
        return elapsed / cycles, run_ticks(result, prepared) / elapsed


def pybamm_life_test_s_per_cycle(pybamm, cycles: int) -> tuple[float, float]:
    """(wall seconds per cycle, output points per cycle) of PyBaMM's SPM on the same experiment,
    model set-up included."""
    start = time.perf_counter()
    experiment = pybamm.Experiment([PYBAMM_CYCLE] * cycles, period="1 second")
    simulation = pybamm.Simulation(pybamm.lithium_ion.SPM(), experiment=experiment,
                                   parameter_values=pybamm.ParameterValues(PYBAMM_PARAMETERS))
    solution = simulation.solve(initial_soc=0.0)  # from empty, as our simulated stack starts
    elapsed = time.perf_counter() - start
    assert len(solution.cycles) == cycles, f"PyBaMM stopped after {len(solution.cycles)} of {cycles} cycles"
    return elapsed / cycles, len(solution.t) / cycles


def import_pybamm():
    try:
        import pybamm
    except ImportError as error:
        return None, f"PyBaMM is not importable ({error})"
    return pybamm, f"PyBaMM {pybamm.__version__}, SPM, {PYBAMM_PARAMETERS}"


def life_test(sizes: Sizes) -> dict:
    pybamm, note = import_pybamm()
    ours, ours_rate, theirs, their_us_per_point = [], [], [], []
    for _ in range(sizes.life_repeats):  # interleaved, as above
        s_per_cycle, rate = our_life_test_s_per_cycle(sizes.life_cycles)
        ours.append(s_per_cycle)
        ours_rate.append(rate)
        if pybamm is not None:
            s_per_cycle, points_per_cycle = pybamm_life_test_s_per_cycle(pybamm, sizes.life_cycles)
            theirs.append(s_per_cycle)
            their_us_per_point.append(s_per_cycle / points_per_cycle * 1e6)
    results = {"cycles": sizes.life_cycles, "ours_s_per_cycle": summarise(ours),
               "ours_ticks_per_s": summarise(ours_rate), "pybamm": note}
    if theirs:
        results |= {"pybamm_s_per_cycle": summarise(theirs),
                    "pybamm_us_per_output_point": summarise(their_us_per_point),
                    "ours_over_pybamm": summarise([a / b for a, b in zip(ours, theirs)])}
    return results


# --- 3. memory over a long run ----------------------------------------------------------------------


def reset_peak_resident() -> bool:
    """Start the peak over from the present resident set (Linux: clear_refs 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class MemoryWatch(SilentReporter):
    """After `warm_up` ticks notes the resident set and restarts its peak; at `ticks` notes the
    peak and asks the run to stop."""

    def __init__(self, stop, warm_up: int, ticks: int):
        self.stop, self.warm_up, self.ticks = stop, warm_up, ticks
        self.count = 0
        self.at_warm_up_MB = self.peak_MB = self.at_end_MB = 0.0

    def tick(self, status) -> None:
        self.count += 1
        if self.count == self.warm_up:
            now, peak = resident_MB()
            self.at_warm_up_MB = now if reset_peak_resident() else peak
        elif self.count == self.ticks:
            self.at_end_MB, self.peak_MB = resident_MB()
            self.stop.request("benchmark: enough samples")


def memory_child(samples: int) -> dict:
    """Run in a fresh process (see memory_growth): the life test, recorded every tick, cut at `samples`."""
    stop = StopRequest()
    watch = MemoryWatch(stop, warm_up=max(samples // 10, 1000), ticks=samples)
    with tempfile.TemporaryDirectory() as runs:
        prepared = prepare(RunRequest(str(LIFE_TEST), runs_dir=Path(runs), operator="benchmark",
                                      overrides={"cycles": samples // 5000 + 2}))  # more than enough cycles
        start = time.perf_counter()
        result = execute(prepared, watch, stop)
        elapsed = time.perf_counter() - start
    assert watch.peak_MB, f"the run ended before {samples} samples: {result.outcome.reason}"
    return {"samples": result.outcome.details["records"], "warm_up_samples": watch.warm_up,
            "resident_at_warm_up_MB": watch.at_warm_up_MB, "peak_after_warm_up_MB": watch.peak_MB,
            "resident_at_last_sample_MB": watch.at_end_MB, "growth_MB": watch.peak_MB - watch.at_warm_up_MB,
            "peak_with_end_of_run_summary_MB": resident_MB()[1], "wall_s": elapsed}


def memory_growth(samples: int) -> dict:
    done = subprocess.run([sys.executable, __file__, "--memory-child", str(samples)], capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


# --- 4. breach-to-off latency on the virtual clock ------------------------------------------------


def breach_to_off_ticks() -> dict:
    with tempfile.TemporaryDirectory() as folder:
        # recorded every tick, so that the first sample over the limit is in samples.csv whichever it is
        prepared = prepare(RunRequest(str(capacity_check_every_tick(Path(folder))), bench=WEAK_BENCH,
                                      runs_dir=Path(folder) / "runs", operator="benchmark"))
        limit = prepared.plan.envelope.max_layer_voltage_V
        switches: list[tuple[float, float, bool]] = []
        with output_switches(switches):
            result = execute(prepared, SilentReporter())
        samples = pd.read_csv(result.outcome.folder / SAMPLES_FILE)
        events = [json.loads(line) for line in (result.outcome.folder / EVENTS_FILE).read_text().splitlines()]
    layers = samples.filter(like="Layer ")
    over = samples[(layers > limit).any(axis=1)]
    trip = next((e for e in events if e["event"] == "safety_trip"), None)
    assert trip is not None and not over.empty, f"no layer over-voltage trip: {result.outcome.reason}"
    first_over_s = float(over["Test Time / s"].iloc[0])
    off_s = next(t for t, _, on in switches if not on and t >= first_over_s)
    return {"ticks": round((off_s - first_over_s) / prepared.channel.tick_s), "first_over_limit_s": first_over_s,
            "output_off_s": off_s, "trip": f"{trip['limit']} at {trip['where']}", "limit_V": limit,
            "trip_event_s": trip["test_time_s"]}


# --- 5. runner overhead over loopback TCP ------------------------------------------------------------


def loopback_overhead(ticks: int, repeats: int) -> dict:
    import pyvisa

    runner_ms, raw_ms = [], []
    with served_bench("sim", LOOPBACK_TICK_S) as (bench_path, served):
        protocol = bench_path.parent / "cc.yaml"
        protocol.write_text(f"name: cc\nrecord: {{time_s: 1}}\nsteps:\n  - {{step: cc, current_A: 0.5, "
                            f"until: [{{step_time_s: {ticks * LOOPBACK_TICK_S}}}]}}\n")
        manager = pyvisa.ResourceManager("@py")
        for _ in range(repeats):  # interleaved
            spans: list[list[float]] = []
            with timed_ticks(spans):
                result = execute(prepare(RunRequest(str(protocol), bench=str(bench_path),
                                                    runs_dir=bench_path.parent / "runs", operator="benchmark")),
                                 SilentReporter())
            assert_completed(result)
            runner_ms.append(statistics.median(end - start for start, end in spans) * 1e3)
            supply, daq = (manager.open_resource(served[name], read_termination="\n", write_termination="\n")
                           for name in ("supply", "daq"))
            raw = []
            for _ in range(ticks):  # the DAQ keeps the scan the run configured
                time.sleep(LOOPBACK_TICK_S)  # paced as the runner's ticks: an idle link wakes up slower than a busy one
                start = time.perf_counter()
                supply.query("MEAS:ARR?")
                daq.query("READ?")
                raw.append(time.perf_counter() - start)
            supply.close()
            daq.close()
            raw_ms.append(statistics.median(raw) * 1e3)
    return {"ticks": ticks, "runner_tick_ms": summarise(runner_ms), "raw_queries_ms": summarise(raw_ms),
            "ratio": summarise([a / b for a, b in zip(runner_ms, raw_ms)])}


# --- 6. sample writing ---------------------------------------------------------------------------


class SampleWriting:
    """For the length of a `with`: the wall time (perf_counter) of every outermost call of
    RunStore's sample-writing methods (checkpoint and event call flush themselves), and the
    columns, a copy of every row appended and the last checkpoint's state, for replaying them."""

    CALLS = ("append_sample", "flush", "checkpoint")

    def __init__(self) -> None:
        self.spans: list[tuple[float, float, str]] = []
        self.columns: list[Column] = []
        self.rows: list[list] = []
        self.checkpoint_state: dict = {}
        self._depth = 0
        self._originals = {name: getattr(RunStore, name) for name in self.CALLS}

    def __enter__(self) -> "SampleWriting":
        for name, original in self._originals.items():
            setattr(RunStore, name, self._timed(name, original))
        return self

    def __exit__(self, *exc) -> None:
        for name, original in self._originals.items():
            setattr(RunStore, name, original)

    def _timed(self, name: str, original: Callable) -> Callable:
        def timed(store, *args, **kwargs):
            if name == "append_sample":
                self.columns = store.columns
                self.rows.append(list(args[0]))
            elif name == "checkpoint":
                self.checkpoint_state = args[0]
            self._depth += 1
            start = time.perf_counter()
            try:
                return original(store, *args, **kwargs)
            finally:
                end = time.perf_counter()
                self._depth -= 1
                if self._depth == 0:
                    self.spans.append((start, end, name))
        return timed

    def seconds_inside(self, ticks: list[list[float]]) -> dict[str, float]:
        """Time spent in the calls made inside one of the `ticks` (the runner's [start, end] spans),
        by the method called."""
        starts = [tick[0] for tick in ticks]
        seconds = dict.fromkeys(self.CALLS, 0.0)
        for start, end, name in self.spans:
            k = bisect_right(starts, start) - 1
            if k >= 0 and end <= ticks[k][1]:
                seconds[name] += end - start
        return seconds


def sample_writing_in_runner(overrides: dict[str, float]) -> tuple[dict[str, float], SampleWriting]:
    """The share (%) of the runner's tick time spent in each of RunStore's sample calls during a
    capacity check on the default bench, and what was written (see SampleWriting)."""
    writing, ticks = SampleWriting(), []
    with tempfile.TemporaryDirectory() as runs:
        prepared = prepare(RunRequest("capacity-check", runs_dir=Path(runs), operator="benchmark", overrides=overrides))
        with writing, timed_ticks(ticks):
            result = execute(prepared, SilentReporter())
        assert_completed(result)
    tick_s = sum(end - start for start, end in ticks)
    return {name: 100 * s / tick_s for name, s in writing.seconds_inside(ticks).items()}, writing


def run_store_rows_per_s(writing: SampleWriting, rows: int) -> tuple[float, float]:
    """(rows/s, bytes/row) of RunStore writing `rows` rows (the recorded ones over and over) as the
    runner does: append_sample each, checkpoint every CHECKPOINT_INTERVAL_WALL_S of wall time, close."""
    recorded = writing.rows
    with tempfile.TemporaryDirectory() as folder:
        store = RunStore.create(Path(folder), writing.columns, {}, "", "")
        header = (Path(folder) / SAMPLES_FILE).stat().st_size
        start = last_checkpoint = time.perf_counter()
        for k in range(rows):
            store.append_sample(recorded[k % len(recorded)])
            now = time.perf_counter()
            if now - last_checkpoint >= CHECKPOINT_INTERVAL_WALL_S:
                store.checkpoint(writing.checkpoint_state)
                last_checkpoint = now
        store.close()
        elapsed = time.perf_counter() - start
        size = (Path(folder) / SAMPLES_FILE).stat().st_size - header
    return rows / elapsed, size / rows


def csv_writer_rows_per_s(writing: SampleWriting, rows: int) -> tuple[float, float]:
    """(rows/s, bytes/row) of plain csv.writer writing the same rows to a file, then flush and fsync."""
    recorded = writing.rows
    with tempfile.TemporaryDirectory() as folder, open(Path(folder) / "plain.csv", "w", newline="",
                                                       encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([column.name for column in writing.columns])
        handle.flush()
        header = handle.tell()
        start = time.perf_counter()
        for k in range(rows):
            writer.writerow(recorded[k % len(recorded)])
        handle.flush()
        os.fsync(handle.fileno())
        elapsed = time.perf_counter() - start
        size = handle.tell() - header
    return rows / elapsed, size / rows


def sample_writing(sizes: Sizes) -> dict:
    shares, ours, ours_bytes, plain, plain_bytes = [], [], [], [], []
    for _ in range(sizes.repeats):  # interleaved
        share, writing = sample_writing_in_runner(sizes.capacity_overrides)
        shares.append(share)
        rate, size = run_store_rows_per_s(writing, sizes.writer_rows)
        ours.append(rate)
        ours_bytes.append(size)
        rate, size = csv_writer_rows_per_s(writing, sizes.writer_rows)
        plain.append(rate)
        plain_bytes.append(size)
    return {"rows": sizes.writer_rows, "columns": len(writing.columns), "rows_recorded_by_the_run": len(writing.rows),
            "run_store_rows_per_s": summarise(ours), "csv_writer_rows_per_s": summarise(plain),
            "time_per_row_run_store_over_csv_writer": summarise([p / o for o, p in zip(ours, plain)]),
            "run_store_bytes_per_row": summarise(ours_bytes), "csv_writer_bytes_per_row": summarise(plain_bytes),
            "share_of_runner_tick_time_percent": summarise([sum(share.values()) for share in shares]),
            "share_by_call_percent": {name: summarise([share[name] for share in shares])
                                      for name in SampleWriting.CALLS}}


# --- 7. the BK 8500 over a pseudo-terminal ----------------------------------------------------------


@contextmanager
def served_on_pty(device) -> Iterator[str]:
    """`device`, a simulated binary instrument, answering on the master side of a pseudo-terminal
    from a thread, as on the far side of a USB-serial adapter; yields the slave's path for pyserial.
    Close every port opened on the slave before leaving: the thread ends when the slave is closed."""
    master, slave = os.openpty()

    def serve() -> None:
        while True:
            try:
                data = os.read(master, 256)
            except OSError:  # EIO: the slave side is closed
                return
            if not data:
                return
            reply = device.receive(data)
            if reply:
                os.write(master, reply)

    thread = threading.Thread(target=serve, name="pty-sim", daemon=True)
    thread.start()
    try:
        yield os.ttyname(slave)
    finally:
        os.close(slave)
        thread.join(timeout=1.0)
        os.close(master)


def bk8500_pty_round_trips(queries: int, repeats: int) -> dict:
    import serial

    bench = load_bench(BK8500_BENCH)
    simulation = build_simulation(bench.config.simulation, WallClock())
    name = next(n for n, spec in bench.config.instruments.items() if spec.driver == "bk-8500")
    driver_us, raw_us = [], []
    with served_on_pty(simulation.instruments[name]) as port:
        load = Bk8500(SerialByteTransport(port, baud_rate=DEFAULT_BAUD_RATE))
        raw = serial.serial_for_url(port, baudrate=DEFAULT_BAUD_RATE, timeout=2.0)
        try:
            load.connect()
            frame = encode_frame(Code.READ_INPUT, address=load.address)
            for _ in range(repeats):
                driver, plain, replies = [], [], []
                for _ in range(queries):  # alternating, query by query
                    start = time.perf_counter()
                    load.measure()
                    driver.append(time.perf_counter() - start)
                    start = time.perf_counter()
                    raw.write(frame)
                    replies.append(raw.read(26))
                    plain.append(time.perf_counter() - start)
                assert all(len(r) == 26 and r[2] == Code.READ_INPUT for r in replies), "raw reply is not a 0x5F frame"
                driver_us.append(statistics.median(driver) * 1e6)
                raw_us.append(statistics.median(plain) * 1e6)
        finally:
            raw.close()
            load.close()
    return {"queries": queries, "driver_measure_us": summarise(driver_us), "raw_pyserial_us": summarise(raw_us),
            "ratio": summarise([d / r for d, r in zip(driver_us, raw_us)])}


# --- 8. breach-to-off latency over loopback TCP ----------------------------------------------------


def simulation_state_at(protocol: Path, bench: str, test_time_s: float, runs_dir: Path) -> dict:
    """The simulated hardware's state when a virtual-clock run of `protocol` on `bench` is stopped
    at `test_time_s` (the snapshot its last checkpoint holds; the outputs are off in it)."""
    stop = StopRequest()
    result = execute(prepare(RunRequest(str(protocol), bench=bench, runs_dir=runs_dir, operator="benchmark")),
                     StopAt(stop, test_time_s), stop)
    assert result.outcome.state == "interrupted", result.outcome.reason
    return read_json(result.outcome.folder / CHECKPOINT_FILE)["simulation"]


def breach_to_off_ms(start_s: float, repeats: int) -> dict:
    """Benchmark 8; `start_s`: the test time of the virtual run to start the served one from."""
    ms, ticks_between, trip_after_s = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        protocol = capacity_check_every_tick(Path(folder))
        state = simulation_state_at(protocol, WEAK_BENCH, start_s, Path(folder) / "runs")
        for _ in range(repeats):  # each from the same state, on a fresh server
            over: list[float] = []
            switches: list[tuple[float, float, bool]] = []
            ticks: list[list[float]] = []
            stop = StopRequest()
            with served_bench(WEAK_BENCH, LOOPBACK_TICK_S, state) as (bench_path, _):
                prepared = prepare(RunRequest(str(protocol), bench=str(bench_path), runs_dir=bench_path.parent / "runs",
                                              operator="benchmark"))
                limit = prepared.plan.envelope.max_layer_voltage_V
                with layer_readings_over(limit, over), output_switches(switches), timed_ticks(ticks):
                    result = execute(prepared, StopAt(stop, BREACH_TIMEOUT_S), stop)
            assert result.outcome.state == "tripped" and over, f"no trip: {result.outcome.reason}"
            assert "max_layer_voltage_V" in result.outcome.reason, result.outcome.reason
            first_over = over[0]
            off = next(wall for _, wall, on in switches if not on and wall >= first_over)
            ms.append((off - first_over) * 1e3)
            ticks_between.append(sum(1 for tick in ticks if first_over < tick[0] <= off))
            trip_after_s.append(first_over - ticks[0][0])
    return {"tick_s": LOOPBACK_TICK_S, "started_at_test_time_s": state["time_s"], "limit_V": limit,
            "ms": summarise(ms), "ticks": summarise(ticks_between), "first_over_limit_after_s": summarise(trip_after_s)}


# --- 10. the drivers' own cost ------------------------------------------------------------------


def measurement_calls(opened, config) -> dict[str, Callable[[], object]]:
    """instrument name -> the call a tick makes of it: measure(), scan() or read()."""
    calls = {}
    for name in config.drive_instruments().values():
        calls[name] = opened.drivers[name].measure
    for name in config.meter_names():
        calls[name] = opened.drivers[name].scan
    if config.chamber:
        calls[config.chamber] = opened.drivers[config.chamber].read
    return calls


def driver_over_raw_pyvisa(queries: int, repeats: int) -> dict:
    # The one query each call makes, as the driver sends it (drivers/ea_psb.py, keysight_daq970a.py).
    raw_query = {"supply": "MEAS:ARR?", "daq": "READ?"}
    per_instrument: dict[str, dict[str, list[float]]] = {name: {"driver": [], "raw": []} for name in raw_query}
    with served_bench("sim", LOOPBACK_TICK_S) as (bench_path, _):
        bench = load_bench(str(bench_path))
        name, config = next(iter(bench.config.channels.items()))
        opened = open_bench(bench, set(raw_query), speed=None)
        try:
            configured_channel(opened, config, name)
            calls = measurement_calls(opened, config)
            for _ in range(repeats):
                for instrument, message in raw_query.items():
                    call, session = calls[instrument], opened.drivers[instrument].transport._session
                    driver_s, raw_s = [], []
                    for _ in range(queries):  # alternating, so that drift hits both alike
                        start = time.perf_counter()
                        call()
                        middle = time.perf_counter()
                        session.query(message)
                        driver_s.append(middle - start)
                        raw_s.append(time.perf_counter() - middle)
                    per_instrument[instrument]["driver"].append(statistics.median(driver_s) * 1e6)
                    per_instrument[instrument]["raw"].append(statistics.median(raw_s) * 1e6)
        finally:
            opened.close()
    return {instrument: {"query": raw_query[instrument], "driver_us": summarise(times["driver"]),
                         "raw_us": summarise(times["raw"]),
                         "ratio": summarise([d / r for d, r in zip(times["driver"], times["raw"])])}
            for instrument, times in per_instrument.items()}


def in_process_calls_per_s(queries: int, repeats: int) -> dict:
    rates: dict[str, list[float]] = {}
    for bench_name in sorted(builtin_benches()):
        bench = load_bench(bench_name)
        name, config = next(iter(bench.config.channels.items()))
        instruments = {*config.drive_instruments().values(), *config.meter_names(),
                       *([config.chamber] if config.chamber else [])}
        opened = open_bench(bench, instruments, speed=None)
        try:
            configured_channel(opened, config, name)
            tick_s = config.tick_s
            for instrument, call in measurement_calls(opened, config).items():
                label = f"{bench_name}: {bench.config.instruments[instrument].driver} {call.__name__}()"
                for _ in range(repeats):
                    start_s = opened.clock.now()
                    start = time.perf_counter()
                    for k in range(1, queries + 1):
                        opened.clock.sleep_until(start_s + k * tick_s)
                        call()
                    rates.setdefault(label, []).append(queries / (time.perf_counter() - start))
        finally:
            opened.close()
    return {label: summarise(values) for label, values in rates.items()}


def driver_cost(sizes: Sizes) -> dict:
    return {"over_tcp": driver_over_raw_pyvisa(sizes.driver_queries, sizes.repeats),
            "in_process_calls_per_s": in_process_calls_per_s(sizes.driver_queries, sizes.repeats)}


# --- the table ---------------------------------------------------------------------------------------


def target(op: str, value: float) -> tuple[str, Callable[[float], bool]]:
    check = {"<": operator.lt, "<=": operator.le, ">=": operator.ge, "==": operator.eq}[op]
    return f"{op} {value:,g}", lambda median: check(median, value)


def table_rows(results: dict, sizes: Sizes) -> list[tuple[str, dict, tuple | None]]:
    """(label, figure, target or None): every figure of the run, in the order of the docstring."""
    at_full_size = (lambda t: t) if sizes.full else (lambda t: None)
    ticks, life, memory = results["ticks_per_s"], results["life_test"], results["memory"]
    rows = [("ticks/s, bare measure() (baseline)", ticks["bare_measure"], None),
            ("ticks/s, full runner (capacity check)", ticks["runner"], target(">=", 20_000)),
            ("cost per tick, runner / bare measure", ticks["runner_cost_over_bare_measure"], None),
            ("protocol floor per tick (format+parse) / us", ticks["protocol_floor_us"], None),
            (f"life test {life['cycles']} cycles: s/cycle, ours", life["ours_s_per_cycle"], None),
            ("life test: ticks/s, ours", life["ours_ticks_per_s"], None)]
    if "ours_over_pybamm" in life:
        rows += [("life test: s/cycle, PyBaMM SPM", life["pybamm_s_per_cycle"], None),
                 ("life test: PyBaMM us per output point", life["pybamm_us_per_output_point"], None),
                 ("life test: ours / PyBaMM", life["ours_over_pybamm"], target("<", 1))]
    breach, loopback, writing = results["breach_to_off"], results["loopback"], results["sample_writing"]
    pty, tcp_breach, big = results["bk8500_pty"], results["breach_to_off_tcp"], results["summary"]
    rows += [
        (f"peak RSS growth / MB, {memory['samples']:,} samples", summarise([memory["growth_MB"]]),
         at_full_size(target("<", 50))),
        ("peak RSS / MB incl. the end-of-run summary", summarise([memory["peak_with_end_of_run_summary_MB"]]), None),
        ("breach to output off / ticks (virtual clock)", summarise([breach["ticks"]]), target("==", 0)),
        ("loopback TCP: runner tick / ms", loopback["runner_tick_ms"], None),
        ("loopback TCP: raw pyvisa queries / ms", loopback["raw_queries_ms"], None),
        ("loopback TCP: tick / raw", loopback["ratio"], target("<=", 1.25)),
        ("sample writer: rows/s, RunStore", writing["run_store_rows_per_s"], None),
        ("sample writer: rows/s, csv.writer (baseline)", writing["csv_writer_rows_per_s"], None),
        ("sample writer: time/row, RunStore / csv", writing["time_per_row_run_store_over_csv_writer"], None),
        ("sample writer: bytes/row, RunStore", writing["run_store_bytes_per_row"], None),
        ("sample writer: bytes/row, csv.writer", writing["csv_writer_bytes_per_row"], None),
        ("sample writing / % of runner tick time", writing["share_of_runner_tick_time_percent"], None),
        ("BK 8500 over pty: driver measure() / us", pty["driver_measure_us"], None),
        ("BK 8500 over pty: raw pyserial frame / us", pty["raw_pyserial_us"], None),
        ("BK 8500 over pty: driver / raw", pty["ratio"], None),
        ("breach to off over TCP / ms (wall clock)", tcp_breach["ms"], None),
        ("breach to off over TCP / ticks", tcp_breach["ticks"], target("==", 0)),
        (f"summary of {big['rows']:,} rows: s, ours", big["ours"]["s"], at_full_size(target("<=", summary.TARGET_S))),
        ("summary: s, plain pandas groupby (baseline)", big["baseline"]["s"], None),
        ("summary: ours / plain pandas", big["ours_over_baseline"], None),
        ("summary: peak RSS / MB, ours", big["ours"]["peak_MB"], at_full_size(target("<", summary.TARGET_PEAK_MB))),
    ]
    drivers = results["drivers"]
    for instrument, cost in drivers["over_tcp"].items():
        rows += [(f"TCP {cost['query']} via driver / us", cost["driver_us"], None),
                 (f"TCP {cost['query']} raw pyvisa / us", cost["raw_us"], None),
                 (f"TCP {cost['query']}: driver / raw", cost["ratio"], target("<=", 1.10))]
    rows += [(f"in process, calls/s: {label}", rate, None)
             for label, rate in drivers["in_process_calls_per_s"].items()]
    return rows


def figure(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.2f}" if abs(value) >= 10 else f"{value:.3f}"


def print_table(rows: list[tuple[str, dict, tuple | None]]) -> None:
    print(f"{'benchmark':44s} {'median':>10s} {'min':>10s} {'max':>10s}  {'target':10s}")
    for label, stats, goal in rows:
        judged = "" if goal is None else f"{goal[0]:10s} {'met' if goal[1](stats['median']) else 'MISSED'}"
        print(f"{label:44s} {figure(stats['median']):>10s} {figure(stats['min']):>10s} {figure(stats['max']):>10s}  "
              f"{judged}")


def print_notes(results: dict, sizes: Sizes) -> None:
    life, memory, breach = results["life_test"], results["memory"], results["breach_to_off"]
    tcp_breach, writing, big = results["breach_to_off_tcp"], results["sample_writing"], results["summary"]
    if "ours_over_pybamm" not in life:
        print(f"life test against PyBaMM skipped: {life['pybamm']} (target ours / PyBaMM < 1)")
    else:
        # What beating PyBaMM asks of one tick: its time per cycle spread over the ticks of our cycle.
        ticks_per_cycle = life["ours_ticks_per_s"]["median"] * life["ours_s_per_cycle"]["median"]
        budget_us = life["pybamm_s_per_cycle"]["median"] / ticks_per_cycle * 1e6
        ticks = results["ticks_per_s"]
        print(f"life test: {ticks_per_cycle:,.0f} ticks per cycle; to match PyBaMM a whole tick may cost "
              f"{budget_us:.1f} us, ours costs {1e6 / life['ours_ticks_per_s']['median']:.1f} us, of which the "
              f"instrument I/O alone (bare measure) {1e6 / ticks['bare_measure']['median']:.1f} us")
        # The least any tick through the instruments' protocol costs: its replies as text, and its row.
        floor_us = ticks["protocol_floor_us"]["median"] + 1e6 / writing["run_store_rows_per_s"]["median"]
        print(f"life test: PyBaMM spends {life['pybamm_us_per_output_point']['median']:.1f} us per output point; "
              f"formatting and parsing a tick's two replies ({ticks['protocol_floor_us']['median']:.1f} us) and "
              f"writing its row ({1e6 / writing['run_store_rows_per_s']['median']:.1f} us) take {floor_us:.1f} us "
              "before any physics, safety check or integration")
    print(f"memory: RSS {memory['resident_at_warm_up_MB']:.1f} MB after {memory['warm_up_samples']:,} samples, "
          f"peak {memory['peak_after_warm_up_MB']:.1f} MB after that, {memory['resident_at_last_sample_MB']:.1f} MB "
          f"at the last sample; target growth < 50 MB over 1,000,000 samples")
    print(f"breach (virtual clock): {breach['trip']}, first sample over {breach['limit_V']} V at "
          f"{breach['first_over_limit_s']} s, OUTP OFF at {breach['output_off_s']} s")
    print(f"breach over TCP: served from the state at {tcp_breach['started_at_test_time_s']:g} s, "
          f"{tcp_breach['tick_s'] * 1e3:g} ms ticks; the first layer reading over {tcp_breach['limit_V']} V came "
          f"{tcp_breach['first_over_limit_after_s']['median']:.2f} s after the first tick")
    print(f"sample writer: {writing['rows']:,} rows of {writing['columns']} columns, replaying the "
          f"{writing['rows_recorded_by_the_run']:,} rows a capacity check recorded; of the runner's tick time "
          + ", ".join(f"{name} {share['median']:.2f} %" for name, share in writing["share_by_call_percent"].items()))
    print(f"summary: {big['rows']:,} rows; peak RSS of the baseline {big['baseline']['peak_MB']['max']:.0f} MB"
          + ("" if sizes.full else f"; its targets apply at {summary.TARGET_ROWS:,} rows"))
    for note in big["peers"]:
        print(f"summary: {note}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, in about a minute")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, to check that the harness runs (tests/test_benchmarks_smoke.py); "
                             "its figures mean nothing")
    parser.add_argument("--json", type=Path, default=HERE / "results" / "latest.json")
    parser.add_argument("--memory-child", type=int, metavar="SAMPLES", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child)))
        return 0
    sizes, name = (SMOKE, "smoke") if args.smoke else (QUICK, "quick") if args.quick else (FULL, "full")
    started = time.perf_counter()
    load_before = os.getloadavg()
    results: dict = {"sizes": name, "load_average_before": load_before}
    results["ticks_per_s"] = ticks_per_s(sizes)
    results["life_test"] = life_test(sizes)
    results["memory"] = memory_growth(sizes.memory_samples)
    results["breach_to_off"] = breach_to_off_ticks()
    results["loopback"] = loopback_overhead(sizes.loopback_ticks, sizes.loopback_repeats)
    results["sample_writing"] = sample_writing(sizes)
    results["bk8500_pty"] = bk8500_pty_round_trips(sizes.pty_queries, sizes.repeats)
    results["breach_to_off_tcp"] = breach_to_off_ms(results["breach_to_off"]["first_over_limit_s"] - BREACH_LEAD_S,
                                                    sizes.repeats)
    results["summary"] = summary.compare(sizes.summary_rows, sizes.summary_repeats)
    results["drivers"] = driver_cost(sizes)
    results["wall_s"] = time.perf_counter() - started
    results["load_average_after"] = os.getloadavg()

    print_table(table_rows(results, sizes))
    print_notes(results, sizes)
    print(f"{results['wall_s']:.0f} s on {os.cpu_count()} cores; load average (1, 5, 15 min) before "
          f"{', '.join(f'{x:.2f}' for x in load_before)}, after "
          f"{', '.join(f'{x:.2f}' for x in results['load_average_after'])}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
