"""Turn a submission's schedule into reference actions and explain what is wrong with it.

Messages name the inputs and the first problem in the learner's terms, for
example ``for P=2, M=1: rank 0 runs B0 before F0``.
"""

from __future__ import annotations

from typing import Any

from reference.schedules import BACKWARD, FORWARD, KINDS, WEIGHT, Action, Schedule
from reference.simulator import DeadlockError, Timeline, simulate

from ..checking import CheckFailed
from ..sandbox import Record

# (forward_time, backward_time, weight_time) triples every schedule is timed with.
TIME_CASES = ((1.0, 2.0, 0.0), (1.0, 1.0, 0.0), (2.0, 1.0, 0.0))
ZERO_BUBBLE_TIME_CASES = ((1.0, 1.0, 1.0), (2.0, 1.0, 1.0), (1.0, 1.0, 0.5))


def describe_inputs(**inputs: Any) -> str:
    """Format inputs as ``P=2, M=1`` with the usual short names."""
    short = {"num_stages": "P", "num_microbatches": "M", "num_chunks": "v", "pp_rank": "rank"}
    return ", ".join(f"{short.get(k, k)}={v}" for k, v in inputs.items())


def as_action(value: Any, where: str) -> Action:
    """Convert one returned action (named tuple or plain tuple) to a reference Action."""
    if not isinstance(value, Record):
        shown = tuple(value) if isinstance(value, list) else value
        raise CheckFailed(f"{where} is {shown!r}, not an Action; return Action(kind, microbatch, chunk) "
                          "from schedules.py")
    fields = dict(value)
    if not {"kind", "microbatch", "chunk"} <= set(fields):
        raise CheckFailed(f"{where} is a {value.type_name} without the fields kind, microbatch and chunk")
    parts = [fields["kind"], fields["microbatch"], fields["chunk"]]
    kind, microbatch, chunk = parts
    if kind not in KINDS:
        raise CheckFailed(f"{where} has kind {kind!r}; expected one of 'F', 'B', 'W'")
    for name, number in (("microbatch", microbatch), ("chunk", chunk)):
        if type(number) is not int:
            raise CheckFailed(f"{where} has {name} {number!r}; expected an int")
    return Action(kind, microbatch, chunk)


def as_schedule(value: Any, context: str) -> Schedule:
    """Convert a returned schedule (one list of actions per rank) to reference Actions."""
    if not isinstance(value, list) or not all(isinstance(rank, list) for rank in value):
        raise CheckFailed(f"for {context}: expected a list with one list of actions per rank, "
                          f"got {type(value).__name__}")
    return [
        [as_action(item, f"for {context}: rank {rank} action {index}") for index, item in enumerate(actions)]
        for rank, actions in enumerate(value)
    ]


def check_structure(schedule: Schedule, num_stages: int, num_microbatches: int,
                    num_chunks: int, context: str, weight_passes: bool) -> None:
    """Check that every rank runs each pass it must exactly once, and nothing else.

    ``weight_passes`` says whether the schedule must split the backward into
    ``B`` and ``W`` (zero-bubble) or must not use ``W`` at all.
    """
    if len(schedule) != num_stages:
        raise CheckFailed(f"for {context}: the schedule has {len(schedule)} ranks, expected {num_stages}")
    kinds = (FORWARD, BACKWARD, WEIGHT) if weight_passes else (FORWARD, BACKWARD)
    for rank, actions in enumerate(schedule):
        seen: set[Action] = set()
        for action in actions:
            if action.kind not in kinds:
                raise CheckFailed(f"for {context}: rank {rank} runs {action}, but this schedule has no W passes")
            if not 0 <= action.microbatch < num_microbatches:
                raise CheckFailed(f"for {context}: rank {rank} runs {action}, but microbatches are "
                                  f"numbered 0..{num_microbatches - 1}")
            if not 0 <= action.chunk < num_chunks:
                raise CheckFailed(f"for {context}: rank {rank} runs {action}, but chunks are "
                                  f"numbered 0..{num_chunks - 1}")
            if action in seen:
                raise CheckFailed(f"for {context}: rank {rank} runs {action} twice")
            seen.add(action)
        for kind in kinds:
            for chunk in range(num_chunks):
                for mb in range(num_microbatches):
                    if Action(kind, mb, chunk) not in seen:
                        raise CheckFailed(f"for {context}: rank {rank} never runs {Action(kind, mb, chunk)}")
        position = {action: index for index, action in enumerate(actions)}
        for action in actions:
            before = {BACKWARD: FORWARD, WEIGHT: BACKWARD}.get(action.kind)
            if before and position[action] < position[Action(before, action.microbatch, action.chunk)]:
                first = Action(before, action.microbatch, action.chunk)
                raise CheckFailed(f"for {context}: rank {rank} runs {action} before {first}")


def simulate_or_fail(schedule: Schedule, times: tuple[float, float, float], context: str) -> Timeline:
    """Simulate with the reference simulator; a deadlock becomes a CheckFailed."""
    forward_time, backward_time, weight_time = times
    try:
        return simulate(schedule, forward_time, backward_time, weight_time)
    except DeadlockError as error:
        raise CheckFailed(f"for {context}: {error}") from None


def grid(schedule: Schedule, limit: int = 12) -> str:
    """Render the first ``limit`` actions of each rank as a small rank x step grid."""
    lines = []
    for rank, actions in enumerate(schedule[:8]):
        shown = " ".join(f"{str(a):>5}" for a in actions[:limit])
        more = " ..." if len(actions) > limit else ""
        lines.append(f"  rank {rank}: {shown}{more}")
    if len(schedule) > 8:
        lines.append("  ...")
    return "\n".join(lines)
