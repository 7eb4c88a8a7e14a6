"""A SCPI message engine shared by every simulated SCPI instrument.

It implements the rules of IEEE 488.2 / SCPI-1999 that real instruments share (see
shared/reference/instruments.md §0), once:

* keywords are case-insensitive, in short form (the upper-case part of the manual spelling)
  or long form, mixed freely; `[optional]` nodes may be left out; a leading `:` is legal;
* `;` separates commands in one message; a command after `;` is relative to the previous
  command's path unless it starts with `:` (root) or `*` (common command);
* numbers are NR1/NR2/NR3 or MIN/MAX/DEF; booleans ON/OFF/1/0; channel lists `(@101:103,105)`;
* an unknown header, a bad parameter or a value out of range puts a standard error in a FIFO
  queue read with SYST:ERR?; a rejected query sends no reply (the client times out).

A model declares its command set as handler methods decorated with `@scpi("PATTern[:OPTional]?")`.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable

from ..scpi import parse_channel_list

STANDARD_ERRORS: dict[int, str] = {
    0: "No error",
    -100: "Command error",
    -102: "Syntax error",
    -104: "Data type error",
    -108: "Parameter not allowed",
    -109: "Missing parameter",
    -113: "Undefined header",
    -138: "Suffix not allowed",
    -200: "Execution error",
    -203: "Command protected",
    -221: "Settings conflict",
    -222: "Data out of range",
    -224: "Illegal parameter value",
    -350: "Queue overflow",
}


class ScpiError(Exception):
    def __init__(self, code: int, message: str | None = None):
        self.code = code
        self.message = message or STANDARD_ERRORS.get(code, "Error")
        super().__init__(f"{code},{self.message}")


@dataclass(frozen=True)
class _Node:
    long: str
    short: str
    optional: bool

    def accepts(self, token: str) -> bool:
        token = token.upper()
        return token == self.short or token == self.long


_NUMBER_WITH_SUFFIX = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:E[+-]?\d+)?)\s*([A-Z]*)$")
_PATTERN_TOKEN = re.compile(r"\[:?([*\w]+):?\]|:?([*\w]+)")


def compile_pattern(pattern: str) -> tuple[tuple[_Node, ...], bool]:
    """'[SOURce:]VOLTage[:LEVel]?' -> nodes, is_query."""
    is_query = pattern.endswith("?")
    body = pattern[:-1] if is_query else pattern
    nodes = []
    for optional_word, word in _PATTERN_TOKEN.findall(body):
        spelled = optional_word or word
        short = "".join(c for c in spelled if c.isupper() or c.isdigit() or c == "*")
        nodes.append(_Node(long=spelled.upper(), short=short or spelled.upper(), optional=bool(optional_word)))
    return tuple(nodes), is_query


def _matches(nodes: tuple[_Node, ...], tokens: list[str]) -> bool:
    if not nodes:
        return not tokens
    first, rest = nodes[0], nodes[1:]
    if tokens and first.accepts(tokens[0]) and _matches(rest, tokens[1:]):
        return True
    return first.optional and _matches(rest, tokens)


def scpi(pattern: str, nargs: tuple[int, int] | None = None) -> Callable:
    """Declare a handler: `pattern` in manual spelling, `?` for the query form.

    `nargs` = (fewest, most) parameters; default (1, 1) for a setting, (0, 0) for a query.
    The handler receives the parameter strings and returns the reply (queries) or None.
    """

    def decorate(function: Callable) -> Callable:
        function._scpi = (pattern, nargs)
        return function

    return decorate


@dataclass(frozen=True)
class _Handler:
    pattern: str
    nodes: tuple[_Node, ...]
    is_query: bool
    nargs: tuple[int, int]
    method_name: str


_GROUPING = frozenset("\"'()")


def split_outside(text: str, separator: str) -> list[str]:
    """Split on `separator` except inside quotes or parentheses."""
    if _GROUPING.isdisjoint(text):
        return text.split(separator)  # the usual message: nothing to step over
    parts, depth, quote, start = [], 0, None, 0
    for i, c in enumerate(text):
        if quote:
            if c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == separator and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


class ScpiInstrument:
    """Base of simulated SCPI instruments: message parsing, dispatch, error queue, *ESR."""

    IDENTITY = "stackcycler,SIMULATED,0,0"
    ERROR_QUEUE_DEPTH = 20
    OPC_SUPPORTED = True

    _handlers: tuple[_Handler, ...] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        handlers = []
        for klass in reversed(cls.__mro__):
            for name, member in vars(klass).items():
                declared = getattr(member, "_scpi", None)
                if declared is None:
                    continue
                pattern, nargs = declared
                nodes, is_query = compile_pattern(pattern)
                handlers = [h for h in handlers if h.method_name != name]
                handlers.append(_Handler(pattern, nodes, is_query, nargs or ((0, 0) if is_query else (1, 1)), name))
        cls._handlers = tuple(handlers)

    def __init__(self) -> None:
        self._errors: deque[tuple[int, str]] = deque()
        self._esr = 0
        self._resolved: dict[tuple[str, tuple[str, ...]], tuple[_Handler | None, tuple[str, ...], bool]] = {}

    # --- error queue -------------------------------------------------------------------

    def push_error(self, code: int, message: str | None = None) -> None:
        message = message or STANDARD_ERRORS.get(code, "Error")
        if len(self._errors) >= self.ERROR_QUEUE_DEPTH:
            self._errors[-1] = (-350, STANDARD_ERRORS[-350])
        else:
            self._errors.append((code, message))
        # IEEE 488.2 standard event status bits: 32 command, 16 execution, 8 device, 4 query error
        if -199 <= code <= -100:
            self._esr |= 32
        elif -299 <= code <= -200:
            self._esr |= 16
        elif -499 <= code <= -400:
            self._esr |= 4
        else:
            self._esr |= 8

    def format_error(self, code: int, message: str) -> str:
        """One SYST:ERR? reply. Vendors differ; the Keysight form is the default."""
        return f'{code:+d},"{message}"'

    def pop_error(self) -> str:
        code, message = self._errors.popleft() if self._errors else (0, STANDARD_ERRORS[0])
        return self.format_error(code, message)

    # --- message handling --------------------------------------------------------------

    def handle(self, message: str) -> str | None:
        """Execute one program message; return the reply (queries joined by ';') or None."""
        replies: list[str] = []
        path: tuple[str, ...] = ()
        for unit in split_outside(message.strip(), ";"):
            unit = unit.strip()
            if not unit:
                continue
            header, _, arg_text = unit.partition(" ")
            try:
                handler, path, is_query = self._resolve(header.strip(), path)
                if handler is None:
                    raise ScpiError(-113)
                args = [a.strip() for a in split_outside(arg_text, ",")] if arg_text.strip() else []
                fewest, most = handler.nargs
                if len(args) < fewest:
                    raise ScpiError(-109)
                if len(args) > most:
                    raise ScpiError(-108)
                if not is_query:
                    self.command_executed()
                reply = getattr(self, handler.method_name)(args)
            except ScpiError as error:
                self.push_error(error.code, error.message)
                continue
            if is_query and reply is not None:
                replies.append(str(reply))
        return ";".join(replies) if replies else None

    def command_executed(self) -> None:
        """Called before each command (not query) runs; a simulator whose settings drive the
        physics tells its world here."""

    def _resolve(self, header: str, path: tuple[str, ...]) -> tuple[_Handler | None, tuple[str, ...], bool]:
        """(the handler or None if there is none, the path for a following command, is it a query)
        for a header after `path`; remembered, since a driver sends the same few headers over and over."""
        key = (header, path)
        if key not in self._resolved:
            self._resolved[key] = self._resolve_header(header, path)
        return self._resolved[key]

    def _resolve_header(self, header: str, path: tuple[str, ...]) -> tuple[_Handler | None, tuple[str, ...], bool]:
        is_query = header.endswith("?")
        if is_query:
            header = header[:-1]
        if header.startswith("*"):
            tokens = (header.upper(),)
        elif header.startswith(":"):
            tokens = tuple(header[1:].split(":"))
        else:
            tokens = path + tuple(header.split(":"))
        if not all(tokens):
            raise ScpiError(-102)
        if not header.startswith("*"):
            path = tokens[:-1]  # a following command without a leading ':' continues from here
        found = [h for h in self._handlers if h.is_query == is_query and _matches(h.nodes, list(tokens))]
        return (found[0] if found else None), path, is_query

    # --- parameter parsing -------------------------------------------------------------

    @staticmethod
    def number(arg: str, low: float, high: float, default: float | None = None,
               units: Iterable[str] = ()) -> float:
        """NRf or MIN/MAX/DEF, optionally with a unit suffix; -222 outside [low, high]."""
        text = arg.strip().upper()
        keyword = {"MIN": low, "MINIMUM": low, "MAX": high, "MAXIMUM": high}
        if text in keyword:
            return keyword[text]
        if text in ("DEF", "DEFAULT"):
            if default is None:
                raise ScpiError(-224)
            return default
        match = _NUMBER_WITH_SUFFIX.match(text)
        if match is None:
            raise ScpiError(-104)
        number_text, suffix = match.groups()
        scale = 1.0
        if suffix:
            allowed = {u.upper(): 1.0 for u in units} | {"M" + u.upper(): 1e-3 for u in units}
            if suffix not in allowed:
                raise ScpiError(-138, "Suffix not allowed")
            scale = allowed[suffix]
        value = float(number_text) * scale
        if not low <= value <= high:
            raise ScpiError(-222)
        return value

    @staticmethod
    def boolean(arg: str) -> bool:
        text = arg.strip().upper()
        if text in ("ON", "1"):
            return True
        if text in ("OFF", "0"):
            return False
        raise ScpiError(-224)

    @staticmethod
    def choice(arg: str, options: Iterable[str]) -> str:
        """Match a character parameter against manual spellings ('INTernal'); returns the long form."""
        for option in options:
            (node,), _ = compile_pattern(option)
            if node.accepts(arg.strip()):
                return node.long
        raise ScpiError(-224)

    @staticmethod
    def channel_list(arg: str) -> list[int]:
        """'(@101:103,105)' -> [101, 102, 103, 105]."""
        if not arg.strip().startswith("(@"):
            raise ScpiError(-102)
        try:
            return parse_channel_list(arg)
        except ValueError:
            raise ScpiError(-102) from None

    @staticmethod
    def nr3(value: float) -> str:
        return f"{value:+.8E}"

    # --- IEEE 488.2 common commands and the error queue --------------------------------

    def reset(self) -> None:
        """*RST: subclasses return their settings to the power-on state."""

    @scpi("*IDN?")
    def _idn(self, args):
        return self.IDENTITY

    @scpi("*RST", nargs=(0, 0))
    def _rst(self, args):
        self.reset()

    @scpi("*CLS", nargs=(0, 0))
    def _cls(self, args):
        self._errors.clear()
        self._esr = 0

    @scpi("*OPC?")
    def _opc(self, args):
        if not self.OPC_SUPPORTED:
            raise ScpiError(-113)
        return "1"

    @scpi("*ESR?")
    def _esr_query(self, args):
        value, self._esr = self._esr, 0
        return str(value)

    @scpi("SYSTem:ERRor[:NEXT]?")
    def _system_error(self, args):
        return self.pop_error()
