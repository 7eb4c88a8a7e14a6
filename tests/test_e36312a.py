"""Keysight E36312A: the driver at message level (exact strings sent, replies parsed), the
simulator's SCPI and physics against the stack model, and the two together."""

from __future__ import annotations

import pytest
from support import ScriptedTransport

from stackcycler.clock import VirtualClock
from stackcycler.drivers.keysight_e36312a import KeysightE36312a
from stackcycler.drivers.sim.keysight_e36312a import KeysightE36312aSimConfig, SimKeysightE36312a
from stackcycler.drivers.sim.stack import StackModel, StackParameters
from stackcycler.drivers.sim.world import SimWorld
from stackcycler.drivers.transport import InProcessTransport
from stackcycler.errors import InstrumentError, InvalidInput

IDN = "Keysight Technologies,E36312A,MY59002391,2.1.0-1.0.4-1.12"  # a real unit's answer (reference §1)
NO_ERROR = '+0,"No error"'


def connect_script(output: int = 2) -> list[tuple[str, str | None]]:
    script = [("*IDN?", IDN), ("*CLS", None), ("SYST:REM", None), ("SYST:ERR?", NO_ERROR),
              (f"OUTP? (@{output})", "0"),
              (f"OUTP OFF,(@{output})", None), ("SYST:ERR?", NO_ERROR)]
    if output in (2, 3):
        script.append(("OUTP:PAIR?", "OFF"))
    return script + [(f"VOLT:PROT:TRIP? (@{output})", "0"), (f"CURR:PROT:TRIP? (@{output})", "0"),
                     (f"STAT:QUES:INST:ISUM{output}:COND?", "0")]


def connected(*more, output: int = 2) -> tuple[KeysightE36312a, ScriptedTransport]:
    transport = ScriptedTransport(connect_script(output) + list(more))
    psu = KeysightE36312a(transport, output=output)
    psu.connect()
    return psu, transport


# --- message level -------------------------------------------------------------------------------


def test_connect_takes_remote_switches_its_output_off_and_checks_pairing_and_trips():
    psu, transport = connected()
    assert psu.identity == IDN and psu.output_found_on is False
    assert (psu.ratings.voltage_V, psu.ratings.current_A) == (25.0, 1.0)
    transport.done()


def test_connect_on_output_1_has_its_6_V_5_A_ratings_and_no_pairing_question():
    psu, transport = connected(output=1)
    assert (psu.ratings.voltage_V, psu.ratings.current_A, psu.ratings.max_over_voltage_V) == (6.0, 5.0, 6.6)
    transport.done()


def test_connect_notes_an_output_found_on_after_a_crash():
    script = connect_script()
    script[4] = ("OUTP? (@2)", "1")
    psu = KeysightE36312a(ScriptedTransport(script), output=2)
    psu.connect()
    assert psu.output_found_on is True


def test_connect_refuses_another_instrument():
    transport = ScriptedTransport([("*IDN?", "Keysight Technologies,E36313A,MY1,1.0")])
    with pytest.raises(InstrumentError, match="is not a Keysight E36312A"):
        KeysightE36312a(transport, output=2).connect()


def test_connect_refuses_paired_outputs():
    script = connect_script()[:8]
    script[-1] = ("OUTP:PAIR?", "PAR")
    with pytest.raises(InstrumentError, match=r"paired \(OUTP:PAIR\? = 'PAR'\)"):
        KeysightE36312a(ScriptedTransport(script), output=2).connect()


def test_connect_refuses_a_tripped_output_naming_the_trip():
    script = connect_script()
    script[-3] = ("VOLT:PROT:TRIP? (@2)", "1")
    with pytest.raises(InstrumentError, match="over-voltage protection tripped"):
        KeysightE36312a(ScriptedTransport(script), output=2).connect()


def test_an_output_it_does_not_have_is_refused_before_anything_is_sent():
    transport = ScriptedTransport([])
    with pytest.raises(InvalidInput, match="output 4 is not one of 1, 2, 3"):
        KeysightE36312a(transport, output=4)
    transport.done()


def test_protection_arms_ovp_and_leaves_ocp_off_with_the_channel_list():
    psu, transport = connected(("VOLT:PROT 22.8375,(@2)", None), ("CURR:PROT:STAT 0,(@2)", None),
                               ("SYST:ERR?", NO_ERROR))
    psu.set_protection(22.8375, 0.231)
    transport.done()


def test_protection_beyond_the_outputs_ovp_range_is_refused_before_anything_is_sent():
    psu, transport = connected()
    with pytest.raises(InvalidInput, match="over_voltage_V = 30.0 is outside the model's range 0.5 to 27.5"):
        psu.set_protection(30.0, 0.5)
    transport.done()


def test_regulate_sends_the_current_limit_then_the_voltage_when_the_limit_in_force_is_unknown():
    psu, transport = connected(("CURR 0.06666,(@2)", None), ("VOLT 21.35625,(@2)", None), ("SYST:ERR?", NO_ERROR))
    psu.regulate(21.35625, 0.06666)
    transport.done()


def test_regulate_sends_a_rising_limit_after_the_voltage_a_falling_one_before_and_only_what_changed():
    psu, transport = connected(("CURR 0.05,(@2)", None), ("VOLT 21.0,(@2)", None), ("SYST:ERR?", NO_ERROR),
                               ("VOLT 21.25,(@2)", None), ("CURR 0.2,(@2)", None), ("SYST:ERR?", NO_ERROR),
                               ("CURR 0.1,(@2)", None), ("VOLT 20.0,(@2)", None), ("SYST:ERR?", NO_ERROR))
    psu.regulate(21.0, 0.05)
    psu.regulate(21.25, 0.2)
    psu.regulate(21.25, 0.2)  # nothing changed: nothing sent
    psu.regulate(20.0, 0.1)
    transport.done()


def test_regulate_refuses_out_of_range_values_and_a_limit_above_the_armed_threshold():
    psu, transport = connected(("VOLT:PROT 22.0,(@2)", None), ("CURR:PROT:STAT 0,(@2)", None),
                               ("SYST:ERR?", NO_ERROR))
    psu.set_protection(22.0, 0.231)
    with pytest.raises(InvalidInput, match=r"voltage_V = 26.0 is outside the model's range 0 to 25.75"):
        psu.regulate(26.0, 0.1)
    with pytest.raises(InvalidInput, match=r"current_limit_A = 0.0 is outside the model's range 0.001 to 1.03"):
        psu.regulate(4.0, 0.0)
    with pytest.raises(InvalidInput, match="above the armed over-current threshold"):
        psu.regulate(21.0, 0.3)
    transport.done()


def test_output_on_off_and_its_read_back():
    psu, transport = connected(("OUTP ON,(@2)", None), ("SYST:ERR?", NO_ERROR), ("OUTP? (@2)", "1"),
                               ("OUTP OFF,(@2)", None), ("SYST:ERR?", NO_ERROR), ("OUTP? (@2)", "0"))
    psu.set_output(True)
    assert psu.output_is_on() is True
    psu.set_output(False)
    assert psu.output_is_on() is False
    transport.done()


def test_measure_parses_nr3_voltage_and_current_of_its_output():
    psu, transport = connected(("MEAS:VOLT? (@2)", "+2.12498700E+01"), ("MEAS:CURR? (@2)", "+6.66210000E-02"))
    assert psu.measure() == (21.249870, 0.066621)
    transport.done()


@pytest.mark.parametrize("condition, regulation", [("1", "CC"), ("2", "CV"), ("0", "unregulated"), ("17", "CC")])
def test_regulation_decodes_the_isum_condition_value_and_3(condition, regulation):
    psu, transport = connected(("STAT:QUES:INST:ISUM2:COND?", condition))
    assert psu.regulation() == regulation
    transport.done()


def test_regulation_reports_a_hardware_failure():
    psu, _ = connected(("STAT:QUES:INST:ISUM2:COND?", "3"))
    with pytest.raises(InstrumentError, match="hardware failure"):
        psu.regulation()


def test_check_errors_drains_the_queue_then_reports_protection_and_temperature():
    psu, transport = connected(("SYST:ERR?", NO_ERROR), ("VOLT:PROT:TRIP? (@2)", "0"), ("CURR:PROT:TRIP? (@2)", "1"),
                               ("STAT:QUES:INST:ISUM2:COND?", "16"))
    with pytest.raises(InstrumentError, match="over-current protection tripped; over-temperature"):
        psu.check_errors()
    transport.done()


def test_check_errors_reports_the_error_queue_with_the_last_command():
    psu, _ = connected(("VOLT 30,(@2)", None), ("SYST:ERR?", '-222,"Data out of range"'), ("SYST:ERR?", NO_ERROR))
    psu.write("VOLT 30,(@2)")
    with pytest.raises(InstrumentError, match=r"-222,\"Data out of range\" \(last command sent: 'VOLT 30,\(@2\)'\)"):
        psu.check_errors()


def test_safe_state_switches_off_unchecked_and_confirms_by_read_back():
    psu, transport = connected(("OUTP OFF,(@2)", None), ("OUTP? (@2)", "0"))
    psu.safe_state()
    transport.done()


def test_safe_state_raises_when_the_output_reads_back_on():
    psu, _ = connected(("OUTP OFF,(@2)", None), ("OUTP? (@2)", "1"))
    with pytest.raises(InstrumentError, match="output still on after OUTP OFF"):
        psu.safe_state()


def test_close_returns_the_front_panel():
    psu, transport = connected(("SYST:LOC", None))
    psu.close()
    assert transport.closed
    transport.done()


# --- the simulator: SCPI --------------------------------------------------------------------------


def simulated(soc: float = 0.5, layers: int = 5, output: int = 2, **config):
    clock = VirtualClock()
    world = SimWorld(StackModel(StackParameters(layers=layers, layer_capacity_Ah=0.2, r0_ohm=0.25, capacity_spread=0.0,
                                                r0_spread=0.0, initial_soc=soc, initial_soc_spread=0.0), seed=1),
                     clock)
    quiet = {"voltage_noise_V": 0.0, "current_noise_A": 0.0, **config}
    sim = SimKeysightE36312a(world, "psu", KeysightE36312aSimConfig(output=output, **quiet))
    return sim, world, clock


def test_sim_answers_the_real_identity_and_keysight_error_text():
    sim, _, _ = simulated()
    assert sim.handle("*IDN?") == IDN
    assert sim.handle("SYST:ERR?") == NO_ERROR


def test_sim_channel_lists_and_inst_nsel_reach_the_same_output():
    sim, _, _ = simulated()
    sim.handle("VOLT 12.5,(@3)")
    sim.handle("INST:NSEL 2")
    sim.handle("VOLT 7.25")
    sim.handle("INST CH1")
    sim.handle("SOURce:VOLTage:LEVel:IMMediate:AMPLitude 3.3")
    assert sim.handle("VOLT? (@1:3)") == "+3.30000000E+00,+7.25000000E+00,+1.25000000E+01"
    assert sim.handle("INST:NSEL?") == "+1"
    assert sim.handle("SYST:ERR?") == NO_ERROR


def test_sim_reports_the_ranges_read_from_a_real_unit():
    sim, _, _ = simulated()
    assert sim.handle("VOLT? MAX,(@1,2)") == "+6.18000000E+00,+2.57500000E+01"
    assert sim.handle("CURR? MAX,(@1,3)") == "+5.15000000E+00,+1.03000000E+00"
    assert sim.handle("VOLT:PROT? MAX,(@2)") == "+2.75000000E+01"


def test_sim_refuses_a_value_out_of_range_and_an_output_it_does_not_have():
    sim, _, _ = simulated()
    sim.handle("VOLT 7,(@1)")
    sim.handle("OUTP ON,(@4)")
    assert sim.handle("SYST:ERR?") == '-222,"Data out of range"'
    assert sim.handle("SYST:ERR?") == '-222,"Data out of range; no such output"'
    assert sim.handle("VOLT? (@1)") == "+0.00000000E+00"


def test_sim_output_states_of_several_outputs_in_list_order():
    sim, _, _ = simulated()
    sim.handle("OUTP ON,(@1,3)")
    assert sim.handle("OUTP? (@1,2,3)") == "1,0,1"
    assert sim.handle("OUTPut:STATe? (@3)") == "1"


# --- the simulator: physics from the stack model --------------------------------------------------


def test_sim_sources_its_current_limit_into_a_stack_below_the_set_voltage_cc():
    sim, world, _ = simulated()
    sim.handle("VOLT 21.25,(@2);:CURR 0.1,(@2);:OUTP ON,(@2)")
    assert float(sim.handle("MEAS:CURR? (@2)")) == pytest.approx(0.1)
    assert world.stack.current_A == pytest.approx(0.1)
    assert sim.handle("STAT:QUES:INST:ISUM2:COND?") == "1"  # CC
    emf, resistance = world.stack.thevenin()
    assert float(sim.handle("MEAS:VOLT? (@2)")) == pytest.approx(emf + 0.1 * resistance)


def test_sim_holds_its_voltage_once_the_stack_reaches_it_cv():
    sim, world, clock = simulated(soc=0.5)
    emf, resistance = world.stack.thevenin()
    sim.handle(f"VOLT {emf + 0.01:.6f},(@2);:CURR 1,(@2);:OUTP ON,(@2)")
    assert sim.handle("STAT:QUES:INST:ISUM2:COND?") == "2"  # CV: 10 mV over 1.3 Ohm is far below 1 A
    assert float(sim.handle("MEAS:CURR? (@2)")) == pytest.approx(0.01 / resistance, rel=1e-6)
    assert float(sim.handle("MEAS:VOLT? (@2)")) == pytest.approx(emf + 0.01, abs=1e-9)


def test_sim_cannot_pull_down_a_stack_above_its_set_voltage():
    sim, world, _ = simulated(soc=0.9)
    sim.handle("VOLT 15,(@2);:CURR 1,(@2);:OUTP ON,(@2)")
    world.sync()
    assert world.stack.current_A == 0.0 and sim.output_on
    assert sim.handle("STAT:QUES:INST:ISUM2:COND?") == "0"  # unregulated: a source does not sink


def test_sim_over_voltage_trip_switches_off_and_latches_until_cleared():
    sim, world, _ = simulated(soc=0.5)
    emf, _ = world.stack.thevenin()
    sim.handle(f"VOLT:PROT {emf - 0.5:.3f},(@2)")
    sim.handle("VOLT 25,(@2);:CURR 0.5,(@2);:OUTP ON,(@2)")
    world.sync()
    assert world.stack.current_A == 0.0
    assert sim.handle("VOLT:PROT:TRIP? (@2)") == "1" and sim.handle("OUTP? (@2)") == "0"
    sim.handle("OUTP ON,(@2)")
    assert sim.handle("SYST:ERR?").startswith("-221,")
    sim.handle("OUTP:PROT:CLE (@2)")
    assert sim.handle("VOLT:PROT:TRIP? (@2)") == "0"


def test_sim_over_current_protection_trips_when_the_output_goes_into_current_limit():
    sim, world, _ = simulated(soc=0.5)
    sim.handle("CURR:PROT:STAT 1,(@2);:VOLT 21,(@2);:CURR 0.1,(@2);:OUTP ON,(@2)")
    world.sync()
    assert world.stack.current_A == 0.0 and not sim.output_on
    assert sim.handle("CURR:PROT:TRIP? (@2)") == "1"


def test_sim_outputs_not_wired_to_the_stack_do_not_touch_it():
    sim, world, _ = simulated(output=2)
    sim.handle("VOLT 5,(@1);:OUTP ON,(@1,3)")
    world.sync()
    assert world.stack.current_A == 0.0
    assert sim.handle("MEAS:VOLT? (@1)") == "+5.00000000E+00"
    assert sim.handle("MEAS:CURR? (@1)") == "+0.00000000E+00"


def test_sim_settings_survive_a_snapshot_as_json_would_carry_them():
    sim, world, _ = simulated()
    sim.handle("VOLT 20,(@2);:OUTP ON,(@2)")
    state = {name: ({str(k): v for k, v in value.items()} if isinstance(value, dict) else value)
             for name, value in sim.snapshot().items()}
    other, _, _ = simulated()
    other.restore(state)
    assert other.handle("VOLT? (@2)") == "+2.00000000E+01" and other.output_on


# --- the driver on the simulator -------------------------------------------------------------------


def test_the_driver_charges_the_simulated_stack_and_counts_what_the_stack_counts():
    sim, world, clock = simulated(soc=0.2, current_noise_A=0.0001, voltage_noise_V=0.0005)
    psu = KeysightE36312a(InProcessTransport(sim, "sim://psu"), output=2)
    psu.connect()
    psu.set_protection(22.8, 0.231)
    psu.regulate(21.25, 0.2)
    psu.set_output(True)
    currents = []
    for tick in range(1, 1801):
        clock.sleep_until(float(tick))
        currents.append(psu.measure()[1])
    assert psu.regulation() == "CC"
    psu.check_errors()
    psu.safe_state()
    assert not sim.output_on
    assert sum(currents) / 3600 == pytest.approx(world.stack.charged_Ah, rel=1e-3)
    assert world.stack.charged_Ah == pytest.approx(0.1, rel=1e-9)  # 0.2 A for half an hour
