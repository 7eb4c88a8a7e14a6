"""Notifications when a run ends: a command hook and e-mail through a real SMTP server on loopback."""

from __future__ import annotations

import base64
import json
import socket
import sys
import threading
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from stackcycler.errors import InvalidInput, UnreadableInput
from stackcycler.notify import (NotifyConfig, NotifyEvent, event_from_run, load_config, load_config_file, notify,
                                queue_stalled_event, run_events_logger)

EVENT = NotifyEvent(event="run_end", run="20260101-220000_capacity-check_sim_stack1", state="tripped",
                    reason="max_voltage_V on stack: measured 99.1, limit 99", result="no discharge recorded",
                    dut="sim-assb-23L-001", protocol="capacity-check", folder="/runs/x", time="2026-01-01T23:00:00+00:00")


# --- a minimal SMTP server (RFC 5321, enough to receive messages) on a loopback socket ------------

class LoopbackSmtp:
    """Accepts connections on 127.0.0.1 in a thread; records each message's envelope and data.
    `refuse`: recipients answered with 550; `auth`: the AUTH PLAIN credentials it accepts."""

    def __init__(self, refuse: tuple[str, ...] = (), auth: tuple[str, str] | None = None):
        self.refuse, self.auth = refuse, auth
        self.messages: list[dict] = []
        self.logins: list[tuple[str, str]] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with connection:
                self._session(connection.makefile("rwb", buffering=0))

    def _session(self, stream) -> None:
        def say(line: str) -> None:
            stream.write(line.encode() + b"\r\n")

        say("220 loopback ESMTP test server")
        envelope = {"from": None, "to": []}
        for raw in stream:
            command = raw.decode().rstrip("\r\n")
            verb = command.split(" ", 1)[0].upper()
            if verb == "EHLO":
                say("250-loopback")
                if self.auth:
                    say("250-AUTH PLAIN")
                say("250 8BITMIME")
            elif verb == "HELO":
                say("250 loopback")
            elif verb == "AUTH":
                _, user, password = base64.b64decode(command.split()[2]).decode().split("\0")
                self.logins.append((user, password))
                say("235 ok" if (user, password) == self.auth else "535 bad credentials")
            elif verb == "MAIL":
                envelope = {"from": command.split(":", 1)[1].split()[0].strip("<>"), "to": []}
                say("250 ok")
            elif verb == "RCPT":
                to = command.split(":", 1)[1].split()[0].strip("<>")
                if to in self.refuse:
                    say("550 no such mailbox")
                else:
                    envelope["to"].append(to)
                    say("250 ok")
            elif verb == "DATA":
                say("354 end with <CRLF>.<CRLF>")
                data = b""
                for line in stream:
                    if line == b".\r\n":
                        break
                    data += line[1:] if line.startswith(b"..") else line
                self.messages.append({**envelope, "message": message_from_bytes(data, policy=policy.default)})
                say("250 queued")
            elif verb == "QUIT":
                say("221 bye")
                return
            else:
                say("250 ok")  # RSET, NOOP

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def smtp_server():
    servers = []

    def start(**kwargs) -> LoopbackSmtp:
        servers.append(LoopbackSmtp(**kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _smtp_config(port: int, **smtp) -> NotifyConfig:
    return NotifyConfig.model_validate({"smtp": {"host": "127.0.0.1", "port": port, "from": "cycler@lab.test",
                                                 "to": ["night@lab.test", "lead@lab.test"], "timeout_s": 5, **smtp}})


def test_an_email_reaches_a_real_smtp_server_with_subject_recipients_and_fields(smtp_server):
    server = smtp_server()
    assert notify(EVENT, _smtp_config(server.port)) == []
    [received] = server.messages
    assert received["from"] == "cycler@lab.test"
    assert received["to"] == ["night@lab.test", "lead@lab.test"]
    message = received["message"]
    assert message["Subject"] == "stackcycler: tripped 20260101-220000_capacity-check_sim_stack1"
    assert message["To"] == "night@lab.test, lead@lab.test"
    body = message.get_content().replace("\r\n", "\n")
    assert "run: 20260101-220000_capacity-check_sim_stack1\n" in body
    assert "state: tripped\n" in body
    assert "reason: max_voltage_V on stack: measured 99.1, limit 99\n" in body
    assert "result: no discharge recorded\n" in body
    assert "DUT: sim-assb-23L-001\n" in body


def test_smtp_credentials_come_from_the_environment_variables_the_file_names(smtp_server):
    server = smtp_server(auth=("night", "s3cret"))
    config = _smtp_config(server.port, username_env="LAB_SMTP_USER", password_env="LAB_SMTP_PASSWORD")
    assert notify(EVENT, config, environ={"LAB_SMTP_USER": "night", "LAB_SMTP_PASSWORD": "s3cret"}) == []
    assert server.logins == [("night", "s3cret")] and len(server.messages) == 1
    [problem] = notify(EVENT, config, environ={"LAB_SMTP_USER": "night"})
    assert problem == f"e-mail not sent via 127.0.0.1:{server.port}: environment variable LAB_SMTP_PASSWORD not set"


def test_a_refused_recipient_is_a_problem_not_an_exception(smtp_server):
    server = smtp_server(refuse=("lead@lab.test",))
    [problem] = notify(EVENT, _smtp_config(server.port))
    assert problem == (f"e-mail via 127.0.0.1:{server.port} refused for some recipients "
                       "(lead@lab.test: 550 no such mailbox)")
    assert server.messages[0]["to"] == ["night@lab.test"]


def test_an_smtp_server_that_is_not_there_is_a_problem_not_an_exception():
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        port = placeholder.getsockname()[1]
    [problem] = notify(EVENT, _smtp_config(port))
    assert problem.startswith(f"e-mail not sent via 127.0.0.1:{port}: ConnectionRefusedError")


# --- the command hook -------------------------------------------------------------------------

HOOK = """\
import json, os, sys
received = {"stdin": json.load(sys.stdin),
            "env": {k: v for k, v in os.environ.items() if k.startswith("CYCLER_")}}
with open(sys.argv[1], "w") as handle:
    json.dump(received, handle)
"""


def _hook(tmp_path: Path, code: str) -> Path:
    path = tmp_path / "hook.py"
    path.write_text(code)
    return path


def test_the_command_gets_the_event_as_json_on_stdin_and_in_the_environment(tmp_path):
    out = tmp_path / "received.json"
    config = NotifyConfig(command=[sys.executable, str(_hook(tmp_path, HOOK)), str(out)])
    assert notify(EVENT, config) == []
    received = json.loads(out.read_text())
    assert received["stdin"] == {"event": "run_end", "run": EVENT.run, "state": "tripped", "reason": EVENT.reason,
                                 "result": "no discharge recorded", "dut": "sim-assb-23L-001",
                                 "protocol": "capacity-check", "folder": "/runs/x", "time": EVENT.time}
    env = received["env"]
    assert (env["CYCLER_EVENT"], env["CYCLER_RUN"], env["CYCLER_STATE"]) == ("run_end", EVENT.run, "tripped")
    assert (env["CYCLER_REASON"], env["CYCLER_RESULT"], env["CYCLER_DUT"]) == (
        EVENT.reason, "no discharge recorded", "sim-assb-23L-001")


def test_only_the_events_listed_under_on_are_sent(tmp_path):
    out = tmp_path / "received.json"
    config = NotifyConfig(command=[sys.executable, str(_hook(tmp_path, HOOK)), str(out)], on=["completed"])
    assert notify(EVENT, config) == [] and not out.exists()
    stalled = queue_stalled_event("item 4 failed; the queue stops for channel stack1", run="4")
    config = NotifyConfig(command=[sys.executable, str(_hook(tmp_path, HOOK)), str(out)], on=["queue_stalled"])
    assert notify(stalled, config) == []
    assert json.loads(out.read_text())["env"]["CYCLER_EVENT"] == "queue_stalled"


def test_a_command_that_fails_is_logged_with_what_it_said(tmp_path):
    hook = _hook(tmp_path, "import sys\nprint('pager unreachable', file=sys.stderr)\nsys.exit(3)\n")
    logged = []
    problems = notify(EVENT, NotifyConfig(command=[sys.executable, str(hook)]), on_problem=logged.append)
    assert problems == logged == [f"notification command {sys.executable} exited with code 3: pager unreachable"]


def test_a_missing_command_is_logged(tmp_path):
    missing = str(tmp_path / "no-such-hook")
    [problem] = notify(EVENT, NotifyConfig(command=[missing]))
    assert problem.startswith(f"notification command {missing} could not be started: No such file")


def test_a_command_that_hangs_is_killed_at_its_timeout(tmp_path):
    hook = _hook(tmp_path, "import subprocess, sys, time\n"
                           "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
                           "time.sleep(60)\n")
    config = NotifyConfig(command=[sys.executable, str(hook)], command_timeout_s=0.5)
    assert notify(EVENT, config) == [f"notification command {sys.executable} timed out after 0.5 s and was killed"]


def test_problems_go_to_the_run_events_and_a_failing_log_does_not_raise(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "events.jsonl").write_text('{"event": "run_end"}\n')
    config = NotifyConfig(command=[str(tmp_path / "missing")])
    notify(EVENT, config, on_problem=run_events_logger(folder))
    last = json.loads((folder / "events.jsonl").read_text().splitlines()[-1])
    assert last["event"] == "notification_failed" and "could not be started" in last["problem"]
    assert len(notify(EVENT, config, on_problem=run_events_logger(tmp_path / "gone"))) == 1


def test_command_and_email_are_both_sent_and_one_failing_does_not_stop_the_other(tmp_path, smtp_server):
    server = smtp_server()
    config = NotifyConfig.model_validate({"command": [str(tmp_path / "missing")],
                                          "smtp": {"host": "127.0.0.1", "port": server.port, "from": "c@lab.test",
                                                   "to": ["n@lab.test"]}})
    assert len(notify(EVENT, config)) == 1 and len(server.messages) == 1


# --- configuration ----------------------------------------------------------------------------

def test_notify_yaml_beside_the_runs_folder_is_found_and_validated(tmp_path):
    (tmp_path / "notify.yaml").write_text("command: [/bin/true]\non: [tripped, faulted]\n")
    config = load_config(tmp_path / "runs", environ={})
    assert config.command == ["/bin/true"] and config.on == ["tripped", "faulted"]


def test_no_configuration_means_no_notifications(tmp_path):
    assert load_config(tmp_path / "runs", environ={}) is None
    assert notify(EVENT, None) == []


def test_the_environment_variable_names_another_file(tmp_path):
    other = tmp_path / "elsewhere.yaml"
    other.write_text("smtp: {host: mail.lab.test, from: c@lab.test, to: [n@lab.test], starttls: true}\n")
    config = load_config(tmp_path / "runs", environ={"CYCLER_NOTIFY": str(other)})
    assert config.smtp.host == "mail.lab.test" and config.smtp.port == 25 and config.smtp.starttls
    with pytest.raises(UnreadableInput, match="no-such.yaml: no such notification file"):
        load_config(tmp_path / "runs", environ={"CYCLER_NOTIFY": str(tmp_path / "no-such.yaml")})


@pytest.mark.parametrize("text, message", [
    ("command: [/bin/true]\non: [tripped, exploded]\n", "notify.yaml, line 2: 'on[1]': Input should be 'completed'"),
    ("command: [/bin/true]\nemail: x\n", "notify.yaml, line 2: unknown field 'email'; accepted here: command"),
    ("command: /bin/true\n", "notify.yaml, line 1: 'command': Input should be a valid list"),
    ("on: [tripped]\n", "nothing to notify with: give `command:` (an argv list), `smtp:`, or both"),
    ("smtp:\n  host: m\n  to: [n@lab.test]\n", "notify.yaml, line 1: 'smtp.from' is required"),
    ("smtp:\n  host: m\n  from: c@l.t\n  to: [n@l.t]\n  username_env: U\n",
     "give both username_env and password_env"),
    ("smtp:\n  host: m\n  from: c@l.t\n  to: [n@l.t]\n  port: 0\n", "notify.yaml, line 5: 'smtp.port'"),
])
def test_a_bad_notification_file_is_refused_naming_file_line_and_field(tmp_path, text, message):
    path = tmp_path / "notify.yaml"
    path.write_text(text)
    with pytest.raises(InvalidInput) as error:
        load_config_file(path)
    assert message in str(error.value) and str(path) in str(error.value)


# --- the event of a real run ------------------------------------------------------------------

def test_the_event_of_a_finished_run_comes_from_its_run_json(run_protocol):
    result = run_protocol()
    event = event_from_run(result.outcome.folder)
    assert (event.event, event.run, event.state) == ("run_end", result.outcome.folder.name, "completed")
    assert (event.dut, event.protocol, event.reason) == ("sim-assb-23L-001", "capacity-check", "protocol finished")
    assert event.result == result.summary_line and event.result.startswith("discharge capacity 2.04")
    assert event.folder == str(result.outcome.folder) and event.time.endswith("+00:00")


def test_the_outcome_overrides_a_run_json_left_at_running(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({"state": "running", "dut": {"id": "D1"}}))
    event = event_from_run(folder, state="storage_failure", reason="disk full")
    assert (event.state, event.reason, event.dut) == ("storage_failure", "disk full", "D1")
    assert event_from_run(tmp_path / "gone").state == "unknown"


# --- wired into the end of a run ---------------------------------------------------------------


def test_a_tripped_run_notifies_once_its_output_is_off(run_protocol, tmp_path):
    out = tmp_path / "received.json"
    hook = _hook(tmp_path, HOOK)
    (tmp_path / "notify.yaml").write_text(f"command: [{json.dumps(sys.executable)}, {json.dumps(str(hook))}, "
                                          f"{json.dumps(str(out))}]\non: [tripped]\n")
    result = run_protocol(bench="sim-weak-layer")
    assert result.outcome.state == "tripped"
    received = json.loads(out.read_text())["stdin"]
    assert received["state"] == "tripped" and received["run"] == result.outcome.folder.name
    assert "max_layer_voltage_V on layer 07" in received["reason"] and received["dut"] == "sim-assb-23L-001"


def test_a_bad_notify_file_never_fails_a_run_and_is_logged_in_its_events(run_protocol, tmp_path):
    (tmp_path / "notify.yaml").write_text("comand: [true]\n")
    result = run_protocol()
    assert result.outcome.state == "completed"
    events = [json.loads(line) for line in (result.outcome.folder / "events.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "notification_failed" and "comand" in events[-1]["problem"]
