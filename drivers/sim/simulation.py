"""Build a simulated bench from the `simulation:` block of a bench file: the stack, its
fixture, the clock, and the simulated instruments wired to them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from stackcycler.clock import Clock

from ..scpi import parse_channel_list
from ..sensors import PressureFixture
from .daq970a import Daq970aSimConfig, SimDaq970a
from .ea_psb import EaPsbSimConfig, SimEaPsb
from .scpi import ScpiInstrument
from .stack import StackModel, StackParameters
from .world import SimWorld

SimInstrumentConfig = Annotated[Union[EaPsbSimConfig, Daq970aSimConfig], Field(discriminator="kind")]

_SIMULATORS = {"ea-psb-10000": SimEaPsb, "keysight-daq970a": SimDaq970a}


class SimulationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    seed: int = 1
    stack: StackParameters = StackParameters()
    fixture: PressureFixture | None = None
    instruments: dict[str, SimInstrumentConfig]

    @model_validator(mode="after")
    def _layer_wiring_fits_the_stack(self) -> "SimulationConfig":
        for name, instrument in self.instruments.items():
            if isinstance(instrument, Daq970aSimConfig):
                wired = len(parse_channel_list(instrument.layer_channels))
                if wired > self.stack.layers:
                    raise ValueError(f"instruments.{name}.layer_channels wires {wired} layers, but the "
                                     f"simulated stack has {self.stack.layers} (stack.layers)")
        return self


@dataclass
class Simulation:
    world: SimWorld
    instruments: dict[str, ScpiInstrument]

    def snapshot(self) -> dict:
        """The simulated hardware's state: the stack and each instrument, at the clock's now."""
        self.world.sync()
        return {"time_s": self.world.clock.now(), "stack": self.world.stack.snapshot(),
                "instruments": {name: instrument.snapshot() for name, instrument in self.instruments.items()}}

    def restore(self, state: dict) -> None:
        """Continue from a snapshot: the hardware carries on, untouched, until the clock's now."""
        self.world.stack.restore(state["stack"])
        for name, instrument_state in state["instruments"].items():
            self.instruments[name].restore(instrument_state)
        self.world.set_time(state["time_s"])
        self.world.sync()


def build_simulation(config: SimulationConfig, clock: Clock) -> Simulation:
    world = SimWorld(StackModel(config.stack, seed=config.seed), clock, fixture=config.fixture, seed=config.seed)
    instruments = {
        name: _SIMULATORS[instrument.kind](world, name, instrument)
        for name, instrument in config.instruments.items()
    }
    return Simulation(world, instruments)
