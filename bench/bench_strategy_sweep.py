"""Time the strategy search: every shipped model on a 4,096-GPU cluster, and the CLI start to finish.

Run from the repository root::

    python bench/bench_strategy_sweep.py [--gpus 4096] [--repeat 5]

For each model it prints the candidates enumerated, the valid ones, the
fastest configuration and the best wall time of ``recommend`` over
``--repeat`` runs. The last line times ``python -m
reference.parallel_strategy_calculator`` for Llama-2-70B on 64 H100s,
interpreter start included.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from reference.strategy import (  # noqa: E402
    TrainingSettings,
    available_specs,
    enumerate_configs,
    load_gpu,
    load_model,
    make_cluster,
    recommend,
)


def best_time(function, repeat: int) -> float:
    """Return the fastest of ``repeat`` wall-clock timings of ``function()``, seconds."""
    timings = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        timings.append(time.perf_counter() - start)
    return min(timings)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=4096, help="GPUs in the swept cluster (default 4096)")
    parser.add_argument("--gpu", default="h100-80gb", help="GPU spec name (default h100-80gb)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per model; the best is printed (default 5)")
    args = parser.parse_args()

    cluster = make_cluster(load_gpu(args.gpu), args.gpus, 8)
    settings = TrainingSettings(seq_len=4096, global_batch=8192)
    print(f"{args.gpus} x {args.gpu}, seq_len {settings.seq_len}, global_batch {settings.global_batch}, Python {sys.version.split()[0]}")
    print(f"{'model':<16}{'candidates':>11}{'valid':>7}{'seconds':>10}  fastest")
    total = 0.0
    for name in available_specs("models"):
        model = load_model(name)
        candidates = sum(1 for _ in enumerate_configs(model, cluster))
        seconds = best_time(lambda: recommend(model, cluster, settings), args.repeat)
        total += seconds
        ranked = recommend(model, cluster, settings, top=1)
        fastest = f"{ranked[0].config} {ranked[0].step_time.total:.2f} s" if ranked else "none fits"
        print(f"{name:<16}{candidates:>11}{len(recommend(model, cluster, settings)):>7}{seconds:>10.3f}  {fastest}")
    print(f"{'all models':<34}{total:>10.3f}")

    command = [
        sys.executable, "-m", "reference.parallel_strategy_calculator",
        "--model", "llama-2-70b", "--gpu", "h100-80gb", "--gpus", "64", "--gpus-per-node", "8",
    ]
    seconds = best_time(lambda: subprocess.run(command, cwd=REPO_ROOT, capture_output=True, check=True), args.repeat)
    print(f"CLI, llama-2-70b on 64 x h100-80gb, interpreter start included: {seconds:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
