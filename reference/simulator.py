"""Event-driven simulation of a pipeline schedule.

Every rank runs its action list in order. An action starts as soon as its
rank is free and every action it depends on has finished (plus ``comm_time``
when the dependency ran on another rank):

- ``F`` of a microbatch on virtual stage ``s`` needs that microbatch's ``F``
  on virtual stage ``s - 1``;
- ``B`` on virtual stage ``s`` needs ``F`` on ``s`` and ``B`` on ``s + 1``
  (the last virtual stage computes the loss right after its forward);
- ``W`` needs ``B`` of the same microbatch on the same virtual stage.

Times are in arbitrary but consistent units (seconds, or "one forward").
A ``B`` without a matching ``W`` in the schedule is a full backward and takes
``backward_time + weight_time``. A ``B`` with a matching ``W`` takes
``backward_time``, and the ``W`` takes ``weight_time``. The same three times
therefore compare zero-bubble schedules fairly with the others.

A microbatch's activations on a virtual stage count as stashed from the start
of its ``F`` until the end of its last backward action there (``W`` where the
schedule has one, else ``B``).
"""

from __future__ import annotations

from typing import NamedTuple

from .schedules import BACKWARD, FORWARD, KINDS, WEIGHT, Action, Schedule


class Interval(NamedTuple):
    """When one action ran: ``start`` and ``end`` in the simulation's time unit."""

    action: Action
    start: float
    end: float


class Timeline(NamedTuple):
    """Result of :func:`simulate`.

    ``intervals[r]`` lists rank ``r``'s actions in the order they ran.
    ``makespan`` is the end of the last action (the run starts at 0).
    ``bubble_fraction`` is idle time over total time: ``1 - busy / (P * makespan)``.
    ``peak_activations[r]`` is the largest number of (microbatch, chunk)
    activations rank ``r`` held at any instant.
    """

    intervals: list[list[Interval]]
    makespan: float
    bubble_fraction: float
    peak_activations: list[int]


class InvalidScheduleError(ValueError):
    """A schedule is malformed: a pass is missing, repeated or out of range."""


class DeadlockError(RuntimeError):
    """A schedule can never finish: every unfinished rank waits on another."""

    def __init__(self, message: str, stuck: dict[int, Action]):
        super().__init__(message)
        self.stuck = stuck


def validate_schedule(schedule: Schedule) -> tuple[int, int, int]:
    """Check that ``schedule`` is well formed and return ``(P, M, v)``.

    Every rank must run ``F`` and ``B`` exactly once for each microbatch and
    each of its chunks, and may run at most one ``W`` per (microbatch, chunk).
    The order is not checked here: a bad order shows up as a deadlock in
    :func:`simulate`. Raises InvalidScheduleError otherwise.
    """
    num_stages = len(schedule)
    if num_stages == 0:
        raise InvalidScheduleError("schedule has no ranks")
    actions = [a for rank_actions in schedule for a in rank_actions]
    if not actions:
        raise InvalidScheduleError("schedule has no actions")
    for rank, rank_actions in enumerate(schedule):
        for action in rank_actions:
            if action.kind not in KINDS or action.microbatch < 0 or action.chunk < 0:
                raise InvalidScheduleError(f"rank {rank} has an invalid action {action!r}")
    num_microbatches = 1 + max(a.microbatch for a in actions)
    num_chunks = 1 + max(a.chunk for a in actions)

    for rank, rank_actions in enumerate(schedule):
        seen: set[Action] = set()
        for action in rank_actions:
            if action in seen:
                raise InvalidScheduleError(f"rank {rank} runs {action} twice")
            seen.add(action)
        for kind in (FORWARD, BACKWARD):
            for chunk in range(num_chunks):
                for mb in range(num_microbatches):
                    if Action(kind, mb, chunk) not in seen:
                        raise InvalidScheduleError(
                            f"rank {rank} never runs {Action(kind, mb, chunk)}"
                        )
    return num_stages, num_microbatches, num_chunks


def simulate(
    schedule: Schedule,
    forward_time: float,
    backward_time: float,
    weight_time: float = 0.0,
    comm_time: float = 0.0,
) -> Timeline:
    """Simulate ``schedule`` and return its :class:`Timeline`.

    Runs in time linear in the number of actions. Raises
    InvalidScheduleError for a malformed schedule and DeadlockError, naming
    each stuck rank and the action it waits on, when no rank can move.
    """
    for name, value in (("forward_time", forward_time), ("backward_time", backward_time),
                        ("weight_time", weight_time), ("comm_time", comm_time)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    num_stages, _, num_chunks = validate_schedule(schedule)
    num_virtual = num_stages * num_chunks

    ### BEGIN SOLUTION
    has_weight_pass = {
        (rank, a.microbatch, a.chunk)
        for rank, rank_actions in enumerate(schedule)
        for a in rank_actions
        if a.kind == WEIGHT
    }

    def duration(rank: int, action: Action) -> float:
        if action.kind == FORWARD:
            return forward_time
        if action.kind == WEIGHT:
            return weight_time
        if (rank, action.microbatch, action.chunk) in has_weight_pass:
            return backward_time
        return backward_time + weight_time

    def dependencies(rank: int, action: Action) -> list[tuple[int, Action]]:
        stage = action.chunk * num_stages + rank
        if action.kind == FORWARD:
            if stage == 0:
                return []
            prev = stage - 1
            return [(prev % num_stages, Action(FORWARD, action.microbatch, prev // num_stages))]
        if action.kind == BACKWARD:
            deps = [(rank, Action(FORWARD, action.microbatch, action.chunk))]
            if stage < num_virtual - 1:
                nxt = stage + 1
                deps.append((nxt % num_stages, Action(BACKWARD, action.microbatch, nxt // num_stages)))
            return deps
        return [(rank, Action(BACKWARD, action.microbatch, action.chunk))]

    end_time: dict[tuple[int, Action], float] = {}
    waiting: dict[tuple[int, Action], list[int]] = {}
    position = [0] * num_stages
    rank_free = [0.0] * num_stages
    intervals: list[list[Interval]] = [[] for _ in range(num_stages)]
    ready = list(range(num_stages))

    # Advance each ready rank as far as its dependencies allow; a finished
    # action wakes the ranks parked on it, so each action is handled once.
    while ready:
        rank = ready.pop()
        while position[rank] < len(schedule[rank]):
            action = schedule[rank][position[rank]]
            start = rank_free[rank]
            blocked_on = None
            for dep in dependencies(rank, action):
                if dep not in end_time:
                    blocked_on = dep
                    break
                arrival = end_time[dep] + (comm_time if dep[0] != rank else 0.0)
                start = max(start, arrival)
            if blocked_on is not None:
                waiting.setdefault(blocked_on, []).append(rank)
                break
            end = start + duration(rank, action)
            end_time[(rank, action)] = end
            rank_free[rank] = end
            intervals[rank].append(Interval(action, start, end))
            position[rank] += 1
            ready.extend(waiting.pop((rank, action), ()))

    stuck = {
        rank: schedule[rank][position[rank]]
        for rank in range(num_stages)
        if position[rank] < len(schedule[rank])
    }
    if stuck:
        lines = []
        for rank, action in stuck.items():
            missing = [f"{a} on rank {r}" for r, a in dependencies(rank, action)
                       if (r, a) not in end_time]
            lines.append(f"rank {rank} is stuck at {action}, waiting for {', '.join(missing)}")
        raise DeadlockError("schedule deadlocks: " + "; ".join(lines), stuck)

    makespan = max((iv[-1].end for iv in intervals if iv), default=0.0)
    busy = sum(iv.end - iv.start for rank_iv in intervals for iv in rank_iv)
    bubble = 1.0 - busy / (num_stages * makespan) if makespan > 0 else 0.0

    # Stash accounting: +1 at an F's start, -1 at the end of the last
    # backward action of that (microbatch, chunk) on the rank.
    peaks = []
    for rank, rank_iv in enumerate(intervals):
        events = []
        for iv in rank_iv:
            a = iv.action
            if a.kind == FORWARD:
                events.append((iv.start, 1))
            elif a.kind == WEIGHT or (rank, a.microbatch, a.chunk) not in has_weight_pass:
                events.append((iv.end, -1))
        # releases sort before stashes at the same instant
        events.sort()
        held = peak = 0
        for _, delta in events:
            held += delta
            peak = max(peak, held)
        peaks.append(peak)

    return Timeline(intervals, makespan, bubble, peaks)
    ### END SOLUTION
