"""Simulated Keithley SourceMeters: the 2450 (its SCPI command set) and the 2400, wired to the
stack model. Facts per shared/reference/instruments.md §4a, §4b and the manuals cited there.

The physics is that of an SMU behind the stack's Thevenin source: sourcing voltage V with a
current limit L (the same both ways), the current into the DUT is (V - emf) / R clamped to
[-L, +L]; sourcing current, it is the set current until the terminal voltage reaches the
voltage limit. The over-voltage protection clamps the source voltage; above 21 V only the
200 V range's 105 mA is available. With the output off, what flows depends on the output-off
state: nothing with the relay open (HIMP), and with the reset default NORMal a 0 V source with
a small current limit, which drains a cell (2450: 10 % of the present current range, 2450
Reference Manual "Output-off state"; 2400: 0.5 %, 2400 User's Manual p. 18-57).

The two dialects, and what each model does that the other does not:

| | 2450 | 2400 |
|---|---|---|
| limit, sourcing V | `:SOUR:VOLT:ILIM` | `:SENS:CURR:PROT` (compliance) |
| `:READ?` | one reading; buffer elements on request | V,I,R,time,status; V = the set value unless measured |
| `:READ?`, output off | what the terminals see [uncertain] | refused: +803, no reply |
| numbers | `4.100000e+00` | `+4.100000E+00` |
| `SYST:ERR?` | `0,"No error;0;0 0"`, `-113,"Undefined header;1;<time>"` | `0,"No error"`, depth 10 |
| `*IDN?` maker | `KEITHLEY INSTRUMENTS` | `KEITHLEY INSTRUMENTS INC.` |
| OVP levels | PROT2 ... PROT180, NONE | 20 ... 160 V, NONE; between steps: the lower |

SOURce is required in these command trees, SENSe optional, as the manuals head their commands
(`:SOURce[1]:...`, `[:SENSe[1]]:...`; [uncertain] for every header), so on a 2400 `:VOLT:PROT 5`
is the voltage compliance, not the protection. Readings carry seeded Gaussian noise
(`world.noise_rng(name)`); with the noise set to zero every reply is the model's value.
"""

from __future__ import annotations

import math
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .scpi import STANDARD_ERRORS, ScpiError, scpi
from .world import SimWorld, TerminalScpiInstrument

MAX_VOLTAGE_V = 210.0
MAX_CURRENT_A = 1.05
HIGH_RANGE_ABOVE_V = 21.0  # beyond the 20 V range only the 200 V range's 105 mA is available
HIGH_RANGE_CURRENT_A = 0.105
NOT_MEASURED = 9.91e37  # 2400 manual p. 18-51: an element neither sourced nor measured
OVERRANGE = 1.05  # a range reaches 105 % of its full scale (1.05 A on the 1 A range, 21 V on the 20 V range)
MIN_LIMIT_A = 1e-9  # [uncertain] the smallest current limit accepted
OFF_STATES = ("NORMal", "HIMPedance", "ZERO", "GUARd")


class KeithleySmuSimConfig(BaseModel):
    """What both simulated SMUs take in `simulation.instruments.<name>`."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    stack: str = Field("main", description="the simulated stack its terminals are wired to")
    voltage_noise_V: float = Field(1e-4, ge=0)
    current_noise_A: float = Field(1e-5, ge=0)
    current_offset_A: float = 0.0


class Keithley2450SimConfig(KeithleySmuSimConfig):
    kind: Literal["keithley-2450"] = "keithley-2450"
    serial: str = "04365704"
    firmware: str = "1.6.4c"  # a real unit's identity (reference §4b)
    command_set: Literal["SCPI", "SCPI2400", "TSP"] = Field("SCPI", description="what *LANG? answers")


class Keithley2400SimConfig(KeithleySmuSimConfig):
    kind: Literal["keithley-2400"] = "keithley-2400"
    serial: str = "1248014"
    firmware: str = "C30   Mar 17 2006 09:29:29/A02  /K/J"  # a real unit's, runs of spaces and all (reference §4a)


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


class _SimKeithleySmu(TerminalScpiInstrument):
    CURRENT_RANGES_A: tuple[float, ...] = ()
    VOLTAGE_RANGES_V: tuple[float, ...] = ()
    OFF_LIMIT_FRACTION = 0.0  # of the present range, in the NORMal and GUARd off states
    OVP_LEVELS_V: tuple[float, ...] = ()

    def __init__(self, world: SimWorld, name: str, config: KeithleySmuSimConfig):
        super().__init__()
        self.world = world
        self.config = config
        self._rng = world.noise_rng(name)
        self._powered_on_s = world.clock.now()  # the 2400's timestamp counts from power-on
        self.reset()
        world.connect(self)

    def reset(self) -> None:
        """*RST and power-on: source 0 V with a 105 uA limit, output off in the NORMal state."""
        self.output_on = False
        self.off_state = "NORMAL"
        self.source_function = "VOLTAGE"
        self.voltage_V = 0.0
        self.current_level_A = 0.0
        self.current_limit_A = 105e-6  # 2400 manual p. 18-68; 2461/2470 reference manuals, same on the 2450
        self.voltage_limit_V = 21.0
        self.ovp_V: float | None = None  # NONE

    _STATE = ("output_on", "off_state", "source_function", "voltage_V", "current_level_A", "current_limit_A",
              "voltage_limit_V", "ovp_V")

    # --- physics -----------------------------------------------------------------------

    def _present_range(self, ranges: tuple[float, ...], value: float) -> float:
        """The range that autoranging holds for `value`: each range reaches 105 % of its name."""
        return next((r for r in ranges if r * OVERRANGE >= abs(value)), ranges[-1])

    def _effective(self) -> tuple[str, float, float, float, float] | None:
        """(source function, voltage, current, current limit, voltage limit) that act on the
        terminals now, or None with the output relay open."""
        if self.output_on:
            return (self.source_function, self.voltage_V, self.current_level_A, self.current_limit_A,
                    self.voltage_limit_V)
        if self.off_state == "HIMPEDANCE":
            return None
        if self.off_state == "NORMAL":  # a 0 V source with a small limit
            limit = self.OFF_LIMIT_FRACTION * self._present_range(self.CURRENT_RANGES_A, self.current_limit_A)
            return "VOLTAGE", 0.0, 0.0, limit, self.voltage_limit_V
        if self.off_state == "ZERO":  # a 0 V source, the current limit unchanged
            return "VOLTAGE", 0.0, 0.0, self.current_limit_A, self.voltage_limit_V
        limit = self.OFF_LIMIT_FRACTION * self._present_range(self.VOLTAGE_RANGES_V, self.voltage_V)
        return "CURRENT", 0.0, 0.0, self.current_limit_A, limit  # GUARd: 0 A, a small voltage limit

    def _protection_V(self) -> float:
        return MAX_VOLTAGE_V if self.ovp_V is None else self.ovp_V

    def _drive(self, settings: tuple[str, float, float, float, float], emf_V: float, resistance_ohm: float) -> float:
        function, volts, amps, current_limit, voltage_limit = settings
        if function == "VOLTAGE":
            source = _clamp(volts, -self._protection_V(), self._protection_V())
            limit = current_limit if abs(source) <= HIGH_RANGE_ABOVE_V else min(current_limit, HIGH_RANGE_CURRENT_A)
            return _clamp((source - emf_V) / resistance_ohm, -limit, limit)
        ceiling = min(voltage_limit, self._protection_V())  # sourcing current: the voltage limit takes over
        terminal = emf_V + amps * resistance_ohm
        if abs(terminal) > ceiling:
            amps = (math.copysign(ceiling, terminal) - emf_V) / resistance_ohm
        return _clamp(amps, -MAX_CURRENT_A, MAX_CURRENT_A)

    def current_into_dut(self, emf_V: float, resistance_ohm: float) -> float:
        settings = self._effective()
        return 0.0 if settings is None else self._drive(settings, emf_V, resistance_ohm)

    def in_current_limit(self) -> bool:
        settings = self._effective()
        if not self.output_on or settings is None or self.source_function != "VOLTAGE":
            return False
        emf, resistance = self.world.stack.thevenin()
        unlimited = _clamp(self.voltage_V, -self._protection_V(), self._protection_V()) - emf
        return abs(unlimited / resistance) > abs(self._drive(settings, emf, resistance)) * (1 + 1e-12)

    def _terminals(self) -> tuple[float, float]:
        """(voltage, current) at the terminals now, with measurement noise; the open relay reads nothing."""
        c = self.config
        if self._effective() is None:
            volts = amps = 0.0
        else:
            volts, amps = self.world.stack.terminal_voltage_V(), self.world.stack.current_A + c.current_offset_A
        return (volts + c.voltage_noise_V * self._rng.standard_normal(),
                amps + c.current_noise_A * self._rng.standard_normal())

    def _terminals_if_on(self) -> tuple[float, float]:
        """What a reading taken with the output switched on for it would see (the 2400's auto
        output-off): the source acts for the length of the reading only, moving no charge to speak of."""
        emf, resistance = self.world.stack.thevenin()
        amps = self._drive((self.source_function, self.voltage_V, self.current_level_A, self.current_limit_A,
                            self.voltage_limit_V), emf, resistance)
        c = self.config
        return (emf + amps * resistance + c.voltage_noise_V * self._rng.standard_normal(),
                amps + c.current_offset_A + c.current_noise_A * self._rng.standard_normal())

    # --- settings both share -----------------------------------------------------------

    def number_text(self, value: float) -> str:
        raise NotImplementedError

    @scpi("OUTPut[:STATe]")
    def _output(self, args):
        self.output_on = self.boolean(args[0])

    @scpi("OUTPut[:STATe]?")
    def _output_q(self, args):
        return "1" if self.output_on else "0"

    @scpi("OUTPut[:VOLTage]:SMODe")
    def _off_state(self, args):
        self.off_state = self.choice(args[0], OFF_STATES)

    @scpi("OUTPut[:VOLTage]:SMODe?")
    def _off_state_q(self, args):
        return self.off_state[:4]

    @scpi("SOURce:FUNCtion[:MODE]")
    def _source_function(self, args):
        self.source_function = self.choice(args[0], ("VOLTage", "CURRent"))

    @scpi("SOURce:FUNCtion[:MODE]?")
    def _source_function_q(self, args):
        return self.source_function[:4]

    @scpi("SOURce:VOLTage[:LEVel][:IMMediate][:AMPLitude]")
    def _voltage(self, args):
        self.voltage_V = self.number(args[0], -MAX_VOLTAGE_V, MAX_VOLTAGE_V, default=0.0, units=("V",))

    @scpi("SOURce:VOLTage[:LEVel][:IMMediate][:AMPLitude]?")
    def _voltage_q(self, args):
        return self.number_text(self.voltage_V)

    @scpi("SOURce:CURRent[:LEVel][:IMMediate][:AMPLitude]")
    def _current(self, args):
        self.current_level_A = self.number(args[0], -MAX_CURRENT_A, MAX_CURRENT_A, default=0.0, units=("A",))

    @scpi("SOURce:CURRent[:LEVel][:IMMediate][:AMPLitude]?")
    def _current_q(self, args):
        return self.number_text(self.current_level_A)

    @scpi("SOURce:VOLTage:RANGe:AUTO")
    def _voltage_autorange(self, args):
        self.boolean(args[0])  # autoranging is what the physics assumes either way

    @scpi("[SENSe:]CURRent[:DC]:RANGe:AUTO")
    def _current_autorange(self, args):
        self.boolean(args[0])

    @scpi("SYSTem:CLEar", nargs=(0, 0))
    def _clear(self, args):
        self._errors.clear()

    def _set_current_limit(self, arg: str) -> None:
        # limits are magnitudes, in force both ways (2450 Reference Manual p. 6-71; 2400 p. 18-68)
        value = abs(self.number(arg, -MAX_CURRENT_A, MAX_CURRENT_A, default=105e-6, units=("A",)))
        if value < MIN_LIMIT_A:
            raise ScpiError(-222)
        self.current_limit_A = value

    def _set_voltage_limit(self, arg: str) -> None:
        self.voltage_limit_V = abs(self.number(arg, -MAX_VOLTAGE_V, MAX_VOLTAGE_V, default=21.0, units=("V",)))


class SimKeithley2450(_SimKeithleySmu):
    """Keithley 2450 speaking SCPI (2450 Reference Manual 2450-901-01)."""

    # 10 nA ... 1 A and 20 mV ... 200 V ranges (2450 datasheet)
    CURRENT_RANGES_A = (10e-9, 100e-9, 1e-6, 10e-6, 100e-6, 1e-3, 10e-3, 100e-3, 1.0)
    VOLTAGE_RANGES_V = (0.02, 0.2, 2.0, 20.0, 200.0)
    OFF_LIMIT_FRACTION = 0.10
    # 2450 Reference Manual p. 8-141; SCPI tokens PROT2 ... PROT180 [secondary]
    OVP_LEVELS_V = (2.0, 5.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0, 120.0, 140.0, 160.0, 180.0)

    def __init__(self, world: SimWorld, name: str, config: Keithley2450SimConfig):
        self.IDENTITY = f"KEITHLEY INSTRUMENTS,MODEL 2450,{config.serial},{config.firmware}"
        super().__init__(world, name, config)

    def reset(self) -> None:
        super().reset()
        self.sense_function = "CURRENT"  # [uncertain] the reset measure function: source V, measure I
        self.readback = True  # p. 6-77: default ON

    _STATE = _SimKeithleySmu._STATE + ("sense_function", "readback")

    def number_text(self, value: float) -> str:
        return f"{value:.6e}"  # lower-case e, 7 significant digits (manual example output)

    # --- error queue: message;event type;time ------------------------------------------

    def push_error(self, code: int, message: str | None = None) -> None:
        stamp = self.world.clock.unix_time()
        when = time.strftime("%Y/%m/%d %H:%M:%S", time.gmtime(stamp)) + f".{int(stamp % 1 * 1000):03d}"
        super().push_error(code, f"{message or STANDARD_ERRORS.get(code, 'Error')};1;{when}")

    def format_error(self, code: int, message: str) -> str:
        if code == 0:
            return '0,"No error;0;0 0"'  # real firmware's form [secondary: a DMM6500 hardware test]
        return f'{code},"{message}"'

    # --- commands ----------------------------------------------------------------------

    @scpi("*LANG?")
    def _lang(self, args):
        return self.config.command_set

    @scpi("OUTPut:CURRent:SMODe")
    def _off_state_current(self, args):
        self.off_state = self.choice(args[0], OFF_STATES)  # one off state for both functions, simplified

    @scpi("SOURce:VOLTage:ILIMit[:LEVel]")
    def _current_limit(self, args):
        self._set_current_limit(args[0])

    @scpi("SOURce:VOLTage:ILIMit[:LEVel]?")
    def _current_limit_q(self, args):
        return self.number_text(self.current_limit_A)

    @scpi("SOURce:VOLTage:ILIMit[:LEVel]:TRIPped?")
    def _current_limit_tripped(self, args):
        return "1" if self.in_current_limit() else "0"

    @scpi("SOURce:CURRent:VLIMit[:LEVel]")
    def _voltage_limit(self, args):
        self._set_voltage_limit(args[0])

    @scpi("SOURce:CURRent:VLIMit[:LEVel]?")
    def _voltage_limit_q(self, args):
        return self.number_text(self.voltage_limit_V)

    @scpi("SOURce:VOLTage:PROTection[:LEVel]")
    def _ovp(self, args):
        tokens = {f"PROT{level:.0f}": level for level in self.OVP_LEVELS_V} | {"NONE": None}
        token = args[0].strip().upper()
        if token not in tokens:
            raise ScpiError(-224)
        self.ovp_V = tokens[token]

    @scpi("SOURce:VOLTage:PROTection[:LEVel]?")
    def _ovp_q(self, args):
        return "NONE" if self.ovp_V is None else f"PROT{self.ovp_V:.0f}"

    @scpi("SOURce:VOLTage:PROTection[:LEVel]:TRIPped?")
    def _ovp_tripped(self, args):
        return "1" if self.output_on and abs(self.voltage_V) > self._protection_V() else "0"

    @scpi("SOURce:VOLTage:READ:BACK")
    def _readback(self, args):
        self.readback = self.boolean(args[0])

    @scpi("SOURce:VOLTage:READ:BACK?")
    def _readback_q(self, args):
        return "1" if self.readback else "0"

    @scpi("[SENSe:]FUNCtion[:ON]")
    def _sense_function(self, args):
        name = args[0].strip().strip("\"'").upper()
        name = name[:-3] if name.endswith(":DC") else name
        self.sense_function = self.choice(name, ("VOLTage", "CURRent"))

    @scpi("[SENSe:]FUNCtion[:ON]?")
    def _sense_function_q(self, args):
        return f'"{self.sense_function[:4]}:DC"'  # quoted, as qcodes reads it

    @scpi("READ?", nargs=(0, 14))
    def _read(self, args):
        buffer = args[0].strip("\"'") if args else "defbuffer1"
        if buffer not in ("defbuffer1", "defbuffer2"):
            raise ScpiError(-224, "Illegal parameter value; no such reading buffer")
        elements = [self.choice(a, ("READing", "SOURce", "RELative")) for a in args[1:]] or ["READING"]
        volts, amps = self._terminals()
        measured = amps if self.sense_function == "CURRENT" else volts
        if self.source_function == "VOLTAGE":
            source = volts if self.readback else self.voltage_V
        else:
            source = amps if self.readback else self.current_level_A
        values = {"READING": measured, "SOURCE": source, "RELATIVE": self.world.clock.now() - self._powered_on_s}
        return ",".join(self.number_text(values[e]) for e in elements)


class SimKeithley2400(_SimKeithleySmu):
    """Keithley 2400 SourceMeter (2400 Series User's Manual 2400S-900-01)."""

    ERROR_QUEUE_DEPTH = 10  # reference §4a
    CURRENT_RANGES_A = (1e-6, 10e-6, 100e-6, 1e-3, 10e-3, 100e-3, 1.0)
    VOLTAGE_RANGES_V = (0.2, 2.0, 20.0, 200.0)
    OFF_LIMIT_FRACTION = 0.005  # p. 18-57
    OVP_LEVELS_V = (20.0, 40.0, 60.0, 80.0, 100.0, 120.0, 160.0)  # p. 18-81
    ELEMENTS = ("VOLTage", "CURRent", "RESistance", "TIME", "STATus")
    SHORT = {"VOLTAGE": "VOLT", "CURRENT": "CURR", "RESISTANCE": "RES", "TIME": "TIME", "STATUS": "STAT"}

    def __init__(self, world: SimWorld, name: str, config: Keithley2400SimConfig):
        self.IDENTITY = f"KEITHLEY INSTRUMENTS INC.,MODEL 2400,{config.serial},{config.firmware}"
        super().__init__(world, name, config)

    def reset(self) -> None:
        super().reset()
        self.concurrent = True
        self.sense_functions = ("CURRENT",)  # [uncertain] *RST measures current only
        self.elements = tuple(e.upper() for e in self.ELEMENTS)  # all five (p. 18-51)
        self.auto_off = False  # p. 18-72: disabled is the *RST default

    _STATE = _SimKeithleySmu._STATE + ("concurrent", "sense_functions", "elements", "auto_off")

    def restore(self, state: dict) -> None:
        super().restore(state)
        self.sense_functions, self.elements = tuple(self.sense_functions), tuple(self.elements)

    def number_text(self, value: float) -> str:
        return f"{value:+.6E}"  # +1.000236E+00 (p. 18-53)

    def format_error(self, code: int, message: str) -> str:
        return f'{code},"{message}"'  # 0,"No error"; -113,"Undefined header": no plus sign

    # --- commands ----------------------------------------------------------------------

    @scpi("[SENSe:]CURRent[:DC]:PROTection[:LEVel]")
    def _compliance_current(self, args):
        self._set_current_limit(args[0])

    @scpi("[SENSe:]CURRent[:DC]:PROTection[:LEVel]?")
    def _compliance_current_q(self, args):
        return self.number_text(self.current_limit_A)

    @scpi("[SENSe:]CURRent[:DC]:PROTection:TRIPped?")
    def _compliance_tripped(self, args):
        return "1" if self.in_current_limit() else "0"  # [uncertain] reference §4a

    @scpi("[SENSe:]VOLTage[:DC]:PROTection[:LEVel]")
    def _compliance_voltage(self, args):
        self._set_voltage_limit(args[0])

    @scpi("[SENSe:]VOLTage[:DC]:PROTection[:LEVel]?")
    def _compliance_voltage_q(self, args):
        return self.number_text(self.voltage_limit_V)

    @scpi("SOURce:VOLTage:PROTection[:LEVel]")
    def _ovp(self, args):
        value = abs(self.number(args[0], -MAX_VOLTAGE_V, MAX_VOLTAGE_V, default=MAX_VOLTAGE_V, units=("V",)))
        if value > self.OVP_LEVELS_V[-1]:
            self.ovp_V = None  # NONE
        else:  # a value between steps selects the lower one, below the lowest the lowest (p. 18-81)
            self.ovp_V = max([level for level in self.OVP_LEVELS_V if level <= value], default=self.OVP_LEVELS_V[0])

    @scpi("SOURce:VOLTage:PROTection[:LEVel]?")
    def _ovp_q(self, args):
        return self.number_text(self._protection_V())  # [uncertain] NONE reads as the 210 V maximum

    @scpi("SOURce:VOLTage:MODE")
    def _voltage_mode(self, args):
        if self.choice(args[0], ("FIXed", "LIST", "SWEep")) != "FIXED":
            raise ScpiError(-221, "Settings conflict; only FIXed is simulated")

    @scpi("SOURce:CLEar:AUTO")
    def _auto_off(self, args):
        self.auto_off = self.boolean(args[0])

    @scpi("SOURce:CLEar:AUTO?")
    def _auto_off_q(self, args):
        return "1" if self.auto_off else "0"

    @scpi("[SENSe:]FUNCtion:CONCurrent")
    def _concurrent(self, args):
        self.concurrent = self.boolean(args[0])
        if not self.concurrent:
            self.sense_functions = self.sense_functions[:1]

    @scpi("[SENSe:]FUNCtion:CONCurrent?")
    def _concurrent_q(self, args):
        return "1" if self.concurrent else "0"

    @scpi("[SENSe:]FUNCtion[:ON]", nargs=(1, 3))
    def _sense_functions(self, args):
        names = []
        for arg in args:
            name = arg.strip().strip("\"'").upper()
            names.append(self.choice(name[:-3] if name.endswith(":DC") else name, ("VOLTage", "CURRent", "RESistance")))
        if len(names) > 1 and not self.concurrent:
            raise ScpiError(-221, "Settings conflict; concurrent measurements are off")
        # with concurrent measurements, functions are added to those already on
        found = set(names) | (set(self.sense_functions) if self.concurrent else set())
        self.sense_functions = tuple(f for f in ("VOLTAGE", "CURRENT", "RESISTANCE") if f in found)

    @scpi("[SENSe:]FUNCtion[:ON]?")
    def _sense_functions_q(self, args):
        return ",".join(f'"{self.SHORT[f]}:DC"' if f != "RESISTANCE" else '"RES"' for f in self.sense_functions)

    @scpi("FORMat:ELEMents[:SENSe]", nargs=(1, 5))
    def _elements(self, args):
        chosen = {self.choice(a, self.ELEMENTS) for a in args}
        self.elements = tuple(e.upper() for e in self.ELEMENTS if e.upper() in chosen)  # always in this order

    @scpi("FORMat:ELEMents[:SENSe]?")
    def _elements_q(self, args):
        return ",".join(self.SHORT[e] for e in self.elements)

    def _status_word(self) -> int:
        # [uncertain] bits as recalled from the manual's status-word figure: 3 compliance, 4 OVP,
        # 11 V measured, 12 I measured, 14 V source, 15 I source
        word = 8 if self.in_current_limit() else 0
        word |= 16 if self.output_on and abs(self.voltage_V) > self._protection_V() else 0
        word |= 2048 if "VOLTAGE" in self.sense_functions else 0
        word |= 4096 if "CURRENT" in self.sense_functions else 0
        return word | (16384 if self.source_function == "VOLTAGE" else 32768)

    @scpi("READ?")
    def _read(self, args):
        if not self.output_on:
            if not self.auto_off:
                raise ScpiError(803, "Not permitted with OUTPUT off")  # Table B-1; no reply is sent
            volts, amps = self._terminals_if_on()
        else:
            volts, amps = self._terminals()
        sourcing_voltage = self.source_function == "VOLTAGE"
        # an element that is not measured is the source's set value, or NaN if not sourced either (p. 18-51)
        volt = volts if "VOLTAGE" in self.sense_functions else (self.voltage_V if sourcing_voltage else NOT_MEASURED)
        if "CURRENT" in self.sense_functions:
            curr = amps
        else:
            curr = NOT_MEASURED if sourcing_voltage else self.current_level_A
        res = volt / curr if "RESISTANCE" in self.sense_functions and curr else NOT_MEASURED
        values = {"VOLTAGE": volt, "CURRENT": curr, "RESISTANCE": res,
                  "TIME": self.world.clock.now() - self._powered_on_s, "STATUS": float(self._status_word())}
        return ",".join(self.number_text(values[e]) for e in self.elements)
