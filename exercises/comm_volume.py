"""Bytes each GPU sends in the collectives of tensor, expert, pipeline and
data parallelism.

Every figure is bytes *sent by one GPU* (a rank), counting only data that
leaves the GPU: a rank's own share of an all-to-all stays local and is not
counted. Collectives are the bandwidth-optimal ring (all-reduce,
reduce-scatter, all-gather) and the direct all-to-all, as in NCCL.

Symbols: T tokens, H hidden size, b bytes per element (2 for bf16), k experts
per token (``top_k``), ``S = T * H * b`` bytes (one activation tensor of the
T tokens), ``n`` ranks in the group.

Two kinds of formulas sit side by side:

- the chapter's approximations: TP ``2S`` per MoE layer pass, EP ``2kS/N``
  with ``N`` the number of GPUs in the EP group (not the number of experts);
- the exact figures: ring all-reduce ``2(n-1)/n * S`` for TP, and
  ``2 * k * (T/N) * H * b * (N-1)/N`` for EP under uniform routing, or the
  per-rank figure measured from a real routing's dispatch plan.

``passes`` is ``"forward"`` (one forward pass of the layer) or
``"forward_backward"`` (the backward pass repeats the same collectives on
gradients of the same size, so the figure doubles).
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import numpy as np

PASSES = ("forward", "forward_backward")


class EPVolume(NamedTuple):
    """Bytes each rank sends in one MoE layer under expert parallelism.

    ``per_rank_bytes``: ``(ep,)`` float64, bytes rank ``r`` sends.
    ``max_bytes``: the largest entry (the rank that sets the step time).
    ``mean_bytes``: the mean over ranks.
    """

    per_rank_bytes: np.ndarray
    max_bytes: float
    mean_bytes: float


class Exercise2Volumes(NamedTuple):
    """Bytes each GPU sends per MoE layer forward pass in the chapter's
    Exercise 2 (64 experts, top-2, hidden 4096, 4 x 1024 tokens, bf16, 8 GPUs).

    ``tp_chapter_bytes``: TP-8, the chapter's ``2S``.
    ``tp_ring_bytes``: TP-8, exact ring all-reduce ``2 (8-1)/8 * S``.
    ``ep_chapter_bytes``: EP-8, the chapter's ``2kS/N`` with ``N = 8`` GPUs.
    ``ep_exact_bytes``: EP-8, both all-to-alls without the local share.
    """

    tp_chapter_bytes: float
    tp_ring_bytes: float
    ep_chapter_bytes: float
    ep_exact_bytes: float


# ---------------------------------------------------------------------------
# argument checks (shared, kept out of the exercises' solution regions)


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_size(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return value


def _check_passes(passes: str) -> None:
    if passes not in PASSES:
        raise ValueError(f"passes must be one of {PASSES}, got {passes!r}")


# ---------------------------------------------------------------------------
# collectives


def ring_all_reduce_bytes(message_bytes: float, world_size: int) -> float:
    """Return the bytes each rank sends in a ring all-reduce of a
    ``message_bytes`` buffer over ``world_size`` ranks: ``2 (n-1)/n * S``
    (a reduce-scatter then an all-gather, each moving ``(n-1)/n * S``).
    ``message_bytes`` >= 0, ``world_size`` >= 1; one rank sends 0.
    """
    message_bytes = _check_size("message_bytes", message_bytes)
    n = _check_int("world_size", world_size, 1)
    # YOUR CODE HERE
    raise NotImplementedError("replace this line with your implementation")


def reduce_scatter_bytes(message_bytes: float, world_size: int) -> float:
    """Return the bytes each rank sends in a ring reduce-scatter:
    ``(n-1)/n * S``, where ``S = message_bytes`` is the full buffer each rank
    contributes (each rank ends with ``S / n`` of the reduced result).
    """
    message_bytes = _check_size("message_bytes", message_bytes)
    n = _check_int("world_size", world_size, 1)
    # YOUR CODE HERE
    raise NotImplementedError("replace this line with your implementation")


def all_gather_bytes(message_bytes: float, world_size: int) -> float:
    """Return the bytes each rank sends in a ring all-gather:
    ``(n-1)/n * S``, where ``S = message_bytes`` is the full gathered buffer
    (each rank starts with ``S / n`` of it).
    """
    message_bytes = _check_size("message_bytes", message_bytes)
    n = _check_int("world_size", world_size, 1)
    # YOUR CODE HERE
    raise NotImplementedError("replace this line with your implementation")


def all_to_all_bytes(message_bytes: float, world_size: int) -> float:
    """Return the bytes each rank sends in an all-to-all where each rank's
    send buffer of ``message_bytes`` is split evenly over the ``n`` ranks:
    ``(n-1)/n * S``. The ``1/n`` share addressed to the rank itself stays
    local and is not counted.
    """
    message_bytes = _check_size("message_bytes", message_bytes)
    n = _check_int("world_size", world_size, 1)
    # YOUR CODE HERE
    raise NotImplementedError("replace this line with your implementation")


# ---------------------------------------------------------------------------
# MoE layer: tensor parallelism


def activation_bytes(num_tokens: int, hidden: int, bytes_per_element: float) -> float:
    """Return ``S = num_tokens * hidden * bytes_per_element``, the bytes of one
    activation tensor (for example the MoE layer's output) over those tokens."""
    num_tokens = _check_int("num_tokens", num_tokens, 1)
    hidden = _check_int("hidden", hidden, 1)
    bytes_per_element = _check_size("bytes_per_element", bytes_per_element)
    # YOUR CODE HERE
    raise NotImplementedError("replace this line with your implementation")


def tp_moe_layer_bytes(
    num_tokens: int, hidden: int, bytes_per_element: float, tp: int, passes: str = "forward"
) -> float:
    """Return the exact bytes each GPU sends for one MoE layer under ``tp``-way
    tensor parallelism.

    Every TP rank has all ``num_tokens`` tokens, and each expert's weights
    are split over the ranks, so the layer output (``S`` bytes, see
    :func:`activation_bytes`) is summed with one ring all-reduce in the
    forward pass, ``2 (tp-1)/tp * S``. The backward pass all-reduces the
    input gradient, of the same size, once more.
    """
    S = activation_bytes(num_tokens, hidden, bytes_per_element)
    tp = _check_int("tp", tp, 1)
    _check_passes(passes)
    # YOUR CODE HERE
    raise NotImplementedError("replace this line with your implementation")


def tp_moe_layer_bytes_chapter(
    num_tokens: int, hidden: int, bytes_per_element: float, passes: str = "forward"
) -> float:
    """Return the chapter's approximation of the bytes each GPU sends for one
    MoE layer under tensor parallelism: ``2S`` per pass, the ring all-reduce
    with the ``(n-1)/n`` factor taken as 1. It does not depend on the TP
    degree.
    """
    S = activation_bytes(num_tokens, hidden, bytes_per_element)
    _check_passes(passes)
    # YOUR CODE HERE
    raise NotImplementedError("replace this line with your implementation")


# ---------------------------------------------------------------------------
# MoE layer: expert parallelism


def ep_moe_layer_bytes(
    num_tokens: int,
    hidden: int,
    bytes_per_element: float,
    top_k: int,
    ep: int,
    passes: str = "forward",
) -> float:
    """Return the exact bytes each GPU sends for one MoE layer under
    ``ep``-way expert parallelism with uniform routing.

    ``num_tokens`` is T, the tokens of the whole EP group. Each rank has
    ``T / ep`` of them, because outside the experts the EP ranks act as
    data-parallel ranks. Each token sends ``top_k`` copies of its ``hidden`` vector in the
    dispatch all-to-all and gets ``top_k`` outputs back in the combine
    all-to-all. Uniform routing spreads the copies evenly over the ranks, and
    the ``1/ep`` that stays local is not counted:
    ``2 * top_k * (T/ep) * hidden * b * (ep-1)/ep`` per forward pass. The
    backward pass runs both all-to-alls again on gradients.
    """
    S = activation_bytes(num_tokens, hidden, bytes_per_element)
    top_k = _check_int("top_k", top_k, 1)
    ep = _check_int("ep", ep, 1)
    _check_passes(passes)
    # YOUR CODE HERE
    raise NotImplementedError("replace this line with your implementation")


def ep_moe_layer_bytes_chapter(
    num_tokens: int,
    hidden: int,
    bytes_per_element: float,
    top_k: int,
    ep: int,
    passes: str = "forward",
) -> float:
    """Return the chapter's approximation ``2kS/N`` of the bytes each GPU
    sends for one MoE layer under expert parallelism, per pass.

    ``N = ep`` is the number of GPUs in the EP group, not the number of
    experts. ``S`` covers all ``num_tokens`` tokens of the group (see
    :func:`activation_bytes`). The exact figure (:func:`ep_moe_layer_bytes`)
    is this times ``(ep-1)/ep``.
    """
    S = activation_bytes(num_tokens, hidden, bytes_per_element)
    top_k = _check_int("top_k", top_k, 1)
    ep = _check_int("ep", ep, 1)
    _check_passes(passes)
    # YOUR CODE HERE
    raise NotImplementedError("replace this line with your implementation")


def ep_moe_layer_bytes_from_plan(
    dispatch_counts: np.ndarray, hidden: int, bytes_per_element: float, passes: str = "forward"
) -> EPVolume:
    """Return the bytes each rank sends for one MoE layer, measured from a
    real routing's dispatch plan.

    ``dispatch_counts``: ``(ep, ep)`` non-negative integers,
    ``[src, dst]`` = token copies rank ``src`` sends rank ``dst`` (as
    ``reference.moe.ep_dispatch_plan`` returns; the combine all-to-all is its
    transpose). Each copy is ``hidden * bytes_per_element`` bytes. Rank ``r``
    sends its off-diagonal row in the dispatch and its off-diagonal column in
    the combine; the diagonal stays local. ``"forward_backward"`` doubles
    every figure.

    Returns an :class:`EPVolume` (bytes per rank, their maximum and mean).
    """
    counts = np.asarray(dispatch_counts)
    if (
        counts.ndim != 2
        or counts.shape[0] != counts.shape[1]
        or counts.shape[0] < 1
        or counts.dtype == np.bool_
        or not np.issubdtype(counts.dtype, np.integer)
    ):
        raise ValueError(
            f"dispatch_counts must be a square (ep, ep) integer array, got shape "
            f"{counts.shape} and dtype {counts.dtype}"
        )
    if counts.min() < 0:
        raise ValueError(f"dispatch_counts must be >= 0, got minimum {counts.min()}")
    hidden = _check_int("hidden", hidden, 1)
    bytes_per_element = _check_size("bytes_per_element", bytes_per_element)
    _check_passes(passes)
    # YOUR CODE HERE
    raise NotImplementedError("replace this line with your implementation")


# ---------------------------------------------------------------------------
# pipeline and data parallelism


def pipeline_p2p_bytes(
    num_tokens: int,
    hidden: int,
    bytes_per_element: float,
    num_microbatches: int = 1,
    passes: str = "forward",
) -> float:
    """Return the bytes that cross one pipeline stage boundary in one
    training step.

    ``num_tokens`` is the tokens of one microbatch; each microbatch's
    activation (``num_tokens * hidden * bytes_per_element`` bytes) goes
    forward across the boundary once. ``"forward_backward"`` adds the
    gradient of the same size going back. An interior stage sends the
    forward activations to the next stage and the gradients to the previous
    one, so it sends this many bytes too. The first stage sends only
    activations, and the last stage only gradients.
    """
    S = activation_bytes(num_tokens, hidden, bytes_per_element)
    num_microbatches = _check_int("num_microbatches", num_microbatches, 1)
    _check_passes(passes)
    # YOUR CODE HERE
    raise NotImplementedError("replace this line with your implementation")


def dp_gradient_all_reduce_bytes(num_parameters: int, bytes_per_element: float, dp: int) -> float:
    """Return the bytes each data-parallel rank sends to all-reduce the
    gradients of ``num_parameters`` parameters (``bytes_per_element`` bytes
    each) with a ring over ``dp`` ranks: ``2 (dp-1)/dp * P * b``.
    """
    num_parameters = _check_int("num_parameters", num_parameters, 0)
    bytes_per_element = _check_size("bytes_per_element", bytes_per_element)
    dp = _check_int("dp", dp, 1)
    # YOUR CODE HERE
    raise NotImplementedError("replace this line with your implementation")


# ---------------------------------------------------------------------------
# the chapter's Exercise 2


def exercise_2_volumes() -> Exercise2Volumes:
    """Return the bytes each GPU sends per MoE layer forward pass in the
    chapter's Exercise 2, as 8-way TP and as 8-way EP. The layer has 64
    experts and top-2 routing, hidden size 4096 and a batch of 4 x 1024
    tokens in bf16 (2 bytes), on 8 GPUs.

    TP-8: every GPU has all the tokens, and the layer output is all-reduced.
    EP-8: the tokens are split over the 8 GPUs. Dispatch and combine are two
    all-to-alls. Build each figure from the general functions of this
    module.
    """
    # YOUR CODE HERE
    raise NotImplementedError("replace this line with your implementation")
