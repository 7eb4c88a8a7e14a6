"""The standard protocol library: every protocol validates, binds to the default bench, says where
its numbers come from, and the short ones run to completion on the simulated stack."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from support import events_of

from stackcycler.bench import load_bench
from stackcycler.plan import bind
from stackcycler.protocols import builtin_protocols, load_protocol
from stackcycler.safety import SafetyEnvelope

LIBRARY = sorted(builtin_protocols())
DATA = Path(__file__).resolve().parents[1] / "protocols" / "data"  # the repository's: the generator is not installed
INSTALLED_DATA = Path(load_protocol("capacity-check").path).parent / "data"


def test_the_library_has_the_protocols_labs_ask_for():
    for name in ("formation", "capacity-check", "rate-capability", "hppc", "hppc-10s", "dcir-iec61960", "gitt",
                 "cycle-life", "drive-cycle-dst", "drive-cycle-wltc", "self-discharge", "assb-formation",
                 "assb-low-rate-cycling"):
        assert name in LIBRARY


@pytest.mark.parametrize("name", LIBRARY)
def test_each_protocol_binds_to_the_default_bench_and_cites_its_source(name):
    protocol = load_protocol(name)
    channel = load_bench("sim").config.channels["stack1"]
    plan = bind(protocol.model, protocol.path, protocol.text, channel,
                SafetyEnvelope.tightest(channel.dut.safety, protocol.model.safety))
    assert protocol.model.name == name and protocol.model.description
    assert plan.steps and all(step.time_bound_s > 0 for step in plan.steps)
    header = protocol.text.split("\nname:")[0]
    assert "battery-testing.md §" in header or "data/" in header  # where its numbers come from


def test_the_wltc_speed_trace_matches_the_published_checksum():
    rows = [r for r in csv.reader((DATA / "wltc-class3b-speed.csv").open()) if r and not r[0].startswith("#")][1:]
    speeds = [float(r[1]) for r in rows]
    assert len(speeds) == 1801 and round(sum(speeds), 1) == 83758.6 and max(speeds) == 131.3


def test_the_wltc_power_profile_is_what_its_generator_makes(tmp_path, monkeypatch):
    import importlib.util
    import shutil

    for name in ("wltc-class3b-speed.csv", "make_wltc_power_profile.py"):
        shutil.copy(DATA / name, tmp_path / name)
    spec = importlib.util.spec_from_file_location("make_wltc", tmp_path / "make_wltc_power_profile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main()
    made = (tmp_path / "wltc-class3b-power.csv").read_text()
    assert made == (DATA / "wltc-class3b-power.csv").read_text()
    assert made == (INSTALLED_DATA / "wltc-class3b-power.csv").read_text()  # and it is what gets installed


def test_the_dst_table_passes_the_manuals_checks():
    step = next(s for s in load_protocol("drive-cycle-dst").model.steps if getattr(s, "step", "") == "profile")
    times = [t for t, _ in step.table]
    fractions = [v for _, v in step.table][:-1]
    durations = [b - a for a, b in zip(times, times[1:])]
    assert times[-1] == 360 and len(durations) == 20
    assert sum(-f * d for f, d in zip(fractions, durations) if f < 0) == pytest.approx(54.0)  # 5400 %·s
    assert sum(f * d for f, d in zip(fractions, durations) if f > 0) == pytest.approx(9.0)  # 900 %·s


@pytest.mark.parametrize("name, overrides", [
    ("hppc", {"soc_rest_s": 60}),
    ("drive-cycle-dst", {}),
    ("drive-cycle-wltc", {}),
])
def test_short_library_protocols_run_to_completion_on_the_simulated_stack(run_protocol, name, overrides):
    result = run_protocol(protocol=name, overrides=overrides)
    assert result.outcome.state == "completed", result.outcome.reason
    ends = [e for e in events_of(result) if e["event"] == "step_end"]
    if name == "hppc":
        pulses = [e for e in ends if e["name"] == "HPPC pulses"]
        assert 9 <= len(pulses) <= 10  # one per 10 % SOC until the end-of-discharge voltage
    else:
        profile = next(e for e in ends if e["name"] in ("DST", "WLTC class 3b"))
        assert profile["reason"] == "V ≤ 69 V"  # repeated until the stack was empty
        assert profile["discharge_Ah"] > 1.8
