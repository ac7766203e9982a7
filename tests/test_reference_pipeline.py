"""The reference schedules, simulator and closed forms agree with each other and with first principles."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference import bubbles
from reference.schedules import (
    SCHEDULES,
    Action,
    build_schedule,
    gpipe,
    interleaved_1f1b,
    one_f_one_b,
    zero_bubble_h1,
)
from reference.simulator import DeadlockError, InvalidScheduleError, simulate

FAST = settings(derandomize=True, database=None, deadline=None, max_examples=150)
TIMES = st.sampled_from([0.25, 0.5, 1.0, 1.5, 2.0, 3.0])


def valid_inputs():
    @st.composite
    def draw(d):
        name = d(st.sampled_from(sorted(SCHEDULES)))
        P = d(st.integers(1, 8))
        if name == "interleaved":
            v = d(st.integers(2, 4))
            small = st.integers(1, P - 1) if P > 1 else st.nothing()
            M = d(st.one_of(small, st.integers(1, 4).map(lambda k: k * P)))
        else:
            v, M = 1, d(st.integers(1, 20))
        return name, P, M, v

    return draw()


@FAST
@given(valid_inputs(), TIMES, TIMES, TIMES)
def test_closed_form_bubble_equals_simulator(inputs, f, b, w):
    name, P, M, v = inputs
    timeline = simulate(build_schedule(name, P, M, v), f, b, w)
    closed = bubbles.bubble_fraction(name, P, M, v, forward_time=f, backward_time=b, weight_time=w)
    assert timeline.bubble_fraction == pytest.approx(closed, rel=1e-9, abs=1e-12)


@FAST
@given(valid_inputs())
def test_closed_form_peak_equals_simulator(inputs):
    name, P, M, v = inputs
    timeline = simulate(build_schedule(name, P, M, v), 1.0, 2.0, 1.0)
    closed = [bubbles.peak_activations(name, P, M, v, rank) for rank in range(P)]
    assert timeline.peak_activations == closed


@FAST
@given(valid_inputs())
def test_overhead_is_idle_over_ideal(inputs):
    name, P, M, v = inputs
    fraction = bubbles.bubble_fraction(name, P, M, v)
    assert bubbles.bubble_overhead(name, P, M, v) == pytest.approx(fraction / (1 - fraction))


def test_zero_bubble_paper_form_only_when_w_is_short():
    # Qi et al.'s (P - 1)(F + B - W) idle time holds for W <= min(F, B) and M >= P.
    P, M = 4, 8
    for f, b, w, paper_holds in ((1, 1, 1, True), (2, 1, 0.5, True), (1, 0.5, 1, False), (1, 2, 3, False)):
        span = simulate(zero_bubble_h1(P, M), f, b, w).makespan
        paper_span = M * (f + b + w) + (P - 1) * (f + b - w)
        assert (span == pytest.approx(paper_span)) is paper_holds, (f, b, w, span, paper_span)


def test_interleaved_bubble_for_fewer_microbatches_than_stages():
    # With M < P a group of M microbatches must travel the whole ring before
    # its next chunk, so interleaving helps less than (P - 1) / (vM + P - 1).
    P, M, v = 4, 2, 2
    simulated = simulate(interleaved_1f1b(P, M, v), 1.0, 1.0).bubble_fraction
    assert simulated == pytest.approx((v * (P - M) + M - 1) / (v * P + M - 1))
    assert simulated > (P - 1) / (v * M + P - 1)


def test_one_f_one_b_same_bubble_as_gpipe_less_memory():
    for P, M in ((4, 16), (8, 8), (3, 2)):
        g = simulate(gpipe(P, M), 1.0, 2.0)
        o = simulate(one_f_one_b(P, M), 1.0, 2.0)
        assert g.makespan == pytest.approx(o.makespan)
        assert max(o.peak_activations) == min(P, M)
        assert max(g.peak_activations) == M


def test_exercise_one_values():
    assert bubbles.bubble_fraction("gpipe", 4, 16) == pytest.approx(3 / 19)
    assert bubbles.bubble_fraction("1f1b", 4, 16) == pytest.approx(3 / 19)
    assert bubbles.bubble_fraction("interleaved", 4, 16, 2) == pytest.approx(3 / 35)
    assert bubbles.bubble_overhead("gpipe", 4, 16) == pytest.approx(3 / 16)


def test_chapter_small_example():
    # The chapter's example: P = 4, M = 4 gives 3/7 of the time idle.
    assert simulate(gpipe(4, 4), 1.0, 1.0).bubble_fraction == pytest.approx(3 / 7)


@pytest.mark.parametrize("P", range(1, 7))
@pytest.mark.parametrize("M", range(1, 13))
def test_every_schedule_finishes(P, M):
    for name in SCHEDULES:
        for v in ((2, 3) if name == "interleaved" else (1,)):
            try:
                schedule = build_schedule(name, P, M, v)
            except ValueError:
                assert name == "interleaved"
                assert M >= P
                assert M % P
                continue
            simulate(schedule, 1.0, 2.0, 0.5, 0.25)


def test_one_f_one_b_warmup_capped_by_microbatches():
    schedule = one_f_one_b(4, 2)
    assert schedule[0] == [Action("F", 0), Action("F", 1), Action("B", 0), Action("B", 1)]


@pytest.mark.parametrize("call, argument", [
    (lambda: gpipe(0, 4), "num_stages"),
    (lambda: gpipe(2, 0), "num_microbatches"),
    (lambda: one_f_one_b(True, 4), "num_stages"),
    (lambda: interleaved_1f1b(4, 8, 1), "num_chunks"),
    (lambda: interleaved_1f1b(4, 6, 2), "num_microbatches"),
    (lambda: zero_bubble_h1(2, -1), "num_microbatches"),
    (lambda: build_schedule("pipedream", 2, 2), "schedule"),
])
def test_invalid_arguments_name_the_argument(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()


def test_deadlock_names_stuck_ranks():
    schedule = [[Action("F", 0), Action("B", 0), Action("F", 1), Action("B", 1)],
                [Action("F", 0), Action("F", 1), Action("B", 0), Action("B", 1)]]
    with pytest.raises(DeadlockError) as info:
        simulate(schedule, 1.0, 1.0)
    assert sorted(info.value.stuck) == [0, 1]
    assert "rank 0 is stuck at B0" in str(info.value)
    assert "rank 1 is stuck at F1" in str(info.value)


def test_backward_before_own_forward_deadlocks():
    with pytest.raises(DeadlockError, match="rank 0 is stuck at B0"):
        simulate([[Action("B", 0), Action("F", 0)]], 1.0, 1.0)


@pytest.mark.parametrize("schedule, message", [
    ([], "no ranks"),
    ([[Action("F", 0)]], "never runs B0"),
    ([[Action("F", 0), Action("F", 0), Action("B", 0)]], "twice"),
    ([[Action("X", 0)]], "invalid action"),
])
def test_malformed_schedules_rejected(schedule, message):
    with pytest.raises(InvalidScheduleError, match=message):
        simulate(schedule, 1.0, 1.0)


def test_negative_time_rejected():
    with pytest.raises(ValueError, match="forward_time"):
        simulate(gpipe(2, 2), -1.0, 1.0)


def test_timeline_respects_dependencies_and_comm_time():
    timeline = simulate(one_f_one_b(3, 5), 1.0, 2.0, 0.0, 0.5)
    ends = {(rank, iv.action): iv.end for rank, ivs in enumerate(timeline.intervals) for iv in ivs}
    for rank, ivs in enumerate(timeline.intervals):
        for before, after in zip(ivs, ivs[1:]):
            assert after.start >= before.end
        for iv in ivs:
            a = iv.action
            if a.kind == "F" and rank > 0:
                assert iv.start >= ends[(rank - 1, a)] + 0.5
            if a.kind == "B" and rank < 2:
                assert iv.start >= ends[(rank + 1, a)] + 0.5
