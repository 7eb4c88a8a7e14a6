"""The ESPEC temperature chamber: the driver at byte level, the simulator's thermal model worked
by hand, the two over a real pseudo-terminal through pyserial, and runs on chamber benches.

Replies in the message tests are the ESPEC library's documented examples (`23.0,,CONSTANT,0`,
`23.5,25.0,100.0,-50.0`, `T,S2,160.0`, `NA:DATA OUT OF RANGE`; see drivers/espec_chamber.py).
The simulator's air follows T(t) = T_target + (T0 - T_target) exp(-t / tau); with T0 = 25 degC,
a 45 degC set-point and tau = 600 s that is 45 - 20/e = 37.64 degC after 600 s.
"""

from __future__ import annotations

import json
import math
import re

import pytest
from support import PtyDevice, ScriptedByteTransport, StopAfter, events_of, needs_pty, samples_of

from stackcycler.bench import load_bench
from stackcycler.clock import VirtualClock
from stackcycler.drivers.espec_chamber import EspecChamber
from stackcycler.drivers.registry import CHAMBER_DRIVERS
from stackcycler.drivers.roles import ChamberReading, TemperatureChamber
from stackcycler.drivers.sim.espec_chamber import EspecChamberSimConfig, SimEspecChamber
from stackcycler.drivers.sim.stack import StackModel, StackParameters
from stackcycler.drivers.sim.world import SimWorld
from stackcycler.drivers.transport import InProcessByteTransport, SerialByteTransport
from stackcycler.errors import InstrumentError, InstrumentTimeout, InvalidInput
from stackcycler.live import SilentReporter
from stackcycler.runner import StopRequest
from stackcycler.session import resume

# --- the driver at byte level ----------------------------------------------------------------------

CONNECT = [
    (b"TYPE?\r\n", b"T,S2,160.0\r\n"),
    (b"ROM?\r\n", b"P300 Ver1.20\r\n"),
    (b"TEMP?\r\n", b"23.5,25.0,100.0,-50.0\r\n"),
]
IDENTITY = "ESPEC,S2 controller (temperature, up to 160 degC),ROM P300 Ver1.20"


class Played:
    """A chamber driver on a scripted byte transport; on leaving, the whole script must have run."""

    def __init__(self, script, address: int | None = None):
        self.transport = ScriptedByteTransport(script)
        self.chamber = EspecChamber(self.transport, address=address)

    def __enter__(self) -> EspecChamber:
        return self.chamber

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.transport.done()


def connected(*script):
    return Played(CONNECT + list(script))


def test_the_driver_implements_the_chamber_role_and_is_a_chamber_driver():
    assert issubclass(EspecChamber, TemperatureChamber)
    assert CHAMBER_DRIVERS == ["espec-chamber"]


def test_connect_reads_type_rom_and_the_alarm_band_and_changes_nothing():
    with connected() as chamber:
        assert chamber.connect() == IDENTITY
    assert chamber.has_humidity is False
    assert chamber.max_temperature_degC == 160.0
    assert chamber.setpoint_range() == (-50.0, 100.0)


def test_a_wet_bulb_sensor_in_type_means_a_humidity_chamber():
    script = [(b"TYPE?\r\n", b"T,T,S2,160.0\r\n"), *CONNECT[1:]]
    with Played(script) as chamber:
        assert "temperature and humidity" in chamber.connect()
    assert chamber.has_humidity is True


def test_read_parses_the_monitor_line_without_humidity():
    with connected((b"MON?\r\n", b"23.0,,CONSTANT,0\r\n")) as chamber:
        chamber.connect()
        assert chamber.read() == ChamberReading(temperature_degC=23.0, humidity_pct=None, running=True, alarms=0)


def test_read_parses_humidity_a_stopped_chamber_and_its_alarm_count():
    with connected((b"MON?\r\n", b"-12.4,45,STANDBY,2\r\n")) as chamber:
        chamber.connect()
        assert chamber.read() == ChamberReading(temperature_degC=-12.4, humidity_pct=45.0, running=False, alarms=2)


def test_set_temperature_sends_one_decimal_and_takes_the_echo_as_accepted():
    with connected((b"TEMP, S45.0\r\n", b"OK:TEMP, S45.0\r\n"), (b"TEMP, S-20.2\r\n", b"OK\r\n")) as chamber:
        chamber.connect()
        chamber.set_temperature(45)
        chamber.set_temperature(-20.24)


@pytest.mark.parametrize("setpoint", [100.1, -50.1, math.nan, math.inf])
def test_a_setpoint_outside_the_alarm_band_is_refused_and_nothing_is_sent(setpoint):
    with connected() as chamber:
        chamber.connect()
        with pytest.raises(InvalidInput, match="outside the chamber's alarm band -50 to 100 degC; nothing was sent"):
            chamber.set_temperature(setpoint)


def test_the_highest_temperature_of_type_caps_the_band():
    script = [(b"TYPE?\r\n", b"T,S2,80.0\r\n"), *CONNECT[1:]]
    with Played(script) as chamber:
        chamber.connect()
        assert chamber.setpoint_range() == (-50.0, 80.0)
        with pytest.raises(InvalidInput):
            chamber.set_temperature(85.0)


def test_set_temperature_before_connect_is_an_instrument_error():
    with Played([]) as chamber:
        with pytest.raises(InstrumentError, match="not connected"):
            chamber.set_temperature(25.0)


def test_run_and_stop_select_constant_operation_and_standby():
    script = [(b"MODE,CONSTANT\r\n", b"OK:MODE,CONSTANT\r\n"), (b"MODE,STANDBY\r\n", b"OK:MODE,STANDBY\r\n"),
              (b"MODE?\r\n", b"STANDBY\r\n")]
    with connected(*script) as chamber:
        chamber.connect()
        chamber.run()
        chamber.stop()
        assert chamber.mode() == "STANDBY"


@pytest.mark.parametrize("reply, meaning", [
    (b"NA:DATA OUT OF RANGE\r\n", "DATA OUT OF RANGE (a value is outside the chamber's range)"),
    (b"NA:PROTECT ON\r\n", "PROTECT ON (settings are locked at the chamber's panel)"),
    (b"NA:WHATEVER\r\n", "WHATEVER (a reason the ESPEC command set does not list)"),
])
def test_a_refusal_raises_naming_the_command_and_what_it_means(reply, meaning):
    with connected((b"TEMP, S30.0\r\n", reply)) as chamber:
        chamber.connect()
        with pytest.raises(InstrumentError, match=re.escape(f"refused 'TEMP, S30.0': {meaning}")):
            chamber.set_temperature(30.0)


def test_a_setting_answered_with_anything_but_ok_raises():
    with connected((b"MODE,CONSTANT\r\n", b"23.0,,CONSTANT,0\r\n")) as chamber:
        chamber.connect()
        with pytest.raises(InstrumentError, match="'MODE,CONSTANT' was answered '23.0,,CONSTANT,0', expected OK"):
            chamber.run()


@pytest.mark.parametrize("query, reply, problem", [
    ("TYPE?", b"T\r\n", "TYPE\\? answered 'T', expected 3 or 4 comma-separated fields"),
    ("TYPE?", b"T,S2,hot\r\n", "TYPE\\? highest temperature 'hot' is not a number"),
])
def test_connect_refuses_an_identity_it_cannot_read(query, reply, problem):
    with Played([(query.encode() + b"\r\n", reply)]) as chamber:
        with pytest.raises(InstrumentError, match=problem):
            chamber.connect()


@pytest.mark.parametrize("reply, problem", [(b"23.0,CONSTANT,0\r\n", "expected 4 comma-separated fields"),
                                            (b"nan,,CONSTANT,0\r\n", "'nan' is not a finite number"),
                                            (b"23.0,,CONSTANT,x\r\n", "alarm count 'x' is not a whole number")])
def test_a_monitor_line_that_cannot_be_read_raises(reply, problem):
    with connected((b"MON?\r\n", reply)) as chamber:
        chamber.connect()
        with pytest.raises(InstrumentError, match=problem):
            chamber.read()


def test_an_unknown_mode_raises():
    with connected((b"MODE?\r\n", b"PAUSE\r\n")) as chamber:
        chamber.connect()
        with pytest.raises(InstrumentError, match="MODE\\? answered 'PAUSE'"):
            chamber.mode()


def test_check_errors_passes_without_alarms_and_raises_naming_their_codes():
    with connected((b"ALARM?\r\n", b"0\r\n"), (b"ALARM?\r\n", b"2,3,17\r\n")) as chamber:
        chamber.connect()
        chamber.check_errors()
        with pytest.raises(InstrumentError, match="reports alarms 3, 17"):
            chamber.check_errors()


def test_an_alarm_list_whose_count_does_not_match_its_codes_raises():
    with connected((b"ALARM?\r\n", b"2,3\r\n")) as chamber:
        chamber.connect()
        with pytest.raises(InstrumentError, match="2 alarms but 1 codes"):
            chamber.alarms()


def test_a_reply_cut_short_times_out_naming_what_came():
    with Played([(b"TYPE?\r\n", b"T,S2,16")]) as chamber:
        with pytest.raises(InstrumentTimeout, match=re.escape("no complete reply line (timeout after b'T,S2,16')")):
            chamber.connect()


def test_a_reply_without_a_line_end_is_refused_after_256_bytes():
    with Played([(b"TYPE?\r\n", b"T" * 300)]) as chamber:
        with pytest.raises(InstrumentError, match="no line end in 256 bytes"):
            chamber.connect()
        chamber.transport.pending.clear()


def test_a_stray_reply_is_discarded_before_the_next_command():
    with connected((b"MON?\r\n", b"23.0,,CONSTANT,0\r\n")) as chamber:
        chamber.connect()
        chamber.transport.pending += b"OK:MODE,CONSTANT\r\n"  # late, from an exchange that timed out
        assert chamber.read().temperature_degC == 23.0


def test_on_rs485_every_message_starts_with_the_address():
    script = [(b"3," + sent, reply) for sent, reply in CONNECT] + [(b"3,MON?\r\n", b"23.0,,CONSTANT,0\r\n")]
    with Played(script, address=3) as chamber:
        chamber.connect()
        chamber.read()


def test_an_address_the_controller_cannot_have_is_refused_before_anything_is_sent():
    with pytest.raises(InvalidInput, match="address 17 is not 1 to 16"):
        EspecChamber(ScriptedByteTransport([]), address=17)


def test_close_releases_the_transport_and_sends_nothing():
    with connected() as chamber:
        chamber.connect()
        chamber.close()
    assert chamber.transport.closed


# --- the simulator: thermal model by hand -------------------------------------------------------------

QUIET_STACK = StackParameters(layers=1, layer_capacity_Ah=0.2, r0_ohm=0.25, r1_ohm=0.15, interconnect_ohm=0.01)


def simulated_chamber(stack: StackParameters = QUIET_STACK, **config):
    clock = VirtualClock()
    world = SimWorld(StackModel(stack, seed=1), clock)
    settings = {"initial_degC": 25.0, "set_point_degC": 45.0} | config
    return SimEspecChamber(world, "chamber", EspecChamberSimConfig(**settings)), world, clock


def ask(sim: SimEspecChamber, line: str) -> str:
    reply = sim.receive(line.encode("ascii") + b"\r\n")
    assert reply.endswith(b"\r\n")
    return reply[:-2].decode("ascii")


def test_sim_type_rom_and_the_first_monitor_line():
    sim, _, _ = simulated_chamber()
    assert ask(sim, "TYPE?") == "T,S2,150.0"
    assert ask(sim, "ROM?") == "P300 Ver1.20"
    assert ask(sim, "MON?") == "25.0,,CONSTANT,0"
    assert ask(sim, "TEMP?") == "25.0,45.0,100.0,-40.0"
    assert ask(sim, "MODE?") == "CONSTANT"
    assert ask(sim, "ALARM?") == "0"


def test_sim_with_humidity_reports_a_wet_bulb_sensor_and_a_humidity_reading():
    sim, _, _ = simulated_chamber(humidity=True, humidity_pct=55.0)
    assert ask(sim, "TYPE?") == "T,T,S2,150.0"
    assert ask(sim, "MON?") == "25.0,55,CONSTANT,0"
    assert ask(sim, "HUMI?") == "55,OFF,100,0"


@pytest.mark.parametrize("t_s, reading", [
    (300.0, "32.9"),  # 45 - 20 exp(-0.5) = 32.869
    (600.0, "37.6"),  # 45 - 20 / e = 37.642
    (1800.0, "44.0"),  # 45 - 20 exp(-3) = 44.004
])
def test_sim_air_approaches_the_setpoint_with_the_time_constant(t_s, reading):
    sim, _, clock = simulated_chamber()
    clock.sleep_until(t_s)
    assert ask(sim, "TEMP?") == f"{reading},45.0,100.0,-40.0"


def test_sim_the_answer_does_not_depend_on_how_often_it_is_asked():
    sim, _, clock = simulated_chamber()
    for t in range(0, 601, 7):
        clock.sleep_until(float(t))
        ask(sim, "MON?")
    clock.sleep_until(600.0)
    ask(sim, "MON?")
    assert sim.air_degC == pytest.approx(45.0 - 20.0 / math.e, rel=1e-12)


def test_sim_stopped_the_air_returns_to_the_room_from_where_it_was():
    sim, _, clock = simulated_chamber()
    clock.sleep_until(600.0)
    assert ask(sim, "MODE,STANDBY") == "OK:MODE,STANDBY"
    clock.sleep_until(1200.0)
    assert ask(sim, "MON?") == "29.7,,STANDBY,0"  # 25 + (37.642 - 25) / e = 29.651
    assert sim.air_degC == pytest.approx(25.0 + (20.0 - 20.0 / math.e) / math.e, rel=1e-12)


def test_sim_a_new_setpoint_takes_over_from_the_present_air_temperature():
    sim, _, clock = simulated_chamber()
    clock.sleep_until(600.0)
    assert ask(sim, "TEMP, S0.0") == "OK:TEMP, S0.0"
    clock.sleep_until(1200.0)
    ask(sim, "MON?")
    assert sim.air_degC == pytest.approx((45.0 - 20.0 / math.e) / math.e, rel=1e-12)  # 13.85 degC


def test_sim_the_air_is_the_stacks_ambient():
    sim, world, clock = simulated_chamber()
    clock.sleep_until(600.0)
    ask(sim, "MON?")
    assert world.stack.params.ambient_degC == pytest.approx(45.0 - 20.0 / math.e, rel=1e-12)


def test_sim_the_stack_warms_as_two_first_order_lags_in_series():
    """Stack at rest (no heat of its own), tau_stack = 500 J/K x 3 K/W = 1500 s, tau_air = 600 s:
    T(t) = 45 - 20 (600 exp(-t/600) - 1500 exp(-t/1500)) / (600 - 1500), 42.01 degC after an hour.
    The stack holds each second's ambient for that second: a lag far below both time constants."""
    sim, world, clock = simulated_chamber(StackParameters())
    for t in range(1, 3601):
        clock.sleep_until(float(t))
        sim.receive(b"MON?\r\n")
    expected = 45.0 - 20.0 * (600.0 * math.exp(-6.0) - 1500.0 * math.exp(-2.4)) / (600.0 - 1500.0)
    assert expected == pytest.approx(42.01, abs=0.005)
    assert world.stack.temperature_degC == pytest.approx(expected, abs=0.02)


@pytest.mark.parametrize("line, reply", [
    ("TEMP, S120.0", "NA:DATA OUT OF RANGE"),  # above the upper alarm temperature
    ("TEMP, S-45.0", "NA:DATA OUT OF RANGE"),
    ("TEMP, H200.0", "NA:DATA OUT OF RANGE"),  # above TYPE?'s highest temperature
    ("TEMP, SX", "NA:PARA ERR"),
    ("TEMP,", "NA:PARA ERR"),
    ("MODE,WARM", "NA:PARA ERR"),
    ("MODE,RUN1", "NA:DATA NOT READY"),
    ("HUMI?", "NA:CONT NOT READY-1"),
    ("BAKE?", "NA:CMD ERR"),
])
def test_sim_refuses_with_the_documented_texts(line, reply):
    sim, _, _ = simulated_chamber()
    assert ask(sim, line) == reply


def test_sim_sets_the_setpoint_and_the_alarm_band_in_one_command():
    sim, _, _ = simulated_chamber()
    assert ask(sim, "TEMP, S30.0 H120.0 L-20.0") == "OK:TEMP, S30.0 H120.0 L-20.0"
    assert ask(sim, "TEMP?") == "25.0,30.0,120.0,-20.0"
    assert ask(sim, "TEMP, S121.0") == "NA:DATA OUT OF RANGE"  # above the new upper alarm
    assert ask(sim, "TEMP, L31.0") == "NA:DATA OUT OF RANGE"  # the set-point would lie below the band


def test_sim_power_off_and_on():
    sim, _, _ = simulated_chamber()
    assert ask(sim, "POWER,OFF") == "OK:POWER,OFF"
    assert ask(sim, "MODE?") == "OFF"
    assert ask(sim, "POWER,ON") == "OK:POWER,ON"
    assert ask(sim, "MODE?") == "CONSTANT"


def test_sim_on_rs485_answers_its_own_address_only():
    sim, _, _ = simulated_chamber(address=2)
    assert sim.receive(b"1,MON?\r\n") == b""
    assert sim.receive(b"MON?\r\n") == b""
    assert sim.receive(b"2,MON?\r\n") == b"25.0,,CONSTANT,0\r\n"


def test_sim_joins_a_line_written_in_pieces_and_answers_each_line_in_order():
    sim, _, _ = simulated_chamber()
    assert sim.receive(b"MO") == b""
    assert sim.receive(b"DE?\r\nALA") == b"CONSTANT\r\n"
    assert sim.receive(b"RM?\r\nTYPE?\r\n") == b"0\r\nT,S2,150.0\r\n"


def test_sim_alarms_are_counted_in_the_monitor_line_and_listed():
    sim, _, _ = simulated_chamber()
    sim.alarms = [3, 17]
    assert ask(sim, "MON?") == "25.0,,CONSTANT,2"
    assert ask(sim, "ALARM?") == "2,3,17"


def test_sim_snapshot_and_restore_carry_the_air_and_give_it_back_to_the_stack():
    sim, _, clock = simulated_chamber()
    clock.sleep_until(600.0)
    ask(sim, "TEMP, S30.0")
    state = sim.snapshot()
    other, other_world, _ = simulated_chamber()
    other.restore(state)
    assert other.snapshot() == state
    assert other_world.stack.params.ambient_degC == pytest.approx(45.0 - 20.0 / math.e, rel=1e-12)


@pytest.mark.parametrize("config, problem", [
    ({"set_point_degC": 120.0}, "set_point_degC 120.0 is outside the alarm band"),
    ({"lower_alarm_degC": 100.0}, "must be below upper_alarm_degC"),
    ({"upper_alarm_degC": 160.0}, "must not be above max_temperature_degC"),
    ({"time_constant_s": 0.0}, "greater than 0"),
])
def test_sim_config_refuses_what_cannot_be(config, problem):
    with pytest.raises(ValueError, match=problem):
        EspecChamberSimConfig(**config)


# --- the driver and the simulator -----------------------------------------------------------------------


def test_the_driver_runs_the_simulated_chamber_and_reads_its_air():
    sim, world, clock = simulated_chamber(set_point_degC=25.0)
    chamber = EspecChamber(InProcessByteTransport(sim, "sim://chamber"))
    assert chamber.connect() == "ESPEC,S2 controller (temperature, up to 150 degC),ROM P300 Ver1.20"
    chamber.stop()
    chamber.set_temperature(40.0)
    chamber.run()
    clock.sleep_until(600.0)
    reading = chamber.read()
    assert reading == ChamberReading(temperature_degC=34.5, humidity_pct=None, running=True, alarms=0)  # 40 - 15/e
    assert chamber.setpoint_degC() == 40.0
    chamber.check_errors()
    sim.alarms = [5]
    with pytest.raises(InstrumentError, match="reports alarm 5"):
        chamber.check_errors()


@needs_pty
def test_the_driver_reaches_the_simulator_over_a_serial_port():
    sim, world, clock = simulated_chamber()
    served = PtyDevice(sim)
    try:
        chamber = EspecChamber(SerialByteTransport(served.port, baud_rate=9600, timeout_s=2.0))
        assert chamber.connect().startswith("ESPEC,S2 controller")
        chamber.set_temperature(40.0)
        clock.sleep_until(600.0)
        assert chamber.read().temperature_degC == 34.5  # 40 - 15/e = 34.48
        assert world.stack.params.ambient_degC == pytest.approx(40.0 - 15.0 / math.e, rel=1e-12)
        chamber.check_errors()
        chamber.close()
    finally:
        served.close()


@needs_pty
def test_a_reply_cut_short_on_the_serial_port_times_out_naming_the_bytes_that_came():
    served = PtyDevice(simulated_chamber()[0], truncate=5)
    chamber = EspecChamber(SerialByteTransport(served.port, timeout_s=0.2))
    try:
        with pytest.raises(InstrumentTimeout, match=re.escape("timeout after b'T,S2,'")):
            chamber.connect()
    finally:
        chamber.close()
        served.close()


# --- chamber benches ------------------------------------------------------------------------------------


def test_the_chamber_bench_logs_the_chambers_air_on_a_capacity_check(run_protocol):
    result = run_protocol(bench="sim-chamber")
    assert result.outcome.state == "completed"
    samples = samples_of(result)
    assert (samples["Chamber Temperature / degC"] == 25.0).all()  # held at its set-point from the start
    metadata = json.loads((result.outcome.folder / "run.json").read_text())
    assert metadata["instruments"]["chamber"]["identity"].startswith("ESPEC,S2 controller")
    assert "Chamber Temperature / degC" in metadata["columns"]


WARMING_BENCH = """
extends: {base}
simulation:
  instruments:
    chamber:
      kind: espec-chamber
      initial_degC: {initial}
      set_point_degC: {setpoint}
      time_constant_s: 600
instruments:
  chamber: {{driver: espec-chamber, resource: "sim://chamber"}}
channels:
  {channel}:
    chamber: chamber
"""


def chamber_bench(tmp_path, base: str, channel: str, initial: float, setpoint: float) -> str:
    path = tmp_path / f"{base}-in-a-chamber.yaml"
    path.write_text(WARMING_BENCH.format(base=base, channel=channel, initial=initial, setpoint=setpoint))
    return str(path)


def test_a_run_logs_the_chamber_warming_and_the_stack_following_it(run_text, tmp_path):
    bench = chamber_bench(tmp_path, "sim-chamber", "stack1", initial=25.0, setpoint=40.0)
    result = run_text("name: soak\nrecord: {time_s: 60}\nsteps: ['Rest for 30 minutes']\n", bench=bench)
    assert result.outcome.state == "completed"
    samples = samples_of(result)
    t = samples["Test Time / s"]
    assert samples["Chamber Temperature / degC"].to_numpy() == pytest.approx(
        (40.0 - 15.0 * (-t / 600.0).map(math.exp)).round(1).to_numpy(), abs=1e-9)
    # the DAQ's ambient thermocouple sees the same air; the stack lags behind it
    assert samples["Ambient Temperature / degC"].iloc[-1] == pytest.approx(40.0 - 15.0 * math.exp(-3.0), abs=0.3)
    stack = result.simulation.world.stack
    assert 25.5 < stack.temperature_degC < samples["Chamber Temperature / degC"].iloc[-1]


def test_an_interrupted_run_in_a_warming_chamber_resumes_with_the_air_where_it_was(run_text, tmp_path):
    """The chamber's air and set-point are part of the simulated hardware's snapshot: after the
    resume the air carries on along the same curve, and the stack's ambient with it."""
    bench = chamber_bench(tmp_path, "sim-n6781a", "cell1", initial=25.0, setpoint=40.0)
    stop = StopRequest()
    first = run_text("name: soak\nrecord: {time_s: 60}\nsteps: ['Rest for 20 minutes']\n", bench=bench,
                     reporter=StopAfter(stop, 300), stop=stop)
    assert first.outcome.state == "interrupted"
    result = resume(first.outcome.folder, SilentReporter(), confirm=lambda preview: True)
    assert result.outcome.state == "completed"
    samples = samples_of(result)
    t = samples["Test Time / s"]
    assert t.max() == pytest.approx(1200.0, abs=1.0) and (t > 300.0).any() and (t < 300.0).any()
    assert samples["Chamber Temperature / degC"].to_numpy() == pytest.approx(
        (40.0 - 15.0 * (-t / 600.0).map(math.exp)).round(1).to_numpy(), abs=1e-9)
    assert result.simulation.world.stack.params.ambient_degC == pytest.approx(40.0 - 15.0 * math.exp(-2.0), abs=0.01)


SUSPEND_ON_AIR = """
name: hold-while-warm
record: {time_s: 1}
suspend:
  ambient_degC: {max: 30}
  clear_for_s: 30
  max_suspended_s: 900         # a band that never clears ends the run instead of holding it for ever
steps:
  - {step: cc, name: charge, current_A: 0.05, until: [{step_time_s: 120}]}
"""


def test_a_suspend_band_watches_the_chambers_air_on_a_channel_without_an_ambient_sensor(run_text, tmp_path):
    """The air falls from 35 towards 25 degC: 25 + 10 exp(-t/600) reads 30.0 once below 30.05,
    from t = 600 ln(10 / 5.05) = 409.9 s; the band then holds for 30 s more."""
    bench = chamber_bench(tmp_path, "sim-n6781a", "cell1", initial=35.0, setpoint=25.0)
    result = run_text(SUSPEND_ON_AIR, bench=bench)
    assert result.outcome.state == "completed"
    events = events_of(result)
    suspended = next(e for e in events if e["event"] == "suspended")
    cleared = next(e for e in events if e["event"] == "suspension_cleared")
    assert suspended["by"] == "ambient_degC" and "35 above 30" in suspended["reason"]
    assert cleared["test_time_s"] == pytest.approx(410.0 + 30.0, abs=1.0)
    samples = samples_of(result)
    assert "Ambient Temperature / degC" not in samples.columns
    assert samples["Current / A"].abs().iloc[: int(cleared["test_time_s"]) - 2].max() < 1e-3  # held meanwhile


@pytest.fixture
def chamber_silent(monkeypatch):
    """The chamber answers nothing from 100 s to 300 s of test time (a cable pulled), then comes back."""
    real = SimEspecChamber.receive

    def receive(self, data):
        return b"" if 100.0 <= self.world.clock.now() < 300.0 else real(self, data)

    monkeypatch.setattr(SimEspecChamber, "receive", receive)


CHARGE_FOR_10_MINUTES = """
name: charge-in-a-chamber
record: {time_s: 1}
%s
steps:
  - {step: cc, name: charge, current_A: 0.05, until: [{step_time_s: 600}]}
"""
HOLD_WHILE_A_LINK_IS_LOST = "suspend: {instrument_link_lost: true, clear_for_s: 30, max_suspended_s: 900}"


def test_a_silent_chamber_holds_the_test_when_the_protocol_allows_it(run_text, tmp_path, chamber_silent):
    bench = chamber_bench(tmp_path, "sim-n6781a", "cell1", initial=25.0, setpoint=25.0)
    result = run_text(CHARGE_FOR_10_MINUTES % HOLD_WHILE_A_LINK_IS_LOST, bench=bench)
    assert result.outcome.state == "completed", result.outcome.reason
    events = events_of(result)
    suspended = next(e for e in events if e["event"] == "suspended")
    cleared = next(e for e in events if e["event"] == "suspension_cleared")
    assert suspended["by"] == "instrument_link" and "no answer from chamber" in suspended["reason"]
    assert suspended["test_time_s"] == pytest.approx(100.0, abs=1.0)
    assert cleared["test_time_s"] == pytest.approx(300.0 + 30.0, abs=1.0)
    samples = samples_of(result)
    silent = samples[(samples["Test Time / s"] >= 100.0) & (samples["Test Time / s"] < 300.0)]
    assert silent["Chamber Temperature / degC"].isna().all() and silent["Voltage / V"].notna().all()
    assert (samples[samples["Test Time / s"] >= 300.0]["Chamber Temperature / degC"] == 25.0).all()
    charge_end = next(e for e in events if e["event"] == "step_end" and e["step"] == 1)
    assert charge_end["step_time_s"] == pytest.approx(600.0, abs=1.0)  # the held time is not in the step


def test_a_silent_chamber_is_a_fault_unless_the_protocol_allows_suspending(run_text, tmp_path, chamber_silent):
    bench = chamber_bench(tmp_path, "sim-n6781a", "cell1", initial=25.0, setpoint=25.0)
    result = run_text(CHARGE_FOR_10_MINUTES % "", bench=bench)
    assert result.outcome.state == "faulted" and "no complete reply line" in result.outcome.reason
    assert result.outcome.outputs_confirmed_off


def test_a_protocol_that_requires_a_chamber_runs_on_a_chamber_bench(run_text):
    result = run_text("requires: {chamber: true}\nsteps: ['Rest for 1 minute']\n", bench="sim-chamber")
    assert result.outcome.state == "completed"


def test_the_built_in_chamber_bench_wires_the_chamber_to_its_channel():
    bench = load_bench("sim-chamber").config
    assert bench.channels["stack1"].chamber == "chamber"
    assert bench.instruments["chamber"].driver == "espec-chamber"
    assert bench.channels["stack1"].instrument_names() == {"supply", "daq", "chamber"}


@pytest.mark.parametrize("change, problem", [
    ("channels:\n  stack1:\n    chamber: oven\n", "chamber 'oven' is not among the instruments"),
    ("channels:\n  stack1:\n    chamber: daq\n", re.escape("instrument 'daq' (keysight-daq970a) cannot act as a "
                                                           "chamber; chamber drivers: espec-chamber")),
    ("instruments:\n  chamber: {driver: espec-chamber, resource: 'sim://chamber', baud_rate: 1200}\n",
     "baud_rate: 1200 is not accepted by the espec-chamber driver .*; accepted: 4800, 9600, 19200"),
    ("instruments:\n  chamber: {driver: espec-chamber, resource: 'sim://chamber', output: 1}\n",
     "output: the espec-chamber driver takes no 'output' \\(settings it takes: address, baud_rate\\)"),
])
def test_a_bad_chamber_wiring_is_refused_naming_the_file_and_what_is_accepted(tmp_path, change, problem):
    path = tmp_path / "bad-chamber.yaml"
    path.write_text("extends: sim-chamber\n" + change)
    with pytest.raises(InvalidInput, match=problem) as raised:
        load_bench(str(path))
    assert str(path) in str(raised.value)

