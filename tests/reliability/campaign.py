"""The reliability campaign: crash, instrument faults, bad input, load and a full disk (scenarios.py).

    python tests/reliability/campaign.py            # the short form (about a minute; also run in CI)
    python tests/reliability/campaign.py --long     # 30 kills, 10 faults of each kind, a simulated week
    python tests/reliability/campaign.py --only crash,disk --seed 7

Prints a table (scenario, trials, passed, rows of data lost) and the fault kinds injected and
survived, and writes the whole result as JSON to tests/reliability/results/. Exit code 0 when
every trial passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # scenarios.py, and the tests' support.py

import scenarios  # noqa: E402

RESULTS = HERE / "results"


def table(results: list[scenarios.ScenarioResult]) -> list[str]:
    lines = [f"{'scenario':<10} {'trials':>7} {'passed':>7} {'data lost (rows)':>17} {'wall (s)':>9}"]
    lines += [f"{r.scenario:<10} {r.trials:>7} {r.passed:>7} {r.rows_lost:>17} {r.details.get('wall_s', 0):>9.1f}"
              for r in results]
    faults = next((r for r in results if r.scenario == "faults"), None)
    if faults is not None:
        lines += ["", f"{'fault kind':<18} {'injected':>9} {'survived':>9} {'recovered':>10} {'ended safely':>13}"]
        lines += [f"{kind:<18} {n['injected']:>9} {n['survived']:>9} {n['recovered']:>10} {n['ended safely']:>13}"
                  for kind, n in faults.details["per_kind"].items()]
    for result in results:
        lines += [f"FAILED {result.scenario}: {failure}" for failure in result.failures]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--long", action="store_true", help="the long form (an hour or more)")
    parser.add_argument("--only", default=",".join(scenarios.SCENARIOS),
                        help=f"scenarios, comma-separated (default: all of {', '.join(scenarios.SCENARIOS)})")
    parser.add_argument("--seed", type=int, default=1, help="of the random moments and inputs")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in scenarios.SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}; scenarios: {', '.join(scenarios.SCENARIOS)}")
    form = "long" if args.long else "short"
    sizes = scenarios.LONG if args.long else scenarios.SHORT
    started = datetime.now(timezone.utc)
    results = []
    with tempfile.TemporaryDirectory(prefix="reliability-") as work:
        for name in chosen:
            workdir = Path(work) / name
            workdir.mkdir()
            began = time.monotonic()
            result = scenarios.SCENARIOS[name](workdir, random.Random(f"{args.seed}:{name}"), **sizes[name])
            result.details["wall_s"] = round(time.monotonic() - began, 1)
            results.append(result)
            print(f"{name}: {result.passed}/{result.trials} passed", flush=True)
    print()
    print("\n".join(table(results)))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"campaign-{form}-{started.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"form": form, "seed": args.seed, "started": started.isoformat(timespec="seconds"),
                                "python": platform.python_version(), "platform": platform.platform(),
                                "sizes": {name: sizes[name] for name in chosen},
                                "scenarios": [asdict(result) for result in results]}, indent=1, default=str) + "\n")
    print(f"\nwritten {path}")
    return 0 if all(result.ok for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
