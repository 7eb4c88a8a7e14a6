"""A plan for people (text) and for scripts (JSON with a stable schema, see docs/plan-json.md)."""

from __future__ import annotations

from typing import Any

from .plan import (CURRENT_END_BLANKING_S, VOLTAGE_RATE_WINDOW_S, CycleMark, LoopEnd, LoopStart, Plan, PlannedEnd,
                   PlannedStep, RunStep, format_duration)

SCHEMA = "stackcycler.plan/1"
_SETPOINT_FIELDS = ("current_A", "voltage_V", "current_limit_A", "power_W", "resistance_ohm")


def _end_dict(end: PlannedEnd) -> dict[str, Any]:
    unit = {"step_time": "s", "voltage": "V", "current": "A", "signed_current": "A", "step_charge": "Ah",
            "step_energy": "Wh", "voltage_rate": "V/s", "temperature": "degC", "layer_voltage": "V",
            "pressure": "MPa"}[end.quantity]
    return {"quantity": end.quantity, "direction": end.direction, "value": end.value, "unit": unit,
            "goto": end.goto, "target_index": end.target, "origin": end.origin, "text": end.describe()}


def _step_dict(step: PlannedStep) -> dict[str, Any]:
    setpoint: dict[str, Any] = {"mode": step.kind, "text": step.setpoint()}
    setpoint.update({name: getattr(step, name) for name in _SETPOINT_FIELDS if getattr(step, name) is not None})
    if step.waveform is not None:
        w = step.waveform
        setpoint["waveform"] = {"quantity": w.quantity, "unit": "A" if w.quantity == "current" else "W",
                                "times_s": list(w.times_s), "values": list(w.values),
                                "interpolation": w.interpolation, "period_s": w.period_s}
    return {"step": step.number, "name": step.name, "type": step.step_type, "tag": step.tag, "source": step.source,
            "setpoint": setpoint, "ends": [_end_dict(e) for e in step.ends], "time_bound_s": step.time_bound_s,
            "time_bound_is_default": step.time_bound_is_default, "expected_s": step.expected_s,
            "record_time_s": step.record_time_s}


def plan_to_dict(plan: Plan, bench_name: str, channel_name: str,
                 expected_s: float | None = None) -> dict[str, Any]:
    program = []
    depth = 0
    for index, instruction in enumerate(plan.program):
        if isinstance(instruction, LoopEnd):
            depth -= 1
        entry: dict[str, Any] = {"index": index, "depth": depth, "runs_at_most": plan.multiplicity.get(index, 1)}
        if isinstance(instruction, RunStep):
            entry.update(kind="step", **_step_dict(instruction.step))
        elif isinstance(instruction, LoopStart):
            loop = instruction.loop
            entry.update(kind="loop_start", loop=loop.number, name=loop.name, tag=loop.tag, repeat=loop.repeat,
                         max_repeats=loop.max_repeats, end_index=loop.end,
                         until=[{"condition": k, "value": v, "of_step": tag} for k, v, tag in loop.until])
            depth += 1
        elif isinstance(instruction, LoopEnd):
            entry.update(kind="loop_end", loop=instruction.loop.number, start_index=instruction.loop.start)
        elif isinstance(instruction, CycleMark):
            entry.update(kind="next_cycle", name=instruction.name, tag=instruction.tag)
        program.append(entry)
    dut = plan.dut
    return {
        "schema": SCHEMA,
        "protocol": {"name": plan.protocol.name, "file": str(plan.protocol_path),
                     "description": plan.protocol.description},
        "bench": {"name": bench_name, "channel": channel_name},
        "dut": {"id": dut.id, "layers": dut.layers, "nominal_capacity_Ah": dut.nominal_capacity_Ah,
                "charge_voltage_V": dut.charge_voltage_V, "discharge_voltage_V": dut.discharge_voltage_V},
        "parameters": plan.parameters,
        "requires": [name for name, needed in plan.protocol.requires.model_dump().items() if needed],
        "program": program,
        "safety": {**plan.envelope.armed(), "debounce_s": plan.envelope.debounce_s},
        "suspend": plan.protocol.suspend.model_dump() if plan.protocol.suspend else None,
        "short_detection": plan.short_detection(),
        "record": {"time_s": plan.record_time_s, "voltage_V": plan.record_voltage_V,
                   "current_A": plan.record_current_A},
        "duration": {"expected_s": plan.expected_duration_s if expected_s is None else expected_s,
                     "expected_from": "estimate" if expected_s is None else "simulation",
                     "worst_case_s": plan.worst_case_duration_s},
        "rules": {"current_end_blanking_s": CURRENT_END_BLANKING_S, "voltage_rate_window_s": VOLTAGE_RATE_WINDOW_S,
                  "end_precedence": "listed non-time ends, then step-time ends, then the time bound",
                  "sign": "current and power positive for charge"},
    }


def plan_lines(plan: Plan, bench_name: str, channel_name: str, expected_s: float | None = None) -> list[str]:
    dut = plan.dut
    lines = [f"{plan.protocol.name} ({plan.protocol_path}) on {bench_name}/{channel_name}, DUT {dut.id}: "
             f"{dut.layers} layers, {dut.nominal_capacity_Ah if dut.nominal_capacity_Ah else '?'} Ah nominal"]
    if plan.protocol.description:
        lines.append(plan.protocol.description.strip())
    if plan.parameters:
        lines.append("parameters: " + ", ".join(f"{k} = {v:g}" for k, v in plan.parameters.items()))
    needed = [name.replace("_", " ") for name, on in plan.protocol.requires.model_dump().items() if on]
    lines.append("requires: " + (", ".join(needed) if needed else "nothing beyond a way to charge and discharge") + " (present on this channel)")
    depth = 0
    for index, instruction in enumerate(plan.program):
        indent = "  " * depth
        if isinstance(instruction, RunStep):
            step = instruction.step
            ends = "; ".join(e.describe() for e in step.ends[:-1]) or "—"
            bound = format_duration(step.time_bound_s) + (" (default)" if step.time_bound_is_default else "")
            tag = f" [{step.tag}]" if step.tag else ""
            lines.append(f"{indent}{step.number:>3}. {step.name}{tag}: {step.setpoint()}; ends when {ends}; "
                         f"{step.ends[-1].origin} {bound}; expected ≈ {format_duration(step.expected_s)}")
        elif isinstance(instruction, LoopStart):
            loop = instruction.loop
            what = (f"{loop.repeat} times" if loop.repeat is not None else
                    "until " + " or ".join(f"{'retention' if k == 'retention' else 'discharge'} < {v:g}"
                                           f"{' Ah' if k == 'capacity' else ''}"
                                           f"{f' (of step {tag})' if tag else ''}" for k, v, tag in loop.until)
                    + f", at most {loop.max_repeats} times")
            lines.append(f"{indent}  {loop.name}: repeat {what}")
            depth += 1
        elif isinstance(instruction, LoopEnd):
            depth -= 1
            lines.append(f"{'  ' * depth}  end of {instruction.loop.name}")
        else:
            lines.append(f"{indent}  — {instruction.name} (Cycle Count + 1)")
    expected = plan.expected_duration_s if expected_s is None else expected_s
    source = "from a simulation of the bench" if expected_s is not None else "estimated"
    lines.append(f"expected duration ≈ {format_duration(expected)} ({source}); "
                 f"at most {format_duration(plan.worst_case_duration_s)} (every time bound reached, every loop at "
                 "its maximum)")
    armed = plan.envelope.armed()
    lines.append("safety limits (always armed, trip to outputs off): "
                 + (", ".join(f"{k} = {v:g}" for k, v in armed.items()) or "none")
                 + f"; debounce {plan.envelope.debounce_s:g} s")
    shorts = plan.short_detection()
    lines.append("internal-short detection (trips like a safety limit): "
                 + (", ".join(f"{k} = {v:g}" for k, v in shorts.items()) or "off (no layer voltage inputs)"))
    suspend = plan.protocol.suspend
    if suspend is not None:
        bands = ", ".join(f"{name} {band.min if band.min is not None else '-inf'} to "
                          f"{band.max if band.max is not None else 'inf'}" for name, band in suspend.watched().items())
        lines.append(f"suspend (output off, step clock held) while outside: {bands}; continue "
                     + (f"after {suspend.clear_for_s:g} s back in band" if suspend.resume == "automatic"
                        else "when the operator says so (`cycler continue`)")
                     + (f"; end the run after {suspend.max_suspended_s:g} s suspended" if suspend.max_suspended_s
                        else ""))
    record = f"record every {plan.record_time_s:g} s"
    if plan.record_voltage_V is not None:
        record += f" or ΔV ≥ {plan.record_voltage_V:g} V"
    if plan.record_current_A is not None:
        record += f" or ΔI ≥ {plan.record_current_A:g} A"
    lines.append(record + ", and at every step start and end")
    return lines
