"""Lab scale (issue 9): what the `cycler lab` commands and `cycler status --lab` do, over the
pieces that live in their own modules:

    labconfig.py  lab.toml: the database, the results folder, this host's name, the timings
    labdb.py      the database (PostgreSQL or SQLite), its dialects and schema versions
    queue.py      the queue, claimed by workers on every host
    labagent.py   a host's heartbeat, its worker's lease, the catalog updates and publishing
    catalog.py    the run catalog: rows from run folders, `cycler status --lab`
    publish.py    runs to the shared results folder as BDF Parquet
    labquery.py   one SQL statement over everything published (DuckDB)
    labdemo.py    a whole lab on one computer
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from .catalog import LabView, lab_view
from .errors import InvalidInput
from .labagent import HostAgent
from .labconfig import LAB_ENV, LAB_FILE, LabConfig, load_lab_config
from .labdb import SCHEMA_VERSION, SchemaMismatch


def require_lab(runs_dir: Path) -> LabConfig:
    """The lab configuration, or an error saying where it was looked for and what it needs."""
    config = load_lab_config(runs_dir)
    if config is None:
        beside = Path(runs_dir).absolute().parent / LAB_FILE
        raise InvalidInput(f"no lab configuration: {beside} does not exist (and ${LAB_ENV} is not set). Write it "
                           "with at least database = \"postgresql://USER@HOST/DATABASE\" (see docs/lab.md)")
    return config


def init(config: LabConfig) -> str:
    """Create the schema in a new lab database; refuses to touch one that has a schema already."""
    database = config.open_database()
    try:
        version = database.schema_version()
        if version == SCHEMA_VERSION:
            return f"{database.where}: already set up (schema version {version}); nothing to do"
        if version is not None:
            raise SchemaMismatch(f"{database.where} has schema version {version}; upgrade it with "
                                 "`cycler lab migrate`")
        database.migrate(applied_by=f"cycler lab init on {config.host}")
        return f"{database.where}: created the lab schema, version {SCHEMA_VERSION}"
    finally:
        database.close()


def migrate(config: LabConfig) -> str:
    """Bring the lab database's schema up to this version's."""
    database = config.open_database()
    try:
        before = database.schema_version()
        applied = database.migrate(applied_by=f"cycler lab migrate on {config.host}")
        if not applied:
            return f"{database.where}: schema version {before} is current; nothing to do"
        steps = "; ".join(f"{m.version}: {m.description}" for m in applied)
        return f"{database.where}: migrated from schema version {before or 0} to {applied[-1].version} ({steps})"
    finally:
        database.close()


def view(config: LabConfig) -> LabView:
    """The catalog, for `cycler status --lab`."""
    database = config.open_database()
    try:
        database.require_current_schema()
        return lab_view(database, config.lease_s)
    finally:
        database.close()


@contextmanager
def lab_presence(runs_dir: Path, log: Callable[[str], None]) -> Iterator[HostAgent | None]:
    """While a run goes on (`cycler run`, `cycler resume`) on a lab host: the host's heartbeat, the
    catalog and publishing. Nothing at all without a lab configuration."""
    config = load_lab_config(runs_dir)
    if config is None:
        yield None
        return
    agent = HostAgent(config, runs_dir, log).start()
    try:
        yield agent
    finally:
        agent.close()


def sync(config: LabConfig, runs_dir: Path, log: Callable[[str], None]) -> int:
    """Once, now: this host's runs into the catalog and what is due published (waiting for it).
    The number of catalog rows sent."""
    agent = HostAgent(config, runs_dir, log)
    agent.close()  # its final pass is exactly one sync, then waits for the publication
    return agent.sent_rows
