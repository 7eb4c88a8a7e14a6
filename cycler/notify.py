"""Notifications when a run ends or the queue stalls: a command hook and/or an e-mail.

Configured in `notify.yaml` beside the runs folder (`runs/../notify.yaml`), or in the file that
the environment variable CYCLER_NOTIFY names:

    command: [/usr/local/bin/page-the-lab, --quiet]   # an argv list, run without a shell
    command_timeout_s: 30
    smtp:
      host: mail.lab.example
      port: 587
      from: cycler@lab.example
      to: [night-shift@lab.example]
      starttls: true
      username_env: CYCLER_SMTP_USER       # names of environment variables, never the secrets
      password_env: CYCLER_SMTP_PASSWORD
    on: [completed, tripped, faulted, interrupted, storage_failure, queue_stalled]

The command gets the event as JSON on stdin and as environment variables CYCLER_EVENT
(`run_end` or `queue_stalled`), CYCLER_RUN, CYCLER_STATE, CYCLER_REASON, CYCLER_RESULT,
CYCLER_DUT, CYCLER_PROTOCOL, CYCLER_FOLDER, CYCLER_TIME.

A notification that fails (a missing command, a non-zero exit, a timeout, a refused or
unreachable SMTP server) is returned as a problem and handed to a callback (which writes it to
the run's events); `notify()` never raises: a lost e-mail must never stop or fail a run.
"""

from __future__ import annotations

import json
import os
import signal
import smtplib
import ssl
import subprocess
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from email.message import EmailMessage
from pathlib import Path
from typing import Callable, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import UnreadableInput
from .store import EVENTS_FILE, METADATA_FILE
from .validation import parse_yaml, read_text, validate_data

CONFIG_FILE = "notify.yaml"
CONFIG_ENV = "CYCLER_NOTIFY"

EventKind = Literal["completed", "tripped", "faulted", "interrupted", "storage_failure", "error", "invalid",
                    "queue_stalled"]
ALL_KINDS: tuple[str, ...] = ("completed", "tripped", "faulted", "interrupted", "storage_failure", "error",
                              "invalid", "queue_stalled")
COMMAND_OUTPUT_KEPT = 300  # characters of a failed hook's stderr quoted in the problem


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, populate_by_name=True)


class SmtpConfig(_Strict):
    host: str = Field(min_length=1)
    port: int = Field(25, ge=1, le=65535)
    sender: str = Field(alias="from", min_length=3)
    to: list[str] = Field(min_length=1)
    starttls: bool = False
    username_env: str | None = Field(None, description="name of the environment variable holding the user name")
    password_env: str | None = Field(None, description="name of the environment variable holding the password")
    timeout_s: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _credentials_in_pairs(self) -> "SmtpConfig":
        if (self.username_env is None) != (self.password_env is None):
            raise ValueError("give both username_env and password_env (names of environment variables), or neither")
        return self


class NotifyConfig(_Strict):
    command: list[str] | None = Field(None, min_length=1, description="argv of the hook; no shell")
    command_timeout_s: float = Field(30.0, gt=0)
    smtp: SmtpConfig | None = None
    on: list[EventKind] = Field(default_factory=lambda: list(ALL_KINDS))

    @model_validator(mode="after")
    def _something_to_do(self) -> "NotifyConfig":
        if self.command is None and self.smtp is None:
            raise ValueError("nothing to notify with: give `command:` (an argv list), `smtp:`, or both")
        return self


def config_path(runs_dir: Path, environ: Mapping[str, str] | None = None) -> Path | None:
    """The notification file in force: $CYCLER_NOTIFY, else notify.yaml beside the runs folder."""
    environ = os.environ if environ is None else environ
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    beside = Path(runs_dir).absolute().parent / CONFIG_FILE
    return beside if beside.is_file() else None


def load_config(runs_dir: Path, environ: Mapping[str, str] | None = None) -> NotifyConfig | None:
    """The validated notification settings, or None when none are configured. Raises InvalidInput
    (naming the file, line and field) for a bad file, so a worker can refuse to start on a typo."""
    path = config_path(runs_dir, environ)
    if path is None:
        return None
    if not path.is_file():
        raise UnreadableInput(f"{path}: no such notification file (named by ${CONFIG_ENV})")
    return load_config_file(path)


def load_config_file(path: Path) -> NotifyConfig:
    data, lines = parse_yaml(read_text(path, "notification"), str(path))
    if isinstance(data, dict) and True in data and "on" not in data:
        data["on"] = data.pop(True)  # YAML 1.1 reads a bare `on:` key as the boolean true
    return validate_data(NotifyConfig, data, str(path), lines)


@dataclass(frozen=True)
class NotifyEvent:
    """What a notification says. `event`: run_end | queue_stalled; `state`: how the run ended."""

    event: str
    run: str  # the run folder's name (or the queue item, for a stalled queue)
    state: str
    reason: str
    result: str
    dut: str
    protocol: str
    folder: str
    time: str  # UTC, ISO 8601

    @property
    def kind(self) -> str:
        """What `on:` selects by."""
        return "queue_stalled" if self.event == "queue_stalled" else self.state

    def environment(self) -> dict[str, str]:
        return {f"CYCLER_{name.upper()}": value for name, value in asdict(self).items()}

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def event_from_run(folder: Path, state: str | None = None, reason: str | None = None) -> NotifyEvent:
    """The event of a finished run, from its run.json. `state`/`reason` (from the RunOutcome)
    win over the file: after a storage failure run.json may still say `running`. Never raises:
    what cannot be read is reported as unknown."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / METADATA_FILE).read_text(encoding="utf-8"))
        meta = meta if isinstance(meta, dict) else {}
    except (OSError, ValueError):
        meta = {}
    dut = meta.get("dut") if isinstance(meta.get("dut"), dict) else {}
    protocol = meta.get("protocol") if isinstance(meta.get("protocol"), dict) else {}
    return NotifyEvent(event="run_end", run=folder.name, state=state or str(meta.get("state", "unknown")),
                       reason=reason if reason is not None else str(meta.get("reason", "")),
                       result=str(meta.get("result", "")), dut=str(dut.get("id", "")),
                       protocol=str(protocol.get("name", "")), folder=str(folder),
                       time=str(meta.get("ended") or _now()))


def queue_stalled_event(reason: str, run: str = "", dut: str = "", protocol: str = "",
                        folder: str = "") -> NotifyEvent:
    """The queue stopped with items left (a failed item with `--on-failure stop`, a missing bench…)."""
    return NotifyEvent(event="queue_stalled", run=run, state="stalled", reason=reason, result="", dut=dut,
                       protocol=protocol, folder=folder, time=_now())


def notify(event: NotifyEvent, config: NotifyConfig | None,
           on_problem: Callable[[str], None] | None = None,
           environ: Mapping[str, str] | None = None) -> list[str]:
    """Send the notifications `config` asks for; returns the problems (empty: all sent, or none
    wanted). Each problem is also handed to `on_problem`. Never raises."""
    if config is None or event.kind not in config.on:
        return []
    environ = os.environ if environ is None else environ
    problems = []
    for send in (_run_command if config.command else None, _send_mail if config.smtp else None):
        if send is None:
            continue
        try:
            problem = send(event, config, environ)
        except Exception as error:  # noqa: BLE001 — a notification must never stop a run, even on a bug here
            problem = f"notification failed unexpectedly: {type(error).__name__}: {error}"
        if problem:
            problems.append(problem)
    for problem in problems:
        if on_problem is not None:
            try:
                on_problem(problem)
            except Exception:  # noqa: BLE001 — the log is best effort too (the disk may be full)
                pass
    return problems


def _run_command(event: NotifyEvent, config: NotifyConfig, environ: Mapping[str, str]) -> str | None:
    argv = list(config.command or [])
    name = argv[0]
    try:
        # its own session, so that a timeout kills whatever the hook started as well
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   env={**environ, **event.environment()}, start_new_session=True)
    except OSError as error:
        return f"notification command {name} could not be started: {error.strerror or error}"
    try:
        _, stderr = process.communicate(event.to_json().encode(), timeout=config.command_timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        return f"notification command {name} timed out after {config.command_timeout_s:g} s and was killed"
    if process.returncode != 0:
        said = stderr.decode(errors="replace").strip()[-COMMAND_OUTPUT_KEPT:]
        return (f"notification command {name} exited with code {process.returncode}"
                + (f": {said}" if said else ""))
    return None


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except OSError:
        pass  # already gone
    try:
        process.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        pass  # a grandchild that left the group still holds the pipes; do not wait for it


def mail_message(event: NotifyEvent, sender: str, to: list[str]) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = f"stackcycler: {event.state if event.event == 'run_end' else event.event} {event.run}"
    message["From"] = sender
    message["To"] = ", ".join(to)
    message.set_content(mail_body(event))
    return message


def mail_body(event: NotifyEvent) -> str:
    rows = [("event", event.event), ("run", event.run), ("state", event.state), ("reason", event.reason),
            ("result", event.result), ("DUT", event.dut), ("protocol", event.protocol),
            ("folder", event.folder), ("time", event.time)]
    return "\n".join(f"{label}: {value}" for label, value in rows if value) + "\n"


def _send_mail(event: NotifyEvent, config: NotifyConfig, environ: Mapping[str, str]) -> str | None:
    smtp = config.smtp
    assert smtp is not None
    where = f"{smtp.host}:{smtp.port}"
    credentials = None
    if smtp.username_env:
        missing = [n for n in (smtp.username_env, smtp.password_env) if not environ.get(n or "")]
        if missing:
            return f"e-mail not sent via {where}: environment variable {', '.join(missing)} not set"
        credentials = (environ[smtp.username_env], environ[smtp.password_env or ""])
    try:
        with smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout_s) as server:
            if smtp.starttls:
                server.starttls(context=ssl.create_default_context())
            if credentials:
                server.login(*credentials)
            refused = server.send_message(mail_message(event, smtp.sender, smtp.to))
    except smtplib.SMTPRecipientsRefused as error:
        return f"e-mail not sent via {where}: every recipient refused ({_refusals(error.recipients)})"
    except smtplib.SMTPResponseException as error:
        return f"e-mail not sent via {where}: the server answered {error.smtp_code} {_text(error.smtp_error)}"
    except (smtplib.SMTPException, OSError) as error:
        return f"e-mail not sent via {where}: {type(error).__name__}: {error}"
    if refused:
        return f"e-mail via {where} refused for some recipients ({_refusals(refused)})"
    return None


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _refusals(refused: dict) -> str:
    return "; ".join(f"{to}: {code} {_text(said)}" for to, (code, said) in refused.items())


def run_events_logger(folder: Path) -> Callable[[str], None]:
    """A callback for `notify(on_problem=...)` that appends each problem to the run's events.jsonl
    (after the run has ended and its store is closed) as a `notification_failed` event."""

    def record(problem: str) -> None:
        line = json.dumps({"event": "notification_failed", "time": _now(), "problem": problem})
        with open(Path(folder) / EVENTS_FILE, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    return record
