"""Pipeline schedules: the ordered list of actions each pipeline rank runs.

Conventions used throughout pplab:

- ``num_stages`` (P) ranks, numbered ``pp_rank = 0 .. P-1``; ``num_microbatches``
  (M) microbatches numbered ``0 .. M-1``; ``num_chunks`` (v) model chunks per
  rank for interleaved schedules.
- The model is cut into ``P * v`` virtual stages. Virtual stage
  ``s = chunk * P + pp_rank`` (Megatron-LM's layout), so a microbatch passes
  ranks ``0 .. P-1`` with chunk 0, then ranks ``0 .. P-1`` again with chunk 1,
  and so on.
- ``F`` is a forward pass, ``B`` a backward pass and ``W`` a weight-gradient
  pass. In schedules without ``W`` actions, ``B`` is the full backward pass.
  In zero-bubble schedules ``B`` computes only the input gradient and ``W``
  the weight gradient of the same microbatch and chunk.
- A schedule is a list with one entry per rank; entry ``r`` is the ordered
  list of :class:`Action` that rank ``r`` runs.
"""

from __future__ import annotations

from typing import NamedTuple

FORWARD = "F"
BACKWARD = "B"
WEIGHT = "W"
KINDS = (FORWARD, BACKWARD, WEIGHT)


class Action(NamedTuple):
    """One unit of work on one rank: a pass of ``microbatch`` through ``chunk``."""

    kind: str
    microbatch: int
    chunk: int = 0

    def __str__(self) -> str:
        suffix = f".{self.chunk}" if self.chunk else ""
        return f"{self.kind}{self.microbatch}{suffix}"


Schedule = list[list[Action]]


def check_count(name: str, value: object, minimum: int = 1) -> int:
    """Return ``value`` if it is an integer >= ``minimum``, else raise ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def interleaved_group_size(num_stages: int, num_microbatches: int) -> int:
    """Return how many microbatches one interleaved round covers.

    Microbatches go through the chunks of a rank in groups: chunk 0 for every
    microbatch of the group, then chunk 1 for the same group, and so on. The
    group holds ``num_stages`` microbatches (Megatron-LM), or all of them when
    there are fewer microbatches than stages (as torch.distributed.pipelining
    does). Any other ``num_microbatches`` is rejected with ValueError.
    """
    check_count("num_stages", num_stages)
    check_count("num_microbatches", num_microbatches)
    if num_microbatches < num_stages:
        return num_microbatches
    if num_microbatches % num_stages:
        raise ValueError(
            f"num_microbatches must be a multiple of num_stages ({num_stages}) "
            f"or smaller than it for the interleaved schedule, got {num_microbatches}"
        )
    return num_stages


def gpipe(num_stages: int, num_microbatches: int) -> Schedule:
    """Return the GPipe (fill-drain) schedule.

    Every rank runs the forward pass of all microbatches, then their backward
    passes. Backward passes run in microbatch order 0 .. M-1; any order gives
    the same makespan when stage times are uniform.
    """
    schedule = []
    # Hint: validate the arguments with check_count, then give every rank all
    # forwards followed by all backwards.
    # YOUR CODE HERE
    raise NotImplementedError("replace this line with your implementation")
    return schedule


def one_f_one_b(num_stages: int, num_microbatches: int) -> Schedule:
    """Return the 1F1B (PipeDream-Flush) schedule.

    Rank ``r`` runs ``min(P - r - 1, M)`` warmup forwards, then alternates one
    forward and one backward (steady state), then runs the remaining backwards
    (cooldown). Here the warmup count excludes the first steady-state forward,
    as Megatron-LM counts it; torch.distributed.pipelining counts that forward
    as warmup too, which gives the same order. Rank ``r`` then holds at most
    ``min(P - r, M)`` microbatches' activations at once.
    """
    schedule = []
    # Hint: validate the arguments with check_count; then, for each rank, warmup
    # forwards, steady-state (F, B) pairs and cooldown backwards.
    # YOUR CODE HERE
    raise NotImplementedError("replace this line with your implementation")
    return schedule


def interleaved_1f1b(num_stages: int, num_microbatches: int, num_chunks: int) -> Schedule:
    """Return the interleaved 1F1B schedule with ``num_chunks`` chunks per rank.

    Microbatches are processed in groups of ``g`` (see
    :func:`interleaved_group_size`; ``g = P`` when ``M`` is a multiple of ``P``).
    Counting a rank's passes in order, forward pass ``k`` works on chunk
    ``(k // g) % v`` and microbatch ``(k // (g * v)) * g + k % g``; backward
    passes walk the chunks in reverse. Rank ``r`` starts with
    ``min((v - 1) * g + 2 * (P - 1 - r), v * M)`` warmup forwards, alternates
    forward and backward, then drains the remaining backwards. This is the order
    of Megatron-LM and of torch.distributed.pipelining's
    ``ScheduleInterleaved1F1B``.

    Raises ValueError when ``num_chunks < 2`` (use :func:`one_f_one_b`) or
    when ``M`` is neither a multiple of ``P`` nor smaller than it.
    """
    schedule = []
    # Hint: validate with check_count and interleaved_group_size, map the k-th
    # forward and the k-th backward of a rank to (microbatch, chunk), then reuse
    # the warmup / steady state / cooldown structure of 1F1B.
    # YOUR CODE HERE
    raise NotImplementedError("replace this line with your implementation")
    return schedule


def zero_bubble_h1(num_stages: int, num_microbatches: int) -> Schedule:
    """Return the ZB-H1 zero-bubble schedule (Qi et al., 2023).

    The backward pass is split in two: ``B`` (input gradient, on the critical
    path to the previous rank) and ``W`` (weight gradient, free to move). The
    warmup is the same as 1F1B's: ``min(P - r - 1, M)`` forwards. In steady
    state rank ``r`` runs ``F``, ``B``, and from its ``(r + 1)``-th steady
    pair on, the ``W`` of its oldest pending microbatch; the cooldown runs
    ``B`` then ``W`` the same way, and the last ``W`` passes close the step.
    Deferring ``W`` on the later ranks lets input gradients reach rank 0
    sooner. This is the order torch.distributed.pipelining's
    ``ScheduleInterleavedZeroBubble`` produces for one chunk per rank.

    A microbatch's activations stay stashed until its ``W`` has run, so every
    rank holds up to ``min(P, M)`` of them: the same peak as 1F1B's first rank.
    """
    schedule = []
    # Hint: validate with check_count; then 1F1B with B split into B and W,
    # where rank r lets r weight passes wait.
    # YOUR CODE HERE
    raise NotImplementedError("replace this line with your implementation")
    return schedule


SCHEDULES = {
    "gpipe": gpipe,
    "1f1b": one_f_one_b,
    "interleaved": interleaved_1f1b,
    "zero_bubble_h1": zero_bubble_h1,
}


def build_schedule(
    name: str, num_stages: int, num_microbatches: int, num_chunks: int = 1
) -> Schedule:
    """Build the schedule called ``name`` (a key of :data:`SCHEDULES`)."""
    if name not in SCHEDULES:
        raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {name!r}")
    if name == "interleaved":
        return interleaved_1f1b(num_stages, num_microbatches, num_chunks)
    if num_chunks != 1:
        raise ValueError(f"num_chunks must be 1 for schedule {name!r}, got {num_chunks!r}")
    return SCHEDULES[name](num_stages, num_microbatches)
