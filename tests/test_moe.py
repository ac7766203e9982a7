"""Tests of reference.moe against brute-force per-token loops written here."""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reference import moe

SETTINGS = settings(derandomize=True, database=None, deadline=None, max_examples=40)


# ---------------------------------------------------------------------------
# brute-force references (one token, one choice at a time)


def brute_softmax(row: list[float]) -> list[float]:
    top = max(row)
    exps = [0.0 if x == -math.inf else math.exp(x - top) for x in row]
    total = math.fsum(exps)
    return [e / total for e in exps]


def brute_top_k(row: list[float], top_k: int) -> list[int]:
    """Experts by decreasing value, lower index first among equal values."""
    return sorted(range(len(row)), key=lambda e: (-row[e], e))[:top_k]


def brute_drop(indices, weights, num_experts, capacity, policy):
    """Return the keep mask, deciding one (token, choice) copy at a time."""
    num_tokens, top_k = len(indices), len(indices[0])
    keep = [[False] * top_k for _ in range(num_tokens)]
    if policy == "position":
        used = [0] * num_experts
        for choice in range(top_k):
            for token in range(num_tokens):
                expert = indices[token][choice]
                if expert >= 0 and used[expert] < capacity:
                    used[expert] += 1
                    keep[token][choice] = True
        return keep
    for expert in range(num_experts):
        copies = [
            (-weights[t][j], t, j)
            for t in range(num_tokens)
            for j in range(top_k)
            if indices[t][j] == expert
        ]
        for _, t, j in sorted(copies)[:capacity]:
            keep[t][j] = True
    return keep


def brute_capacity(num_tokens, num_experts, top_k, capacity_factor) -> int:
    factor = Fraction(str(capacity_factor)) if isinstance(capacity_factor, float) else Fraction(
        capacity_factor
    )
    exact = top_k * num_tokens * factor / num_experts
    whole = exact.numerator // exact.denominator
    return whole if whole == exact else whole + 1


# ---------------------------------------------------------------------------
# strategies


@st.composite
def tied_scores(draw, max_tokens=12, max_experts=9):
    """(T, E) scores drawn from a few values, so rows are full of ties."""
    num_tokens = draw(st.integers(1, max_tokens))
    num_experts = draw(st.integers(1, max_experts))
    levels = draw(st.lists(st.sampled_from([0.0, 0.125, 0.25, 0.5, 1.0, 2.0]), min_size=1,
                           max_size=3))
    cells = draw(st.lists(st.sampled_from(levels), min_size=num_tokens * num_experts,
                          max_size=num_tokens * num_experts))
    return np.array(cells, dtype=np.float64).reshape(num_tokens, num_experts)


@st.composite
def skewed_routings(draw, max_tokens=30, max_experts=8):
    """Routings with distinct experts per token, drawn with a skew towards
    low experts (so some are over capacity and some get nothing), and
    weights from a few values (so the probs policy meets ties)."""
    num_experts = draw(st.integers(1, max_experts))
    top_k = draw(st.integers(1, num_experts))
    num_tokens = draw(st.integers(1, max_tokens))
    favourites = draw(st.integers(1, num_experts))
    indices, weights = [], []
    for _ in range(num_tokens):
        pool = list(range(num_experts))
        row = []
        for _ in range(top_k):
            near = [e for e in pool if e < favourites]
            expert = draw(st.sampled_from(near if near and draw(st.booleans()) else pool))
            pool.remove(expert)
            row.append(expert)
        indices.append(row)
        weights.append(draw(st.lists(st.sampled_from([0.1, 0.2, 0.5]), min_size=top_k,
                                     max_size=top_k)))
    capacity = draw(st.integers(0, num_tokens + 1))
    return np.array(indices), np.array(weights), num_experts, capacity


# ---------------------------------------------------------------------------
# softmax


@SETTINGS
@given(st.integers(1, 6), st.integers(1, 7), st.integers(0, 2**32 - 1))
def test_softmax_matches_brute_force(num_tokens, num_experts, seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=5.0, size=(num_tokens, num_experts))
    got = moe.softmax(logits)
    assert got.dtype == np.float64
    for t in range(num_tokens):
        np.testing.assert_allclose(got[t], brute_softmax(list(logits[t])), rtol=1e-12, atol=0)


def test_softmax_large_logits_do_not_overflow():
    got = moe.softmax(np.array([[1000.0, 1001.0], [-1000.0, -1001.0]]))
    e = math.exp(-1.0)
    np.testing.assert_allclose(got, [[e / (1 + e), 1 / (1 + e)], [1 / (1 + e), e / (1 + e)]])


def test_softmax_keeps_float32_and_masks_minus_inf():
    got = moe.softmax(np.array([[0.0, -np.inf, 0.0]], dtype=np.float32))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, [[0.5, 0.0, 0.5]])


@pytest.mark.parametrize(
    "logits",
    [
        [[0.0, np.nan]],
        [[0.0, np.inf]],
        [[-np.inf, -np.inf]],
        [0.0, 1.0],
        np.zeros((0, 3)),
    ],
)
def test_softmax_rejects_invalid_logits(logits):
    with pytest.raises(ValueError, match="logits"):
        moe.softmax(np.array(logits))


# ---------------------------------------------------------------------------
# top-k routing


@SETTINGS
@given(tied_scores(), st.data())
def test_top_k_ties_go_to_lower_index(scores, data):
    top_k = data.draw(st.integers(1, scores.shape[1]))
    routing = moe.top_k_routing(scores, top_k)
    for t, row in enumerate(scores.tolist()):
        expected = brute_top_k(row, top_k)
        assert routing.expert_indices[t].tolist() == expected
        assert routing.expert_weights[t].tolist() == [row[e] for e in expected]


@SETTINGS
@given(st.integers(1, 8), st.integers(1, 9), st.integers(0, 2**32 - 1), st.data())
def test_top_k_renormalized_weights(num_tokens, num_experts, seed, data):
    top_k = data.draw(st.integers(1, num_experts))
    rng = np.random.default_rng(seed)
    probs = moe.softmax(rng.normal(size=(num_tokens, num_experts)).astype(np.float32))
    routing = moe.top_k_routing(probs, top_k, renormalize=True)
    assert routing.expert_weights.dtype == np.float32
    for t, row in enumerate(probs.tolist()):
        chosen = brute_top_k(row, top_k)
        total = sum(row[e] for e in chosen)
        np.testing.assert_allclose(routing.expert_weights[t], [row[e] / total for e in chosen],
                                   rtol=1e-6)


def test_top_k_mixed_tied_rows():
    # Rows with distinct values take torch.topk's result; rows with ties are
    # redone. Mix both in one call and check every row.
    rng = np.random.default_rng(0)
    scores = rng.random((500, 16))
    scores[::3] = np.round(scores[::3] * 3) / 3
    routing = moe.top_k_routing(scores, 4)
    for t, row in enumerate(scores.tolist()):
        assert routing.expert_indices[t].tolist() == brute_top_k(row, 4)


def test_top_k_equals_num_experts_orders_all():
    scores = np.array([[0.25, 0.25, 0.5], [1.0, 0.0, 1.0]])
    routing = moe.top_k_routing(scores, 3)
    assert routing.expert_indices.tolist() == [[2, 0, 1], [0, 2, 1]]


@pytest.mark.parametrize(
    ("top_k", "message"), [(0, "top_k"), (4, "top_k"), (1.5, "top_k"), (True, "top_k")]
)
def test_top_k_rejects_bad_k(top_k, message):
    with pytest.raises(ValueError, match=message):
        moe.top_k_routing(np.ones((2, 3)), top_k)


def test_top_k_rejects_nan_and_zero_sum():
    with pytest.raises(ValueError, match="NaN"):
        moe.top_k_routing(np.array([[0.5, np.nan]]), 1)
    with pytest.raises(ValueError, match="renormalize"):
        moe.top_k_routing(np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]), 2, renormalize=True)


# ---------------------------------------------------------------------------
# capacity


def test_capacity_float_trap_is_real():
    # Float math as Megatron-core and DeepSpeed write it gives 56.
    assert math.ceil((100 * 2 / 4) * 1.1) == 56
    assert math.ceil((100 / 4) * (1.1 * 2)) == 56
    assert moe.expert_capacity(100, 4, 2, 1.1) == 55


@pytest.mark.parametrize(
    ("num_tokens", "num_experts", "top_k", "capacity_factor", "expected"),
    [
        (100, 4, 2, 1.1, 55),
        (50, 1, 1, 1.1, 55),
        (100, 11, 1, 1.1, 10),       # 110 / 11, exact integer
        (4096, 64, 2, 1.25, 160),
        (1024, 8, 2, 1.0, 256),
        (1000, 3, 1, 0.3, 100),      # capacity_factor < 1
        (7, 7, 7, 1.0, 7),           # top_k = num_experts
        (1, 4, 1, 1.0, 1),           # one token
        (3, 2, 1, Fraction(1, 3), 1),
        (30, 1, 1, Decimal("0.7"), 21),
    ],
)
def test_capacity_cases(num_tokens, num_experts, top_k, capacity_factor, expected):
    assert moe.expert_capacity(num_tokens, num_experts, top_k, capacity_factor) == expected


@SETTINGS
@given(
    st.integers(1, 10**6),
    st.integers(1, 512),
    st.data(),
    st.sampled_from([0.1, 0.3, 0.7, 1.0, 1.1, 1.2, 1.25, 1.3, 1.5, 2.0, 2.2, 3.3]),
)
def test_capacity_matches_exact_arithmetic(num_tokens, num_experts, data, capacity_factor):
    top_k = data.draw(st.integers(1, min(num_experts, 8)))
    assert moe.expert_capacity(num_tokens, num_experts, top_k, capacity_factor) == brute_capacity(
        num_tokens, num_experts, top_k, capacity_factor
    )


def test_capacity_differs_from_float_math_somewhere():
    # The grid contains cases where naive float math rounds up one slot too many.
    differ = [
        (t, f)
        for t in range(1, 200)
        for f in (1.1, 1.2, 0.7, 2.2, 3.3)
        if math.ceil(t * f) != brute_capacity(t, 1, 1, f)
    ]
    assert differ
    for t, f in differ:
        assert moe.expert_capacity(t, 1, 1, f) == brute_capacity(t, 1, 1, f)


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ((0, 4, 1, 1.0), "num_tokens"),
        ((4, 0, 1, 1.0), "num_experts"),
        ((4, 4, 5, 1.0), "top_k"),
        ((4, 4, 0, 1.0), "top_k"),
        ((4, 4, 1, 0.0), "capacity_factor"),
        ((4, 4, 1, -1.0), "capacity_factor"),
        ((4, 4, 1, float("nan")), "capacity_factor"),
        ((4, 4, 1, float("inf")), "capacity_factor"),
        ((4, 4, 1, "1.0"), "capacity_factor"),
    ],
)
def test_capacity_rejects_invalid(args, name):
    with pytest.raises(ValueError, match=name):
        moe.expert_capacity(*args)


# ---------------------------------------------------------------------------
# dropping


@SETTINGS
@given(skewed_routings(), st.sampled_from(moe.DROP_POLICIES))
def test_drop_matches_brute_force(routing, policy):
    indices, weights, num_experts, capacity = routing
    got = moe.drop_tokens(indices, weights, num_experts, capacity, policy)
    keep = np.array(brute_drop(indices.tolist(), weights.tolist(), num_experts, capacity, policy))
    np.testing.assert_array_equal(got.expert_indices, np.where(keep, indices, -1))
    np.testing.assert_array_equal(got.expert_weights, np.where(keep, weights, 0.0))
    load = np.bincount(got.expert_indices[got.expert_indices >= 0], minlength=num_experts)
    assert load.max(initial=0) <= capacity


def test_drop_position_first_choices_outrank_second():
    # Token 0's second choice (expert 0) comes before token 1's first choice
    # by token order, but first choices win.
    indices = np.array([[1, 0], [0, 1]])
    weights = np.array([[0.6, 0.4], [0.7, 0.3]])
    got = moe.drop_tokens(indices, weights, 2, 1, "position")
    assert got.expert_indices.tolist() == [[1, -1], [0, -1]]


def test_drop_probs_tie_goes_to_earlier_token():
    indices = np.array([[0], [0], [0]])
    weights = np.array([[0.5], [0.9], [0.5]])
    got = moe.drop_tokens(indices, weights, 1, 2, "probs")
    assert got.expert_indices[:, 0].tolist() == [0, 0, -1]
    got = moe.drop_tokens(indices, weights, 1, 1, "probs")
    assert got.expert_indices[:, 0].tolist() == [-1, 0, -1]


def test_drop_all_tokens_to_one_expert():
    indices = np.zeros((10, 1), dtype=np.int64)
    weights = np.ones((10, 1))
    got = moe.drop_tokens(indices, weights, 4, 3, "position")
    assert got.expert_indices[:, 0].tolist() == [0, 0, 0] + [-1] * 7


def test_drop_keeps_already_dropped_and_zero_capacity():
    indices = np.array([[-1, 1], [1, 0]])
    weights = np.array([[0.0, 0.5], [0.5, 0.5]])
    assert moe.drop_tokens(indices, weights, 2, 5).expert_indices.tolist() == [[-1, 1], [1, 0]]
    assert moe.drop_tokens(indices, weights, 2, 0).expert_indices.tolist() == [[-1, -1], [-1, -1]]


def test_drop_many_experts_use_wide_keys():
    # More experts than a 16-bit sort key holds.
    num_experts = 70_000
    indices = np.array([[69_999], [69_999], [3]])
    got = moe.drop_tokens(indices, np.ones((3, 1)), num_experts, 1)
    assert got.expert_indices[:, 0].tolist() == [69_999, -1, 3]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"expert_indices": np.array([[0, 4]])}, "expert_indices"),
        ({"expert_indices": np.array([[0, -2]])}, "expert_indices"),
        ({"expert_indices": np.array([[0.0, 1.0]])}, "expert_indices"),
        ({"expert_weights": np.ones((1, 3))}, "expert_weights"),
        ({"expert_weights": np.ones((2, 2))}, "expert_weights"),
        ({"capacity": -1}, "capacity"),
        ({"drop_policy": "random"}, "drop_policy"),
        ({"num_experts": 0}, "num_experts"),
    ],
)
def test_drop_rejects_invalid(kwargs, name):
    arguments = {
        "expert_indices": np.array([[0, 1]]),
        "expert_weights": np.array([[0.5, 0.5]]),
        "num_experts": 4,
        "capacity": 1,
        "drop_policy": "position",
    }
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=name):
        moe.drop_tokens(**arguments)


def test_route_composes_the_steps():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(40, 6))
    probs = moe.softmax(logits)
    full = moe.top_k_routing(probs, 2)
    assert np.array_equal(moe.route(logits, 2).expert_indices, full.expert_indices)
    capacity = moe.expert_capacity(40, 6, 2, 0.75)
    dropped = moe.route(logits, 2, capacity_factor=0.75, drop_policy="probs")
    keep = np.array(brute_drop(full.expert_indices.tolist(), full.expert_weights.tolist(), 6,
                               capacity, "probs"))
    np.testing.assert_array_equal(dropped.expert_indices, np.where(keep, full.expert_indices, -1))


# ---------------------------------------------------------------------------
# losses


@SETTINGS
@given(st.integers(1, 20), st.integers(1, 8), st.integers(0, 2**32 - 1), st.booleans(), st.data())
def test_load_balancing_loss_matches_brute_force(num_tokens, num_experts, seed, first_only, data):
    top_k = data.draw(st.integers(1, num_experts))
    rng = np.random.default_rng(seed)
    probs = moe.softmax(rng.normal(scale=3.0, size=(num_tokens, num_experts)))
    indices = moe.top_k_routing(probs, top_k).expert_indices
    columns = 1 if first_only else top_k
    expected = 0.0
    for i in range(num_experts):
        f_i = sum(indices[t][j] == i for t in range(num_tokens) for j in range(columns))
        f_i /= num_tokens * columns
        p_i = math.fsum(probs[t][i] for t in range(num_tokens)) / num_tokens
        expected += f_i * p_i
    expected *= num_experts
    got = moe.load_balancing_loss(probs, indices, first_choice_only=first_only)
    assert isinstance(got, float)
    assert got == pytest.approx(expected, rel=1e-12)


def test_load_balancing_loss_extremes():
    # Perfect balance scores 1; everything on one expert with certainty scores E.
    probs = np.full((8, 4), 0.25)
    indices = np.array([[t % 4, (t + 1) % 4] for t in range(8)])
    assert moe.load_balancing_loss(probs, indices) == pytest.approx(1.0)
    collapsed = np.zeros((8, 4))
    collapsed[:, 2] = 1.0
    assert moe.load_balancing_loss(collapsed, np.full((8, 1), 2)) == pytest.approx(4.0)


@SETTINGS
@given(st.integers(1, 10), st.integers(1, 8), st.integers(0, 2**32 - 1))
def test_router_z_loss_matches_brute_force(num_tokens, num_experts, seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=4.0, size=(num_tokens, num_experts))
    expected = math.fsum(
        math.log(math.fsum(math.exp(x) for x in row)) ** 2 for row in logits.tolist()
    ) / num_tokens
    assert moe.router_z_loss(logits) == pytest.approx(expected, rel=1e-12)


def test_router_z_loss_is_stable_for_large_logits():
    # logsumexp([1000, 1000]) = 1000 + log 2.
    assert moe.router_z_loss(np.array([[1000.0, 1000.0]])) == pytest.approx(
        (1000 + math.log(2)) ** 2, rel=1e-12
    )


# ---------------------------------------------------------------------------
# layer forward


def brute_layer(x, router_weight, w_in, w_out, top_k, capacity_factor, policy, renormalize):
    """Per-token, per-choice loop over plain Python routing."""
    num_tokens, _ = x.shape
    num_experts = router_weight.shape[1]
    logits = x @ router_weight
    indices, weights = [], []
    for t in range(num_tokens):
        probs = brute_softmax(list(logits[t]))
        chosen = brute_top_k(probs, top_k)
        gate = [probs[e] for e in chosen]
        if renormalize:
            total = sum(gate)
            gate = [g / total for g in gate]
        indices.append(chosen)
        weights.append(gate)
    if capacity_factor is None:
        keep = [[True] * top_k for _ in range(num_tokens)]
    else:
        capacity = brute_capacity(num_tokens, num_experts, top_k, capacity_factor)
        keep = brute_drop(indices, weights, num_experts, capacity, policy)
    out = np.zeros_like(x)
    for t in range(num_tokens):
        for j in range(top_k):
            if keep[t][j]:
                e = indices[t][j]
                out[t] += weights[t][j] * (np.maximum(x[t] @ w_in[e], 0.0) @ w_out[e])
    return out, keep


@SETTINGS
@given(
    st.integers(1, 12),
    st.integers(1, 6),
    st.integers(0, 2**32 - 1),
    st.sampled_from([None, 0.5, 1.0, 1.25]),
    st.sampled_from(moe.DROP_POLICIES),
    st.booleans(),
    st.data(),
)
def test_layer_matches_per_token_loop(num_tokens, num_experts, seed, capacity_factor, policy,
                                      renormalize, data):
    top_k = data.draw(st.integers(1, num_experts))
    hidden, ffn = 5, 7
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_tokens, hidden))
    router_weight = rng.normal(size=(hidden, num_experts))
    w_in = rng.normal(size=(num_experts, hidden, ffn))
    w_out = rng.normal(size=(num_experts, ffn, hidden))
    got = moe.moe_layer_forward(x, router_weight, w_in, w_out, top_k, capacity_factor, policy,
                                renormalize)
    expected, _ = brute_layer(x, router_weight, w_in, w_out, top_k, capacity_factor, policy,
                              renormalize)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


def test_layer_dropped_token_gets_zero_output():
    # Every token prefers expert 0 (large router bias through a constant
    # feature); with capacity 1 only token 0 gets an output.
    x = np.ones((4, 2))
    x[:, 1] = np.arange(4) * 1e-3
    router_weight = np.array([[5.0, 0.0], [0.0, 0.0]])
    rng = np.random.default_rng(1)
    w_in = rng.normal(size=(2, 2, 3))
    w_out = rng.normal(size=(2, 3, 2))
    out = moe.moe_layer_forward(x, router_weight, w_in, w_out, 1, capacity_factor=0.5)
    assert moe.expert_capacity(4, 2, 1, 0.5) == 1
    assert np.any(out[0] != 0)
    np.testing.assert_array_equal(out[1:], 0.0)


def test_layer_rejects_bad_shapes():
    x = np.ones((3, 4))
    good = dict(router_weight=np.ones((4, 2)), expert_w_in=np.ones((2, 4, 5)),
                expert_w_out=np.ones((2, 5, 4)))
    for name, bad in [("router_weight", np.ones((3, 2))), ("expert_w_in", np.ones((3, 4, 5))),
                      ("expert_w_out", np.ones((2, 5, 3)))]:
        arguments = dict(good, **{name: bad})
        with pytest.raises(ValueError, match=name):
            moe.moe_layer_forward(x, top_k=1, **arguments)
    with pytest.raises(ValueError, match="top_k"):
        moe.moe_layer_forward(x, top_k=3, **good)


# ---------------------------------------------------------------------------
# expert-parallel dispatch plan


@SETTINGS
@given(skewed_routings(max_tokens=24), st.sampled_from([1, 2, 3, 4]), st.data())
def test_dispatch_plan_matches_brute_force(routing, ep, data):
    indices, weights, num_experts, capacity = routing
    num_experts *= ep
    num_tokens = indices.shape[0] * ep
    indices = np.tile(indices, (ep, 1))
    if data.draw(st.booleans()):
        indices = moe.drop_tokens(indices, np.tile(weights, (ep, 1)), num_experts, capacity)[0]
    plan = moe.ep_dispatch_plan(indices, num_experts, ep)
    expected = np.zeros((ep, ep), dtype=np.int64)
    for t in range(num_tokens):
        for e in indices[t]:
            if e >= 0:
                expected[t // (num_tokens // ep), e // (num_experts // ep)] += 1
    np.testing.assert_array_equal(plan.dispatch_counts, expected)
    np.testing.assert_array_equal(plan.combine_counts, expected.T)
    assert plan.dispatch_counts.sum() == np.count_nonzero(indices >= 0)


def test_dispatch_plan_counts_same_rank_copies_twice():
    # Token 0 picks experts 0 and 1, both on rank 0: two copies, both local.
    plan = moe.ep_dispatch_plan(np.array([[0, 1], [2, 3]]), 4, 2)
    assert plan.dispatch_counts.tolist() == [[2, 0], [0, 2]]


@pytest.mark.parametrize(
    ("num_tokens", "num_experts", "ep", "name"),
    [(3, 4, 2, "ep"), (4, 6, 4, "ep"), (4, 4, 0, "ep")],
)
def test_dispatch_plan_rejects_uneven_split(num_tokens, num_experts, ep, name):
    with pytest.raises(ValueError, match=name):
        moe.ep_dispatch_plan(np.zeros((num_tokens, 1), dtype=np.int64), num_experts, ep)


def test_one_token_one_expert_edge():
    probs = moe.softmax(np.array([[0.3]]))
    routing = moe.route(np.array([[0.3]]), 1, capacity_factor=1.0)
    assert probs.tolist() == [[1.0]]
    assert routing.expert_indices.tolist() == [[0]]
    assert moe.ep_dispatch_plan(routing.expert_indices, 1, 1).dispatch_counts.tolist() == [[1]]


def test_torch_tensor_input_is_accepted():
    logits = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    np.testing.assert_array_equal(moe.route(logits, 1).expert_indices, [[1], [0]])
