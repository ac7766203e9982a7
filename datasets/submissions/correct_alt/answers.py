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
