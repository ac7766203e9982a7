"""Checks for ``answers.exercise_1()``: bubble fraction and stash of a 4-stage, 16-microbatch pipeline."""

from __future__ import annotations

from reference import bubbles

from ..checking import CheckFailed, check
from ..sandbox import Record, Worker
from .values import answer_field, close, fetch_answer

P, M, V = 4, 16, 2
REL_TOLERANCE = 1e-6


def _answer(worker: Worker) -> Record:
    return fetch_answer(worker, "exercise_1", "Exercise1Answer")


def _field(answer: Record, name: str) -> float:
    return answer_field(answer, "exercise_1", name)


@check("exercise_1.gpipe", modules=("answers",))
def gpipe_answer_check(worker: Worker) -> None:
    """Naive (GPipe) bubble fraction for P = 4, M = 16."""
    got = _field(_answer(worker), "gpipe_bubble_fraction")
    expected = bubbles.bubble_fraction("gpipe", P, M)
    if not close(got, expected, rel=REL_TOLERANCE):
        hint = None
        if close(got, (P - 1) / M, rel=1e-3):
            hint = "(P - 1) / M = 3/16 is the bubble overhead (idle over ideal time), not the fraction of total time"
        elif close(got, (P - 1) / (P + P - 1), rel=1e-3):
            hint = "3/7 is the chapter's example with M = 4; this exercise has M = 16"
        raise CheckFailed(f"gpipe_bubble_fraction is {got:.6g}, expected (P - 1) / (M + P - 1) "
                          f"for P = {P}, M = {M}", hint)


@check("exercise_1.one_f_one_b", modules=("answers",))
def one_f_one_b_answer_check(worker: Worker) -> None:
    """1F1B keeps GPipe's bubble and cuts rank 0's stash from M to P."""
    answer = _answer(worker)
    bubble = _field(answer, "one_f_one_b_bubble_fraction")
    expected_bubble = bubbles.bubble_fraction("1f1b", P, M)
    if not close(bubble, expected_bubble, rel=REL_TOLERANCE):
        hint = None
        if bubble < expected_bubble:
            hint = ("1F1B does not shrink the bubble when stage times are uniform: it has the "
                    "same idle time as GPipe and saves activation memory")
        raise CheckFailed(f"one_f_one_b_bubble_fraction is {bubble:.6g}; it is not the 1F1B "
                          f"bubble for P = {P}, M = {M}", hint)

    for name, schedule in (("gpipe_peak_activations", "gpipe"), ("one_f_one_b_peak_activations", "1f1b")):
        got = answer.get(name)
        expected = bubbles.peak_activations(schedule, P, M)
        if type(got) is not int or got != expected:
            hint = None
            if schedule == "1f1b" and got == M:
                hint = "1F1B starts backward passes early, so rank 0 never holds more than P microbatches"
            raise CheckFailed(f"{name} is {got!r}; that is not what rank 0 stashes at its peak", hint)


@check("exercise_1.interleaved", modules=("answers",))
def interleaved_answer_check(worker: Worker) -> None:
    """Interleaved 1F1B with v = 2 chunks per rank divides the bubble's share."""
    got = _field(_answer(worker), "interleaved_bubble_fraction")
    expected = bubbles.bubble_fraction("interleaved", P, M, V)
    if not close(got, expected, rel=REL_TOLERANCE):
        hint = None
        if close(got, (P - 1) / (M + P - 1) / V, rel=1e-3):
            hint = "dividing the GPipe fraction by v is the overhead's rule; the fraction is (P - 1) / (v M + P - 1)"
        raise CheckFailed(f"interleaved_bubble_fraction is {got:.6g}, not the bubble of "
                          f"interleaved 1F1B for P = {P}, M = {M}, v = {V}", hint)
