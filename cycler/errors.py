"""Error types and the process exit codes they map to.

Every way a run can end has one exception type here and one exit code, so that scripts,
cron jobs and CI can tell a finished test from a trip, a fault, bad input or an interruption.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    COMPLETED = 0
    SOFTWARE_ERROR = 1  # a bug in stackcycler: outputs were still switched off
    INVALID_INPUT = 2  # bad protocol, bench or option: nothing was switched on
    SAFETY_TRIP = 3  # a safety limit tripped: outputs off, limit recorded
    INSTRUMENT_FAULT = 4  # an instrument failed or misbehaved: outputs off, fault recorded
    STORAGE_FAILURE = 5  # the run folder could not be written (disk full?): outputs off, data kept
    INTERRUPTED = 130  # Ctrl+C or SIGTERM: outputs off, data up to the signal kept



# Least to most serious: when several runs end together (channels, a queue's night), the most
# serious ending is the exit code, so that a trip anywhere is what a script sees.
SEVERITY = (ExitCode.COMPLETED, ExitCode.INTERRUPTED, ExitCode.INVALID_INPUT, ExitCode.SOFTWARE_ERROR,
            ExitCode.STORAGE_FAILURE, ExitCode.INSTRUMENT_FAULT, ExitCode.SAFETY_TRIP)


def most_serious(codes) -> ExitCode:
    """The most serious of exit codes (COMPLETED for none)."""
    return max((ExitCode(code) for code in codes), key=SEVERITY.index, default=ExitCode.COMPLETED)


EXIT_CODE_HELP = """\b
Exit codes:
  0    completed
  1    software error (a bug; outputs were switched off)
  2    invalid input (protocol, bench or option; nothing was switched on)
  3    safety trip (outputs off; limit, value and time recorded)
  4    instrument fault (outputs off; fault recorded)
  5    storage failure: the run folder could not be written (outputs off; data so far kept)
  130  interrupted by Ctrl+C or SIGTERM (outputs off; data kept)"""


class StackcyclerError(Exception):
    """Base of every error stackcycler reports to a user."""

    exit_code: ExitCode = ExitCode.SOFTWARE_ERROR


class InvalidInput(StackcyclerError):
    """A file, field or option is wrong. The message names it and what would be accepted."""

    exit_code = ExitCode.INVALID_INPUT


class UnreadableInput(InvalidInput):
    """A file that cannot be found, read or parsed at all (as opposed to one with wrong contents)."""


class InstrumentError(StackcyclerError):
    """An instrument did not answer, answered nonsense, reported an error or left its expected state."""

    exit_code = ExitCode.INSTRUMENT_FAULT


class InstrumentBusy(InstrumentError):
    """Another run holds the instrument; nothing was sent to it."""


class InstrumentLinkError(InstrumentError):
    """No contact with the instrument: the connection dropped (a cable, a switch, a power cut)."""


class InstrumentTimeout(InstrumentLinkError):
    """No reply arrived within the transport's timeout."""


class StorageFailure(StackcyclerError):
    """The run folder cannot be written: a full disk, a removed or read-only folder."""

    exit_code = ExitCode.STORAGE_FAILURE


class SafetyTrip(StackcyclerError):
    """A safety-envelope limit was exceeded; carries what tripped."""

    exit_code = ExitCode.SAFETY_TRIP

    def __init__(self, limit: str, value: float, threshold: float, test_time_s: float, where: str = "stack"):
        self.limit = limit
        self.value = value
        self.threshold = threshold
        self.test_time_s = test_time_s
        self.where = where
        super().__init__(f"{limit} on {where}: measured {value:.6g}, limit {threshold:.6g} "
                         f"at test time {test_time_s:.1f} s")


class Interrupted(StackcyclerError):
    """The operator or the system asked the run to stop (Ctrl+C, SIGTERM)."""

    exit_code = ExitCode.INTERRUPTED
