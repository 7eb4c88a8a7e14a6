"""The documented recipes for unattended operation (docs/overnight/), run as they are written:
the systemd unit's command and stop signal, and the nightly cron regression script."""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from support import wait_for

from stackcycler.errors import ExitCode
from stackcycler.queue import TestQueue

RECIPES = Path(__file__).resolve().parents[1] / "docs" / "overnight"
ANSI = re.compile(r"\x1b\[")


def cycler_command() -> list[str]:
    """The installed `cycler` script beside this Python, else the module."""
    script = Path(sys.executable).with_name("cycler")
    return [str(script)] if script.exists() else [sys.executable, "-m", "stackcycler"]


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read(RECIPES / "cycler-queue.service")
    return parser


def start_service(tmp_path: Path) -> subprocess.Popen:
    """ExecStart as systemd runs it: in WorkingDirectory, with the unit's Environment, no
    terminal; only the installation prefix (/srv/cycler) is this test's."""
    service = unit()["Service"]
    prefix = Path(service["WorkingDirectory"])
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == str(prefix / ".venv/bin/cycler")
    key, _, value = service["Environment"].partition("=")
    environment = {**os.environ, key: value.replace(str(prefix), str(tmp_path))}
    return subprocess.Popen([*cycler_command(), *argv[1:]], cwd=tmp_path, env=environment, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_the_unit_stops_with_sigterm_and_counts_the_workers_exit_code_as_clean():
    service = unit()["Service"]
    assert service["KillSignal"] == "SIGTERM"
    assert str(int(ExitCode.INTERRUPTED)) in service["SuccessExitStatus"].split()
    assert service["Restart"] == "on-failure"


def test_the_service_runs_the_queue_and_a_systemd_stop_leaves_the_item_safe_and_resumable(tmp_path):
    runs = tmp_path / "runs"
    queue = TestQueue(runs)
    item = queue.add("capacity-check", "sim")  # C/3: long enough to be stopped in the middle
    worker = start_service(tmp_path)
    try:
        def logging():
            folder = queue.get(item.id).run_folder
            return folder and (Path(folder) / "samples.csv").exists() and \
                len((Path(folder) / "samples.csv").read_text().splitlines()) > 3
        wait_for(logging, "the service's worker running the item")
        worker.send_signal(signal.SIGTERM)  # systemctl stop
        output, _ = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == ExitCode.INTERRUPTED  # in SuccessExitStatus: a clean stop
    stopped = queue.get(item.id)
    assert stopped.state == "interrupted"
    events = [json.loads(line) for line in (Path(stopped.run_folder) / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events][-3:] == ["interrupted", "safe_state", "run_end"]
    assert "confirmed" in events[-2]["outputs"]
    assert (runs / "queue-worker.log").exists()
    assert not ANSI.search(output)  # no terminal: no colour codes or progress bars in the journal


@pytest.mark.parametrize("expected, exit_code", [("2.04±1%", 0), ("2.30±1%", 1)])
def test_the_nightly_script_passes_on_the_expected_capacity_and_fails_loudly_on_a_drift(tmp_path, expected, exit_code):
    environment = {**os.environ, "CYCLER": shlex.join(cycler_command()), "CYCLER_RUNS_DIR": str(tmp_path / "runs"),
                   "CAPACITY_EXPECTED": expected}
    done = subprocess.run(["sh", str(RECIPES / "nightly-regression.sh")], cwd=tmp_path, env=environment,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert done.returncode == exit_code, done.stdout + done.stderr
    assert not ANSI.search(done.stdout + done.stderr)
    assert "capacity_Ah" in done.stdout + done.stderr  # the verdict names what was checked
    assert len(list((tmp_path / "runs").glob("*capacity-check_sim_stack1"))) == 1
