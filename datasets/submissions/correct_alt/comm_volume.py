"""Communication volumes, each written out from its formula."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class EPVolume(NamedTuple):
    per_rank_bytes: np.ndarray
    max_bytes: float
    mean_bytes: float


class Exercise2Volumes(NamedTuple):
    tp_chapter_bytes: float
    tp_ring_bytes: float
    ep_chapter_bytes: float
    ep_exact_bytes: float


def _passes(passes):
    return 1 if passes == "forward" else 2


def ring_all_reduce_bytes(message_bytes, world_size):
    return 2.0 * message_bytes * (world_size - 1) / world_size


def reduce_scatter_bytes(message_bytes, world_size):
    return message_bytes * (world_size - 1) / world_size


def all_gather_bytes(message_bytes, world_size):
    return message_bytes * (world_size - 1) / world_size


def all_to_all_bytes(message_bytes, world_size):
    return message_bytes * (world_size - 1) / world_size


def activation_bytes(num_tokens, hidden, bytes_per_element):
    return float(num_tokens * hidden * bytes_per_element)


def tp_moe_layer_bytes(num_tokens, hidden, bytes_per_element, tp, passes="forward"):
    return _passes(passes) * 2.0 * (tp - 1) / tp * num_tokens * hidden * bytes_per_element


def tp_moe_layer_bytes_chapter(num_tokens, hidden, bytes_per_element, passes="forward"):
    return _passes(passes) * 2.0 * num_tokens * hidden * bytes_per_element


def ep_moe_layer_bytes(num_tokens, hidden, bytes_per_element, top_k, ep, passes="forward"):
    local_tokens = num_tokens / ep
    return _passes(passes) * 2.0 * top_k * local_tokens * hidden * bytes_per_element * (ep - 1) / ep


def ep_moe_layer_bytes_chapter(num_tokens, hidden, bytes_per_element, top_k, ep, passes="forward"):
    return _passes(passes) * 2.0 * top_k * num_tokens * hidden * bytes_per_element / ep


def ep_moe_layer_bytes_from_plan(dispatch_counts, hidden, bytes_per_element, passes="forward"):
    counts = np.asarray(dispatch_counts, dtype=np.float64)
    off_diagonal = counts - np.diag(np.diag(counts))
    copies = off_diagonal.sum(axis=1) + off_diagonal.sum(axis=0)
    per_rank = _passes(passes) * copies * hidden * bytes_per_element
    return EPVolume(per_rank, float(per_rank.max()), float(per_rank.mean()))


def pipeline_p2p_bytes(num_tokens, hidden, bytes_per_element, num_microbatches=1, passes="forward"):
    return float(_passes(passes) * num_microbatches * num_tokens * hidden * bytes_per_element)


def dp_gradient_all_reduce_bytes(num_parameters, bytes_per_element, dp):
    return ring_all_reduce_bytes(float(num_parameters * bytes_per_element), dp)


def exercise_2_volumes():
    s = 4 * 1024 * 4096 * 2
    return Exercise2Volumes(2.0 * s, 2.0 * s * 7 / 8, 2.0 * 2 * s / 8, 2.0 * 2 * (s / 8) * 7 / 8)
