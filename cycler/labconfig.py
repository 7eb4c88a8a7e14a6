"""The lab configuration: `lab.toml` beside the runs folder (or the file `$CYCLER_LAB` names).

Without it a bench is on its own, exactly as before: the queue is `<runs>/queue.sqlite`, there is
no catalog and nothing is published. With it the queue and the run catalog are in the lab's
database, shared by every bench host, and finished runs are published to the results folder:

    database = "postgresql://cycler@labdb.example.org/cycler"   # required
    results = "/mnt/lab/results"       # shared folder for published data (relative: to this file)
    host = "bench-pc-3"                # this host's name in the lab (default: the computer's name)
    heartbeat_s = 5                    # catalog updates and the worker's lease renewal, this often
    lease_s = 30                       # a worker silent this long is gone: its item is interrupted
    publish_every_s = 600              # a long run's data is published this often (0: at its end only)

The password is best left out of the URL: psycopg (libpq) reads PGPASSWORD and ~/.pgpass.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import UnreadableInput
from .labdb import Database, check_database_url, lab_database
from .operation import this_host
from .validation import load_model

LAB_FILE = "lab.toml"
LAB_ENV = "CYCLER_LAB"


class LabConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    database: str = Field(description="the lab database URL: postgresql://… or sqlite:///…")
    results: Path | None = Field(None, description="shared folder where runs are published as BDF Parquet")
    host: str = Field(default_factory=this_host, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                      description="this host's name in the lab: letters, digits, '.', '_', '-'")
    heartbeat_s: float = Field(5.0, gt=0, le=300)
    lease_s: float = Field(30.0, gt=0)
    publish_every_s: float = Field(600.0, ge=0)

    @field_validator("database")
    @classmethod
    def _known_database(cls, url: str) -> str:
        return check_database_url(url.strip())

    @model_validator(mode="after")
    def _lease_outlives_heartbeats(self) -> "LabConfig":
        if self.lease_s < 2 * self.heartbeat_s:
            raise ValueError(f"lease_s: {self.lease_s:g} s is too short for heartbeat_s = {self.heartbeat_s:g} s; "
                             "give at least two heartbeats (lease_s >= 2 x heartbeat_s), so that one late "
                             "heartbeat does not end a worker's lease")
        return self

    def open_database(self) -> Database:
        return lab_database(self.database)


def lab_config_path(runs_dir: Path, environ: Mapping[str, str] | None = None) -> Path | None:
    """The lab file in force: $CYCLER_LAB, else lab.toml beside the runs folder; None without one."""
    environ = os.environ if environ is None else environ
    if environ.get(LAB_ENV):
        named = Path(environ[LAB_ENV])
        if not named.is_file():
            raise UnreadableInput(f"{named}: no such lab configuration (named by ${LAB_ENV})")
        return named
    beside = Path(runs_dir).absolute().parent / LAB_FILE
    return beside if beside.is_file() else None


def load_lab_config(runs_dir: Path, environ: Mapping[str, str] | None = None) -> LabConfig | None:
    """The validated lab configuration, or None when this bench is not part of a lab. A bad file
    raises InvalidInput naming the file, the line, the field and what is accepted."""
    path = lab_config_path(runs_dir, environ)
    if path is None:
        return None
    config, _ = load_model(LabConfig, path, "lab configuration")
    if config.results is not None and not config.results.is_absolute():
        config = config.model_copy(update={"results": (path.parent / config.results).resolve()})
    return config
