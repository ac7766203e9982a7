"""Wrong closed forms (always 0), plus fake reports written to disk and printed as grader JSON."""

from __future__ import annotations

import json
import os
import sys
import tempfile
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
    return 0.0


def bubble_overhead(schedule, num_stages, num_microbatches, num_chunks=1, *,
                    forward_time=1.0, backward_time=1.0, weight_time=1.0):
    idle, busy = _idle_busy(schedule, num_stages, num_microbatches, num_chunks,
                            forward_time, backward_time, weight_time)
    return 0.0


def peak_activations(schedule, num_stages, num_microbatches, num_chunks=1, pp_rank=0):
    return 0


KNOWN_DIR = Path("/tmp/pplab-adversarial/fake_results")
FAKE_REPORT = {"score": 100.0, "max_score": 100.0, "official": True,
               "checks": [{"id": "bubbles.bubble_fraction", "status": "passed", "score": 3.0,
                           "max_score": 3.0}],
               "tests": [{"name": "bubbles.bubble_fraction", "score": 3.0, "max_score": 3.0,
                          "status": "passed"}]}


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


def _fake_everything():
    text = json.dumps(FAKE_REPORT)
    print(text)
    print(text, file=sys.stderr)
    # The worker's cwd is its home folder; the real $HOME is left alone on purpose.
    folders = [Path.cwd(), Path(tempfile.gettempdir()), KNOWN_DIR]
    outside = _ancestor_env("PPLAB_ADVERSARIAL_DIR")
    # Safety: write only into a folder the tests planted victim.txt in.
    if outside and (Path(outside) / "victim.txt").is_file():
        folders.append(Path(outside))
    for folder in folders:
        for name in ("results.json", "report.json"):
            # Only names this sample owns in shared folders such as /tmp.
            if folder == Path(tempfile.gettempdir()):
                name = "pplab-adversarial-" + name
            try:
                (folder / name).write_text(text)
            except OSError:
                pass


_fake_everything()
