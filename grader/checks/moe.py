"""Checks for ``moe.py``: router, top-k, capacity, dropping, losses, layer, dispatch plan.

Routings are drawn to be hard: probabilities quantised to a few levels (so
ties are common), skewed logits that leave experts empty or send every
token to one expert, ``top_k`` up to the number of experts, capacity factors
below 1 and single tokens.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from reference import moe as ref

from ..checking import CheckFailed, check, run_property
from ..sandbox import Record, Worker
from .values import as_number, call_or_fail, close


def _call(worker: Worker, function: str, *args, context: str, **kwargs):
    return call_or_fail(worker, "moe", function, *args, context=context, **kwargs)


def _array(value, context: str, shape: tuple[int, ...], kind: str) -> np.ndarray:
    """Check a returned array's type, shape and dtype kind ('i' integer, 'f' float)."""
    if not isinstance(value, np.ndarray):
        raise CheckFailed(f"{context} returned {type(value).__name__}; expected a numpy array of shape {shape}")
    if value.shape != shape:
        raise CheckFailed(f"{context} returned shape {value.shape}, expected {shape}")
    if value.dtype.kind not in (kind, "u" if kind == "i" else kind):
        raise CheckFailed(f"{context} returned dtype {value.dtype}, expected {'an integer' if kind == 'i' else 'a float'} dtype")
    return value


def _routing(value, context: str, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(value, Record) or not {"expert_indices", "expert_weights"} <= set(value):
        raise CheckFailed(f"{context} returned {type(value).__name__}; expected TopKRouting(expert_indices, expert_weights)")
    return (_array(value["expert_indices"], f"{context}.expert_indices", shape, "i"),
            _array(value["expert_weights"], f"{context}.expert_weights", shape, "f"))


def _show(array: np.ndarray, limit: int = 6) -> str:
    rows = np.array2string(np.asarray(array)[:limit], precision=4, separator=", ")
    return rows + (" ..." if len(array) > limit else "")


@st.composite
def logits_strategy(draw, max_tokens: int = 12, max_experts: int = 8):
    """Router logits with ties, skew and extreme values mixed in."""
    num_tokens = draw(st.integers(1, max_tokens))
    num_experts = draw(st.integers(1, max_experts))
    style = draw(st.sampled_from(["levels", "skewed", "one_expert", "large"]))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    if style == "levels":
        logits = rng.integers(0, 3, size=(num_tokens, num_experts)).astype(np.float64)
    elif style == "skewed":
        logits = rng.normal(size=(num_tokens, num_experts)) + np.linspace(4, 0, num_experts)
    elif style == "one_expert":
        logits = np.zeros((num_tokens, num_experts))
        logits[:, rng.integers(0, num_experts)] = 10.0
    else:
        logits = rng.normal(scale=300.0, size=(num_tokens, num_experts))
    return logits


def _describe(array: np.ndarray) -> str:
    return f"a {array.shape[0]}x{array.shape[1]} input:\n{_show(array)}"


@check("moe.softmax", modules=("moe",))
def softmax_check(worker: Worker) -> None:
    """Router softmax: rows sum to 1, no overflow on large logits."""
    worker.import_module("moe")

    @given(logits_strategy())
    def softmax_property(logits) -> None:
        context = f"softmax on {_describe(logits)}\n"
        got = _array(_call(worker, "softmax", logits, context=context), context, logits.shape, "f")
        expected = ref.softmax(logits)
        if not np.allclose(got, expected, rtol=1e-9, atol=1e-12):
            hint = None
            if np.allclose(got.sum(axis=0), 1.0) and not np.allclose(got.sum(axis=1), 1.0):
                hint = "softmax over the wrong axis: each token's row must sum to 1, not each expert's column"
            elif not np.all(np.isfinite(got)):
                hint = "exp overflowed: subtract each row's maximum first"
            raise CheckFailed(f"{context}returned\n{_show(got)}\nexpected\n{_show(expected)}", hint)

    run_property(softmax_property, max_examples=50)


@check("moe.top_k_routing", modules=("moe",))
def top_k_check(worker: Worker) -> None:
    """Top-k selection with ties to the lower expert index, optional renormalisation."""
    worker.import_module("moe")

    @given(logits_strategy(), st.data(), st.booleans())
    def top_k_property(logits, data, renormalize) -> None:
        probs = ref.softmax(logits)
        top_k = data.draw(st.integers(1, probs.shape[1]), label="top_k")
        context = f"top_k_routing(top_k={top_k}, renormalize={renormalize}) on probabilities {_describe(probs)}\n"
        indices, weights = _routing(_call(worker, "top_k_routing", probs, top_k, renormalize, context=context),
                                    context, (probs.shape[0], top_k))
        expected = ref.top_k_routing(probs, top_k, renormalize)
        if not np.array_equal(indices, expected.expert_indices):
            row = int(np.flatnonzero((indices != expected.expert_indices).any(axis=1))[0])
            hint = None
            if set(indices[row]) == set(expected.expert_indices[row]):
                hint = "equal probabilities must rank the lower expert index first"
            raise CheckFailed(f"{context}token {row} chose experts {indices[row].tolist()}, "
                              f"expected {expected.expert_indices[row].tolist()}", hint)
        if not np.allclose(weights, expected.expert_weights, rtol=1e-9, atol=1e-12):
            hint = None
            if renormalize and np.allclose(weights, np.take_along_axis(probs, indices, axis=1)):
                hint = "top-k weights not renormalised: divide each token's k weights by their sum"
            raise CheckFailed(f"{context}weights\n{_show(weights)}\nexpected\n{_show(expected.expert_weights)}", hint)

    run_property(top_k_property, max_examples=60)


CAPACITY_FACTORS = [Fraction(1, 2), Fraction(1), Fraction(11, 10), Fraction(5, 4), Fraction(3, 2), Fraction(2),
                    Fraction(7, 10), Fraction(6, 5)]


@check("moe.expert_capacity", modules=("moe",))
def capacity_check(worker: Worker) -> None:
    """Capacity = ceil(k * T * capacity_factor / E), exactly."""
    worker.import_module("moe")

    @given(st.integers(1, 10**6), st.integers(1, 512), st.integers(1, 8), st.sampled_from(CAPACITY_FACTORS))
    def capacity_property(num_tokens, num_experts, top_k, factor) -> None:
        top_k = min(top_k, num_experts)
        capacity_factor = float(factor)
        context = (f"expert_capacity(num_tokens={num_tokens}, num_experts={num_experts}, "
                   f"top_k={top_k}, capacity_factor={capacity_factor})")
        got = _call(worker, "expert_capacity", num_tokens, num_experts, top_k, capacity_factor, context=context)
        expected = ref.expert_capacity(num_tokens, num_experts, top_k, capacity_factor)
        if type(got) is not int or got != expected:
            exact = Fraction(top_k * num_tokens) * factor / num_experts
            hint = None
            if got == math.floor(exact) and exact != math.floor(exact):
                hint = "floor instead of ceil: a fractional slot still needs a whole slot"
            elif got == math.ceil(top_k * num_tokens * capacity_factor / num_experts):
                hint = (f"floating point: {top_k} * {num_tokens} * {capacity_factor} / {num_experts} is "
                        f"exactly {exact}, but float arithmetic lands just above it")
            raise CheckFailed(f"{context} returned {got!r}, expected {expected}", hint)

    run_property(capacity_property, max_examples=80)


@st.composite
def routings(draw):
    """Draw a (T, k) routing with skew and ties, its weights and a capacity."""
    logits = draw(logits_strategy(max_tokens=16, max_experts=6))
    num_experts = logits.shape[1]
    top_k = draw(st.integers(1, num_experts))
    routing = ref.top_k_routing(ref.softmax(logits), top_k)
    weights = routing.expert_weights
    if draw(st.booleans()):
        weights = np.round(weights * 4) / 4  # coarse weights: many equal values
    capacity = draw(st.integers(0, max(1, logits.shape[0] * top_k // num_experts + 1)))
    return routing.expert_indices, weights, num_experts, capacity


@check("moe.drop_tokens", modules=("moe",))
def drop_tokens_check(worker: Worker) -> None:
    """Capacity dropping under the "position" and "probs" policies."""
    worker.import_module("moe")

    @given(routings(), st.sampled_from(list(ref.DROP_POLICIES)))
    def drop_property(routing, policy) -> None:
        indices, weights, num_experts, capacity = routing
        context = (f"drop_tokens(num_experts={num_experts}, capacity={capacity}, drop_policy={policy!r}) on "
                   f"expert_indices\n{_show(indices)}\nexpert_weights\n{_show(weights)}\n")
        got_indices, got_weights = _routing(
            _call(worker, "drop_tokens", indices, weights, num_experts, capacity, policy, context=context),
            context, indices.shape)
        expected = ref.drop_tokens(indices, weights, num_experts, capacity, policy)
        if np.array_equal(got_indices, expected.expert_indices) and np.allclose(got_weights, expected.expert_weights):
            return
        hint = None
        other = "probs" if policy == "position" else "position"
        if np.array_equal(got_indices, ref.drop_tokens(indices, weights, num_experts, capacity, other).expert_indices):
            hint = f"this is the {other!r} policy's result"
        elif policy == "position":
            reversed_order = ref.drop_tokens(indices[::-1], weights[::-1], num_experts, capacity, policy)
            if np.array_equal(got_indices, reversed_order.expert_indices[::-1]):
                hint = "drop order reversed: within a choice rank the earlier token keeps its slot"
        raise CheckFailed(f"{context}returned expert_indices\n{_show(got_indices)}\nexpected\n"
                          f"{_show(expected.expert_indices)}", hint)

    run_property(drop_property, max_examples=60)


@check("moe.auxiliary_losses", modules=("moe",))
def losses_check(worker: Worker) -> None:
    """Switch load-balancing loss (both f_i conventions) and router z-loss."""
    worker.import_module("moe")

    @given(logits_strategy(), st.data(), st.booleans())
    def loss_property(logits, data, first_choice_only) -> None:
        probs = ref.softmax(logits)
        top_k = data.draw(st.integers(1, probs.shape[1]), label="top_k")
        indices = ref.top_k_routing(probs, top_k).expert_indices
        context = (f"load_balancing_loss(first_choice_only={first_choice_only}) with top_k={top_k} on "
                   f"probabilities {_describe(probs)}\n")
        got = as_number(_call(worker, "load_balancing_loss", probs, indices, first_choice_only, context=context),
                        context)
        expected = ref.load_balancing_loss(probs, indices, first_choice_only)
        if not close(got, expected, rel=1e-9, abs_tol=1e-12):
            hint = None
            if probs.shape[1] > 1 and close(got * probs.shape[1], expected, rel=1e-9):
                hint = "the loss is multiplied by the number of experts E, so a uniform router scores 1"
            raise CheckFailed(f"{context}returned {got:.6g}, expected {expected:.6g}", hint)

        context = f"router_z_loss on {_describe(logits)}\n"
        got = as_number(_call(worker, "router_z_loss", logits, context=context), context)
        expected = ref.router_z_loss(logits)
        if not close(got, expected, rel=1e-9, abs_tol=1e-12):
            raise CheckFailed(f"{context}returned {got:.6g}, expected {expected:.6g}")

    run_property(loss_property, max_examples=40)


@check("moe.layer_forward", modules=("moe",))
def layer_forward_check(worker: Worker) -> None:
    """Dense MoE layer forward in float64, with and without capacity dropping."""
    worker.import_module("moe")

    @given(st.integers(1, 10), st.integers(1, 5), st.integers(1, 6), st.integers(1, 6), st.data())
    def layer_property(num_tokens, num_experts, hidden, ffn, data) -> None:
        rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1), label="seed"))
        top_k = data.draw(st.integers(1, num_experts), label="top_k")
        capacity_factor = data.draw(st.sampled_from([None, 0.5, 1.0, 2.0]), label="capacity_factor")
        policy = data.draw(st.sampled_from(list(ref.DROP_POLICIES)), label="drop_policy")
        renormalize = data.draw(st.booleans(), label="renormalize")
        x = rng.normal(size=(num_tokens, hidden))
        router = rng.normal(size=(hidden, num_experts))
        w_in = rng.normal(size=(num_experts, hidden, ffn))
        w_out = rng.normal(size=(num_experts, ffn, hidden))
        context = (f"moe_layer_forward(T={num_tokens}, E={num_experts}, H={hidden}, F={ffn}, top_k={top_k}, "
                   f"capacity_factor={capacity_factor}, drop_policy={policy!r}, renormalize={renormalize})")
        got = _array(_call(worker, "moe_layer_forward", x, router, w_in, w_out, top_k, capacity_factor, policy,
                           renormalize, context=context), context, (num_tokens, hidden), "f")
        expected = ref.moe_layer_forward(x, router, w_in, w_out, top_k, capacity_factor, policy, renormalize)
        if not np.allclose(got, expected, rtol=1e-9, atol=1e-9):
            row = int(np.flatnonzero(~np.isclose(got, expected, rtol=1e-9, atol=1e-9).all(axis=1))[0])
            raise CheckFailed(f"{context}: token {row} gets {_show(got[row:row + 1])}, expected "
                              f"{_show(expected[row:row + 1])}")

    run_property(layer_property, max_examples=40)


@check("moe.ep_dispatch_plan", modules=("moe",))
def dispatch_plan_check(worker: Worker) -> None:
    """Token copies each EP rank sends each other rank, and the combine that returns them."""
    worker.import_module("moe")

    @given(st.sampled_from([1, 2, 4]), st.integers(1, 4), st.integers(1, 4), st.data())
    def plan_property(ep, tokens_per_rank, experts_per_rank, data) -> None:
        num_tokens, num_experts = ep * tokens_per_rank, ep * experts_per_rank
        top_k = data.draw(st.integers(1, num_experts), label="top_k")
        rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1), label="seed"))
        skew = data.draw(st.booleans(), label="skewed")
        scores = rng.normal(size=(num_tokens, num_experts)) + (np.linspace(3, 0, num_experts) if skew else 0)
        indices = ref.top_k_routing(scores, top_k).expert_indices
        if data.draw(st.booleans(), label="some dropped"):
            indices = indices.copy()
            indices[rng.random(indices.shape) < 0.3] = -1
        context = f"ep_dispatch_plan(num_experts={num_experts}, ep={ep}) on expert_indices\n{_show(indices)}\n"
        value = _call(worker, "ep_dispatch_plan", indices, num_experts, ep, context=context)
        if not isinstance(value, Record) or not {"dispatch_counts", "combine_counts"} <= set(value):
            raise CheckFailed(f"{context}expected DispatchPlan(dispatch_counts, combine_counts)")
        dispatch = _array(value["dispatch_counts"], f"{context}dispatch_counts", (ep, ep), "i")
        combine = _array(value["combine_counts"], f"{context}combine_counts", (ep, ep), "i")
        expected = ref.ep_dispatch_plan(indices, num_experts, ep)
        if not np.array_equal(dispatch, expected.dispatch_counts):
            hint = None
            if np.array_equal(dispatch, expected.dispatch_counts.T) and ep > 1:
                hint = "send counts transposed: row s, column d counts copies rank s sends to rank d"
            raise CheckFailed(f"{context}dispatch_counts\n{dispatch}\nexpected\n{expected.dispatch_counts}", hint)
        if not np.array_equal(combine, expected.combine_counts):
            raise CheckFailed(f"{context}combine_counts\n{combine}\nexpected\n{expected.combine_counts} "
                              "(the combine returns every copy to its token's rank)")

    run_property(plan_property, max_examples=50)
