"""Pipeline schedules, written as generators over (phase, step) rather than index loops."""

from __future__ import annotations

from typing import NamedTuple


FORWARD, BACKWARD, WEIGHT = "F", "B", "W"
KINDS = (FORWARD, BACKWARD, WEIGHT)


class Action(NamedTuple):
    kind: str
    microbatch: int
    chunk: int = 0


def _require(name, value, low=1):
    if type(value) is not int or value < low:
        raise ValueError(f"{name}={value!r} is invalid: expected an integer of at least {low}")


def gpipe(num_stages, num_microbatches):
    _require("num_stages", num_stages)
    _require("num_microbatches", num_microbatches)
    order = [Action("F", m) for m in range(num_microbatches)]
    order += [Action("B", m) for m in reversed(range(num_microbatches))]
    return [list(order) for _ in range(num_stages)]


def _one_rank_1f1b(rank, num_stages, num_microbatches):
    forwards = iter(range(num_microbatches))
    backwards = iter(range(num_microbatches))
    in_flight = 0
    limit = num_stages - rank
    out = []
    done_f = 0
    while len(out) < 2 * num_microbatches:
        if done_f < num_microbatches and in_flight < limit:
            out.append(Action("F", next(forwards)))
            done_f += 1
            in_flight += 1
            if in_flight < limit and done_f < num_microbatches:
                continue
        out.append(Action("B", next(backwards)))
        in_flight -= 1
    return out


def one_f_one_b(num_stages, num_microbatches):
    _require("num_stages", num_stages)
    _require("num_microbatches", num_microbatches)
    return [_one_rank_1f1b(r, num_stages, num_microbatches) for r in range(num_stages)]


def interleaved_1f1b(num_stages, num_microbatches, num_chunks):
    _require("num_stages", num_stages)
    _require("num_microbatches", num_microbatches)
    _require("num_chunks", num_chunks, 2)
    if num_microbatches >= num_stages and num_microbatches % num_stages:
        raise ValueError(f"num_microbatches={num_microbatches} must be below num_stages or a multiple of it")
    group = min(num_stages, num_microbatches)
    # every (microbatch, chunk) in forward order; backward visits chunks last-first
    fwd_order, bwd_order = [], []
    for first in range(0, num_microbatches, group):
        for c in range(num_chunks):
            for m in range(first, first + group):
                fwd_order.append(Action("F", m, c))
                bwd_order.append(Action("B", m, num_chunks - 1 - c))
    schedule = []
    for rank in range(num_stages):
        warm = min((num_chunks - 1) * group + 2 * (num_stages - 1 - rank), len(fwd_order))
        out = fwd_order[:warm]
        for f, b in zip(fwd_order[warm:], bwd_order):
            out += [f, b]
        out += bwd_order[len(fwd_order) - warm:]
        schedule.append(out)
    return schedule


def zero_bubble_h1(num_stages, num_microbatches):
    _require("num_stages", num_stages)
    _require("num_microbatches", num_microbatches)
    schedule = []
    for rank in range(num_stages):
        base = _one_rank_1f1b(rank, num_stages, num_microbatches)
        out, pending, backs = [], [], 0
        for action in base:
            out.append(action)
            if action.kind == "B":
                pending.append(action.microbatch)
                backs += 1
                if backs > rank:
                    out.append(Action("W", pending.pop(0)))
        out += [Action("W", m) for m in pending]
        schedule.append(out)
    return schedule


SCHEDULES = {"gpipe": gpipe, "1f1b": one_f_one_b, "interleaved": interleaved_1f1b,
             "zero_bubble_h1": zero_bubble_h1}


def check_count(name, value, minimum=1):
    _require(name, value, minimum)
    return value


def interleaved_group_size(num_stages, num_microbatches):
    if num_microbatches >= num_stages and num_microbatches % num_stages:
        raise ValueError(f"num_microbatches={num_microbatches} must be below num_stages or a multiple of it")
    return min(num_stages, num_microbatches)


def build_schedule(name, num_stages, num_microbatches, num_chunks=1):
    if name not in SCHEDULES:
        raise ValueError(f"schedule={name!r} is unknown: expected one of {sorted(SCHEDULES)}")
    if name == "interleaved":
        return interleaved_1f1b(num_stages, num_microbatches, num_chunks)
    if num_chunks != 1:
        raise ValueError(f"num_chunks={num_chunks!r} must be 1 for {name}")
    return SCHEDULES[name](num_stages, num_microbatches)
