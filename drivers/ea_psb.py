"""EA Elektro-Automatik PSB 10000 series bidirectional (source-sink) DC supply, SCPI.

Why this one for a ~100 V stack: a PSB sources and sinks through one terminal pair with one
voltage set value and separate source and sink current limits, so CC charge, CC discharge,
CV and CC-CV are all native and there is no break-before-make to manage between two boxes;
it regenerates the discharge energy; models reach 200 V and above at 1.5 kW and up.

Facts used (EA "Programming ModBus & SCPI" guide REV 24, as exercised by drivers tested on a
real PSB 10080-60 and sigrok's EA profile; see shared/reference/instruments.md §7a):
* settings are refused until remote control is taken with `SYST:LOCK ON`; `SYST:LOCK:OWN?`
  answers `REMOTE` once it is ours;
* replies carry a unit suffix (`97.75V`), stripped before parsing;
* `MEAS:ARR?` answers voltage, current and power in one reply; current is positive while
  sourcing and negative while sinking (guide §5.4.4.2), which is our + = charge;
* `OUTP?` answers `ON`/`OFF`; OVP/OCP are always armed; there is no `*OPC?`;
* `SYST:ERR?` answers `0,"No error"` when the queue is empty.

[uncertain] Watchdog (roles.HostWatchdog): none is armed; arm_watchdog() keeps the role's default
(None, "this model has no watchdog"), so a host that dies leaves the output as it was. EA's
"Programming ModBus & SCPI" guide was not among the stored sources, and none of those searched
(EA PSB 9000 / 10000 and PS 9000 manuals, the SCPI drivers nominal-io/instro `ea_psb10000.py`
and advect-technologies/ea-psu-control, sigrok's profile) names an interface watchdog or a
communication timeout command; `SYST:COMM:WATCHDOG` and the like appear only for other makers
(Delta Elektronika `SYSTem:COMmunicate:WATchdog`, TDK-Lambda `SYSTem:COMMunicate:WATCHdog`).
To add once the guide confirms the spelling, the range and what a trip latches.
"""

from __future__ import annotations

from stackcycler.errors import InstrumentError

from .roles import BidirectionalSupply, SupplyRatings
from .scpi import ScpiDriver, Setting, parse_number, parse_on_off

# Set values may go to 102 % and protection thresholds to 110 % of the nominal rating
# (EA datasheets; [uncertain] for every PSB 10000 model).
SETPOINT_SPAN = 1.02
PROTECTION_SPAN = 1.10


def _within(span: float, rating: str):
    return lambda driver: (0.0, getattr(driver.ratings, rating) * span)


class EaPsb10000(ScpiDriver, BidirectionalSupply):
    FRIENDLY_NAME = "EA PSB 10000"
    has_power_limits = True

    voltage_V = Setting("VOLT {}", "VOLT?", "voltage set value", limits=_within(SETPOINT_SPAN, "voltage_V"))
    source_current_A = Setting("CURR {}", "CURR?", "source (charge) current limit",
                               limits=_within(SETPOINT_SPAN, "current_A"))
    sink_current_A = Setting("SINK:CURR {}", "SINK:CURR?", "sink (discharge) current limit",
                             limits=_within(SETPOINT_SPAN, "current_A"))
    source_power_W = Setting("POW {}", "POW?", "source (charge) power limit", limits=_within(SETPOINT_SPAN, "power_W"))
    sink_power_W = Setting("SINK:POW {}", "SINK:POW?", "sink (discharge) power limit",
                           limits=_within(SETPOINT_SPAN, "power_W"))
    over_voltage_V = Setting("VOLT:PROT {}", "VOLT:PROT?", "over-voltage protection threshold",
                             limits=_within(PROTECTION_SPAN, "voltage_V"))
    over_current_A = Setting("CURR:PROT {}", "CURR:PROT?", "over-current protection threshold",
                             limits=_within(PROTECTION_SPAN, "current_A"))
    output = Setting("OUTP {}", "OUTP?", "DC terminal on/off", parse=parse_on_off,
                     to_text=lambda on: "ON" if on else "OFF")

    def __init__(self, transport):
        super().__init__(transport)
        self._ratings: SupplyRatings | None = None
        self._sent: dict[str, float] = {}  # last set values sent, so unchanged ones are not resent

    @property
    def ratings(self) -> SupplyRatings:
        if self._ratings is None:
            raise InstrumentError(f"{self.FRIENDLY_NAME} at {self.resource}: not connected")
        return self._ratings

    def connect(self) -> str:
        identity = self.identify()
        if "ELEKTRO-AUTOMATIK" not in identity.upper() or "PSB" not in identity.upper():
            raise InstrumentError(f"{self.resource} is not an EA PSB: *IDN? answered {identity!r}")
        self.write_checked("SYST:LOCK ON")
        owner = self.query("SYST:LOCK:OWN?").upper()
        if owner != "REMOTE":
            raise InstrumentError(f"{self.resource}: remote control not granted (SYST:LOCK:OWN? = {owner!r}); "
                                  "is another program or the front panel holding it?")
        self.output_found_on = self.output  # after a host crash it may still be on: worth knowing
        self.output = False
        voltage = parse_number(self.query("SYST:NOM:VOLT?"))
        current = parse_number(self.query("SYST:NOM:CURR?"))
        self._ratings = SupplyRatings(voltage_V=voltage, current_A=current,
                                      power_W=parse_number(self.query("SYST:NOM:POW?")),
                                      max_over_voltage_V=voltage * PROTECTION_SPAN,
                                      max_over_current_A=current * PROTECTION_SPAN)
        self.check_errors()
        return identity

    def set_protection(self, over_voltage_V: float, over_current_A: float) -> None:
        self.set_many({"over_voltage_V": over_voltage_V, "over_current_A": over_current_A})

    def regulate(self, voltage_V: float, source_limit_A: float, sink_limit_A: float,
                 source_power_W: float | None = None, sink_power_W: float | None = None) -> None:
        wanted = {"voltage_V": voltage_V, "source_current_A": source_limit_A, "sink_current_A": sink_limit_A,
                  "source_power_W": self.ratings.power_W if source_power_W is None else source_power_W,
                  "sink_power_W": self.ratings.power_W if sink_power_W is None else sink_power_W}
        changed = {name: value for name, value in wanted.items() if self._sent.get(name) != value}
        if not changed:
            return
        self.set_many(changed)
        self._sent.update(changed)

    def set_output(self, on: bool) -> None:
        self.output = on

    def output_is_on(self) -> bool:
        return self.output

    def measure(self) -> tuple[float, float]:
        reply = self.query("MEAS:ARR?")
        fields = reply.split(",")
        if len(fields) != 3:
            raise InstrumentError(f"{self.resource}: MEAS:ARR? answered {reply!r}, expected 'V, A, W'")
        return parse_number(fields[0]), parse_number(fields[1])

    def safe_state(self) -> None:
        # Sent unchecked first, so that a full error queue cannot delay the switch-off.
        self._sent.clear()
        self.write("OUTP OFF")
        if self.output:
            raise InstrumentError(f"{self.resource}: output still on after OUTP OFF")

    def close(self) -> None:
        try:
            self.write("SYST:LOCK OFF")
        finally:
            super().close()
