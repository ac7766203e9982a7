"""Pipeline simulator written as a topological sort over one global dependency graph."""

from __future__ import annotations

from collections import deque
from typing import NamedTuple


class Interval(NamedTuple):
    action: object
    start: float
    end: float


class Timeline(NamedTuple):
    intervals: list
    makespan: float
    bubble_fraction: float
    peak_activations: list


class DeadlockError(RuntimeError):
    pass


def simulate(schedule, forward_time, backward_time, weight_time=0.0, comm_time=0.0):
    P = len(schedule)
    chunks = 1 + max(a.chunk for acts in schedule for a in acts)
    last_stage = P * chunks - 1
    split = {(r, a.microbatch, a.chunk) for r, acts in enumerate(schedule) for a in acts if a.kind == "W"}
    nodes = [(r, a) for r, acts in enumerate(schedule) for a in acts]

    def cost(r, a):
        if a.kind == "F":
            return forward_time
        if a.kind == "W":
            return weight_time
        return backward_time if (r, a.microbatch, a.chunk) in split else backward_time + weight_time

    def where(stage):
        return stage % P, stage // P

    deps = {}
    for r, a in nodes:
        stage = a.chunk * P + r
        d = []
        if a.kind == "F" and stage > 0:
            pr, pc = where(stage - 1)
            d.append((pr, type(a)("F", a.microbatch, pc)))
        elif a.kind == "B":
            d.append((r, type(a)("F", a.microbatch, a.chunk)))
            if stage < last_stage:
                nr, nc = where(stage + 1)
                d.append((nr, type(a)("B", a.microbatch, nc)))
        elif a.kind == "W":
            d.append((r, type(a)("B", a.microbatch, a.chunk)))
        deps[(r, a)] = d
    for r, acts in enumerate(schedule):
        for before, after in zip(acts, acts[1:]):
            deps[(r, after)].append((r, before))

    children = {n: [] for n in nodes}
    waiting = {n: len(deps[n]) for n in nodes}
    for n in nodes:
        for d in deps[n]:
            children[d].append(n)
    queue = deque(n for n in nodes if waiting[n] == 0)
    finish = {}
    while queue:
        node = queue.popleft()
        r, a = node
        t0 = 0.0
        for d in deps[node]:
            t0 = max(t0, finish[d] + (comm_time if d[0] != r else 0.0))
        finish[node] = t0 + cost(r, a)
        for child in children[node]:
            waiting[child] -= 1
            if waiting[child] == 0:
                queue.append(child)

    if len(finish) < len(nodes):
        stuck = []
        for r, acts in enumerate(schedule):
            for a in acts:
                if (r, a) not in finish:
                    stuck.append(f"rank {r} cannot run {a.kind}{a.microbatch}")
                    break
        raise DeadlockError("deadlock: " + "; ".join(stuck))

    intervals = [[Interval(a, finish[(r, a)] - cost(r, a), finish[(r, a)]) for a in acts]
                 for r, acts in enumerate(schedule)]
    makespan = max(finish.values())
    busy = sum(iv.end - iv.start for rank in intervals for iv in rank)
    bubble = 1 - busy / (P * makespan) if makespan else 0.0

    peaks = []
    for r, rank in enumerate(intervals):
        changes = []
        for iv in rank:
            a = iv.action
            if a.kind == "F":
                changes.append((iv.start, 1))
            elif a.kind == "W" or (r, a.microbatch, a.chunk) not in split:
                changes.append((iv.end, -1))
        level = top = 0
        for _, step in sorted(changes):
            level += step
            top = max(top, level)
        peaks.append(top)
    return Timeline(intervals, makespan, bubble, peaks)
