"""Correct closed forms, but the first peak_activations() call forks 200 sleeping children."""

from __future__ import annotations

import os
import time
from pathlib import Path


def _idle_busy(schedule, P, M, v, F, B, W):
    if schedule in ("gpipe", "1f1b"):
        return (P - 1) * (F + B + W), M * (F + B + W)
    if schedule == "interleaved":
        unit = (F + B + W) / v
        if M >= P:
            return (P - 1) * unit, v * M * unit
        return (v * (P - M) + M - 1) * unit, v * M * unit
    if schedule == "zero_bubble_h1":
        return (P - 1) * (F + B) - (min(M, P) - 1) * min(F, B, W), M * (F + B + W)
    raise ValueError(f"unknown schedule {schedule!r}")


def bubble_fraction(schedule, num_stages, num_microbatches, num_chunks=1, *,
                    forward_time=1.0, backward_time=1.0, weight_time=1.0):
    idle, busy = _idle_busy(schedule, num_stages, num_microbatches, num_chunks,
                            forward_time, backward_time, weight_time)
    return idle / (idle + busy)


def bubble_overhead(schedule, num_stages, num_microbatches, num_chunks=1, *,
                    forward_time=1.0, backward_time=1.0, weight_time=1.0):
    idle, busy = _idle_busy(schedule, num_stages, num_microbatches, num_chunks,
                            forward_time, backward_time, weight_time)
    return idle / busy


def peak_activations(schedule, num_stages, num_microbatches, num_chunks=1, pp_rank=0):
    if not _flooded:
        _flooded.append(True)
        _flood()
    P, M, v, r = num_stages, num_microbatches, num_chunks, pp_rank
    if schedule == "gpipe":
        return M
    if schedule == "1f1b":
        return min(P - r, M)
    if schedule == "zero_bubble_h1":
        return min(P, M)
    group = min(P, M)
    return min((v - 1) * group + 2 * (P - 1 - r) + 1, v * M)


KNOWN_DIR = Path("/tmp/pplab-adversarial/process_flood")
MAX_CHILDREN = 200  # Safety bound even where no process limit applies.
CHILD_LIFETIME = 20.0  # seconds; every child exits by itself after this.
_flooded = []


def _flood():
    """Fork up to MAX_CHILDREN sleepers, recording each pid; let a failed fork raise."""
    log = None
    try:
        log = open(KNOWN_DIR / "pids.txt", "a")
    except OSError:
        pass
    for _ in range(MAX_CHILDREN):
        pid = os.fork()
        if pid == 0:
            time.sleep(CHILD_LIFETIME)
            os._exit(0)
        if log is not None:
            log.write(f"{pid}\n")
            log.flush()
