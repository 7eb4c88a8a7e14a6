"""A whole lab on one computer (`cycler lab demo`): a real PostgreSQL from the `pgserver` wheel,
three bench hosts (each a folder with its lab.toml and a queue worker process for its simulated
bench), one queue across them, the catalog while they run, and one SQL statement over what they
published. Everything stays in the demo folder; the database server is stopped at the end.
"""

from __future__ import annotations

import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

from .errors import ExitCode, InvalidInput, most_serious
from .catalog import lab_status_lines
from .lab import init, view
from .labconfig import LAB_FILE, load_lab_config
from .labquery import query
from .queue import TestQueue

# one simulated bench per host, the quickest ones (a single cell or a small stack)
DEMO_BENCHES = ("sim-keithley2450", "sim-e36312a-dl3021", "sim-e36312a-bk8500")
DEMO_PARAMETERS = {"charge_rate_C": 1.0, "discharge_rate_C": 1.0, "rest_s": 60.0}  # a capacity check, shortened
DEMO_QUERY = ("SELECT runs.host, runs.bench, runs.run, cycles.cycle, round(cycles.discharge_capacity_Ah, 4) AS "
              "discharge_Ah, round(cycles.coulombic_efficiency, 4) AS coulombic_efficiency FROM cycles "
              "JOIN runs USING (host, run) ORDER BY runs.host, runs.run, cycles.cycle")


def start_local_postgres(data_folder: Path):
    """A PostgreSQL server of the `pgserver` wheel on `data_folder` (stopped when this process ends)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs' note about XDG_RUNTIME_DIR
            import pgserver
    except ImportError:
        raise InvalidInput("the one-computer lab needs pgserver (PostgreSQL in a wheel): "
                           "pip install 'stackcycler[lab]'") from None
    data_folder.parent.mkdir(parents=True, exist_ok=True)
    return pgserver.get_server(data_folder, cleanup_mode="stop")


def write_host(folder: Path, host: str, database: str, results: Path | None, heartbeat_s: float = 1.0,
               lease_s: float = 10.0, publish_every_s: float = 0.0) -> Path:
    """A bench host's folder with its lab.toml beside its (empty) runs folder; the runs folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LAB_FILE).write_text(
        f'database = "{database}"\nhost = "{host}"\n' + (f'results = "{results}"\n' if results else "")
        + f"heartbeat_s = {heartbeat_s}\nlease_s = {lease_s}\npublish_every_s = {publish_every_s}\n",
        encoding="utf-8")
    return folder / "runs"


def demo(folder: Path, items_per_host: int = 2, log: Callable[[str], None] = print) -> int:
    """Run the demo lab in `folder`; the most serious exit code of its workers."""
    folder = Path(folder).resolve()
    if folder.exists() and any(folder.iterdir()):
        raise InvalidInput(f"{folder}: not empty; the demo starts a lab from nothing (give an empty or new folder "
                           "with --folder)")
    log(f"lab demo in {folder}")
    server = start_local_postgres(folder / "postgres")
    database = server.get_uri()
    results = folder / "results"
    log(f"1. PostgreSQL 16 (pgserver) at {database}")
    runs_dirs = {f"bench-{n}": write_host(folder / f"bench-{n}", f"bench-{n}", database, results)
                 for n in range(1, len(DEMO_BENCHES) + 1)}
    log("2. " + init(load_lab_config(next(iter(runs_dirs.values())))))
    queue = TestQueue(runs_dirs["bench-1"])
    for _ in range(items_per_host):
        for bench in DEMO_BENCHES:
            queue.add("capacity-check", bench, overrides=DEMO_PARAMETERS)
    log(f"3. queued {items_per_host * len(DEMO_BENCHES)} capacity checks on {', '.join(DEMO_BENCHES)}")
    workers = {}
    for (host, runs_dir), bench in zip(runs_dirs.items(), DEMO_BENCHES):
        with open(runs_dir.parent / "worker.log", "w", encoding="utf-8") as output:
            workers[host] = subprocess.Popen(
                [sys.executable, "-m", "stackcycler", "queue", "run", "--bench", bench, "--until-empty",
                 "--speed", "max", "--runs-dir", str(runs_dir)], stdin=subprocess.DEVNULL, stdout=output,
                stderr=subprocess.STDOUT)
        log(f"   host {host}: `cycler queue run --bench {bench} --until-empty` (log: {runs_dir.parent / 'worker.log'})")
    config = load_lab_config(runs_dirs["bench-1"])
    while any(worker.poll() is None for worker in workers.values()):
        time.sleep(2.0)
        done = sum(item.state == "completed" for item in queue.history())
        log(f"   {done} of {items_per_host * len(DEMO_BENCHES)} items completed")
    log("4. the catalog (`cycler status --lab`):")
    for line in lab_status_lines(view(config)):
        log("   " + line)
    log(f"5. one statement over everything published in {results} (`cycler lab query`):")
    for line in query(results, DEMO_QUERY).to_string(index=False).splitlines():
        log("   " + line)
    log(f"the published data stays in {results}: cycler lab query --results {results} \"SELECT ...\"")
    known = {int(code) for code in ExitCode}
    return int(most_serious(worker.returncode if worker.returncode in known else ExitCode.SOFTWARE_ERROR
                            for worker in workers.values()))
