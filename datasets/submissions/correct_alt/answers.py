"""Exercise answers."""

from fractions import Fraction
from typing import NamedTuple


class Exercise1Answer(NamedTuple):
    gpipe_bubble_fraction: float
    one_f_one_b_bubble_fraction: float
    gpipe_peak_activations: int
    one_f_one_b_peak_activations: int
    interleaved_bubble_fraction: float


def exercise_1():
    naive = Fraction(3, 19)  # (4 - 1) / (16 + 4 - 1)
    return Exercise1Answer(float(naive), float(naive), 16, 4, float(Fraction(3, 35)))


class Exercise3Answer(NamedTuple):
    tp: int
    pp: int
    dp: int
    ep: int = 1
    num_chunks: int = 1


def exercise_3():
    # TP 4 inside a node, 4 pipeline stages of 20 layers, 4 data-parallel replicas.
    return Exercise3Answer(tp=4, pp=4, dp=4)


class Exercise2Answer(NamedTuple):
    tp_chapter_bytes: float
    tp_ring_bytes: float
    ep_chapter_bytes: float
    ep_exact_bytes: float


def exercise_2():
    tokens, hidden, k, gpus = 4096, 4096, 2, 8
    s = tokens * hidden * 2  # bf16
    per_gpu = s / gpus  # EP: each GPU holds T / N tokens
    return Exercise2Answer(2 * s, 2 * s * (gpus - 1) / gpus, 2 * k * s / gpus, 2 * k * per_gpu * (gpus - 1) / gpus)
