"""The SCPI message engine shared by the simulated instruments (drivers/sim/scpi.py).

A tiny instrument declared here exercises the IEEE 488.2 / SCPI-1999 rules the engine
implements once for every simulator: keyword forms, paths in compound messages, parameters,
the error queue and the standard event status register.
"""

from __future__ import annotations

import pytest

from stackcycler.drivers.sim.scpi import ScpiInstrument, scpi

NO_ERROR = '+0,"No error"'


class Bench(ScpiInstrument):
    """A one-channel source with a meter, an output switch, a scanner and a trigger source."""

    IDENTITY = "Test Instruments,TB-1,0001,1.0"
    ERROR_QUEUE_DEPTH = 3

    def __init__(self) -> None:
        super().__init__()
        self.voltage = 0.0
        self.current = 0.0
        self.output = False
        self.scan: list[int] = []
        self.trigger = "IMMEDIATE"
        self.text = ""
        self.calibration: list[str] = []

    @scpi("[SOURce:]VOLTage[:LEVel]")
    def _voltage(self, args):
        self.voltage = self.number(args[0], 0.0, 20.0, default=1.0, units=("V",))

    @scpi("[SOURce:]VOLTage[:LEVel]?")
    def _voltage_q(self, args):
        return self.nr3(self.voltage)

    @scpi("[SOURce:]CURRent[:LEVel]")
    def _current(self, args):
        self.current = self.number(args[0], 0.0, 5.0, units=("A",))  # no default: DEF is illegal

    @scpi("[SOURce:]CURRent[:LEVel]?")
    def _current_q(self, args):
        return self.nr3(self.current)

    @scpi("MEASure:VOLTage[:DC]?")
    def _measure_voltage(self, args):
        return self.nr3(self.voltage if self.output else 0.0)

    @scpi("OUTPut[:STATe]")
    def _output(self, args):
        self.output = self.boolean(args[0])

    @scpi("OUTPut[:STATe]?")
    def _output_q(self, args):
        return "1" if self.output else "0"

    @scpi("ROUTe:SCAN")
    def _scan(self, args):
        self.scan = self.channel_list(args[0])

    @scpi("TRIGger:SOURce")
    def _trigger_source(self, args):
        self.trigger = self.choice(args[0], ["IMMediate", "BUS", "EXTernal"])

    @scpi("DISPlay:TEXT")
    def _display_text(self, args):
        self.text = args[0]

    @scpi("CALibrate:POINt", nargs=(2, 3))
    def _calibration_point(self, args):
        self.calibration = args


class NoOpcBench(Bench):
    OPC_SUPPORTED = False


@pytest.fixture
def bench() -> Bench:
    return Bench()


def next_error(instrument: ScpiInstrument) -> str:
    return instrument.handle("SYST:ERR?")


def error_code(instrument: ScpiInstrument) -> int:
    return int(next_error(instrument).split(",")[0])


# --- headers: keyword forms, optional nodes, the root --------------------------------------


@pytest.mark.parametrize("message", ["VOLT 5", "VOLTAGE 5", "volt 5", "Voltage 5", "vOlT 5", "SOUR:VOLT 5",
                                     "SOURCE:VOLTAGE:LEVEL 5", "sour:Voltage:lev 5", "Source:volt:LEVel 5"])
def test_short_and_long_forms_in_any_case_name_the_same_command(bench, message):
    bench.handle(message)
    assert bench.voltage == 5.0
    assert next_error(bench) == NO_ERROR


@pytest.mark.parametrize("message", ["VOLT 7", "SOUR:VOLT 7", "VOLT:LEV 7", "SOUR:VOLT:LEV 7"])
def test_optional_nodes_may_be_omitted(bench, message):
    bench.handle(message)
    assert bench.voltage == 7.0


@pytest.mark.parametrize("query", ["MEAS:VOLT?", "MEAS:VOLT:DC?", "measure:voltage:dc?"])
def test_an_optional_node_at_the_end_of_a_query_may_be_omitted(bench, query):
    bench.handle("VOLT 2;:OUTP ON")
    assert bench.handle(query) == "+2.00000000E+00"


def test_a_leading_colon_is_accepted(bench):
    bench.handle(":SOUR:VOLT 4")
    assert bench.voltage == 4.0
    assert bench.handle(":VOLT?") == "+4.00000000E+00"


@pytest.mark.parametrize("message", ["VOLTA 5", "VOLTAG 5", "SOURC:VOLT 5", "VOLT:LEVE 5"])
def test_a_keyword_that_is_neither_the_short_nor_the_long_form_is_undefined(bench, message):
    bench.handle(message)
    assert bench.voltage == 0.0
    assert next_error(bench) == '-113,"Undefined header"'


def test_an_unknown_header_queues_undefined_header(bench):
    assert bench.handle("FOO:BAR 1") is None
    assert next_error(bench) == '-113,"Undefined header"'


def test_a_rejected_query_returns_no_reply(bench):
    assert bench.handle("VOLT:BOGUS?") is None
    assert error_code(bench) == -113


def test_a_query_form_exists_only_where_one_is_declared(bench):
    assert bench.handle("ROUT:SCAN?") is None
    assert error_code(bench) == -113


def test_an_empty_node_is_a_syntax_error(bench):
    bench.handle("SOUR::VOLT 5")
    assert bench.voltage == 0.0
    assert error_code(bench) == -102


def test_a_command_returns_no_reply(bench):
    assert bench.handle("VOLT 3") is None


# --- compound messages ------------------------------------------------------------------


def test_a_command_after_a_semicolon_is_relative_to_the_previous_path(bench):
    bench.handle("SOUR:VOLT 5;CURR 1")  # the second is SOUR:CURR
    assert (bench.voltage, bench.current) == (5.0, 1.0)
    assert next_error(bench) == NO_ERROR


def test_a_relative_command_absent_under_the_current_path_is_undefined(bench):
    bench.handle("SOUR:VOLT 5;OUTP ON")  # SOUR:OUTP does not exist
    assert bench.voltage == 5.0 and not bench.output
    assert next_error(bench) == '-113,"Undefined header"'


def test_semicolon_colon_returns_to_the_root(bench):
    bench.handle("SOUR:VOLT 5;:OUTP ON")
    assert bench.voltage == 5.0 and bench.output
    assert next_error(bench) == NO_ERROR


def test_a_common_command_between_two_commands_keeps_the_path(bench):
    bench.handle("SOUR:VOLT 5;*CLS;CURR 2")
    assert (bench.voltage, bench.current) == (5.0, 2.0)
    assert next_error(bench) == NO_ERROR


def test_several_queries_in_one_message_reply_joined_with_semicolons(bench):
    bench.handle("VOLT 2.5;CURR 0.5;:OUTP ON")
    assert bench.handle("VOLT?;CURR?;:OUTP?;*IDN?") == (
        "+2.50000000E+00;+5.00000000E-01;1;Test Instruments,TB-1,0001,1.0")


def test_a_failing_query_in_a_compound_message_drops_only_its_own_reply(bench):
    bench.handle("VOLT 3")
    assert bench.handle("VOLT?;:NOPE?;:OUTP?") == "+3.00000000E+00;0"
    assert error_code(bench) == -113


def test_an_error_in_one_command_does_not_stop_the_next(bench):
    bench.handle("VOLT 99;:OUTP ON")
    assert bench.voltage == 0.0 and bench.output
    assert error_code(bench) == -222


def test_semicolons_inside_quotes_do_not_split_the_message(bench):
    bench.handle('DISP:TEXT "a;b"')
    assert bench.text == '"a;b"'
    assert next_error(bench) == NO_ERROR


# --- parameters -------------------------------------------------------------------------


def test_a_missing_parameter_is_error_109(bench):
    bench.handle("VOLT")
    assert next_error(bench) == '-109,"Missing parameter"'


def test_too_many_parameters_is_error_108(bench):
    bench.handle("VOLT 1,2")
    assert bench.voltage == 0.0
    assert next_error(bench) == '-108,"Parameter not allowed"'


def test_a_parameter_to_a_query_that_takes_none_is_error_108(bench):
    assert bench.handle("VOLT? MAX") is None
    assert error_code(bench) == -108


@pytest.mark.parametrize("message, code", [("CAL:POIN 1", -109), ("CAL:POIN 1,2,3,4", -108)])
def test_declared_nargs_bound_the_parameter_count(bench, message, code):
    bench.handle(message)
    assert bench.calibration == []
    assert error_code(bench) == code


@pytest.mark.parametrize("message, args", [("CAL:POIN 1,2", ["1", "2"]), ("CAL:POIN 1, 2 ,3", ["1", "2", "3"])])
def test_parameters_within_declared_nargs_reach_the_handler_stripped(bench, message, args):
    bench.handle(message)
    assert bench.calibration == args


@pytest.mark.parametrize("value", ["20.001", "-0.1", "1E3"])
def test_a_number_out_of_range_is_error_222_and_leaves_the_setting(bench, value):
    bench.handle("VOLT 3")
    bench.handle(f"VOLT {value}")
    assert bench.voltage == 3.0
    assert next_error(bench) == '-222,"Data out of range"'


@pytest.mark.parametrize("argument, value", [("MIN", 0.0), ("minimum", 0.0), ("MAX", 20.0), ("Maximum", 20.0),
                                             ("DEF", 1.0), ("default", 1.0)])
def test_min_max_and_def_keywords(bench, argument, value):
    bench.handle(f"VOLT {argument}")
    assert bench.voltage == value
    assert next_error(bench) == NO_ERROR


def test_def_without_a_declared_default_is_an_illegal_parameter_value(bench):
    bench.handle("CURR DEF")
    assert error_code(bench) == -224


@pytest.mark.parametrize("argument, value", [("5", 5.0), ("+5", 5.0), ("5.", 5.0), ("+.5", 0.5), ("2.5E+0", 2.5),
                                             ("1e1", 10.0), ("5V", 5.0), ("5 V", 5.0), ("5v", 5.0),
                                             ("500mV", 0.5), ("500MV", 0.5)])
def test_numbers_in_nrf_form_with_or_without_a_unit_suffix(bench, argument, value):
    bench.handle(f"VOLT {argument}")
    assert bench.voltage == pytest.approx(value, rel=1e-15)
    assert next_error(bench) == NO_ERROR


def test_the_range_is_checked_after_the_suffix_is_applied(bench):
    bench.handle("VOLT 20000mV")  # 20 V: at the limit
    bench.handle("VOLT 20001mV")  # 20.001 V: beyond it, although 20001 is a valid number
    assert bench.voltage == 20.0
    assert [error_code(bench), error_code(bench)] == [-222, 0]


@pytest.mark.parametrize("argument", ["5A", "5KV", "5mA", "5W"])
def test_a_wrong_unit_suffix_is_error_138(bench, argument):
    bench.handle(f"VOLT {argument}")
    assert bench.voltage == 0.0
    assert next_error(bench) == '-138,"Suffix not allowed"'


@pytest.mark.parametrize("argument", ["abc", "five", "0x10", "NAN", "--5"])
def test_a_parameter_that_is_not_a_number_is_error_104(bench, argument):
    bench.handle(f"VOLT {argument}")
    assert bench.voltage == 0.0
    assert next_error(bench) == '-104,"Data type error"'


@pytest.mark.parametrize("argument, state", [("ON", True), ("on", True), ("1", True), ("OFF", False),
                                             ("off", False), ("0", False)])
def test_booleans_on_off_one_zero(bench, argument, state):
    bench.output = not state
    bench.handle(f"OUTP {argument}")
    assert bench.output is state


def test_a_boolean_that_is_not_on_off_one_or_zero_is_error_224(bench):
    bench.handle("OUTP MAYBE")
    assert bench.output is False
    assert error_code(bench) == -224


@pytest.mark.parametrize("argument, long_form", [("IMM", "IMMEDIATE"), ("immediate", "IMMEDIATE"), ("Bus", "BUS"),
                                                 ("EXT", "EXTERNAL")])
def test_a_character_parameter_matches_short_or_long_form_and_yields_the_long_form(bench, argument, long_form):
    bench.trigger = ""
    bench.handle(f"TRIG:SOUR {argument}")
    assert bench.trigger == long_form


def test_a_character_parameter_not_among_the_choices_is_error_224(bench):
    bench.handle("TRIG:SOUR TIMER")
    assert bench.trigger == "IMMEDIATE"
    assert error_code(bench) == -224


@pytest.mark.parametrize("argument, channels", [("(@101:103,105)", [101, 102, 103, 105]),
                                                ("(@105,101:102)", [105, 101, 102]),
                                                ("(@201)", [201]),
                                                ("(@101:103,201:202)", [101, 102, 103, 201, 202])])
def test_a_channel_list_expands_ranges_in_the_order_given(bench, argument, channels):
    bench.handle(f"ROUT:SCAN {argument}")
    assert bench.scan == channels
    assert next_error(bench) == NO_ERROR


@pytest.mark.parametrize("argument", ["101:103", "(101:103)", "(@101:10x)", "(@101", "(@101:102:103)", "(@a)"])
def test_a_malformed_channel_list_is_a_syntax_error(bench, argument):
    bench.handle(f"ROUT:SCAN {argument}")
    assert bench.scan == []
    assert next_error(bench) == '-102,"Syntax error"'


# --- the error queue, *ESR?, *CLS and the other common commands ---------------------------


def test_the_error_queue_reports_no_error_when_empty(bench):
    assert next_error(bench) == NO_ERROR


def test_the_error_queue_is_first_in_first_out(bench):
    bench.handle("FOO")
    bench.handle("VOLT 99")
    bench.handle("VOLT")
    assert [next_error(bench) for _ in range(4)] == [
        '-113,"Undefined header"', '-222,"Data out of range"', '-109,"Missing parameter"', NO_ERROR]


def test_a_full_error_queue_replaces_its_last_entry_with_queue_overflow(bench):
    for message in ("FOO", "VOLT 99", "VOLT", "VOLT 1,2", "VOLT abc"):  # five errors, room for three
        bench.handle(message)
    assert [next_error(bench) for _ in range(4)] == [
        '-113,"Undefined header"', '-222,"Data out of range"', '-350,"Queue overflow"', NO_ERROR]


def test_the_long_form_of_the_error_query_also_reads_the_queue(bench):
    bench.handle("FOO")
    assert bench.handle("system:error:next?") == '-113,"Undefined header"'


@pytest.mark.parametrize("code, bit", [(-113, 32), (-102, 32), (-222, 16), (-203, 16), (-350, 8), (-410, 4),
                                       (100, 8)])
def test_each_error_class_sets_its_standard_event_status_bit(bench, code, bit):
    bench.push_error(code)
    assert bench.handle("*ESR?") == str(bit)


def test_esr_accumulates_command_and_execution_errors_and_clears_on_read(bench):
    bench.handle("FOO")  # command error: 32
    bench.handle("VOLT 99")  # execution error: 16
    assert bench.handle("*ESR?") == "48"
    assert bench.handle("*ESR?") == "0"


def test_cls_clears_the_error_queue_and_the_event_register(bench):
    bench.handle("FOO")
    bench.handle("VOLT 99")
    bench.handle("*CLS")
    assert bench.handle("*ESR?") == "0"
    assert next_error(bench) == NO_ERROR


@pytest.mark.parametrize("query", ["*IDN?", "*idn?"])
def test_idn_returns_the_identity(bench, query):
    assert bench.handle(query) == "Test Instruments,TB-1,0001,1.0"


def test_opc_query_answers_1_when_supported(bench):
    assert bench.handle("*OPC?") == "1"


def test_opc_query_is_an_undefined_header_when_opc_is_not_supported():
    instrument = NoOpcBench()
    assert instrument.handle("*OPC?") is None
    assert next_error(instrument) == '-113,"Undefined header"'


def test_rst_calls_the_instruments_reset():
    class Resettable(Bench):
        def reset(self) -> None:
            self.voltage = 0.0

    instrument = Resettable()
    instrument.handle("VOLT 5")
    instrument.handle("*RST")
    assert instrument.voltage == 0.0
    assert next_error(instrument) == NO_ERROR
