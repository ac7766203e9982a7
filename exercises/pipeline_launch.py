"""Launch a pipeline-parallel training run on several processes and report on it.

On one machine, :func:`run_pipeline` (and ``python -m reference.pipeline_launch``)
spawns one process per pipeline rank. The ranks meet through a file
rendezvous in a fresh temporary directory, so two runs at once cannot
collide, and talk over gloo on loopback (or NCCL with ``--backend nccl``, one
GPU per rank, device ``cuda:rank % device_count``). The parent waits for the
results. When a rank raises, the parent stops every rank and raises
:class:`RankFailedError` with that rank's traceback. When the ranks are still
running ``timeout`` seconds after they all joined, or (gloo) when every
unfinished rank has waited in a send or receive for ``GLOO_STALL_S``
seconds, it kills them and raises :class:`PipelineDeadlockError` naming each
rank's last completed action and the operation it is blocked in. Every rank runs in its own process group and
is killed and reaped before the call returns.

Across machines, start the same module under torchrun, one process per rank::

    torchrun --nnodes 2 --nproc-per-node 2 --rdzv-backend c10d \\
        --rdzv-endpoint HOST:29500 -m reference.pipeline_launch \\
        --schedule 1f1b --stages 4 --microbatches 8 --backend nccl

Under torchrun (``RANK`` and ``WORLD_SIZE`` set) there is no parent to watch
the ranks: the process-group timeout (``--timeout``) ends a hang, and rank 0
prints the summary.

``--impl PATH`` runs the per-rank loop (:func:`run_step` and the functions it
calls) from ``PATH/pipeline_runtime.py``, where ``PATH`` is a directory laid
out like ``reference/`` (the learner's ``exercises/``). The model, the data
and the process setup always come from this package.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib
import importlib.util
import json
import logging
import multiprocessing
import os
import queue as queue_module
import signal
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist

from . import pipeline_runtime as runtime
from .schedules import SCHEDULES, WEIGHT, Action, build_schedule

logger = logging.getLogger(__name__)

STATUS_BYTES = 400
STARTUP_TIMEOUT_S = 300.0
# Seconds every unfinished rank may stay blocked in a send or receive before
# a gloo run counts as deadlocked. Blocked ranks compute nothing, so in a run
# that can finish, the awaited message arrives within milliseconds on one
# machine (10 s leaves a wide margin for a loaded one). NCCL runs wait for the
# full timeout instead, because NCCL sets up a communicator at a pair's
# first send, which can block both ranks for seconds.
GLOO_STALL_S = 10.0


class PipelineError(RuntimeError):
    """A pipeline run did not complete."""


class RankFailedError(PipelineError):
    """A rank raised an exception or exited without a result.

    ``rank`` is the failed rank, ``traceback`` its formatted traceback text
    (empty when it died without one) and ``pids`` the stopped rank processes.
    """

    def __init__(self, message: str, rank: int, traceback_text: str, pids: list[int]):
        super().__init__(message)
        self.rank = rank
        self.traceback = traceback_text
        self.pids = pids


class PipelineDeadlockError(PipelineError):
    """The ranks did not finish within the timeout.

    ``status[r]`` is rank ``r``'s last report (last completed action and the
    operation it was in); ``pids`` are the killed rank processes.
    """

    def __init__(self, message: str, status: list[str], pids: list[int]):
        super().__init__(message)
        self.status = status
        self.pids = pids


class RunSpec(NamedTuple):
    """One pipeline configuration: schedule name, M, v and the number of steps."""

    schedule: str
    num_microbatches: int
    num_chunks: int = 1
    steps: int = 1


class RunResult(NamedTuple):
    """Outcome of one configuration, as plain data.

    - ``losses``: loss of each step (sum of the ``1/M``-scaled microbatch losses).
    - ``gradients``: last step's gradient of every parameter (before the
      optimizer update), keyed by the names of :func:`runtime.build_layers`.
      ``rank_gradients[r]`` contains the ones rank ``r`` owns.
    - ``parameters``: every parameter after the last update.
    - ``peak_stash[r]``: most ``(microbatch, chunk)`` stashes rank ``r`` held at once.
    - ``actions[r]``: rank ``r``'s executed actions of the last step as
      ``(kind, microbatch, chunk)`` tuples.
    - ``timings[r]``: ``(kind, microbatch, chunk, start_s, end_s)`` per action
      of the last step, seconds from the barrier that started it.
    - ``step_times_s``: wall time of each step on the slowest rank.
    """

    schedule: str
    num_stages: int
    num_microbatches: int
    num_chunks: int
    losses: list[float]
    gradients: dict[str, np.ndarray]
    rank_gradients: list[dict[str, np.ndarray]]
    parameters: dict[str, np.ndarray]
    peak_stash: list[int]
    actions: list[list[tuple[str, int, int]]]
    timings: list[list[tuple[str, int, int, float, float]]]
    step_times_s: list[float]


class BubbleReport(NamedTuple):
    """Measured bubble fraction beside the simulator's and the closed form's.

    ``forward_s``, ``backward_s`` and ``weight_s`` are mean measured
    durations of ``F``, ``B`` and ``W`` over all ranks, in seconds. The
    simulator and the closed form use them. ``weight_s`` is 0 for schedules
    without ``W`` actions.
    """

    measured: float
    simulated: float
    closed_form: float
    forward_s: float
    backward_s: float
    weight_s: float


# ---------------------------------------------------------------------------
# argument checks and implementation loading
# ---------------------------------------------------------------------------


def check_spec(spec: RunSpec, num_stages: int, config: runtime.ModelConfig,
               check_schedule: bool = True) -> None:
    """Raise ValueError when ``spec`` cannot run on ``num_stages`` ranks with ``config``."""
    if check_schedule:
        build_schedule(spec.schedule, num_stages, spec.num_microbatches, spec.num_chunks)
    if isinstance(spec.steps, bool) or not isinstance(spec.steps, int) or spec.steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {spec.steps!r}")
    runtime.check_config(config)
    runtime.partition_blocks(config.num_layers, num_stages * spec.num_chunks)


def load_impl(impl: str | types.ModuleType | None) -> types.ModuleType:
    """Return the module that provides :func:`run_step`.

    ``impl`` is None or ``"reference"`` (this package's runtime), a module, a
    module name, or a path to a directory laid out like ``reference/`` (or to
    its ``pipeline_runtime.py``). A directory is loaded by file path as a
    private package, so its relative imports resolve to its own siblings.
    """
    if impl is None or impl == "reference":
        return runtime
    if isinstance(impl, types.ModuleType):
        return impl
    path = Path(impl)
    if not path.exists():
        return importlib.import_module(str(impl))
    if path.is_file():
        path = path.parent
    path = path.resolve()
    if not (path / "pipeline_runtime.py").is_file():
        raise ValueError(f"impl directory {str(path)!r} has no pipeline_runtime.py")
    package = "_pplab_impl_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    if package not in sys.modules:
        spec = importlib.util.spec_from_loader(package, loader=None, is_package=True)
        module = importlib.util.module_from_spec(spec)
        module.__path__ = [str(path)]
        sys.modules[package] = module
    return importlib.import_module(f"{package}.pipeline_runtime")


def _impl_reference(impl: str | types.ModuleType | None) -> str:
    """Turn ``impl`` into a string a spawned process can load again."""
    if impl is None:
        return "reference"
    if isinstance(impl, types.ModuleType):
        if impl is runtime:
            return "reference"
        file = getattr(impl, "__file__", None)
        if file and Path(file).name == "pipeline_runtime.py":
            return str(Path(file).resolve().parent)
        return impl.__name__
    if impl != "reference" and Path(impl).exists():
        return str(Path(impl).resolve())
    return str(impl)


# ---------------------------------------------------------------------------
# what each rank runs
# ---------------------------------------------------------------------------


def _device_for(rank: int, backend: str) -> torch.device:
    if backend == "nccl":
        device = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def _channel_groups(world_size: int, backend: str) -> dict[tuple[int, int, int], Any]:
    """Create one two-rank group per (sender, receiver, kind) between neighbours, for NCCL.

    Every rank creates every group in the same order, as ``new_group``
    requires. Gloo matches by tag and uses the default group.
    """
    if backend != "nccl" or world_size < 2:
        return {}
    pairs = set()
    for rank in range(world_size):
        pairs.add((rank, (rank + 1) % world_size))
        pairs.add((rank, (rank - 1) % world_size))
    groups = {}
    for src, dst in sorted(pairs):
        for kind in (runtime.ACTIVATION, runtime.GRADIENT):
            groups[(src, dst, kind)] = dist.new_group(sorted({src, dst}))
    return groups


def _run_spec_on_rank(impl: types.ModuleType, spec: RunSpec, rank: int, world_size: int,
                      options: dict[str, Any], device: torch.device,
                      channel_groups: dict, report, plan: list | None = None) -> dict[str, Any]:
    config = runtime.ModelConfig(**options["model"])
    ctx = runtime.RankContext(config, rank, world_size, spec.num_chunks, spec.num_microbatches,
                              device, report=report, channel_groups=channel_groups)
    if plan is not None:
        actions = [Action(*action) for action in plan]
    else:
        actions = build_schedule(spec.schedule, world_size, spec.num_microbatches,
                                 spec.num_chunks)[rank]
    named = ctx.named_parameters()
    optimizer = runtime.make_optimizer(options["optimizer"], [p for _, p in named], options["lr"])

    losses, step_times, gradients = [], [], {}
    for step in range(spec.steps):
        optimizer.zero_grad(set_to_none=True)
        tokens, targets = runtime.make_batch(config, spec.num_microbatches,
                                             options["data_seed"] + step)

        # run the step between two barriers, so step time is the slowest rank's
        dist.barrier()
        ctx.start_step()
        started = time.perf_counter()
        loss = impl.run_step(ctx, actions, tokens, targets)
        dist.barrier()
        step_times.append(time.perf_counter() - started)
        losses.append(float(loss))

        gradients = {name: (p.grad.detach().cpu().numpy().copy() if p.grad is not None
                            else np.zeros(tuple(p.shape)))
                     for name, p in named}
        optimizer.step()

    if ctx.stash:
        raise RuntimeError(f"rank {rank} still has stashed activations for (microbatch, chunk) "
                           f"{sorted(ctx.stash)} after its last action; a B or W pass is missing")
    return {
        "losses": losses,
        "gradients": gradients,
        "parameters": {name: p.detach().cpu().numpy().copy() for name, p in named},
        "peak_stash": ctx.peak_stash,
        "actions": [tuple(a) for a, _, _ in ctx.timings],
        "timings": [(a.kind, a.microbatch, a.chunk, s, e) for a, s, e in ctx.timings],
        "step_times_s": step_times,
    }


def _run_rank(rank: int, world_size: int, init_method: str, specs: list[RunSpec],
              options: dict[str, Any], report) -> list[dict[str, Any]]:
    torch.set_num_threads(options["threads"])
    backend = options["backend"]
    device = _device_for(rank, backend)
    init_kwargs: dict[str, Any] = {}
    if backend == "nccl":
        init_kwargs["device_id"] = device
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=options["pg_timeout"]),
                            **init_kwargs)
    try:
        impl = load_impl(options["impl"])
        groups = _channel_groups(world_size, backend)
        dist.barrier()
        report("ready")
        results = []
        plans = options.get("plans")
        for index, spec in enumerate(specs):
            plan = plans[index][rank] if plans else None
            results.append(_run_spec_on_rank(impl, RunSpec(*spec), rank, world_size, options,
                                             device, groups, report, plan))
        report("done")
        return results
    finally:
        dist.destroy_process_group()


def _spawned_rank(rank: int, world_size: int, init_method: str, specs: list, options: dict,
                  results: Any, status: Any) -> None:
    """Entry point of a spawned rank: run, then put ``(rank, kind, payload)`` on ``results``."""
    os.setpgid(0, 0)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    logging.basicConfig(level=options["log_level"],
                        format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s")

    def report(text: str) -> None:
        data = f"{time.time():.3f} {text}".encode()[:STATUS_BYTES - 1]
        offset = rank * STATUS_BYTES
        status[offset:offset + len(data) + 1] = data + b"\0"

    try:
        payload = _run_rank(rank, world_size, init_method, specs, options, report)
    except BaseException:
        results.put((rank, "error", traceback.format_exc()))
        results.close()
        results.join_thread()
        os._exit(1)
    results.put((rank, "ok", payload))
    results.close()
    results.join_thread()


# ---------------------------------------------------------------------------
# the parent: spawn, wait, report
# ---------------------------------------------------------------------------


def _read_status(status: Any, rank: int) -> str:
    raw = bytes(status[rank * STATUS_BYTES:(rank + 1) * STATUS_BYTES]).split(b"\0", 1)[0]
    return raw.decode(errors="replace")


def _kill_all(processes: list) -> None:
    for proc in processes:
        if proc.pid is None or proc.exitcode is not None:
            continue
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.kill()
        except (ProcessLookupError, ValueError, AttributeError):
            pass
    for proc in processes:
        if proc.pid is not None:
            proc.join(timeout=10)


def _describe_status(status: Any, world_size: int, now: float) -> list[str]:
    lines = []
    for rank in range(world_size):
        text = _read_status(status, rank)
        stamp, _, state = text.partition(" ")
        try:
            since = f" (for the last {now - float(stamp):.1f} s)"
        except ValueError:
            since, state = "", "no report yet"
        lines.append(f"rank {rank}: {state}{since}")
    return lines


def _start_method(backend: str) -> str:
    """Return how rank processes start: forked on CPU (torch is already imported), spawned for CUDA.

    CUDA cannot be used in a forked child, so NCCL runs always spawn.
    ``PPLAB_START_METHOD`` overrides the choice.
    """
    chosen = os.environ.get("PPLAB_START_METHOD")
    if chosen:
        return chosen
    if backend == "nccl" or "fork" not in multiprocessing.get_all_start_methods():
        return "spawn"
    return "fork"


def _spawn_and_collect(specs: list[RunSpec], num_stages: int, options: dict[str, Any],
                       timeout: float) -> list[list[dict[str, Any]]]:
    context = multiprocessing.get_context(_start_method(options["backend"]))
    results = context.Queue()
    status = context.Array("c", STATUS_BYTES * num_stages, lock=False)
    with tempfile.TemporaryDirectory(prefix="pplab-rdzv-") as tmp:
        init_method = f"file://{Path(tmp) / 'rendezvous'}"
        processes = [
            context.Process(target=_spawned_rank,
                            args=(rank, num_stages, init_method, [tuple(s) for s in specs],
                                  options, results, status),
                            daemon=True)
            for rank in range(num_stages)
        ]
        try:
            for proc in processes:
                proc.start()
            stall = GLOO_STALL_S if options["backend"] == "gloo" else None
            return _collect(processes, results, status, num_stages, timeout, stall)
        finally:
            _kill_all(processes)
            results.close()


# Words of the error a rank gets when its peer has died: a consequence, not a cause.
PEER_FAILURE_WORDS = ("Connection closed by peer", "remote worker crashing", "Connection reset by peer",
                      "Broken pipe")
CAUSE_GRACE_S = 1.0


def _first_cause(rank: int, payload: str, results: Any, num_stages: int,
                 reported: set[int] = frozenset()) -> tuple[int, str]:
    """Pick the error that started a failure: wait briefly for other ranks' errors.

    When one rank raises, its peers fail soon after because the connection
    to it closed, and their reports can arrive first. An error that does not
    read like a dead peer wins; among equals, the lowest rank. The wait ends
    early once every rank has reported (``reported``: ranks that already
    delivered a result).
    """
    errors = {rank: payload}
    ranks_reported = set(reported) | {rank}
    deadline = time.monotonic() + CAUSE_GRACE_S
    while time.monotonic() < deadline and len(ranks_reported) < num_stages:
        try:
            other, kind, text = results.get(timeout=0.05)
        except queue_module.Empty:
            continue
        ranks_reported.add(other)
        if kind == "error":
            errors[other] = text
    causes = [r for r, text in errors.items() if not any(word in text for word in PEER_FAILURE_WORDS)]
    chosen = min(causes or errors)
    return chosen, errors[chosen]


def _stalled_since(status: Any, ranks: list[int]) -> float | None:
    """Return when the last of ``ranks`` became blocked in communication (``time.time()``), or None.

    None means some rank in ``ranks`` is computing or has not reported yet.
    """
    since = []
    for rank in ranks:
        stamp, _, state = _read_status(status, rank).partition(" ")
        if "; blocked in " not in state:
            return None
        try:
            since.append(float(stamp))
        except ValueError:
            return None
    return max(since) if since else None


def _collect(processes: list, results: Any, status: Any, num_stages: int,
             timeout: float, stall: float | None = None) -> list[list[dict[str, Any]]]:
    """Wait for every rank's results; raise when a rank fails or the run hangs.

    A hang is the ranks still running ``timeout`` seconds after they all
    joined, or, with ``stall``, every rank without a result blocked in a
    send or receive for ``stall`` seconds.
    """
    payloads: dict[int, list] = {}
    started = time.monotonic()
    running_since = None
    while len(payloads) < num_stages:
        try:
            rank, kind, payload = results.get(timeout=0.05)
        except queue_module.Empty:
            rank = None
        if rank is not None:
            if kind == "error":
                rank, payload = _first_cause(rank, payload, results, num_stages, set(payloads))
                raise RankFailedError(
                    f"rank {rank} of {num_stages} raised an exception; all ranks were stopped. "
                    f"Traceback of rank {rank}:\n{payload}", rank, payload,
                    [p.pid for p in processes])
            payloads[rank] = payload
            continue

        now = time.monotonic()
        if running_since is None:
            ready = all(_read_status(status, r).partition(" ")[2] for r in range(num_stages))
            if ready:
                running_since = now
            elif now - started > max(STARTUP_TIMEOUT_S, timeout):
                raise PipelineDeadlockError(
                    f"the {num_stages} ranks did not all join the process group within "
                    f"{max(STARTUP_TIMEOUT_S, timeout):.0f} s",
                    [_read_status(status, r) for r in range(num_stages)],
                    [p.pid for p in processes])
        elif now - running_since > timeout:
            lines = _describe_status(status, num_stages, time.time())
            raise PipelineDeadlockError(
                f"pipeline run timed out after {timeout:g} s, probably a deadlock; "
                "all ranks were killed. Where each rank stopped:\n  " + "\n  ".join(lines),
                lines, [p.pid for p in processes])
        elif stall is not None:
            waiting = [r for r in range(num_stages) if r not in payloads]
            since = _stalled_since(status, waiting)
            if since is not None and time.time() - since > stall:
                lines = _describe_status(status, num_stages, time.time())
                raise PipelineDeadlockError(
                    f"no rank can go on: every unfinished rank has been blocked in a send or "
                    f"receive for over {stall:g} s; all ranks were killed. "
                    "Where each rank stopped:\n  " + "\n  ".join(lines),
                    lines, [p.pid for p in processes])

        for rank, proc in enumerate(processes):
            if rank not in payloads and proc.exitcode is not None:
                # give the queue a moment: the rank may have put its message just before exiting
                try:
                    rank_done, kind, payload = results.get(timeout=1.0)
                except queue_module.Empty:
                    raise RankFailedError(
                        f"rank {rank} exited with code {proc.exitcode} without a result; "
                        "all ranks were stopped", rank, "", [p.pid for p in processes]) from None
                if kind == "error":
                    raise RankFailedError(
                        f"rank {rank_done} of {num_stages} raised an exception; all ranks were "
                        f"stopped. Traceback of rank {rank_done}:\n{payload}", rank_done, payload,
                        [p.pid for p in processes])
                payloads[rank_done] = payload
                break
    return [payloads[r] for r in range(num_stages)]


def _merge(spec: RunSpec, num_stages: int, per_rank: list[dict[str, Any]]) -> RunResult:
    gradients: dict[str, np.ndarray] = {}
    parameters: dict[str, np.ndarray] = {}
    for payload in per_rank:
        gradients.update(payload["gradients"])
        parameters.update(payload["parameters"])
    return RunResult(
        schedule=spec.schedule,
        num_stages=num_stages,
        num_microbatches=spec.num_microbatches,
        num_chunks=spec.num_chunks,
        losses=per_rank[-1]["losses"],
        gradients=gradients,
        rank_gradients=[p["gradients"] for p in per_rank],
        parameters=parameters,
        peak_stash=[p["peak_stash"] for p in per_rank],
        actions=[p["actions"] for p in per_rank],
        timings=[p["timings"] for p in per_rank],
        step_times_s=[max(ts) for ts in zip(*(p["step_times_s"] for p in per_rank))],
    )


def _options(backend: str, impl: Any, threads: int, timeout: float, model: runtime.ModelConfig,
             optimizer: str, lr: float, data_seed: int) -> dict[str, Any]:
    return {
        "backend": backend,
        "impl": _impl_reference(impl),
        "threads": threads,
        "pg_timeout": timeout,
        "model": model._asdict(),
        "optimizer": optimizer,
        "lr": lr,
        "data_seed": data_seed,
        "log_level": logging.getLogger(runtime.__name__).getEffectiveLevel(),
    }


def run_pipelines(specs: list[RunSpec], num_stages: int, *,
                  model: runtime.ModelConfig = runtime.ModelConfig(),
                  backend: str = "gloo", impl: str | types.ModuleType | None = "reference",
                  timeout: float = 120.0, optimizer: str = "sgd", lr: float = 0.1,
                  data_seed: int = 0, threads: int = 1,
                  plans: list[list[list[Any]]] | None = None) -> list[RunResult]:
    """Run several configurations on one group of ``num_stages`` spawned ranks.

    ``plans``, when given, holds one action list per configuration and rank
    (``plans[i][rank]``, items ``(kind, microbatch, chunk)``), which the ranks
    run instead of building the schedule from ``schedules.py``. The grader
    uses it to test the runtime on known-good schedules.

    The configurations run one after another in the same processes, which
    saves starting ``P`` interpreters per configuration. ``timeout`` (seconds)
    bounds the whole sequence once all ranks have joined. The process-group
    timeout is twice that plus 30 s, so the parent notices a hang before a
    rank's own receive times out. Raises ValueError for invalid arguments,
    :class:`RankFailedError` or :class:`PipelineDeadlockError` when a run does
    not complete.

    NOTE: ranks start with the ``spawn`` method, which re-imports the
    caller's main module in every rank. A script that calls this function
    must do so under ``if __name__ == "__main__":``.
    """
    _check_run_arguments(num_stages, backend, timeout, threads, optimizer)
    specs = [RunSpec(*s) for s in specs]
    if plans is not None and (len(plans) != len(specs) or any(len(p) != num_stages for p in plans)):
        raise ValueError(f"plans must hold one action list per configuration ({len(specs)}) "
                         f"and rank ({num_stages})")
    for spec in specs:
        check_spec(spec, num_stages, model, check_schedule=plans is None)
    options = _options(backend, impl, threads, 2 * timeout + 30, model, optimizer, lr, data_seed)
    options["plans"] = [[[list(action) for action in rank] for rank in plan] for plan in plans] \
        if plans is not None else None
    per_rank = _spawn_and_collect(specs, num_stages, options, timeout)
    return [_merge(spec, num_stages, [per_rank[r][i] for r in range(num_stages)])
            for i, spec in enumerate(specs)]


def _check_run_arguments(num_stages: int, backend: str, timeout: float, threads: int,
                         optimizer: str) -> None:
    if isinstance(num_stages, bool) or not isinstance(num_stages, int) or num_stages < 1:
        raise ValueError(f"num_stages must be an integer >= 1, got {num_stages!r}")
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    if backend == "nccl" and not torch.cuda.is_available():
        raise ValueError("backend 'nccl' needs CUDA, but torch.cuda.is_available() is False; "
                         "use backend 'gloo'")
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")


def run_pipeline(schedule: str = "1f1b", num_stages: int = 4, num_microbatches: int = 8,
                 num_chunks: int = 1, steps: int = 1, *,
                 model: runtime.ModelConfig = runtime.ModelConfig(),
                 backend: str = "gloo", impl: str | types.ModuleType | None = "reference",
                 timeout: float = 120.0, optimizer: str = "sgd", lr: float = 0.1,
                 data_seed: int = 0, threads: int = 1, trace_path: str | None = None,
                 png_path: str | None = None) -> RunResult:
    """Run ``steps`` training steps of ``schedule`` on ``num_stages`` spawned ranks.

    ``model`` sets the model sizes, dtype and weight seed; step ``k`` trains on
    ``make_batch(model, M, data_seed + k)``. ``trace_path`` writes a Chrome
    trace and ``png_path`` a Gantt chart of the last step. See
    :func:`run_pipelines` for ``timeout`` and the errors raised.
    """
    result = run_pipelines([RunSpec(schedule, num_microbatches, num_chunks, steps)], num_stages,
                           model=model, backend=backend, impl=impl, timeout=timeout,
                           optimizer=optimizer, lr=lr, data_seed=data_seed, threads=threads)[0]
    if trace_path:
        write_chrome_trace(result, trace_path)
    if png_path:
        plot_gantt(result, png_path)
    return result


# ---------------------------------------------------------------------------
# measured bubble, trace and chart
# ---------------------------------------------------------------------------


def measured_bubble(result: RunResult) -> float:
    """Idle share of the last step: ``1 - busy / (P * makespan)`` over all ranks.

    ``makespan`` runs from the earliest action start to the latest end; busy
    time is the sum of the recorded action intervals.
    """
    intervals = [(s, e) for rank in result.timings for *_, s, e in rank]
    if not intervals:
        return 0.0
    makespan = max(e for _, e in intervals) - min(s for s, _ in intervals)
    busy = sum(e - s for s, e in intervals)
    return 1.0 - busy / (result.num_stages * makespan) if makespan > 0 else 0.0


def bubble_report(result: RunResult) -> BubbleReport:
    """Compare the measured bubble with the simulator and the closed form at measured pass times."""
    # Imported here so that a broken bubbles.py or simulator.py in a
    # learner's copy does not stop the pipeline itself from running.
    from .bubbles import bubble_fraction
    from .simulator import simulate

    durations: dict[str, list[float]] = {"F": [], "B": [], "W": []}
    for rank in result.timings:
        for kind, _, _, start, end in rank:
            durations[kind].append(end - start)
    mean = {kind: (sum(d) / len(d) if d else 0.0) for kind, d in durations.items()}
    schedule = build_schedule(result.schedule, result.num_stages, result.num_microbatches,
                              result.num_chunks)
    has_weight = any(a.kind == WEIGHT for rank in schedule for a in rank)
    weight_s = mean["W"] if has_weight else 0.0
    timeline = simulate(schedule, mean["F"], mean["B"], weight_s)
    closed = bubble_fraction(result.schedule, result.num_stages, result.num_microbatches,
                             result.num_chunks, forward_time=mean["F"], backward_time=mean["B"],
                             weight_time=weight_s)
    return BubbleReport(measured_bubble(result), timeline.bubble_fraction, closed,
                        mean["F"], mean["B"], weight_s)


def chrome_trace(result: RunResult) -> dict[str, Any]:
    """Return the last step as a Chrome trace: one ``"X"`` event per action, pid = rank, times in us."""
    events: list[dict[str, Any]] = []
    for rank, rank_timings in enumerate(result.timings):
        events.append({"name": "process_name", "ph": "M", "pid": rank, "tid": 0,
                       "args": {"name": f"rank {rank}"}})
        for kind, mb, chunk, start, end in rank_timings:
            events.append({
                "name": str(Action(kind, mb, chunk)), "cat": kind, "ph": "X",
                "ts": start * 1e6, "dur": (end - start) * 1e6, "pid": rank, "tid": 0,
                "args": {"microbatch": mb, "chunk": chunk,
                         "virtual_stage": chunk * result.num_stages + rank},
            })
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def write_chrome_trace(result: RunResult, path: str | os.PathLike) -> None:
    """Write :func:`chrome_trace` as JSON to ``path`` (opens in Perfetto or chrome://tracing)."""
    Path(path).write_text(json.dumps(chrome_trace(result)))


def plot_gantt(result: RunResult, path: str | os.PathLike) -> None:
    """Draw the last step's measured actions per rank as a Gantt chart PNG at ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"F": "#4c8bd6", "B": "#e0803a", "W": "#58a55c"}
    fig, ax = plt.subplots(figsize=(12, 1 + 0.6 * result.num_stages))
    for rank, rank_timings in enumerate(result.timings):
        for kind, mb, chunk, start, end in rank_timings:
            ax.broken_barh([(start * 1e3, (end - start) * 1e3)], (rank - 0.4, 0.8),
                           facecolors=colors[kind], edgecolors="black", linewidth=0.3)
            ax.text((start + end) / 2 * 1e3, rank, str(Action(kind, mb, chunk)),
                    ha="center", va="center", fontsize=6)
    ax.set_yticks(range(result.num_stages), [f"rank {r}" for r in range(result.num_stages)])
    ax.invert_yaxis()
    ax.set_xlabel("time since step start (ms)")
    ax.set_title(f"{result.schedule}: P={result.num_stages}, M={result.num_microbatches}, "
                 f"v={result.num_chunks}, measured bubble {measured_bubble(result):.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pplab run",
        description="Run one pipeline-parallel training step on several processes and "
                    "compare the measured bubble with the simulated and closed-form ones.")
    parser.add_argument("--schedule", choices=sorted(SCHEDULES), default="1f1b")
    parser.add_argument("--stages", type=int, default=4, help="pipeline ranks P (processes)")
    parser.add_argument("--microbatches", type=int, default=8, help="microbatches M per step")
    parser.add_argument("--chunks", type=int, default=None,
                        help="chunks v per rank (interleaved only; default 2 there, else 1)")
    parser.add_argument("--steps", type=int, default=1, help="training steps")
    parser.add_argument("--backend", choices=("gloo", "nccl"), default="gloo")
    parser.add_argument("--impl", default="reference",
                        help="'reference' or a directory laid out like reference/ "
                             "whose pipeline_runtime.py provides run_step")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds the ranks may run after joining before the run "
                             "is reported as a deadlock")
    parser.add_argument("--trace", default=None, help="write a Chrome trace (JSON) here")
    parser.add_argument("--png", default=None, help="write the measured Gantt chart (PNG) here")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--layers", type=int, default=8, help="transformer blocks")
    parser.add_argument("--d-model", type=int, default=64, help="hidden size")
    parser.add_argument("--seq-len", type=int, default=32, help="tokens per sequence")
    parser.add_argument("--microbatch-size", type=int, default=4, help="sequences per microbatch")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--verbose", action="store_true",
                        help="log every send and receive (debug level)")
    return parser


def _print_summary(result: RunResult) -> None:
    report = bubble_report(result)
    print(f"schedule {result.schedule}, P={result.num_stages}, M={result.num_microbatches}, "
          f"v={result.num_chunks}")
    for step, loss in enumerate(result.losses):
        print(f"step {step}: loss {loss:.6f}, step time {result.step_times_s[step] * 1e3:.1f} ms")
    print(f"peak stashed microbatches per rank: {result.peak_stash}")
    print(f"mean pass times (ms): F {report.forward_s * 1e3:.3f}, B {report.backward_s * 1e3:.3f}, "
          f"W {report.weight_s * 1e3:.3f}")
    print(f"bubble fraction: measured {report.measured:.3f}, simulated {report.simulated:.3f} "
          f"(measured pass times, free communication), closed form {report.closed_form:.3f}")


def _main_torchrun(args: argparse.Namespace, spec: RunSpec, model: runtime.ModelConfig) -> int:
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    options = _options(args.backend, args.impl, args.threads, args.timeout, model, "sgd", 0.1, 0)
    payload = _run_rank_torchrun(rank, world_size, spec, options)
    if rank == 0:
        result = _merge(spec, world_size, payload)
        _print_summary(result)
        if args.trace:
            write_chrome_trace(result, args.trace)
        if args.png:
            plot_gantt(result, args.png)
    return 0


def _run_rank_torchrun(rank: int, world_size: int, spec: RunSpec,
                       options: dict[str, Any]) -> list[dict[str, Any]]:
    gathered: list[Any] = [None] * world_size

    def report(text: str) -> None:
        logger.debug("rank %s: %s", rank, text)

    torch.set_num_threads(options["threads"])
    device = _device_for(rank, options["backend"])
    dist.init_process_group(options["backend"], init_method="env://",
                            timeout=datetime.timedelta(seconds=options["pg_timeout"]),
                            **({"device_id": device} if options["backend"] == "nccl" else {}))
    try:
        impl = load_impl(options["impl"])
        groups = _channel_groups(world_size, options["backend"])
        payload = _run_spec_on_rank(impl, spec, rank, world_size, options, device, groups, report)
        dist.gather_object(payload, gathered if rank == 0 else None, dst=0)
    finally:
        dist.destroy_process_group()
    return gathered


def main(argv: list[str] | None = None) -> int:
    """Run ``pplab run``; return 0 on success, 1 when the run failed, 2 for invalid arguments."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    if args.verbose:
        logging.getLogger(runtime.__name__).setLevel(logging.DEBUG)
    chunks = args.chunks
    if chunks is None:
        chunks = 2 if args.schedule == "interleaved" else 1
    spec = RunSpec(args.schedule, args.microbatches, chunks, args.steps)
    try:
        model = runtime.ModelConfig(vocab_size=64, seq_len=args.seq_len, d_model=args.d_model,
                                    num_heads=4, num_layers=args.layers,
                                    microbatch_size=args.microbatch_size, dtype=args.dtype)
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            check_spec(spec, int(os.environ["WORLD_SIZE"]), model)
            return _main_torchrun(args, spec, model)
        result = run_pipeline(args.schedule, args.stages, args.microbatches, chunks, args.steps,
                              model=model, backend=args.backend, impl=args.impl,
                              timeout=args.timeout, threads=args.threads,
                              trace_path=args.trace, png_path=args.png)
    except ValueError as exc:
        print(f"pplab run: error: {exc}", file=sys.stderr)
        return 2
    except RankFailedError as exc:
        lines = exc.traceback.strip().splitlines()
        if lines and lines[-1].startswith("NotImplementedError"):
            # A stub, not a bug: one line instead of a rank's traceback.
            frames = [line.strip() for line in lines if line.strip().startswith("File ")]
            print(f"pplab run: rank {exc.rank} reached a function that is not implemented yet "
                  f"({frames[-1] if frames else 'no frame'}); finish it first", file=sys.stderr)
        else:
            print(f"pplab run: {exc}", file=sys.stderr)
        return 1
    except PipelineError as exc:
        print(f"pplab run: {exc}", file=sys.stderr)
        return 1
    _print_summary(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
