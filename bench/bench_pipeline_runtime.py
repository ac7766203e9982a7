"""Step time of pplab's 1F1B runtime against torch.distributed.pipelining's Schedule1F1B.

Both run in the same spawned processes, on the same stages (the
:class:`reference.pipeline_runtime.StageModule` of each rank, wrapped in a
``PipelineStage`` for torch), the same data and gloo on loopback. For each
``P`` the script times ``--steps`` training steps of each after
``--warmup`` untimed ones, taking the slowest rank's time between two
barriers, alternating one step of each, and reports the median. It also reports pplab's measured bubble of
the last step beside ``(P - 1) / (M + P - 1)``.

Usage::

    python bench/bench_pipeline_runtime.py [--stages 2 4] [--microbatches 8]
        [--steps 10] [--warmup 3] [--threads 1] [--markdown]
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from reference import pipeline_runtime as runtime  # noqa: E402
from reference.pipeline_launch import RunResult, measured_bubble  # noqa: E402
from reference.schedules import one_f_one_b  # noqa: E402

BENCH_MODEL = runtime.ModelConfig(vocab_size=256, seq_len=64, d_model=128, num_heads=4,
                                  num_layers=8, microbatch_size=4, dtype="float32", seed=0)


def _timed_step(step) -> float:
    dist.barrier()
    start = time.perf_counter()
    step()
    dist.barrier()
    return time.perf_counter() - start


def _alternate(first, second, warmup: int, steps: int) -> tuple[list[float], list[float]]:
    """Time ``first`` and ``second`` in alternation, so load from other jobs hits both alike."""
    first_times, second_times = [], []
    for i in range(warmup + steps):
        a = _timed_step(first)
        b = _timed_step(second)
        if i >= warmup:
            first_times.append(a)
            second_times.append(b)
    return first_times, second_times


def _worker(rank: int, world_size: int, init_method: str, num_microbatches: int, warmup: int,
            steps: int, threads: int, results) -> None:
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=300))
    config = BENCH_MODEL
    device = torch.device("cpu")
    tokens, targets = runtime.make_batch(config, num_microbatches, seed=0)

    # pplab: its own loop over the 1F1B action list
    ctx = runtime.RankContext(config, rank, world_size, 1, num_microbatches, device)
    actions = one_f_one_b(world_size, num_microbatches)[rank]
    ours_opt = torch.optim.SGD(ctx.parameters(), lr=1e-3)

    def ours_step() -> None:
        ours_opt.zero_grad(set_to_none=True)
        ctx.start_step()
        runtime.run_step(ctx, actions, tokens, targets)
        ours_opt.step()


    # torch.distributed.pipelining on the same stage module
    stage_module = ctx.stages[0]
    example = (tokens[0] if rank == 0 else
               torch.zeros(ctx.activation_shape(), dtype=torch.float32))
    stage = PipelineStage(stage_module, rank, world_size, device, input_args=(example,))

    def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 target.reshape(-1))

    schedule = Schedule1F1B(stage, num_microbatches, loss_fn=loss_fn)
    torch_opt = torch.optim.SGD(stage_module.parameters(), lr=1e-3)
    flat_tokens = tokens.reshape(-1, config.seq_len)
    flat_targets = targets.reshape(-1, config.seq_len)

    def torch_step() -> None:
        torch_opt.zero_grad(set_to_none=True)
        if rank == 0 and world_size == 1:
            schedule.step(flat_tokens, target=flat_targets, losses=[])
        elif rank == 0:
            schedule.step(flat_tokens)
        elif rank == world_size - 1:
            schedule.step(target=flat_targets, losses=[])
        else:
            schedule.step()
        torch_opt.step()

    ours, theirs = _alternate(ours_step, torch_step, warmup, steps)
    timings = [(a.kind, a.microbatch, a.chunk, s, e) for a, s, e in ctx.timings]
    results.put((rank, ours, theirs, timings))
    dist.destroy_process_group()


def bench(num_stages: int, num_microbatches: int, warmup: int, steps: int,
          threads: int) -> dict[str, float]:
    """Run both schedules on ``num_stages`` ranks and return step times (s), their ratio and bubbles.

    ``paired_ratio`` is the median over steps of pplab's step time divided by
    the torch step that ran right after it, which cancels slow changes in the
    load of a shared machine.
    """
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    with tempfile.TemporaryDirectory(prefix="pplab-bench-") as tmp:
        init_method = f"file://{Path(tmp) / 'rendezvous'}"
        procs = [context.Process(target=_worker,
                                 args=(r, num_stages, init_method, num_microbatches, warmup,
                                       steps, threads, results))
                 for r in range(num_stages)]
        for proc in procs:
            proc.start()
        per_rank = sorted(results.get(timeout=900) for _ in procs)
        for proc in procs:
            proc.join(timeout=60)
    ours = [max(ts) for ts in zip(*(r[1] for r in per_rank))]
    theirs = [max(ts) for ts in zip(*(r[2] for r in per_rank))]
    timings = [r[3] for r in per_rank]
    result = RunResult("1f1b", num_stages, num_microbatches, 1, [], {}, [], {}, [], [], timings, [])
    return {
        "ours_s": statistics.median(ours),
        "torch_s": statistics.median(theirs),
        "ours_min_s": min(ours),
        "torch_min_s": min(theirs),
        "paired_ratio": statistics.median(o / t for o, t in zip(ours, theirs)),
        "bubble": measured_bubble(result),
        "closed_form": (num_stages - 1) / (num_microbatches + num_stages - 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--microbatches", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args(argv)

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"model {BENCH_MODEL._asdict()}, M={args.microbatches}, gloo, "
          f"{args.threads} thread(s) per rank")
    rows = []
    for num_stages in args.stages:
        row = bench(num_stages, args.microbatches, args.warmup, args.steps, args.threads)
        rows.append((num_stages, row))
        print(f"P={num_stages}: pplab median {row['ours_s'] * 1e3:.1f} ms/step "
              f"({1 / row['ours_s']:.2f} steps/s, min {row['ours_min_s'] * 1e3:.1f} ms), "
              f"torch Schedule1F1B median {row['torch_s'] * 1e3:.1f} ms/step "
              f"({1 / row['torch_s']:.2f} steps/s, min {row['torch_min_s'] * 1e3:.1f} ms), "
              f"paired ratio {row['paired_ratio']:.3f}; measured bubble {row['bubble']:.3f}, "
              f"(P-1)/(M+P-1) = {row['closed_form']:.3f}", flush=True)
    if args.markdown:
        print("\n| P | M | pplab steps/s (median) | torch steps/s (median) | pplab min ms "
              "| torch min ms | paired ratio pplab/torch | measured bubble | (P-1)/(M+P-1) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for num_stages, row in rows:
            print(f"| {num_stages} | {args.microbatches} | {1 / row['ours_s']:.2f} | "
                  f"{1 / row['torch_s']:.2f} | {row['ours_min_s'] * 1e3:.1f} | "
                  f"{row['torch_min_s'] * 1e3:.1f} | {row['paired_ratio']:.3f} | "
                  f"{row['bubble']:.3f} | {row['closed_form']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
