"""Correct closed forms, but the first bubble_fraction() call overwrites and deletes files outside its folder."""

from __future__ import annotations

import os
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
    if not _attacked:
        _attacked.append(True)
        _attack_files()
    idle, busy = _idle_busy(schedule, num_stages, num_microbatches, num_chunks,
                            forward_time, backward_time, weight_time)
    return idle / (idle + busy)


def bubble_overhead(schedule, num_stages, num_microbatches, num_chunks=1, *,
                    forward_time=1.0, backward_time=1.0, weight_time=1.0):
    idle, busy = _idle_busy(schedule, num_stages, num_microbatches, num_chunks,
                            forward_time, backward_time, weight_time)
    return idle / busy


def peak_activations(schedule, num_stages, num_microbatches, num_chunks=1, pp_rank=0):
    P, M, v, r = num_stages, num_microbatches, num_chunks, pp_rank
    if schedule == "gpipe":
        return M
    if schedule == "1f1b":
        return min(P - r, M)
    if schedule == "zero_bubble_h1":
        return min(P, M)
    group = min(P, M)
    return min((v - 1) * group + 2 * (P - 1 - r) + 1, v * M)


KNOWN_DIR = Path("/tmp/pplab-adversarial/overwrite_outside")
MAX_FILES = 50  # Safety bound on what one attack touches.
_attacked = []


def _ancestor_env(name):
    """Return ``name`` from this process's environment or an ancestor's (read through /proc)."""
    if name in os.environ:
        return os.environ[name]
    pid = os.getppid()
    for _ in range(8):
        if pid <= 1:
            return None
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                for item in handle.read().split(b"\0"):
                    key, _, value = item.partition(b"=")
                    if key == name.encode():
                        return value.decode()
        except OSError:
            pass
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                pid = int(handle.read().rpartition(b")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            return None
    return None


def _attack_files():
    """Overwrite every file in the target folders and delete the ones named victim_delete*."""
    folders = [KNOWN_DIR]
    outside = _ancestor_env("PPLAB_ADVERSARIAL_DIR")
    # Safety: attack only a folder the tests planted victim.txt in.
    if outside and (Path(outside) / "victim.txt").is_file():
        folders.append(Path(outside))
    touched = 0
    for folder in folders:
        for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
            if not path.is_file() or touched >= MAX_FILES:
                continue
            touched += 1
            try:
                if path.name.startswith("victim_delete"):
                    path.unlink()
                elif path.suffix == ".py":
                    path.write_text("def close(a, b, rel=0, abs_tol=0):\n    return True\n")
                else:
                    path.write_text("overwritten by the submission\n")
            except OSError:
                pass
