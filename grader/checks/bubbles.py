"""Checks for ``bubbles.py``: closed forms against the reference, with named misconceptions."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from reference import bubbles as ref

from ..checking import CheckFailed, check, run_property
from ..sandbox import Worker
from .schedule_analysis import describe_inputs
from .values import as_number, call_or_fail, close

TIMES = st.sampled_from([0.5, 1.0, 2.0, 3.0])


@st.composite
def bubble_inputs(draw):
    """Draw (schedule, P, M, v, times) valid for the schedule."""
    schedule = draw(st.sampled_from(["gpipe", "1f1b", "interleaved", "zero_bubble_h1"]))
    P = draw(st.integers(1, 16))
    v = 1
    if schedule == "interleaved":
        v = draw(st.integers(2, 4))
        small = st.integers(1, P - 1) if P > 1 else st.nothing()
        M = draw(st.one_of(small, st.integers(1, 8).map(lambda k: k * P)))
    else:
        M = draw(st.integers(1, 64))
    times = draw(st.tuples(TIMES, TIMES, TIMES))
    return schedule, P, M, v, times


def _fraction_misconception(schedule: str, P: int, M: int, v: int, got: float) -> str | None:
    if schedule in ("gpipe", "1f1b") and close(got, (P - 1) / M, rel=1e-6):
        return "(P - 1) / M is the bubble overhead (idle over ideal time), not the bubble fraction"
    if schedule == "1f1b" and got < (P - 1) / (M + P - 1) - 1e-9:
        return "1F1B does not shrink the bubble: it has GPipe's bubble and cuts activation memory"
    if schedule == "interleaved" and close(got, (P - 1) / (M + P - 1), rel=1e-6) and P > 1:
        return "interleaving divides the bubble by the number of chunks v"
    return None


def _call(worker: Worker, function: str, schedule: str, P: int, M: int, v: int, **times):
    context = f"{function}({schedule!r}, {describe_inputs(num_stages=P, num_microbatches=M, num_chunks=v)})"
    return call_or_fail(worker, "bubbles", function, schedule, P, M, v, context=context, **times), context


@check("bubbles.bubble_fraction", modules=("bubbles",))
def bubble_fraction_check(worker: Worker) -> None:
    """bubble_fraction() equals the closed form for every schedule."""
    worker.import_module("bubbles")

    @given(bubble_inputs())
    def fraction_property(inputs) -> None:
        schedule, P, M, v, (f, b, w) = inputs
        times = dict(forward_time=f, backward_time=b, weight_time=w)
        value, context = _call(worker, "bubble_fraction", schedule, P, M, v, **times)
        if schedule == "zero_bubble_h1":
            context += f" with forward_time={f:g}, backward_time={b:g}, weight_time={w:g}"
        got = as_number(value, context)
        expected = ref.bubble_fraction(schedule, P, M, v, **times)
        if not close(got, expected, rel=1e-9, abs_tol=1e-12):
            raise CheckFailed(f"{context} returned {got:.6g}, expected {expected:.6g}",
                              _fraction_misconception(schedule, P, M, v, got))

    run_property(fraction_property, max_examples=80)


@check("bubbles.bubble_overhead", modules=("bubbles",))
def bubble_overhead_check(worker: Worker) -> None:
    """bubble_overhead() is idle time over ideal time."""
    worker.import_module("bubbles")

    @given(bubble_inputs())
    def overhead_property(inputs) -> None:
        schedule, P, M, v, (f, b, w) = inputs
        times = dict(forward_time=f, backward_time=b, weight_time=w)
        value, context = _call(worker, "bubble_overhead", schedule, P, M, v, **times)
        got = as_number(value, context)
        expected = ref.bubble_overhead(schedule, P, M, v, **times)
        if not close(got, expected, rel=1e-9, abs_tol=1e-12):
            fraction = ref.bubble_fraction(schedule, P, M, v, **times)
            hint = None
            if close(got, fraction, rel=1e-6) and P > 1:
                hint = "the bubble fraction (idle over total time) is not the overhead (idle over ideal time)"
            raise CheckFailed(f"{context} returned {got:.6g}, expected {expected:.6g}", hint)

    run_property(overhead_property, max_examples=40)


@check("bubbles.peak_activations", modules=("bubbles",))
def peak_activations_check(worker: Worker) -> None:
    """peak_activations() gives each rank's stash peak for every schedule."""
    worker.import_module("bubbles")

    @given(bubble_inputs(), st.data())
    def peak_property(inputs, data) -> None:
        schedule, P, M, v, _ = inputs
        rank = data.draw(st.integers(0, P - 1), label="pp_rank")
        context = (f"peak_activations({schedule!r}, "
                   f"{describe_inputs(num_stages=P, num_microbatches=M, num_chunks=v, pp_rank=rank)})")
        value = call_or_fail(worker, "bubbles", "peak_activations", schedule, P, M, v, rank, context=context)
        expected = ref.peak_activations(schedule, P, M, v, rank)
        if type(value) is not int or value != expected:
            hint = None
            if schedule == "1f1b" and value == min(P, M) and rank > 0:
                hint = "only the first rank holds P microbatches; rank r holds min(P - r, M)"
            elif schedule == "1f1b" and value == P and M < P:
                hint = "with fewer microbatches than stages no rank can hold more than M"
            raise CheckFailed(f"{context} returned {value!r}, expected {expected}", hint)

    run_property(peak_property, max_examples=60)
