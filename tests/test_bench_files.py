"""Bench files are TOML (YAML is read too): the built-ins, errors with their lines, extends."""

from __future__ import annotations

import pytest

from stackcycler.bench import builtin_benches, load_bench
from stackcycler.errors import InvalidInput, UnreadableInput


def test_the_built_in_benches_ship_as_toml_and_load():
    benches = builtin_benches()
    assert {"sim", "sim-2ch", "sim-weak-layer", "sim-keithley2450"} <= set(benches)
    assert benches["sim"].suffix == ".toml"
    bench = load_bench("sim-weak-layer")  # extends sim
    assert bench.config.simulation.stack.layer_capacity_scale == {7: 0.85}  # TOML keys are text: read as layers
    assert bench.config.channels["stack1"].dut.layers == 23


def test_an_unknown_field_in_a_toml_bench_is_named_with_its_line_and_what_is_accepted(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('extends = "sim"\n\n[channels.stack1.dut]\nid = "x"\nlayer = 23\n')
    with pytest.raises(InvalidInput) as error:
        load_bench(str(path))
    message = str(error.value)
    assert f"{path}, line 5: unknown field 'channels.stack1.dut.layer'" in message
    assert "accepted here:" in message and "layers" in message


def test_a_check_of_a_whole_channel_points_at_the_channels_table(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('extends = "sim"\n\n[channels.stack1]\nlayer_voltages = { meter = "daq", channels = "101:120", '
                    'range_V = 10 }\n')
    with pytest.raises(InvalidInput, match=r"mine\.toml, line 3: 'channels\.stack1': .*lists 20 channels but dut\.layers is 23"):
        load_bench(str(path))


def test_an_array_of_tables_item_is_located(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('extends = "sim"\n\n[[channels.stack1.temperatures]]\nmeter = "daq"\nchannel = 204\n'
                    'sensor = "T1"\n\n[[channels.stack1.temperatures]]\nmeter = "daq"\nchannel = 205\nsensor = "T9"\n')
    with pytest.raises(InvalidInput, match=r"mine\.toml, line 11: .*temperatures\[1\]\.sensor"):
        load_bench(str(path))


def test_toml_that_does_not_parse_is_unreadable_with_its_line(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text('name = "x"\n[instruments\n')
    with pytest.raises(UnreadableInput, match=r"broken\.toml: not valid TOML \(.*line 2"):
        load_bench(str(path))


def test_a_yaml_bench_still_reads_and_may_extend_a_toml_one(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("extends: sim\nname: mine\nchannels:\n  stack1:\n    tick_s: 0.5\n")
    bench = load_bench(str(path))
    assert bench.config.name == "mine" and bench.config.channels["stack1"].tick_s == 0.5


def test_a_tick_too_long_for_safety_checks_is_refused(tmp_path):
    path = tmp_path / "slow.toml"
    path.write_text('extends = "sim"\n\n[channels.stack1]\ntick_s = 1e9\n')
    with pytest.raises(InvalidInput, match=r"slow\.toml, line 4: 'channels\.stack1\.tick_s': .*less than or equal to 60"):
        load_bench(str(path))


def mainframe_bench(tmp_path, right: str):
    """Two channels, 'left' and 'right', each on an instrument entry; `right` is the second entry's spec."""
    path = tmp_path / "twice.toml"
    dut = ('layers = 1\nnominal_capacity_Ah = 0.2\ncharge_voltage_V = 4.2\ndischarge_voltage_V = 3.0\n')
    path.write_text('name = "twice"\n\n[instruments]\n'
                    'left = { driver = "keysight-n6705c", resource = "USB0::0x2A8D::0x0F02::MY1::INSTR", output = 1 }\n'
                    f'right = {right}\n\n'
                    f'[channels.a]\nsupply = "left"\n[channels.a.dut]\nid = "a"\n{dut}\n'
                    f'[channels.b]\nsupply = "right"\n[channels.b.dut]\nid = "b"\n{dut}')
    return path


def test_two_slots_of_one_mainframe_may_each_serve_a_channel(tmp_path):
    path = mainframe_bench(tmp_path, '{ driver = "keysight-n6705c", resource = "usb0::0x2a8d::0x0f02::my1", output = 2 }')
    assert load_bench(str(path)).config.instruments["right"].output == 2


@pytest.mark.parametrize("right, refused", [
    ('{ driver = "keysight-n6705c", resource = "usb0::0x2a8d::0x0f02::my1", output = 1 }',
     "line 5: instruments.right.output: 1 is already used on usb0::0x2a8d::0x0f02::my1 (instrument 'left')"),
    ('{ driver = "keysight-n6705c", resource = "USB0::0x2A8D::0x0F02::MY1", output = 2, timeout_s = 5 }',
     "line 5: instruments.right.timeout_s: 5 s, but 'left' on the same USB0::0x2A8D::0x0F02::MY1 has 2 s"),
    ('{ driver = "keithley-2450", resource = "USB0::0x2A8D::0x0F02::MY1::INSTR" }',
     "line 5: instruments.right.resource: USB0::0x2A8D::0x0F02::MY1::INSTR is already instrument 'left'; each "
     "instrument is listed once (only the slots of a mainframe whose driver shares it, such as keysight-n6705c"),
])
def test_one_instrument_listed_twice_other_than_as_a_mainframes_slots_is_refused(tmp_path, right, refused):
    # Two entries for one instrument would share its connection, error queue and watchdog
    # unknowingly, and the second would find the first's lock.
    path = mainframe_bench(tmp_path, right)
    with pytest.raises(InvalidInput) as error:
        load_bench(str(path))
    assert f"twice.toml, {refused}" in str(error.value)
