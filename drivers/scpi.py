"""Base of every SCPI driver: transport, identity, the error queue, and declarative settings.

A model driver is mostly declarations: one `Setting` per instrument setting, with its set
command, its query and its allowed range from the manual, so the command set reads at a
glance and every setpoint is checked before it is sent.
"""

from __future__ import annotations

import math
import re
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from stackcycler.errors import InstrumentError, InvalidInput

from .transport import MessageTransport

_LEADING_NUMBER = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)")


def parse_number(reply: str) -> float:
    """A number at the start of a reply, with any unit suffix ('97.75V', '12.00 V', '+4.2E+00')."""
    match = _LEADING_NUMBER.match(reply)
    if match is None:
        raise InstrumentError(f"expected a number, got {reply!r}")
    return float(match.group(1))


def parse_on_off(reply: str) -> bool:
    text = reply.strip().upper()
    if text in ("1", "ON"):
        return True
    if text in ("0", "OFF"):
        return False
    raise InstrumentError(f"expected ON/OFF or 1/0, got {reply!r}")


def parse_channel_list(text: str) -> list[int]:
    """'(@101:103,105)' or '101:103,105' -> [101, 102, 103, 105]; ValueError if malformed."""
    body = text.strip()
    if body.startswith("(@"):
        if not body.endswith(")"):
            raise ValueError(f"channel list {text!r} has no closing parenthesis")
        body = body[2:-1]
    channels: list[int] = []
    for item in body.split(","):
        item = item.strip()
        if not item:
            continue
        first, _, last = item.partition(":")
        try:
            a, b = int(first), int(last or first)
        except ValueError:
            raise ValueError(f"channel list {text!r}: '{item}' is not a channel or a range like 101:120") from None
        channels.extend(range(min(a, b), max(a, b) + 1))
    return channels


def format_channel_list(channels) -> str:
    return "(@" + ",".join(str(c) for c in channels) + ")"


class Setting:
    """One instrument setting: `driver.voltage_V = 4.2` checks the range, then sends the command.

    `limits(driver)` returns the allowed (low, high); ranges that depend on the model's ratings
    are computed from what the driver read at connect. The command and the query may name
    fields of `driver.command_fields` (`VOLT {},{channel}` on a multi-output instrument).
    """

    def __init__(self, set_command: str, query: str, doc: str, parse: Callable[[str], Any] = parse_number,
                 limits: Callable[[Any], tuple[float, float]] | None = None,
                 to_text: Callable[[Any], str] = str):
        self.set_command = set_command
        self.query = query
        self.parse = parse
        self.limits = limits
        self.to_text = to_text
        self.__doc__ = doc
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, driver: "ScpiDriver | None", owner: type) -> Any:
        if driver is None:
            return self
        return self.parse(driver.query(self.query.format(**driver.command_fields)))

    def __set__(self, driver: "ScpiDriver", value: Any) -> None:
        self.check(driver, value)
        driver.write_checked(self.command(driver, value))

    def command(self, driver: "ScpiDriver", value: Any) -> str:
        return self.set_command.format(self.to_text(value), **driver.command_fields)

    def check(self, driver: "ScpiDriver", value: Any) -> None:
        if self.limits is not None:
            low, high = self.limits(driver)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high):
                raise InvalidInput(
                    f"{driver.FRIENDLY_NAME} at {driver.resource}: {self.name} = {value!r} is outside the "
                    f"model's range {low:g} to {high:g}; nothing was sent"
                )


class ScpiDriver:
    FRIENDLY_NAME = "SCPI instrument"
    MAX_ERRORS_DRAINED = 32

    def __init__(self, transport: MessageTransport):
        self.transport = transport
        self.identity = ""
        self._defer_checks = 0
        self._last_command = ""

    @property
    def resource(self) -> str:
        return self.transport.resource

    def where(self) -> str:
        """How errors name this instrument."""
        return f"{self.FRIENDLY_NAME} at {self.resource}"

    def refuse_protection_out_of_range(self, over_voltage_V: float, over_current_A: float) -> None:
        """Protection thresholds the model cannot take are refused before anything is sent."""
        ratings = self.ratings
        for name, value, high in (("over_voltage_V", over_voltage_V, ratings.max_over_voltage_V),
                                  ("over_current_A", over_current_A, ratings.max_over_current_A)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 < value <= high):
                raise InvalidInput(f"{self.where()}: {name} = {value!r} is outside the model's range "
                                   f"0 to {high:g}; nothing was sent")

    @property
    def command_fields(self) -> dict[str, str]:
        """Fields the Setting commands of this instrument name, e.g. its output's channel list."""
        return {}

    def write(self, command: str) -> None:
        self._last_command = command
        self.transport.write(command)

    def query(self, command: str) -> str:
        self._last_command = command
        return self.transport.query(command).strip()

    def identify(self) -> str:
        self.identity = self.query("*IDN?")
        return self.identity

    @staticmethod
    def error_code(reply: str) -> int:
        """Leading integer of a SYST:ERR? reply; vendors differ in what follows it."""
        try:
            return int(reply.split(",", 1)[0].strip())
        except ValueError:
            raise InstrumentError(f"unreadable SYST:ERR? reply {reply!r}") from None

    def check_errors(self) -> None:
        """The role's health check; a model with more to check (protection flags) extends it."""
        self.check_error_queue()

    def drain_errors(self) -> list[str]:
        """Every SYST:ERR? reply up to the queue's "no error" (at most MAX_ERRORS_DRAINED)."""
        errors = []
        for _ in range(self.MAX_ERRORS_DRAINED):
            reply = self.transport.query("SYST:ERR?").strip()
            if self.error_code(reply) == 0:
                break
            errors.append(reply)
        return errors

    def check_error_queue(self) -> None:
        """Drain the error queue; raise if the instrument reported anything."""
        errors = self.drain_errors()
        if errors:
            raise InstrumentError(
                f"{self.FRIENDLY_NAME} at {self.resource} reported {'; '.join(errors)} "
                f"(last command sent: {self._last_command!r})"
            )

    def write_checked(self, command: str) -> None:
        self.write(command)
        if not self._defer_checks:
            self.check_error_queue()

    def set_many(self, values: dict[str, Any]) -> None:
        """Several settings at once: all are range-checked before any is sent, so a bad value
        never leaves the instrument half-updated; one error-queue check at the end."""
        settings = [(getattr(type(self), name), value) for name, value in values.items()]
        for setting, value in settings:
            setting.check(self, value)
        with self.batch():
            for setting, value in settings:
                self.write(setting.command(self, value))

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Several settings, one error-queue check at the end."""
        self._defer_checks += 1
        try:
            yield
        finally:
            self._defer_checks -= 1
        if not self._defer_checks:
            self.check_error_queue()

    def close(self) -> None:
        self.transport.close()
