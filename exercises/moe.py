"""Mixture-of-Experts routing, expert capacity, auxiliary losses, a reference
MoE layer and the expert-parallel dispatch plan.

Arrays go in and come out as numpy arrays, and an implementation may use
numpy or torch inside. The reference solution runs the heavy steps (softmax
and top-k over a million tokens) in torch on zero-copy views of the numpy
buffers, with torch's default CPU thread count.

Shapes use T = num_tokens, E = num_experts, k = top_k, H = hidden size and
F = expert FFN size.

Conventions shared by every function here:

- A routing is two ``(T, k)`` arrays: ``expert_indices`` (int64) and
  ``expert_weights`` (the gate values the layer multiplies expert outputs
  by). Column ``j`` is each token's ``j``-th choice, so column 0 is the
  first choice.
- A choice dropped for lack of capacity has expert index ``-1`` and weight
  ``0``. The layer adds nothing for it, so a token whose every choice was
  dropped gets a zero MoE output and reaches the next layer unchanged through
  the residual connection around the MoE layer.
- Expert parallelism over ``ep`` ranks places tokens and experts in
  contiguous, equal blocks: token ``t`` starts on rank ``t // (T / ep)`` and
  expert ``e`` lives on rank ``e // (E / ep)``.
"""

from __future__ import annotations

import math
import numbers
import warnings
from decimal import Decimal
from fractions import Fraction
from typing import NamedTuple

import numpy as np

DROP_POLICIES = ("position", "probs")


class TopKRouting(NamedTuple):
    """The experts each token is sent to and the gate weight of each copy.

    ``expert_indices``: ``(T, k)`` int64, column ``j`` = each token's ``j``-th
    choice, ``-1`` where a choice was dropped.
    ``expert_weights``: ``(T, k)`` floats, ``0`` where a choice was dropped.
    """

    expert_indices: np.ndarray
    expert_weights: np.ndarray


class DispatchPlan(NamedTuple):
    """Token copies exchanged by the two all-to-alls of an expert-parallel
    MoE layer, as ``(ep, ep)`` int64 matrices.

    ``dispatch_counts[src, dst]``: copies rank ``src`` sends rank ``dst``
    before the experts run. ``combine_counts[src, dst]``: expert outputs rank
    ``src`` returns to rank ``dst`` afterwards; it is the transpose of
    ``dispatch_counts``. The diagonal counts copies that stay on their rank:
    they are part of the plan but cross no link.
    """

    dispatch_counts: np.ndarray
    combine_counts: np.ndarray


# ---------------------------------------------------------------------------
# argument checks (shared, kept out of the exercises' solution regions)


def _check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        accepted = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be {accepted}, got {value}")
    return value


def _float_matrix(name: str, array: object, columns: int | None = None) -> np.ndarray:
    """Return ``array`` as a 2-D float32 or float64 numpy array with >= 1 row."""
    array = np.asarray(array)
    if array.dtype == np.bool_ or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise ValueError(f"{name} must contain real numbers, got dtype {array.dtype}")
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"{name} must have shape (num_tokens >= 1, n >= 1), got {array.shape}")
    if columns is not None and array.shape[1] != columns:
        raise ValueError(f"{name} must have {columns} columns, got shape {array.shape}")
    if array.dtype != np.float32:
        array = array.astype(np.float64, copy=False)
    return array


def _index_matrix(name: str, array: object, num_experts: int) -> np.ndarray:
    """Return ``array`` as a 2-D int64 array with entries in [-1, num_experts)."""
    array = np.asarray(array)
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must contain integers, got dtype {array.dtype}")
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"{name} must have shape (num_tokens >= 1, top_k >= 1), got {array.shape}")
    low, high = int(array.min()), int(array.max())
    if low < -1 or high >= num_experts:
        bad = low if low < -1 else high
        raise ValueError(
            f"{name} entries must be in [-1, num_experts - 1 = {num_experts - 1}] "
            f"(-1 marks a dropped choice), got {bad}"
        )
    return array.astype(np.int64, copy=False)


def _torch_view(array: np.ndarray) -> "torch.Tensor":
    """Return a torch tensor sharing memory with ``array`` (copied only when
    the layout needs it). Nothing here writes through the view. torch is
    imported here, on first use, because importing it costs about a second
    and only the fast paths need it."""
    import torch

    array = np.ascontiguousarray(array)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def _check_rows_have_finite_max(name: str, array: np.ndarray) -> None:
    """Raise unless every row has a finite maximum and no NaN. This rejects
    NaN, +inf and rows of only -inf in one pass (np.max propagates NaN)."""
    row_max = array.max(axis=1)
    bad = ~np.isfinite(row_max)
    if bool(bad.any()):
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name} row {row} has maximum {float(row_max[row])}: every row needs a finite "
            "maximum and no NaN (-inf entries are allowed, +inf is not)"
        )


def _check_capacity_factor(capacity_factor: object) -> None:
    if isinstance(capacity_factor, bool) or not isinstance(
        capacity_factor, (numbers.Real, Decimal)
    ):
        raise ValueError(f"capacity_factor must be a real number, got {capacity_factor!r}")
    if not math.isfinite(capacity_factor) or capacity_factor <= 0:
        raise ValueError(f"capacity_factor must be finite and > 0, got {capacity_factor!r}")


def _check_policy(drop_policy: str) -> None:
    if drop_policy not in DROP_POLICIES:
        raise ValueError(f"drop_policy must be one of {DROP_POLICIES}, got {drop_policy!r}")


def _check_same_tokens(name: str, array: np.ndarray, num_tokens: int) -> None:
    if array.shape[0] != num_tokens:
        raise ValueError(
            f"{name} must have {num_tokens} rows (one per token), got shape {array.shape}"
        )


# ---------------------------------------------------------------------------
# router


def softmax(logits: np.ndarray) -> np.ndarray:
    """Turn router logits into probabilities over experts, row by row.

    ``logits``: ``(T, E)`` real array. Entries may be ``-inf`` (an expert the
    token may not use), but each row needs a finite maximum; NaN and ``+inf``
    raise ``ValueError``.

    Returns ``(T, E)`` probabilities, each row summing to 1 up to rounding:
    float32 for float32 input, float64 otherwise. Large logits such as 1000
    must not overflow, so subtract each row's maximum before exponentiating.
    """
    logits = _float_matrix("logits", logits)
    _check_rows_have_finite_max("logits", logits)

    # Hint: exp(x - max(x)) / sum(exp(x - max(x))) over each row.
    # YOUR CODE HERE
    raise NotImplementedError("replace this line with your implementation")


def top_k_routing(probs: np.ndarray, top_k: int, renormalize: bool = False) -> TopKRouting:
    """Pick each token's ``top_k`` experts with the highest probability.

    ``probs``: ``(T, E)`` router probabilities (any real scores work for the
    selection; NaN raises ``ValueError``). ``top_k``: integer in ``[1, E]``.

    Returns a :class:`TopKRouting`. Row ``t`` of ``expert_indices`` lists the
    chosen experts by decreasing probability. Ties are deterministic: among
    equal probabilities the lower expert index ranks first, both for which
    experts are chosen and for their order. (``torch.topk`` gives no such
    guarantee.) ``expert_weights[t, j] = probs[t, expert_indices[t, j]]``,
    with the dtype of ``probs`` (float32 stays float32, anything else becomes
    float64). With ``renormalize=True`` each row of weights is divided by its
    sum so the ``k`` weights add up to 1; a row whose ``k`` probabilities sum
    to 0 then raises ``ValueError``.
    """
    probs = _float_matrix("probs", probs)
    top_k = _check_int("top_k", top_k, 1, probs.shape[1])
    if bool(np.isnan(probs.max(axis=1)).any()):
        raise ValueError("probs must not contain NaN")

    # Hint: a stable descending sort of each row keeps equal values in index order.
    # YOUR CODE HERE
    raise NotImplementedError("replace this line with your implementation")


# ---------------------------------------------------------------------------
# capacity and token dropping


def expert_capacity(
    num_tokens: int, num_experts: int, top_k: int, capacity_factor: float | Fraction | Decimal
) -> int:
    """Return the number of token slots each expert has:
    ``ceil(top_k * num_tokens * capacity_factor / num_experts)``, computed
    exactly.

    ``num_tokens``, ``num_experts`` >= 1; ``top_k`` in ``[1, num_experts]``;
    ``capacity_factor`` a finite real > 0 (values below 1 are allowed and
    force drops). A float ``capacity_factor`` means the shortest decimal that
    prints as it (``str(float(x))``), so ``1.1`` is exactly 11/10; an int,
    ``Fraction`` or ``Decimal`` is taken exactly. The result is >= 1 and is
    not capped at ``num_tokens``.

    Why exactly: the float 1.1 is slightly above 11/10, so for 100 tokens,
    4 experts and top-2, float arithmetic gives ``ceil(2 * 100 / 4 * 1.1) =
    ceil(55.00000000000001) = 56`` where 55 is meant.

    NOTE: frameworks round differently (checked in their sources):
    Megatron-core ``get_capacity`` (megatron/core/transformer/moe/moe_utils.py)
    computes ``ceil(T * k / E * capacity_factor)`` in float64, optionally
    raised to a minimum. DeepSpeed ``_capacity``
    (deepspeed/moe/sharded_moe.py) computes ``ceil(T / E * capacity_factor *
    k)`` in float and raises it to ``min_capacity``. Tutel ``extract_critical``
    (tutel/impls/fast_dispatch.py) uses ``k * int(capacity_factor *
    ceil(T / E))``, which truncates after rounding T / E up, then pads to an
    alignment. Mesh TensorFlow's MoE layer (mesh_tensorflow/transformer/moe.py,
    the Switch Transformer and GShard-era code) uses ``min(group_size,
    int(group_size * capacity_factor / E))`` per group of tokens: it truncates,
    has no ``k`` factor (the capacity factor absorbs it) and applies a minimum.
    """
    num_tokens = _check_int("num_tokens", num_tokens, 1)
    num_experts = _check_int("num_experts", num_experts, 1)
    top_k = _check_int("top_k", top_k, 1, num_experts)
    _check_capacity_factor(capacity_factor)

    # Hint: fractions.Fraction(str(1.1)) == Fraction(11, 10); math.ceil works on a Fraction.
    # YOUR CODE HERE
    raise NotImplementedError("replace this line with your implementation")


def drop_tokens(
    expert_indices: np.ndarray,
    expert_weights: np.ndarray,
    num_experts: int,
    capacity: int,
    drop_policy: str = "position",
) -> TopKRouting:
    """Keep at most ``capacity`` token copies per expert and drop the rest.

    ``expert_indices``: ``(T, k)`` integers in ``[-1, E)`` (``-1`` = already
    dropped, left as it is). ``expert_weights``: ``(T, k)`` real gate weights.
    ``num_experts`` >= 1, ``capacity`` >= 0.

    Which copies keep their slot when an expert is over capacity:

    - ``"position"``: every first choice outranks every second choice, and
      every second choice outranks every third. Within one choice rank the
      earlier token wins. This is GShard's top-2 order, as in Mesh
      TensorFlow's ``_top_2_gating``, DeepSpeed's ``top2gating`` and Tutel's
      ``extract_critical``. NOTE: DeepSpeed's ``topkgating`` with
      ``drop_policy="position"`` and Megatron-core's ``"position"`` policy
      rank by token position alone, without the choice rank.
    - ``"probs"``: the copies with the highest weight keep their slots, as in
      Megatron-core's default ``"probs"`` policy (which ranks by the weights it
      combines with, renormalised or not). Equal weights: the earlier token
      wins (Megatron-core leaves this tie to ``torch.topk``). NaN weights raise
      ``ValueError``.

    Returns a :class:`TopKRouting` of the same shapes, where a dropped copy
    has index ``-1`` and weight ``0``. Kept weights are returned unchanged,
    not renormalised over the kept copies. Megatron-core does the same, while
    DeepSpeed's gating renormalises them.
    """
    num_experts = _check_int("num_experts", num_experts, 1)
    expert_indices = _index_matrix("expert_indices", expert_indices, num_experts)
    expert_weights = _float_matrix("expert_weights", expert_weights, expert_indices.shape[1])
    _check_same_tokens("expert_weights", expert_weights, expert_indices.shape[0])
    capacity = _check_int("capacity", capacity, 0)
    _check_policy(drop_policy)
    if drop_policy == "probs" and bool(np.isnan(expert_weights).any()):
        raise ValueError("expert_weights must not contain NaN for drop_policy 'probs'")

    # Hint: put the copies in priority order, then count each copy's place
    # among the copies of the same expert (a stable sort by expert does it).
    # YOUR CODE HERE
    raise NotImplementedError("replace this line with your implementation")


def route(
    logits: np.ndarray,
    top_k: int,
    capacity_factor: float | Fraction | None = None,
    drop_policy: str = "position",
    renormalize: bool = False,
) -> TopKRouting:
    """Route tokens: softmax, top-k, then capacity dropping.

    ``logits``: ``(T, E)`` router logits. With ``capacity_factor=None`` no
    copy is dropped; otherwise each expert keeps
    ``expert_capacity(T, E, top_k, capacity_factor)`` copies under
    ``drop_policy``. Renormalisation (if asked for) happens before dropping,
    so a token that loses a copy keeps weights summing to less than 1.
    """
    probs = softmax(logits)
    routing = top_k_routing(probs, top_k, renormalize=renormalize)
    if capacity_factor is None:
        return routing
    num_tokens, num_experts = probs.shape
    capacity = expert_capacity(num_tokens, num_experts, top_k, capacity_factor)
    return drop_tokens(
        routing.expert_indices, routing.expert_weights, num_experts, capacity, drop_policy
    )


# ---------------------------------------------------------------------------
# auxiliary losses


def load_balancing_loss(
    probs: np.ndarray, expert_indices: np.ndarray, first_choice_only: bool = False
) -> float:
    """Return the Switch Transformer load-balancing loss
    ``E * sum_i f_i * P_i`` as a Python float (no loss coefficient applied).

    ``probs``: ``(T, E)`` router probabilities. ``P_i`` is the mean of column
    ``i`` over the ``T`` tokens.
    ``expert_indices``: ``(T, k)`` routing, normally before capacity dropping
    (Switch, DeepSpeed and Megatron-core count the router's choices, not what
    survived); ``-1`` entries count for no expert.

    ``f_i`` is the fraction of routing slots that chose expert ``i``: with
    ``first_choice_only=False`` (Megatron-core, DeepSpeed ``topkgating``) it
    is (copies sent to ``i``) / ``(T * k)``, so the ``f_i`` sum to 1 and a
    perfectly even router scores 1. With ``first_choice_only=True`` (Switch
    for ``k = 1``, GShard, Tutel) only column 0 counts: (first choices of
    ``i``) / ``T``.
    """
    probs = _float_matrix("probs", probs)
    num_experts = probs.shape[1]
    expert_indices = _index_matrix("expert_indices", expert_indices, num_experts)
    _check_same_tokens("expert_indices", expert_indices, probs.shape[0])

    # YOUR CODE HERE
    raise NotImplementedError("replace this line with your implementation")


def router_z_loss(logits: np.ndarray) -> float:
    """Return the ST-MoE router z-loss, the mean over tokens of
    ``logsumexp(logits[t])**2``, as a Python float computed in float64 (no
    loss coefficient applied).

    ``logits``: ``(T, E)``; the same rules as :func:`softmax` apply (each row
    needs a finite maximum). Compute the log-sum-exp stably:
    ``m + log(sum(exp(x - m)))`` with ``m`` the row maximum.
    """
    logits = _float_matrix("logits", logits)
    _check_rows_have_finite_max("logits", logits)

    # YOUR CODE HERE
    raise NotImplementedError("replace this line with your implementation")


# ---------------------------------------------------------------------------
# layer


def moe_layer_forward(
    hidden_states: np.ndarray,
    router_weight: np.ndarray,
    expert_w_in: np.ndarray,
    expert_w_out: np.ndarray,
    top_k: int,
    capacity_factor: float | Fraction | None = None,
    drop_policy: str = "position",
    renormalize: bool = False,
) -> np.ndarray:
    """Run one MoE layer on one process in float64 and return its output.

    ``hidden_states``: ``(T, H)``. ``router_weight``: ``(H, E)``, so the
    router logits are ``hidden_states @ router_weight``. Expert ``e`` is a
    ReLU MLP: ``relu(x @ expert_w_in[e]) @ expert_w_out[e]`` with
    ``expert_w_in`` of shape ``(E, H, F)`` and ``expert_w_out`` ``(E, F, H)``.
    Every array is converted to float64 first.

    Routing is :func:`route` with the given ``top_k``, ``capacity_factor``,
    ``drop_policy`` and ``renormalize``. Output row ``t`` is
    ``sum_j expert_weights[t, j] * expert_{expert_indices[t, j]}(x_t)`` over
    the kept copies: the MoE contribution only, without the residual. A token
    whose every copy was dropped gets a zero row, so the block's residual
    ``x + moe(x)`` passes it through unchanged.

    Returns a ``(T, H)`` float64 array.
    """
    hidden_states = _float_matrix("hidden_states", hidden_states)
    num_tokens, hidden = hidden_states.shape
    router_weight = np.asarray(router_weight)
    expert_w_in = np.asarray(expert_w_in)
    expert_w_out = np.asarray(expert_w_out)
    if router_weight.ndim != 2 or router_weight.shape[0] != hidden or router_weight.shape[1] < 1:
        raise ValueError(
            f"router_weight must have shape (hidden={hidden}, num_experts >= 1), "
            f"got {router_weight.shape}"
        )
    num_experts = router_weight.shape[1]
    if expert_w_in.ndim != 3 or expert_w_in.shape[:2] != (num_experts, hidden):
        raise ValueError(
            f"expert_w_in must have shape (num_experts={num_experts}, hidden={hidden}, ffn), "
            f"got {expert_w_in.shape}"
        )
    ffn = expert_w_in.shape[2]
    if expert_w_out.shape != (num_experts, ffn, hidden):
        raise ValueError(
            f"expert_w_out must have shape ({num_experts}, {ffn}, {hidden}), "
            f"got {expert_w_out.shape}"
        )
    top_k = _check_int("top_k", top_k, 1, num_experts)
    if capacity_factor is not None:
        _check_capacity_factor(capacity_factor)
    _check_policy(drop_policy)

    # Hint: group the kept (token, expert) copies by expert, then run each
    # expert once on all of its tokens.
    # YOUR CODE HERE
    raise NotImplementedError("replace this line with your implementation")


# ---------------------------------------------------------------------------
# expert parallelism


def ep_dispatch_plan(expert_indices: np.ndarray, num_experts: int, ep: int) -> DispatchPlan:
    """Count the token copies each rank sends each other rank in the
    dispatch all-to-all of an expert-parallel MoE layer, and in the combine
    all-to-all that brings the expert outputs back.

    ``expert_indices``: ``(T, k)`` routing after dropping (``-1`` = dropped,
    sends nothing). ``num_experts`` >= 1. ``ep`` >= 1 must divide both ``T``
    and ``num_experts``. Token ``t`` starts on rank ``t // (T / ep)``; expert
    ``e`` lives on rank ``e // (E / ep)``.

    Each kept (token, choice) pair is one copy of the token's hidden vector,
    so a token with two experts on the same rank sends two copies (no
    de-duplication). Returns a :class:`DispatchPlan`: ``dispatch_counts[s,
    d]`` copies go from rank ``s`` to rank ``d``, diagonal included (copies
    that stay local); ``combine_counts`` is its transpose.
    """
    num_experts = _check_int("num_experts", num_experts, 1)
    expert_indices = _index_matrix("expert_indices", expert_indices, num_experts)
    ep = _check_int("ep", ep, 1)
    num_tokens = expert_indices.shape[0]
    if num_tokens % ep:
        raise ValueError(f"ep must divide num_tokens={num_tokens}, got ep={ep}")
    if num_experts % ep:
        raise ValueError(f"ep must divide num_experts={num_experts}, got ep={ep}")

    # YOUR CODE HERE
    raise NotImplementedError("replace this line with your implementation")
