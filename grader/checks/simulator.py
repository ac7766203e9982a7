"""Checks for ``simulator.py``: timelines of valid schedules, and deadlock detection.

Inputs are reference schedules of every kind plus 1F1B-like schedules whose
warmup length is drawn per rank: some of those finish, some deadlock, and
the reference simulator decides which.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from reference import schedules as ref
from reference.simulator import DeadlockError, simulate

from ..checking import CheckFailed, check, run_property
from ..sandbox import LearnerRaised, Record, Worker
from .schedule_analysis import as_action, grid
from .values import as_number, close

TIMES = st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0])


@st.composite
def warmup_schedules(draw):
    """Draw a schedule where rank r runs w_r warmup forwards, then 1F1B, then cooldown."""
    P = draw(st.integers(1, 5))
    M = draw(st.integers(1, 6))
    schedule = []
    for _rank in range(P):
        warmup = draw(st.integers(0, M))
        actions = [ref.Action("F", mb) for mb in range(warmup)]
        for i in range(M - warmup):
            actions += [ref.Action("F", warmup + i), ref.Action("B", i)]
        actions += [ref.Action("B", mb) for mb in range(M - warmup, M)]
        schedule.append(actions)
    return schedule


@st.composite
def reference_schedules(draw):
    """Draw a reference schedule of any kind, with (P, M, v) valid for it."""
    name = draw(st.sampled_from(sorted(ref.SCHEDULES)))
    P = draw(st.integers(1, 5))
    if name == "interleaved":
        v = draw(st.integers(2, 3))
        M = draw(st.one_of(st.integers(1, 3).map(lambda k: k * P),
                           st.integers(1, max(1, P - 1))))
        return ref.build_schedule(name, P, M, v)
    return ref.build_schedule(name, P, draw(st.integers(1, 8)))


def _context(schedule, times) -> str:
    f, b, w, c = times
    return (f"for this schedule with forward_time={f:g}, backward_time={b:g}, "
            f"weight_time={w:g}, comm_time={c:g}:\n{grid(schedule)}\n")


def _compare_timeline(got, expected, schedule, times) -> None:
    context = _context(schedule, times)
    if not isinstance(got, Record):
        raise CheckFailed(f"{context}simulate returned {type(got).__name__}; expected a Timeline")
    for field in ("intervals", "makespan", "bubble_fraction", "peak_activations"):
        if field not in got:
            raise CheckFailed(f"{context}the returned {got.type_name} has no field {field!r}")

    makespan = as_number(got["makespan"], "makespan")
    if not close(makespan, expected.makespan):
        raise CheckFailed(f"{context}makespan is {makespan:g}, expected {expected.makespan:g}")
    bubble = as_number(got["bubble_fraction"], "bubble_fraction")
    if not close(bubble, expected.bubble_fraction, abs_tol=1e-9):
        raise CheckFailed(f"{context}bubble_fraction is {bubble:g}, expected {expected.bubble_fraction:g}")

    intervals = got["intervals"]
    if not isinstance(intervals, list) or len(intervals) != len(expected.intervals):
        raise CheckFailed(f"{context}intervals must hold one list per rank ({len(expected.intervals)})")
    for rank, (got_rank, expected_rank) in enumerate(zip(intervals, expected.intervals)):
        if not isinstance(got_rank, list) or len(got_rank) != len(expected_rank):
            raise CheckFailed(f"{context}rank {rank} has {len(got_rank)} intervals, "
                              f"expected {len(expected_rank)}")
        for got_iv, expected_iv in zip(got_rank, expected_rank):
            if not isinstance(got_iv, Record) or not {"action", "start", "end"} <= set(got_iv):
                raise CheckFailed(f"{context}rank {rank}: intervals must be Interval(action, start, end)")
            action = as_action(got_iv["action"], f"rank {rank} interval")
            start = as_number(got_iv["start"], "start")
            end = as_number(got_iv["end"], "end")
            if action != expected_iv.action or not close(start, expected_iv.start) \
                    or not close(end, expected_iv.end):
                raise CheckFailed(
                    f"{context}rank {rank} runs {action} from {start:g} to {end:g}; expected "
                    f"{expected_iv.action} from {expected_iv.start:g} to {expected_iv.end:g}")

    peaks = got["peak_activations"]
    if peaks != expected.peak_activations or any(type(p) is not int for p in peaks):
        raise CheckFailed(f"{context}peak_activations is {peaks!r}, expected {expected.peak_activations}")


def _call_simulate(worker: Worker, schedule, times):
    f, b, w, c = times
    return worker.call("simulator", "simulate", schedule, forward_time=f, backward_time=b,
                       weight_time=w, comm_time=c)


@check("simulator.timeline", modules=("simulator",))
def timeline_check(worker: Worker) -> None:
    """simulate() gives the reference timeline for schedules that finish."""
    worker.import_module("simulator")

    @given(schedule=st.one_of(reference_schedules(), warmup_schedules()),
           times=st.tuples(TIMES, TIMES, st.sampled_from([0.0, 0.5, 1.0]), st.sampled_from([0.0, 0.25])))
    def timeline_property(schedule, times) -> None:
        try:
            expected = simulate(schedule, *times)
        except DeadlockError:
            return
        try:
            got = _call_simulate(worker, schedule, times)
        except LearnerRaised as error:
            raise CheckFailed(f"{_context(schedule, times)}simulate raised {error.error}: "
                              f"{error.message}") from None
        _compare_timeline(got, expected, schedule, times)

    run_property(timeline_property, max_examples=60)


@check("simulator.deadlock", modules=("simulator",))
def deadlock_check(worker: Worker) -> None:
    """simulate() raises DeadlockError naming every stuck rank, and only when stuck."""
    worker.import_module("simulator")

    @given(schedule=warmup_schedules())
    def deadlock_property(schedule) -> None:
        times = (1.0, 2.0, 0.0, 0.0)
        context = _context(schedule, times)
        try:
            simulate(schedule, *times[:3])
            stuck = None
        except DeadlockError as error:
            stuck = sorted(error.stuck)
        try:
            _call_simulate(worker, schedule, times)
        except LearnerRaised as error:
            if stuck is None:
                raise CheckFailed(f"{context}simulate raised {error.error}: {error.message}, "
                                  "but this schedule finishes") from None
            if not error.is_a("DeadlockError"):
                raise CheckFailed(f"{context}simulate raised {error.error}; expected DeadlockError") from None
            missing = [r for r in stuck if f"rank {r}" not in error.message]
            if missing:
                raise CheckFailed(f"{context}the DeadlockError message {error.message!r} does not "
                                  f"name stuck rank(s) {missing} as 'rank N'") from None
            return
        if stuck is not None:
            raise CheckFailed(f"{context}simulate returned, but ranks {stuck} can never move "
                              "(expected DeadlockError)")

    run_property(deadlock_property, max_examples=50)
