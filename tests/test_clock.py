"""The virtual clock of simulated benches: --speed max, 1 (real time) and N, and stop requests.

Real time is faked here (tests never depend on the wall clock): `time.monotonic` and
`time.sleep` are replaced by a counter that only moves when something sleeps.
"""

from __future__ import annotations

import pytest

from stackcycler import clock as clock_module
from stackcycler.clock import VirtualClock


class FakeTime:
    def __init__(self):
        self.now = 1000.0
        self.slept = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds


@pytest.fixture
def fake_time(monkeypatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(clock_module.time, "monotonic", fake.monotonic)
    monkeypatch.setattr(clock_module.time, "sleep", fake.sleep)
    return fake


def test_speed_max_advances_virtual_time_without_sleeping(fake_time):
    clock = VirtualClock(speed=None)
    clock.sleep_until(3600.0)
    assert clock.now() == 3600.0 and fake_time.slept == 0.0


@pytest.mark.parametrize("speed, real_seconds", [(1.0, 10.0), (2.0, 5.0), (60.0, 10.0 / 60)])
def test_speed_n_sleeps_virtual_time_divided_by_n(fake_time, speed, real_seconds):
    clock = VirtualClock(speed=speed)
    clock.sleep_until(10.0)
    assert clock.now() == 10.0
    assert fake_time.slept == pytest.approx(real_seconds)


def test_a_stop_request_cuts_the_sleep_short_and_time_does_not_jump(fake_time):
    clock = VirtualClock(speed=1.0)
    stop_after = fake_time.now + 0.3
    clock.sleep_until(60.0, should_stop=lambda: fake_time.now >= stop_after)
    assert clock.now() == 0.0  # virtual time did not pretend the minute passed
    assert fake_time.slept == pytest.approx(0.3, abs=0.06)  # woke within one polling slice


def test_unix_time_follows_virtual_time():
    clock = VirtualClock(speed=None, start_unix=1_800_000_000.0)
    clock.sleep_until(90.0)
    assert clock.unix_time() == 1_800_000_090.0


def test_sleeping_into_the_past_does_nothing(fake_time):
    clock = VirtualClock(speed=1.0)
    clock.sleep_until(5.0)
    clock.sleep_until(4.0)
    assert clock.now() == 5.0


def test_speed_must_be_positive():
    with pytest.raises(ValueError, match="speed must be positive"):
        VirtualClock(speed=0.0)
