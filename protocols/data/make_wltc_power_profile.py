"""Make the WLTC class 3b power profile from its speed trace, with a stated vehicle model.

    python protocols/data/make_wltc_power_profile.py

Vehicle model: road-load power at the wheels,
    P(t) = (m dv/dt + C_rr m g + 1/2 rho C_d A v^2) v
with m = 1500 kg, C_rr = 0.01, g = 9.8 m/s^2, rho = 1.225 kg/m^3, C_d = 0.34, A = 1.75 m^2, no
wind and no grade: the parameters BEEP uses (beep/utils/waveform.py), citing J. Electrochem.
Soc. 161(14) A2099 (2014). dv/dt by central differences of the 1 Hz trace. No drivetrain
efficiency and no cap on regenerative braking.

Output: time and power as a fraction of the peak traction power, signed as everywhere in
stackcycler: negative when the battery drives the car (discharge), positive when braking
recovers energy (charge). The drive-cycle-wltc protocol scales it to a peak power for the DUT.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
MASS_KG, ROLLING, GRAVITY, AIR_DENSITY, DRAG, FRONTAL_AREA_M2 = 1500.0, 0.01, 9.8, 1.225, 0.34, 1.75


def traction_power_W(speed_km_per_h: np.ndarray) -> np.ndarray:
    v = speed_km_per_h / 3.6
    acceleration = np.gradient(v, 1.0)
    force = MASS_KG * acceleration + ROLLING * MASS_KG * GRAVITY * (v > 0) + 0.5 * AIR_DENSITY * DRAG * FRONTAL_AREA_M2 * v**2
    return force * v


def main() -> None:
    rows = [r for r in csv.reader((HERE / "wltc-class3b-speed.csv").open()) if r and not r[0].startswith("#")]
    t = np.array([float(r[0]) for r in rows[1:]])
    speed = np.array([float(r[1]) for r in rows[1:]])
    power = traction_power_W(speed)
    fraction = -power / np.max(power)  # battery view: traction discharges, braking charges
    with (HERE / "wltc-class3b-power.csv").open("w") as out:
        out.write("# WLTC class 3b battery power as a fraction of peak traction power (+ = charge);\n")
        out.write("# made by make_wltc_power_profile.py from wltc-class3b-speed.csv (see its docstring).\n")
        out.write("time_s,fraction_of_peak\n")
        for time_s, value in zip(t, fraction):
            out.write(f"{time_s:g},{value + 0.0:.5f}\n")  # + 0.0: no "-0.00000"


if __name__ == "__main__":
    main()
