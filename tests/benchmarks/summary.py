"""Per-cycle summary of a big file: `python tests/benchmarks/summary.py [--rows N] [--quick]`.

Issue 6's target: a 10,000,000-row file summarised per cycle in at most 2 s, under 2 GB.

The file is a synthetic Battery Data Format Parquet file written once into a temporary folder:
1000 cycles of CC charge, CV taper, rest, CC discharge, rest (time, voltage, current, cycle,
step count, step type, a temperature and a pressure), without the cumulative charge columns, so
that the charge is integrated from the rows (the harder path: another cycler's file).

Measured side by side, each in a fresh process (so that one's memory does not set the other's
peak), interleaved over repeats:
- ours: `dataset.load` + `analysis.summarise` (every column of docs/results.md);
- baseline: plain pandas, reading the same columns and doing a groupby per cycle of rectangle-
  rule charge and discharge (no zero-crossing split, no energies' sign split, no CV phase, no
  retention): what a quick notebook would do;
- cellpy and BEEP on the same file where they are importable (skipped, and said so, if not).
Wall time is from the process's start of work (after imports) to the table in memory; memory is
the child's peak RSS (VmHWM: a child's ru_maxrss would include this parent's peak). The ratio
ours / baseline is taken per repeat, each pair run back to back.
`run.py` runs this as one of its benchmarks (`compare`); this file also runs on its own.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench_common import resident_MB, summarise

HERE = Path(__file__).resolve().parent
QUICK_ROWS = 1_000_000
TARGET_ROWS = 10_000_000  # issue 6: a file this long summarised in at most TARGET_S, under TARGET_PEAK_MB
TARGET_S = 2.0
TARGET_PEAK_MB = 2048
COLUMNS = ["Test Time / s", "Voltage / V", "Current / A", "Cycle Count / 1", "Step Count / 1", "Step Type",
           "Temperature T1 / degC", "Pressure / MPa"]


def write_file(path: Path, rows: int, cycles: int = 1000) -> None:
    """`rows` rows of `cycles` identical cycles, one row a second (a 2 Ah, 23-layer stack at C/2)."""
    per_cycle = rows // cycles
    phase = np.arange(per_cycle)
    # five steps per cycle: CC charge 40 %, CV 10 %, rest 10 %, CC discharge 30 %, rest 10 %
    bounds = (np.array([0.0, 0.4, 0.5, 0.6, 0.9, 1.0]) * per_cycle).astype(int)
    step_of_row = np.searchsorted(bounds, phase, side="right") - 1
    current = np.choose(step_of_row, [1.0, 1.0, 0.0, -1.0, 0.0])
    cv = step_of_row == 1
    current = np.where(cv, np.exp(-(phase - bounds[1]) / (0.03 * per_cycle)), current)
    voltage = 80.0 + 17.0 * np.interp(phase, bounds, [0, 0.9, 1.0, 0.97, 0.05, 0.0])
    types = np.array(["CC_CHG", "CCCV_CHG", "REST", "CC_DCH", "REST"])[step_of_row]
    types = np.where(step_of_row <= 1, "CCCV_CHG", types)  # CC and CV are one CC-CV step
    step_in_cycle = np.where(step_of_row <= 1, 0, step_of_row - 1)
    rng = np.random.default_rng(1)
    n = per_cycle * cycles
    frame = pd.DataFrame({
        "Test Time / s": np.arange(n, dtype=float),
        "Voltage / V": np.tile(voltage, cycles) + rng.normal(0, 0.002, n),
        "Current / A": np.tile(current, cycles) + rng.normal(0, 0.0005, n),
        "Cycle Count / 1": np.repeat(np.arange(1, cycles + 1), per_cycle),
        "Step Count / 1": np.repeat(np.arange(cycles) * 4, per_cycle) + np.tile(step_in_cycle, cycles) + 1,
        "Step Type": pd.Categorical(np.tile(types, cycles)),
        "Temperature T1 / degC": 25.0 + rng.normal(0, 0.05, n),
        "Pressure / MPa": 5.0 + 1.5 * np.tile(voltage - 80.0, cycles) / 17.0,
    })
    frame.to_parquet(path, index=False)


def ours(path: Path) -> int:
    from stackcycler.analysis import summarise as summarise_cycles  # already imported: see child
    from stackcycler.dataset import load

    return len(summarise_cycles(load(path)))


def baseline(path: Path) -> int:
    frame = pd.read_parquet(path, columns=COLUMNS)
    ah = frame["Current / A"] * frame["Test Time / s"].diff().fillna(0.0) / 3600.0
    wh = ah * frame["Voltage / V"]
    table = frame.assign(chg=ah.clip(lower=0), dis=(-ah).clip(lower=0), chg_wh=wh.clip(lower=0),
                         dis_wh=(-wh).clip(lower=0)).groupby("Cycle Count / 1").agg(
        chg=("chg", "sum"), dis=("dis", "sum"), chg_wh=("chg_wh", "sum"), dis_wh=("dis_wh", "sum"),
        t_max=("Temperature T1 / degC", "max"), p_max=("Pressure / MPa", "max"))
    table["ce"] = table["dis"] / table["chg"]
    return len(table)


CONTENDERS = {"ours": ours, "baseline": baseline}
IMPORTS = {"ours": ("stackcycler.analysis", "stackcycler.dataset")}  # what a contender imports besides pandas


def child(name: str, path: Path) -> None:
    for module in IMPORTS.get(name, ()):  # before the clock starts, as the baseline's pandas is
        importlib.import_module(module)
    start = time.perf_counter()
    cycles = CONTENDERS[name](path)
    elapsed = time.perf_counter() - start
    print(json.dumps({"s": elapsed, "peak_MB": resident_MB()[1], "cycles": cycles}))


def measure(name: str, path: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", name, str(path)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def optional_peers() -> list[str]:
    notes = []
    for module in ("cellpy", "beep"):
        try:
            __import__(module)
            notes.append(f"{module}: importable, but it reads vendor raw files, not BDF Parquet; not run")
        except ImportError:
            notes.append(f"{module}: not installed here, skipped")
    return notes


def compare(rows: int, repeats: int) -> dict:
    """Write the file, then run ours and the baseline on it `repeats` times each, interleaved (drift
    on a shared machine hits both alike)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "big.bdf.parquet"
        start = time.perf_counter()
        write_file(path, rows)
        written = {"file_MB": path.stat().st_size / 1e6, "write_s": time.perf_counter() - start}
        runs: dict[str, list[dict]] = {name: [] for name in CONTENDERS}
        for _ in range(repeats):
            for name in CONTENDERS:
                runs[name].append(measure(name, path))
    results = {"rows": rows, "repeats": repeats, **written, "peers": optional_peers()}
    for name, measured in runs.items():
        results[name] = {"s": summarise([m["s"] for m in measured]),
                         "peak_MB": summarise([m["peak_MB"] for m in measured]), "cycles": measured[0]["cycles"]}
    results["ours_over_baseline"] = summarise([a["s"] / b["s"] for a, b in zip(runs["ours"], runs["baseline"])])
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=TARGET_ROWS)
    parser.add_argument("--quick", action="store_true", help="1,000,000 rows, 2 repeats")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=HERE / "results" / "summary.json")
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]))
        return 0
    rows, repeats = (QUICK_ROWS, 2) if args.quick else (args.rows, args.repeats)
    results = compare(rows, repeats)
    print(f"wrote {rows:,} rows ({results['file_MB']:.0f} MB Parquet) in {results['write_s']:.1f} s")
    print(f"{'per-cycle summary of ' + format(rows, ',') + ' rows':44s} {'median s':>9s} {'min':>7s} {'max':>7s} "
          f"{'peak MB':>8s}")
    for name in CONTENDERS:
        s = results[name]["s"]
        print(f"{name:44s} {s['median']:9.2f} {s['min']:7.2f} {s['max']:7.2f} {results[name]['peak_MB']['max']:8.0f}")
    ratio = results["ours_over_baseline"]
    print(f"ours / plain pandas groupby: {ratio['median']:.2f} (min {ratio['min']:.2f}, max {ratio['max']:.2f}; "
          "ours computes every column of docs/results.md, the baseline six)")
    print(f"targets: ours <= {TARGET_S:g} s and < {TARGET_PEAK_MB:,} MB at {TARGET_ROWS:,} rows")
    for note in results["peers"]:
        print(note)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
