"""MoE routing written with plain numpy and small loops over copies, not the reference's sorts."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import NamedTuple

import numpy as np


class TopKRouting(NamedTuple):
    expert_indices: np.ndarray
    expert_weights: np.ndarray


class DispatchPlan(NamedTuple):
    dispatch_counts: np.ndarray
    combine_counts: np.ndarray


def softmax(logits):
    x = np.asarray(logits)
    x = x.astype(np.float32 if x.dtype == np.float32 else np.float64)
    shifted = np.exp(x - x.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def top_k_routing(probs, top_k, renormalize=False):
    p = np.asarray(probs)
    p = p.astype(np.float32 if p.dtype == np.float32 else np.float64)
    # A stable sort of the negated values keeps equal values in index order.
    chosen = np.argsort(-p, axis=1, kind="stable")[:, :top_k]
    weights = np.take_along_axis(p, chosen, axis=1)
    if renormalize:
        weights = weights / weights.sum(axis=1, keepdims=True)
    return TopKRouting(chosen.astype(np.int64), weights)


def expert_capacity(num_tokens, num_experts, top_k, capacity_factor):
    factor = Fraction(repr(float(capacity_factor))) if isinstance(capacity_factor, float) else Fraction(capacity_factor)
    return math.ceil(Fraction(top_k * num_tokens) * factor / num_experts)


def drop_tokens(expert_indices, expert_weights, num_experts, capacity, drop_policy="position"):
    idx = np.asarray(expert_indices)
    w = np.asarray(expert_weights)
    tokens, k = idx.shape
    if drop_policy == "position":
        order = [(t, j) for j in range(k) for t in range(tokens)]
    else:
        order = sorted(((t, j) for t in range(tokens) for j in range(k)), key=lambda tj: (-w[tj], tj[0], tj[1]))
    used = [0] * num_experts
    keep = np.zeros(idx.shape, dtype=bool)
    for t, j in order:
        e = idx[t, j]
        if e >= 0 and used[e] < capacity:
            used[e] += 1
            keep[t, j] = True
    return TopKRouting(np.where(keep, idx, -1), np.where(keep, w, 0).astype(w.dtype))


def load_balancing_loss(probs, expert_indices, first_choice_only=False):
    p = np.asarray(probs, dtype=np.float64)
    idx = np.asarray(expert_indices)
    if first_choice_only:
        idx = idx[:, :1]
    num_experts = p.shape[1]
    share = np.array([(idx == e).sum() for e in range(num_experts)]) / idx.size
    return float(num_experts * (share * p.mean(axis=0)).sum())


def router_z_loss(logits):
    x = np.asarray(logits, dtype=np.float64)
    top = x.max(axis=1)
    lse = top + np.log(np.exp(x - top[:, None]).sum(axis=1))
    return float((lse**2).mean())


def moe_layer_forward(hidden_states, router_weight, expert_w_in, expert_w_out, top_k,
                      capacity_factor=None, drop_policy="position", renormalize=False):
    x = np.asarray(hidden_states, dtype=np.float64)
    w_in = np.asarray(expert_w_in, dtype=np.float64)
    w_out = np.asarray(expert_w_out, dtype=np.float64)
    probs = softmax(x @ np.asarray(router_weight, dtype=np.float64))
    routing = top_k_routing(probs, top_k, renormalize)
    if capacity_factor is not None:
        capacity = expert_capacity(x.shape[0], probs.shape[1], top_k, capacity_factor)
        routing = drop_tokens(routing.expert_indices, routing.expert_weights, probs.shape[1], capacity, drop_policy)
    out = np.zeros_like(x)
    for t in range(x.shape[0]):
        for e, gate in zip(routing.expert_indices[t], routing.expert_weights[t]):
            if e >= 0:
                out[t] += gate * (np.maximum(x[t] @ w_in[e], 0.0) @ w_out[e])
    return out


def ep_dispatch_plan(expert_indices, num_experts, ep):
    idx = np.asarray(expert_indices)
    tokens_per_rank = idx.shape[0] // ep
    experts_per_rank = num_experts // ep
    counts = np.zeros((ep, ep), dtype=np.int64)
    for t, row in enumerate(idx):
        for e in row:
            if e >= 0:
                counts[t // tokens_per_rank, e // experts_per_rank] += 1
    return DispatchPlan(counts, counts.T.copy())
