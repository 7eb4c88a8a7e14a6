"""The test queue: what a technician loads in the evening and a worker runs through the night.

The queue is an SQLite database (WAL mode, so `cycler queue list` reads while a worker writes)
beside the run folders: `<runs-dir>/queue.sqlite`. An item is validated against its bench when it
is added, exactly as `cycler run` prepares it, so a typo is refused at 5 p.m., not found at 2 a.m.

A worker (`cycler queue run`) takes the items in position order as their start time (`at`) and
dependency (`after`) allow, runs each exactly as `cycler run` does, and records how it ended.
One worker per queue: the worker holds an operating-system lock on `<runs-dir>/queue.lock` (gone
with its process, so a killed worker never blocks the next), and a second worker is refused with
the first one's pid, host and start time. An item a killed worker left `running` (kill -9,
a crash, a power cut) is marked `interrupted` with its run folder when the next worker starts.
Its interruption policy says what then: `leave` (the default) leaves it for the technician, who
continues it with `cycler resume RUN` or queues it again (as a new item); `resume` has the worker
continue it at once, as `cycler resume` would, unless the resume check finds the DUT moved since
the checkpoint or the run has already been resumed MAX_AUTOMATIC_RESUMES times (a run that keeps
crashing the worker must not loop all night). An item stopped on purpose (Ctrl+C, SIGTERM,
`cycler stop`) is never continued by itself.

Item states: queued -> running -> completed | failed | interrupted; queued -> removed | skipped.
Failure policy: `stop` (the default) skips the items still queued for the failed item's bench and
channel; `skip` goes on with them.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable, Iterator

from .errors import ExitCode, InvalidInput, StackcyclerError, most_serious
from .live import PlainReporter
from .locks import read_holder, try_lock, write_holder
from .notify import load_config, notify, queue_stalled_event
from .operation import this_host
from .runner import ProgressReporter, StopRequest
from .session import KEEP_SPEED, RunRequest, execute, prepare, resume
from .store import METADATA_FILE, read_json

QUEUE_FILE = "queue.sqlite"
WORKER_LOCK_FILE = "queue.lock"
ON_FAILURE = ("stop", "skip")
ON_INTERRUPT = ("leave", "resume")
MAX_AUTOMATIC_RESUMES = 3
STATES = ("queued", "running", "completed", "failed", "interrupted", "skipped", "removed")
IDLE_POLL_S = 5.0  # a worker without --until-empty looks for startable items this often

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    protocol TEXT NOT NULL,
    bench TEXT NOT NULL,
    channel TEXT NOT NULL,
    dut_id TEXT,
    overrides TEXT NOT NULL DEFAULT '{}',
    after INTEGER,
    at REAL,
    on_failure TEXT NOT NULL DEFAULT 'stop',
    on_interrupt TEXT NOT NULL DEFAULT 'leave',
    position INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',
    run_folder TEXT,
    reason TEXT,
    worker_pid INTEGER,
    worker_host TEXT,
    added REAL NOT NULL,
    started REAL,
    ended REAL
)"""


class QueueBusy(StackcyclerError):
    """Another worker already runs this queue."""

    exit_code = ExitCode.INVALID_INPUT


@dataclass
class Item:
    id: int
    protocol: str
    bench: str
    channel: str
    dut_id: str | None
    overrides: dict[str, float]
    after: int | None
    at: float | None  # Unix time of the earliest start
    on_failure: str
    on_interrupt: str
    position: int
    state: str
    run_folder: str | None
    reason: str | None
    added: float
    started: float | None
    ended: float | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Item":
        return cls(row["id"], row["protocol"], row["bench"], row["channel"], row["dut_id"],
                   json.loads(row["overrides"]), row["after"], row["at"], row["on_failure"], row["on_interrupt"],
                   row["position"],
                   row["state"], row["run_folder"], row["reason"], row["added"], row["started"], row["ended"])

    def describe(self) -> str:
        return f"{self.protocol} on {self.bench}/{self.channel}"


@dataclass
class WorkerReport:
    """What one worker did: the items it ran, and what it left queued and why."""

    ran: list[Item] = field(default_factory=list)
    left: list[tuple[Item, str]] = field(default_factory=list)
    interrupted_found: list[Item] = field(default_factory=list)
    stopped: bool = False  # Ctrl+C or SIGTERM

    @property
    def exit_code(self) -> ExitCode:
        if self.stopped:
            return ExitCode.INTERRUPTED
        return most_serious(_state_code(item) for item in self.ran)


def _state_code(item: Item) -> int:
    if item.state == "completed":
        return ExitCode.COMPLETED
    if item.state == "interrupted":
        return ExitCode.INTERRUPTED
    return _FAILURE_CODES.get((item.reason or "").split(":", 1)[0], ExitCode.SOFTWARE_ERROR)


# how a failed item's reason starts (the run's outcome state) -> the exit code `cycler run` would give
_FAILURE_CODES = {"tripped": ExitCode.SAFETY_TRIP, "faulted": ExitCode.INSTRUMENT_FAULT,
                  "invalid": ExitCode.INVALID_INPUT, "storage_failure": ExitCode.STORAGE_FAILURE,
                  "error": ExitCode.SOFTWARE_ERROR}


def _item_ending(run_state: str, run_reason: str, summary_line: str) -> tuple[str, str]:
    """The item's state and reason from how its run ended."""
    if run_state == "completed":
        return "completed", summary_line
    if run_state == "interrupted":
        return "interrupted", f"interrupted: {run_reason}"
    return "failed", f"{run_state}: {run_reason}"


def parse_at(text: str, now: float | None = None) -> float:
    """`22:00` (the next time the clock shows it, local time) or an ISO time; returns Unix time."""
    now = time.time() if now is None else now
    text = text.strip()
    try:
        clock = datetime.strptime(text, "%H:%M")
    except ValueError:
        pass
    else:
        today = datetime.fromtimestamp(now)
        start = today.replace(hour=clock.hour, minute=clock.minute, second=0, microsecond=0)
        if start.timestamp() <= now:
            start += timedelta(days=1)
        return start.timestamp()
    try:
        return datetime.fromisoformat(text).timestamp()  # a naive time is local time
    except ValueError:
        raise InvalidInput(f"--at '{text}': write HH:MM (e.g. 22:00, the next time the clock shows it) "
                           "or an ISO time (e.g. 2025-03-14T22:00)") from None


def _local(unix_time: float | None) -> str:
    return "" if unix_time is None else datetime.fromtimestamp(unix_time).strftime("%Y-%m-%d %H:%M")


def _absolute_if_file(name: str) -> str:
    """A protocol or bench file is stored by its absolute path, so a worker started elsewhere finds it."""
    path = Path(name)
    return str(path.resolve()) if path.is_file() else name


class TestQueue:
    """The queue of one runs folder."""

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(self, runs_dir: Path):
        self.runs_dir = Path(runs_dir)
        self.path = self.runs_dir / QUEUE_FILE
        self.lock_path = self.runs_dir / WORKER_LOCK_FILE

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        connection.row_factory = sqlite3.Row
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")  # a queue that survives a power cut
            connection.execute(_SCHEMA)
            columns = {row["name"] for row in connection.execute("PRAGMA table_info(items)")}
            if "on_interrupt" not in columns:  # a queue made before the interruption policy existed
                connection.execute("ALTER TABLE items ADD COLUMN on_interrupt TEXT NOT NULL DEFAULT 'leave'")
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
        finally:
            connection.close()

    # --- what a technician does --------------------------------------------------------------

    def add(self, protocol: str, bench: str, channel: str | None = None, dut_id: str | None = None,
            overrides: dict[str, float] | None = None, after: int | None = None, at: float | None = None,
            on_failure: str = "stop", now: float | None = None, on_interrupt: str = "leave") -> Item:
        """Validate the item as `cycler run` would prepare it, then queue it last."""
        if on_failure not in ON_FAILURE:
            raise InvalidInput(f"--on-failure '{on_failure}': use one of {', '.join(ON_FAILURE)}")
        if on_interrupt not in ON_INTERRUPT:
            raise InvalidInput(f"--on-interrupt '{on_interrupt}': use one of {', '.join(ON_INTERRUPT)}")
        overrides = dict(overrides or {})
        prepared = prepare(RunRequest(protocol=protocol, bench=bench, channel=channel, runs_dir=self.runs_dir,
                                      dut_id=dut_id, overrides=overrides))
        with self._db() as db:
            if after is not None:
                row = db.execute("SELECT state FROM items WHERE id = ?", (after,)).fetchone()
                if row is None:
                    raise InvalidInput(f"--after {after}: no such item in the queue ({self.path})")
                if row["state"] == "removed":
                    raise InvalidInput(f"--after {after}: that item was removed; it will never complete")
            position = db.execute("SELECT COALESCE(MAX(position), 0) + 1 FROM items WHERE state = 'queued'"
                                  ).fetchone()[0]
            cursor = db.execute(
                "INSERT INTO items (protocol, bench, channel, dut_id, overrides, after, at, on_failure, on_interrupt, "
                "position, added) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (_absolute_if_file(protocol), _absolute_if_file(bench), prepared.channel_name, dut_id,
                 json.dumps(overrides), after, at, on_failure, on_interrupt, position,
                 time.time() if now is None else now))
            return self._get(db, cursor.lastrowid)

    def items(self, states: tuple[str, ...] = STATES) -> list[Item]:
        with self._db() as db:
            marks = ", ".join("?" for _ in states)
            rows = db.execute(f"SELECT * FROM items WHERE state IN ({marks}) ORDER BY "
                              "CASE state WHEN 'running' THEN 0 WHEN 'queued' THEN 1 ELSE 2 END, position, id",
                              states).fetchall()
        return [Item.from_row(row) for row in rows]

    def pending(self) -> list[Item]:
        """The running item (if any) and the queued ones, in the order they would start."""
        return self.items(("running", "queued"))

    def history(self) -> list[Item]:
        """Items that have ended (or were removed or skipped), oldest first."""
        with self._db() as db:
            rows = db.execute("SELECT * FROM items WHERE state NOT IN ('queued', 'running') "
                              "ORDER BY COALESCE(ended, added), id").fetchall()
        return [Item.from_row(row) for row in rows]

    def get(self, item_id: int) -> Item:
        with self._db() as db:
            return self._get(db, item_id)

    def remove(self, item_id: int) -> Item:
        with self._db() as db:
            item = self._get(db, item_id)
            if item.state != "queued":
                raise InvalidInput(f"item {item_id} is {item.state}; only a queued item is removed"
                                   + (" (stop its run with `cycler stop RUN`)" if item.state == "running" else ""))
            db.execute("UPDATE items SET state = 'removed', reason = 'removed by operator', ended = ? WHERE id = ?",
                       (time.time(), item_id))
            self._renumber(db, [i for i in self._queued(db) if i != item_id])
            return self._get(db, item_id)

    def move(self, item_id: int, to: int) -> list[Item]:
        """Put a queued item at position `to` (1 = next to start); the others keep their order."""
        with self._db() as db:
            item = self._get(db, item_id)
            if item.state != "queued":
                raise InvalidInput(f"item {item_id} is {item.state}; only a queued item is moved")
            order = [i for i in self._queued(db) if i != item_id]
            if not 1 <= to <= len(order) + 1:
                raise InvalidInput(f"--to {to}: use a position from 1 to {len(order) + 1}")
            order.insert(to - 1, item_id)
            self._renumber(db, order)
        return self.pending()

    @staticmethod
    def _get(db: sqlite3.Connection, item_id: int) -> Item:
        row = db.execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone()
        if row is None:
            raise InvalidInput(f"no item {item_id} in the queue (`cycler queue list` shows the queue)")
        return Item.from_row(row)

    @staticmethod
    def _queued(db: sqlite3.Connection) -> list[int]:
        return [row[0] for row in db.execute("SELECT id FROM items WHERE state = 'queued' ORDER BY position, id")]

    @staticmethod
    def _renumber(db: sqlite3.Connection, order: list[int]) -> None:
        for position, item_id in enumerate(order, start=1):
            db.execute("UPDATE items SET position = ? WHERE id = ?", (position, item_id))

    # --- the worker --------------------------------------------------------------------------

    def next_item(self, bench: str | None, now: float) -> tuple[Item | None, list[tuple[Item, str]]]:
        """The first item that may start now, and every other queued item with why it waits."""
        with self._db() as db:
            states = {row["id"]: row["state"] for row in db.execute("SELECT id, state FROM items")}
            queued = [Item.from_row(r) for r in db.execute(
                "SELECT * FROM items WHERE state = 'queued' ORDER BY position, id")]
        waiting: list[tuple[Item, str]] = []
        chosen = None
        for item in queued:
            why = self._why_waiting(item, bench, now, states)
            if why is None and chosen is None:
                chosen = item
            else:
                waiting.append((item, why or "after the item starting now"))
        return chosen, waiting

    @staticmethod
    def _why_waiting(item: Item, bench: str | None, now: float, states: dict[int, str]) -> str | None:
        if bench is not None and item.bench != _absolute_if_file(bench):
            return f"for a worker of bench {item.bench}"
        if item.after is not None and states.get(item.after) != "completed":
            state = states.get(item.after, "gone")
            if state in ("queued", "running"):
                return f"for item {item.after} to complete (it is {state})"
            return f"for item {item.after}, which ended {state}: it will not start unless re-queued"
        if item.at is not None and item.at > now:
            return f"until {_local(item.at)}"
        return None

    def run(self, bench: str | None = None, until_empty: bool = False, speed: float | None = None,
            now: Callable[[], float] = time.time, stop: StopRequest | None = None,
            log: Callable[[str], None] = print, reporter: Callable[[Item], ProgressReporter] | None = None,
            idle_poll_s: float = IDLE_POLL_S) -> WorkerReport:
        """Work through the queue; with `until_empty`, return when nothing is left that may start."""
        stop = stop or StopRequest()
        report = WorkerReport()
        with self._worker_lock():
            report.interrupted_found = self._mark_interrupted()
            for item in report.interrupted_found:
                log(f"item {item.id}: {item.describe()} was left running by a worker that is gone; marked "
                    f"interrupted (run folder {item.run_folder or 'not created'})"
                    + ("" if item.on_interrupt == "resume" else "; continue it with `cycler resume RUN` or queue it again"))
            for item in report.interrupted_found:
                if item.on_interrupt == "resume" and not stop():
                    report.ran.append(self._resume_item(item, speed, stop, log, reporter(item) if reporter
                                                        else PlainReporter(prefix=f"[{item.id}] ")))
            while not stop():
                item, waiting = self.next_item(bench, now())
                if item is None:
                    report.left = waiting
                    if until_empty:
                        break
                    deadline = time.monotonic() + idle_poll_s
                    while not stop() and time.monotonic() < deadline:
                        time.sleep(0.2)
                    continue
                report.ran.append(self._run_item(item, speed, stop, log,
                                                 reporter(item) if reporter else PlainReporter(prefix=f"[{item.id}] ")))
            report.stopped = stop()
            if report.stopped:
                _, report.left = self.next_item(bench, now())
        return report

    @contextmanager
    def _worker_lock(self) -> Iterator[None]:
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            if not try_lock(descriptor):
                first = read_holder(descriptor)
                raise QueueBusy(f"{self.path}: a worker already runs this queue (pid {first.get('pid', '?')} on "
                                f"{first.get('host', '?')}, since {first.get('since', '?')}); one worker per "
                                "queue. Stop that one first, or leave it to run the queue.")
            write_holder(descriptor, "the queue worker")
            yield
        finally:
            os.close(descriptor)  # releases the lock

    def _mark_interrupted(self) -> list[Item]:
        """Items left `running`: with the worker lock held, their worker is gone."""
        found = []
        with self._db() as db:
            for row in db.execute("SELECT * FROM items WHERE state = 'running'").fetchall():
                item = Item.from_row(row)
                folder = item.run_folder or _find_run_folder(self.runs_dir, row["worker_pid"], row["worker_host"],
                                                             item.started)
                db.execute("UPDATE items SET state = 'interrupted', run_folder = ?, ended = ?, reason = ? WHERE id = ?",
                           (folder, time.time(), f"interrupted: the worker (pid {row['worker_pid']} on "
                            f"{row['worker_host']}) stopped mid-item", item.id))
                found.append(self._get(db, item.id))
        return found

    def _run_item(self, item: Item, speed: float | None, stop: StopRequest, log: Callable[[str], None],
                  reporter: ProgressReporter) -> Item:
        with self._db() as db:
            db.execute("UPDATE items SET state = 'running', started = ?, worker_pid = ?, worker_host = ?, "
                       "position = 0 WHERE id = ?", (time.time(), os.getpid(), this_host(), item.id))
            self._renumber(db, self._queued(db))
        log(f"item {item.id}: start {item.describe()}")
        folder, state, reason = None, "failed", ""
        try:
            prepared = prepare(RunRequest(protocol=item.protocol, bench=item.bench, channel=item.channel,
                                          runs_dir=self.runs_dir, dut_id=item.dut_id, overrides=item.overrides))
            if prepared.bench.config.simulated:
                prepared.request.speed = speed  # --speed applies to simulated benches only
            result = execute(prepared, _FolderRecorder(reporter, self, item.id), stop)
            folder = str(Path(result.outcome.folder).resolve())
            state, reason = _item_ending(result.outcome.state, result.outcome.reason, result.summary_line)
        except StackcyclerError as error:
            kind = {ExitCode.INVALID_INPUT: "invalid", ExitCode.INSTRUMENT_FAULT: "faulted",
                    ExitCode.STORAGE_FAILURE: "storage_failure"}.get(error.exit_code, "error")
            reason = f"{kind}: {error}"
        except KeyboardInterrupt:
            state, reason = "interrupted", "interrupted: Ctrl+C while connecting the bench"
            stop.request("Ctrl+C")
        except Exception as error:  # a bug: the item fails, the worker says so and goes on by policy
            reason = f"error: {type(error).__name__}: {error}"
        return self._record_ending(item, state, reason, folder, log)

    def _record_ending(self, item: Item, state: str, reason: str, folder: str | None,
                       log: Callable[[str], None]) -> Item:
        """How the item ended, into the queue, and its failure policy applied."""
        skipped = []
        with self._db() as db:
            db.execute("UPDATE items SET state = ?, reason = ?, ended = ?, "
                       "run_folder = COALESCE(?, run_folder) WHERE id = ?",
                       (state, reason, time.time(), folder, item.id))
            done = self._get(db, item.id)
            if state == "failed" and item.on_failure == "stop":
                skipped = db.execute("SELECT id FROM items WHERE state = 'queued' AND bench = ? AND channel = ?",
                                     (item.bench, item.channel)).fetchall()
                for (other,) in skipped:
                    db.execute("UPDATE items SET state = 'skipped', ended = ?, reason = ? WHERE id = ?",
                               (time.time(), f"skipped: item {item.id} on the same channel failed "
                                f"(on-failure stop)", other))
                self._renumber(db, self._queued(db))
                if skipped:
                    log(f"item {item.id} failed with on-failure stop: skipped item(s) "
                        + ", ".join(str(other) for (other,) in skipped) + f" on {item.bench}/{item.channel}")
        if skipped:
            self._notify_stalled(done, f"item {item.id} failed ({reason}); items "
                                 + ", ".join(str(other) for (other,) in skipped) + " will not run", log)
        log(f"item {item.id}: {state}" + (f", run folder {done.run_folder}" if done.run_folder else "")
            + (f": {reason}" if reason else ""))
        return done

    def _resume_item(self, item: Item, speed: float | None, stop: StopRequest, log: Callable[[str], None],
                     reporter: ProgressReporter) -> Item:
        """Continue an item a dead worker left, as `cycler resume` would (interruption policy `resume`)."""
        folder = Path(item.run_folder) if item.run_folder else None
        resumed_times = read_json(folder / METADATA_FILE).get("resumed_times", 0) if folder and \
            (folder / METADATA_FILE).exists() else 0
        if folder is None or resumed_times >= MAX_AUTOMATIC_RESUMES:
            why = ("no run folder was created" if folder is None else
                   f"the run has been resumed {resumed_times} times already (at most {MAX_AUTOMATIC_RESUMES} by itself)")
            return self._leave_interrupted(item, f"not continued by itself: {why}", log)
        with self._db() as db:
            db.execute("UPDATE items SET state = 'running', worker_pid = ?, worker_host = ? WHERE id = ?",
                       (os.getpid(), this_host(), item.id))
        log(f"item {item.id}: continue {item.describe()} from its checkpoint (on-interrupt resume), run folder {folder}")
        try:
            simulated = read_json(folder / METADATA_FILE).get("bench", {}).get("simulated")
            result = resume(folder, reporter, confirm=lambda preview: True, stop=stop,
                            speed=speed if simulated else KEEP_SPEED)  # --speed applies to simulated benches only
        except StackcyclerError as error:  # e.g. the DUT moved since the checkpoint: a person must look
            return self._leave_interrupted(item, f"not continued by itself: {error}", log)
        state, reason = _item_ending(result.outcome.state, result.outcome.reason, result.summary_line)
        return self._record_ending(item, state, reason, str(folder.resolve()), log)

    def _leave_interrupted(self, item: Item, reason: str, log: Callable[[str], None]) -> Item:
        done = self._record_ending(item, "interrupted", f"interrupted: {reason}", item.run_folder, log)
        self._notify_stalled(done, f"item {item.id} stays interrupted: {reason}", log)
        return done

    def _notify_stalled(self, item: Item, reason: str, log: Callable[[str], None]) -> None:
        """The queue has stopped for a channel: say so (notify.yaml), never failing the worker."""
        try:
            config = load_config(self.runs_dir)
        except StackcyclerError as error:
            log(f"notification settings: {error}")
            return
        event = queue_stalled_event(reason, run=Path(item.run_folder).name if item.run_folder else f"item {item.id}",
                                    protocol=item.protocol, folder=item.run_folder or "")
        for problem in notify(event, config):
            log(f"notification failed: {problem}")

    def _record_folder(self, item_id: int, folder: str) -> None:
        with self._db() as db:
            db.execute("UPDATE items SET run_folder = ? WHERE id = ?", (folder, item_id))


class _FolderRecorder:
    """Passes progress on, and writes the item's run folder into the queue once the run has one,
    so that a worker killed mid-item leaves the folder to resume named in the queue."""

    def __init__(self, inner: ProgressReporter, queue: TestQueue, item_id: int):
        self.inner, self.queue, self.item_id = inner, queue, item_id
        self.recorded = False

    def step_started(self, status) -> None:
        if not self.recorded:
            self.recorded = True
            started = self.queue.get(self.item_id).started
            folder = _find_run_folder(self.queue.runs_dir, os.getpid(), this_host(), started)
            if folder:
                self.queue._record_folder(self.item_id, folder)
        self.inner.step_started(status)

    def tick(self, status) -> None:
        self.inner.tick(status)

    def finished(self, outcome) -> None:
        self.inner.finished(outcome)


def _find_run_folder(runs_dir: Path, pid: int | None, host: str | None, since: float | None) -> str | None:
    """The newest run folder a process created since it took the item."""
    found = []
    for meta_path in runs_dir.glob(f"*/{METADATA_FILE}"):
        try:
            meta = read_json(meta_path)
        except (OSError, ValueError):
            continue
        if meta.get("pid") == pid and meta.get("host") == host and meta_path.stat().st_mtime >= (since or 0) - 1:
            found.append((meta_path.parent.stat().st_ctime, str(meta_path.parent.resolve())))
    return max(found)[1] if found else None


def item_line(item: Item) -> str:
    """One line of `cycler queue list`."""
    parts = [f"{item.id:>4}", f"{item.position if item.state == 'queued' else '-':>3}", f"{item.state:<11}",
             item.describe()]
    if item.dut_id:
        parts.append(f"dut {item.dut_id}")
    if item.overrides:
        parts.append(" ".join(f"{k}={v:g}" for k, v in item.overrides.items()))
    if item.after is not None:
        parts.append(f"after {item.after}")
    if item.at is not None:
        parts.append(f"at {_local(item.at)}")
    parts.append(f"on-failure {item.on_failure}")
    if item.on_interrupt != "leave":
        parts.append(f"on-interrupt {item.on_interrupt}")
    if item.run_folder:
        parts.append(f"run {item.run_folder}")
    return "  ".join(parts)


def history_line(item: Item) -> str:
    """One line of `cycler queue history`."""
    when = f"{_local(item.started)} - {_local(item.ended)}" if item.started else _local(item.ended)
    text = f"{item.id:>4}  {item.state:<11}  {item.describe()}  {when}"
    if item.run_folder:
        text += f"  run {item.run_folder}"
    if item.reason:
        text += f"  {item.reason}"
    return text


__all__ = ["TestQueue", "Item", "WorkerReport", "QueueBusy", "parse_at", "item_line", "history_line"]
