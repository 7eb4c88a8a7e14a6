"""One run at a time per instrument: refused with the holder's name, released when a holder dies."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from stackcycler import session
from stackcycler.errors import InstrumentBusy
from stackcycler.live import SilentReporter
from stackcycler.locks import InstrumentLocks, lock_path


@pytest.fixture
def lock_folder(tmp_path, monkeypatch):
    folder = tmp_path / "locks"
    monkeypatch.setenv("CYCLER_LOCK_DIR", str(folder))
    return folder


def test_a_second_holder_is_refused_with_the_name_of_the_first(lock_folder):
    with InstrumentLocks("run 20261123-A") as first:
        first.acquire("supply", "TCPIP::10.0.0.5::5025::SOCKET")
        with pytest.raises(InstrumentBusy, match=r"instrument 'psu' .* is in use by run 20261123-A \(pid \d+"):
            InstrumentLocks("run B").acquire("psu", "tcpip::10.0.0.5::5025::socket")  # the same, written otherwise
    with InstrumentLocks("run B") as second:
        second.acquire("supply", "TCPIP::10.0.0.5::5025::SOCKET")  # free once released


def test_the_slots_of_one_mainframe_are_locked_once_by_their_program(lock_folder):
    with InstrumentLocks("run 4ch") as locks:
        locks.acquire("analyzer", "USB0::0x2A8D::0x0F02::MY1::INSTR")
        locks.acquire("analyzer2", "usb0::0x2a8d::0x0f02::my1")  # its own lock, not somebody else's
        with pytest.raises(InstrumentBusy, match="instrument 'analyzer3' .* is in use by run 4ch"):
            InstrumentLocks("run other").acquire("analyzer3", "USB0::0x2A8D::0x0F02::MY1::INSTR")


def test_the_same_instrument_written_two_ways_is_one_lock(lock_folder):
    assert lock_path("USB0::0x2A8D::0x5101::MY1::INSTR", lock_folder) == lock_path("usb0::0x2a8d::0x5101::my1", lock_folder)
    assert lock_path("ASRL/dev/ttyUSB0::INSTR", lock_folder) != lock_path("ASRL/dev/ttyUSB1::INSTR", lock_folder)


def test_a_lock_left_by_a_killed_process_is_released_and_noted(lock_folder):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        from stackcycler.locks import InstrumentLocks
        locks = InstrumentLocks("run crashed-one")
        locks.acquire("supply", "ASRL/dev/ttyUSB0::INSTR")
        print("held", flush=True)
        time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(InstrumentBusy, match="in use by run crashed-one"):
            InstrumentLocks("run next").acquire("supply", "ASRL/dev/ttyUSB0::INSTR")
    finally:
        holder.kill()
        holder.wait(timeout=30)
    locks = InstrumentLocks("run next")
    locks.acquire("supply", "ASRL/dev/ttyUSB0::INSTR")  # the OS released it with the process
    assert len(locks.stale) == 1 and "run crashed-one" in locks.stale[0] and "gone" in locks.stale[0]
    locks.release_all()


@pytest.fixture
def locking_simulated_instruments(monkeypatch, lock_folder):
    """Lock the simulated bench's instruments as if they were real ones, shared between runs."""
    monkeypatch.setattr(session, "instruments_to_lock",
                        lambda config, names: {n: f"TCPIP::bench-7::{n}" for n in sorted(names)})


class StartAnotherRun(SilentReporter):
    """While one run goes on, a second run is started on the same instruments."""

    def __init__(self, start):
        self.start, self.refusal = start, None

    def tick(self, status):
        if status.test_time_s >= 100 and self.refusal is None:
            try:
                self.start()
            except InstrumentBusy as busy:
                self.refusal = busy


def test_a_second_run_on_the_same_instruments_is_refused_naming_the_first(run_protocol,
                                                                           locking_simulated_instruments, tmp_path):
    second = StartAnotherRun(lambda: run_protocol())
    first = run_protocol(reporter=second)
    assert first.outcome.state == "completed"
    assert second.refusal is not None
    assert f"run {first.outcome.folder.resolve()}" in str(second.refusal)
    assert len(list((tmp_path / "runs").iterdir())) == 1  # the refused run made no folder
    assert run_protocol().outcome.state == "completed"  # and the instruments are free after the first


def test_a_run_whose_instruments_are_held_connects_to_nothing(run_protocol, locking_simulated_instruments, tmp_path):
    with InstrumentLocks("run someone-else") as held:
        held.acquire("daq", "TCPIP::bench-7::daq")
        with pytest.raises(InstrumentBusy, match="instrument 'daq' .* in use by run someone-else"):
            run_protocol()
    assert not (tmp_path / "runs").exists()
