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
    ### BEGIN SOLUTION
    num_stages, num_microbatches, num_chunks = 4, 16, 2
    bubble = (num_stages - 1) / (num_microbatches + num_stages - 1)
    return Exercise1Answer(
        gpipe_bubble_fraction=bubble,
        one_f_one_b_bubble_fraction=bubble,
        gpipe_peak_activations=num_microbatches,
        one_f_one_b_peak_activations=num_stages,
        interleaved_bubble_fraction=(num_stages - 1)
        / (num_chunks * num_microbatches + num_stages - 1),
    )
    ### END SOLUTION


class Exercise2Answer(NamedTuple):
    """Exercise 2: bytes each GPU sends in one MoE layer's forward pass.

    The layer has 64 experts with top-2 routing (k = 2), hidden size 4096,
    and a batch of 4 x 1024 = 4096 tokens in bf16 (2 bytes per element), on
    8 GPUs. Count only what a GPU sends during the forward pass (no backward
    pass), in bytes, and leave out data a GPU keeps for itself.

    - TP-8 (each expert's weights split over the 8 GPUs): every GPU holds
      all T tokens and the layer output, ``S = T x hidden x 2`` bytes, is
      summed with one all-reduce.
      ``tp_chapter_bytes``: the chapter's 2S.
      ``tp_ring_bytes``: a ring all-reduce over 8 GPUs, 2 (8 - 1) / 8 x S.
    - EP-8 (8 whole experts per GPU): outside the experts the GPUs act as
      data-parallel ranks, so each holds T / 8 tokens. Each token goes to k
      experts in the dispatch all-to-all and comes back in the combine
      all-to-all.
      ``ep_chapter_bytes``: the chapter's 2kS/N, where N is the number of
      GPUs in the expert-parallel group.
      ``ep_exact_bytes``: the same traffic under uniform routing without the
      1/N of copies that stay on their own GPU.
    """

    tp_chapter_bytes: float
    tp_ring_bytes: float
    ep_chapter_bytes: float
    ep_exact_bytes: float


def exercise_2() -> Exercise2Answer:
    """Return the answers to Exercise 2 (bytes per GPU per MoE layer forward pass)."""
    # Hint: start from S = 4 * 1024 * 4096 * 2 bytes.
    ### BEGIN SOLUTION
    num_tokens, hidden, bytes_per_element, top_k, gpus = 4 * 1024, 4096, 2, 2, 8
    S = num_tokens * hidden * bytes_per_element
    return Exercise2Answer(
        tp_chapter_bytes=2 * S,
        tp_ring_bytes=2 * (gpus - 1) / gpus * S,
        ep_chapter_bytes=2 * top_k * S / gpus,
        ep_exact_bytes=2 * top_k * (S / gpus) * (gpus - 1) / gpus,
    )
    ### END SOLUTION


class Exercise3Answer(NamedTuple):
    """Exercise 3: a parallel configuration for training a 70B dense model.

    The model is Llama-2-70B's shape (80 layers, hidden size 8192, 64
    attention heads with 8 key/value heads, MLP width 28672, vocabulary
    32000). The cluster is 64 H100 80 GB GPUs, 8 per node, NVLink inside a
    node. Each training step takes 1024 sequences of 4096 tokens in
    microbatches of 1 sequence, in bf16 mixed precision with Adam, ZeRO
    stage 1, sequence parallelism and selective recomputation.

    - ``tp``, ``pp``, ``dp``: tensor-, pipeline- and data-parallel degrees,
      with ``tp * pp * dp == 64``.
    - ``ep``: expert-parallel degree (1: the model has no experts).
    - ``num_chunks``: model chunks per pipeline rank (1 for plain 1F1B,
      more for interleaved 1F1B).

    The grader checks every rule of ``strategy.validate_config`` (the
    configuration must fit in 80 GB under pplab's memory model) and compares
    the estimated step time of ``strategy.estimate_step_time`` with the best
    configuration pplab's search finds.
    """

    tp: int
    pp: int
    dp: int
    ep: int = 1
    num_chunks: int = 1


def exercise_3() -> Exercise3Answer:
    """Return your parallel configuration for Exercise 3."""
    # Hint: TP within a node, PP across nodes, DP for the rest; then check the
    # memory per GPU with your own strategy.stage_memory.
    ### BEGIN SOLUTION
    return Exercise3Answer(tp=2, pp=8, dp=4)
    ### END SOLUTION
