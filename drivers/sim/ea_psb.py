"""Simulated EA Elektro-Automatik PSB 10000 bidirectional (source-sink) DC supply.

Command set per EA's "Programming ModBus & SCPI" guide as used by drivers tested on a real
PSB 10080-60 (nominal-io/instro `ea_psb10000.py`, guide REV 24) and by sigrok's scpi-pps
profile: remote control must be taken with `SYST:LOCK ON` before settings are accepted;
replies carry a unit suffix; MEAS:CURR? is positive while sourcing and negative while sinking
(guide §5.4.4.2); the unit has no *OPC?.

Regulation: one voltage set value with a source current limit (CURR) and a sink current
limit (SINK:CURR), plus power limits. If the DUT is below the voltage set value the unit
sources up to CURR; above it, it sinks up to SINK:CURR. That is how it charges at constant
current (set voltage above the battery), discharges at constant current (set voltage below),
and does CC-CV either way natively.

No interface watchdog is simulated: the driver arms none, its command being unconfirmed (see the
driver's module notes).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .scpi import ScpiError, scpi
from .world import SimWorld, TerminalScpiInstrument

# EA datasheets give set-value ranges of 0..102 % and protection ranges of 0..110 % of the
# nominal rating. [uncertain: checked against PSB 9000 datasheets, not a PSB 10000 one]
SETPOINT_SPAN = 1.02
PROTECTION_SPAN = 1.10


class EaPsbSimConfig(BaseModel):
    """Ratings and measurement quality of the simulated unit (`simulation.instruments.<name>`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    kind: Literal["ea-psb-10000"] = "ea-psb-10000"
    stack: str = Field("main", description="the simulated stack its terminals are wired to")
    # [uncertain] model designation: a 200 V 1.5 kW PSB 10000; ratings are what matter here and
    # the driver reads them from the unit with SYST:NOM:*?.
    model: str = "PSB 10200-25 2U"
    serial: str = "2306170042"
    firmware: str = "V3.05"
    nominal_voltage_V: float = Field(200.0, gt=0)
    nominal_current_A: float = Field(25.0, gt=0)
    nominal_power_W: float = Field(1500.0, gt=0)
    voltage_noise_V: float = Field(0.005, ge=0)
    current_noise_A: float = Field(0.0005, ge=0)
    current_offset_A: float = 0.0


class SimEaPsb(TerminalScpiInstrument):
    OPC_SUPPORTED = False  # a real PSB 10080-60 does not implement *OPC? (instro hardware tests)

    def __init__(self, world: SimWorld, name: str, config: EaPsbSimConfig):
        super().__init__()
        self.world = world
        self.config = config
        self.IDENTITY = f"EA Elektro-Automatik GmbH & Co. KG, {config.model}, {config.serial}, {config.firmware}"
        self._rng = world.noise_rng(name)
        self.remote = False
        self.reset()
        world.connect(self)

    def reset(self) -> None:
        c = self.config
        self.output_on = False
        self.alarm: str | None = None
        self.voltage_V = 0.0
        self.source_current_A = 0.0
        self.sink_current_A = 0.0
        self.source_power_W = c.nominal_power_W
        self.sink_power_W = c.nominal_power_W
        self.ovp_V = c.nominal_voltage_V * PROTECTION_SPAN
        self.ocp_A = c.nominal_current_A * PROTECTION_SPAN
        self.opp_W = c.nominal_power_W * PROTECTION_SPAN

    _STATE = ("remote", "output_on", "alarm", "voltage_V", "source_current_A", "sink_current_A", "source_power_W",
              "sink_power_W", "ovp_V", "ocp_A", "opp_W")

    # --- physics: what the unit does to the DUT ----------------------------------------

    def current_into_dut(self, emf_V: float, resistance_ohm: float) -> float:
        if not self.output_on:
            return 0.0
        v_ref = max(emf_V, 1e-3)
        source_limit = min(self.source_current_A, self.source_power_W / v_ref)
        sink_limit = min(self.sink_current_A, self.sink_power_W / v_ref)
        current = (self.voltage_V - emf_V) / resistance_ohm
        current = min(max(current, -sink_limit), source_limit)
        terminal_V = emf_V + current * resistance_ohm
        alarm = ("OVP" if terminal_V > self.ovp_V else "OCP" if abs(current) > self.ocp_A
                 else "OPP" if abs(current * terminal_V) > self.opp_W else None)
        if alarm is not None:
            self.trip_protection(alarm)
            return 0.0
        return current

    def trip_protection(self, alarm: str) -> None:
        """The unit's own protection trips (OVP, OCP, OPP): the DC terminal off and the alarm latched,
        so OUTP ON is refused until it is cleared. Also how a fault schedule trips it (sim/faults.py)."""
        self.alarm, self.output_on = alarm, False
        self.world.settings_changed()

    # --- settings ----------------------------------------------------------------------

    def _require_remote(self) -> None:
        # [uncertain] the code a PSB gives for a setting without SYST:LOCK; -203 is SCPI's.
        if not self.remote:
            raise ScpiError(-203, "Command protected; lock with SYST:LOCK ON")

    def _setpoint(self, arg: str, nominal: float, unit: str, span: float = SETPOINT_SPAN) -> float:
        self._require_remote()
        return self.number(arg, 0.0, nominal * span, default=0.0, units=(unit,))

    @scpi("SYSTem:LOCK[:STATe]")
    def _lock(self, args):
        self.remote = self.boolean(args[0])
        if not self.remote:
            self.output_on = False  # returning to local control switches the DC terminal off

    @scpi("SYSTem:LOCK[:STATe]?")
    def _lock_q(self, args):
        return "ON" if self.remote else "OFF"

    @scpi("SYSTem:LOCK:OWNer?")
    def _lock_owner(self, args):
        return "REMOTE" if self.remote else "NONE"

    @scpi("OUTPut[:STATe]")
    def _output(self, args):
        self._require_remote()
        on = self.boolean(args[0])
        if on and self.alarm:
            raise ScpiError(-200, f"Execution error; {self.alarm} alarm active")
        self.output_on = on

    @scpi("OUTPut[:STATe]?")
    def _output_q(self, args):
        return "ON" if self.output_on else "OFF"

    @scpi("[SOURce:]VOLTage[:LEVel][:IMMediate][:AMPLitude]")
    def _voltage(self, args):
        self.voltage_V = self._setpoint(args[0], self.config.nominal_voltage_V, "V")

    @scpi("[SOURce:]VOLTage[:LEVel][:IMMediate][:AMPLitude]?")
    def _voltage_q(self, args):
        return self._volts(self.voltage_V)

    @scpi("[SOURce:]CURRent[:LEVel][:IMMediate][:AMPLitude]")
    def _current(self, args):
        self.source_current_A = self._setpoint(args[0], self.config.nominal_current_A, "A")

    @scpi("[SOURce:]CURRent[:LEVel][:IMMediate][:AMPLitude]?")
    def _current_q(self, args):
        return self._amps(self.source_current_A)

    @scpi("[SOURce:]POWer[:LEVel][:IMMediate][:AMPLitude]")
    def _power(self, args):
        self.source_power_W = self._setpoint(args[0], self.config.nominal_power_W, "W")

    @scpi("[SOURce:]POWer[:LEVel][:IMMediate][:AMPLitude]?")
    def _power_q(self, args):
        return self._watts(self.source_power_W)

    @scpi("SINK:CURRent[:LEVel][:IMMediate][:AMPLitude]")
    def _sink_current(self, args):
        self.sink_current_A = self._setpoint(args[0], self.config.nominal_current_A, "A")

    @scpi("SINK:CURRent[:LEVel][:IMMediate][:AMPLitude]?")
    def _sink_current_q(self, args):
        return self._amps(self.sink_current_A)

    @scpi("SINK:POWer[:LEVel][:IMMediate][:AMPLitude]")
    def _sink_power(self, args):
        self.sink_power_W = self._setpoint(args[0], self.config.nominal_power_W, "W")

    @scpi("SINK:POWer[:LEVel][:IMMediate][:AMPLitude]?")
    def _sink_power_q(self, args):
        return self._watts(self.sink_power_W)

    @scpi("[SOURce:]VOLTage:PROTection[:LEVel]")
    def _ovp(self, args):
        self.ovp_V = self._setpoint(args[0], self.config.nominal_voltage_V, "V", PROTECTION_SPAN)

    @scpi("[SOURce:]VOLTage:PROTection[:LEVel]?")
    def _ovp_q(self, args):
        return self._volts(self.ovp_V)

    @scpi("[SOURce:]CURRent:PROTection[:LEVel]")
    def _ocp(self, args):
        self.ocp_A = self._setpoint(args[0], self.config.nominal_current_A, "A", PROTECTION_SPAN)

    @scpi("[SOURce:]CURRent:PROTection[:LEVel]?")
    def _ocp_q(self, args):
        return self._amps(self.ocp_A)

    @scpi("[SOURce:]POWer:PROTection[:LEVel]")
    def _opp(self, args):
        self.opp_W = self._setpoint(args[0], self.config.nominal_power_W, "W", PROTECTION_SPAN)

    @scpi("[SOURce:]POWer:PROTection[:LEVel]?")
    def _opp_q(self, args):
        return self._watts(self.opp_W)

    # --- read-backs --------------------------------------------------------------------

    @scpi("SYSTem:NOMinal:VOLTage?")
    def _nominal_voltage(self, args):
        return self._volts(self.config.nominal_voltage_V)

    @scpi("SYSTem:NOMinal:CURRent?")
    def _nominal_current(self, args):
        return self._amps(self.config.nominal_current_A)

    @scpi("SYSTem:NOMinal:POWer?")
    def _nominal_power(self, args):
        return self._watts(self.config.nominal_power_W)

    def _measured(self) -> tuple[float, float]:
        stack = self.world.stack
        c = self.config
        volts = stack.terminal_voltage_V() + c.voltage_noise_V * self._rng.standard_normal()
        amps = stack.current_A + c.current_offset_A + c.current_noise_A * self._rng.standard_normal()
        if not self.output_on:
            amps = c.current_noise_A * self._rng.standard_normal()
        return volts, amps

    @scpi("MEASure[:SCALar]:VOLTage[:DC]?")
    def _meas_voltage(self, args):
        return self._volts(self._measured()[0])

    @scpi("MEASure[:SCALar]:CURRent[:DC]?")
    def _meas_current(self, args):
        return self._amps(self._measured()[1])

    @scpi("MEASure[:SCALar]:POWer[:DC]?")
    def _meas_power(self, args):
        volts, amps = self._measured()
        return self._watts(volts * amps)

    @scpi("MEASure[:SCALar]:ARRay?")
    def _meas_array(self, args):
        volts, amps = self._measured()
        return f"{self._volts(volts)}, {self._amps(amps)}, {self._watts(volts * amps)}"

    # --- reply formatting: resolution follows the nominal rating, as on the display ----

    def _volts(self, value: float) -> str:
        decimals = 2 if self.config.nominal_voltage_V <= 200 else 1
        return f"{value:.{decimals}f}V"

    def _amps(self, value: float) -> str:
        decimals = 3 if self.config.nominal_current_A <= 25 else 2 if self.config.nominal_current_A <= 240 else 1
        return f"{value:.{decimals}f}A"

    def _watts(self, value: float) -> str:
        return f"{value:.1f}W"

    def format_error(self, code: int, message: str) -> str:
        return f'{code},"{message}"'  # EA answers '0,"No error"', no plus sign
