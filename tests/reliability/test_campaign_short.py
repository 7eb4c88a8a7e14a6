"""The reliability campaign's short form, in CI: every scenario of scenarios.py at its SHORT size.
`python tests/reliability/campaign.py --long` runs the long form and keeps the results."""

from __future__ import annotations

import random

import scenarios


def short(name: str, tmp_path) -> scenarios.ScenarioResult:
    result = scenarios.SCENARIOS[name](tmp_path, random.Random(f"ci:{name}"), **scenarios.SHORT[name])
    assert result.ok, f"{result.passed} of {result.trials} passed:\n" + "\n".join(result.failures)
    return result


def test_a_run_killed_at_random_moments_and_resumed_is_the_uninterrupted_run_but_for_the_gaps(tmp_path):
    result = short("crash", tmp_path)
    assert len(result.details["kills"]) >= 2  # the test is long enough for its kills, but for a rare late one


def test_every_fault_kind_at_a_random_moment_recovers_or_ends_in_the_safe_state(tmp_path):
    result = short("faults", tmp_path)
    assert all(n["injected"] == n["survived"] == scenarios.SHORT["faults"]["per_kind"]
               for n in result.details["per_kind"].values()), result.details


def test_fuzzed_bench_files_and_instrument_replies_end_in_clear_errors_with_outputs_off(tmp_path):
    short("input", tmp_path)


def test_eight_channels_complete_while_cycler_status_is_asked_from_another_process(tmp_path):
    result = short("load", tmp_path)
    assert result.trials == 8 + 1  # the channels, and the status queries


def test_a_full_disk_stops_the_run_safely_and_keeps_what_reached_the_disk(tmp_path):
    short("disk", tmp_path)
