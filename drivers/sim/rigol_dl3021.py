"""Simulated Rigol DL3021 DC electronic load, wired to the stack.

It speaks the DL3000 SCPI of drivers/rigol_dl3021.py (whose module notes give the sources; the
model ratings are shared from there), with the generic SCPI rules of drivers/sim/scpi.py.

What it does to the DUT, a Thevenin source `emf` behind `R`, with the input on (the static
function, `:SOUR:FUNC:MODE FIX`):
* CC sinks the set current; CV sinks (emf - V_set) / R, at most the CV current limit
  (`:SOUR:VOLT:ILIM`), nothing if the DUT is below V_set; CR sinks emf / (R + R_set); CP the
  smaller current that takes P_set at the terminals;
* never more than the DUT can give (emf / R), its CC range, its rating or its power rating;
* with the input off, a reversed DUT or a regulation source other than FIX, nothing.

Emulator choices where the reference is silent, each [uncertain]:
* `:SOUR:FUNC?` answers CC, CV, CR or CP (drivers disagree whether it is that or CURR, VOLT, ...);
* changing the function leaves the input as it is;
* a CC set value above the present range is refused with -222; the range takes 4 or 40
  (DL3031: 6 or 60) and MIN/MAX;
* `SYST:ERR?` answers `0,"No error"` when the queue is empty; MEAS values answer with 6 decimals.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..rigol_dl3021 import CURRENT_RANGES_A, MODEL_RATINGS
from ..roles import LoadMode
from .bk8500 import current_for_power
from .scpi import ScpiError, scpi
from .world import SimWorld, TerminalScpiInstrument

MODES_BY_FUNCTION: dict[str, LoadMode] = {"CURRENT": "CC", "VOLTAGE": "CV", "RESISTANCE": "CR", "POWER": "CP"}


class RigolDl3021SimConfig(BaseModel):
    """The simulated load (`simulation.instruments.<name>`): its model and measurement noise."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    kind: Literal["rigol-dl3021"] = "rigol-dl3021"
    stack: str = Field("main", description="the simulated stack its input is wired to")
    model: str = Field("DL3021", description="model as *IDN? reports it; its ratings are in drivers/rigol_dl3021.py")
    serial: str = "DL3A204800938"
    firmware: str = "00.01.05.00.01"
    voltage_noise_V: float = Field(0.0005, ge=0)
    current_noise_A: float = Field(0.0002, ge=0)

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in MODEL_RATINGS:
            raise ValueError(f"model {value!r}: simulated models are {', '.join(MODEL_RATINGS)}")
        return value


class SimRigolDl3021(TerminalScpiInstrument):
    def __init__(self, world: SimWorld, name: str, config: RigolDl3021SimConfig):
        super().__init__()
        self.world = world
        self.config = config
        self.ratings = MODEL_RATINGS[config.model]
        self.ranges_A = CURRENT_RANGES_A[self.ratings.current_A]
        self.IDENTITY = f"RIGOL TECHNOLOGIES,{config.model},{config.serial},{config.firmware}"
        self._rng = world.noise_rng(name)
        self.reset()
        self.sink_A = 0.0  # what it sinks at the present operating point
        world.connect(self)

    def reset(self) -> None:
        r = self.ratings
        self.input_on = False
        self.function: LoadMode = "CC"
        self.regulation_source = "FIXED"
        self.range_A = self.ranges_A[1]
        self.cc_A = 0.0
        self.cv_V = r.voltage_V
        self.cv_limit_A = r.current_A
        self.cr_ohm = r.max_resistance_ohm
        self.cp_W = 0.0

    _STATE = ("input_on", "function", "regulation_source", "range_A", "cc_A", "cv_V", "cv_limit_A", "cr_ohm", "cp_W")

    # --- physics: what the load does to the DUT -------------------------------------------

    def current_into_dut(self, emf_V: float, resistance_ohm: float) -> float:
        self.sink_A = self._operating_point(emf_V, max(resistance_ohm, 1e-9))
        return -self.sink_A  # + = into the DUT: a load only takes current out

    def _operating_point(self, emf_V: float, r: float) -> float:
        if not self.input_on or self.regulation_source != "FIXED" or emf_V <= 0:
            return 0.0
        if self.function == "CC":
            sink = min(self.cc_A, self.range_A)
        elif self.function == "CV":
            sink = min(max(emf_V - self.cv_V, 0.0) / r, self.cv_limit_A)
        elif self.function == "CR":
            sink = emf_V / (r + self.cr_ohm)
        else:
            sink = current_for_power(emf_V, r, self.cp_W)
        sink = min(sink, emf_V / r, self.ratings.current_A)
        if sink * (emf_V - sink * r) > self.ratings.power_W:
            sink = current_for_power(emf_V, r, self.ratings.power_W)
        return sink

    # --- settings ----------------------------------------------------------------------

    @scpi("[SOURce:]FUNCtion")
    def _function(self, args):
        self.function = MODES_BY_FUNCTION[self.choice(args[0], ("CURRent", "VOLTage", "RESistance", "POWer"))]

    @scpi("[SOURce:]FUNCtion?")
    def _function_q(self, args):
        return self.function

    @scpi("[SOURce:]FUNCtion:MODE")
    def _function_mode(self, args):
        self.regulation_source = self.choice(args[0], ("FIXed", "LIST", "WAVe", "BATTery", "OCP", "OPP"))

    @scpi("[SOURce:]FUNCtion:MODE?")
    def _function_mode_q(self, args):
        return self.regulation_source[:4] if self.regulation_source != "FIXED" else "FIX"

    @scpi("[SOURce:]CURRent[:LEVel][:IMMediate]")
    def _cc(self, args):
        self.cc_A = self.number(args[0], 0.0, self.range_A, default=0.0, units=("A",))

    @scpi("[SOURce:]CURRent[:LEVel][:IMMediate]?")
    def _cc_q(self, args):
        return self._value(self.cc_A)

    @scpi("[SOURce:]CURRent:RANGe")
    def _range(self, args):
        low, high = self.ranges_A
        value = self.number(args[0], low, high, units=("A",))
        if value not in (low, high):
            raise ScpiError(-224)
        self.range_A = value
        self.cc_A = min(self.cc_A, value)

    @scpi("[SOURce:]CURRent:RANGe?")
    def _range_q(self, args):
        return f"{self.range_A:g}"

    @scpi("[SOURce:]VOLTage[:LEVel][:IMMediate]")
    def _cv(self, args):
        self.cv_V = self.number(args[0], 0.0, self.ratings.voltage_V, units=("V",))

    @scpi("[SOURce:]VOLTage[:LEVel][:IMMediate]?")
    def _cv_q(self, args):
        return self._value(self.cv_V)

    @scpi("[SOURce:]VOLTage:ILIMit")
    def _cv_limit(self, args):
        self.cv_limit_A = self.number(args[0], 0.0, self.ratings.current_A, units=("A",))

    @scpi("[SOURce:]VOLTage:ILIMit?")
    def _cv_limit_q(self, args):
        return self._value(self.cv_limit_A)

    @scpi("[SOURce:]RESistance[:LEVel][:IMMediate]")
    def _cr(self, args):
        r = self.ratings
        self.cr_ohm = self.number(args[0], r.min_resistance_ohm, r.max_resistance_ohm, units=("OHM",))

    @scpi("[SOURce:]RESistance[:LEVel][:IMMediate]?")
    def _cr_q(self, args):
        return self._value(self.cr_ohm)

    @scpi("[SOURce:]POWer[:LEVel][:IMMediate]")
    def _cp(self, args):
        self.cp_W = self.number(args[0], 0.0, self.ratings.power_W, units=("W",))

    @scpi("[SOURce:]POWer[:LEVel][:IMMediate]?")
    def _cp_q(self, args):
        return self._value(self.cp_W)

    @scpi("[SOURce:]INPut[:STATe]")
    def _input(self, args):
        self.input_on = self.boolean(args[0])

    @scpi("[SOURce:]INPut[:STATe]?")
    def _input_q(self, args):
        return "1" if self.input_on else "0"

    # --- measurements ------------------------------------------------------------------

    def _measured(self) -> tuple[float, float]:
        c = self.config
        volts = self.world.stack.terminal_voltage_V() + c.voltage_noise_V * self._rng.standard_normal()
        amps = self.sink_A + c.current_noise_A * self._rng.standard_normal()
        return max(volts, 0.0), max(amps, 0.0)

    @scpi("MEASure[:SCALar]:VOLTage[:DC]?")
    def _meas_voltage(self, args):
        return self._value(self._measured()[0])

    @scpi("MEASure[:SCALar]:CURRent[:DC]?")
    def _meas_current(self, args):
        return self._value(self._measured()[1])

    @scpi("MEASure[:SCALar]:POWer[:DC]?")
    def _meas_power(self, args):
        volts, amps = self._measured()
        return self._value(volts * amps)

    @staticmethod
    def _value(value: float) -> str:
        return f"{value:.6f}"

    def format_error(self, code: int, message: str) -> str:
        return f'{code},"{message}"'
