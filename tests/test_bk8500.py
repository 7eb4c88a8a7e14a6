"""The BK Precision 8500 electronic load: its 26-byte frames, the driver at byte level, the
simulated load computed from the stack model, the byte transports, and the driver discharging
a simulated stack.

Command frames are written out by hand from the manual's description (0xAA, address, command,
little-endian data, zeros, checksum = sum of bytes 0-24 modulo 256); the first ones are the
manual's own worked examples. Replies the tests play back are built with `reply()`.
"""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError
from support import ByteScript, PtyDevice, ScriptedByteTransport, needs_pty

from stackcycler.clock import VirtualClock
from stackcycler.drivers.bk8500 import (FRAME_LENGTH, MODEL_RATINGS, Bk8500, FrameError, InputState, checksum,
                                        decode_frame, encode_frame, u32)
from stackcycler.drivers.roles import ElectronicLoad
from stackcycler.drivers.sim.bk8500 import Bk8500SimConfig, SimBk8500, current_for_power
from stackcycler.drivers.sim.stack import StackModel, StackParameters
from stackcycler.drivers.sim.world import SimWorld
from stackcycler.drivers.transport import (InProcessByteTransport, SerialByteTransport, open_byte_transport,
                                           serial_port_of)
from stackcycler.errors import InstrumentError, InstrumentLinkError, InstrumentTimeout, InvalidInput


def hand(head: str, check: int) -> bytes:
    """A frame written out by hand: its leading bytes in hex, zeros up to byte 24, the checksum."""
    first = bytes.fromhex(head)
    return first + bytes(FRAME_LENGTH - 1 - len(first)) + bytes([check])


def reply(command: int, data: bytes = b"", address: int = 0) -> bytes:
    return encode_frame(command, data, address)


def status(code: int, address: int = 0) -> bytes:
    return encode_frame(0x12, bytes([code]), address)


OK = status(0x80)

# --- the frame -----------------------------------------------------------------------------------


@pytest.mark.parametrize("command, data, frame", [
    (0x20, b"\x01", hand("AA 00 20 01", 0xCB)),  # remote on
    (0x20, b"\x00", hand("AA 00 20 00", 0xCA)),  # remote off
    (0x21, b"\x01", hand("AA 00 21 01", 0xCC)),  # load on
    (0x21, b"\x00", hand("AA 00 21 00", 0xCB)),  # load off
    (0x28, b"\x00", hand("AA 00 28 00", 0xD2)),  # mode CC
    (0x2A, u32(15000), hand("AA 00 2A 98 3A 00 00", 0xA6)),  # CC = 1.5 A in 0.1 mA
    (0x2C, u32(16230), hand("AA 00 2C 66 3F 00 00", 0x7B)),  # CV = 16.23 V in mV (manual example)
    (0x24, u32(31200), hand("AA 00 24 E0 79 00 00", 0x27)),  # max current 3.12 A (manual example)
    (0x4E, u32(3000), hand("AA 00 4E B8 0B 00 00", 0xBB)),  # battery-test minimum 3.0 V
    (0x5D, b"\x04", hand("AA 00 5D 04", 0x0B)),  # function BATTERY
    (0x5F, b"", hand("AA 00 5F", 0x09)),  # read input state
    (0x6A, b"", hand("AA 00 6A", 0x14)),  # product information
])
def test_encode_frame_matches_the_worked_frames(command, data, frame):
    assert encode_frame(command, data) == frame


def test_encode_frame_puts_the_address_in_byte_1_and_counts_it_in_the_checksum():
    assert encode_frame(0x21, b"\x01", address=5) == hand("AA 05 21 01", 0xD1)


def test_the_checksum_is_the_sum_of_bytes_0_to_24_modulo_256():
    frame = encode_frame(0x2E, bytes([0xFF] * 22))
    assert frame[-1] == (0xAA + 0x00 + 0x2E + 22 * 0xFF) % 256
    assert checksum(frame) == frame[-1]


def test_encode_frame_refuses_more_than_22_data_bytes():
    with pytest.raises(ValueError, match="23 data bytes"):
        encode_frame(0x2A, bytes(23))


def test_u32_refuses_a_value_that_does_not_fit_four_bytes():
    with pytest.raises(ValueError, match="unsigned 32-bit"):
        u32(2**32)


def test_decode_frame_reads_a_status_frame():
    frame = decode_frame(hand("AA 00 12 80", 0x3C))
    assert (frame.address, frame.command, frame.status) == (0, 0x12, 0x80)


def test_decode_frame_reads_the_worked_input_state_reply():
    raw = hand("AA 00 5F 39 30 00 00 98 3A 00 00 55 48 00 00 0C 40 00", 0x2D)
    state = InputState.from_data(decode_frame(raw).data)
    assert (state.voltage_V, state.current_A, state.power_W) == (12.345, 1.5, 18.517)
    assert state.remote and state.input_on and state.mode == "CC" and state.faults() == []


@pytest.mark.parametrize("raw, problem", [
    (hand("AA 00 12 80", 0x3C)[:25], "25 bytes, a frame has 26"),
    (hand("AA 00 12 80", 0x3C) + b"\x00", "27 bytes, a frame has 26"),
    (b"\xAB" + hand("AA 00 12 80", 0x3C)[1:], "start byte 0xAB, expected 0xAA"),
    (hand("AA 00 12 80", 0x3D), "checksum 0x3D, the bytes sum to 0x3C"),
])
def test_decode_frame_names_what_is_wrong(raw, problem):
    with pytest.raises(FrameError, match=problem):
        decode_frame(raw)


def test_decode_frame_catches_a_flipped_data_bit_through_the_checksum():
    raw = bytearray(reply(0x5F, u32(12345)))
    raw[4] ^= 0x01
    with pytest.raises(FrameError, match="checksum"):
        decode_frame(bytes(raw))


# --- the driver at byte level --------------------------------------------------------------------



def state_reply(volts: float = 0.0, amps: float = 0.0, operation: int = 0x04, demand: int = 0x40) -> bytes:
    data = u32(round(volts * 1000)) + u32(round(amps * 10000)) + u32(round(volts * amps * 1000))
    return reply(0x5F, data + bytes([operation]) + demand.to_bytes(2, "little"))


PRODUCT_INFO = reply(0x6A, b"8500\x00" + bytes([0x84, 0x01]) + b"8500000042")
READ_STATE = hand("AA 00 5F", 0x09)
INPUT_ON = hand("AA 00 21 01", 0xCC)
INPUT_OFF = hand("AA 00 21 00", 0xCB)
CONNECT: ByteScript = [
    (hand("AA 00 6A", 0x14), PRODUCT_INFO),
    (hand("AA 00 20 01", 0xCB), OK),
    (READ_STATE, state_reply(operation=0x04)),
    (INPUT_OFF, OK),
    (hand("AA 00 23", 0xCD), reply(0x23, u32(120_000))),
    (hand("AA 00 25", 0xCF), reply(0x25, u32(300_000))),
    (hand("AA 00 27", 0xD1), reply(0x27, u32(300_000))),
]
IDENTITY = "B&K Precision,8500,8500000042,1.84"


class Played:
    def __init__(self, script: ByteScript):
        self.transport = ScriptedByteTransport(script)
        self.load = Bk8500(self.transport)

    def __enter__(self) -> Bk8500:
        return self.load

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.transport.done()


def connected(*script: tuple[bytes, bytes | None]) -> Played:
    """A driver that will connect, then exchange `script`; on leaving, the whole script must have run."""
    return Played(CONNECT + list(script))


def test_the_driver_implements_the_electronic_load_role():
    assert issubclass(Bk8500, ElectronicLoad)


def test_connect_sends_the_documented_sequence_and_returns_the_identity():
    with connected() as load:
        assert load.connect() == IDENTITY
    assert (load.model, load.serial_number, load.firmware) == ("8500", "8500000042", "1.84")


def test_connect_takes_the_ratings_of_the_reported_model_and_reads_the_max_settings():
    script = [pair if pair[0] != hand("AA 00 25", 0xCF) else (pair[0], reply(0x25, u32(50_000))) for pair in CONNECT]
    with Played(script) as load:
        load.connect()
    assert load.ratings == MODEL_RATINGS["8500"]
    assert (load.ratings.voltage_V, load.ratings.current_A, load.ratings.power_W) == (120.0, 30.0, 300.0)
    assert load.max_settings == {"max_voltage_V": 120.0, "max_current_A": 5.0, "max_power_W": 300.0}


def test_connect_records_an_input_found_on_and_still_switches_it_off():
    script = [(sent, state_reply(operation=0x0C)) if sent == READ_STATE else (sent, answer) for sent, answer in CONNECT]
    with Played(script) as load:
        load.connect()
    assert load.input_found_on is True
    assert load.output_found_on is True


def test_connect_refuses_a_model_whose_ratings_it_does_not_know():
    other = reply(0x6A, b"8510\x00" + bytes([0x84, 0x01]) + b"8510000001")
    with Played([(hand("AA 00 6A", 0x14), other)]) as load:
        with pytest.raises(InstrumentError, match="model '8510'; this driver knows the ratings of models 8500, 8502"):
            load.connect()


def test_connect_refuses_when_the_state_shows_no_remote_control():
    with Played(CONNECT[:2] + [(READ_STATE, state_reply(operation=0x00))]) as load:
        with pytest.raises(InstrumentError, match="remote control not granted"):
            load.connect()


def test_connect_to_a_silent_load_times_out():
    with Played([(hand("AA 00 6A", 0x14), None)]) as load:
        with pytest.raises(InstrumentTimeout, match="after 0 of 26 bytes"):
            load.connect()


def test_ratings_before_connect_are_an_instrument_error():
    with Played([]) as load:
        with pytest.raises(InstrumentError, match="not connected"):
            _ = load.ratings


def test_an_address_beyond_0xfe_is_refused():
    with pytest.raises(InvalidInput, match="address 255"):
        Bk8500(ScriptedByteTransport([]), address=0xFF)


def test_a_load_at_another_address_gets_it_in_every_frame():
    transport = ScriptedByteTransport([(hand("AA 05 21 01", 0xD1), status(0x80, address=5))])
    Bk8500(transport, address=5).set_input(True)
    transport.done()


@pytest.mark.parametrize("mode, value, value_frame, mode_frame", [
    ("CC", 1.5, hand("AA 00 2A 98 3A 00 00", 0xA6), hand("AA 00 28 00", 0xD2)),
    ("CV", 16.23, hand("AA 00 2C 66 3F 00 00", 0x7B), hand("AA 00 28 01", 0xD3)),
    ("CP", 213.45, hand("AA 00 2E CA 41 03 00", 0xE6), hand("AA 00 28 02", 0xD4)),  # CW: 1 mW units
    ("CR", 200.0, hand("AA 00 30 40 0D 03 00", 0x2A), hand("AA 00 28 03", 0xD5)),  # 1 mOhm units
])
def test_set_mode_sends_the_value_then_the_mode(mode, value, value_frame, mode_frame):
    with connected((value_frame, OK), (mode_frame, OK)) as load:
        load.connect()
        load.set_mode(mode, value)


def test_set_mode_with_unchanged_mode_and_value_sends_nothing():
    script = [(hand("AA 00 2A 98 3A 00 00", 0xA6), OK), (hand("AA 00 28 00", 0xD2), OK)]
    with connected(*script) as load:
        load.connect()
        load.set_mode("CC", 1.5)
        load.set_mode("CC", 1.5)


def test_set_mode_with_a_new_value_in_the_same_mode_sends_only_the_value():
    script = [(hand("AA 00 2A 98 3A 00 00", 0xA6), OK), (hand("AA 00 28 00", 0xD2), OK),
              (hand("AA 00 2A 30 75 00 00", 0x79), OK)]  # 3.0 A = 30000 = 0x7530
    with connected(*script) as load:
        load.connect()
        load.set_mode("CC", 1.5)
        load.set_mode("CC", 3.0)


def test_set_mode_switches_the_input_on_again_after_a_mode_change_while_it_was_on():
    script = [(hand("AA 00 2A 98 3A 00 00", 0xA6), OK), (hand("AA 00 28 00", 0xD2), OK), (INPUT_ON, OK),
              (hand("AA 00 2C 66 3F 00 00", 0x7B), OK), (hand("AA 00 28 01", 0xD3), OK), (INPUT_ON, OK)]
    with connected(*script) as load:
        load.connect()
        load.set_mode("CC", 1.5)
        load.set_input(True)
        load.set_mode("CV", 16.23)


def test_set_mode_resends_everything_after_safe_state():
    set_cc = [(hand("AA 00 2A 98 3A 00 00", 0xA6), OK), (hand("AA 00 28 00", 0xD2), OK)]
    with connected(*set_cc, (INPUT_OFF, OK), (READ_STATE, state_reply()), *set_cc) as load:
        load.connect()
        load.set_mode("CC", 1.5)
        load.safe_state()
        load.set_mode("CC", 1.5)


@pytest.mark.parametrize("mode, value", [
    ("CC", 30.0001), ("CC", -0.1), ("CC", math.nan), ("CC", math.inf),
    ("CV", 120.001), ("CP", 300.001), ("CR", 0.099), ("CR", 7500.01),
])
def test_a_set_value_outside_the_model_range_raises_invalid_input_and_sends_nothing(mode, value):
    with connected() as load:
        load.connect()
        with pytest.raises(InvalidInput, match="is outside the range .* nothing was sent"):
            load.set_mode(mode, value)


def test_a_set_value_above_the_loads_max_setting_is_refused_before_sending():
    script = [(hand("AA 00 22 B8 82 01 00", 0x07), OK), (hand("AA 00 24 50 C3 00 00", 0xE1), OK)]
    with connected(*script) as load:
        load.connect()
        load.set_protection(99.0, 5.0)
        with pytest.raises(InvalidInput, match="cc_current_A = 5.01 is outside the range 0 to 5"):
            load.set_mode("CC", 5.01)
        with pytest.raises(InvalidInput, match="cv_voltage_V = 99.5 is outside the range 0 to 99"):
            load.set_mode("CV", 99.5)


def test_an_unknown_mode_is_invalid_input():
    with connected() as load:
        load.connect()
        with pytest.raises(InvalidInput, match="mode 'CW' is not one of CC, CV, CR, CP"):
            load.set_mode("CW", 10.0)  # type: ignore[arg-type]


def test_set_protection_sets_max_voltage_and_max_current():
    script = [(hand("AA 00 22 B8 82 01 00", 0x07), OK), (hand("AA 00 24 50 C3 00 00", 0xE1), OK)]
    with connected(*script) as load:
        load.connect()
        load.set_protection(99.0, 5.0)
    assert load.max_settings["max_voltage_V"] == 99.0 and load.max_settings["max_current_A"] == 5.0


@pytest.mark.parametrize("over_voltage, over_current", [(120.001, 5.0), (99.0, 30.001)])
def test_set_protection_beyond_the_rating_sends_neither(over_voltage, over_current):
    with connected() as load:
        load.connect()
        with pytest.raises(InvalidInput):
            load.set_protection(over_voltage, over_current)


def test_max_power_is_sent_in_milliwatts():
    with connected((hand("AA 00 26 90 D0 03 00", 0x33), OK)) as load:
        load.connect()
        load.max_power_W = 250.0


@pytest.mark.parametrize("query, code, data, expected", [
    (hand("AA 00 2B", 0xD5), 0x2B, u32(15000), 1.5),
    (hand("AA 00 2D", 0xD7), 0x2D, u32(16230), 16.23),
    (hand("AA 00 2F", 0xD9), 0x2F, u32(213450), 213.45),
    (hand("AA 00 31", 0xDB), 0x31, u32(200000), 200.0),
])
def test_set_values_read_back_in_si_units(query, code, data, expected):
    names = {0x2B: "cc_current_A", 0x2D: "cv_voltage_V", 0x2F: "cw_power_W", 0x31: "cr_resistance_ohm"}
    with connected((query, reply(code, data))) as load:
        load.connect()
        assert getattr(load, names[code]) == expected


def test_read_mode_maps_the_native_code_cw_to_cp():
    with connected((hand("AA 00 29", 0xD3), reply(0x29, b"\x02"))) as load:
        load.connect()
        assert load.read_mode() == "CP"


@pytest.mark.parametrize("on, frame", [(True, INPUT_ON), (False, INPUT_OFF)])
def test_set_input_sends_the_load_on_off_command(on, frame):
    with connected((frame, OK)) as load:
        load.connect()
        load.set_input(on)


@pytest.mark.parametrize("operation, on", [(0x0C, True), (0x04, False)])
def test_input_is_on_reads_bit_3_of_the_operation_state(operation, on):
    state = state_reply(operation=operation)
    with connected((READ_STATE, state), (READ_STATE, state)) as load:
        load.connect()
        assert load.input_is_on() is on
        assert load.output_is_on() is on  # the role's name shared with BidirectionalSupply


def test_measure_returns_the_voltage_and_the_sunk_current_as_negative():
    worked = hand("AA 00 5F 39 30 00 00 98 3A 00 00 55 48 00 00 0C 40 00", 0x2D)
    with connected((READ_STATE, worked)) as load:
        load.connect()
        assert load.measure() == (12.345, -1.5)


@pytest.mark.parametrize("code, meaning", [(0x90, "checksum incorrect"), (0xA0, "parameter incorrect"),
                                           (0xB0, "unrecognized command"), (0xC0, "invalid command"),
                                           (0x85, "undocumented status")])
def test_a_status_other_than_success_raises_naming_the_command_and_the_status(code, meaning):
    with connected((INPUT_ON, status(code))) as load:
        load.connect()
        with pytest.raises(InstrumentError, match=rf"refused 0x21 \(INPUT\): status 0x{code:02X} \({meaning}\)"):
            load.set_input(True)


def test_a_query_answered_with_a_status_raises_naming_it():
    with connected((READ_STATE, status(0xB0))) as load:
        load.connect()
        with pytest.raises(InstrumentError, match=r"refused 0x5F \(READ_INPUT\): status 0xB0"):
            load.measure()


@pytest.mark.parametrize("bad, problem", [
    (state_reply()[:-1] + b"\x00", "garbled reply to 0x5F .*checksum 0x00"),
    (b"\x55" + state_reply()[1:], "garbled reply to 0x5F .*start byte 0x55"),
    (reply(0x5F, bytes(22), address=3), "came from address 3, expected 0"),
    (reply(0x2B, u32(15000)), r"reply to 0x5F \(READ_INPUT\) carries command 0x2B"),
    (OK, "answered with a success status and no data"),
])
def test_a_garbled_or_wrong_reply_raises_instrument_error_naming_what_was_wrong(bad, problem):
    with connected((READ_STATE, bad)) as load:
        load.connect()
        with pytest.raises(InstrumentError, match=problem):
            load.measure()


def test_a_data_reply_to_a_setting_raises():
    with connected((INPUT_ON, reply(0x21, b"\x01"))) as load:
        load.connect()
        with pytest.raises(InstrumentError, match="answered with data, expected a status frame"):
            load.set_input(True)


def test_a_short_reply_times_out_naming_the_bytes_that_came():
    with connected((READ_STATE, state_reply()[:10])) as load:
        load.connect()
        with pytest.raises(InstrumentTimeout, match="after 10 of 26 bytes"):
            load.measure()


def test_a_stray_reply_is_discarded_before_the_next_command():
    stray = state_reply(volts=1.0)
    with connected((INPUT_ON, OK + stray), (READ_STATE, state_reply(volts=87.5))) as load:
        load.connect()
        load.set_input(True)
        assert load.measure() == (87.5, 0.0)


def test_check_errors_passes_when_the_load_reports_nothing():
    with connected((READ_STATE, state_reply(operation=0x0C, demand=0x40))) as load:
        load.connect()
        load.check_errors()


@pytest.mark.parametrize("demand, named", [(0x0001, "reverse voltage"), (0x0002, "over-voltage"),
                                           (0x0004, "over-current"), (0x0008, "over-power"),
                                           (0x0010, "over-temperature")])
def test_check_errors_raises_naming_a_protection_flag(demand, named):
    with connected((READ_STATE, state_reply(demand=0x40 | demand))) as load:
        load.connect()
        with pytest.raises(InstrumentError, match=named):
            load.check_errors()


def test_check_errors_raises_when_remote_control_was_lost():
    with connected((READ_STATE, state_reply(operation=0x00))) as load:
        load.connect()
        with pytest.raises(InstrumentError, match="remote control lost"):
            load.check_errors()


def test_a_disconnected_sense_wire_counts_only_with_remote_sense_on():
    with connected((READ_STATE, state_reply(operation=0x04, demand=0x60)),
                   (READ_STATE, state_reply(operation=0x24, demand=0x60))) as load:
        load.connect()
        load.check_errors()
        with pytest.raises(InstrumentError, match="sense wires disconnected"):
            load.check_errors()


def test_safe_state_switches_the_input_off_and_confirms():
    with connected((INPUT_OFF, OK), (READ_STATE, state_reply(operation=0x04))) as load:
        load.connect()
        load.safe_state()


def test_safe_state_raises_if_the_input_still_reads_on():
    with connected((INPUT_OFF, OK), (READ_STATE, state_reply(operation=0x0C))) as load:
        load.connect()
        with pytest.raises(InstrumentError, match="input still on after the input-off command"):
            load.safe_state()


def test_safe_state_trusts_the_read_back_when_the_off_command_was_refused():
    with connected((INPUT_OFF, status(0xC0)), (READ_STATE, state_reply(operation=0x04))) as load:
        load.connect()
        load.safe_state()


def test_safe_state_reports_the_refusal_when_the_input_stays_on():
    with connected((INPUT_OFF, status(0xC0)), (READ_STATE, state_reply(operation=0x0C))) as load:
        load.connect()
        with pytest.raises(InstrumentError, match=r"input still on .*status 0xC0 \(invalid command\)"):
            load.safe_state()


def test_safe_state_raises_the_link_error_when_the_load_is_silent():
    with connected((INPUT_OFF, None)) as load:
        load.connect()
        with pytest.raises(InstrumentTimeout):
            load.safe_state()


def test_close_returns_to_front_panel_control_and_releases_the_transport():
    with connected((hand("AA 00 20 00", 0xCA), OK)) as load:
        load.connect()
        load.close()
    assert load.transport.closed


def test_close_releases_the_transport_even_when_the_load_is_silent():
    with connected((hand("AA 00 20 00", 0xCA), None)) as load:
        load.connect()
        with pytest.raises(InstrumentTimeout):
            load.close()
    assert load.transport.closed


# --- the simulated load, computed from the stack model -------------------------------------------

# 23 identical layers at 50 % SOC (OCV 3.84 V): emf 88.32 V behind 23 x 25 mOhm + 2 mOhm = 0.577 Ohm.
UNIFORM = dict(layers=23, layer_capacity_Ah=2.05, capacity_spread=0.0, r0_ohm=0.025, r0_spread=0.0, r1_ohm=0.015,
               tau1_s=40.0, interconnect_ohm=0.002, initial_soc=0.5, initial_soc_spread=0.0,
               capacity_fade_per_efc=0.0, resistance_growth_per_efc=0.0)
EMF_V = 23 * 3.84
R_OHM = 23 * 0.025 + 0.002
QUIET = Bk8500SimConfig(voltage_noise_V=0.0, current_noise_A=0.0)


def simulated_load(config: Bk8500SimConfig = QUIET, **stack_changes):
    clock = VirtualClock()
    world = SimWorld(StackModel(StackParameters(**(UNIFORM | stack_changes)), seed=1), clock)
    return SimBk8500(world, "load", config), world, clock


def ask(sim: SimBk8500, command: int, data: bytes = b"", address: int = 0) -> bytes:
    return sim.receive(encode_frame(command, data, address))


def remote(sim: SimBk8500) -> None:
    assert ask(sim, 0x20, b"\x01") == OK


def regulating(mode_code: int, set_code: int, counts: int, **stack_changes) -> tuple[SimBk8500, SimWorld]:
    sim, world, _ = simulated_load(**stack_changes)
    remote(sim)
    assert ask(sim, set_code, u32(counts)) == OK
    assert ask(sim, 0x28, bytes([mode_code])) == OK
    assert ask(sim, 0x21, b"\x01") == OK
    world.sync()  # the current settles to the new settings at the next sync, as at the next reply
    return sim, world


def read_state(sim: SimBk8500) -> InputState:
    frame = decode_frame(ask(sim, 0x5F))
    assert frame.command == 0x5F
    return InputState.from_data(frame.data)


def counts_of(state: InputState) -> tuple[int, int, int]:
    return round(state.voltage_V * 1000), round(state.current_A * 10000), round(state.power_W * 1000)


def test_sim_product_information_holds_model_firmware_and_serial():
    sim, _, _ = simulated_load()
    frame = decode_frame(ask(sim, 0x6A))
    assert frame.data[0:5] == b"8500\x00" and frame.data[5:7] == bytes([0x84, 0x01])
    assert frame.data[7:17] == b"8500000042"


def test_sim_with_the_input_off_reads_the_open_circuit_voltage_and_no_current():
    sim, world, _ = simulated_load()
    remote(sim)
    state = read_state(sim)
    assert counts_of(state) == (88320, 0, 0)
    assert (state.operation, state.demand) == (0x04, 0x40)  # remote, input off; CC mode
    assert world.stack.current_A == 0.0


def test_sim_in_cc_sinks_the_set_current():
    sim, world = regulating(0, 0x2A, 20000)  # CC 2 A
    state = read_state(sim)
    assert counts_of(state) == (87166, 20000, 174332)  # 88.32 - 2 x 0.577 = 87.166 V
    assert (state.operation, state.demand) == (0x0C, 0x40)
    assert world.stack.current_A == -2.0


def test_sim_in_cv_sinks_what_holds_the_dut_at_the_set_voltage():
    sim, world = regulating(1, 0x2C, 87000)  # CV 87 V
    state = read_state(sim)
    sink = (EMF_V - 87.0) / R_OHM
    assert counts_of(state) == (87000, round(sink * 10000), round(87.0 * sink * 1000))
    assert state.demand == 0x80
    assert world.stack.current_A == pytest.approx(-sink, rel=1e-12)


def test_sim_in_cv_above_the_dut_voltage_sinks_nothing():
    sim, world = regulating(1, 0x2C, 95000)
    assert read_state(sim).current_A == 0.0
    assert world.stack.current_A == 0.0


def test_sim_in_cr_sinks_the_terminal_voltage_over_the_set_resistance():
    sim, world = regulating(3, 0x30, 40000)  # CR 40 Ohm
    state = read_state(sim)
    sink = EMF_V / (R_OHM + 40.0)
    assert world.stack.current_A == pytest.approx(-sink, rel=1e-12)
    assert state.current_A == round(sink * 10000) / 10000
    assert state.voltage_V == pytest.approx(40.0 * sink, abs=0.0005)
    assert state.demand == 0x200


def test_sim_in_cp_sinks_the_current_that_takes_the_set_power():
    sim, world = regulating(2, 0x2E, 150000)  # CW 150 W
    sink = -world.stack.current_A
    assert sink * (EMF_V - sink * R_OHM) == pytest.approx(150.0, rel=1e-12)
    assert sink == pytest.approx((EMF_V - math.sqrt(EMF_V**2 - 4 * R_OHM * 150.0)) / (2 * R_OHM), rel=1e-12)
    assert read_state(sim).power_W == pytest.approx(150.0, abs=0.002)
    assert read_state(sim).demand == 0x100


def test_current_for_power_past_the_sources_maximum_gives_its_maximum_power_current():
    assert current_for_power(10.0, 1.0, 100.0) == 5.0  # at most 25 W from 10 V behind 1 Ohm


def test_sim_holds_the_current_at_the_max_current_setting_and_flags_oc():
    sim, world, _ = simulated_load()
    remote(sim)
    assert ask(sim, 0x2A, u32(20000)) == OK  # CC 2 A
    assert ask(sim, 0x24, u32(15000)) == OK  # then max current 1.5 A
    assert ask(sim, 0x21, b"\x01") == OK
    state = read_state(sim)
    assert world.stack.current_A == -1.5
    assert state.demand & 0x04 and state.input_on


def test_sim_holds_the_power_at_the_max_power_setting_and_flags_op():
    sim, world = regulating(0, 0x2A, 40000)  # CC 4 A at ~86 V would be ~343 W > 300 W
    sink = -world.stack.current_A
    assert sink * (EMF_V - sink * R_OHM) == pytest.approx(300.0, rel=1e-12)
    assert read_state(sim).demand & 0x08


def test_sim_switches_the_input_off_5_percent_above_the_max_voltage_and_flags_ov():
    sim, world, _ = simulated_load()
    remote(sim)
    assert ask(sim, 0x22, u32(80000)) == OK  # 80 V: the 88.3 V stack is more than 5 % above it
    assert ask(sim, 0x2A, u32(10000)) == OK
    assert ask(sim, 0x21, b"\x01") == OK
    state = read_state(sim)
    assert not state.input_on and state.demand & 0x02
    assert world.stack.current_A == 0.0


def test_sim_with_the_input_off_sinks_nothing():
    sim, world = regulating(0, 0x2A, 20000)
    assert ask(sim, 0x21, b"\x00") == OK
    assert read_state(sim).current_A == 0.0 and world.stack.current_A == 0.0


def test_sim_a_mode_change_switches_the_input_off():
    sim, world = regulating(0, 0x2A, 20000)
    assert ask(sim, 0x28, b"\x01") == OK
    assert not read_state(sim).input_on and world.stack.current_A == 0.0


def test_sim_discharges_the_stack_at_the_set_current_over_time():
    sim, world = regulating(0, 0x2A, 20000)
    world.clock.sleep_until(1800.0)
    read_state(sim)
    assert world.stack.discharged_Ah == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize("command, data, code", [
    (0x99, b"", 0xB0),  # unrecognized
    (0x32, b"", 0xB0),  # a real command this emulator does not implement
    (0x60, b"\x01", 0xC0),  # calibration is refused
    (0x2A, u32(300001), 0xA0),  # 30.0001 A: beyond the 8500's 30 A
    (0x2C, u32(120001), 0xA0),
    (0x2E, u32(300001), 0xA0),
    (0x30, u32(99), 0xA0),  # 0.099 Ohm
    (0x28, b"\x04", 0xA0),  # no mode 4
    (0x21, b"\x02", 0xA0),
])
def test_sim_refuses_with_the_documented_status(command, data, code):
    sim, _, _ = simulated_load()
    remote(sim)
    assert ask(sim, command, data) == status(code)


def test_sim_refuses_a_bad_checksum_with_status_0x90():
    sim, _, _ = simulated_load()
    frame = bytearray(encode_frame(0x20, b"\x01"))
    frame[-1] ^= 0xFF
    assert sim.receive(bytes(frame)) == status(0x90)
    assert sim.remote is False


def test_sim_refuses_settings_under_front_panel_control():
    sim, _, _ = simulated_load()
    assert ask(sim, 0x21, b"\x01") == status(0xC0)
    assert sim.input_on is False
    assert decode_frame(ask(sim, 0x5F)).command == 0x5F  # reads are answered


def test_sim_ignores_a_frame_for_another_address_and_answers_the_broadcast_from_its_own():
    sim, _, _ = simulated_load(Bk8500SimConfig(address=7, voltage_noise_V=0.0, current_noise_A=0.0))
    assert ask(sim, 0x6A, address=0) == b""
    assert decode_frame(ask(sim, 0x6A, address=0xFF)).address == 7


def test_sim_joins_a_frame_written_in_pieces_and_skips_bytes_before_the_start_byte():
    sim, _, _ = simulated_load()
    frame = encode_frame(0x20, b"\x01")
    assert sim.receive(b"\x00\x13" + frame[:10]) == b""
    assert sim.receive(frame[10:]) == OK


def test_sim_max_settings_read_back_as_the_ratings_until_set():
    sim, _, _ = simulated_load()
    assert decode_frame(ask(sim, 0x23)).data[:4] == u32(120_000)
    assert decode_frame(ask(sim, 0x25)).data[:4] == u32(300_000)
    assert decode_frame(ask(sim, 0x27)).data[:4] == u32(300_000)


def test_sim_snapshot_and_restore_keep_the_settings_and_the_input():
    sim, world = regulating(0, 0x2A, 20000)
    saved = sim.snapshot()
    other, other_world, _ = simulated_load()
    other.restore(saved)
    assert other.snapshot() == saved
    other_world.sync()
    assert other_world.stack.current_A == world.stack.current_A == -2.0


def test_sim_noise_is_seeded_and_reproducible():
    noisy = Bk8500SimConfig()
    first, _, _ = simulated_load(noisy)
    second, _, _ = simulated_load(noisy)
    readings = [ask(first, 0x5F) for _ in range(5)]
    assert readings == [ask(second, 0x5F) for _ in range(5)]
    assert len(set(readings)) > 1


@pytest.mark.parametrize("change, message", [({"model": "8510"}, "simulated models are 8500, 8502"),
                                             ({"address": 255}, "less than or equal to 254"),
                                             ({"firmware": "v1"}, "pattern"),
                                             ({"speed": 1}, "Extra inputs")])
def test_sim_config_refuses_what_it_cannot_simulate(change, message):
    with pytest.raises(ValidationError, match=message):
        Bk8500SimConfig(**change)


# --- the byte transports ----------------------------------------------------------------------------


def test_in_process_transport_times_out_on_a_partial_reply_and_drops_it():
    class Half:
        def receive(self, data: bytes) -> bytes:
            return b"\xAA\x00\x12"

    transport = InProcessByteTransport(Half(), "sim://half")
    transport.write(b"x")
    with pytest.raises(InstrumentTimeout, match="after 3 of 26 bytes"):
        transport.read(26)
    transport.write(b"x")
    transport.write(b"x")
    assert transport.read(6) == b"\xAA\x00\x12" * 2


def test_in_process_transport_refuses_use_after_close():
    transport = InProcessByteTransport(simulated_load()[0], "sim://load")
    transport.close()
    with pytest.raises(InstrumentError, match="closed"):
        transport.write(b"")


@pytest.mark.parametrize("resource, port", [("ASRL/dev/ttyUSB0::INSTR", "/dev/ttyUSB0"), ("ASRLCOM3::INSTR", "COM3"),
                                            ("/dev/ttyS1", "/dev/ttyS1"),
                                            ("socket://10.0.0.7:4001", "socket://10.0.0.7:4001")])
def test_serial_port_of_a_resource(resource, port):
    assert serial_port_of(resource) == port


def test_open_byte_transport_reaches_a_simulated_binary_instrument():
    sim = simulated_load()[0]
    transport = open_byte_transport("sim://load", {"load": sim})
    assert isinstance(transport, InProcessByteTransport) and transport.device is sim


def test_open_byte_transport_names_the_simulated_instruments_when_one_is_missing():
    with pytest.raises(InstrumentError, match="no simulated instrument 'eload'; simulated instruments: load"):
        open_byte_transport("sim://eload", {"load": simulated_load()[0]})


def test_open_byte_transport_refuses_a_text_instrument():
    class Scpi:
        def handle(self, message: str) -> str | None:
            return None

    with pytest.raises(InstrumentError, match="speaks text"):
        open_byte_transport("sim://psu", {"psu": Scpi()})


def test_a_serial_port_that_cannot_be_opened_is_a_link_error():
    with pytest.raises(InstrumentLinkError, match="cannot open the serial port"):
        SerialByteTransport("/dev/nonexistent-bk8500-port", timeout_s=0.1)


@needs_pty
def test_the_driver_reaches_the_simulator_over_a_serial_port():
    sim, world, _ = simulated_load()
    served = PtyDevice(sim)
    try:
        load = Bk8500(SerialByteTransport(served.port, baud_rate=9600, timeout_s=2.0))
        assert load.connect() == IDENTITY
        load.set_mode("CC", 2.0)
        load.set_input(True)
        assert load.measure() == (87.166, -2.0)
        load.safe_state()
        load.close()
    finally:
        served.close()


@needs_pty
def test_a_partial_reply_over_the_serial_port_times_out_naming_the_bytes_that_came():
    served = PtyDevice(simulated_load()[0], truncate=10)
    try:
        load = Bk8500(SerialByteTransport(served.port, timeout_s=0.2))
        with pytest.raises(InstrumentTimeout, match="after 10 of 26 bytes"):
            load.read_product_info()
    finally:
        served.close()


# --- the driver discharging a simulated stack -------------------------------------------------------


def discharge_for_an_hour(config: Bk8500SimConfig, current_A: float = 1.5):
    """The driver on the in-process byte transport to the simulated load, sinking at constant
    current from a charged stack for one simulated hour, measured once a second."""
    clock = VirtualClock()
    world = SimWorld(StackModel(StackParameters(initial_soc=0.9), seed=3), clock)
    load = Bk8500(InProcessByteTransport(SimBk8500(world, "load", config), "sim://load"))
    load.connect()
    load.set_protection(110.0, 5.0)
    load.set_mode("CC", current_A)
    load.set_input(True)
    samples = [(0.0, *load.measure())]
    for tick in range(1, 3601):
        clock.sleep_until(float(tick))
        samples.append((clock.now(), *load.measure()))
    load.check_errors()
    load.safe_state()
    load.close()
    return samples, world.stack


def integrate(samples, value) -> float:
    """Trapezoidal integral over the samples, in hours."""
    pairs = zip(samples, samples[1:])
    return sum((t1 - t0) * (value(a) + value(b)) / 2 for (t0, *a), (t1, *b) in pairs) / 3600


def test_the_charge_the_driver_measures_discharging_for_an_hour_is_the_stacks_own_count():
    samples, stack = discharge_for_an_hour(QUIET)
    assert all(current == -1.5 for _, _, current in samples)
    assert -integrate(samples, lambda vi: vi[1]) == pytest.approx(stack.discharged_Ah, rel=1e-12)
    assert stack.discharged_Ah == pytest.approx(1.5, rel=1e-12)
    # energy from the 1 mV-resolution voltage readings, against the model's exact count
    assert -integrate(samples, lambda vi: vi[0] * vi[1]) == pytest.approx(stack.discharged_Wh, rel=1e-4)


def test_with_measurement_noise_the_integrated_charge_still_matches_within_the_noise():
    samples, stack = discharge_for_an_hour(Bk8500SimConfig())
    assert -integrate(samples, lambda vi: vi[1]) == pytest.approx(stack.discharged_Ah, rel=1e-4)


def test_the_driver_holds_the_simulated_stack_at_a_constant_voltage():
    sim, world, clock = simulated_load()
    load = Bk8500(InProcessByteTransport(sim, "sim://load"))
    load.connect()
    load.set_mode("CV", 87.5)
    load.set_input(True)
    clock.sleep_until(60.0)
    voltage, current = load.measure()
    assert voltage == 87.5
    assert current == pytest.approx(world.stack.current_A, abs=1e-4) and current < 0


def test_the_driver_reports_the_simulated_over_voltage_trip():
    sim, _, _ = simulated_load()
    load = Bk8500(InProcessByteTransport(sim, "sim://load"))
    load.connect()
    load.set_protection(80.0, 5.0)
    load.set_mode("CC", 1.0)
    load.set_input(True)
    assert load.input_is_on() is False
    with pytest.raises(InstrumentError, match="over-voltage"):
        load.check_errors()
