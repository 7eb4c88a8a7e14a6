"""Drivers at message level: the exact strings sent and the replies parsed, no hardware.

In the style of pymeasure's `expected_protocol`: a fake transport holds the expected
(sent, reply) pairs in order and fails on anything else.
"""

from __future__ import annotations

import math

import pytest
from support import ScriptedTransport

from stackcycler.drivers.ea_psb import EaPsb10000
from stackcycler.drivers.keysight_daq970a import KeysightDaq970a
from stackcycler.drivers.roles import MeterChannel
from stackcycler.drivers.scpi import format_channel_list, parse_channel_list, parse_number, parse_on_off
from stackcycler.errors import InstrumentError, InvalidInput

NO_ERROR_EA = '0,"No error"'
NO_ERROR_KEYSIGHT = '+0,"No error"'
PSB_IDN = "EA Elektro-Automatik GmbH & Co. KG, PSB 10200-25 2U, 2306170042, V3.05"
DAQ_IDN = "Keysight Technologies,DAQ970A,MY58031276,A.02.04-00.16-11.29-00.02-02-01"


PSB_CONNECT = [
    ("*IDN?", PSB_IDN),
    ("SYST:LOCK ON", None), ("SYST:ERR?", NO_ERROR_EA),
    ("SYST:LOCK:OWN?", "REMOTE"),
    ("OUTP?", "OFF"),  # is it still on from a crashed host?
    ("OUTP OFF", None), ("SYST:ERR?", NO_ERROR_EA),
    ("SYST:NOM:VOLT?", "200.00V"), ("SYST:NOM:CURR?", "25.000A"), ("SYST:NOM:POW?", "1500.0W"),
    ("SYST:ERR?", NO_ERROR_EA),
]


def connected_psb(*more: tuple[str, str | None]) -> tuple[EaPsb10000, ScriptedTransport]:
    transport = ScriptedTransport(PSB_CONNECT + list(more))
    psb = EaPsb10000(transport)
    psb.connect()
    return psb, transport


def test_psb_connect_takes_remote_control_switches_off_and_reads_its_ratings():
    psb, transport = connected_psb()
    assert psb.identity == PSB_IDN
    assert (psb.ratings.voltage_V, psb.ratings.current_A, psb.ratings.power_W) == (200.0, 25.0, 1500.0)
    transport.done()


def test_psb_refuses_an_instrument_that_is_not_a_psb():
    transport = ScriptedTransport([("*IDN?", "KEITHLEY INSTRUMENTS,MODEL 2450,04365704,1.6.4c")])
    with pytest.raises(InstrumentError, match="is not an EA PSB"):
        EaPsb10000(transport).connect()


def test_psb_says_so_when_remote_control_is_not_granted():
    transport = ScriptedTransport([("*IDN?", PSB_IDN), ("SYST:LOCK ON", None), ("SYST:ERR?", NO_ERROR_EA),
                                  ("SYST:LOCK:OWN?", "LOCAL")])
    with pytest.raises(InstrumentError, match=r"remote control not granted \(SYST:LOCK:OWN\? = 'LOCAL'\)"):
        EaPsb10000(transport).connect()


def test_psb_regulate_sends_the_set_values_then_checks_errors_once():
    psb, transport = connected_psb(("VOLT 97.75", None), ("CURR 0.6666", None), ("SINK:CURR 0.0", None),
                                   ("POW 1500.0", None), ("SINK:POW 1500.0", None), ("SYST:ERR?", NO_ERROR_EA))
    psb.regulate(97.75, 0.6666, 0.0)
    transport.done()


def test_psb_regulate_resends_only_what_changed():
    psb, transport = connected_psb(("VOLT 97.75", None), ("CURR 0.6666", None), ("SINK:CURR 0.0", None),
                                   ("POW 1500.0", None), ("SINK:POW 1500.0", None), ("SYST:ERR?", NO_ERROR_EA),
                                   ("CURR 0.5", None), ("POW 40.0", None), ("SYST:ERR?", NO_ERROR_EA))
    psb.regulate(97.75, 0.6666, 0.0)
    psb.regulate(97.75, 0.6666, 0.0)  # nothing changed: nothing sent
    psb.regulate(97.75, 0.5, 0.0, source_power_W=40.0)
    transport.done()


def test_psb_protection_thresholds():
    psb, transport = connected_psb(("VOLT:PROT 103.95", None), ("CURR:PROT 4.62", None), ("SYST:ERR?", NO_ERROR_EA))
    psb.set_protection(103.95, 4.62)
    transport.done()


@pytest.mark.parametrize("reply, expected", [
    ("97.75V, 0.667A, 65.2W", (97.75, 0.667)),
    ("12.00 V, -1.500 A, -18.0 W", (12.0, -1.5)),  # sinking reads negative: discharge
])
def test_psb_measure_parses_one_array_reply(reply, expected):
    psb, transport = connected_psb(("MEAS:ARR?", reply))
    assert psb.measure() == expected
    transport.done()


def test_psb_measure_rejects_a_malformed_reply():
    psb, _ = connected_psb(("MEAS:ARR?", "97.75V"))
    with pytest.raises(InstrumentError, match=r"MEAS:ARR\? answered '97.75V'"):
        psb.measure()


def test_psb_refuses_a_setpoint_beyond_the_model_and_sends_nothing():
    psb, transport = connected_psb()
    with pytest.raises(InvalidInput, match=r"voltage_V = 205 is outside the model's range 0 to 204; nothing was sent"):
        psb.voltage_V = 205  # 102 % of 200 V is the most a PSB takes
    with pytest.raises(InvalidInput, match="source_current_A"):
        psb.source_current_A = float("nan")
    transport.done()


def test_psb_reports_the_instrument_errors_it_drains():
    psb, _ = connected_psb(("VOLT 50.0", None), ("SYST:ERR?", '-222,"Data out of range"'),
                           ("SYST:ERR?", NO_ERROR_EA))
    with pytest.raises(InstrumentError, match=r'reported -222,"Data out of range" \(last command sent: \'VOLT 50.0\'\)'):
        psb.voltage_V = 50.0


def test_psb_safe_state_switches_off_and_confirms():
    psb, transport = connected_psb(("OUTP OFF", None), ("OUTP?", "OFF"))
    psb.safe_state()
    transport.done()


def test_psb_safe_state_raises_when_the_output_stays_on():
    psb, _ = connected_psb(("OUTP OFF", None), ("OUTP?", "ON"))
    with pytest.raises(InstrumentError, match="output still on after OUTP OFF"):
        psb.safe_state()


def test_psb_close_hands_control_back():
    psb, transport = connected_psb(("SYST:LOCK OFF", None))
    psb.close()
    transport.done()


def test_psb_has_no_confirmed_watchdog_so_arming_sends_nothing_and_says_none():
    psb, transport = connected_psb()  # no command spelling confirmed for it: see the driver's module notes
    assert psb.arm_watchdog(30.0) is None
    psb.disarm_watchdog()
    assert psb.watchdog_trip_found is False
    transport.done()


# --- Keysight DAQ970A ------------------------------------------------------------------------

DAQ_INPUTS = [MeterChannel(101, "dc_voltage", 10.0), MeterChannel(102, "dc_voltage", 10.0),
              MeterChannel(204, "thermocouple", thermocouple_type="K"), MeterChannel(206, "dc_voltage", 0.1)]


def configured_daq(*more: tuple[str, str | None]) -> tuple[KeysightDaq970a, ScriptedTransport]:
    transport = ScriptedTransport([
        ("*IDN?", DAQ_IDN), ("*CLS", None), ("*RST", None), ("SYST:ERR?", NO_ERROR_KEYSIGHT),
        ("CONF:VOLT:DC 10.0,(@101,102)", None),
        ("CONF:VOLT:DC 0.1,(@206)", None),
        ("CONF:TEMP TC,K,(@204)", None),
        ("SENS:TEMP:TRAN:TC:RJUN:TYPE INT,(@204)", None),
        ("ROUT:SCAN (@101,102,204,206)", None),
        ("FORM:READ:CHAN ON", None), ("TRIG:COUN 1", None), ("TRIG:SOUR IMM", None),
        ("SYST:ERR?", NO_ERROR_KEYSIGHT),
        ("ROUT:SCAN:SIZE?", "+4"),
        *more,
    ])
    daq = KeysightDaq970a(transport)
    daq.connect()
    daq.configure_scan(DAQ_INPUTS)
    return daq, transport


def test_daq_configures_every_channel_then_sets_the_whole_scan_list():
    _, transport = configured_daq()
    transport.done()


def test_daq_scan_reads_value_channel_pairs_and_turns_overload_into_nan():
    daq, transport = configured_daq(
        ("READ?", "+3.71234500E+00,101,+3.70987600E+00,102,+2.51230000E+01,204,+9.90000000E+37,206"))
    readings = daq.scan()
    assert readings[101] == 3.712345 and readings[102] == 3.709876 and readings[204] == 25.123
    assert math.isnan(readings[206])
    transport.done()


def test_daq_scan_reads_channel_fields_written_another_way():
    daq, transport = configured_daq(("READ?", "+3.7E+00,+101,+3.6E+00,102,+2.5E+01,204,+1.0E-02,206"))
    assert daq.scan() == {101: 3.7, 102: 3.6, 204: 25.0, 206: 0.01}
    transport.done()


def test_daq_scan_names_the_reply_and_the_field_of_a_garbled_reading():
    daq, _ = configured_daq(("READ?", "+3.7E+00,101,OVLD,102,+2.5E+01,204,+1.0E-02,206"))
    with pytest.raises(InstrumentError, match=r"READ\? answered '\+3\.7E\+00,101,OVLD,102,.*'; "
                                              r"'OVLD,102' is not a reading and a channel"):
        daq.scan()


def test_daq_scan_refuses_readings_from_the_wrong_channels():
    daq, _ = configured_daq(("READ?", "+3.7E+00,101,+3.7E+00,103,+2.5E+01,204,+1.0E-02,206"))
    with pytest.raises(InstrumentError, match=r"returned channels \[101, 103, 204, 206\], expected \[101, 102, 204, 206\]"):
        daq.scan()


def test_daq_scan_refuses_a_short_reply():
    daq, _ = configured_daq(("READ?", "+3.7E+00,101,+3.7E+00,102"))
    with pytest.raises(InstrumentError, match="READ. gave 4 fields"):
        daq.scan()


def test_daq_refuses_a_range_it_does_not_have():
    transport = ScriptedTransport([("*IDN?", DAQ_IDN), ("*CLS", None), ("*RST", None), ("SYST:ERR?", NO_ERROR_KEYSIGHT)])
    daq = KeysightDaq970a(transport)
    daq.connect()
    with pytest.raises(InstrumentError, match="DC voltage range 5.0 V on channel 101"):
        daq.configure_scan([MeterChannel(101, "dc_voltage", 5.0)])


def test_daq_refuses_an_instrument_that_is_not_a_daq():
    with pytest.raises(InstrumentError, match="is not a DAQ970A"):
        KeysightDaq970a(ScriptedTransport([("*IDN?", PSB_IDN)])).connect()


# --- shared parsing helpers -----------------------------------------------------------------

@pytest.mark.parametrize("reply, value", [("97.75V", 97.75), ("12.00 V", 12.0), ("+4.19987000E+00", 4.19987),
                                          ("-1.500A", -1.5), (" 3", 3.0), ("2.5e-3 A", 0.0025)])
def test_parse_number_reads_the_leading_number_with_or_without_a_unit(reply, value):
    assert parse_number(reply) == value


def test_parse_number_rejects_text_without_a_number():
    with pytest.raises(InstrumentError, match="expected a number, got 'ERROR'"):
        parse_number("ERROR")


@pytest.mark.parametrize("reply, value", [("ON", True), ("1", True), ("off", False), ("0\n", False)])
def test_parse_on_off(reply, value):
    assert parse_on_off(reply) is value


def test_channel_lists_expand_in_order_and_format_back():
    assert parse_channel_list("(@101:103,105)") == [101, 102, 103, 105]
    assert parse_channel_list("118:120,201") == [118, 119, 120, 201]
    assert format_channel_list([101, 102, 204]) == "(@101,102,204)"
    with pytest.raises(ValueError, match="'10x' is not a channel"):
        parse_channel_list("101,10x")
