"""Benchmarks: `python tests/benchmarks/run.py [--quick]` prints a table and writes JSON.

Every figure is a median over repeats with its spread, and every speed figure is measured side
by side with its baseline in the same process run (these machines are shared and noisy).

1. ticks/s: the default simulated 23-layer bench, in process, through the real drivers:
   - baseline: a bare loop of the channel's measure() on the virtual clock (drivers + simulators);
   - the runner: a full capacity check (measure, integrate, safety, ends, control, record,
     checkpoint, events) with no display.
   The ratio is the runner's cost per tick over the bare measurement's.
2. life test against PyBaMM: wall time per cycle of a 1C CC-CV life test recorded every second
   (life-test-1c.yaml) on the default simulated bench, and of PyBaMM's SPM solving the same
   experiment (Chen2020 parameters, output every second), interleaved; the ratio is ours over
   PyBaMM's. Skipped, and said so, when PyBaMM is not importable.
3. memory: peak RSS growth over a long run recorded every tick (the life test at full speed),
   from after a warm-up to the last sample, measured in a fresh process so that nothing run
   before it sets the peak. The peak after the end-of-run summary (which reads samples.csv back)
   is shown apart.
4. breach-to-off latency: capacity-check on the sim-weak-layer bench, recorded every tick,
   trips on layer 7's over-voltage; the ticks from the first recorded sample over the limit to
   the moment OUTP OFF reaches the simulated supply (on the virtual clock).
5. runner overhead over loopback TCP: the default bench's simulators served by `cycler sim
   serve` on 127.0.0.1 and driven through pyvisa-py in real time; the runner's time inside a
   tick (median, 50 ms ticks) against the median time of the raw pyvisa queries a tick needs
   (MEAS:ARR? to the supply, READ? to the DAQ) on the same server, paced every 50 ms as well,
   interleaved.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Iterator

import pandas as pd
import yaml

from stackcycler.bench import load_bench
from stackcycler.channel import Channel
from stackcycler.cli import served_bench_text
from stackcycler.clock import WallClock
from stackcycler.drivers.sim.serve import SimulationServer
from stackcycler.drivers.sim.simulation import build_simulation
from stackcycler.runner import Runner
from stackcycler.drivers.sim.ea_psb import SimEaPsb
from stackcycler.live import SilentReporter
from stackcycler.safety import SafetyEnvelope
from stackcycler.session import RunRequest, execute, open_bench, prepare
from stackcycler.store import EVENTS_FILE, SAMPLES_FILE

HERE = Path(__file__).parent
LIFE_TEST = HERE / "life-test-1c.yaml"
# The PyBaMM side of the life test: the same steps, at the limits of the Chen2020 cell (its
# upper cut-off is 4.2 V; our simulated layers charge to 4.25 V and discharge to 3.0 V).
PYBAMM_CYCLE = ("Charge at 1C until 4.2 V", "Hold at 4.2 V until C/20", "Rest for 10 minutes",
                "Discharge at 1C until 3.0 V", "Rest for 10 minutes")
PYBAMM_PARAMETERS = "Chen2020"


def summarise(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


# --- 1. ticks per second -------------------------------------------------------------------------


def bare_measure_ticks_per_s(ticks: int) -> float:
    bench = load_bench("sim")
    config = bench.config.channels["stack1"]
    opened = open_bench(bench, {config.supply, *config.meter_names()}, speed=None)
    try:
        channel = Channel("stack1", config, opened.drivers[config.supply],
                          {name: opened.drivers[name] for name in config.meter_names()}, opened.clock)
        channel.configure(SafetyEnvelope.tightest(config.dut.safety))
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
        assert result.outcome.state == "completed", result.outcome.reason
        ticks = int(result.simulation.world.clock.now() / prepared.channel.tick_s) + 1
        return ticks / elapsed, ticks


# --- 2. the life test, ours and PyBaMM's ------------------------------------------------------------


def our_life_test_s_per_cycle(cycles: int) -> tuple[float, float]:
    """(wall seconds per cycle, ticks per second) of the life test, end-of-run summary included."""
    with tempfile.TemporaryDirectory() as runs:
        prepared = prepare(RunRequest(str(LIFE_TEST), runs_dir=Path(runs), operator="benchmark",
                                      overrides={"cycles": cycles}))
        start = time.perf_counter()
        result = execute(prepared, SilentReporter())
        elapsed = time.perf_counter() - start
        assert result.outcome.state == "completed", result.outcome.reason
        ticks = int(result.simulation.world.clock.now() / prepared.channel.tick_s) + 1
        return elapsed / cycles, ticks / elapsed


def pybamm_life_test_s_per_cycle(pybamm, cycles: int) -> float:
    """Wall seconds per cycle of PyBaMM's SPM on the same experiment, model set-up included."""
    start = time.perf_counter()
    experiment = pybamm.Experiment([PYBAMM_CYCLE] * cycles, period="1 second")
    simulation = pybamm.Simulation(pybamm.lithium_ion.SPM(), experiment=experiment,
                                   parameter_values=pybamm.ParameterValues(PYBAMM_PARAMETERS))
    solution = simulation.solve(initial_soc=0.0)  # from empty, as our simulated stack starts
    elapsed = time.perf_counter() - start
    assert len(solution.cycles) == cycles, f"PyBaMM stopped after {len(solution.cycles)} of {cycles} cycles"
    return elapsed / cycles


def import_pybamm():
    try:
        import pybamm
    except ImportError as error:
        return None, f"PyBaMM is not importable ({error})"
    return pybamm, f"PyBaMM {pybamm.__version__}, SPM, {PYBAMM_PARAMETERS}"


# --- 3. memory over a long run ----------------------------------------------------------------------


def resident_MB() -> tuple[float, float]:
    """(resident set now, its peak) of this process in MB. From /proc/self/status on Linux, not
    from getrusage: a process started by fork and exec reports its parent's peak in ru_maxrss."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return peak, peak
    kB = {name: int(value.split()[0]) for name, _, value in (line.partition(":") for line in status.splitlines())
          if name in ("VmRSS", "VmHWM")}
    return kB["VmRSS"] / 1024, kB["VmHWM"] / 1024


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
    """Run in a fresh process (see main): the life test, recorded every tick, cut at `samples`."""
    from stackcycler.runner import StopRequest

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


# --- 4. breach-to-off latency ---------------------------------------------------------------------


@contextmanager
def output_switches(log: list[tuple[float, bool]]) -> Iterator[None]:
    """Note (virtual time, on) of every OUTP command the simulated supply executes."""
    original = SimEaPsb._output

    def noted(self, args):
        original(self, args)
        log.append((self.world.clock.now(), self.output_on))

    SimEaPsb._output = noted
    try:
        yield
    finally:
        SimEaPsb._output = original


def breach_to_off_ticks() -> dict:
    with tempfile.TemporaryDirectory() as folder:
        # capacity-check as in the library, recorded every tick so that the first sample over the
        # limit is in samples.csv whichever it is
        protocol = yaml.safe_load((resources.files("stackcycler.protocols") / "capacity-check.yaml").read_text())
        protocol["record"] = {"time_s": 1}
        path = Path(folder) / "capacity-check-every-tick.yaml"
        path.write_text(yaml.safe_dump(protocol, sort_keys=False))
        prepared = prepare(RunRequest(str(path), bench="sim-weak-layer", runs_dir=Path(folder) / "runs",
                                      operator="benchmark"))
        limit = prepared.plan.envelope.max_layer_voltage_V
        switches: list[tuple[float, bool]] = []
        with output_switches(switches):
            result = execute(prepared, SilentReporter())
        samples = pd.read_csv(result.outcome.folder / SAMPLES_FILE)
        events = [json.loads(line) for line in (result.outcome.folder / EVENTS_FILE).read_text().splitlines()]
    layers = samples.filter(like="Layer ")
    over = samples[(layers > limit).any(axis=1)]
    trip = next((e for e in events if e["event"] == "safety_trip"), None)
    assert trip is not None and not over.empty, f"no layer over-voltage trip: {result.outcome.reason}"
    first_over_s = float(over["Test Time / s"].iloc[0])
    off_s = next(t for t, on in switches if not on and t >= first_over_s)
    return {"ticks": round((off_s - first_over_s) / prepared.channel.tick_s), "first_over_limit_s": first_over_s,
            "output_off_s": off_s, "trip": f"{trip['limit']} at {trip['where']}", "limit_V": limit,
            "trip_event_s": trip["test_time_s"]}


# --- runner overhead over loopback TCP ------------------------------------------------------------


@contextmanager
def timed_ticks(durations: list[float]) -> Iterator[None]:
    """Note the wall time the runner spends inside each tick."""
    original = Runner._tick

    def timed(self):
        start = time.perf_counter()
        try:
            return original(self)
        finally:
            durations.append(time.perf_counter() - start)

    Runner._tick = timed
    try:
        yield
    finally:
        Runner._tick = original


def loopback_overhead(ticks: int, repeats: int) -> dict:
    import pyvisa

    bench = load_bench("sim")
    runner_ms, raw_ms = [], []
    with tempfile.TemporaryDirectory() as folder, \
            SimulationServer(build_simulation(bench.config.simulation, WallClock())) as server:
        os.environ["CYCLER_LOCK_DIR"] = str(Path(folder) / "locks")
        data = yaml.safe_load(served_bench_text(bench, server.resources()))
        data["channels"]["stack1"]["tick_s"] = 0.05
        served = Path(folder) / "served.yaml"
        served.write_text(yaml.safe_dump(data))
        protocol = Path(folder) / "cc.yaml"
        protocol.write_text(f"name: cc\nrecord: {{time_s: 1}}\nsteps:\n  - {{step: cc, current_A: 0.5, "
                            f"until: [{{step_time_s: {ticks * 0.05}}}]}}\n")
        manager = pyvisa.ResourceManager("@py")
        for _ in range(repeats):  # interleaved
            durations: list[float] = []
            with timed_ticks(durations):
                result = execute(prepare(RunRequest(str(protocol), bench=str(served), runs_dir=Path(folder) / "runs",
                                                    operator="benchmark")), SilentReporter())
            assert result.outcome.state == "completed", result.outcome.reason
            runner_ms.append(statistics.median(durations) * 1e3)
            supply, daq = (manager.open_resource(server.resources()[name], read_termination="\n",
                                                 write_termination="\n") for name in ("supply", "daq"))
            raw = []
            for _ in range(ticks):  # the DAQ keeps the scan the run configured
                time.sleep(0.05)  # paced as the runner's ticks: an idle link wakes up slower than a busy one
                start = time.perf_counter()
                supply.query("MEAS:ARR?")
                daq.query("READ?")
                raw.append(time.perf_counter() - start)
            supply.close()
            daq.close()
            raw_ms.append(statistics.median(raw) * 1e3)
    return {"ticks": ticks, "runner_tick_ms": summarise(runner_ms), "raw_queries_ms": summarise(raw_ms),
            "ratio": summarise([a / b for a, b in zip(runner_ms, raw_ms)])}


# --- the table ---------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--json", type=Path, default=HERE / "results" / "latest.json")
    parser.add_argument("--memory-child", type=int, metavar="SAMPLES", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child)))
        return 0
    repeats = 3 if args.quick else 5
    overrides = {"charge_rate_C": 1.0, "discharge_rate_C": 1.0, "rest_s": 60.0} if args.quick else {}
    life_cycles, life_repeats = (5, 2) if args.quick else (100, 3)
    memory_samples = 100_000 if args.quick else 1_000_000

    bare, runner, ticks = [], [], 0
    for _ in range(repeats):  # interleaved, so drift on a shared machine hits both alike
        rate, ticks = runner_ticks_per_s(overrides)
        runner.append(rate)
        bare.append(bare_measure_ticks_per_s(ticks))
    ratios = [b / r for b, r in zip(bare, runner)]
    results: dict = {
        "ticks_per_s": {"bare_measure": summarise(bare), "runner": summarise(runner),
                        "runner_cost_over_bare_measure": summarise(ratios), "ticks_per_run": ticks},
    }

    pybamm, pybamm_note = import_pybamm()
    ours, ours_rate, theirs = [], [], []
    for _ in range(life_repeats):  # interleaved, as above
        s_per_cycle, rate = our_life_test_s_per_cycle(life_cycles)
        ours.append(s_per_cycle)
        ours_rate.append(rate)
        if pybamm is not None:
            theirs.append(pybamm_life_test_s_per_cycle(pybamm, life_cycles))
    results["life_test"] = {"cycles": life_cycles, "ours_s_per_cycle": summarise(ours),
                            "ours_ticks_per_s": summarise(ours_rate), "pybamm": pybamm_note}
    if theirs:
        results["life_test"] |= {"pybamm_s_per_cycle": summarise(theirs),
                                 "ours_over_pybamm": summarise([a / b for a, b in zip(ours, theirs)])}

    results["memory"] = memory_growth(memory_samples)
    results["breach_to_off"] = breach_to_off_ticks()
    results["loopback"] = loopback_overhead(200 if args.quick else 1000, 2 if args.quick else 3)

    rows = [("ticks/s, bare measure() (baseline)", results["ticks_per_s"]["bare_measure"]),
            ("ticks/s, full runner (capacity check)", results["ticks_per_s"]["runner"]),
            ("cost per tick, runner / bare measure", results["ticks_per_s"]["runner_cost_over_bare_measure"]),
            (f"life test {life_cycles} cycles: s/cycle, ours", results["life_test"]["ours_s_per_cycle"]),
            ("life test: ticks/s, ours", results["life_test"]["ours_ticks_per_s"])]
    if theirs:
        rows += [("life test: s/cycle, PyBaMM SPM", results["life_test"]["pybamm_s_per_cycle"]),
                 ("life test: ours / PyBaMM (target < 1)", results["life_test"]["ours_over_pybamm"])]
    memory, breach = results["memory"], results["breach_to_off"]
    rows += [(f"peak RSS growth / MB, {memory['samples']:,} samples", summarise([memory["growth_MB"]])),
             ("peak RSS / MB incl. the end-of-run summary", summarise([memory["peak_with_end_of_run_summary_MB"]])),
             ("breach to output off / ticks (target 0)", summarise([breach["ticks"]])),
             ("loopback TCP: runner tick / ms", results["loopback"]["runner_tick_ms"]),
             ("loopback TCP: raw pyvisa queries / ms", results["loopback"]["raw_queries_ms"]),
             ("loopback TCP: tick / raw (target <= 1.25)", results["loopback"]["ratio"])]
    print(f"{'benchmark':44s} {'median':>12s} {'min':>12s} {'max':>12s}")
    for label, stats in rows:
        print(f"{label:44s} {stats['median']:12.2f} {stats['min']:12.2f} {stats['max']:12.2f}")
    if not theirs:
        print(f"life test against PyBaMM skipped: {pybamm_note}")
    print(f"memory: RSS {memory['resident_at_warm_up_MB']:.1f} MB after {memory['warm_up_samples']:,} samples, "
          f"peak {memory['peak_after_warm_up_MB']:.1f} MB after that, {memory['resident_at_last_sample_MB']:.1f} MB "
          f"at the last sample; target growth < 50 MB")
    print(f"breach: {breach['trip']}, first sample over {breach['limit_V']} V at {breach['first_over_limit_s']} s, "
          f"OUTP OFF at {breach['output_off_s']} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
