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

In a lab (issue 9: lab.toml beside the runs folder, see labconfig.py) the same queue lives in the
lab's database and every bench host runs a worker for the benches it drives (`--bench`, repeatable).
A worker claims an item in one transaction that locks that row only (`FOR UPDATE SKIP LOCKED` on
PostgreSQL, see labdb.py), so two hosts never start the same item. The runs-folder lock still
allows one worker per runs folder, but whether the worker of an item is gone can no longer be
told by a lock on another host's disk: every lab worker holds a lease (labagent.WorkerLease, a
heartbeat in the database every `heartbeat_s`), and an item whose worker's lease is older than
`lease_s` is marked interrupted by the next worker that claims anything. Its run folder is on its
host, so its interruption policy is applied by the next worker started on that host (which, like
the embedded queue's, marks at once what a killed predecessor of its runs folder left running).
While the lab database is unreachable a worker claims nothing and waits; the item running goes
on, and its ending is recorded when the database is back.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from .errors import ExitCode, InvalidInput, StackcyclerError, most_serious
from .labagent import (FINAL_PUBLISH_WAIT_S, STOPPING_PUBLISH_WAIT_S, HostAgent, WorkerLease,
                       lost_workers_condition)
from .labconfig import LabConfig, load_lab_config
from .labdb import DatabaseUnavailable, Session, SQLiteDatabase
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

DATABASE_RETRY_S = 5.0  # a worker waiting for the lab database tries again this often
ENDING_WAIT_AFTER_STOP_S = 30.0  # a stopping worker waits this long for the database to record its item's ending
CONTENDED_RETRY_S = 0.05  # another worker took the item this one was taking: look again after this

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
    worker_host: str | None = None  # the host whose worker ran it (in a lab: the host's name in lab.toml)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "Item":
        return cls(row["id"], row["protocol"], row["bench"], row["channel"], row["dut_id"],
                   json.loads(row["overrides"]), row["after"], row["at"], row["on_failure"], row["on_interrupt"],
                   row["position"],
                   row["state"], row["run_folder"], row["reason"], row["added"], row["started"], row["ended"],
                   row["worker_host"])

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


_FIND_LAB = object()  # TestQueue(lab=...) default: lab.toml beside the runs folder, if there is one
_NOT_DONE = object()  # what _through_outage returns when a stop came before the database did


def _served(bench: str | Iterable[str] | None) -> tuple[str, ...]:
    """The benches a worker serves, as the queue stores them (); () for every bench."""
    if bench is None:
        return ()
    names = (bench,) if isinstance(bench, str) else tuple(bench)
    return tuple(dict.fromkeys(_absolute_if_file(name) for name in names))


class TestQueue:
    """The queue of one runs folder: embedded beside it, or the lab's when lab.toml configures one."""

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(self, runs_dir: Path, lab: LabConfig | None = _FIND_LAB):  # type: ignore[assignment]
        self.runs_dir = Path(runs_dir)
        self.lab: LabConfig | None = load_lab_config(self.runs_dir) if lab is _FIND_LAB else lab
        self.db = self.lab.open_database() if self.lab else SQLiteDatabase(self.runs_dir / QUEUE_FILE)
        self.where = self.db.where
        self.host = self.lab.host if self.lab else this_host()
        self.lock_path = self.runs_dir / WORKER_LOCK_FILE
        self._schema_checked = self.lab is None  # the embedded queue migrates itself

    @contextmanager
    def _db(self) -> Iterator[Session]:
        if not self._schema_checked:
            self.db.require_current_schema()
            self._schema_checked = True
        with self.db.transaction() as session:
            yield session

    @contextmanager
    def _edit(self) -> Iterator[Session]:
        """A transaction that may renumber the queue: one at a time, lab-wide."""
        with self._db() as db:
            if db.dialect.serialise_edits:
                db.execute(db.dialect.serialise_edits)
            yield db

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
        with self._edit() as db:
            if after is not None:
                row = db.execute("SELECT state FROM items WHERE id = ?", (after,)).fetchone()
                if row is None:
                    raise InvalidInput(f"--after {after}: no such item in the queue ({self.where})")
                if row["state"] == "removed":
                    raise InvalidInput(f"--after {after}: that item was removed; it will never complete")
            position = db.execute("SELECT COALESCE(MAX(position), 0) + 1 AS next FROM items WHERE state = 'queued'"
                                  ).fetchone()["next"]
            item_id = db.insert(
                "INSERT INTO items (protocol, bench, channel, dut_id, overrides, after, at, on_failure, on_interrupt, "
                "position, added) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (_absolute_if_file(protocol), _absolute_if_file(bench), prepared.channel_name, dut_id,
                 json.dumps(overrides), after, at, on_failure, on_interrupt, position,
                 time.time() if now is None else now))
            return self._get(db, item_id)

    def items(self, states: tuple[str, ...] = STATES) -> list[Item]:
        with self._db() as db:
            marks = ", ".join("?" for _ in states)
            rows = db.execute(f"SELECT * FROM items WHERE state IN ({marks}) ORDER BY "
                              "CASE state WHEN 'running' THEN 0 WHEN 'queued' THEN 1 ELSE 2 END, position, id",
                              states).fetchall()
        return _ranked([Item.from_row(row) for row in rows])

    def pending(self) -> list[Item]:
        """The running items and the queued ones, in the order they would start."""
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
        with self._edit() as db:
            item = self._get(db, item_id)
            if item.state != "queued":
                raise InvalidInput(f"item {item_id} is {item.state}; only a queued item is removed"
                                   + (" (stop its run with `cycler stop RUN`)" if item.state == "running" else ""))
            db.execute("UPDATE items SET state = 'removed', reason = 'removed by operator', ended = ? WHERE id = ?",
                       (time.time(), item_id))
            return self._get(db, item_id)

    def move(self, item_id: int, to: int) -> list[Item]:
        """Put a queued item at position `to` (1 = next to start); the others keep their order."""
        with self._edit() as db:
            item = self._get(db, item_id)
            if item.state != "queued":
                raise InvalidInput(f"item {item_id} is {item.state}; only a queued item is moved")
            order = [i for i in self._queued(db) if i != item_id]
            if not 1 <= to <= len(order) + 1:
                raise InvalidInput(f"--to {to}: use a position from 1 to {len(order) + 1}")
            order.insert(to - 1, item_id)
            for position, queued_id in enumerate(order, start=1):
                db.execute("UPDATE items SET position = ? WHERE id = ? AND state = 'queued'", (position, queued_id))
        return self.pending()

    @staticmethod
    def _get(db: Session, item_id: int) -> Item:
        row = db.execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone()
        if row is None:
            raise InvalidInput(f"no item {item_id} in the queue (`cycler queue list` shows the queue)")
        item = Item.from_row(row)
        if item.state == "queued":
            ahead = db.execute("SELECT COUNT(*) AS ahead FROM items WHERE state = 'queued' AND "
                               "(position < ? OR (position = ? AND id < ?))",
                               (item.position, item.position, item.id)).fetchone()["ahead"]
            item.position = ahead + 1
        return item

    @staticmethod
    def _queued(db: Session) -> list[int]:
        return [row["id"] for row in db.execute("SELECT id FROM items WHERE state = 'queued' ORDER BY position, id")]

    # --- the worker --------------------------------------------------------------------------

    def next_item(self, bench: str | Iterable[str] | None, now: float) -> tuple[Item | None, list[tuple[Item, str]]]:
        """The first item that may start now, and every other queued item with why it waits."""
        with self._db() as db:
            return self._startable(db, _served(bench), now, take=None)

    def _startable(self, db: Session, benches: tuple[str, ...], now: float,
                   take: Callable[[Item], bool] | None) -> tuple[Item | None, list[tuple[Item, str]]]:
        """The first queued item that may start now (that `take` took, if given: it returns False for
        an item another worker is taking) and the others with why they wait. A claim (`take`) reads
        only the items of the benches it serves: in a lab, the others are many and none of its business."""
        served = f" AND bench IN ({', '.join('?' for _ in benches)})" if take is not None and benches else ""
        queued = [Item.from_row(r) for r in db.execute(
            f"SELECT * FROM items WHERE state = 'queued'{served} ORDER BY position, id", benches if served else ())]
        # the states of the items these wait for (not of the whole history, which only grows)
        states = {row["id"]: row["state"] for row in db.execute(
            "SELECT id, state FROM items WHERE id IN (SELECT after FROM items WHERE state = 'queued')")}
        waiting: list[tuple[Item, str]] = []
        chosen = None
        for item in _ranked(queued):
            why = self._why_waiting(item, benches, now, states)
            if why is None and chosen is None:
                if take is None or take(item):
                    chosen = item
                continue  # taken by another worker this very moment: not waiting, not ours
            waiting.append((item, why or "after the item starting now"))
        return chosen, waiting

    @staticmethod
    def _why_waiting(item: Item, benches: tuple[str, ...], now: float, states: dict[int, str]) -> str | None:
        if benches and item.bench not in benches:
            return f"for a worker of bench {item.bench}"
        if item.after is not None and states.get(item.after) != "completed":
            state = states.get(item.after, "gone")
            if state in ("queued", "running"):
                return f"for item {item.after} to complete (it is {state})"
            return f"for item {item.after}, which ended {state}: it will not start unless re-queued"
        if item.at is not None and item.at > now:
            return f"until {_local(item.at)}"
        return None

    def _claim(self, benches: tuple[str, ...], now: float, worker_id: str
               ) -> tuple[Item | None, list[tuple[Item, str]], bool, list[Item]]:
        """In one transaction: interrupt the items of workers whose lease ran out (lab), then take
        the first item that may start now. Returns (item taken, the waiting ones, whether another
        worker was taking an item at the same moment, the items found lost)."""
        contended = False

        def take(item: Item) -> bool:
            nonlocal contended
            if db.execute("SELECT id FROM items WHERE id = ? AND state = 'queued'" + db.locked("items"),
                          (item.id,)).fetchone() is None:
                contended = True
                return False
            db.execute("UPDATE items SET state = 'running', started = ?, worker_pid = ?, worker_host = ?, "
                       "worker_id = ?, position = 0 WHERE id = ?",
                       (time.time(), os.getpid(), self.host, worker_id, item.id))
            return True

        with self._db() as db:
            lost = self._interrupt_lost_workers(db) if self.db.shared else []
            chosen, waiting = self._startable(db, benches, now, take)
            if chosen is not None:
                chosen = self._get(db, chosen.id)
        return chosen, waiting, contended, lost

    def _interrupt_lost_workers(self, db: Session) -> list[Item]:
        """Items whose worker's lease ran out, anywhere in the lab: marked interrupted, for their
        host's next worker to continue or leave by their policy."""
        rows = db.execute("SELECT items.id AS id, workers.host AS host, workers.pid AS pid, workers.stopped AS stopped, "
                          f"{db.dialect.now_unix_s} - workers.heartbeat AS silent_s FROM items "
                          "JOIN workers ON workers.id = items.worker_id "
                          f"WHERE items.state = 'running' AND {lost_workers_condition(db)} ORDER BY items.id"
                          + db.locked("items"), (self.lab.lease_s,)).fetchall()
        lost = []
        for row in rows:
            why = ("stopped without recording the item's ending" if row["stopped"] is not None else
                   f"stopped renewing its lease {row['silent_s']:.0f} s ago (lease {self.lab.lease_s:g} s)")
            db.execute("UPDATE items SET state = 'interrupted', ended = ?, interruption_handled = 0, reason = ? "
                       "WHERE id = ?", (time.time(), f"interrupted: the worker (pid {row['pid']} on {row['host']}) "
                                        f"{why}", row["id"]))
            lost.append(self._get(db, row["id"]))
        return lost

    def _own_interruptions(self) -> list[Item]:
        """The items a gone worker of this runs folder left, for their interruption policy: those
        still `running` (the runs folder's lock, held by this worker, proves their worker gone) are
        marked interrupted now; those the lab marked when the lease ran out are added."""
        mine, parameters = ("1 = 1", ()) if not self.db.shared else (
            "workers.host = ? AND workers.runs_dir = ?", (self.host, str(self.runs_dir.resolve())))
        found = []
        with self._db() as db:
            left_running = db.execute("SELECT items.* FROM items LEFT JOIN workers ON workers.id = items.worker_id "
                                      f"WHERE items.state = 'running' AND {mine} ORDER BY items.id", parameters).fetchall()
            for row in left_running:
                db.execute("UPDATE items SET state = 'interrupted', ended = ?, interruption_handled = 0, reason = ? "
                           "WHERE id = ?", (time.time(), f"interrupted: the worker (pid {row['worker_pid']} on "
                                            f"{row['worker_host']}) stopped mid-item", row["id"]))
            unhandled = db.execute("SELECT items.* FROM items LEFT JOIN workers ON workers.id = items.worker_id "
                                   f"WHERE items.state = 'interrupted' AND items.interruption_handled = 0 AND {mine} "
                                   "ORDER BY items.id", parameters).fetchall()
            for row in unhandled:
                folder = row["run_folder"] or _find_run_folder(self.runs_dir, row["worker_pid"], this_host(),
                                                               row["started"])
                db.execute("UPDATE items SET interruption_handled = 1, run_folder = ? WHERE id = ?", (folder, row["id"]))
                found.append(self._get(db, row["id"]))
        return found

    def run(self, bench: str | Iterable[str] | None = None, until_empty: bool = False, speed: float | None = None,
            now: Callable[[], float] = time.time, stop: StopRequest | None = None,
            log: Callable[[str], None] = print, reporter: Callable[[Item], ProgressReporter] | None = None,
            idle_poll_s: float = IDLE_POLL_S) -> WorkerReport:
        """Work through the queue (the items of `bench`, one name or several; every bench's if
        None); with `until_empty`, return when nothing is left that may start."""
        stop = stop or StopRequest()
        report = WorkerReport()
        benches = _served(bench)
        reporter_of = reporter or (lambda item: PlainReporter(prefix=f"[{item.id}] "))
        with self._worker_lock(), self._in_the_lab(benches, log, stop) as worker_id:
            found = self._through_outage(self._own_interruptions, "finding what a gone worker left", log, stop)
            report.interrupted_found = [] if found is _NOT_DONE else found
            for item in report.interrupted_found:
                log(f"item {item.id}: {item.describe()} was left running by a worker that is gone; marked "
                    f"interrupted (run folder {item.run_folder or 'not created'})"
                    + ("" if item.on_interrupt == "resume" else "; continue it with `cycler resume RUN` or queue it again"))
            for item in report.interrupted_found:
                if item.on_interrupt == "resume" and not stop():
                    report.ran.append(self._resume_item(item, speed, stop, log, reporter_of(item), worker_id))
            while not stop():
                claimed = self._through_outage(lambda: self._claim(benches, now(), worker_id),
                                               "claiming the next item", log, stop)
                if claimed is _NOT_DONE:
                    break
                item, _, contended, lost = claimed
                for other in lost:
                    log(f"item {other.id}: {other.describe()} on host {other.worker_host}: {other.reason}; its host "
                        "continues or leaves it by its policy when a worker starts there")
                if item is None:
                    if contended:
                        time.sleep(CONTENDED_RETRY_S)
                        continue
                    if until_empty:
                        break
                    self._sleep(idle_poll_s, stop)
                    continue
                report.ran.append(self._run_item(item, speed, stop, log, reporter_of(item)))
            report.stopped = stop()
            # what is left, every bench's, with why it waits (a claim looks at its own benches only)
            preview = self._through_outage(lambda: self.next_item(benches, now()), "listing the queue", log, stop)
            report.left = [] if preview is _NOT_DONE else preview[1]
        return report

    @staticmethod
    def _sleep(seconds: float, stop: StopRequest) -> None:
        deadline = time.monotonic() + seconds
        while not stop() and time.monotonic() < deadline:
            time.sleep(0.2)

    def _through_outage(self, action: Callable[[], Any], what: str, log: Callable[[str], None], stop: StopRequest,
                        after_stop_s: float = 0.0) -> Any:
        """`action()`, waiting through a lab database outage (said once, and when it ends). Returns
        _NOT_DONE if a stop came first and the database did not come back within `after_stop_s`."""
        since = None
        give_up_at = None
        while True:
            try:
                result = action()
            except DatabaseUnavailable as error:
                if since is None:
                    since = time.monotonic()
                    log(f"{error}; {what} waits for it (a running test goes on; no new item starts)")
                if stop():
                    give_up_at = give_up_at or time.monotonic() + after_stop_s
                    if time.monotonic() >= give_up_at:
                        log(f"stopped before the lab database came back: {what} was not done")
                        return _NOT_DONE
                    time.sleep(min(DATABASE_RETRY_S, max(give_up_at - time.monotonic(), 0.0)))
                else:
                    self._sleep(DATABASE_RETRY_S, stop)
                continue
            if since is not None:
                log(f"lab database back after {time.monotonic() - since:.0f} s: {what} done")
            return result

    @contextmanager
    def _in_the_lab(self, benches: tuple[str, ...], log: Callable[[str], None], stop: StopRequest) -> Iterator[str]:
        """The worker's id; in a lab also its lease, and the host's agent (catalog, publishing)
        for as long as the worker runs."""
        if self.lab is None:
            yield uuid.uuid4().hex
            return
        if not benches:
            log(f"this worker serves every bench in the lab ({self.where}); give --bench for the benches this "
                "host drives")
        lease = WorkerLease(self.host, str(self.runs_dir.resolve()), benches)

        def register() -> None:
            with self._db() as db:
                lease.register(db)

        if self._through_outage(register, "registering this worker", log, stop) is _NOT_DONE:
            yield lease.id  # stopped before the database came: nothing will be claimed
            return
        agent = HostAgent(self.lab, self.runs_dir, log, lease).start()
        try:
            yield lease.id
        finally:
            agent.close(STOPPING_PUBLISH_WAIT_S if stop() else FINAL_PUBLISH_WAIT_S)

    @contextmanager
    def _worker_lock(self) -> Iterator[None]:
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            if not try_lock(descriptor):
                first = read_holder(descriptor)
                raise QueueBusy(f"{self.runs_dir}: a worker already runs this queue (pid {first.get('pid', '?')} on "
                                f"{first.get('host', '?')}, since {first.get('since', '?')}); one worker per "
                                "runs folder. Stop that one first, or leave it to run the queue.")
            write_holder(descriptor, "the queue worker")
            yield
        finally:
            os.close(descriptor)  # releases the lock

    def _run_item(self, item: Item, speed: float | None, stop: StopRequest, log: Callable[[str], None],
                  reporter: ProgressReporter) -> Item:
        log(f"item {item.id}: start {item.describe()}")
        folder, state, reason = None, "failed", ""
        try:
            prepared = prepare(RunRequest(protocol=item.protocol, bench=item.bench, channel=item.channel,
                                          runs_dir=self.runs_dir, dut_id=item.dut_id, overrides=item.overrides))
            if prepared.bench.config.simulated:
                prepared.request.speed = speed  # --speed applies to simulated benches only
            result = execute(prepared, _FolderRecorder(reporter, self, item), stop)
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
        return self._record_ending(item, state, reason, folder, log, stop)

    def _write_ending(self, item: Item, state: str, reason: str, folder: str | None) -> tuple[Item, list[int]]:
        with self._db() as db:
            db.execute("UPDATE items SET state = ?, reason = ?, ended = ?, interruption_handled = 1, "
                       "run_folder = COALESCE(?, run_folder) WHERE id = ?",
                       (state, reason, time.time(), folder, item.id))
            skipped = []
            if state == "failed" and item.on_failure == "stop":
                skipped = [row["id"] for row in db.execute(
                    "SELECT id FROM items WHERE state = 'queued' AND bench = ? AND channel = ? ORDER BY id",
                    (item.bench, item.channel))]
                for other in skipped:
                    db.execute("UPDATE items SET state = 'skipped', ended = ?, reason = ? WHERE id = ? "
                               "AND state = 'queued'", (time.time(), f"skipped: item {item.id} on the same channel "
                                                        "failed (on-failure stop)", other))
            return self._get(db, item.id), skipped

    def _record_ending(self, item: Item, state: str, reason: str, folder: str | None,
                       log: Callable[[str], None], stop: StopRequest) -> Item:
        """How the item ended, into the queue, and its failure policy applied. A lab database that
        is away is waited for (the test has ended; nothing new starts meanwhile)."""
        written = self._through_outage(lambda: self._write_ending(item, state, reason, folder),
                                       f"recording how item {item.id} ended", log, stop, ENDING_WAIT_AFTER_STOP_S)
        if written is _NOT_DONE:
            done, skipped = replace(item, state=state, reason=reason, run_folder=folder or item.run_folder), []
        else:
            done, skipped = written
        if skipped:
            log(f"item {item.id} failed with on-failure stop: skipped item(s) "
                + ", ".join(str(other) for other in skipped) + f" on {item.bench}/{item.channel}")
            self._notify_stalled(done, f"item {item.id} failed ({reason}); items "
                                 + ", ".join(str(other) for other in skipped) + " will not run", log)
        log(f"item {item.id}: {state}" + (f", run folder {done.run_folder}" if done.run_folder else "")
            + (f": {reason}" if reason else ""))
        return done

    def _resume_item(self, item: Item, speed: float | None, stop: StopRequest, log: Callable[[str], None],
                     reporter: ProgressReporter, worker_id: str) -> Item:
        """Continue an item a dead worker left, as `cycler resume` would (interruption policy `resume`)."""
        folder = Path(item.run_folder) if item.run_folder else None
        meta = read_json(folder / METADATA_FILE) if folder and (folder / METADATA_FILE).exists() else {}
        resumed_times = meta.get("resumed_times", 0)
        if folder is None or resumed_times >= MAX_AUTOMATIC_RESUMES:
            why = ("no run folder was created" if folder is None else
                   f"the run has been resumed {resumed_times} times already (at most {MAX_AUTOMATIC_RESUMES} by itself)")
            return self._leave_interrupted(item, f"not continued by itself: {why}", log, stop)

        def mark_running() -> None:
            with self._db() as db:
                db.execute("UPDATE items SET state = 'running', worker_pid = ?, worker_host = ?, worker_id = ? "
                           "WHERE id = ?", (os.getpid(), self.host, worker_id, item.id))

        if self._through_outage(mark_running, f"continuing item {item.id}", log, stop) is _NOT_DONE:
            return item
        log(f"item {item.id}: continue {item.describe()} from its checkpoint (on-interrupt resume), run folder {folder}")
        try:
            simulated = meta.get("bench", {}).get("simulated")  # --speed applies to simulated benches only
            result = resume(folder, reporter, confirm=lambda preview: True, stop=stop,
                            speed=speed if simulated else KEEP_SPEED)
        except StackcyclerError as error:  # e.g. the DUT moved since the checkpoint: a person must look
            return self._leave_interrupted(item, f"not continued by itself: {error}", log, stop)
        state, reason = _item_ending(result.outcome.state, result.outcome.reason, result.summary_line)
        return self._record_ending(item, state, reason, str(folder.resolve()), log, stop)

    def _leave_interrupted(self, item: Item, reason: str, log: Callable[[str], None], stop: StopRequest) -> Item:
        done = self._record_ending(item, "interrupted", f"interrupted: {reason}", item.run_folder, log, stop)
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


def _ranked(items: list[Item]) -> list[Item]:
    """Queued items numbered 1, 2, ... in the order they would start (positions are only a sort
    key: a claim does not renumber the queue, so that claims on several hosts never wait on each other)."""
    rank = 0
    for item in items:
        if item.state == "queued":
            rank += 1
            item.position = rank
    return items


class _FolderRecorder:
    """Passes progress on, and writes the item's run folder into the queue once the run has one,
    so that a worker killed mid-item leaves the folder to resume named in the queue. The write
    happens beside the run, in a thread: a lab database that is slow or away never holds a tick."""

    def __init__(self, inner: ProgressReporter, queue: TestQueue, item: Item):
        self.inner, self.queue, self.item = inner, queue, item
        self.recorded = False

    def step_started(self, status) -> None:
        if not self.recorded:
            self.recorded = True
            threading.Thread(target=self._record, name=f"stackcycler-item-{self.item.id}", daemon=True).start()
        self.inner.step_started(status)

    def _record(self) -> None:
        folder = _find_run_folder(self.queue.runs_dir, os.getpid(), this_host(), self.item.started)
        if folder:
            try:
                self.queue._record_folder(self.item.id, folder)
            except DatabaseUnavailable:
                pass  # the item's ending names the folder too, once the database is back

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
    if item.state == "running" and item.worker_host:
        parts.append(f"on {item.worker_host}")
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
