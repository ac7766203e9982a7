"""Time MoE routing with capacity dropping against plain softmax + top-k.

The measured call is ``reference.moe.route``: softmax, top-k with
deterministic ties, expert capacity and token dropping, on float32 logits of
DeepSeek-V3's routed-expert shape (1,048,576 tokens x 256 experts, top-8) by
default. The baseline is ``torch.topk(torch.softmax(logits, 1), k, 1)`` on the
same logits in the same process, so machine load affects both alike. Both
run with torch's default CPU thread count.

Times are the median of ``--repeats`` runs after one warm-up run, with the
variants interleaved run by run. Peak memory is measured in a fresh
subprocess per variant as the growth of the peak resident set size across
one call, after the logits exist. It covers numpy and torch allocations
alike, where tracemalloc would miss torch's. The peak is ``VmHWM`` from
``/proc/self/status`` on Linux: ``resource.getrusage``'s ``ru_maxrss`` would
be wrong here, because Linux carries the parent's peak over into a child
started with fork and exec. Elsewhere it falls back to ``ru_maxrss``.

Usage: ``python bench/bench_moe_routing.py [--tokens N] [--repeats R]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reference import moe  # noqa: E402

VARIANTS = ("baseline", "position", "probs")


def make_logits(num_tokens: int, num_experts: int, seed: int) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(num_tokens, num_experts, generator=generator).numpy()


def run_variant(name: str, logits: np.ndarray, top_k: int, capacity_factor: float) -> None:
    if name == "baseline":
        torch.topk(torch.softmax(torch.from_numpy(logits), dim=1), top_k, dim=1)
    else:
        moe.route(logits, top_k, capacity_factor=capacity_factor, drop_policy=name)


def peak_rss_growth_bytes(args: argparse.Namespace, name: str) -> int:
    """Run one call of ``name`` in a fresh interpreter and return its peak
    resident-set growth in bytes."""
    command = [
        sys.executable, __file__, "--memory-of", name,
        "--tokens", str(args.tokens), "--experts", str(args.experts),
        "--top-k", str(args.top_k), "--capacity-factor", str(args.capacity_factor),
        "--seed", str(args.seed),
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return int(json.loads(output)["peak_rss_growth_bytes"])


def peak_rss_bytes() -> int:
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # the value is in kB
    # ru_maxrss is in KiB on Linux and in bytes on macOS; this path runs
    # only where /proc is missing.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def memory_child(args: argparse.Namespace) -> None:
    logits = make_logits(args.tokens, args.experts, args.seed)
    before = peak_rss_bytes()
    run_variant(args.memory_of, logits, args.top_k, args.capacity_factor)
    after = peak_rss_bytes()
    print(json.dumps({"peak_rss_growth_bytes": after - before}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1 << 20, help="number of tokens")
    parser.add_argument("--experts", type=int, default=256, help="number of experts")
    parser.add_argument("--top-k", type=int, default=8, help="experts per token")
    parser.add_argument("--capacity-factor", type=float, default=1.0,
                        help="capacity factor for dropping (1.0 drops some tokens)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random logits")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--memory-of", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.memory_of:
        memory_child(args)
        return

    logits = make_logits(args.tokens, args.experts, args.seed)
    print(f"logits: {args.tokens} x {args.experts} float32 "
          f"({logits.nbytes / 2**30:.2f} GiB), top_k={args.top_k}, "
          f"capacity_factor={args.capacity_factor}, torch threads={torch.get_num_threads()}")
    capacity = moe.expert_capacity(args.tokens, args.experts, args.top_k, args.capacity_factor)
    for policy in ("position", "probs"):
        routing = moe.route(logits, args.top_k, args.capacity_factor, policy)
        dropped = np.count_nonzero(routing.expert_indices < 0) / routing.expert_indices.size
        print(f"capacity {capacity} per expert; {policy}: {dropped:.4%} of copies dropped")

    for name in VARIANTS:  # warm-up
        run_variant(name, logits, args.top_k, args.capacity_factor)
    times = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name in VARIANTS:
            start = time.perf_counter()
            run_variant(name, logits, args.top_k, args.capacity_factor)
            times[name].append(time.perf_counter() - start)

    memory = {}
    if not args.no_memory:
        memory = {name: peak_rss_growth_bytes(args, name) for name in VARIANTS}

    baseline = statistics.median(times["baseline"])
    print(f"\n{'variant':<10} {'median s':>9} {'min s':>7} {'max s':>7} {'ratio':>6} "
          f"{'peak RSS growth':>16}")
    for name in VARIANTS:
        median = statistics.median(times[name])
        peak = f"{memory[name] / 2**30:.2f} GiB" if name in memory else "-"
        print(f"{name:<10} {median:9.3f} {min(times[name]):7.3f} {max(times[name]):7.3f} "
              f"{median / baseline:6.2f} {peak:>16}")


if __name__ == "__main__":
    main()
