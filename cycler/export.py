"""Writing protocols in other formats.

* JSON / YAML: the validated protocol, defaults left out; loading it back gives the same
  protocol (step strings come back as the typed steps they mean, named by their string).
* PyBaMM: a Python module defining `experiment`, the plan as bound to a DUT, so a user can
  simulate the exact test first. Values are flipped to PyBaMM's sign (+ = discharge); counted
  loops are unrolled; `next_cycle` marks split the experiment into PyBaMM cycles; a CC-CV step
  becomes PyBaMM's CC then CV (each with the step's time bound). What PyBaMM cannot express
  is refused with the reason: gotos, loops that run until a condition, and ends on step charge,
  energy, voltage rate, temperature, layer voltage, pressure or a rising |current|.
"""

from __future__ import annotations

import json

import yaml

from stackcycler import __version__

from .errors import InvalidInput
from .plan import CycleMark, LoopEnd, LoopStart, Plan, PlannedEnd, PlannedStep, RunStep
from .protocol import Protocol

MAX_PYBAMM_STEPS = 10_000  # beyond this PyBaMM experiments become unwieldy (aurora-unicycler's limit too)


def dump_protocol(protocol: Protocol, to: str) -> str:
    data = protocol.model_dump(mode="json", exclude_defaults=True)
    if to == "json":
        return json.dumps(data, indent=1) + "\n"
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


class _Refused(Exception):
    pass


def _termination(end: PlannedEnd, step: PlannedStep) -> str:
    """One PyBaMM termination string, in PyBaMM's sign (+ = discharge)."""
    if end.goto != "next":
        raise _Refused(f"step {step.number} ({step.name}): PyBaMM has no goto ('{end.describe()}')")
    if end.quantity == "voltage":
        return f"{'>' if end.direction == 'above' else '<'} {end.value:.6g} V"
    if end.quantity == "current" and end.direction == "below":
        return f"{end.value:.6g} A"  # PyBaMM: |I| falls to the value
    if end.quantity == "signed_current":  # ours I > x is PyBaMM's -I < -x
        return f"{'<' if end.direction == 'above' else '>'} {-end.value:.6g} A"
    raise _Refused(f"step {step.number} ({step.name}): PyBaMM cannot end a step on '{end.describe()}'")


def _arguments(step: PlannedStep, duration_s: float, extra_terminations: tuple[str, ...] = ()) -> str:
    ends = [e for e in step.ends if e.quantity != "step_time"]
    duration = min([duration_s] + [e.value for e in step.ends if e.quantity == "step_time"])
    terms = list(extra_terminations) + [_termination(e, step) for e in ends]
    parts = [f"duration={duration:.6g}"]
    if terms:
        parts.append(f"termination={terms!r}")
    if step.record_time_s:
        parts.append(f"period={step.record_time_s:.6g}")
    parts.append(f"description={step.name!r}")
    return ", ".join(parts)


def _steps(step: PlannedStep) -> list[str]:
    """PyBaMM step expressions for one of our steps."""
    bound = step.time_bound_s
    kind = step.kind
    if kind == "rest":
        return [f"pybamm.step.rest({_arguments(step, bound)})"]
    if kind == "cc":
        return [f"pybamm.step.current({-step.current_A:.6g}, {_arguments(step, bound)})"]
    if kind == "cccv":
        towards = ">" if step.current_A > 0 else "<"
        cc_part = PlannedStep(step.number, f"{step.name} (CC part)", "cc", step.step_type, (), bound, False, 0.0,
                              record_time_s=step.record_time_s)
        return [f"pybamm.step.current({-step.current_A:.6g}, "
                f"{_arguments(cc_part, bound, (f'{towards} {step.voltage_V:.6g} V',))})",
                f"pybamm.step.voltage({step.voltage_V:.6g}, {_arguments(step, bound)})"]
    if kind == "cv":
        if step.current_limit_A is not None:
            raise _Refused(f"step {step.number} ({step.name}): PyBaMM's voltage step has no current limit")
        return [f"pybamm.step.voltage({step.voltage_V:.6g}, {_arguments(step, bound)})"]
    if kind == "cp":
        return [f"pybamm.step.power({-step.power_W:.6g}, {_arguments(step, bound)})"]
    if kind == "cr":
        return [f"pybamm.step.resistance({step.resistance_ohm:.6g}, {_arguments(step, bound)})"]
    waveform = step.waveform
    function = "current" if waveform.quantity == "current" else "power"
    if kind == "pulse":
        if any(e.quantity != "step_time" for e in step.ends):
            raise _Refused(f"step {step.number} ({step.name}): PyBaMM cannot end a whole pulse train on a condition")
        expressions, t = [], 0.0
        boundaries = list(waveform.times_s[1:]) + [waveform.period_s]
        while t < bound - 1e-9:
            for start, stop, value in zip(waveform.times_s, boundaries, waveform.values):
                length = min(stop - start, bound - t)
                if length <= 1e-9:
                    break
                call = "rest(" if value == 0 else f"{function}({-value:.6g}, "
                expressions.append(f"pybamm.step.{call}duration={length:.6g}, description={step.name!r})")
                t += length
        return expressions
    points = list(zip(waveform.times_s, waveform.values))
    if waveform.interpolation == "step":  # hold each value up to the next point
        held = []
        for (t0, v0), (t1, _) in zip(points, points[1:] + [(waveform.period_s, None)]):
            held += [(t0, v0), (max(t1 - 1e-3, t0), v0)]
        points = held
    table = "np.array([" + ", ".join(f"[{t:.6g}, {-v:.6g}]" for t, v in points) + "])"
    return [f"pybamm.step.{function}({table}, {_arguments(step, bound)})"]


def to_pybamm(plan: Plan) -> str:
    cycles: list[list[str]] = [[]]
    try:
        def run(start: int, end: int) -> None:
            pc = start
            while pc < end:
                instruction = plan.program[pc]
                if isinstance(instruction, RunStep):
                    cycles[-1].extend(_steps(instruction.step))
                    pc += 1
                elif isinstance(instruction, LoopStart):
                    loop = instruction.loop
                    if loop.repeat is None:
                        raise _Refused(f"{loop.name} runs until a condition; PyBaMM experiments cannot "
                                       "(unroll it to a fixed count, or use PyBaMM's experiment termination)")
                    for _ in range(loop.repeat):
                        run(loop.start + 1, loop.end)
                    pc = loop.end + 1
                elif isinstance(instruction, CycleMark):
                    cycles.append([])
                    pc += 1
                elif isinstance(instruction, LoopEnd):
                    pc += 1
                if sum(len(c) for c in cycles) > MAX_PYBAMM_STEPS:
                    raise _Refused(f"unrolled, the protocol has more than {MAX_PYBAMM_STEPS} PyBaMM steps")

        run(0, len(plan.program))
    except _Refused as refusal:
        raise InvalidInput(f"{plan.protocol_path}: cannot export to PyBaMM: {refusal}") from None
    body = ",\n".join("        (\n" + "".join(f"            {s},\n" for s in cycle) + "        )"
                      for cycle in cycles if cycle)
    return f'''"""PyBaMM experiment exported by stackcycler {__version__} from {plan.protocol.name}
({plan.protocol_path}), bound to DUT {plan.dut.id}.

Sign: PyBaMM counts current and power positive for DISCHARGE; stackcycler counts them positive
for charge. The values below are already flipped. Loops are unrolled; cycles follow the
protocol's next_cycle marks. Durations are the steps' time bounds, in seconds.
"""

import numpy as np
import pybamm

experiment = pybamm.Experiment(
    [
{body},
    ],
    period="{plan.record_time_s:g} seconds",
)
'''
