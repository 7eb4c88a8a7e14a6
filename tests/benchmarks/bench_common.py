"""What run.py and summary.py share: the median-and-spread of repeats, and the resident memory
of this process."""

from __future__ import annotations

import resource
import statistics
from pathlib import Path


def summarise(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def resident_MB() -> tuple[float, float]:
    """(resident set now, its peak) of this process in MB. From /proc/self/status on Linux, not
    from getrusage: a process started by fork (or vfork) and exec reports its parent's peak in
    ru_maxrss, so a child started by a big parent would report the parent's peak as its own."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return peak, peak
    kB = {name: int(value.split()[0]) for name, _, value in (line.partition(":") for line in status.splitlines())
          if name in ("VmRSS", "VmHWM")}
    return kB["VmRSS"] / 1024, kB["VmHWM"] / 1024
