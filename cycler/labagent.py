"""A bench host's presence in the lab: its heartbeat, its queue worker's lease, its runs in the
catalog, its data published (issue 9).

Every cycler process that runs tests on a lab host (`cycler queue run`, `cycler run`, `cycler
resume`) keeps one background thread, the HostAgent, that every `heartbeat_s`:

1. renews the worker's lease (queue workers only): `workers.heartbeat` on the database's clock.
   A worker whose lease is older than `lease_s` is gone for the rest of the lab: its running item
   is marked interrupted by whichever worker claims next (queue.py);
2. says the host is alive (`hosts.last_seen`), so `cycler status --lab` can flag a silent host;
3. sends the catalog rows of the runs that changed (catalog.py);
4. starts publishing the runs that are due (publish.py) in a child process, so that reading a
   long run's samples never competes with the tick loop for this process's time.

The thread never raises into the run and never waits on the tick loop; the tick loop never waits
on it. When the database is unreachable it says so once, keeps the changed runs pending, and
sends them when the database is back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from stackcycler import __version__

from .catalog import CatalogSync, RunRecord, read_published, send
from .labconfig import LabConfig
from .labdb import DatabaseUnavailable, Session
from .operation import this_host
from .publish import due_for_publishing

PUBLISH_LOG = "lab-publish.log"  # in the runs folder: what the publishing child processes said
FINAL_PUBLISH_WAIT_S = 120.0  # how long a process ending waits for its runs' last publication
STOPPING_PUBLISH_WAIT_S = 10.0  # ... when it was asked to stop (systemd gives it a minute in all)


@dataclass
class WorkerLease:
    """A queue worker's claim to be alive, renewed by its HostAgent; judged on the database's clock."""

    host: str
    runs_dir: str
    benches: tuple[str, ...]
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def register(self, session: Session) -> None:
        now = session.dialect.now_unix_s
        session.execute(f"INSERT INTO workers (id, host, computer, pid, runs_dir, benches, started, heartbeat) "
                        f"VALUES (?, ?, ?, ?, ?, ?, {now}, {now})",
                        (self.id, self.host, this_host(), os.getpid(), self.runs_dir, json.dumps(list(self.benches))))

    def renew(self, session: Session) -> None:
        session.execute(f"UPDATE workers SET heartbeat = {session.dialect.now_unix_s} WHERE id = ?", (self.id,))

    def release(self, session: Session) -> None:
        session.execute(f"UPDATE workers SET stopped = {session.dialect.now_unix_s} WHERE id = ?", (self.id,))


def lost_workers_condition(session: Session) -> str:
    """SQL on `workers`: the worker stopped, or its lease ran out (one `?`: the lease in seconds)."""
    return f"(workers.stopped IS NOT NULL OR workers.heartbeat < {session.dialect.now_unix_s} - ?)"


class HostAgent:
    """The background thread of one cycler process on a lab host (see the module's doc)."""

    def __init__(self, config: LabConfig, runs_dir: Path, log: Callable[[str], None],
                 lease: WorkerLease | None = None):
        self.config, self.runs_dir, self.log, self.lease = config, Path(runs_dir), log, lease
        self.database = config.open_database()  # its own connection: never shared with the worker's thread
        self.catalog = CatalogSync(self.runs_dir, config.host)
        self._to_publish: dict[str, RunRecord] = {}
        self._publisher: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="stackcycler-lab-agent", daemon=True)
        self._outage_since: float | None = None
        self.sent_rows = 0  # catalog rows sent in this process (for tests and the demo)

    def start(self) -> "HostAgent":
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.config.heartbeat_s):
            try:
                self.cycle()
            except Exception as error:  # a bug here must never reach the run
                self.log(f"lab: {type(error).__name__}: {error} (the runs go on)")

    def cycle(self) -> None:
        """One heartbeat: lease, host, catalog, then publishing (which needs no database)."""
        records: list[RunRecord] = []
        try:
            with self.database.transaction() as session:  # first, and on its own: nothing may delay the lease
                if self.lease is not None:
                    self.lease.renew(session)
                self._host_alive(session)
            records = self.catalog.pending()
            with self.database.transaction() as session:
                send(session, records)
        except DatabaseUnavailable as error:
            records = records or self.catalog.pending()  # still due for publishing, which needs no database
            if self._outage_since is None:
                self._outage_since = time.monotonic()
                self.log(f"{error}; the runs go on, catalog updates wait for it")
        else:
            self.catalog.mark_sent(records)
            self.sent_rows += len(records)
            if self._outage_since is not None:
                self.log(f"lab database back after {time.monotonic() - self._outage_since:.0f} s; "
                         f"catalog caught up ({len(records)} run(s) sent)")
                self._outage_since = None
        if self.config.results is not None:
            for record in records:
                if due_for_publishing(record, self.config.publish_every_s):
                    self._to_publish[record.columns["run"]] = record
            self._start_publishing()

    def _host_alive(self, session: Session) -> None:
        session.execute(f"INSERT INTO hosts (host, computer, runs_dir, software, last_seen) "
                        f"VALUES (?, ?, ?, ?, {session.dialect.now_unix_s}) ON CONFLICT (host) DO UPDATE SET "
                        "computer = excluded.computer, runs_dir = excluded.runs_dir, software = excluded.software, "
                        "last_seen = excluded.last_seen",
                        (self.config.host, this_host(), str(self.runs_dir.resolve()), f"stackcycler {__version__}"))

    def _start_publishing(self) -> None:
        """Publish what is due in one child process at a time (`cycler lab publish`)."""
        if self._publisher is not None:
            if self._publisher.poll() is None:
                return
            if self._publisher.returncode != 0:
                self.log(f"lab: publishing failed (exit code {self._publisher.returncode}); see "
                         f"{self.runs_dir / PUBLISH_LOG}; it is tried again at the next change")
            self._publisher = None
        # as due now, not as when noted: a publication that ended meanwhile may have done it
        folders = [str(record.folder) for record in self._to_publish.values()
                   if due_for_publishing(replace(record, published=read_published(record.folder)),
                                         self.config.publish_every_s)]
        self._to_publish.clear()
        if not folders:
            return
        with open(self.runs_dir / PUBLISH_LOG, "a", encoding="utf-8") as log:
            self._publisher = subprocess.Popen(
                [sys.executable, "-m", "stackcycler", "lab", "publish", "--runs-dir", str(self.runs_dir), *folders],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)  # a Ctrl+C meant for the worker does not cut a publication short

    def close(self, publish_wait_s: float = FINAL_PUBLISH_WAIT_S) -> None:
        """Stop the thread; publish and catalogue the runs as they ended; end the worker's lease."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        deadline = time.monotonic() + publish_wait_s
        try:
            self.cycle()  # the runs as they ended into the catalog, and their publication started
            while self._publisher is not None and time.monotonic() < deadline:
                if self._publisher.poll() is None:
                    time.sleep(0.1)
                    continue
                self.cycle()  # reaps the publisher, catalogues what it published, starts what is left
            if self._publisher is not None:
                self.log(f"lab: publishing goes on in process {self._publisher.pid} after this one ends")
            if self.lease is not None:
                with self.database.transaction() as session:
                    self.lease.release(session)
        except DatabaseUnavailable as error:
            self.log(f"{error}; this host's last catalog updates are sent when a cycler process next runs here")
        except Exception as error:  # a bug here must not turn a worker's clean exit into a crash
            self.log(f"lab: {type(error).__name__}: {error}")
        finally:
            self.database.close()
