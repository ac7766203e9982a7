"""Compare EP all-to-all bytes of a uniform routing with a skewed one.

Builds dispatch plans for the chapter's Exercise 2 layer (64 experts, top-2,
hidden 4096, 4,096 tokens, bf16, EP over 8 GPUs): one routing that spreads
every token's copies evenly, and one whose router favours low-numbered
experts. Prints bytes per GPU for each, the closed form, and how much more
the busiest GPU sends under skew.

    python bench/bench_ep_skew.py
"""

from __future__ import annotations

import numpy as np

from reference import comm_volume, moe

NUM_TOKENS, NUM_EXPERTS, TOP_K, HIDDEN, BYTES, EP = 4096, 64, 2, 4096, 2, 8


def uniform_routing() -> np.ndarray:
    # Token t picks experts (2t) mod E and (2t + 1) mod E: every rank receives
    # the same number of copies from every rank.
    first = (2 * np.arange(NUM_TOKENS)) % NUM_EXPERTS
    return np.stack([first, (first + 1) % NUM_EXPERTS], axis=1)


def skewed_routing(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(NUM_TOKENS, NUM_EXPERTS)) + np.linspace(2.0, 0.0, NUM_EXPERTS)
    return moe.top_k_routing(moe.softmax(logits), TOP_K).expert_indices


def main() -> None:
    closed_form = comm_volume.ep_moe_layer_bytes(NUM_TOKENS, HIDDEN, BYTES, TOP_K, EP)
    print(f"closed form, uniform routing: {closed_form:,.0f} bytes per GPU per forward pass")
    results = {}
    for name, routing in (("uniform", uniform_routing()), ("skewed", skewed_routing())):
        plan = moe.ep_dispatch_plan(routing, NUM_EXPERTS, EP)
        volume = comm_volume.ep_moe_layer_bytes_from_plan(plan.dispatch_counts, HIDDEN, BYTES)
        results[name] = volume
        print(f"{name:>8}: max {volume.max_bytes:,.0f}  mean {volume.mean_bytes:,.0f}  "
              f"min {float(volume.per_rank_bytes.min()):,.0f} bytes per GPU")
    excess = results["skewed"].max_bytes / results["uniform"].max_bytes - 1
    print(f"the busiest GPU sends {excess:.1%} more under the skewed routing than under uniform routing")


if __name__ == "__main__":
    main()
