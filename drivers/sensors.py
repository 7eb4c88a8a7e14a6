"""Passive sensors read through a meter channel: the conversions between what they sense and
what the meter reads. Used by the channel (volts -> pressure) and by the simulator (pressure -> volts)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class LoadCell(BaseModel):
    """A strain-gauge load cell on a bridge excitation, read as a DC voltage.

    Full-scale output = sensitivity (mV/V) x excitation (V) at the rated force; linear between.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    rated_force_kN: float = Field(gt=0)
    sensitivity_mV_per_V: float = Field(gt=0)
    excitation_V: float = Field(gt=0)
    zero_offset_V: float = 0.0

    @property
    def full_scale_V(self) -> float:
        return self.sensitivity_mV_per_V * 1e-3 * self.excitation_V

    def force_kN(self, output_V: float) -> float:
        return (output_V - self.zero_offset_V) / self.full_scale_V * self.rated_force_kN

    def output_V(self, force_kN: float) -> float:
        return force_kN / self.rated_force_kN * self.full_scale_V + self.zero_offset_V


class PressureFixture(BaseModel):
    """A stack in a pressure fixture: the load cell carries the force on the active area."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    active_area_cm2: float = Field(gt=0)
    load_cell: LoadCell

    def pressure_MPa(self, output_V: float) -> float:
        return self.load_cell.force_kN(output_V) * 1e3 / (self.active_area_cm2 * 1e-4) / 1e6

    def output_V(self, pressure_MPa: float) -> float:
        return self.load_cell.output_V(pressure_MPa * 1e6 * self.active_area_cm2 * 1e-4 / 1e3)
