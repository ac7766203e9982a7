"""Closed forms for pipeline bubbles and activation memory.

Assumptions: every virtual stage takes the same time for the same kind of
pass, and communication is free. Under them these formulas equal what
:func:`reference.simulator.simulate` measures for the schedules in
:mod:`reference.schedules` (the project's tests check this over a grid of
stages, microbatches, chunks and pass times).

Two ways of stating the bubble are in use:

- bubble *fraction*: idle time over total time, ``(P - 1) / (M + P - 1)`` for
  GPipe (the GPipe paper's figure);
- bubble *overhead*: idle time over ideal compute time, ``(P - 1) / M`` for
  GPipe (the Megatron-LM paper's figure).

Times for zero-bubble schedules follow the simulator: ``backward_time`` is
the input-gradient pass ``B`` and ``weight_time`` the weight-gradient pass
``W``; schedules without ``W`` run both as one full backward.
"""

from __future__ import annotations

from .schedules import SCHEDULES, check_count, interleaved_group_size


def _check_arguments(schedule: str, num_stages: int, num_microbatches: int,
                     num_chunks: int) -> None:
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {schedule!r}")
    check_count("num_stages", num_stages)
    check_count("num_microbatches", num_microbatches)
    if schedule == "interleaved":
        check_count("num_chunks", num_chunks, minimum=2)
        interleaved_group_size(num_stages, num_microbatches)
    elif num_chunks != 1:
        raise ValueError(f"num_chunks must be 1 for schedule {schedule!r}, got {num_chunks!r}")


def bubble_fraction(
    schedule: str,
    num_stages: int,
    num_microbatches: int,
    num_chunks: int = 1,
    *,
    forward_time: float = 1.0,
    backward_time: float = 1.0,
    weight_time: float = 1.0,
) -> float:
    """Return the idle share of total time for ``schedule`` (0 <= result < 1).

    - ``"gpipe"`` and ``"1f1b"``: ``(P - 1) / (M + P - 1)``. 1F1B reorders the
      passes to save memory but leaves the bubble as it is.
    - ``"interleaved"``: ``(P - 1) / (v M + P - 1)`` when ``M >= P``. With
      ``M < P`` each chunk waits for its microbatches to come round the ring,
      giving ``(v (P - M) + M - 1) / (v P + M - 1)``.
    - ``"zero_bubble_h1"``: each rank idles
      ``(P - 1)(F + B) - (min(M, P) - 1) * min(F, B, W)`` out of a busy
      ``M (F + B + W)``. For ``M >= P`` and ``W <= min(F, B)`` this is the
      ``(P - 1)(F + B - W)`` of Qi et al. (2023); a ``W`` longer than ``F`` or
      ``B`` cannot fill the gap it is moved into, hence the ``min``.

    The pass times only matter for ``"zero_bubble_h1"``.
    """
    _check_arguments(schedule, num_stages, num_microbatches, num_chunks)
    P, M, v = num_stages, num_microbatches, num_chunks

    # Hint: the zero-bubble case is idle / (idle + busy) per rank.
    ### BEGIN SOLUTION
    if schedule in ("gpipe", "1f1b"):
        return (P - 1) / (M + P - 1)
    if schedule == "interleaved":
        if M >= P:
            return (P - 1) / (v * M + P - 1)
        return (v * (P - M) + M - 1) / (v * P + M - 1)
    F, B, W = forward_time, backward_time, weight_time
    idle = (P - 1) * (F + B) - (min(M, P) - 1) * min(F, B, W)
    busy = M * (F + B + W)
    return idle / (idle + busy)
    ### END SOLUTION


def bubble_overhead(
    schedule: str,
    num_stages: int,
    num_microbatches: int,
    num_chunks: int = 1,
    *,
    forward_time: float = 1.0,
    backward_time: float = 1.0,
    weight_time: float = 1.0,
) -> float:
    """Return idle time over ideal compute time: ``(P - 1) / M`` for GPipe.

    Same arguments as :func:`bubble_fraction`. An overhead ``o`` and a
    fraction ``f`` convert as ``o = f / (1 - f)``.
    """
    fraction = bubble_fraction(
        schedule, num_stages, num_microbatches, num_chunks,
        forward_time=forward_time, backward_time=backward_time, weight_time=weight_time,
    )
    ### BEGIN SOLUTION
    return fraction / (1.0 - fraction)
    ### END SOLUTION


def peak_activations(
    schedule: str,
    num_stages: int,
    num_microbatches: int,
    num_chunks: int = 1,
    pp_rank: int = 0,
) -> int:
    """Return the most (microbatch, chunk) activations rank ``pp_rank`` stashes at once.

    One unit is one microbatch's activations for one chunk, i.e. ``1 / v`` of
    the rank's layers. A stash lives from the start of its forward pass to
    the end of its last backward pass (``W`` for zero-bubble schedules).

    - GPipe: ``M`` on every rank.
    - 1F1B: ``min(P - r, M)``: ``P`` on the first rank, however large ``M`` is.
    - Interleaved: ``min((v - 1) g + 2 (P - 1 - r) + 1, v M)`` with ``g`` the
      group size (``P`` when ``M`` is a multiple of ``P``).
    - ZB-H1: ``min(P, M)`` on every rank, because later ranks defer ``W``.
    """
    _check_arguments(schedule, num_stages, num_microbatches, num_chunks)
    check_count("pp_rank", pp_rank, minimum=0)
    if pp_rank >= num_stages:
        raise ValueError(f"pp_rank must be < num_stages ({num_stages}), got {pp_rank}")
    P, M, v, r = num_stages, num_microbatches, num_chunks, pp_rank

    ### BEGIN SOLUTION
    if schedule == "gpipe":
        return M
    if schedule == "1f1b":
        return min(P - r, M)
    if schedule == "interleaved":
        group = interleaved_group_size(P, M)
        return min((v - 1) * group + 2 * (P - 1 - r) + 1, v * M)
    return min(P, M)
    ### END SOLUTION
