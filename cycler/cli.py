"""The `cycler` command: what a technician types."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from stackcycler import __version__
from stackcycler.protocols import builtin_protocols, load_protocol

from .bench import builtin_benches, load_bench
from .errors import EXIT_CODE_HELP, ExitCode, StackcyclerError
from .live import LiveReporter, PlainReporter
from .plan import Plan, format_duration
from .runner import StopRequest
from .session import RunRequest, execute, prepare, stop_on_signals

console = Console(highlight=False, soft_wrap=True)
errors = Console(stderr=True, highlight=False, soft_wrap=True)


def _fail(error: StackcyclerError) -> None:
    errors.print(f"[bold red]error:[/bold red] {escape(str(error))}")
    sys.exit(int(error.exit_code))


def _speed(value: str) -> float | None:
    if value.strip().lower() == "max":
        return None
    try:
        speed = float(value)
    except ValueError:
        speed = math.nan
    if not speed > 0 or not math.isfinite(speed):
        raise click.BadParameter(f"'{value}': use 'max' or a positive real-time multiplier such as 1 or 60")
    return speed


def _overrides(pairs: tuple[str, ...]) -> dict[str, float]:
    values = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        try:
            values[name.strip()] = float(text)
        except ValueError:
            raise click.BadParameter(f"'{pair}': write NAME=NUMBER, e.g. charge_rate_C=0.5", param_hint="--set")
        if not sep or not name.strip():
            raise click.BadParameter(f"'{pair}': write NAME=NUMBER", param_hint="--set")
    return values


@click.group(epilog=EXIT_CODE_HELP)
@click.version_option(__version__, package_name="stackcycler", prog_name="cycler")
def main() -> None:
    """stackcycler: run charge/discharge protocols on battery test benches, safely."""


bench_option = click.option("--bench", default="sim", show_default=True,
                            help="Built-in bench name or bench file (YAML).")
channel_option = click.option("--channel", default=None, help="Channel of the bench (default: its first).")
set_option = click.option("--set", "overrides", multiple=True, metavar="NAME=VALUE",
                          help="Override a protocol parameter (repeatable).")


@main.command(epilog=EXIT_CODE_HELP)
@click.argument("protocol")
@bench_option
@channel_option
@click.option("--speed", default=None, metavar="max|N",
              help="Simulated benches only: 'max' (default) runs as fast as possible, 1 in real time, N times faster.")
@click.option("--runs-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"),
              show_default=True, envvar="CYCLER_RUNS_DIR", help="Where run folders are created.")
@click.option("--operator", default=None, help="Who runs the test (default: your user name).")
@click.option("--dut-id", default=None, help="Identifier of the DUT on the channel (default: from the bench).")
@set_option
def run(protocol, bench, channel, speed, runs_dir, operator, dut_id, overrides):
    """Run PROTOCOL (a built-in name or a file) on a bench.

    Prints live progress, then the run folder and a one-line result."""
    request = RunRequest(protocol=protocol, bench=bench, channel=channel,
                         speed=_speed(speed) if speed is not None else None,
                         runs_dir=runs_dir, dut_id=dut_id, overrides=_overrides(overrides))
    if operator:
        request.operator = operator
    try:
        prepared = prepare(request)
        title = f"{prepared.plan.protocol.name} on {prepared.bench.config.name}/{prepared.channel_name}"
        reporter = LiveReporter(console, title) if console.is_terminal else PlainReporter()
        if not console.is_terminal:
            print(f"stackcycler {__version__}: {title}", flush=True)
        stop = StopRequest()
        with stop_on_signals(stop):
            result = execute(prepared, reporter, stop)
    except StackcyclerError as error:
        _fail(error)
        return
    except KeyboardInterrupt:  # before the runner took over: instruments were being connected
        errors.print("[bold red]INTERRUPTED[/bold red] while connecting the bench; outputs were left off")
        sys.exit(int(ExitCode.INTERRUPTED))
    outcome = result.outcome
    console.print(f"run folder: {outcome.folder}", markup=False)
    if outcome.exit_code == ExitCode.COMPLETED:
        console.print(f"result: {result.summary_line}", markup=False)
    else:
        label = {"tripped": "SAFETY TRIP", "faulted": "INSTRUMENT FAULT", "interrupted": "INTERRUPTED",
                 "invalid": "INVALID INPUT", "error": "SOFTWARE ERROR"}.get(outcome.state, outcome.state)
        errors.print(f"[bold red]{label}:[/bold red] {escape(outcome.reason)}")
        errors.print("outputs: " + ("off (confirmed)" if outcome.outputs_confirmed_off
                                    else "[bold red]NOT CONFIRMED OFF: check the bench now[/bold red]"))
        console.print(f"data up to the stop: {result.summary_line}", markup=False)
    sys.exit(int(outcome.exit_code))


def print_plan(plan: Plan, bench_name: str, channel_name: str) -> None:
    dut = plan.dut
    console.print(f"[bold]{plan.protocol.name}[/bold] ({plan.protocol_path}) on {bench_name}/{channel_name}, "
                  f"DUT {dut.id}: {dut.layers} layers, "
                  f"{dut.nominal_capacity_Ah if dut.nominal_capacity_Ah else '?'} Ah nominal")
    if plan.protocol.description:
        console.print(plan.protocol.description.strip())
    if plan.parameters:
        console.print("parameters: " + ", ".join(f"{k} = {v:g}" for k, v in plan.parameters.items()))
    rows = []
    for step in plan.steps:
        ends = "; ".join(e.describe() for e in step.ends[:-1]) or "—"
        bound = format_duration(step.time_bound_s) + (" (default)" if step.time_bound_is_default else "")
        rows.append((str(step.number), step.name, step.setpoint(), ends, bound, "≈ " + format_duration(step.expected_s)))
    if console.is_terminal:
        table = Table()
        for header in ("#", "step", "setpoint", "ends when (first wins)", "time bound", "expected"):
            table.add_column(header)
        for row in rows:
            table.add_row(*row)
        console.print(table)
    else:  # one line a step: readable in logs and diffs
        for number, name, setpoint, ends, bound, expected in rows:
            console.print(f"{number:>3}. {name}: {setpoint}; ends when {ends}; time bound {bound}; expected {expected}",
                          markup=False)
    console.print(f"expected duration ≈ {format_duration(plan.expected_duration_s)}; "
                  f"at most {format_duration(plan.worst_case_duration_s)} (every time bound reached)")
    armed = plan.envelope.armed()
    console.print("safety limits (always armed, trip to outputs off): "
                  + (", ".join(f"{k} = {v:g}" for k, v in armed.items()) or "none")
                  + f"; debounce {plan.envelope.debounce_s:g} s")
    record = f"record every {plan.record_time_s:g} s"
    if plan.record_voltage_V is not None:
        record += f" or ΔV ≥ {plan.record_voltage_V:g} V"
    if plan.record_current_A is not None:
        record += f" or ΔI ≥ {plan.record_current_A:g} A"
    console.print(record + ", and at every step start and end")


@main.command(epilog=EXIT_CODE_HELP)
@click.argument("protocol")
@bench_option
@channel_option
@set_option
def plan(protocol, bench, channel, overrides):
    """Show what PROTOCOL would do on a bench: steps, setpoints, ends, time bounds, limits.

    Nothing is connected or switched on."""
    try:
        prepared = prepare(RunRequest(protocol=protocol, bench=bench, channel=channel,
                                      overrides=_overrides(overrides)))
    except StackcyclerError as error:
        _fail(error)
        return
    print_plan(prepared.plan, prepared.bench.config.name, prepared.channel_name)


@main.command()
def protocols():
    """List the built-in protocols."""
    for name, path in sorted(builtin_protocols().items()):
        try:
            description = load_protocol(str(path)).model.description.strip().splitlines()[0]
        except (StackcyclerError, IndexError):
            description = ""
        console.print(f"{name:24s} {description}")


@main.command()
def benches():
    """List the built-in benches."""
    for name in sorted(builtin_benches()):
        try:
            description = load_bench(name).config.description.strip().splitlines()[0]
        except (StackcyclerError, IndexError):
            description = ""
        console.print(f"{name:24s} {description}")
