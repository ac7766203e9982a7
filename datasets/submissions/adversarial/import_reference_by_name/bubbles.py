"""Delegates every closed form to reference.bubbles, imported by name in each call."""

from __future__ import annotations

import importlib


def bubble_fraction(schedule, num_stages, num_microbatches, num_chunks=1, *,
                    forward_time=1.0, backward_time=1.0, weight_time=1.0):
    from reference import bubbles as ref  # Attack: copy the instructor's answer.

    return ref.bubble_fraction(schedule, num_stages, num_microbatches, num_chunks,
                               forward_time=forward_time, backward_time=backward_time,
                               weight_time=weight_time)


def bubble_overhead(schedule, num_stages, num_microbatches, num_chunks=1, *,
                    forward_time=1.0, backward_time=1.0, weight_time=1.0):
    ref = importlib.import_module("reference.bubbles")  # Attack, through importlib.
    return ref.bubble_overhead(schedule, num_stages, num_microbatches, num_chunks,
                               forward_time=forward_time, backward_time=backward_time,
                               weight_time=weight_time)


def peak_activations(schedule, num_stages, num_microbatches, num_chunks=1, pp_rank=0):
    ref = __import__("grader.checks.bubbles", fromlist=["ref"]).ref  # Attack, via the check.
    return ref.peak_activations(schedule, num_stages, num_microbatches, num_chunks, pp_rank)
