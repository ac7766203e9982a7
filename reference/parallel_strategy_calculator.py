"""Command-line parallel strategy calculator: memory per GPU, traffic and the best configurations.

Example::

    python -m reference.parallel_strategy_calculator --model llama-2-70b \\
        --gpu h100-80gb --gpus 64 --gpus-per-node 8

Without ``--tp/--pp/--dp`` it ranks every valid configuration by estimated
step time and details the fastest; with them it checks and details that one
configuration. ``--json`` prints the same as JSON, ``--png FILE`` draws the
memory breakdown of the listed configurations as stacked bars.
Exit status: 0 on success, 2 on invalid input or when no configuration fits.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .strategy import (
    GB,
    PRECISIONS,
    RECOMPUTE_MODES,
    ClusterSpec,
    CommVolume,
    MemoryBreakdown,
    ModelSpec,
    ParallelConfig,
    RankedConfig,
    StepTimeAssumptions,
    TrainingSettings,
    available_specs,
    communication_per_step,
    count_parameters,
    estimate_step_time,
    load_gpu,
    load_model,
    make_cluster,
    memory_per_gpu,
    recommend,
    validate_config,
)


class UsageError(Exception):
    """Invalid input, reported as one line on stderr with exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser (shared with ``pplab plan``)."""
    parser = argparse.ArgumentParser(
        prog="parallel_strategy_calculator",
        description="Estimate memory per GPU, communication per step and step time of "
        "(tp, pp, dp, ep) configurations, and rank them.",
    )
    parser.add_argument("--model", required=True, help=f"model name ({', '.join(available_specs('models'))}) or TOML path")
    parser.add_argument("--gpu", required=True, help=f"GPU name ({', '.join(available_specs('hardware'))}) or TOML path")
    parser.add_argument("--gpus", type=int, required=True, help="number of GPUs in the cluster")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node, joined by NVLink (default 8)")

    training = parser.add_argument_group("training settings")
    training.add_argument("--seq-len", type=int, default=4096, help="tokens per sequence (default 4096)")
    training.add_argument("--global-batch", type=int, default=1024, help="sequences per step (default 1024)")
    training.add_argument("--micro-batch", type=int, default=1, help="sequences per microbatch (default 1)")
    training.add_argument("--precision", choices=PRECISIONS, default="bf16", help="training precision (default bf16 mixed precision with Adam)")
    training.add_argument("--zero-stage", type=int, choices=(0, 1, 2, 3), default=1, help="ZeRO stage over the data-parallel ranks (default 1)")
    training.add_argument("--no-sequence-parallel", dest="sequence_parallel", action="store_false", help="turn sequence parallelism off")
    training.add_argument("--recompute", choices=RECOMPUTE_MODES, default="selective", help="activation recomputation (default selective)")

    assumptions = parser.add_argument_group("step-time assumptions")
    defaults = StepTimeAssumptions()
    assumptions.add_argument("--mfu", type=float, default=defaults.mfu, help=f"share of peak bf16 FLOP/s while computing (default {defaults.mfu})")
    assumptions.add_argument("--dp-overlap", type=float, default=defaults.dp_overlap, help=f"share of data-parallel traffic hidden by compute (default {defaults.dp_overlap})")

    config = parser.add_argument_group("one configuration (all of --tp --pp --dp, or none)")
    config.add_argument("--tp", type=int, help="tensor-parallel degree")
    config.add_argument("--pp", type=int, help="pipeline stages")
    config.add_argument("--dp", type=int, help="data-parallel degree")
    config.add_argument("--ep", type=int, default=1, help="expert-parallel degree, carved out of dp (default 1)")
    config.add_argument("--num-chunks", type=int, default=1, help="model chunks per pipeline rank, >1 for interleaved 1F1B (default 1)")

    output = parser.add_argument_group("output")
    output.add_argument("--top", type=int, default=5, help="configurations to list (default 5)")
    output.add_argument("--json", action="store_true", help="print JSON instead of tables")
    output.add_argument("--png", type=Path, help="draw the memory breakdown of the listed configurations into this PNG file")
    return parser


def _load_inputs(args: argparse.Namespace) -> tuple[ModelSpec, ClusterSpec, TrainingSettings, StepTimeAssumptions]:
    try:
        model = load_model(args.model)
        gpu = load_gpu(args.gpu)
        cluster = make_cluster(gpu, args.gpus, args.gpus_per_node)
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(str(error)) from None
    for flag, value in (("--seq-len", args.seq_len), ("--global-batch", args.global_batch), ("--micro-batch", args.micro_batch), ("--top", args.top)):
        if value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    for flag, value in (("--mfu", args.mfu), ("--dp-overlap", args.dp_overlap)):
        if not 0 <= value <= 1 or (flag == "--mfu" and value == 0):
            raise UsageError(f"{flag} must be a fraction in (0, 1], got {value}")
    settings = TrainingSettings(
        seq_len=args.seq_len,
        global_batch=args.global_batch,
        micro_batch=args.micro_batch,
        precision=args.precision,
        zero_stage=args.zero_stage,
        sequence_parallel=args.sequence_parallel,
        recompute=args.recompute,
    )
    assumptions = StepTimeAssumptions(mfu=args.mfu, dp_overlap=args.dp_overlap)
    return model, cluster, settings, assumptions


def _ranked(args: argparse.Namespace, model: ModelSpec, cluster: ClusterSpec, settings: TrainingSettings,
            assumptions: StepTimeAssumptions) -> list[RankedConfig]:
    chosen = (args.tp, args.pp, args.dp)
    if all(value is None for value in chosen):
        ranked = recommend(model, cluster, settings, assumptions, top=args.top)
        if not ranked:
            raise UsageError(
                f"no valid configuration of {model.name} fits {cluster.num_gpus} x {cluster.gpu.name} "
                f"({cluster.gpus_per_node} per node); add GPUs, use a GPU with more memory, "
                f"or lower memory with --recompute full, --zero-stage 3 or a smaller --micro-batch"
            )
        return ranked
    if any(value is None for value in chosen):
        raise UsageError("give all of --tp, --pp and --dp to check one configuration, or none to search")
    config = ParallelConfig(args.tp, args.pp, args.dp, args.ep, args.num_chunks)
    failures = validate_config(model, cluster, config, settings)
    if failures:
        details = "; ".join(f"{failure.rule}: {failure.reason}" for failure in failures)
        raise UsageError(f"invalid configuration tp={args.tp} pp={args.pp} dp={args.dp} ep={args.ep} num_chunks={args.num_chunks}: {details}")
    return [
        RankedConfig(
            config=config,
            step_time=estimate_step_time(model, cluster, config, settings, assumptions),
            memory=memory_per_gpu(model, config, settings),
            comm=communication_per_step(model, config, settings),
        )
    ]


def _config_label(config: ParallelConfig) -> str:
    label = f"tp{config.tp} pp{config.pp} dp{config.dp}"
    if config.ep > 1:
        label += f" ep{config.ep}"
    if config.num_chunks > 1:
        label += f" v{config.num_chunks}"
    return label


def _memory_lines(memory: MemoryBreakdown, capacity: float) -> list[str]:
    rows = [
        ("weights", memory.weights),
        ("gradients", memory.gradients),
        ("optimizer states", memory.optimizer_states),
        ("activations", memory.activations),
        ("logits", memory.logits),
        ("total", memory.total),
    ]
    lines = [f"Memory per GPU (pipeline rank {memory.pp_rank}, the fullest), GB:"]
    lines += [f"  {name:<18}{value / GB:>9.2f}" for name, value in rows]
    lines.append(f"  {'capacity':<18}{capacity / GB:>9.2f}")
    return lines


def _comm_lines(comm: CommVolume) -> list[str]:
    lines = ["Communication per GPU per step, GB sent:"]
    for name, value in (("tensor parallel", comm.tp), ("pipeline", comm.pp), ("data parallel", comm.dp), ("expert parallel", comm.ep)):
        lines.append(f"  {name:<18}{value / GB:>9.2f}")
    return lines


def format_report(model: ModelSpec, cluster: ClusterSpec, settings: TrainingSettings, ranked: list[RankedConfig]) -> str:
    """Return the text report: model summary, the first configuration's details and a ranking table."""
    counts = count_parameters(model)
    best = ranked[0]
    lines = [
        f"{model.name}: {counts.total / 1e9:.2f}B parameters, {counts.active / 1e9:.2f}B active per token",
        f"cluster: {cluster.num_gpus} x {cluster.gpu.name}, {cluster.gpus_per_node} per node",
        f"settings: seq_len {settings.seq_len}, global_batch {settings.global_batch}, micro_batch {settings.micro_batch}, "
        f"{settings.precision}, ZeRO-{settings.zero_stage}, sequence parallel {'on' if settings.sequence_parallel else 'off'}, "
        f"recompute {settings.recompute}",
        "",
        f"Recommended: {_config_label(best.config)}, estimated step {best.step_time.total:.2f} s",
        "",
        *_memory_lines(best.memory, cluster.gpu.memory_bytes),
        "",
        *_comm_lines(best.comm),
        "",
        f"{'rank':>4}  {'config':<22}{'step s':>9}{'compute':>9}{'bubble':>8}{'comm':>8}{'mem GB':>8}",
    ]
    for position, entry in enumerate(ranked, start=1):
        step = entry.step_time
        comm_time = step.tp_comm + step.pp_comm + step.dp_comm + step.ep_comm
        lines.append(
            f"{position:>4}  {_config_label(entry.config):<22}{step.total:>9.2f}{step.compute:>9.2f}"
            f"{step.bubble:>8.2f}{comm_time:>8.2f}{entry.memory.total / GB:>8.1f}"
        )
    return "\n".join(lines)


def report_json(model: ModelSpec, cluster: ClusterSpec, settings: TrainingSettings, ranked: list[RankedConfig]) -> dict:
    """Return the report as plain data: bytes, seconds and parameter counts, no rounding."""
    counts = count_parameters(model)
    return {
        "model": model.name,
        "parameters": counts._asdict(),
        "gpu": cluster.gpu.name,
        "num_gpus": cluster.num_gpus,
        "gpus_per_node": cluster.gpus_per_node,
        "settings": settings._asdict(),
        "configs": [
            {
                "config": entry.config._asdict(),
                "step_time_s": {**entry.step_time._asdict(), "total": entry.step_time.total},
                "memory_bytes": {**entry.memory._asdict(), "total": entry.memory.total},
                "comm_bytes": {**entry.comm._asdict(), "total": entry.comm.total},
            }
            for entry in ranked
        ],
    }


def draw_memory_png(path: Path, cluster: ClusterSpec, ranked: list[RankedConfig]) -> None:
    """Draw one stacked bar of memory parts (GB) per configuration, with the GPU capacity as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = ("weights", "gradients", "optimizer_states", "activations", "logits")
    labels = [_config_label(entry.config) for entry in ranked]
    figure, axes = plt.subplots(figsize=(max(6, 1.4 * len(ranked)), 4.5))
    bottoms = [0.0] * len(ranked)
    for part in parts:
        heights = [getattr(entry.memory, part) / GB for entry in ranked]
        axes.bar(labels, heights, bottom=bottoms, label=part.replace("_", " "))
        bottoms = [bottom + height for bottom, height in zip(bottoms, heights)]
    axes.axhline(cluster.gpu.memory_bytes / GB, color="black", linestyle="--", label=f"{cluster.gpu.name} capacity")
    axes.set_ylabel("GB per GPU (fullest pipeline rank)")
    axes.set_title(f"Memory per GPU on {cluster.num_gpus} x {cluster.gpu.name}")
    axes.legend(fontsize="small")
    axes.tick_params(axis="x", labelrotation=30)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    """Run the calculator; return 0 on success and 2 on invalid input or when nothing fits."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_request:
        # argparse has already printed its usage message or the help, so return its exit status.
        return int(exit_request.code or 0)
    try:
        model, cluster, settings, assumptions = _load_inputs(args)
        ranked = _ranked(args, model, cluster, settings, assumptions)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    if args.png is not None:
        try:
            draw_memory_png(args.png, cluster, ranked)
        except OSError as error:
            print(f"error: cannot write {args.png}: {error.strerror}; choose a writable path for --png", file=sys.stderr)
            return 2

    if args.json:
        print(json.dumps(report_json(model, cluster, settings, ranked), indent=2))
    else:
        print(format_report(model, cluster, settings, ranked))
    return 0


if __name__ == "__main__":
    sys.exit(main())
