"""The SCPI engine of the simulated instruments: the IEEE 488.2 / SCPI rules real instruments share."""

from __future__ import annotations

import pytest

from stackcycler.drivers.sim.scpi import ScpiInstrument, scpi


class Toy(ScpiInstrument):
    IDENTITY = "Acme,TOY1,42,1.0"
    ERROR_QUEUE_DEPTH = 4

    def __init__(self):
        super().__init__()
        self.voltage = 0.0
        self.current = 0.0
        self.on = False

    @scpi("[SOURce:]VOLTage[:LEVel][:IMMediate][:AMPLitude]")
    def _voltage(self, args):
        self.voltage = self.number(args[0], 0.0, 20.0, default=1.0, units=("V",))

    @scpi("[SOURce:]VOLTage[:LEVel][:IMMediate][:AMPLitude]?")
    def _voltage_q(self, args):
        return self.nr3(self.voltage)

    @scpi("[SOURce:]CURRent[:LEVel]")
    def _current(self, args):
        self.current = self.number(args[0], 0.0, 5.0, units=("A",))

    @scpi("OUTPut[:STATe]")
    def _output(self, args):
        self.on = self.boolean(args[0])

    @scpi("OUTPut[:STATe]?")
    def _output_q(self, args):
        return "1" if self.on else "0"

    @scpi("ROUTe:SCAN")
    def _scan(self, args):
        self.scan = self.channel_list(args[0])


@pytest.fixture
def toy() -> Toy:
    return Toy()


def error(toy: Toy) -> str:
    return toy.handle("SYST:ERR?")


@pytest.mark.parametrize("message", ["VOLT 5", "volt 5", "VOLTAGE 5", "SOUR:VOLT 5", "source:voltage:level 5",
                                     ":SOUR:VOLT:LEV:IMM:AMPL 5", "Sour:Volt:Ampl 5"])
def test_short_long_mixed_case_and_optional_nodes_are_one_command(toy, message):
    toy.handle(message)
    assert toy.voltage == 5.0
    assert error(toy) == '+0,"No error"'


def test_a_command_after_a_semicolon_is_relative_to_the_previous_path(toy):
    toy.handle("SOUR:VOLT 5;CURR 1")  # SOUR:CURR
    assert (toy.voltage, toy.current) == (5.0, 1.0)


def test_semicolon_colon_returns_to_the_root(toy):
    toy.handle("SOUR:VOLT 3;:OUTP ON")
    assert toy.on and toy.voltage == 3.0


def test_a_relative_command_that_does_not_exist_under_the_path_is_undefined(toy):
    toy.handle("SOUR:VOLT 3;OUTP ON")  # SOUR:OUTP does not exist
    assert not toy.on
    assert error(toy) == '-113,"Undefined header"'


def test_several_queries_in_one_message_answer_in_one_reply(toy):
    toy.handle("VOLT 2.5;:OUTP 1")
    assert toy.handle("VOLT?;:OUTP?;*IDN?") == "+2.50000000E+00;1;Acme,TOY1,42,1.0"


def test_a_rejected_query_sends_no_reply_and_queues_the_error(toy):
    assert toy.handle("VOLTS?") is None
    assert error(toy) == '-113,"Undefined header"'


@pytest.mark.parametrize("message, code", [("VOLT", -109), ("VOLT 1,2", -108), ("VOLT 25", -222),
                                           ("VOLT abc", -104), ("VOLT 5A", -138), ("OUTP MAYBE", -224),
                                           ("ROUT:SCAN 101", -102), ("ROUT:SCAN (@10x)", -102)])
def test_bad_parameters_put_the_standard_error_in_the_queue(toy, message, code):
    toy.handle(message)
    assert error(toy).startswith(f"{code:+d},")


@pytest.mark.parametrize("argument, value", [("MIN", 0.0), ("max", 20.0), ("DEF", 1.0), ("5V", 5.0),
                                             ("500mV", 0.5), ("5E+0", 5.0), ("+.5", 0.5)])
def test_numbers_keywords_and_unit_suffixes(toy, argument, value):
    toy.handle(f"VOLT {argument}")
    assert toy.voltage == pytest.approx(value)
    assert error(toy) == '+0,"No error"'


def test_channel_lists_expand_ranges_in_order(toy):
    toy.handle("ROUT:SCAN (@101:103,105)")
    assert toy.scan == [101, 102, 103, 105]


def test_the_error_queue_is_first_in_first_out_and_reports_no_error_when_empty(toy):
    toy.handle("FOO")
    toy.handle("VOLT 99")
    assert [error(toy), error(toy), error(toy)] == ['-113,"Undefined header"', '-222,"Data out of range"',
                                                    '+0,"No error"']


def test_a_full_error_queue_ends_with_queue_overflow(toy):
    for _ in range(6):
        toy.handle("FOO")
    errors = [error(toy) for _ in range(5)]
    assert errors == ['-113,"Undefined header"'] * 3 + ['-350,"Queue overflow"', '+0,"No error"']


def test_esr_records_command_and_execution_errors_and_clears_on_read(toy):
    toy.handle("FOO")  # command error: bit 5 (32)
    toy.handle("VOLT 99")  # execution error: bit 4 (16)
    assert toy.handle("*ESR?") == "48"
    assert toy.handle("*ESR?") == "0"


def test_cls_clears_the_queue_and_the_event_register(toy):
    toy.handle("FOO")
    toy.handle("*CLS")
    assert toy.handle("*ESR?") == "0" and error(toy) == '+0,"No error"'


def test_an_instrument_without_opc_treats_it_as_undefined():
    class NoOpc(Toy):
        OPC_SUPPORTED = False

    instrument = NoOpc()
    assert Toy().handle("*OPC?") == "1"
    assert instrument.handle("*OPC?") is None
    assert error(instrument) == '-113,"Undefined header"'
