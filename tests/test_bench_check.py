"""`cycler bench check`: identities, error queues and wiring, with nothing switched on."""

from __future__ import annotations

from pathlib import Path

from support import cycler

from stackcycler.bench import load_bench
from stackcycler.benchcheck import check_bench
from stackcycler.drivers.ea_psb import EaPsb10000
from stackcycler.errors import ExitCode


def test_the_default_bench_checks_out_and_nothing_is_switched_on(monkeypatch):
    switched = []
    original = EaPsb10000.set_output
    monkeypatch.setattr(EaPsb10000, "set_output", lambda self, on: (switched.append(on), original(self, on)))
    report = check_bench(load_bench("sim"))
    assert report.exit_code == ExitCode.COMPLETED, [f.line() for f in report.findings]
    lines = [f.line() for f in report.findings]
    assert any("instrument supply: EA Elektro-Automatik" in line for line in lines)
    assert any("instrument daq: Keysight Technologies,DAQ970A" in line for line in lines)
    assert any("23 layer voltages sum to" in line for line in lines)
    assert True not in switched  # switched off on connect and at the end, never on


def test_a_layer_wired_to_the_wrong_meter_channel_fails_the_sum(tmp_path):
    bench = tmp_path / "miswired.yaml"  # layer 23's lead on channel 207, which nothing is wired to
    bench.write_text("extends: sim\nchannels:\n  stack1:\n    layer_voltages: {meter: daq, "
                     "channels: '101:120,201:202,207', range_V: 10}\n")
    report = check_bench(load_bench(str(bench)))
    assert report.exit_code == ExitCode.INVALID_INPUT
    failed = [f.what for f in report.findings if not f.ok]
    assert len(failed) == 1 and "23 layer voltages sum to" in failed[0] and "stack's 69.9" in failed[0]


def test_an_instrument_that_does_not_answer_is_named_and_the_others_are_still_checked(tmp_path):
    bench = tmp_path / "gone.yaml"  # nothing listens on port 1 of the loopback
    bench.write_text("extends: sim-keithley2450\ninstruments:\n  smu: {driver: keithley-2450, "
                     "resource: 'TCPIP::127.0.0.1::1::SOCKET', timeout_s: 1}\n"
                     "simulation: null\n")
    code, output = cycler("bench", "check", str(bench), cwd=tmp_path)
    assert code == ExitCode.INSTRUMENT_FAULT, output
    assert "FAIL  instrument smu:" in output
    assert "FAIL  channel cell1: not checked, smu did not answer" in output


def test_the_command_prints_a_line_per_finding_and_a_total(tmp_path):
    code, output = cycler("bench", "check", "sim-keithley2450", cwd=tmp_path)
    assert code == 0, output
    assert "ok    instrument smu: KEITHLEY INSTRUMENTS,MODEL 2450" in output
    assert output.strip().endswith("4 ok, 0 failed")
    assert not (Path(tmp_path) / "runs").exists()  # a check is not a run
