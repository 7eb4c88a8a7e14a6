"""The `cycler` command: what a technician types."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape

from stackcycler import __version__
from stackcycler.drivers.transport import SIM_SCHEME
from stackcycler.protocols import builtin_protocols, load_protocol

from .bench import builtin_benches, load_bench
from .check import CHECK_EXIT_HELP, check_command
from .errors import EXIT_CODE_HELP, ExitCode, StackcyclerError, most_serious
from .live import LiveReporter, PlainReporter
from .operation import find_run, list_runs, run_state, send_request, status_lines, status_table
from .errors import InvalidInput, UnreadableInput
from .export import dump_protocol, to_pybamm
from .planview import plan_lines, plan_to_dict
from .protocol import Loop
from .runner import StopRequest
from .lab import lab_presence
from .session import (RunRequest, check_against_instruments, dry_run, execute, execute_together, prepare, resume,
                      resume_together, stop_on_signals)

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
@click.argument("protocols", nargs=-1, required=True, metavar="PROTOCOL | CHANNEL=PROTOCOL...")
@bench_option
@click.option("--channel", "channels", multiple=True,
              help="Channel of the bench (default: its first); repeat it, or say 'all', to run several at once.")
@click.option("--speed", default=None, metavar="max|N",
              help="Simulated benches only: 'max' (default) runs as fast as possible, 1 in real time, N times faster.")
@click.option("--runs-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"),
              show_default=True, envvar="CYCLER_RUNS_DIR", help="Where run folders are created.")
@click.option("--operator", default=None, help="Who runs the test (default: your user name).")
@click.option("--dut-id", default=None, help="Identifier of the DUT on the channel (default: from the bench).")
@set_option
def run(protocols, bench, channels, speed, runs_dir, operator, dut_id, overrides):
    """Run PROTOCOL (a built-in name or a file) on a bench.

    Several channels run at once, each with its own run folder and safety: the same protocol
    with `--channel a --channel b` (or `--channel all`), or one protocol per channel as
    `a=capacity-check b=hppc`. Prints live progress, then each run folder and a one-line result."""
    try:
        assignments = _channel_assignments(protocols, channels, bench)
        requests = []
        for channel, protocol in assignments:
            request = RunRequest(protocol=protocol, bench=bench, channel=channel,
                                 speed=_speed(speed) if speed is not None else None,
                                 runs_dir=runs_dir, dut_id=dut_id, overrides=_overrides(overrides))
            if operator:
                request.operator = operator
            requests.append(request)
        if len(requests) > 1 and dut_id:
            raise InvalidInput("--dut-id names the DUT of one channel; give each channel's DUT in the bench file")
        prepared = [prepare(request) for request in requests]
        stop = StopRequest()
        if len(prepared) == 1:
            only = prepared[0]
            reporter = _reporter(f"{only.plan.protocol.name} on {only.bench.config.name}/{only.channel_name}")
            with stop_on_signals(stop), lab_presence(runs_dir, _lab_log):
                result = execute(only, reporter, stop)
            _report(result)
            return
        print(f"stackcycler {__version__}: " + ", ".join(f"{p.plan.protocol.name} on {p.channel_name}" for p in prepared),
              flush=True)
        reporters = [PlainReporter(prefix=f"[{p.channel_name}] ") for p in prepared]
        with stop_on_signals(stop), lab_presence(runs_dir, _lab_log):
            results = execute_together(prepared, reporters, stop)
    except StackcyclerError as error:
        _fail(error)
        return
    except KeyboardInterrupt:  # before the runner took over: instruments were being connected
        errors.print("[bold red]INTERRUPTED[/bold red] while connecting the bench; outputs were left off")
        sys.exit(int(ExitCode.INTERRUPTED))
    for channel_result in results:
        _report(channel_result, leave=False)
    sys.exit(int(most_serious(r.outcome.exit_code for r in results)))


def _channel_assignments(protocols: tuple[str, ...], channels: tuple[str, ...], bench: str) -> list[tuple]:
    """[(channel or None, protocol)] from `P --channel a --channel b`, `P --channel all` or `a=P b=Q`."""
    pairs = [text.partition("=") for text in protocols]
    if all(sep for _, sep, _ in pairs):
        if channels:
            raise InvalidInput("give channels either as CHANNEL=PROTOCOL or with --channel, not both")
        return [(channel, protocol) for channel, _, protocol in pairs]
    if len(protocols) != 1 or any(sep for _, sep, _ in pairs):
        raise InvalidInput("give one PROTOCOL (with --channel for the channels), or CHANNEL=PROTOCOL for each channel")
    if channels == ("all",):
        channels = tuple(load_bench(bench).config.channels)
    return [(channel, protocols[0]) for channel in channels] or [(None, protocols[0])]


def _report(result, leave: bool = True) -> None:
    """The end of a run or a resume, for the technician and the script: folder, result, exit code."""
    outcome = result.outcome
    console.print(f"run folder: {outcome.folder}", markup=False)
    if outcome.exit_code == ExitCode.COMPLETED:
        console.print(f"result: {result.summary_line}", markup=False)
    else:
        label = {"tripped": "SAFETY TRIP", "faulted": "INSTRUMENT FAULT", "interrupted": "INTERRUPTED",
                 "invalid": "INVALID INPUT", "error": "SOFTWARE ERROR",
                 "storage_failure": "STORAGE FAILURE"}.get(outcome.state, outcome.state)
        errors.print(f"[bold red]{label}:[/bold red] {escape(outcome.reason)}")
        errors.print("outputs: " + ("off (confirmed)" if outcome.outputs_confirmed_off
                                    else "[bold red]NOT CONFIRMED OFF: check the bench now[/bold red]"))
        console.print(f"data up to the stop: {result.summary_line}", markup=False)
    if leave:
        sys.exit(int(outcome.exit_code))


def _lab_log(text: str) -> None:
    """What a lab host's background work says (database outages, publishing), on standard error."""
    errors.print(f"lab: {text}", markup=False)


def _reporter(title: str):
    if console.is_terminal:
        return LiveReporter(console, title)
    print(f"stackcycler {__version__}: {title}", flush=True)
    return PlainReporter()


@main.command("resume", epilog=EXIT_CODE_HELP)
@click.argument("run_folders", nargs=-1, required=True, metavar="RUN_FOLDER...",
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--yes", is_flag=True, help="Continue without asking (needed when there is no terminal).")
@click.option("--force", is_flag=True, help="Continue even though the DUT is not where the run left it.")
@click.option("--speed", default=None, metavar="max|N",
              help="Simulated runs only: continue at this speed instead of the run's own.")
def resume_command(run_folders, yes, force, speed):
    """Continue a crashed or interrupted run from its checkpoint: the same step, loops, cycle and counts.

    Shows where it would continue and the DUT now against the DUT then, and asks first.
    Declining switches nothing on (exit code 130).

    Several run folders of one bench (the channels of one `cycler run --channel a --channel b`)
    continue together, as they ran: one preview per channel, one question for all, and nothing is
    switched on anywhere if any channel's DUT is not where its run left it (unless --force)."""

    def confirm(previews) -> bool:
        for preview in previews:
            console.print(preview.text(), markup=False)
        if yes:
            return True
        if not sys.stdin.isatty():
            raise InvalidInput("resume asks before it continues; with no terminal to ask on, pass --yes")
        return click.confirm("continue the run?" if len(previews) == 1
                             else f"continue the {len(previews)} runs together?", default=False)

    try:
        stop = StopRequest()
        with stop_on_signals(stop), lab_presence(run_folders[0].parent, _lab_log):
            speed_choice = {} if speed is None else {"speed": _speed(speed)}
            if len(run_folders) == 1:
                only = run_folders[0]
                result = resume(only, _reporter(f"resume {only.name}"), lambda preview: confirm([preview]), stop,
                                force, **speed_choice)
                results = None if result is None else [result]
            else:
                print(f"stackcycler {__version__}: resume " + ", ".join(f.name for f in run_folders), flush=True)
                results = resume_together(list(run_folders), lambda channel: PlainReporter(prefix=f"[{channel}] "),
                                          confirm, stop, force, **speed_choice)
    except StackcyclerError as error:
        _fail(error)
        return
    except KeyboardInterrupt:
        errors.print("[bold red]INTERRUPTED[/bold red] while reconnecting the bench; outputs were left off")
        sys.exit(int(ExitCode.INTERRUPTED))
    if results is None:
        console.print("not resumed; nothing was switched on", markup=False)
        sys.exit(int(ExitCode.INTERRUPTED))
    if len(results) == 1:
        _report(results[0])
        return
    for result in results:
        _report(result, leave=False)
    sys.exit(int(most_serious(r.outcome.exit_code for r in results)))


@main.command(epilog=EXIT_CODE_HELP)
@click.argument("protocol")
@bench_option
@channel_option
@set_option
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON (schema: docs/plan-json.md).")
@click.option("--no-simulation", is_flag=True,
              help="On a simulated bench, skip the quick dry run that estimates the duration.")
def plan(protocol, bench, channel, overrides, as_json, no_simulation):
    """Show what PROTOCOL would do on a bench: steps, setpoints, ends, time bounds, loops, limits.

    Nothing is switched on. On a simulated bench a quick dry run on the bench's model (10 s ticks,
    at most 10 s of your time) gives the expected duration and says if a limit would trip."""
    try:
        prepared = prepare(RunRequest(protocol=protocol, bench=bench, channel=channel,
                                      overrides=_overrides(overrides)))
        simulated = None if no_simulation else dry_run(prepared)
    except StackcyclerError as error:
        _fail(error)
        return
    expected = simulated.duration_s if simulated is not None else None
    names = (prepared.bench.config.name, prepared.channel_name)
    if as_json:
        document = plan_to_dict(prepared.plan, *names, expected_s=expected)
        if simulated is not None:
            document["duration"]["dry_run"] = {"state": simulated.state, "reason": simulated.reason}
        print(json.dumps(document, indent=1))
        return
    for line in plan_lines(prepared.plan, *names, expected_s=expected):
        console.print(line, markup=False)
    if simulated is not None and simulated.state not in ("completed", "unfinished"):
        errors.print(f"[bold yellow]dry run on the simulated bench {simulated.state}:[/bold yellow] "
                     f"{escape(simulated.reason)}")
    elif simulated is not None and simulated.state == "unfinished":
        console.print(f"(dry run {simulated.reason}: the expected duration is an estimate)", markup=False)


VALIDATE_EXIT_HELP = """\b
Exit codes:
  0  valid
  1  invalid: every problem is listed, with file, line and field
  2  unreadable: no such protocol or bench, not UTF-8, not YAML/JSON"""


@main.command(epilog=VALIDATE_EXIT_HELP)
@click.argument("protocol")
@click.option("--bench", default=None, help="Also check it against this bench and its DUT (built-in name or file).")
@channel_option
@set_option
def validate(protocol, bench, channel, overrides):
    """Check PROTOCOL (a built-in name or a file) without running it."""
    try:
        loaded = load_protocol(protocol)
        if bench is None:
            steps = sum(1 for _, item, _ in loaded.model.walk() if not isinstance(item, Loop))
            console.print(f"valid: {loaded.path} ({steps} steps)", markup=False)
            return
        prepared = prepare(RunRequest(protocol=protocol, bench=bench, channel=channel,
                                      overrides=_overrides(overrides)))
        problems, note = check_against_instruments(prepared)
        if problems:
            raise InvalidInput("\n".join(f"{loaded.path}: {p}" for p in problems))
    except UnreadableInput as error:
        errors.print(f"[bold red]unreadable:[/bold red] {escape(str(error))}")
        sys.exit(2)
    except InvalidInput as error:
        errors.print(f"[bold red]invalid:[/bold red] {escape(str(error))}")
        sys.exit(1)
    console.print(f"valid: {loaded.path} on {prepared.bench.config.name}/{prepared.channel_name} "
                  f"({len(prepared.plan.steps)} steps); {note}", markup=False)


@main.command("export-protocol", epilog=EXIT_CODE_HELP)
@click.argument("protocol")
@click.option("--to", "target", type=click.Choice(["json", "yaml", "pybamm"]), required=True,
              help="json/yaml: the validated protocol (round-trips losslessly); pybamm: a PyBaMM experiment "
                   "(Python), as bound to the bench's DUT.")
@bench_option
@channel_option
@set_option
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write here instead of to standard output.")
def export_protocol(protocol, target, bench, channel, overrides, output):
    """Write PROTOCOL in another format."""
    try:
        if target == "pybamm":
            prepared = prepare(RunRequest(protocol=protocol, bench=bench, channel=channel,
                                          overrides=_overrides(overrides)))
            text = to_pybamm(prepared.plan)
        else:
            text = dump_protocol(load_protocol(protocol).model, target)
    except StackcyclerError as error:
        _fail(error)
        return
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
        console.print(f"written {output}", markup=False)


runs_dir_option = click.option("--runs-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"),
                               show_default=True, envvar="CYCLER_RUNS_DIR", help="Where run folders are.")


@main.command()
@click.argument("run_name", metavar="[RUN]", required=False)
@runs_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON, for scripts.")
@click.option("--lab", "whole_lab", is_flag=True,
              help="Every run in the lab, from the run catalog (needs lab.toml); a silent host is flagged.")
def status(run_name, runs_dir, as_json, whole_lab):
    """Show the runs on this machine, or one RUN in detail (a run folder, or a piece of its name).

    Works from another terminal while runs go on; a run whose process is gone shows as crashed."""
    if whole_lab:
        _lab_status(runs_dir, as_json)
        return
    try:
        runs = [run_state(find_run(run_name, runs_dir))] if run_name else list_runs(runs_dir)
    except StackcyclerError as error:
        _fail(error)
        return
    if as_json:
        documents = [{"run": str(r.folder), "state": r.state, "reason": r.meta.get("reason"),
                      "protocol": r.meta.get("protocol", {}).get("name"), "status": r.status} for r in runs]
        print(json.dumps(documents[0] if run_name else documents, indent=1))
        return
    for line in status_lines(runs[0]) if run_name else status_table(runs):
        console.print(line, markup=False)


@main.command(epilog=CHECK_EXIT_HELP)
@click.argument("run_name", metavar="RUN")
@click.option("--expect", "expectations", multiple=True, required=True, metavar="NAME=VALUE",
              help="An expected result, repeatable: capacity_Ah=2.0±2%, energy_Wh=179+-1, "
                   "coulombic_efficiency>=0.99, state=completed.")
@runs_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the verdicts as JSON, for scripts.")
@click.option("--newest", is_flag=True, help="If RUN names several runs, check the newest (for nightly jobs).")
def check(run_name, expectations, runs_dir, as_json, newest):
    """Check a finished RUN's results against expected values (a regression check for nightly runs).

    RUN is a run folder, or a piece of its name as `cycler status` lists it. Capacity, energy and
    efficiencies are those of the last cycle that discharged, as the run's one-line result reports."""
    code, lines = check_command(run_name, expectations, runs_dir, as_json, newest)
    for line in lines:
        click.echo(line, err=code == 2)
    sys.exit(code)


def _data_path(path: str, runs_dir: Path) -> Path:
    """A data file or run folder as given, else a run found by (a piece of) its name: the newest
    run of that name, as after `cycler run NAME` (commands that only read may pick it)."""
    return Path(path) if Path(path).exists() else find_run(path, runs_dir, newest=True)


eol_option = click.option("--eol", "eol_retention", type=click.FloatRange(0, 1, min_open=True), default=0.8,
                          show_default=True, help="Capacity retention (of the first full cycle) that flags end of life.")


@main.command(epilog=EXIT_CODE_HELP)
@click.argument("path", metavar="PATH")
@runs_dir_option
@eol_option
@click.option("--json", "as_json", is_flag=True, help="Print one object per cycle (keys: docs/results.md).")
@click.option("--csv", "as_csv", is_flag=True, help="Print every column as CSV.")
@click.option("--mass-kg", type=click.FloatRange(0, min_open=True), default=None,
              help="DUT mass for Wh/kg (default: the bench's DUT mass_kg).")
@click.option("--volume-l", "volume_L", type=click.FloatRange(0, min_open=True), default=None,
              help="DUT volume in litres for Wh/L (default: the bench's DUT volume_L).")
def summary(path, runs_dir, eol_retention, as_json, as_csv, mass_kg, volume_L):
    """Per-cycle results of PATH: a run folder (also while it runs), a run's name, or a Battery Data
    Format CSV/Parquet file or Bitrode CSV export from another cycler.

    Charge and discharge capacity and energy, coulombic and energy efficiency, retention against
    the first full cycle, mean voltages, CV phase, temperature, pressure, time paused."""
    from .analysis import fixture_note, summarise, summary_records
    from .dataset import load as load_data
    from .summaryview import end_of_life_line, summary_table

    try:
        data = load_data(_data_path(path, runs_dir))
        table = summarise(data, eol_retention, mass_kg, volume_L)
    except StackcyclerError as error:
        _fail(error)
        return
    if as_json:
        print(json.dumps(summary_records(table), indent=1))
    elif as_csv:
        print(table.to_csv(index=False), end="")
    elif table.empty:
        console.print(f"{data.source}: no samples yet", markup=False)
    else:
        wide = console if console.is_terminal else Console(highlight=False, width=160)  # a file is not 80 wide
        wide.print(summary_table(table, f"{data.source} ({data.kind})"))
        console.print(end_of_life_line(table, eol_retention), markup=False)
        note = None if mass_kg or volume_L else fixture_note(data.dut)  # given by hand: the user knows
        if note:
            console.print(f"note: {note}", markup=False)


@main.command(epilog=EXIT_CODE_HELP)
@click.argument("path", metavar="RUN")
@click.option("--format", "fmt", type=click.Choice(["bdf-csv", "parquet", "xlsx"]), default="bdf-csv",
              show_default=True, help="Battery Data Format CSV, Parquet, or an Excel workbook.")
@click.option("--columns", default=None, metavar="LABEL,LABEL",
              help="Only these columns (the time, voltage and current always come too).")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File to write (default: BDF's recommended name, in this folder).")
@runs_dir_option
def export(path, fmt, columns, output, runs_dir):
    """Export RUN (a run folder, a run's name, or any data file `cycler summary` reads) as a Battery
    Data Format file with a metadata sidecar (x.bdf.metadata.json)."""
    from .bdf import export as export_data
    from .dataset import load as load_data

    try:
        written = export_data(load_data(_data_path(path, runs_dir)), fmt, output,
                              [c.strip() for c in columns.split(",")] if columns else None)
    except StackcyclerError as error:
        _fail(error)
        return
    for file in written:
        console.print(f"wrote {file}", markup=False)


@main.command(epilog=EXIT_CODE_HELP)
@click.argument("path", metavar="RUN")
@runs_dir_option
@eol_option
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the report (default: the run folder's report/).")
@click.option("--open", "open_it", is_flag=True, help="Open the report in a web browser.")
def report(path, runs_dir, eol_retention, output, open_it):
    """Write an HTML report of RUN (with its figures as PNG files beside it): the test, events and
    trips, the per-cycle table, voltage and current, capacity and efficiency, layer voltages,
    temperature and pressure. Works on a run that is still going."""
    from .dataset import load as load_data
    from .report import write_report

    try:
        page = write_report(load_data(_data_path(path, runs_dir)), output, eol_retention)
    except StackcyclerError as error:
        _fail(error)
        return
    console.print(f"report: {page}", markup=False)
    if open_it:
        import webbrowser
        webbrowser.open(page.resolve().as_uri())


@main.command("compare", epilog=EXIT_CODE_HELP)
@click.argument("paths", nargs=-1, required=True, metavar="RUN RUN...")
@runs_dir_option
@eol_option
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path), default=Path("compare"),
              show_default=True, help="Folder for the overlay figures and compare.csv.")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON (one object per run).")
def compare_command(paths, runs_dir, eol_retention, output, as_json):
    """Compare runs (or data files): first and last full cycle, retention, efficiencies, end of
    life, side by side; one overlay figure per metric against cycle number."""
    from pandas import isna as pd_isna

    from .compare import compare
    from .dataset import load as load_data

    try:
        table, figures = compare([load_data(_data_path(p, runs_dir)) for p in paths], output, eol_retention)
    except StackcyclerError as error:
        _fail(error)
        return
    if as_json:
        print(json.dumps(table.astype(object).where(table.notna(), None).to_dict(), indent=1))
        return
    from rich.table import Table

    shown = Table(box=None, pad_edge=False)
    shown.add_column("")
    for label in table.columns:
        shown.add_column(label, justify="right", overflow="fold")
    for metric, row in table.iterrows():
        shown.add_row(metric, *("-" if pd_isna(v) else f"{v:.5g}" for v in row))
    wide = console if console.is_terminal else Console(highlight=False, width=160)
    wide.print(shown)
    for figure in figures:
        console.print(f"figure: {figure}", markup=False)


@main.group("bench")
def bench_group() -> None:
    """Bench files and the instruments on them."""


@bench_group.command("check", epilog=EXIT_CODE_HELP)
@click.argument("bench")
def bench_check(bench):
    """Connect to every instrument of BENCH (a file or a built-in name), print its identity and
    error queue, read each channel once and check the wiring: layer voltages add up to the stack
    voltage, temperatures and pressure readable and plausible, outputs off. Switches nothing on."""
    from .benchcheck import check_bench

    try:
        report = check_bench(load_bench(bench))
    except StackcyclerError as error:
        _fail(error)
        return
    console.print(f"bench: {report.bench}", markup=False)
    for finding in report.findings:
        console.print(finding.line(), markup=False)
    failed = sum(not f.ok for f in report.findings)
    console.print(f"{len(report.findings) - failed} ok, {failed} failed", markup=False)
    sys.exit(int(report.exit_code))


@main.command("instruments", epilog=EXIT_CODE_HELP)
@click.option("--no-query", is_flag=True, help="List only; do not ask each instrument *IDN?.")
@click.option("--resource", "resources", multiple=True, metavar="VISA",
              help="Ask these resources instead of what VISA lists (e.g. a LAN instrument it cannot discover).")
def instruments(no_query, resources):
    """List the VISA resources and serial ports this PC can see, with each instrument's identity."""
    from .instruments import seen_instruments

    try:
        seen = seen_instruments(list(resources) or None, query=not no_query)
    except StackcyclerError as error:
        _fail(error)
        return
    for item in seen:
        console.print(f"{item.resource}  ({item.kind})  {item.identity}", markup=False)
    if not seen:
        console.print("no VISA resources and no serial ports found", markup=False)


def _operator_request(request: str, run_name: str, runs_dir: Path) -> None:
    try:
        folder = find_run(run_name, runs_dir)
        status = send_request(folder, request)
    except StackcyclerError as error:
        _fail(error)
        return
    done = {"pause": "paused: output off, step clock held (`cycler continue` to go on)",
            "continue": "continued",
            "stop": "stopped by operator; outputs " + ("off (confirmed)" if status.get("outputs_confirmed_off")
                                                       else "NOT CONFIRMED OFF: check the bench now")}[request]
    if request == "continue" and status.get("held_by"):
        done = "operator pause lifted; still held by " + ", ".join(status["held_by"].values())
    console.print(f"{folder.name}: {done}", markup=False)


@main.command()
@click.argument("run_name", metavar="RUN")
@runs_dir_option
def pause(run_name, runs_dir):
    """Pause a running RUN: output off (rest), step clock held; safety and logging go on."""
    _operator_request("pause", run_name, runs_dir)


@main.command("continue")
@click.argument("run_name", metavar="RUN")
@runs_dir_option
def continue_command(run_name, runs_dir):
    """Continue a paused RUN where its step stopped."""
    _operator_request("continue", run_name, runs_dir)


@main.command()
@click.argument("run_name", metavar="RUN")
@runs_dir_option
def stop(run_name, runs_dir):
    """Stop a running RUN: safe state, reason "stopped by operator" (it can be resumed later)."""
    _operator_request("stop", run_name, runs_dir)


@main.group()
def sim() -> None:
    """Simulated instruments for trying a bench's network path without hardware."""


@sim.command("serve")
@click.option("--bench", default="sim", show_default=True, help="A simulated bench (built-in name or file).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", "first_port", type=int, default=5025, show_default=True,
              help="Port of the first instrument (in name order); the others follow. 0: any free ports.")
@click.option("--bench-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a bench file that reaches the served instruments over TCP.")
@click.option("--serial", type=click.Choice(["tcp", "pty"]), default="tcp", show_default=True,
              help="Serial (binary-frame) instruments as a raw TCP byte stream (socket://) or on a "
                   "pseudo-terminal (/dev/pts/N), which pyserial opens as an RS-232 port.")
def sim_serve(bench, host, first_port, bench_out, serial):
    """Serve the bench's simulated instruments over TCP (raw SCPI sockets), in real time, until Ctrl+C.

    Each answers at TCPIP::HOST::PORT::SOCKET (serial ones at socket://HOST:PORT, or a
    pseudo-terminal with --serial pty); run protocols against them with --bench-out's file."""
    import time

    from stackcycler.drivers.sim.serve import SimulationServer
    from stackcycler.drivers.sim.simulation import build_simulation

    from .clock import WallClock

    try:
        loaded = load_bench(bench)
        if not loaded.config.simulated:
            raise InvalidInput(f"{loaded.path}: not a simulated bench (it has no simulation block)")
        server = SimulationServer(build_simulation(loaded.config.simulation, WallClock()), host, first_port, serial)
    except StackcyclerError as error:
        _fail(error)
        return
    except OSError as error:
        errors.print(f"[bold red]error:[/bold red] cannot listen on {host}:{first_port}: {error.strerror}")
        sys.exit(int(ExitCode.INVALID_INPUT))
    with server:
        for name, resource in server.resources().items():
            console.print(f"{name}: {resource}", markup=False)
        if bench_out is not None:
            bench_out.write_text(served_bench_text(loaded, server.resources()), encoding="utf-8")
            console.print(f"bench file: {bench_out}", markup=False)
        console.print("serving in real time; Ctrl+C stops", markup=False)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            console.print("stopped", markup=False)


def served_bench_text(bench, resources: dict[str, str]) -> str:
    """The bench as a real one: no simulation block, each instrument at its served address."""
    import yaml

    data = {key: value for key, value in bench.resolved.items() if key not in ("simulation", "extends")}
    data["name"] = f"{bench.config.name}-served"
    data["description"] = f"{bench.config.name}'s simulated instruments, served over TCP by `cycler sim serve`"
    # several entries may name one simulated instrument (the slots of a mainframe): each its resource
    data["instruments"] = {name: {**spec, "resource": resources[spec["resource"].removeprefix(SIM_SCHEME)]}
                           for name, spec in data["instruments"].items()}
    return yaml.safe_dump(data, sort_keys=False)


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


# --- the test queue (issue 7): what runs through the night -------------------------------------

QUEUE_EXIT_HELP = EXIT_CODE_HELP + """

\b
`cycler queue run` exits with the most serious ending among the items it ran
(a trip before a fault before ...), 130 if it was stopped, 2 if another worker runs the queue."""


def _queue(runs_dir: Path):
    from .queue import TestQueue

    try:
        return TestQueue(runs_dir)
    except StackcyclerError as error:
        _fail(error)


WORKER_LOG = "queue-worker.log"  # in the runs folder; rotated at 1 MB, five kept


def _worker_log(runs_dir: Path):
    """The worker's lines: timestamped on standard output and in a rotating log file."""
    import logging
    from datetime import datetime, timezone
    from logging.handlers import RotatingFileHandler

    runs_dir.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger(f"stackcycler.queue.{runs_dir.resolve()}")
    if not logger.handlers:
        handler = RotatingFileHandler(runs_dir / WORKER_LOG, maxBytes=1_000_000, backupCount=5, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False

    def log(text: str) -> None:
        line = f"{datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')} pid {os.getpid()} {text}"
        print(line, flush=True)
        logger.info(line)

    return log


@main.group("queue", epilog=QUEUE_EXIT_HELP)
def queue_group() -> None:
    """The test queue: load the evening's tests, let a worker run them through the night.

    The queue lives in <runs-dir>/queue.sqlite and survives a reboot; every item is validated
    against its bench when it is added. With lab.toml beside the runs folder it is the lab's
    queue, in its database (docs/lab.md)."""


@queue_group.command("add", epilog=QUEUE_EXIT_HELP)
@click.argument("protocol")
@click.option("--bench", required=True, help="Built-in bench name or bench file (YAML).")
@channel_option
@click.option("--dut-id", default=None, help="Identifier of the DUT on the channel (default: from the bench).")
@set_option
@click.option("--after", type=int, default=None, metavar="ID", help="Start only once item ID has completed.")
@click.option("--at", "at_text", default=None, metavar="HH:MM|ISO",
              help="Earliest start: 22:00 (the next time the clock shows it) or an ISO time.")
@click.option("--on-failure", type=click.Choice(["stop", "skip"]), default="stop", show_default=True,
              help="stop: a failure skips the items still queued for this bench and channel; skip: go on.")
@click.option("--on-interrupt", type=click.Choice(["leave", "resume"]), default="leave", show_default=True,
              help="If the worker dies mid-item (crash, kill, power cut): leave it for `cycler resume`, or have "
                   "the next worker resume it when the DUT is where the run left it.")
@runs_dir_option
def queue_add(protocol, bench, channel, dut_id, overrides, after, at_text, on_failure, on_interrupt, runs_dir):
    """Queue PROTOCOL on a bench, checked now exactly as `cycler run` would check it."""
    from .queue import item_line, parse_at

    try:
        at = parse_at(at_text) if at_text is not None else None
        item = _queue(runs_dir).add(protocol, bench, channel, dut_id, _overrides(overrides), after, at, on_failure,
                                    on_interrupt=on_interrupt)
    except StackcyclerError as error:
        _fail(error)
        return
    console.print(f"queued item {item.id}", markup=False)
    console.print(item_line(item), markup=False)


def _print_lines(lines: list[str], when_none: str) -> None:
    for line in lines or [when_none]:
        console.print(line, markup=False)


json_option = click.option("--json", "as_json", is_flag=True, help="Print the items as JSON, for scripts.")


def _print_items(items, line, when_none: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps([dataclasses.asdict(item) for item in items], indent=1))
    else:
        _print_lines([line(item) for item in items], when_none)


@queue_group.command("list")
@runs_dir_option
@json_option
def queue_list(runs_dir, as_json):
    """The running item and the queued ones, in the order they start (id, position, state, ...)."""
    from .queue import item_line

    try:
        items = _queue(runs_dir).pending()
    except StackcyclerError as error:
        _fail(error)
        return
    _print_items(items, item_line, "the queue is empty", as_json)


@queue_group.command("remove")
@click.argument("item_id", type=int, metavar="ID")
@runs_dir_option
def queue_remove(item_id, runs_dir):
    """Take queued item ID out of the queue (it stays in the history as removed)."""
    try:
        item = _queue(runs_dir).remove(item_id)
    except StackcyclerError as error:
        _fail(error)
        return
    console.print(f"removed item {item.id} ({item.describe()})", markup=False)


@queue_group.command("move")
@click.argument("item_id", type=int, metavar="ID")
@click.option("--to", "position", type=int, required=True, metavar="N", help="New position (1 = next to start).")
@runs_dir_option
def queue_move(item_id, position, runs_dir):
    """Move queued item ID to position N; the others keep their order."""
    from .queue import item_line

    try:
        items = _queue(runs_dir).move(item_id, position)
    except StackcyclerError as error:
        _fail(error)
        return
    for item in items:
        console.print(item_line(item), markup=False)


@queue_group.command("history")
@runs_dir_option
@json_option
def queue_history(runs_dir, as_json):
    """Items that have ended, with their run folders and reasons, oldest first."""
    from .queue import history_line

    try:
        items = _queue(runs_dir).history()
    except StackcyclerError as error:
        _fail(error)
        return
    _print_items(items, history_line, "no item has ended yet", as_json)


@queue_group.command("run", epilog=QUEUE_EXIT_HELP)
@click.option("--bench", "benches", multiple=True,
              help="Run only this bench's items (repeatable: a lab host names the benches it drives; "
                   "default: every bench's).")
@click.option("--until-empty", is_flag=True, help="Return when nothing is left that may start (for cron and CI).")
@click.option("--speed", default=None, metavar="max|N",
              help="Simulated benches only: 'max' (default) runs as fast as possible, 1 in real time, N times faster.")
@runs_dir_option
def queue_run(benches, until_empty, speed, runs_dir):
    """Work through the queue: each item in order as its start time and dependency allow, run
    exactly as `cycler run` runs it. One worker per runs folder (in a lab, one per host, each
    claiming only its --bench items); Ctrl+C or SIGTERM stops the item running (safe state) and
    the worker."""
    from .queue import history_line

    stop = StopRequest()
    log = _worker_log(runs_dir)
    try:
        with stop_on_signals(stop):
            report = _queue(runs_dir).run(bench=benches or None, until_empty=until_empty,
                                          speed=_speed(speed) if speed is not None else None, stop=stop,
                                          log=log)
    except StackcyclerError as error:
        _fail(error)
        return
    for item in report.ran:
        console.print(history_line(item), markup=False)
    if report.left:
        console.print(f"left in the queue: {len(report.left)} item(s)", markup=False)
        for item, why in report.left:
            console.print(f"  item {item.id} ({item.describe()}): waits {why}", markup=False)
    elif not report.stopped:
        console.print("the queue is empty", markup=False)
    sys.exit(int(report.exit_code))


# --- lab scale (issue 9): many bench hosts, one queue and one run catalog -----------------------

def _lab_status(runs_dir: Path, as_json: bool) -> None:
    """`cycler status --lab`: every run in the lab's catalog."""
    from .catalog import lab_status_lines
    from .lab import require_lab, view

    try:
        lab_view = view(require_lab(runs_dir))
    except StackcyclerError as error:
        _fail(error)
        return
    if as_json:
        print(json.dumps({"runs": lab_view.runs, "hosts": lab_view.hosts, "lease_s": lab_view.lease_s}, indent=1))
        return
    for line in lab_status_lines(lab_view):
        console.print(line, markup=False)


@main.group("lab", epilog=EXIT_CODE_HELP)
def lab_group() -> None:
    """Lab scale: bench hosts sharing one queue and one run catalog in PostgreSQL (docs/lab.md).

    A host is part of the lab when lab.toml beside its runs folder (or the file $CYCLER_LAB names)
    gives the database; then `cycler queue ...` works on the lab's queue, `cycler queue run --bench B`
    claims only bench B's items, runs are catalogued (`cycler status --lab`) and published."""


@lab_group.command("init")
@runs_dir_option
def lab_init(runs_dir):
    """Create the lab's schema in the database lab.toml names (once, from any host)."""
    from .lab import init, require_lab

    try:
        console.print(init(require_lab(runs_dir)), markup=False)
    except StackcyclerError as error:
        _fail(error)


@lab_group.command("migrate")
@runs_dir_option
def lab_migrate(runs_dir):
    """Upgrade the lab database's schema to this version of stackcycler (the version is recorded in it)."""
    from .lab import migrate, require_lab

    try:
        console.print(migrate(require_lab(runs_dir)), markup=False)
    except StackcyclerError as error:
        _fail(error)


@lab_group.command("publish")
@click.argument("runs", nargs=-1, metavar="[RUN]...")
@runs_dir_option
def lab_publish(runs, runs_dir):
    """Publish RUNs (run folders or names; default: every run that is due) to the lab's results
    folder as Battery Data Format Parquet with metadata, and their per-cycle summary. Queue workers
    and `cycler run` do this by themselves when a run ends; this is for catching up by hand."""
    from .lab import require_lab, sync
    from .publish import publish_folders

    try:
        config = require_lab(runs_dir)
        if config.results is None:
            raise InvalidInput("lab.toml gives no `results` folder to publish to: add results = \"/path/shared/folder\"")
        if not runs:
            sync(config, runs_dir, lambda text: console.print(text, markup=False))
            return
        folders = [Path(name) if Path(name).is_dir() else find_run(name, runs_dir) for name in runs]
        problems = publish_folders(folders, config.results, config.host)
    except StackcyclerError as error:
        _fail(error)
        return
    failed = {folder for folder, _ in problems}
    for folder in folders:
        if folder not in failed:
            console.print(f"published {folder.name}", markup=False)
    for folder, problem in problems:
        errors.print(f"[bold red]not published:[/bold red] {escape(str(folder))}: {escape(problem)}")
    if problems:
        sys.exit(int(ExitCode.STORAGE_FAILURE))


@lab_group.command("sync")
@runs_dir_option
def lab_sync(runs_dir):
    """Send this host's runs to the catalog and publish what is due, once, now (workers do it every
    few seconds; this catches a host up after it was offline)."""
    from .lab import require_lab, sync

    try:
        sent = sync(require_lab(runs_dir), runs_dir, lambda text: console.print(text, markup=False))
    except StackcyclerError as error:
        _fail(error)
        return
    console.print(f"catalog: {sent} run(s) sent", markup=False)


@lab_group.command("query")
@click.argument("sql")
@runs_dir_option
@click.option("--results", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The results folder to query (default: lab.toml's `results`).")
@click.option("--csv", "as_csv", is_flag=True, help="Print the result as CSV.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (one object per row).")
def lab_query(sql, runs_dir, results, as_csv, as_json):
    """Run one SQL statement (DuckDB) over everything the lab has published. Views: `samples`
    (Battery Data Format columns, quoted: "Voltage / V"; plus host and run), `cycles` (the
    per-cycle summary, keys of docs/results.md) and `runs` (one row per published run).

    \b
    cycler lab query 'SELECT host, run, max(discharge_capacity_Ah) FROM cycles GROUP BY ALL'"""
    from .lab import require_lab
    from .labquery import query

    try:
        if results is None:
            results = require_lab(runs_dir).results
            if results is None:
                raise InvalidInput("lab.toml gives no `results` folder; add it, or give --results")
        table = query(results, sql)
    except StackcyclerError as error:
        _fail(error)
        return
    if as_json:
        print(table.to_json(orient="records", indent=1, date_format="iso"))
    elif as_csv:
        print(table.to_csv(index=False), end="")
    else:
        print(table.to_string(index=False) if not table.empty else "(no rows)")


@lab_group.command("demo")
@click.option("--folder", type=click.Path(file_okay=False, path_type=Path), default=Path("lab-demo"),
              show_default=True, help="An empty or new folder for the demo lab.")
@click.option("--items", "items_per_host", type=click.IntRange(1, 20), default=2, show_default=True,
              help="Capacity checks queued per bench host.")
def lab_demo(folder, items_per_host):
    """A whole lab on this computer: PostgreSQL (from the pgserver wheel), three simulated bench
    hosts each running a queue worker, one queue across them, the catalog, and one SQL statement
    over what they published. The database server stops at the end; the data stays in FOLDER."""
    from .labdemo import demo

    try:
        code = demo(folder, items_per_host, lambda text: console.print(text, markup=False))
    except StackcyclerError as error:
        _fail(error)
        return
    sys.exit(code)
