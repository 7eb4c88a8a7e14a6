"""The instrument drivers at message level: the exact strings sent and how replies are parsed.

No hardware. In the style of pymeasure's `expected_protocol`, a scripted transport holds the
(sent, reply or None) pairs in order, fails on any other message and checks at the end that
the whole script was used. One integration test per driver then runs it against its simulator.
"""

from __future__ import annotations

import math

import pytest
from support import Script, expected_protocol

from stackcycler.clock import VirtualClock
from stackcycler.drivers.ea_psb import EaPsb10000
from stackcycler.drivers.keysight_daq970a import KeysightDaq970a
from stackcycler.drivers.roles import MeterChannel
from stackcycler.drivers.scpi import format_channel_list, parse_channel_list, parse_number, parse_on_off
from stackcycler.drivers.sim.simulation import SimulationConfig, build_simulation
from stackcycler.drivers.transport import InProcessTransport
from stackcycler.errors import InstrumentError, InstrumentTimeout, InvalidInput

# --- EA PSB 10000 ----------------------------------------------------------------------------

EA_OK = '0,"No error"'
PSB_IDN = "EA Elektro-Automatik GmbH & Co. KG, PSB 10200-25 2U, 2306170042, V3.05"
# a PSB 10200-25: 200 V, 25 A, 1500 W; set values to 102 %, protection thresholds to 110 %
PSB_CONNECT: Script = [
    ("*IDN?", PSB_IDN),
    ("SYST:LOCK ON", None), ("SYST:ERR?", EA_OK),
    ("SYST:LOCK:OWN?", "REMOTE"),
    ("OUTP?", "OFF"),
    ("OUTP OFF", None), ("SYST:ERR?", EA_OK),
    ("SYST:NOM:VOLT?", "200.00V"),
    ("SYST:NOM:CURR?", "25.000A"),
    ("SYST:NOM:POW?", "1500.0W"),
    ("SYST:ERR?", EA_OK),
]
FIRST_REGULATE: Script = [
    ("VOLT 97.75", None), ("CURR 2.0", None), ("SINK:CURR 4.0", None),
    ("POW 1500.0", None), ("SINK:POW 1500.0", None),
    ("SYST:ERR?", EA_OK),
]


def connected_psb(*script: tuple[str, str | None]):
    return expected_protocol(EaPsb10000, PSB_CONNECT + list(script))


def test_psb_connect_sends_the_documented_sequence_and_returns_the_identity():
    with expected_protocol(EaPsb10000, PSB_CONNECT) as psb:
        assert psb.connect() == PSB_IDN
        assert psb.identity == PSB_IDN


def test_psb_connect_reads_the_ratings_and_derives_the_protection_maxima():
    with connected_psb() as psb:
        psb.connect()
        ratings = psb.ratings
    assert (ratings.voltage_V, ratings.current_A, ratings.power_W) == (200.0, 25.0, 1500.0)
    assert ratings.max_over_voltage_V == pytest.approx(220.0, rel=1e-12)
    assert ratings.max_over_current_A == pytest.approx(27.5, rel=1e-12)


def test_psb_connect_records_an_output_found_on_and_still_switches_it_off():
    script = [("OUTP?", "ON") if pair == ("OUTP?", "OFF") else pair for pair in PSB_CONNECT]
    with expected_protocol(EaPsb10000, script) as psb:
        psb.connect()
    assert psb.output_found_on is True


@pytest.mark.parametrize("identity", ["Keysight Technologies,DAQ970A,MY58031276,A.02.04",
                                      "EA Elektro-Automatik GmbH & Co. KG, PS 10080-60 2U, 1, V1",
                                      "Acme Power, PSB-like 200-25, 1, 1.0"])
def test_psb_connect_refuses_an_instrument_that_is_not_an_ea_psb(identity):
    with expected_protocol(EaPsb10000, [("*IDN?", identity)]) as psb:
        with pytest.raises(InstrumentError, match="is not an EA PSB"):
            psb.connect()


@pytest.mark.parametrize("owner", ["NONE", "LOCAL", "USB"])
def test_psb_connect_refuses_when_remote_control_is_not_granted(owner):
    script = [("*IDN?", PSB_IDN), ("SYST:LOCK ON", None), ("SYST:ERR?", EA_OK), ("SYST:LOCK:OWN?", owner)]
    with expected_protocol(EaPsb10000, script) as psb:
        with pytest.raises(InstrumentError, match="remote control not granted"):
            psb.connect()


def test_psb_connect_to_a_silent_instrument_times_out():
    with expected_protocol(EaPsb10000, [("*IDN?", None)]) as psb:
        with pytest.raises(InstrumentTimeout):
            psb.connect()


def test_psb_ratings_before_connect_are_an_instrument_error():
    with expected_protocol(EaPsb10000, []) as psb:
        with pytest.raises(InstrumentError, match="not connected"):
            _ = psb.ratings


def test_psb_regulate_sends_every_set_value_then_one_error_check():
    with connected_psb(*FIRST_REGULATE) as psb:
        psb.connect()
        psb.regulate(97.75, 2.0, 4.0)


def test_psb_regulate_sends_the_given_power_limits():
    script = [("VOLT 97.75", None), ("CURR 2.0", None), ("SINK:CURR 4.0", None),
              ("POW 300.0", None), ("SINK:POW 250.0", None), ("SYST:ERR?", EA_OK)]
    with connected_psb(*script) as psb:
        psb.connect()
        psb.regulate(97.75, 2.0, 4.0, source_power_W=300.0, sink_power_W=250.0)


def test_psb_regulate_with_unchanged_set_values_sends_nothing():
    with connected_psb(*FIRST_REGULATE) as psb:
        psb.connect()
        psb.regulate(97.75, 2.0, 4.0)
        psb.regulate(97.75, 2.0, 4.0)


def test_psb_regulate_sends_only_the_set_values_that_changed():
    with connected_psb(*FIRST_REGULATE, ("VOLT 69.0", None), ("SYST:ERR?", EA_OK)) as psb:
        psb.connect()
        psb.regulate(97.75, 2.0, 4.0)
        psb.regulate(69.0, 2.0, 4.0)


def test_psb_regulate_resends_everything_after_safe_state():
    script = [*FIRST_REGULATE, ("OUTP OFF", None), ("OUTP?", "OFF"), *FIRST_REGULATE]
    with connected_psb(*script) as psb:
        psb.connect()
        psb.regulate(97.75, 2.0, 4.0)
        psb.safe_state()
        psb.regulate(97.75, 2.0, 4.0)


def test_psb_a_set_value_at_102_percent_of_the_rating_is_sent():
    with connected_psb(("VOLT 204.0", None), ("SYST:ERR?", EA_OK)) as psb:
        psb.connect()
        psb.voltage_V = 204.0


@pytest.mark.parametrize("setting, value", [("voltage_V", 204.01), ("source_current_A", 25.51),
                                            ("sink_current_A", 25.51), ("source_power_W", 1530.1),
                                            ("voltage_V", -0.1), ("voltage_V", math.nan), ("voltage_V", math.inf)])
def test_psb_a_set_value_outside_the_model_range_raises_invalid_input_and_sends_nothing(setting, value):
    with connected_psb() as psb:
        psb.connect()
        with pytest.raises(InvalidInput, match=f"{setting} = .* is outside the model's range"):
            setattr(psb, setting, value)


@pytest.mark.parametrize("voltage, source, sink", [
    (204.01, 2.0, 4.0),
    (97.75, 25.51, 4.0),
    (97.75, 2.0, 25.51),
])
def test_psb_regulate_beyond_102_percent_of_a_rating_raises_invalid_input_and_sends_nothing(voltage, source, sink):
    with connected_psb() as psb:
        psb.connect()
        with pytest.raises(InvalidInput):
            psb.regulate(voltage, source, sink)


def test_psb_set_protection_sends_both_thresholds_then_one_error_check():
    script = [("VOLT:PROT 99.0", None), ("CURR:PROT 4.4", None), ("SYST:ERR?", EA_OK)]
    with connected_psb(*script) as psb:
        psb.connect()
        psb.set_protection(99.0, 4.4)


@pytest.mark.parametrize("over_voltage, over_current, refused", [
    (220.1, 4.4, "over_voltage_V"),
    (99.0, 27.6, "over_current_A"),
])
def test_psb_a_protection_threshold_beyond_110_percent_raises_invalid_input_and_sends_nothing(
        over_voltage, over_current, refused):
    with connected_psb() as psb:
        psb.connect()
        with pytest.raises(InvalidInput, match=refused):
            psb.set_protection(over_voltage, over_current)


@pytest.mark.parametrize("reply, expected", [("97.75V, 0.667A, 65.2W", (97.75, 0.667)),
                                             ("12.00 V, -1.500 A, -18.0 W", (12.0, -1.5)),
                                             ("69.31V, -4.000A, -277.2W", (69.31, -4.0))])
def test_psb_measure_parses_voltage_and_signed_current(reply, expected):
    with connected_psb(("MEAS:ARR?", reply)) as psb:
        psb.connect()
        assert psb.measure() == expected


@pytest.mark.parametrize("reply", ["97.75V, 0.667A", "97.75V"])
def test_psb_measure_refuses_a_reply_without_three_fields(reply):
    with connected_psb(("MEAS:ARR?", reply)) as psb:
        psb.connect()
        with pytest.raises(InstrumentError, match="expected 'V, A, W'"):
            psb.measure()


def test_psb_an_error_in_the_queue_raises_instrument_error_naming_it_and_the_command():
    script = [("VOLT 50.0", None), ("SYST:ERR?", '-222,"Data out of range"'), ("SYST:ERR?", EA_OK)]
    with connected_psb(*script) as psb:
        psb.connect()
        with pytest.raises(InstrumentError) as raised:
            psb.voltage_V = 50.0
    assert '-222,"Data out of range"' in str(raised.value)
    assert "'VOLT 50.0'" in str(raised.value)


def test_psb_every_queued_error_is_drained_and_reported():
    script = [("OUTP ON", None), ("SYST:ERR?", '-203,"Command protected"'),
              ("SYST:ERR?", '-200,"Execution error; OVP alarm active"'), ("SYST:ERR?", EA_OK)]
    with connected_psb(*script) as psb:
        psb.connect()
        with pytest.raises(InstrumentError, match='-203,"Command protected"; -200,"Execution error; OVP alarm'):
            psb.set_output(True)


def test_psb_safe_state_switches_off_and_confirms():
    with connected_psb(("OUTP OFF", None), ("OUTP?", "OFF")) as psb:
        psb.connect()
        psb.safe_state()


def test_psb_safe_state_raises_if_the_output_still_reads_on():
    with connected_psb(("OUTP OFF", None), ("OUTP?", "ON")) as psb:
        psb.connect()
        with pytest.raises(InstrumentError, match="output still on after OUTP OFF"):
            psb.safe_state()


@pytest.mark.parametrize("reply, on", [("ON", True), ("OFF", False)])
def test_psb_output_is_on_reads_the_output_state(reply, on):
    with connected_psb(("OUTP?", reply)) as psb:
        psb.connect()
        assert psb.output_is_on() is on


def test_psb_close_releases_remote_control_and_the_transport():
    with connected_psb(("SYST:LOCK OFF", None)) as psb:
        psb.connect()
        psb.close()
    assert psb.transport.closed


# --- Keysight DAQ970A ------------------------------------------------------------------------

KEYSIGHT_OK = '+0,"No error"'
DAQ_IDN = "Keysight Technologies,DAQ970A,MY58031276,A.02.04-00.16-11.29-00.02-02-01"
DAQ_CONNECT: Script = [("*IDN?", DAQ_IDN), ("*CLS", None), ("*RST", None), ("SYST:ERR?", KEYSIGHT_OK)]
THREE_LAYERS = [MeterChannel(channel, "dc_voltage", range_V=10.0) for channel in (101, 102, 103)]
CONFIGURE_THREE_LAYERS: Script = [
    ("CONF:VOLT:DC 10.0,(@101,102,103)", None),
    ("ROUT:SCAN (@101,102,103)", None),
    ("FORM:READ:CHAN ON", None), ("TRIG:COUN 1", None), ("TRIG:SOUR IMM", None),
    ("SYST:ERR?", KEYSIGHT_OK),
    ("ROUT:SCAN:SIZE?", "+3"),
]


def test_daq_connect_clears_and_resets_then_checks_the_error_queue():
    with expected_protocol(KeysightDaq970a, DAQ_CONNECT) as daq:
        assert daq.connect() == DAQ_IDN


@pytest.mark.parametrize("identity", ["Keysight Technologies,34465A,MY1,A.03",
                                      "EA Elektro-Automatik GmbH & Co. KG, PSB 10200-25 2U, 1, V1"])
def test_daq_connect_refuses_an_instrument_that_is_not_a_daq970a(identity):
    with expected_protocol(KeysightDaq970a, [("*IDN?", identity)]) as daq:
        with pytest.raises(InstrumentError, match="is not a DAQ970A"):
            daq.connect()


def test_daq_configure_scan_configures_each_group_then_sets_the_whole_scan_list():
    inputs = [*(MeterChannel(channel, "dc_voltage", range_V=10.0) for channel in (101, 102, 103)),
              MeterChannel(204, "thermocouple", thermocouple_type="K"),
              MeterChannel(205, "thermocouple", thermocouple_type="K"),
              MeterChannel(206, "dc_voltage", range_V=0.1)]
    script = [
        ("CONF:VOLT:DC 10.0,(@101,102,103)", None),
        ("CONF:VOLT:DC 0.1,(@206)", None),
        ("CONF:TEMP TC,K,(@204,205)", None),
        ("SENS:TEMP:TRAN:TC:RJUN:TYPE INT,(@204,205)", None),
        ("ROUT:SCAN (@101,102,103,204,205,206)", None),
        ("FORM:READ:CHAN ON", None),
        ("TRIG:COUN 1", None),
        ("TRIG:SOUR IMM", None),
        ("SYST:ERR?", KEYSIGHT_OK),
        ("ROUT:SCAN:SIZE?", "+6"),
    ]
    with expected_protocol(KeysightDaq970a, script) as daq:
        daq.configure_scan(inputs)


def test_daq_configure_scan_without_a_range_uses_autorange():
    script = [("CONF:VOLT:DC AUTO,(@110)", None), ("ROUT:SCAN (@110)", None), ("FORM:READ:CHAN ON", None),
              ("TRIG:COUN 1", None), ("TRIG:SOUR IMM", None), ("SYST:ERR?", KEYSIGHT_OK),
              ("ROUT:SCAN:SIZE?", "+1")]
    with expected_protocol(KeysightDaq970a, script) as daq:
        daq.configure_scan([MeterChannel(110, "dc_voltage")])


def test_daq_configure_scan_raises_when_the_scan_list_size_differs():
    script = CONFIGURE_THREE_LAYERS[:-1] + [("ROUT:SCAN:SIZE?", "+2")]
    with expected_protocol(KeysightDaq970a, script) as daq:
        with pytest.raises(InstrumentError, match="scan list holds 2 channels, expected 3"):
            daq.configure_scan(THREE_LAYERS)


def test_daq_configure_scan_refuses_a_range_the_dmm_does_not_have_and_sends_nothing():
    with expected_protocol(KeysightDaq970a, []) as daq:
        with pytest.raises(InstrumentError, match="DC voltage range 5.0 V on channel 101"):
            daq.configure_scan([MeterChannel(101, "dc_voltage", range_V=5.0)])


def test_daq_scan_parses_value_and_channel_pairs():
    reply = "+3.70012345E+00,101,+3.69900000E+00,102,-1.25000000E-03,103"
    with expected_protocol(KeysightDaq970a, CONFIGURE_THREE_LAYERS + [("READ?", reply)]) as daq:
        daq.configure_scan(THREE_LAYERS)
        assert daq.scan() == {101: 3.70012345, 102: 3.699, 103: -0.00125}


@pytest.mark.parametrize("overload", ["+9.9E+37", "+9.90000000E+37", "-9.90000000E+37"])
def test_daq_scan_turns_an_overload_into_nan(overload):
    reply = f"+3.7E+00,101,{overload},102,+3.6E+00,103"
    with expected_protocol(KeysightDaq970a, CONFIGURE_THREE_LAYERS + [("READ?", reply)]) as daq:
        daq.configure_scan(THREE_LAYERS)
        readings = daq.scan()
    assert readings[101] == 3.7 and readings[103] == 3.6
    assert math.isnan(readings[102])


@pytest.mark.parametrize("reply", ["+3.7E+00,101,+3.7E+00,102,+3.7E+00,104",
                                   "+3.7E+00,101,+3.7E+00,101,+3.7E+00,102"])
def test_daq_scan_raises_when_the_channels_in_the_reply_do_not_match(reply):
    with expected_protocol(KeysightDaq970a, CONFIGURE_THREE_LAYERS + [("READ?", reply)]) as daq:
        daq.configure_scan(THREE_LAYERS)
        with pytest.raises(InstrumentError, match=r"READ\? returned channels"):
            daq.scan()


@pytest.mark.parametrize("reply", ["+3.7E+00,101,+3.7E+00,102",
                                   "+3.7E+00,+3.7E+00,+3.7E+00",
                                   "+3.7E+00,101,+3.7E+00,102,+3.7E+00,103,+3.7E+00,104"])
def test_daq_scan_raises_when_the_field_count_is_wrong(reply):
    with expected_protocol(KeysightDaq970a, CONFIGURE_THREE_LAYERS + [("READ?", reply)]) as daq:
        daq.configure_scan(THREE_LAYERS)
        with pytest.raises(InstrumentError, match="expected a value and a channel"):
            daq.scan()


def test_daq_scan_raises_instrument_error_on_a_garbled_reading():
    reply = "+3.7E+00,101,OVLD,102,+3.7E+00,103"
    with expected_protocol(KeysightDaq970a, CONFIGURE_THREE_LAYERS + [("READ?", reply)]) as daq:
        daq.configure_scan(THREE_LAYERS)
        with pytest.raises(InstrumentError):
            daq.scan()


# --- the shared SCPI helpers -----------------------------------------------------------------


@pytest.mark.parametrize("reply, value", [("97.75V", 97.75), ("12.00 V", 12.0), (" -1.500 A", -1.5),
                                          ("1500.0W", 1500.0), ("+4.2E+00", 4.2), ("-1.25000000E-03", -0.00125),
                                          ("+9.90000000E+37", 9.9e37), ("1e-3", 0.001), (".5", 0.5), ("+3", 3.0)])
def test_parse_number_reads_the_leading_number_of_a_reply(reply, value):
    assert parse_number(reply) == value


@pytest.mark.parametrize("reply", ["", "V", "ON", "NAN", "- 5"])
def test_parse_number_raises_instrument_error_without_a_number(reply):
    with pytest.raises(InstrumentError, match="expected a number"):
        parse_number(reply)


@pytest.mark.parametrize("reply, state", [("ON", True), ("on", True), ("1", True), (" 1\n", True),
                                          ("OFF", False), ("off", False), ("0", False)])
def test_parse_on_off(reply, state):
    assert parse_on_off(reply) is state


@pytest.mark.parametrize("reply", ["2", "TRUE", "", "ONN"])
def test_parse_on_off_raises_instrument_error_on_anything_else(reply):
    with pytest.raises(InstrumentError, match="expected ON/OFF or 1/0"):
        parse_on_off(reply)


@pytest.mark.parametrize("text, channels", [("(@101:103,105)", [101, 102, 103, 105]),
                                            ("101:103,105", [101, 102, 103, 105]),
                                            ("(@101:120,201:203)", [*range(101, 121), 201, 202, 203]),
                                            (" (@ 204 , 206 ) ", [204, 206]),
                                            ("(@103:101)", [101, 102, 103]),
                                            ("(@)", [])])
def test_parse_channel_list_expands_ranges(text, channels):
    assert parse_channel_list(text) == channels


@pytest.mark.parametrize("text", ["(@101:103", "(@101:1x3)", "(@abc)", "101-103", "(@101:102:103)"])
def test_parse_channel_list_raises_value_error_when_malformed(text):
    with pytest.raises(ValueError, match="channel list"):
        parse_channel_list(text)


def test_format_channel_list_lists_each_channel():
    assert format_channel_list([101, 102, 103, 206]) == "(@101,102,103,206)"


def test_format_and_parse_channel_list_round_trip():
    channels = [101, 105, 120, 201, 203]
    assert parse_channel_list(format_channel_list(channels)) == channels


# --- each driver against its simulator -------------------------------------------------------

SIMULATION = SimulationConfig.model_validate({
    "seed": 1,
    "stack": {"layers": 23},
    "fixture": {"active_area_cm2": 620,
                "load_cell": {"rated_force_kN": 500, "sensitivity_mV_per_V": 2.0, "excitation_V": 10.0}},
    "instruments": {
        "supply": {"kind": "ea-psb-10000", "voltage_noise_V": 0.0, "current_noise_A": 0.0},
        "daq": {"kind": "keysight-daq970a", "layer_channels": "101:120,201:203",
                "thermocouples": {204: "stack", 205: "ambient"}, "load_cell_channel": 206,
                "voltage_noise_V": 0.0, "temperature_noise_degC": 0.0},
    },
})


def simulated(driver_class, name: str):
    clock = VirtualClock()
    simulation = build_simulation(SIMULATION, clock)
    driver = driver_class(InProcessTransport(simulation.instruments[name], f"sim://{name}"))
    return driver, simulation, clock


def test_psb_driver_charges_the_simulated_stack_at_constant_current():
    psb, simulation, clock = simulated(EaPsb10000, "supply")
    stack = simulation.world.stack
    psb.connect()
    psb.set_protection(110.0, 5.0)
    psb.regulate(100.0, 2.0, 2.0)  # set voltage far above the ~69 V stack: constant current
    psb.set_output(True)
    clock.sleep_until(60.0)
    voltage, current = psb.measure()
    assert current == 2.0
    assert voltage == pytest.approx(stack.terminal_voltage_V(), abs=0.005)
    assert stack.charged_Ah == pytest.approx(2.0 * 60.0 / 3600.0, rel=1e-12)
    psb.safe_state()
    assert simulation.instruments["supply"].output_on is False


def test_daq_driver_scans_layers_thermocouples_and_load_cell_of_the_simulated_stack():
    daq, simulation, _ = simulated(KeysightDaq970a, "daq")
    world = simulation.world
    layer_channels = parse_channel_list("101:120,201:203")
    daq.connect()
    daq.configure_scan([*(MeterChannel(channel, "dc_voltage", range_V=10.0) for channel in layer_channels),
                        MeterChannel(204, "thermocouple"), MeterChannel(205, "thermocouple"),
                        MeterChannel(206, "dc_voltage", range_V=0.1)])
    readings = daq.scan()
    assert list(readings) == [*layer_channels, 204, 205, 206]
    assert [readings[c] for c in layer_channels] == pytest.approx(list(world.stack.layer_voltages_V()), abs=1e-8)
    assert readings[204] == pytest.approx(world.stack.temperature_degC, abs=1.0)
    assert readings[205] == pytest.approx(world.stack.params.ambient_degC, abs=1.0)
    assert readings[206] == pytest.approx(world.load_cell_output_V(), abs=1e-10)
