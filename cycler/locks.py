"""One run at a time per instrument: an advisory file lock per instrument resource.

Connecting to an instrument is not harmless (the EA supply's connect switches its output off),
so every program that opens a real instrument (a run, a resume, `validate --bench`) first takes
the instrument's lock, and a second one is refused with the name of whoever holds it.

The lock is the operating system's (flock on a file per resource, in a folder shared by every
user of the machine): it goes away with the process that held it, so a run that crashed or was
killed never leaves an instrument locked. The file also says who held it last, for the message.
Simulated instruments live inside their run and need no lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from pathlib import Path

from .errors import InstrumentBusy
from .operation import process_alive, this_host

LOCK_DIR_ENV = "CYCLER_LOCK_DIR"

if os.name == "nt":  # pragma: no cover - CI runs Linux; bench PCs may run Windows
    import msvcrt

    def try_lock(descriptor: int) -> bool:
        try:
            os.lseek(descriptor, 0, os.SEEK_SET)
            msvcrt.locking(descriptor, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
else:
    import fcntl

    def try_lock(descriptor: int) -> bool:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False


def lock_dir() -> Path:
    return Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "stackcycler-locks")


def canonical_resource(resource: str) -> str:
    """One spelling per instrument: a resource written differently ('::INSTR', case) is the same one."""
    return re.sub(r"::INSTR$", "", resource.strip().upper())


def lock_path(resource: str, folder: Path) -> Path:
    """One file per instrument (canonical_resource)."""
    canonical = canonical_resource(resource)
    readable = re.sub(r"[^A-Z0-9]+", "_", canonical).strip("_")[:60]
    return folder / f"{readable}-{hashlib.sha256(canonical.encode()).hexdigest()[:10]}.lock"


class InstrumentLocks:
    """The locks one program holds; released on close (and by the OS if the program dies)."""

    def __init__(self, holder: str, folder: Path | None = None):
        self.holder = holder
        self.folder = folder or lock_dir()
        self._held: dict[str, int] = {}  # canonical resource -> open descriptor
        self.stale: list[str] = []  # locks found left by a process that is gone (already released by the OS)

    def acquire(self, name: str, resource: str) -> None:
        """Lock `resource` for instrument `name`; a resource this program holds already (another
        slot of the same mainframe) is held once."""
        if canonical_resource(resource) in self._held:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            os.chmod(self.folder, 0o1777)  # every user of the bench PC locks in the same place
        except PermissionError:
            pass  # another user made it; it is theirs to chmod, and usable
        path = lock_path(resource, self.folder)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        if not try_lock(descriptor):
            previous = read_holder(descriptor)
            os.close(descriptor)
            who = previous.get("holder", "another program")
            raise InstrumentBusy(f"instrument '{name}' ({resource}) is in use by {who} (pid {previous.get('pid', '?')} "
                                 f"on {previous.get('host', '?')}, since {previous.get('since', '?')}); "
                                 "nothing was sent to it. Wait for that run to end, or stop it with `cycler stop`.")
        previous = read_holder(descriptor)
        if previous.get("pid") and previous.get("host") == this_host() and not process_alive(previous["pid"]):
            self.stale.append(f"{resource}: left by {previous.get('holder', '?')} (pid {previous['pid']}, gone)")
        self._held[canonical_resource(resource)] = descriptor
        self._write_holder(descriptor)

    def rename(self, holder: str) -> None:
        """Say who holds the locks more precisely, once it is known (the run folder's name)."""
        self.holder = holder
        for descriptor in self._held.values():
            self._write_holder(descriptor)

    def _write_holder(self, descriptor: int) -> None:
        write_holder(descriptor, self.holder)

    def release_all(self) -> None:
        for descriptor in self._held.values():
            os.close(descriptor)  # closing the descriptor releases the lock
        self._held.clear()

    def __enter__(self) -> "InstrumentLocks":
        return self

    def __exit__(self, *exc) -> None:
        self.release_all()


def write_holder(descriptor: int, holder: str) -> None:
    """Say in a lock file who holds it (for the message a second comer gets)."""
    record = json.dumps({"holder": holder, "pid": os.getpid(), "host": this_host(),
                         "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode()
    os.ftruncate(descriptor, 0)
    os.lseek(descriptor, 0, os.SEEK_SET)
    os.write(descriptor, record)


def read_holder(descriptor: int) -> dict:
    try:
        os.lseek(descriptor, 0, os.SEEK_SET)
        return json.loads(os.read(descriptor, 4096).decode() or "{}")
    except (OSError, ValueError):  # Windows does not let others read a locked file
        return {}
