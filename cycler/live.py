"""Progress while a run goes: a live view on a terminal, plain timestamped lines otherwise.

Both refresh on wall time, not per tick, so a simulated run at full speed is not slowed by
its own display.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from typing import TextIO

import numpy as np
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .runner import RunOutcome, RunStatus
from .sample import Sample

LIVE_REFRESH_S = 0.2
PLAIN_INTERVAL_S = 30.0


def clock_text(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def layers_text(sample: Sample) -> str | None:
    """'3.712-3.745 V, spread 33 mV, lowest layer 07' for a stack with per-layer inputs."""
    layers = sample.layer_voltages_V
    if layers.size == 0 or np.isnan(layers).all():
        return None
    low = int(np.nanargmin(layers))
    spread_mV = (np.nanmax(layers) - np.nanmin(layers)) * 1000
    return (f"{np.nanmin(layers):.3f}-{np.nanmax(layers):.3f} V, spread {spread_mV:.0f} mV, "
            f"lowest layer {low + 1:02d}")


def sensors_text(sample: Sample) -> str:
    parts = [f"{name} {value:.1f} degC" for name, value in sample.temperatures_degC.items()]
    if sample.pressure_MPa is not None:
        parts.append(f"pressure {sample.pressure_MPa:.2f} MPa")
    return ", ".join(parts)


def status_line(status: RunStatus) -> str:
    sample = status.sample
    parts = [f"step {status.step_count}/{status.steps_total} {status.step.name}",
             f"V {sample.voltage_V:.3f} V", f"I {sample.current_A:+.4f} A",
             f"step charge {status.step_charge_Ah:+.4f} Ah", f"test time {clock_text(sample.test_time_s)}"]
    layers = layers_text(sample)
    if layers:
        parts.append(f"layers {layers}")
    if sensors_text(sample):
        parts.append(sensors_text(sample))
    parts += [f"step ~{status.step_progress:.0%}", f"overall ~{status.overall_progress:.0%}"]
    return " | ".join(parts)


class PlainReporter:
    """Timestamped lines for logs: every step start, then every PLAIN_INTERVAL_S of wall time."""

    def __init__(self, stream: TextIO | None = None, interval_s: float = PLAIN_INTERVAL_S, prefix: str = ""):
        self.stream = stream  # None: whatever sys.stdout is when a line is printed
        self.interval_s = interval_s
        self.prefix = prefix  # e.g. the channel's name, when several run at once
        self._last = 0.0

    def _print(self, text: str) -> None:
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        print(f"{stamp} {self.prefix}{text}", file=self.stream or sys.stdout, flush=True)

    def step_started(self, status: RunStatus) -> None:
        self._print(f"start step {status.step_count}/{status.steps_total} {status.step.name}: "
                    f"{status.step.setpoint()}; ends on " + ", ".join(e.describe() for e in status.step.ends))
        self._last = time.monotonic()

    def tick(self, status: RunStatus) -> None:
        if time.monotonic() - self._last >= self.interval_s:
            self._print(status_line(status))
            self._last = time.monotonic()

    def finished(self, outcome: RunOutcome) -> None:
        pass


class LiveReporter:
    """A rich live panel on a terminal."""

    def __init__(self, console: Console, title: str):
        self.console = console
        self.title = title
        self._live: Live | None = None
        self._last = 0.0

    def _render(self, status: RunStatus) -> Group:
        table = Table.grid(padding=(0, 2))
        table.add_row(Text(f"step {status.step_count}/{status.steps_total}", style="bold"),
                      Text(f"{status.step.name}: {status.step.setpoint()}"), "")
        sample = status.sample
        table.add_row("voltage", f"{sample.voltage_V:9.3f} V", "")
        table.add_row("current", f"{sample.current_A:+9.4f} A", "")
        table.add_row("step charge", f"{status.step_charge_Ah:+9.4f} Ah", "")
        layers = layers_text(sample)
        if layers:
            table.add_row("layers", layers, "")
        if sensors_text(sample):
            table.add_row("sensors", sensors_text(sample), "")
        table.add_row("test time", clock_text(status.test_time_s), "")
        table.add_row("step", ProgressBar(total=1.0, completed=status.step_progress, width=40),
                      f"~{status.step_progress:.0%}")
        table.add_row("overall", ProgressBar(total=1.0, completed=status.overall_progress, width=40),
                      f"~{status.overall_progress:.0%}")
        return Group(Text(self.title, style="bold cyan"), table)

    def step_started(self, status: RunStatus) -> None:
        if self._live is None:
            self._live = Live(self._render(status), console=self.console, refresh_per_second=8, transient=False)
            self._live.start()
        self.console.print(f"[dim]{clock_text(status.test_time_s)}[/dim] step {status.step_count}: "
                           f"{status.step.name} ({status.step.setpoint()})")
        self._live.update(self._render(status))

    def tick(self, status: RunStatus) -> None:
        now = time.monotonic()
        if self._live is not None and now - self._last >= LIVE_REFRESH_S:
            self._live.update(self._render(status))
            self._last = now

    def finished(self, outcome: RunOutcome) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


class SilentReporter:
    def step_started(self, status: RunStatus) -> None:
        pass

    def tick(self, status: RunStatus) -> None:
        pass

    def finished(self, outcome: RunOutcome) -> None:
        pass
