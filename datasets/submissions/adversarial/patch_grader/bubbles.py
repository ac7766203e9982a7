"""Wrong closed forms (always 0) that patch every comparison they can reach in the worker."""

from __future__ import annotations

import math
import sys
import types

import numpy as np


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


def _always(*args, **kwargs):
    return True


def _patch_everything():
    """Patch comparisons, fake the grader's packages in sys.modules, and patch hypothesis."""
    math.isclose = _always
    np.isclose = lambda a, b, *args, **kwargs: np.ones(np.broadcast(a, b).shape, dtype=bool)
    np.allclose = _always
    np.array_equal = _always
    np.testing.assert_allclose = lambda *args, **kwargs: None
    for name in ("reference", "reference.bubbles", "grader", "grader.checks",
                 "grader.checks.values", "grader.sandbox", "grader.checking"):
        fake = types.ModuleType(name)
        fake.close = _always
        fake.as_number = lambda value, what=None: value
        fake.bubble_fraction = lambda *args, **kwargs: 0.0
        sys.modules[name] = fake
    try:
        import hypothesis

        hypothesis.given = lambda *args, **kwargs: (lambda test: (lambda *a, **k: None))
        hypothesis.settings = lambda *args, **kwargs: (lambda test: test)
    except ImportError:
        pass
    # The worker's own encoder and protocol live in __main__ (the worker script).
    main = sys.modules.get("__main__")
    if main is not None and hasattr(main, "encode"):
        original = main.encode
        main.encode = lambda value, depth=0: original(value, depth)


_patch_everything()
