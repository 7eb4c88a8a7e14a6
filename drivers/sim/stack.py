"""Physics model of a bipolar (series) multi-layer solid-state stack.

Each layer is an equivalent circuit: OCV(SOC) + series resistance R0 + one RC pair, with its own
coulomb count. All layers carry the same current (series stack). A lumped thermal model heats
the stack with the ohmic and polarisation losses, and a pressure model adds the swelling of a
lithium-metal anode on charge to the fixture's preload.

Sign convention: current is positive for charge (Battery Data Format), as everywhere else.

The numbers are illustrative of a sulfide-electrolyte NMC | Li-metal layer, not measured on a
particular cell; they are all parameters so a lab can fit its own.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

GAS_CONSTANT_J_PER_MOL_K = 8.314462618
KELVIN_OFFSET = 273.15

# OCV of one NMC | Li-metal layer against state of charge. 100 % SOC is the 4.24 V point; the
# table runs on into overcharge (steeper) and over-discharge so that abuse shows up as a
# voltage excursion rather than a clipped value.
OCV_SOC = np.array([-0.10, -0.05, 0.00, 0.02, 0.05, 0.10, 0.20, 0.30, 0.40, 0.50,
                    0.60, 0.70, 0.80, 0.90, 0.95, 1.00, 1.05, 1.10, 1.15])
OCV_V = np.array([1.50, 2.40, 3.00, 3.28, 3.43, 3.54, 3.63, 3.70, 3.77, 3.84,
                  3.91, 3.99, 4.07, 4.15, 4.19, 4.24, 4.42, 4.65, 5.00])


class InternalShort(BaseModel):
    """An internal short in one layer (a lithium dendrite through the separator): a resistance that
    drains the layer from the moment its state of charge passes `from_soc`. Soft or hard is only
    the resistance: ohms drain a layer over hours, milliohms collapse it in seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    layer: int = Field(ge=1, description="1-based")
    resistance_ohm: float = Field(gt=0)
    from_soc: float = Field(0.0, ge=0, le=1.05)


class StackParameters(BaseModel):
    """Parameters of the simulated stack; the `simulation.stack` block of a bench file."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    layers: int = Field(23, ge=1, le=500)
    layer_capacity_Ah: float = Field(2.05, gt=0)
    capacity_spread: float = Field(0.008, ge=0, lt=0.5, description="relative std. dev. between layers")
    r0_ohm: float = Field(0.025, gt=0, description="per layer, at the reference temperature")
    r0_spread: float = Field(0.08, ge=0, lt=0.5)
    r1_ohm: float = Field(0.015, gt=0)
    tau1_s: float = Field(40.0, gt=0)
    interconnect_ohm: float = Field(0.002, ge=0, description="terminals and current collectors, whole stack")
    coulombic_efficiency: float = Field(0.998, gt=0.5, le=1.0, description="fraction of charge stored")
    # ageing, per equivalent full cycle (EFC = charge moved either way / 2 / nominal layer capacity)
    capacity_fade_per_efc: float = Field(0.0002, ge=0, le=0.5, description="0.0002: 80 % after 1000 EFC")
    resistance_growth_per_efc: float = Field(0.0005, ge=0, lt=1.0)
    activation_energy_J_per_mol: float = Field(30e3, ge=0, description="Arrhenius factor of R0 and R1")
    reference_temperature_degC: float = 25.0
    initial_soc: float = Field(0.003, ge=-0.05, le=1.05, description="default: where a C/3 discharge to 3.0 V leaves a layer")
    initial_soc_spread: float = Field(0.002, ge=0, lt=0.2)
    layer_capacity_scale: dict[int, float] = Field(
        default_factory=dict, description="layer number (1-based) -> capacity factor, e.g. {7: 0.85} for a weak layer"
    )
    # lumped thermal model
    heat_capacity_J_per_K: float = Field(500.0, gt=0)
    thermal_resistance_K_per_W: float = Field(3.0, gt=0)
    ambient_degC: float = 25.0
    # stack pressure in its fixture
    preload_MPa: float = Field(5.0, ge=0)
    swelling_MPa_per_soc: float = 1.5
    thermal_pressure_MPa_per_K: float = 0.02
    internal_short: InternalShort | None = Field(None, description="a short that forms in one layer, for tests")

    @field_validator("layer_capacity_scale")
    @classmethod
    def _scale_keys_are_layer_numbers(cls, value: dict[int, float]) -> dict[int, float]:
        for layer, factor in value.items():
            if layer < 1:
                raise ValueError(f"layer numbers start at 1, got {layer}")
            if factor <= 0:
                raise ValueError(f"capacity factor of layer {layer} must be > 0, got {factor}")
        return value


class StackModel:
    """State and dynamics of the stack. `advance(current_A, dt_s)` is the only thing that moves it.

    The quantities that follow from the state alone (each layer's OCV, the resistances at the
    present temperature, the Thevenin source) are worked out once each time the state moves
    (`advance` over an interval, `restore`), not on every instrument reply that reads them:
    between two ticks the instruments ask for them several times and the state has not changed.
    So the state is set through those two only, never by assigning its attributes.
    """

    def __init__(self, params: StackParameters, seed: int = 1):
        self.params = params
        n = params.layers
        rng = np.random.default_rng(seed)
        self.capacity_Ah = params.layer_capacity_Ah * (1 + params.capacity_spread * rng.standard_normal(n))
        for layer, factor in params.layer_capacity_scale.items():
            if layer > n:
                raise ValueError(f"layer_capacity_scale names layer {layer}, but the stack has {n} layers")
            self.capacity_Ah[layer - 1] *= factor
        if params.internal_short is not None and params.internal_short.layer > n:
            raise ValueError(f"internal_short names layer {params.internal_short.layer}, but the stack has {n} layers")
        self.r0_ref_ohm = params.r0_ohm * np.clip(1 + params.r0_spread * rng.standard_normal(n), 0.2, None)
        self._fresh_capacity_Ah = self.capacity_Ah.copy()
        self._fresh_r0_ohm = self.r0_ref_ohm.copy()
        self.r1_ref_ohm = np.full(n, params.r1_ohm)
        self.soc = params.initial_soc + params.initial_soc_spread * rng.standard_normal(n)
        self.v_rc = np.zeros(n)
        self.temperature_degC = params.ambient_degC
        self.current_A = 0.0
        # The DUT's own coulomb and energy count: the ground truth that logged data is checked against.
        self.charged_Ah = 0.0
        self.discharged_Ah = 0.0
        self.charged_Wh = 0.0
        self.discharged_Wh = 0.0
        self.internal_short = params.internal_short  # the bench's, or one a fault forms later (form_short)
        self.short_active = False  # the internal short has formed
        # A fixture whose preload creeps (a spring relaxing, a screw backing off): an offset on the
        # pressure that grows at a steady rate (drift_pressure).
        self.pressure_offset_MPa = 0.0
        self.pressure_drift_MPa_per_s = 0.0
        self._state_moved()

    def _state_moved(self) -> None:
        """Work out what follows from the state alone; called whenever the state has moved."""
        arrhenius = self._arrhenius()
        self._layer_r0_ohm = self.r0_ref_ohm * arrhenius
        self._layer_r1_ohm = self.r1_ref_ohm * arrhenius
        self._layer_emf_V = self.layer_ocv_V() + self.v_rc  # each layer's Thevenin source
        self._emf_V = float(self._layer_emf_V.sum())
        self._resistance_ohm = float(self._layer_r0_ohm.sum()) + self.params.interconnect_ohm

    @property
    def layers(self) -> int:
        return self.params.layers

    def _arrhenius(self) -> float:
        t_k = self.temperature_degC + KELVIN_OFFSET
        t_ref = self.params.reference_temperature_degC + KELVIN_OFFSET
        return math.exp(self.params.activation_energy_J_per_mol / GAS_CONSTANT_J_PER_MOL_K * (1 / t_k - 1 / t_ref))

    def layer_ocv_V(self) -> np.ndarray:
        return np.interp(self.soc, OCV_SOC, OCV_V)

    def layer_r0_ohm(self) -> np.ndarray:
        return self._layer_r0_ohm.copy()

    def thevenin(self) -> tuple[float, float]:
        """(source voltage, series resistance) of the whole stack as seen at its terminals."""
        return self._emf_V, self._resistance_ohm

    def layer_voltages_V(self) -> np.ndarray:
        return self._layer_emf_V + self.current_A * self._layer_r0_ohm

    def terminal_voltage_V(self) -> float:
        # The sum of the layer voltages plus the interconnect drop, taken through the Thevenin sums.
        return self._emf_V + self.current_A * self._resistance_ohm

    _STATE = ("capacity_Ah", "r0_ref_ohm", "soc", "v_rc", "temperature_degC", "current_A",
              "charged_Ah", "discharged_Ah", "charged_Wh", "discharged_Wh", "short_active", "internal_short",
              "pressure_offset_MPa", "pressure_drift_MPa_per_s")

    def snapshot(self) -> dict:
        """The stack's state, as JSON-able data (for a checkpoint)."""
        return {name: (value.tolist() if isinstance(value, np.ndarray)
                       else value.model_dump() if isinstance(value, BaseModel) else value)
                for name in self._STATE for value in [getattr(self, name)]}

    def restore(self, state: dict) -> None:
        for name in self._STATE:
            value = state.get(name, getattr(self, name))  # a field newer than the snapshot keeps its value
            if name == "internal_short":
                value = None if value is None else InternalShort.model_validate(value)
            setattr(self, name, np.asarray(value, float) if isinstance(value, list) else value)
        self._state_moved()

    # --- faults that form during a test (drivers/sim/faults.py) ------------------------------

    def form_short(self, layer: int, resistance_ohm: float) -> None:
        """An internal short forms in `layer` (1-based) now, whatever its state of charge."""
        if not 1 <= layer <= self.layers:
            raise ValueError(f"no layer {layer}: the stack has {self.layers}")
        self.internal_short = InternalShort(layer=layer, resistance_ohm=resistance_ohm)
        self.short_active = True

    def drift_pressure(self, MPa_per_s: float) -> None:
        """The fixture's pressure drifts from now on at `MPa_per_s` (on top of swelling and heat)."""
        self.pressure_drift_MPa_per_s = MPa_per_s

    @property
    def equivalent_full_cycles(self) -> float:
        return (self.charged_Ah + self.discharged_Ah) / 2.0 / self.params.layer_capacity_Ah

    def _age(self) -> None:
        efc = self.equivalent_full_cycles
        self.capacity_Ah = self._fresh_capacity_Ah * max(1.0 - self.params.capacity_fade_per_efc * efc, 0.05)
        self.r0_ref_ohm = self._fresh_r0_ohm * (1.0 + self.params.resistance_growth_per_efc * efc)

    def pressure_MPa(self) -> float:
        p = self.params
        mean_soc = float(self.soc.sum()) / p.layers
        return (p.preload_MPa + p.swelling_MPa_per_soc * mean_soc
                + p.thermal_pressure_MPa_per_K * (self.temperature_degC - p.ambient_degC) + self.pressure_offset_MPa)

    def _drain_through_short(self, dt_s: float) -> float:
        """The internal short's discharge of its layer over `dt_s`; returns the heat it makes (W)."""
        short = self.internal_short
        if short is None:
            return 0.0
        k = short.layer - 1
        self.short_active = self.short_active or bool(self.soc[k] >= short.from_soc)
        if not self.short_active:
            return 0.0
        leak_A = self._layer_emf_V[k] / short.resistance_ohm
        self.soc[k] -= leak_A * dt_s / 3600.0 / self.capacity_Ah[k]
        return leak_A**2 * short.resistance_ohm

    def advance(self, current_A: float, dt_s: float) -> None:
        """Carry `current_A` (constant, + = charge) for `dt_s` seconds."""
        self.current_A = current_A
        if dt_s <= 0:
            return
        p = self.params
        emf_V, resistance_ohm = self.thevenin()
        terminal_V = emf_V + current_A * resistance_ohm
        r1 = self._layer_r1_ohm
        # Heat from the ohmic drop and the polarisation of the RC branch.
        heat_W = current_A**2 * resistance_ohm + float(self.v_rc @ (self.v_rc / r1))

        stored_Ah = current_A * dt_s / 3600.0
        if current_A > 0:
            stored_Ah *= p.coulombic_efficiency
            self.charged_Ah += current_A * dt_s / 3600.0
            self.charged_Wh += terminal_V * current_A * dt_s / 3600.0
        else:
            self.discharged_Ah += -current_A * dt_s / 3600.0
            self.discharged_Wh += -terminal_V * current_A * dt_s / 3600.0
        self.soc = self.soc + stored_Ah / self.capacity_Ah
        heat_W += self._drain_through_short(dt_s)
        self.pressure_offset_MPa += self.pressure_drift_MPa_per_s * dt_s
        self._age()

        decay = math.exp(-dt_s / p.tau1_s)  # exact for constant current over the interval
        self.v_rc = self.v_rc * decay + (current_A * (1 - decay)) * r1

        tau_th = p.heat_capacity_J_per_K * p.thermal_resistance_K_per_W
        t_steady = p.ambient_degC + heat_W * p.thermal_resistance_K_per_W
        self.temperature_degC = t_steady + (self.temperature_degC - t_steady) * math.exp(-dt_s / tau_th)
        self._state_moved()
