"""Simulated Keysight E36312A triple-output DC power supply, one output wired to the stack.

It speaks the E36300 SCPI of drivers/keysight_e36312a.py (whose module notes give the sources;
the per-output ranges are shared from there): every output command takes a channel list
`(@1:3)` as its last parameter, or, without one, acts on the output chosen with `INST:NSEL n` /
`INST:SEL CHn` (sigrok drives a real E36312A that way); queries of several outputs answer one
value each, comma separated.

Physics. The wired output (`output:` in the simulation block) drives the stack, a Thevenin
source `emf` behind `R`: with the output on it sources (V_set - emf) / R, held between 0 (it
cannot sink) and the current setting: CV while that is below the setting, CC at the setting.
A DUT above the set voltage sees no current ("unregulated": the supply cannot pull it down).
OVP trips when the terminal voltage passes its level; with OCP enabled, the output trips as it
goes into current limit. A trip switches the output off and latches until OUTP:PROT:CLE.
The other outputs have nothing connected: on, they sit at their set voltage with no current.

Emulator choices where the reference is silent, each [uncertain]:
* with the output off, MEAS:VOLT? of the wired output reads the DUT's voltage (no output relay);
* OUTP ON of a tripped output is refused with -221 "Settings conflict";
* `APPLy v[,i][,(@list)]` sets voltage and current as VOLT and CURR would (the E3631A form);
* `OUTP:PROT:CLE [(@list)]` clears the latched trips (the N6700 spelling; reference §1 marks it
  uncertain for the E36300); numbers answer in NR3 with 8 decimals (`+4.25000000E+00`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..keysight_e36312a import OUTPUT_RANGES
from .scpi import ScpiError, scpi
from .world import SimWorld, TerminalScpiInstrument

OUTPUTS = tuple(OUTPUT_RANGES)
ISUM_CC, ISUM_CV, ISUM_UNREGULATED = 1, 2, 0
LEGACY_NAMES = {"P6V": 1, "P25V": 2, "N25V": 3}  # E3631A names, accepted (reference §1 [secondary])


class KeysightE36312aSimConfig(BaseModel):
    """The simulated supply (`simulation.instruments.<name>`): which output is wired to the stack."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    kind: Literal["keysight-e36312a"] = "keysight-e36312a"
    stack: str = Field("main", description="the simulated stack its wired output drives")
    output: int = Field(2, ge=1, le=3, description="the output wired to the stack's terminals")
    serial: str = "MY59002391"
    firmware: str = "2.1.0-1.0.4-1.12"
    voltage_noise_V: float = Field(0.0005, ge=0)
    current_noise_A: float = Field(0.0001, ge=0)


class SimKeysightE36312a(TerminalScpiInstrument):
    def __init__(self, world: SimWorld, name: str, config: KeysightE36312aSimConfig):
        super().__init__()
        self.world = world
        self.config = config
        self.IDENTITY = f"Keysight Technologies,E36312A,{config.serial},{config.firmware}"
        self._rng = world.noise_rng(name)
        self.reset()
        self.source_A = 0.0  # what the wired output sources at the present operating point
        self.regulating = ISUM_UNREGULATED
        world.connect(self)

    def reset(self) -> None:
        self.remote = False
        self.selected = 1
        self.paired = "OFF"
        self.voltage_V = {n: 0.0 for n in OUTPUTS}
        self.current_A = {n: OUTPUT_RANGES[n].max_current_A for n in OUTPUTS}
        self.on = {n: False for n in OUTPUTS}
        self.ovp_V = {n: OUTPUT_RANGES[n].max_over_voltage_V for n in OUTPUTS}
        self.ocp_enabled = {n: False for n in OUTPUTS}
        self.ovp_tripped = {n: False for n in OUTPUTS}
        self.ocp_tripped = {n: False for n in OUTPUTS}

    _STATE = ("remote", "selected", "paired", "voltage_V", "current_A", "on", "ovp_V", "ocp_enabled", "ovp_tripped",
              "ocp_tripped")

    def restore(self, state: dict) -> None:
        # JSON turns the per-output keys into strings
        super().restore({name: ({int(k): v for k, v in value.items()} if isinstance(value, dict) else value)
                         for name, value in state.items()})

    @property
    def output_on(self) -> bool:
        """The wired output is on (what tests and break-before-make checks look at)."""
        return self.on[self.config.output]

    # --- physics: what the wired output does to the DUT ------------------------------------

    def current_into_dut(self, emf_V: float, resistance_ohm: float) -> float:
        n = self.config.output
        self.source_A, self.regulating = self._operating_point(n, emf_V, resistance_ohm)
        return self.source_A

    def _operating_point(self, n: int, emf_V: float, resistance_ohm: float) -> tuple[float, int]:
        if not self.on[n]:
            return 0.0, ISUM_UNREGULATED
        wanted = (self.voltage_V[n] - emf_V) / max(resistance_ohm, 1e-9)
        if wanted <= 0:
            return 0.0, ISUM_UNREGULATED  # the DUT is above the set voltage: a source cannot pull it down
        if wanted >= self.current_A[n]:
            current, regulating = self.current_A[n], ISUM_CC
        else:
            current, regulating = wanted, ISUM_CV
        if emf_V + current * resistance_ohm > self.ovp_V[n]:
            self.ovp_tripped[n], self.on[n] = True, False
            return 0.0, ISUM_UNREGULATED
        if regulating == ISUM_CC and self.ocp_enabled[n]:
            self.ocp_tripped[n], self.on[n] = True, False
            return 0.0, ISUM_UNREGULATED
        return current, regulating

    def _measured(self, n: int) -> tuple[float, float]:
        if n != self.config.output:  # nothing connected
            return (self.voltage_V[n] if self.on[n] else 0.0), 0.0
        c = self.config
        volts = self.world.stack.terminal_voltage_V() + c.voltage_noise_V * self._rng.standard_normal()
        amps = self.source_A + c.current_noise_A * self._rng.standard_normal()
        return volts, amps

    # --- addressing --------------------------------------------------------------------

    def _outputs(self, args: list[str], parameters: int) -> tuple[list[str], list[int]]:
        """(the parameters, the outputs addressed): a trailing channel list, or the selected output."""
        if args and args[-1].startswith("(@"):
            outputs = self.channel_list(args[-1])
            args = args[:-1]
        else:
            outputs = [self.selected]
        if len(args) > parameters:
            raise ScpiError(-108)
        if not outputs or any(n not in OUTPUTS for n in outputs):
            raise ScpiError(-222, "Data out of range; no such output")
        return args, outputs

    def _set_each(self, args: list[str], apply) -> None:
        params, outputs = self._outputs(args, 1)
        if len(params) != 1:
            raise ScpiError(-109)
        for n in outputs:
            apply(n, params[0])

    def _query_each(self, args: list[str], read) -> str:
        """A query of one value per output; MIN|MAX before the channel list ask for the range."""
        params, outputs = self._outputs(args, 1)
        which = params[0].upper() if params else None
        if which not in (None, "MIN", "MINIMUM", "MAX", "MAXIMUM"):
            raise ScpiError(-224)
        return ",".join(read(n, which) for n in outputs)

    @scpi("INSTrument:NSELect")
    def _nselect(self, args):
        self.selected = int(self.number(args[0], 1, len(OUTPUTS)))

    @scpi("INSTrument:NSELect?")
    def _nselect_q(self, args):
        return f"+{self.selected}"

    @scpi("INSTrument[:SELect]")
    def _select(self, args):
        name = args[0].strip().upper()
        names = {f"CH{n}": n for n in OUTPUTS} | LEGACY_NAMES
        if name not in names:
            raise ScpiError(-224)
        self.selected = names[name]

    @scpi("INSTrument[:SELect]?")
    def _select_q(self, args):
        return f"CH{self.selected}"

    # --- settings ----------------------------------------------------------------------

    def _range_value(self, n: int, which: str | None, low: float, high: float, value: float) -> str:
        return self.nr3({None: value, "MIN": low, "MINIMUM": low, "MAX": high, "MAXIMUM": high}[which])

    def _set_voltage(self, n: int, arg: str) -> None:
        self.voltage_V[n] = self.number(arg, 0.0, OUTPUT_RANGES[n].max_voltage_V, default=0.0, units=("V",))

    def _set_current(self, n: int, arg: str) -> None:
        r = OUTPUT_RANGES[n]
        self.current_A[n] = self.number(arg, r.min_current_A, r.max_current_A, default=r.max_current_A, units=("A",))

    @scpi("[SOURce:]VOLTage[:LEVel][:IMMediate][:AMPLitude]", nargs=(1, 2))
    def _voltage(self, args):
        self._set_each(args, self._set_voltage)

    @scpi("[SOURce:]VOLTage[:LEVel][:IMMediate][:AMPLitude]?", nargs=(0, 2))
    def _voltage_q(self, args):
        return self._query_each(args, lambda n, which: self._range_value(
            n, which, 0.0, OUTPUT_RANGES[n].max_voltage_V, self.voltage_V[n]))

    @scpi("[SOURce:]CURRent[:LEVel][:IMMediate][:AMPLitude]", nargs=(1, 2))
    def _current(self, args):
        self._set_each(args, self._set_current)

    @scpi("[SOURce:]CURRent[:LEVel][:IMMediate][:AMPLitude]?", nargs=(0, 2))
    def _current_q(self, args):
        return self._query_each(args, lambda n, which: self._range_value(
            n, which, OUTPUT_RANGES[n].min_current_A, OUTPUT_RANGES[n].max_current_A, self.current_A[n]))

    @scpi("APPLy", nargs=(1, 3))
    def _apply(self, args):
        params, outputs = self._outputs(args, 2)
        if not params:
            raise ScpiError(-109)
        for n in outputs:
            self._set_voltage(n, params[0])
            if len(params) > 1:
                self._set_current(n, params[1])

    @scpi("[SOURce:]VOLTage:PROTection[:LEVel]", nargs=(1, 2))
    def _ovp(self, args):
        def apply(n, arg):
            r = OUTPUT_RANGES[n]
            self.ovp_V[n] = self.number(arg, r.min_over_voltage_V, r.max_over_voltage_V, units=("V",))
        self._set_each(args, apply)

    @scpi("[SOURce:]VOLTage:PROTection[:LEVel]?", nargs=(0, 2))
    def _ovp_q(self, args):
        return self._query_each(args, lambda n, which: self._range_value(
            n, which, OUTPUT_RANGES[n].min_over_voltage_V, OUTPUT_RANGES[n].max_over_voltage_V, self.ovp_V[n]))

    @scpi("[SOURce:]VOLTage:PROTection:TRIPped?", nargs=(0, 1))
    def _ovp_tripped_q(self, args):
        return self._query_each(args, lambda n, which: "1" if self.ovp_tripped[n] else "0")

    @scpi("[SOURce:]CURRent:PROTection:STATe", nargs=(1, 2))
    def _ocp(self, args):
        self._set_each(args, lambda n, arg: self.ocp_enabled.__setitem__(n, self.boolean(arg)))

    @scpi("[SOURce:]CURRent:PROTection:STATe?", nargs=(0, 1))
    def _ocp_q(self, args):
        return self._query_each(args, lambda n, which: "1" if self.ocp_enabled[n] else "0")

    @scpi("[SOURce:]CURRent:PROTection:TRIPped?", nargs=(0, 1))
    def _ocp_tripped_q(self, args):
        return self._query_each(args, lambda n, which: "1" if self.ocp_tripped[n] else "0")

    @scpi("OUTPut:PROTection:CLEar", nargs=(0, 1))
    def _clear_protection(self, args):
        _, outputs = self._outputs(args, 0)
        for n in outputs:
            self.ovp_tripped[n] = self.ocp_tripped[n] = False

    @scpi("OUTPut[:STATe]", nargs=(1, 2))
    def _output(self, args):
        def apply(n, arg):
            on = self.boolean(arg)
            if on and (self.ovp_tripped[n] or self.ocp_tripped[n]):
                raise ScpiError(-221, "Settings conflict; protection tripped, clear it first")
            self.on[n] = on
        self._set_each(args, apply)

    @scpi("OUTPut[:STATe]?", nargs=(0, 1))
    def _output_q(self, args):
        return self._query_each(args, lambda n, which: "1" if self.on[n] else "0")

    @scpi("OUTPut:PAIR")
    def _pair(self, args):
        self.paired = {"OFF": "OFF", "PARALLEL": "PAR", "SERIES": "SER"}[self.choice(args[0], ("OFF", "PARallel",
                                                                                               "SERies"))]

    @scpi("OUTPut:PAIR?")
    def _pair_q(self, args):
        return self.paired

    @scpi("SYSTem:REMote", nargs=(0, 0))
    def _remote(self, args):
        self.remote = True

    @scpi("SYSTem:LOCal", nargs=(0, 0))
    def _local(self, args):
        self.remote = False

    # --- measurements and status -------------------------------------------------------

    @scpi("MEASure[:SCALar]:VOLTage[:DC]?", nargs=(0, 1))
    def _meas_voltage(self, args):
        return self._query_each(args, lambda n, which: self.nr3(self._measured(n)[0]))

    @scpi("MEASure[:SCALar]:CURRent[:DC]?", nargs=(0, 1))
    def _meas_current(self, args):
        return self._query_each(args, lambda n, which: self.nr3(self._measured(n)[1]))

    def _isum(self, n: int) -> str:
        if n == self.config.output:
            value = self.regulating
        else:
            value = ISUM_CV if self.on[n] else ISUM_UNREGULATED
        return str(value)  # over-temperature (bit 4) is not modelled

    @scpi("STATus:QUEStionable:INSTrument:ISUMmary1:CONDition?")
    def _isum1(self, args):
        return self._isum(1)

    @scpi("STATus:QUEStionable:INSTrument:ISUMmary2:CONDition?")
    def _isum2(self, args):
        return self._isum(2)

    @scpi("STATus:QUEStionable:INSTrument:ISUMmary3:CONDition?")
    def _isum3(self, args):
        return self._isum(3)
