"""Checks for ``answers.exercise_2()``: TP-8 against EP-8 on the chapter's MoE layer.

Wrong answers that match a known mistake are named. Several mistakes give
the same number here (8 GPUs and 8 bits per byte, for one), so a hint names
every mistake that fits.
"""

from __future__ import annotations

from reference.comm_volume import exercise_2_volumes

from ..checking import CheckFailed, check
from ..sandbox import Record, Worker
from .values import answer_field, close, fetch_answer

T, H, BYTES, K, N, EXPERTS = 4 * 1024, 4096, 2, 2, 8, 64
S = T * H * BYTES


def _answer(worker: Worker) -> Record:
    return fetch_answer(worker, "exercise_2", "Exercise2Answer")


def _field(answer: Record, name: str) -> float:
    return answer_field(answer, "exercise_2", name)


def _name_mistakes(got: float, candidates: dict[str, float]) -> str | None:
    names = [name for name, value in candidates.items() if close(got, value, rel=1e-6)]
    return "; or ".join(names) if names else None


TP_MISTAKES = {
    "bits instead of bytes (8x too large)": 8,
    "counted the forward and the backward pass": 2,
    "fp32 (4 bytes) instead of bf16": 2,
    "elements instead of bytes": 0.5,
}


@check("exercise_2.tensor_parallel", modules=("answers",))
def tensor_parallel_check(worker: Worker) -> None:
    """TP-8 bytes per GPU: the chapter's 2S and the exact ring all-reduce."""
    answer = _answer(worker)
    expected = exercise_2_volumes()
    for field, value in (("tp_chapter_bytes", expected.tp_chapter_bytes), ("tp_ring_bytes", expected.tp_ring_bytes)):
        got = _field(answer, field)
        if close(got, value, rel=1e-9):
            continue
        hint = _name_mistakes(got, {name: value * factor for name, factor in TP_MISTAKES.items()})
        if field == "tp_ring_bytes" and close(got, (N - 1) / N * S, rel=1e-6):
            hint = "an all-reduce is a reduce-scatter plus an all-gather: 2 (N-1)/N x S, not (N-1)/N x S"
        raise CheckFailed(f"{field} is {got:,.0f}; that is not what each GPU sends", hint)


@check("exercise_2.expert_parallel", modules=("answers",))
def expert_parallel_check(worker: Worker) -> None:
    """EP-8 bytes per GPU: the chapter's 2kS/N with N = GPUs, and the exact all-to-all figure."""
    answer = _answer(worker)
    expected = exercise_2_volumes()
    for field, value in (("ep_chapter_bytes", expected.ep_chapter_bytes), ("ep_exact_bytes", expected.ep_exact_bytes)):
        got = _field(answer, field)
        if close(got, value, rel=1e-9):
            continue
        mistakes = {
            "N taken as the number of experts (64) instead of the 8 GPUs of the EP group": value * N / EXPERTS
            * ((EXPERTS - 1) / EXPERTS) / ((N - 1) / N) if field == "ep_exact_bytes" else value * N / EXPERTS,
            "bits instead of bytes": value * 8,
            "forgot that EP splits the tokens (each GPU holds T / N)": value * N,
            "forgot the combine all-to-all that brings the outputs back": value / 2,
            "forgot the factor k": value / K,
            "counted the forward and the backward pass": value * 2,
        }
        if field == "ep_exact_bytes":
            mistakes["counted the copies that stay on their own GPU"] = expected.ep_chapter_bytes
        raise CheckFailed(f"{field} is {got:,.0f}; that is not what each GPU sends", _name_mistakes(got, mistakes))

    if expected.tp_chapter_bytes / expected.ep_chapter_bytes != 4:
        raise CheckFailed("internal: the reference no longer gives a factor of 4")
