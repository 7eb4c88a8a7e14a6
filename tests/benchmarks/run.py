"""Benchmarks: `python tests/benchmarks/run.py [--quick]` prints a table and writes JSON.

Every figure is a median over repeats with its spread, and every speed figure is measured side
by side with its baseline in the same process run (these machines are shared and noisy).

1. ticks/s: the default simulated 23-layer bench, in process, through the real drivers:
   - baseline: a bare loop of the channel's measure() on the virtual clock (drivers + simulators);
   - the runner: a full capacity check (measure, integrate, safety, ends, control, record,
     checkpoint, events) with no display.
   The ratio is the runner's cost per tick over the bare measurement's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from stackcycler.bench import load_bench
from stackcycler.channel import Channel
from stackcycler.live import SilentReporter
from stackcycler.safety import SafetyEnvelope
from stackcycler.session import RunRequest, execute, open_bench, prepare


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


def summarise(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "latest.json")
    args = parser.parse_args()
    repeats = 3 if args.quick else 5
    overrides = {"charge_rate_C": 1.0, "discharge_rate_C": 1.0, "rest_s": 60.0} if args.quick else {}

    bare, runner, ticks = [], [], 0
    for _ in range(repeats):  # interleaved, so drift on a shared machine hits both alike
        rate, ticks = runner_ticks_per_s(overrides)
        runner.append(rate)
        bare.append(bare_measure_ticks_per_s(ticks))
    ratios = [b / r for b, r in zip(bare, runner)]
    results = {
        "ticks_per_s": {"bare_measure": summarise(bare), "runner": summarise(runner),
                        "runner_cost_over_bare_measure": summarise(ratios), "ticks_per_run": ticks},
    }
    print(f"{'benchmark':44s} {'median':>12s} {'min':>12s} {'max':>12s}")
    for label, stats in (("ticks/s, bare measure() (baseline)", results["ticks_per_s"]["bare_measure"]),
                         ("ticks/s, full runner (capacity check)", results["ticks_per_s"]["runner"]),
                         ("cost per tick, runner / bare measure", results["ticks_per_s"]["runner_cost_over_bare_measure"])):
        print(f"{label:44s} {stats['median']:12.2f} {stats['min']:12.2f} {stats['max']:12.2f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
