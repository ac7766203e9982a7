"""bubble_fraction() returns a lazy proxy that claims to be a float and forwards to a wrong value."""

from __future__ import annotations


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
    return LazyFloat(lambda: 0.0)


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


class LazyFloat:
    """Compute the value only when asked; pretend to be a float to isinstance()."""

    def __init__(self, compute):
        self._compute = compute

    @property
    def __class__(self):
        return float

    def __getattr__(self, name):
        return getattr(self._compute(), name)

    def __float__(self):
        return float(self._compute())

    def __eq__(self, other):
        return True

    def __ne__(self, other):
        return False

    def __repr__(self):
        return repr(self._compute())

    __hash__ = object.__hash__
