"""Answers to the chapter's "Try It Yourself" exercises, as values the grader reads.

Each function returns a named tuple. Give numbers as Python ``int`` or
``float`` (a fraction such as ``3 / 19`` is fine); floats are compared with a
relative tolerance of 1e-6, so round nothing.
"""

from __future__ import annotations

from typing import NamedTuple


class Exercise1Answer(NamedTuple):
    """Exercise 1: a pipeline of P = 4 stages running M = 16 microbatches.

    Stage times are uniform and communication is free.

    - ``gpipe_bubble_fraction``: idle share of total time with naive (GPipe)
      scheduling.
    - ``one_f_one_b_bubble_fraction``: the same with 1F1B scheduling.
    - ``gpipe_peak_activations``: microbatches whose activations the first
      stage (rank 0) holds at once under GPipe.
    - ``one_f_one_b_peak_activations``: the same under 1F1B.
    - ``interleaved_bubble_fraction``: idle share with interleaved 1F1B and
      v = 2 chunks per rank.
    """

    gpipe_bubble_fraction: float
    one_f_one_b_bubble_fraction: float
    gpipe_peak_activations: int
    one_f_one_b_peak_activations: int
    interleaved_bubble_fraction: float


def exercise_1() -> Exercise1Answer:
    """Return the answers to Exercise 1 (P = 4, M = 16, v = 2 for interleaving)."""
    # Hint: compute each value from its formula; do not round.
    # YOUR CODE HERE
    raise NotImplementedError("replace this line with your implementation")
