"""Tests of reference.comm_volume: simulated collectives, published factors,
the chapter's Exercise 2 and dispatch plans of real routings."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference import comm_volume as cv
from reference import moe

SETTINGS = settings(derandomize=True, database=None, deadline=None, max_examples=30)


# ---------------------------------------------------------------------------
# collectives: simulate them chunk by chunk and count what each rank sends


def simulate_ring_all_reduce(buffers: list[np.ndarray]) -> tuple[list[np.ndarray], list[int]]:
    """Run a ring all-reduce on real data; return the results and the
    elements each rank sent."""
    n = len(buffers)
    chunks = [np.array_split(b.astype(np.int64), n) for b in buffers]
    sent = [0] * n
    # Reduce-scatter: in step s rank r sends chunk (r - s) % n to rank r + 1.
    for step in range(n - 1):
        outgoing = [(r, (r - step) % n, chunks[r][(r - step) % n].copy()) for r in range(n)]
        for r, c, data in outgoing:
            chunks[(r + 1) % n][c] += data
            sent[r] += data.size
    # All-gather: rank r owns chunk (r + 1) % n; pass completed chunks on.
    for step in range(n - 1):
        outgoing = [(r, (r + 1 - step) % n, chunks[r][(r + 1 - step) % n].copy())
                    for r in range(n)]
        for r, c, data in outgoing:
            chunks[(r + 1) % n][c] = data
            sent[r] += data.size
    return [np.concatenate(c) for c in chunks], sent


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 8])
def test_ring_all_reduce_matches_simulation(world_size):
    elements = 24 * world_size
    rng = np.random.default_rng(world_size)
    buffers = [rng.integers(0, 100, elements) for _ in range(world_size)]
    results, sent = simulate_ring_all_reduce(buffers)
    total = np.sum(buffers, axis=0)
    for result in results:
        np.testing.assert_array_equal(result, total)
    bytes_per_element = 2
    for sent_elements in sent:
        assert cv.ring_all_reduce_bytes(elements * bytes_per_element, world_size) == (
            sent_elements * bytes_per_element
        )


@pytest.mark.parametrize("world_size", [1, 2, 4, 8, 16])
def test_collectives_use_nccl_tests_factors(world_size):
    # nccl-tests (doc/PERFORMANCE.md) converts algorithm bandwidth to bus
    # bandwidth with 2(n-1)/n for all-reduce and (n-1)/n for reduce-scatter,
    # all-gather and all-to-all: the bytes each rank moves per byte of S.
    S = 1 << 30
    n = world_size
    assert cv.ring_all_reduce_bytes(S, n) == S * 2 * (n - 1) / n
    assert cv.reduce_scatter_bytes(S, n) == S * (n - 1) / n
    assert cv.all_gather_bytes(S, n) == S * (n - 1) / n
    assert cv.all_to_all_bytes(S, n) == S * (n - 1) / n


def test_all_to_all_matches_simulation():
    n, per_peer_bytes = 5, 12
    sent = [sum(per_peer_bytes for dst in range(n) if dst != src) for src in range(n)]
    for value in sent:
        assert cv.all_to_all_bytes(n * per_peer_bytes, n) == value


def test_ring_all_reduce_published_example():
    # nccl-tests: 8 ranks, bus bandwidth = 1.75 x algorithm bandwidth.
    assert cv.ring_all_reduce_bytes(1000, 8) == 1750


# ---------------------------------------------------------------------------
# the chapter's Exercise 2


def test_exercise_2_values():
    tokens, hidden, bf16 = 4 * 1024, 4096, 2
    S = tokens * hidden * bf16
    assert S == 33_554_432
    volumes = cv.exercise_2_volumes()
    assert volumes.tp_chapter_bytes == 2 * S == 67_108_864
    assert volumes.tp_ring_bytes == 2 * 7 * S / 8 == 58_720_256
    assert volumes.ep_chapter_bytes == 2 * 2 * S / 8 == 16_777_216
    assert volumes.ep_exact_bytes == 2 * 2 * (tokens // 8) * hidden * bf16 * 7 / 8 == 14_680_064
    assert volumes.tp_chapter_bytes / volumes.ep_chapter_bytes == 4
    assert volumes.tp_ring_bytes / volumes.ep_exact_bytes == 4


def test_ep_chapter_form_uses_gpus_not_experts():
    # 64 experts must not appear: N is the EP group size.
    assert cv.ep_moe_layer_bytes_chapter(4096, 4096, 2, 2, 8) == 16_777_216
    assert cv.ep_moe_layer_bytes_chapter(4096, 4096, 2, 2, 64) == 2_097_152


@SETTINGS
@given(st.integers(1, 10**6), st.integers(1, 8192), st.sampled_from([1, 2, 4]),
       st.integers(1, 64), st.integers(1, 8), st.sampled_from(cv.PASSES))
def test_layer_formulas(tokens, hidden, bytes_per_element, gpus, top_k, passes):
    S = tokens * hidden * bytes_per_element
    factor = 1 if passes == "forward" else 2
    assert cv.activation_bytes(tokens, hidden, bytes_per_element) == S
    assert cv.tp_moe_layer_bytes(tokens, hidden, bytes_per_element, gpus, passes) == (
        pytest.approx(factor * 2 * (gpus - 1) / gpus * S, rel=1e-15)
    )
    assert cv.tp_moe_layer_bytes_chapter(tokens, hidden, bytes_per_element, passes) == (
        factor * 2 * S
    )
    exact = cv.ep_moe_layer_bytes(tokens, hidden, bytes_per_element, top_k, gpus, passes)
    chapter = cv.ep_moe_layer_bytes_chapter(tokens, hidden, bytes_per_element, top_k, gpus,
                                            passes)
    assert chapter == pytest.approx(factor * 2 * top_k * S / gpus, rel=1e-15)
    assert exact == pytest.approx(chapter * (gpus - 1) / gpus, rel=1e-12)


def test_pipeline_and_dp_formulas():
    # One microbatch of 2 x 4096 tokens, hidden 8192, bf16: 128 MiB per crossing.
    activation = 2 * 4096 * 8192 * 2
    assert cv.pipeline_p2p_bytes(2 * 4096, 8192, 2) == activation
    assert cv.pipeline_p2p_bytes(2 * 4096, 8192, 2, num_microbatches=16) == 16 * activation
    assert cv.pipeline_p2p_bytes(2 * 4096, 8192, 2, 16, "forward_backward") == 32 * activation
    # 7e9 bf16 gradients over 8 ranks: 2 * 7/8 * 14e9 bytes.
    assert cv.dp_gradient_all_reduce_bytes(7_000_000_000, 2, 8) == 24_500_000_000
    assert cv.dp_gradient_all_reduce_bytes(7_000_000_000, 2, 1) == 0


# ---------------------------------------------------------------------------
# volumes measured from real routings


def uniform_routing(num_tokens: int, num_experts: int, top_k: int) -> np.ndarray:
    """Token u of each block of equal size picks experts u*k .. u*k+k-1 (mod E):
    every rank's copies spread evenly over all experts when k * T / ep is a
    multiple of E."""
    slots = np.arange(num_tokens * top_k).reshape(num_tokens, top_k)
    return slots % num_experts


@SETTINGS
@given(st.sampled_from([1, 2, 4, 8]), st.integers(1, 4), st.integers(1, 3), st.integers(1, 4),
       st.sampled_from(cv.PASSES))
def test_uniform_plan_reproduces_closed_form(ep, experts_per_rank, top_k, repeats, passes):
    num_experts = ep * experts_per_rank
    top_k = min(top_k, num_experts)
    tokens_per_rank = num_experts * repeats
    num_tokens = ep * tokens_per_rank
    indices = uniform_routing(num_tokens, num_experts, top_k)
    indices = np.concatenate([indices[:tokens_per_rank]] * ep)
    plan = moe.ep_dispatch_plan(indices, num_experts, ep)
    hidden, bytes_per_element = 64, 2
    measured = cv.ep_moe_layer_bytes_from_plan(plan.dispatch_counts, hidden, bytes_per_element,
                                               passes)
    closed = cv.ep_moe_layer_bytes(num_tokens, hidden, bytes_per_element, top_k, ep, passes)
    assert measured.max_bytes == closed
    assert measured.mean_bytes == closed
    np.testing.assert_array_equal(measured.per_rank_bytes, np.full(ep, closed))


def test_skewed_plan_has_higher_maximum():
    ep, num_experts, top_k, num_tokens = 4, 8, 2, 64
    uniform = uniform_routing(num_tokens, num_experts, top_k)
    uniform = np.concatenate([uniform[:16]] * ep)
    skewed = np.tile([[0, 1]], (num_tokens, 1))  # every token to rank 0's experts
    volume = {}
    for name, indices in [("uniform", uniform), ("skewed", skewed)]:
        plan = moe.ep_dispatch_plan(indices, num_experts, ep)
        volume[name] = cv.ep_moe_layer_bytes_from_plan(plan.dispatch_counts, 16, 2)
    assert volume["skewed"].max_bytes > volume["uniform"].max_bytes
    # Rank 0 keeps its own 16 tokens x 2 copies and returns 48 x 2 outputs.
    assert volume["skewed"].max_bytes == 48 * 2 * 16 * 2
    assert volume["skewed"].per_rank_bytes[1] == 16 * 2 * 16 * 2


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.sampled_from([1, 2, 4]), st.sampled_from([0.5, 1.0, 2.0]))
def test_plan_volume_brute_force(seed, ep, capacity_factor):
    rng = np.random.default_rng(seed)
    num_tokens, num_experts, top_k, hidden = 8 * ep, 4 * ep, 2, 3
    logits = rng.normal(size=(num_tokens, num_experts)) * rng.integers(1, 4, num_experts)
    routing = moe.route(logits, top_k, capacity_factor)
    plan = moe.ep_dispatch_plan(routing.expert_indices, num_experts, ep)
    measured = cv.ep_moe_layer_bytes_from_plan(plan.dispatch_counts, hidden, 2)
    sent = [0] * ep
    for t in range(num_tokens):
        home = t // (num_tokens // ep)
        for e in routing.expert_indices[t]:
            host = e // (num_experts // ep) if e >= 0 else home
            if host != home:
                sent[home] += hidden * 2  # dispatch
                sent[host] += hidden * 2  # combine
    np.testing.assert_array_equal(measured.per_rank_bytes, sent)
    assert measured.max_bytes == max(sent)
    assert measured.mean_bytes == pytest.approx(sum(sent) / ep)


# ---------------------------------------------------------------------------
# invalid arguments


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: cv.ring_all_reduce_bytes(-1, 2), "message_bytes"),
        (lambda: cv.ring_all_reduce_bytes(float("nan"), 2), "message_bytes"),
        (lambda: cv.ring_all_reduce_bytes(10, 0), "world_size"),
        (lambda: cv.all_to_all_bytes(10, 2.5), "world_size"),
        (lambda: cv.tp_moe_layer_bytes(0, 8, 2, 2), "num_tokens"),
        (lambda: cv.tp_moe_layer_bytes(8, 8, 2, 2, "backward"), "passes"),
        (lambda: cv.ep_moe_layer_bytes(8, 8, 2, 0, 2), "top_k"),
        (lambda: cv.ep_moe_layer_bytes_chapter(8, 8, 2, 1, 0), "ep"),
        (lambda: cv.ep_moe_layer_bytes_from_plan(np.ones((2, 3), dtype=int), 8, 2),
         "dispatch_counts"),
        (lambda: cv.ep_moe_layer_bytes_from_plan(-np.ones((2, 2), dtype=int), 8, 2),
         "dispatch_counts"),
        (lambda: cv.pipeline_p2p_bytes(8, 8, 2, 0), "num_microbatches"),
        (lambda: cv.dp_gradient_all_reduce_bytes(10, -2, 2), "bytes_per_element"),
        (lambda: cv.dp_gradient_all_reduce_bytes(10, 2, True), "dp"),
    ],
)
def test_invalid_arguments_raise(call, name):
    with pytest.raises(ValueError, match=name):
        call()
