"""Build a simulated bench from the `simulation:` block of a bench file: the stack, its
fixture, the clock, and the simulated instruments wired to them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from stackcycler.clock import Clock

from ..scpi import parse_channel_list
from ..sensors import PressureFixture
from .bk8500 import Bk8500SimConfig, SimBk8500
from .daq970a import Daq970aSimConfig, SimDaq970a
from .ea_psb import EaPsbSimConfig, SimEaPsb
from .espec_chamber import EspecChamberSimConfig, SimEspecChamber
from .faults import Fault, FaultInjector, fault_problems
from .keithley_smu import Keithley2400SimConfig, Keithley2450SimConfig, SimKeithley2400, SimKeithley2450
from .keysight_e36312a import KeysightE36312aSimConfig, SimKeysightE36312a
from .keysight_n6705c import KeysightN6705cSimConfig, SimKeysightN6705c
from .rigol_dl3021 import RigolDl3021SimConfig, SimRigolDl3021
from .stack import StackModel, StackParameters
from .world import SimWorld

SimInstrumentConfig = Annotated[Union[EaPsbSimConfig, Keithley2450SimConfig, Keithley2400SimConfig,
                                      KeysightE36312aSimConfig, RigolDl3021SimConfig, Bk8500SimConfig,
                                      Daq970aSimConfig, KeysightN6705cSimConfig, EspecChamberSimConfig],
                               Field(discriminator="kind")]

# The simulator behind each instrument wired to one stack: supplies, sources and loads at its
# terminals, a chamber around it (the DAQ, wired to several stacks, is built apart).
TERMINAL_SIMULATORS: dict[type, type] = {
    EaPsbSimConfig: SimEaPsb,
    Keithley2450SimConfig: SimKeithley2450,
    Keithley2400SimConfig: SimKeithley2400,
    KeysightE36312aSimConfig: SimKeysightE36312a,
    RigolDl3021SimConfig: SimRigolDl3021,
    Bk8500SimConfig: SimBk8500,
    KeysightN6705cSimConfig: SimKeysightN6705c,
    EspecChamberSimConfig: SimEspecChamber,
}

MAIN_STACK = "main"


class SimulationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    seed: int = Field(1, ge=0, description="of the simulated noise and the stacks' spreads (numpy takes no negative seed)")
    stack: StackParameters = StackParameters()
    more_stacks: dict[str, StackParameters] = Field(
        default_factory=dict, description="further stacks of a multi-channel bench, by name; `stack` is 'main'")
    fixture: PressureFixture | None = None
    instruments: dict[str, SimInstrumentConfig]
    faults: list[Fault] = Field(default_factory=list, description="faults to develop during a test (see faults.py)")

    def stacks(self) -> dict[str, StackParameters]:
        return {MAIN_STACK: self.stack, **self.more_stacks}

    @model_validator(mode="after")
    def _wiring_fits_the_stacks(self) -> "SimulationConfig":
        stacks = self.stacks()
        for name, instrument in self.instruments.items():
            wired = instrument.wiring() if isinstance(instrument, Daq970aSimConfig) else dict.fromkeys(
                wired_outputs(instrument).values() or [instrument.stack])
            for stack, wiring in wired.items():
                if stack not in stacks:
                    raise ValueError(f"instruments.{name}: no simulated stack '{stack}'; stacks: {', '.join(stacks)}")
                if wiring is None:
                    continue
                layers = len(parse_channel_list(wiring.layer_channels))
                if layers > stacks[stack].layers:
                    where = "stack" if stack == MAIN_STACK else f"more_stacks.{stack}"
                    raise ValueError(f"instruments.{name}.layer_channels wires {layers} layers, but the "
                                     f"simulated stack has {stacks[stack].layers} ({where}.layers)")
        return self


    @model_validator(mode="after")
    def _faults_fit_the_bench(self) -> "SimulationConfig":
        simulators = {name: (instrument, SimDaq970a if isinstance(instrument, Daq970aSimConfig)
                             else TERMINAL_SIMULATORS[type(instrument)])
                      for name, instrument in self.instruments.items()}
        problems = fault_problems(self.faults, {name: stack.layers for name, stack in self.stacks().items()},
                                  simulators)
        if problems:
            raise ValueError("\n".join(problems))
        return self


def wired_outputs(instrument) -> dict[int, str]:
    """Output -> the stack it drives, of a simulated multi-output supply (empty for another instrument)."""
    if isinstance(instrument, KeysightN6705cSimConfig):
        return instrument.modules()
    output = getattr(instrument, "output", None)
    return {} if output is None else {output: instrument.stack}


def driven_stack(instrument, output: int | None) -> str:
    """The stack a simulated instrument drives, at `output` where it has several."""
    return wired_outputs(instrument).get(output, instrument.stack)


def snapshot_stacks(state: dict) -> dict:
    """Stack name -> its state in a snapshot (Simulation.snapshot), also from runs checkpointed
    with one stack, before snapshots named them."""
    return state.get("stacks") or {MAIN_STACK: state["stack"]}


@dataclass
class Simulation:
    worlds: dict[str, SimWorld]  # one per simulated stack, on one clock
    instruments: dict[str, object]  # SCPI instruments (`handle`) and binary ones (`receive`)
    faults: FaultInjector | None = None  # the bench's fault schedule at work

    @property
    def world(self) -> SimWorld:
        """The main stack's world (the only one on a single-channel bench)."""
        return self.worlds[MAIN_STACK]

    def snapshot(self) -> dict:
        """The simulated hardware's state: the stacks and each instrument, at the clock's now."""
        for world in self.worlds.values():
            world.sync()
        return {"time_s": self.world.clock.now(),
                "stacks": {name: world.stack.snapshot() for name, world in self.worlds.items()},
                "instruments": {name: instrument.snapshot() for name, instrument in self.instruments.items()},
                "faults": self.faults.snapshot() if self.faults else None}

    def restore(self, state: dict) -> None:
        """Continue from a snapshot: the hardware carries on, untouched, until the clock's now.
        `stack_times_s` (optional, stack -> test time) gives a stack a moment of its own: several
        channels resumed together bring snapshots taken at different moments (session.py)."""
        stacks = snapshot_stacks(state)
        stack_times = state.get("stack_times_s") or {}
        for name, stack_state in stacks.items():
            self.worlds[name].stack.restore(stack_state)
        for name, instrument_state in state["instruments"].items():
            self.instruments[name].restore(instrument_state)
        if self.faults is not None and state.get("faults"):
            self.faults.restore(state["faults"])  # before the worlds move: a fault that formed stays formed
        for name, world in self.worlds.items():
            world.set_time(stack_times.get(name, state["time_s"]))
            world.sync()


def build_simulation(config: SimulationConfig, clock: Clock) -> Simulation:
    worlds = {name: SimWorld(StackModel(params, seed=config.seed + k), clock, fixture=config.fixture,
                             seed=config.seed + k)
              for k, (name, params) in enumerate(config.stacks().items())}
    instruments: dict[str, object] = {}
    for name, instrument in config.instruments.items():
        if isinstance(instrument, Daq970aSimConfig):
            instruments[name] = SimDaq970a(worlds[instrument.stack], name, instrument,
                                           {stack: worlds[stack] for stack in instrument.more_stacks})
        elif isinstance(instrument, KeysightN6705cSimConfig):
            instruments[name] = SimKeysightN6705c(worlds[instrument.stack], name, instrument,
                                                  {stack: worlds[stack] for stack in instrument.more_modules.values()})
        else:
            instruments[name] = TERMINAL_SIMULATORS[type(instrument)](worlds[instrument.stack], name, instrument)
    faults = FaultInjector(config.faults, worlds, instruments,
                           {name: instrument.stack for name, instrument in config.instruments.items()},
                           clock, config.seed) if config.faults else None
    return Simulation(worlds, instruments, faults)
