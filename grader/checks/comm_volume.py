"""Checks for ``comm_volume.py``: bytes each GPU sends, closed forms and measured plans."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from reference import comm_volume as ref
from reference import moe

from ..checking import CheckFailed, check, run_property
from ..sandbox import Record, Worker
from .values import as_number, call_or_fail, close

SIZES = st.sampled_from([0.0, 1.0, 4096.0, 2.0**20, 3e9, 1234567.0])
WORLD = st.sampled_from([1, 2, 3, 4, 8, 64, 1000])
PASSES = st.sampled_from(list(ref.PASSES))


def _number(worker: Worker, function: str, *args, context: str) -> float:
    return as_number(call_or_fail(worker, "comm_volume", function, *args, context=context), context)


def _compare(got: float, expected: float, context: str, hint: str | None = None) -> None:
    if not close(got, expected, rel=1e-9, abs_tol=1e-9):
        raise CheckFailed(f"{context} returned {got:,.6g} bytes, expected {expected:,.6g}", hint)


@check("comm_volume.collectives", modules=("comm_volume",))
def collectives_check(worker: Worker) -> None:
    """Bytes per rank of ring all-reduce, reduce-scatter, all-gather and all-to-all."""
    worker.import_module("comm_volume")

    @given(st.sampled_from(["ring_all_reduce_bytes", "reduce_scatter_bytes", "all_gather_bytes",
                            "all_to_all_bytes"]), SIZES, WORLD)
    def collective_property(function, size, world_size) -> None:
        context = f"{function}(message_bytes={size:g}, world_size={world_size})"
        got = _number(worker, function, size, world_size, context=context)
        expected = getattr(ref, function)(size, world_size)
        hint = None
        if function == "ring_all_reduce_bytes" and world_size > 1 and size > 0:
            if close(got, 2 * size):
                hint = "2S is the chapter's approximation; a ring sends 2 (n-1)/n x S"
            elif close(got, (world_size - 1) / world_size * size):
                hint = "an all-reduce is a reduce-scatter plus an all-gather: twice (n-1)/n x S"
        _compare(got, expected, context, hint)

    run_property(collective_property, max_examples=60)


@check("comm_volume.moe_layer", modules=("comm_volume",))
def moe_layer_check(worker: Worker) -> None:
    """TP and EP bytes for one MoE layer, the chapter's forms and the exact ones."""
    worker.import_module("comm_volume")

    @given(st.sampled_from([1, 8, 4096, 65536]), st.sampled_from([16, 4096, 7168]), st.sampled_from([1, 2, 4]),
           st.integers(1, 8), st.sampled_from([1, 2, 4, 8, 64]), PASSES)
    def layer_property(num_tokens, hidden, bytes_per_element, top_k, degree, passes) -> None:
        cases = (
            ("tp_moe_layer_bytes", (num_tokens, hidden, bytes_per_element, degree, passes)),
            ("tp_moe_layer_bytes_chapter", (num_tokens, hidden, bytes_per_element, passes)),
            ("ep_moe_layer_bytes", (num_tokens, hidden, bytes_per_element, top_k, degree, passes)),
            ("ep_moe_layer_bytes_chapter", (num_tokens, hidden, bytes_per_element, top_k, degree, passes)),
        )
        for function, args in cases:
            context = f"{function}{args}"
            got = _number(worker, function, *args, context=context)
            expected = getattr(ref, function)(*args)
            hint = None
            if function.startswith("ep") and degree > 1 and close(got, expected * degree):
                hint = "EP splits the tokens: each GPU holds T / N of them"
            elif passes == "forward_backward" and close(got, expected / 2):
                hint = "the backward pass sends as much again"
            _compare(got, expected, context, hint)

    run_property(layer_property, max_examples=50)


@check("comm_volume.measured_plan", modules=("comm_volume",))
def measured_plan_check(worker: Worker) -> None:
    """Bytes per rank measured from a real routing's dispatch plan."""
    worker.import_module("comm_volume")

    @given(st.sampled_from([1, 2, 4, 8]), st.integers(1, 3), st.integers(1, 4), st.booleans(), PASSES, st.data())
    def plan_property(ep, experts_per_rank, top_k, skewed, passes, data) -> None:
        num_experts = ep * experts_per_rank
        top_k = min(top_k, num_experts)
        rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1), label="seed"))
        scores = rng.normal(size=(ep * 8, num_experts)) + (np.linspace(4, 0, num_experts) if skewed else 0)
        plan = moe.ep_dispatch_plan(moe.top_k_routing(scores, top_k).expert_indices, num_experts, ep)
        hidden, bytes_per_element = 1024, 2
        context = (f"ep_moe_layer_bytes_from_plan(dispatch_counts=\n{plan.dispatch_counts}\n, hidden={hidden}, "
                   f"bytes_per_element={bytes_per_element}, passes={passes!r})")
        value = call_or_fail(worker, "comm_volume", "ep_moe_layer_bytes_from_plan", plan.dispatch_counts, hidden,
                             bytes_per_element, passes, context=context)
        if not isinstance(value, Record) or not {"per_rank_bytes", "max_bytes", "mean_bytes"} <= set(value):
            raise CheckFailed(f"{context} returned {type(value).__name__}; expected EPVolume")
        expected = ref.ep_moe_layer_bytes_from_plan(plan.dispatch_counts, hidden, bytes_per_element, passes)
        per_rank = value["per_rank_bytes"]
        if not isinstance(per_rank, np.ndarray) or per_rank.shape != (ep,) \
                or not np.allclose(per_rank, expected.per_rank_bytes, rtol=1e-9):
            hint = None
            factor = 2 if passes == "forward_backward" else 1
            counts = plan.dispatch_counts
            with_self = (counts.sum(axis=1) + counts.sum(axis=0)) * hidden * bytes_per_element * factor
            if isinstance(per_rank, np.ndarray) and per_rank.shape == (ep,) and np.allclose(per_rank, with_self):
                hint = "copies that stay on their own rank are not sent"
            raise CheckFailed(f"{context}: per_rank_bytes {per_rank!r}, expected {expected.per_rank_bytes}", hint)
        for field in ("max_bytes", "mean_bytes"):
            _compare(as_number(value[field], field), getattr(expected, field), f"{context}: {field}")

    run_property(plan_property, max_examples=40)


@check("comm_volume.pipeline_and_data_parallel", modules=("comm_volume",))
def pipeline_and_dp_check(worker: Worker) -> None:
    """Bytes across a pipeline stage boundary and of a DP gradient all-reduce."""
    worker.import_module("comm_volume")

    @given(st.sampled_from([1, 512, 8192]), st.sampled_from([64, 4096]), st.sampled_from([2, 4]),
           st.integers(1, 64), PASSES, st.integers(0, 10**11), WORLD)
    def p2p_property(num_tokens, hidden, bytes_per_element, num_microbatches, passes, params, dp) -> None:
        args = (num_tokens, hidden, bytes_per_element, num_microbatches, passes)
        context = f"pipeline_p2p_bytes{args}"
        _compare(_number(worker, "pipeline_p2p_bytes", *args, context=context), ref.pipeline_p2p_bytes(*args), context)
        args = (params, bytes_per_element, dp)
        context = f"dp_gradient_all_reduce_bytes{args}"
        _compare(_number(worker, "dp_gradient_all_reduce_bytes", *args, context=context),
                 ref.dp_gradient_all_reduce_bytes(*args), context)

    run_property(p2p_property, max_examples=40)
