"""Checks for ``schedules.py``: GPipe, 1F1B, interleaved 1F1B and ZB-H1.

Several orders can be right for one schedule, so the checks grade what the
chapter teaches, through the reference simulator: every pass runs once, no
rank deadlocks, the makespan under several pass-time ratios, and the
activations each rank stashes at its peak.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from reference import schedules as ref

from ..checking import CheckFailed, check, run_property
from ..sandbox import LearnerRaised, Worker
from .schedule_analysis import (
    TIME_CASES,
    ZERO_BUBBLE_TIME_CASES,
    as_schedule,
    check_structure,
    describe_inputs,
    grid,
    simulate_or_fail,
)
from .values import close


def fetch(worker: Worker, function: str, *args: int):
    """Call a schedule function in the worker; its exceptions become failures."""
    names = ("num_stages", "num_microbatches", "num_chunks")
    context = describe_inputs(**dict(zip(names, args)))
    try:
        value = worker.call("schedules", function, *args)
    except LearnerRaised as error:
        raise CheckFailed(f"for {context}: {error}") from None
    return as_schedule(value, context), context


def compare_timing(got, expected, context: str, time_cases, *, at_most: bool = False) -> None:
    """Compare makespans of two schedules under each time case, and peak activations."""
    for times in time_cases:
        got_timeline = simulate_or_fail(got, times, context)
        expected_timeline = simulate_or_fail(expected, times, context)
        got_span, best = got_timeline.makespan, expected_timeline.makespan
        worse = got_span > best + 1e-9 if at_most else not close(got_span, best)
        if worse:
            f, b, w = times
            raise CheckFailed(
                f"for {context} with forward_time={f:g}, backward_time={b:g}, weight_time={w:g}: "
                f"the schedule takes {got_span:g} time units, expected {best:g}\n{grid(got)}"
            )


def stash_peaks(schedule, context: str, times=(1.0, 2.0, 0.0)) -> list[int]:
    return simulate_or_fail(schedule, times, context).peak_activations


@check("schedules.gpipe", modules=("schedules",))
def gpipe_check(worker: Worker) -> None:
    """GPipe: all forwards, then all backwards, on every rank."""
    worker.import_module("schedules")

    @given(num_stages=st.integers(1, 8), num_microbatches=st.integers(1, 16))
    def gpipe_property(num_stages: int, num_microbatches: int) -> None:
        got, context = fetch(worker, "gpipe", num_stages, num_microbatches)
        check_structure(got, num_stages, num_microbatches, 1, context, weight_passes=False)
        for rank, actions in enumerate(got):
            kinds = "".join(a.kind for a in actions)
            if "BF" in kinds:
                first_b = kinds.index("B")
                raise CheckFailed(f"for {context}: rank {rank} runs {actions[first_b]} before its last "
                                  "forward; GPipe runs every forward before any backward")
        compare_timing(got, ref.gpipe(num_stages, num_microbatches), context, TIME_CASES)

    run_property(gpipe_property, max_examples=40)


@check("schedules.one_f_one_b", modules=("schedules",))
def one_f_one_b_check(worker: Worker) -> None:
    """1F1B: same makespan as GPipe, and rank r stashes at most min(P - r, M) activations."""
    worker.import_module("schedules")

    @given(num_stages=st.integers(1, 8), num_microbatches=st.integers(1, 20))
    def one_f_one_b_property(num_stages: int, num_microbatches: int) -> None:
        P, M = num_stages, num_microbatches
        context = describe_inputs(num_stages=P, num_microbatches=M)
        try:
            got, context = fetch(worker, "one_f_one_b", P, M)
            check_structure(got, P, M, 1, context, weight_passes=False)
        except CheckFailed as failure:
            if M < P - 1:
                raise CheckFailed(failure.message, misconception=(
                    "warmup not capped by M: with fewer microbatches than stages, rank r can run "
                    "only min(P - r - 1, M) warmup forwards")) from None
            raise
        expected = [min(P - r, M) for r in range(P)]
        peaks = stash_peaks(got, context)
        if peaks != expected:
            misconception = None
            if peaks == [min(P - r + 1, M) for r in range(P)]:
                misconception = ("warmup of P - rank forwards instead of P - rank - 1: the first "
                                 "steady-state forward is not part of the warmup")
            elif peaks == [M] * P:
                misconception = "all forwards before the backwards is GPipe, not 1F1B"
            raise CheckFailed(f"for {context}: ranks stash at most {peaks} activations, "
                              f"1F1B stashes {expected}\n{grid(got)}", misconception)
        compare_timing(got, ref.one_f_one_b(P, M), context, TIME_CASES)

    run_property(one_f_one_b_property, max_examples=60)


def interleaved_inputs():
    """Draw (P, M, v) with M valid for the interleaved schedule (M < P or a multiple of P)."""

    @st.composite
    def draw(draw_value):
        P = draw_value(st.integers(1, 6))
        v = draw_value(st.integers(2, 4))
        small = st.integers(1, P - 1) if P > 1 else st.nothing()
        M = draw_value(st.one_of(small, st.integers(1, 3).map(lambda k: k * P)))
        return P, M, v

    return draw()


@check("schedules.interleaved_1f1b", modules=("schedules",))
def interleaved_check(worker: Worker) -> None:
    """Interleaved 1F1B: Megatron-LM's chunk order, makespan and stash per rank."""
    worker.import_module("schedules")

    @given(interleaved_inputs())
    def interleaved_property(inputs) -> None:
        P, M, v = inputs
        got, context = fetch(worker, "interleaved_1f1b", P, M, v)
        check_structure(got, P, M, v, context, weight_passes=False)
        expected = ref.interleaved_1f1b(P, M, v)
        compare_timing(got, expected, context, TIME_CASES)
        peaks, expected_peaks = stash_peaks(got, context), stash_peaks(expected, context)
        if peaks != expected_peaks:
            raise CheckFailed(f"for {context}: ranks stash at most {peaks} (microbatch, chunk) "
                              f"activations, expected {expected_peaks}\n{grid(got)}")

    run_property(interleaved_property, max_examples=50)


@check("schedules.zero_bubble_h1", modules=("schedules",))
def zero_bubble_check(worker: Worker) -> None:
    """ZB-H1: B and W split, makespan no longer than ZB-H1's, stash no higher than 1F1B's peak."""
    worker.import_module("schedules")

    @given(num_stages=st.integers(1, 6), num_microbatches=st.integers(1, 16))
    def zero_bubble_property(num_stages: int, num_microbatches: int) -> None:
        P, M = num_stages, num_microbatches
        got, context = fetch(worker, "zero_bubble_h1", P, M)
        check_structure(got, P, M, 1, context, weight_passes=True)
        limit = min(P, M)
        peaks = stash_peaks(got, context, (1.0, 1.0, 1.0))
        if max(peaks) > limit:
            raise CheckFailed(f"for {context}: ranks stash up to {peaks} activations; ZB-H1 keeps "
                              f"every rank at or below 1F1B's peak of {limit}\n{grid(got)}")
        try:
            compare_timing(got, ref.zero_bubble_h1(P, M), context, ZERO_BUBBLE_TIME_CASES, at_most=True)
        except CheckFailed as failure:
            one_f_one_b_with_w = _one_f_one_b_with_weight_passes(P, M)
            same = all(close(simulate_or_fail(got, t, context).makespan,
                             simulate_or_fail(one_f_one_b_with_w, t, context).makespan)
                       for t in ZERO_BUBBLE_TIME_CASES)
            hint = ("W right after B everywhere gives 1F1B's bubble: later ranks must defer W"
                    if same else None)
            raise CheckFailed(failure.message, hint) from None

    run_property(zero_bubble_property, max_examples=40)


def _one_f_one_b_with_weight_passes(P: int, M: int):
    schedule = []
    for actions in ref.one_f_one_b(P, M):
        split = []
        for action in actions:
            split.append(action)
            if action.kind == ref.BACKWARD:
                split.append(ref.Action(ref.WEIGHT, action.microbatch, action.chunk))
        schedule.append(split)
    return schedule


INVALID_ARGUMENTS = (
    ("gpipe", (0, 4), "num_stages"),
    ("gpipe", (4, 0), "num_microbatches"),
    ("one_f_one_b", (-1, 4), "num_stages"),
    ("one_f_one_b", (4, 0), "num_microbatches"),
    ("interleaved_1f1b", (0, 4, 2), "num_stages"),
    ("interleaved_1f1b", (4, 8, 1), "num_chunks"),
    ("interleaved_1f1b", (4, 6, 2), "num_microbatches"),
    ("zero_bubble_h1", (4, -3), "num_microbatches"),
    ("zero_bubble_h1", (0, 4), "num_stages"),
)


@check("schedules.invalid_arguments", modules=("schedules",))
def invalid_arguments_check(worker: Worker) -> None:
    """Invalid P, M or v raise ValueError naming the argument."""
    worker.import_module("schedules")
    for function, args, argument in INVALID_ARGUMENTS:
        call = f"{function}{args}"
        try:
            worker.call("schedules", function, *args)
        except LearnerRaised as error:
            if not error.is_a("ValueError"):
                raise CheckFailed(f"{call} raised {error.error}; expected ValueError") from None
            if argument not in error.message:
                raise CheckFailed(f"{call} raised ValueError({error.message!r}), which does not "
                                  f"name the argument {argument!r}") from None
            continue
        raise CheckFailed(f"{call} returned a schedule; expected ValueError naming {argument!r}")
