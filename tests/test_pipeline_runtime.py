"""Tests of the multi-process pipeline runtime and its launcher.

Gradients are checked against a single-process run of the same model in
float64. Multi-process runs put many configurations in one spawned group,
because starting a rank (importing torch) costs seconds on a 2-core machine.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reference import pipeline_launch as launch
from reference import pipeline_runtime as runtime
from reference.bubbles import peak_activations
from reference.schedules import build_schedule
from reference.simulator import simulate

ROOT = Path(__file__).resolve().parents[1]
TINY = runtime.ModelConfig(vocab_size=32, seq_len=8, d_model=16, num_heads=2, num_layers=8,
                           microbatch_size=2, dtype="float64", seed=3)
SCHEDULE_NAMES = ("gpipe", "1f1b", "interleaved", "zero_bubble_h1")
GRADIENT_RTOL = 1e-10


def valid_specs(num_stages: int, microbatches: range) -> list[launch.RunSpec]:
    """Every schedule at each M; interleaved (v = 2) only where M < P or P divides M."""
    specs = []
    for name in SCHEDULE_NAMES:
        for m in microbatches:
            if name == "interleaved":
                if m < num_stages or m % num_stages == 0:
                    specs.append(launch.RunSpec(name, m, 2))
            else:
                specs.append(launch.RunSpec(name, m, 1))
    return specs


@functools.lru_cache(maxsize=None)
def reference(config: runtime.ModelConfig, num_microbatches: int, steps: int = 1,
              optimizer: str = "sgd", lr: float = 0.1) -> runtime.ReferenceResult:
    return runtime.reference_run(config, num_microbatches, steps, optimizer=optimizer, lr=lr)


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-300))


def check_against_reference(spec: launch.RunSpec, result: launch.RunResult,
                            config: runtime.ModelConfig = TINY, rtol: float = GRADIENT_RTOL) -> None:
    P = result.num_stages
    where = f"{spec.schedule} P={P} M={spec.num_microbatches} v={spec.num_chunks}"
    expected = reference(config, spec.num_microbatches)

    assert result.losses[0] == pytest.approx(expected.losses[0], rel=rtol), where
    assert sorted(result.gradients) == sorted(expected.gradients), where
    for name, grad in expected.gradients.items():
        assert relative_error(result.gradients[name], grad) <= rtol, f"{where}: {name}"

    schedule = build_schedule(spec.schedule, P, spec.num_microbatches, spec.num_chunks)
    for rank in range(P):
        assert result.actions[rank] == [tuple(a) for a in schedule[rank]], f"{where} rank {rank}"
    timeline = simulate(schedule, 1.0, 1.0, 1.0)
    assert result.peak_stash == timeline.peak_activations, where
    for rank in range(P):
        bound = peak_activations(spec.schedule, P, spec.num_microbatches, spec.num_chunks, rank)
        assert result.peak_stash[rank] <= bound, f"{where} rank {rank}"


def _copy_runtime_to(directory: Path, runtime_source: str | None = None) -> Path:
    """Lay out ``directory`` like reference/, optionally with another pipeline_runtime.py."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("__init__.py", "schedules.py", "pipeline_runtime.py"):
        shutil.copy(ROOT / "reference" / name, directory / name)
    if runtime_source is not None:
        (directory / "pipeline_runtime.py").write_text(runtime_source)
    return directory


def _assert_processes_gone(pids: list[int]) -> None:
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat")
        if stat.exists():
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
            pytest.fail(f"rank process {pid} still exists in state {state!r}")
    alive = {p.pid for p in multiprocessing.active_children()}
    assert not alive & set(pids)


# ---------------------------------------------------------------------------
# single-process pieces
# ---------------------------------------------------------------------------


def test_partition_covers_blocks_in_order():
    for num_layers in range(1, 13):
        for n in range(1, num_layers + 1):
            slices = runtime.partition_blocks(num_layers, n)
            assert [i for s in slices for i in s] == list(range(num_layers))
            sizes = [len(s) for s in slices]
            assert max(sizes) - min(sizes) <= 1
            assert min(sizes) >= 1


def test_partition_rejects_too_few_layers():
    with pytest.raises(ValueError, match="num_layers"):
        runtime.partition_blocks(3, 4)


def test_stages_hold_every_parameter_once():
    layers = runtime.build_layers(TINY)
    whole = dict(runtime.StageModule(layers, runtime.layer_names(TINY)).global_named_parameters())
    seen: list[str] = []
    for s in range(6):
        stage = runtime.StageModule(layers, runtime.stage_layer_names(TINY, s, 6))
        seen += [name for name, _ in stage.global_named_parameters()]
    assert sorted(seen) == sorted(whole)
    assert runtime.stage_layer_names(TINY, 0, 6)[0] == "embed"
    assert runtime.stage_layer_names(TINY, 5, 6)[-1] == "head"


def test_init_is_deterministic_per_seed():
    a = dict(runtime.build_layers(TINY).named_parameters())
    b = dict(runtime.build_layers(TINY).named_parameters())
    c = dict(runtime.build_layers(TINY._replace(seed=4)).named_parameters())
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert not torch.equal(a["embed.token.weight"], c["embed.token.weight"])
    assert a["embed.token.weight"].dtype == torch.float64


def test_reference_equals_whole_batch_loss():
    # Sum of the 1/M-scaled microbatch losses equals the mean loss over the batch.
    M = 3
    result = runtime.reference_run(TINY, M)
    layers = runtime.build_layers(TINY)
    model = runtime.StageModule(layers, runtime.layer_names(TINY))
    tokens, targets = runtime.make_batch(TINY, M, seed=0)
    logits = model(tokens.reshape(-1, TINY.seq_len))
    loss = F.cross_entropy(logits.reshape(-1, TINY.vocab_size), targets.reshape(-1))
    loss.backward()
    assert result.losses[0] == pytest.approx(loss.item(), rel=1e-12)
    for name, param in model.global_named_parameters():
        assert relative_error(result.gradients[name], param.grad.numpy()) <= 1e-12, name


def test_model_attention_is_causal():
    layers = runtime.build_layers(TINY)
    model = runtime.StageModule(layers, runtime.layer_names(TINY))
    tokens, _ = runtime.make_batch(TINY, 1, seed=1)
    changed = tokens[0].clone()
    changed[:, -1] = (changed[:, -1] + 1) % TINY.vocab_size
    before, after = model(tokens[0]), model(changed)
    assert torch.allclose(before[:, :-1], after[:, :-1])
    assert not torch.allclose(before[:, -1], after[:, -1])


def test_message_tags_are_unique():
    P, M, v = 3, 5, 2
    tags = {runtime.message_tag(kind, mb, s, M, P * v)
            for kind in (runtime.ACTIVATION, runtime.GRADIENT) for mb in range(M)
            for s in range(P * v)}
    assert len(tags) == 2 * M * P * v


def test_measured_bubble_of_known_timings():
    # Two ranks over 4 s: rank 0 busy 0-1 and 3-4, rank 1 busy 1-3, so 4 of 8 s idle.
    timings = [[("F", 0, 0, 0.0, 1.0), ("B", 0, 0, 3.0, 4.0)], [("F", 0, 0, 1.0, 2.0),
                                                               ("B", 0, 0, 2.0, 3.0)]]
    result = launch.RunResult("1f1b", 2, 1, 1, [0.0], {}, [], {}, [1, 1], [], timings, [4.0])
    assert launch.measured_bubble(result) == pytest.approx(0.5)
    report = launch.bubble_report(result)
    assert report.forward_s == pytest.approx(1.0)
    assert report.backward_s == pytest.approx(1.0)
    # one microbatch through two stages: F F B B in sequence, half of the time idle
    assert report.simulated == pytest.approx(0.5)
    assert report.closed_form == pytest.approx(0.5)


def test_chrome_trace_format():
    timings = [[("F", 0, 1, 0.001, 0.003)], [("W", 2, 0, 0.002, 0.0025)]]
    result = launch.RunResult("zero_bubble_h1", 2, 3, 1, [0.0], {}, [], {}, [1, 1], [], timings, [1.0])
    events = [e for e in launch.chrome_trace(result)["traceEvents"] if e["ph"] == "X"]
    assert [(e["name"], e["pid"]) for e in events] == [("F0.1", 0), ("W2", 1)]
    assert events[0]["ts"] == pytest.approx(1000.0)
    assert events[0]["dur"] == pytest.approx(2000.0)
    assert events[1]["dur"] == pytest.approx(500.0)


def test_load_impl_from_directory(tmp_path):
    directory = _copy_runtime_to(tmp_path / "mine")
    module = launch.load_impl(str(directory))
    assert module is not runtime
    assert Path(module.__file__).resolve() == (directory / "pipeline_runtime.py").resolve()
    assert module.__name__.startswith("_pplab_impl_")
    assert callable(module.run_step)
    assert launch.load_impl(str(directory / "pipeline_runtime.py")) is module
    assert launch.load_impl("reference") is runtime


@pytest.mark.parametrize("argv", [
    ["--stages", "0"],
    ["--microbatches", "0"],
    ["--schedule", "interleaved", "--stages", "4", "--microbatches", "6"],
    ["--schedule", "1f1b", "--chunks", "2"],
    ["--stages", "4", "--chunks", "3", "--schedule", "interleaved", "--layers", "8"],
    ["--timeout", "0"],
    ["--threads", "0"],
])
def test_cli_rejects_invalid_arguments(argv, capsys):
    assert launch.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("pplab run: error:")


def test_nccl_requires_cuda(capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is present, so nccl is a valid backend here")
    assert launch.main(["--backend", "nccl"]) == 2
    assert "CUDA" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# multi-process runs
# ---------------------------------------------------------------------------


REPRESENTATIVE = {
    2: valid_specs(2, range(1, 7)),
    4: [launch.RunSpec("1f1b", m) for m in (1, 3, 4, 8)]
       + [launch.RunSpec("gpipe", 5), launch.RunSpec("zero_bubble_h1", 2),
          launch.RunSpec("zero_bubble_h1", 6), launch.RunSpec("interleaved", 3, 2),
          launch.RunSpec("interleaved", 8, 2)],
}


@pytest.fixture(scope="module")
def representative_results() -> dict[int, list[launch.RunResult]]:
    return {P: launch.run_pipelines(specs, P, model=TINY, timeout=180)
            for P, specs in REPRESENTATIVE.items()}


@pytest.mark.parametrize("num_stages", sorted(REPRESENTATIVE))
def test_gradients_match_single_process(num_stages, representative_results):
    for spec, result in zip(REPRESENTATIVE[num_stages], representative_results[num_stages]):
        check_against_reference(spec, result)


def test_one_f_one_b_peak_stash(representative_results):
    for spec, result in zip(REPRESENTATIVE[4], representative_results[4]):
        if spec.schedule == "1f1b":
            M = spec.num_microbatches
            assert result.peak_stash == [min(4 - r, M) for r in range(4)], M


def test_result_is_plain_data(representative_results):
    result = representative_results[2][0]
    for grads in result.rank_gradients:
        assert all(isinstance(g, np.ndarray) for g in grads.values())
    assert all(isinstance(x, tuple) and isinstance(x[0], str) for x in result.actions[0])
    assert all(isinstance(x, float) for x in result.losses)
    # each rank reports exactly the parameters of its own stages
    owned = [set(g) for g in result.rank_gradients]
    assert set.union(*owned) == set(result.gradients)
    assert sum(len(o) for o in owned) == len(result.gradients)


def test_measured_timings_are_ordered(representative_results):
    for result in representative_results[4]:
        for rank_timings in result.timings:
            ends = [end for *_, end in rank_timings]
            assert all(start <= end for *_, start, end in rank_timings)
            assert ends == sorted(ends)
        assert 0.0 <= launch.measured_bubble(result) < 1.0


@pytest.mark.slow
@pytest.mark.parametrize("num_stages", [1, 2, 3, 4])
def test_gradients_match_full_grid(num_stages):
    specs = valid_specs(num_stages, range(1, 3 * num_stages + 1))
    if num_stages in REPRESENTATIVE:
        covered = set(REPRESENTATIVE[num_stages])
        specs = [s for s in specs if s not in covered]
    results = launch.run_pipelines(specs, num_stages, model=TINY, timeout=240)
    for spec, result in zip(specs, results):
        check_against_reference(spec, result)


def test_large_activations_do_not_deadlock():
    # 4 x 64 x 128 float64 activations (256 KiB). A blocking gloo send waits for
    # its receive (the deadlock test relies on it), so sends must not block.
    config = runtime.ModelConfig(vocab_size=32, seq_len=64, d_model=128, num_heads=4,
                                 num_layers=4, microbatch_size=4, dtype="float64", seed=1)
    specs = [launch.RunSpec("1f1b", 4), launch.RunSpec("zero_bubble_h1", 3),
             launch.RunSpec("interleaved", 4, 2), launch.RunSpec("gpipe", 2)]
    results = launch.run_pipelines(specs, 2, model=config, timeout=120)
    for spec, result in zip(specs, results):
        check_against_reference(spec, result, config, rtol=1e-9)


def test_adam_steps_match_single_process():
    spec = launch.RunSpec("zero_bubble_h1", 4, 1, 2)
    result = launch.run_pipelines([spec], 2, model=TINY, optimizer="adam", lr=1e-2)[0]
    expected = reference(TINY, 4, steps=2, optimizer="adam", lr=1e-2)
    assert result.losses == pytest.approx(expected.losses, rel=1e-10)
    assert result.losses[1] != pytest.approx(result.losses[0], rel=1e-6)
    for name, param in expected.parameters.items():
        assert relative_error(result.parameters[name], param) <= 1e-9, name
        assert relative_error(result.gradients[name], expected.gradients[name]) <= 1e-9, name


BLOCKING_SEND_FIRST = '''
import torch

def run_step(ctx, actions, tokens, targets):
    # Both ranks send first with a blocking send, so neither reaches its receive.
    peer = (ctx.pp_rank + 1) % ctx.num_stages
    shape = (64, 64, 64)
    ctx.send_tensor(torch.zeros(shape, dtype=torch.float64), peer, 7, "a test tensor",
                    blocking=True)
    ctx.recv_tensor(peer, 7, "a test tensor")
    return 0.0
'''

RAISES_ON_RANK_1 = '''
def run_step(ctx, actions, tokens, targets):
    if ctx.pp_rank == 1:
        raise ArithmeticError("rank one cannot divide by zero today")
    ctx.recv_tensor(1, 5, "a tensor rank 1 never sends")
    return 0.0
'''


def test_deadlock_reported_and_ranks_killed(tmp_path):
    impl = _copy_runtime_to(tmp_path / "broken", BLOCKING_SEND_FIRST)
    with pytest.raises(launch.PipelineDeadlockError) as info:
        launch.run_pipeline("1f1b", 2, 2, model=TINY, impl=str(impl), timeout=5)
    message = str(info.value)
    assert "timed out after 5 s" in message
    assert "rank 0: last completed action nothing; blocked in send of a test tensor to rank 1" in message
    assert "rank 1: last completed action nothing; blocked in send of a test tensor to rank 0" in message
    assert len(info.value.pids) == 2
    _assert_processes_gone(info.value.pids)


def test_deadlock_found_before_the_timeout(tmp_path, monkeypatch):
    # Every rank blocked in communication for GLOO_STALL_S seconds ends the
    # run as a deadlock long before the overall timeout.
    monkeypatch.setattr(launch, "GLOO_STALL_S", 2.0)
    impl = _copy_runtime_to(tmp_path / "broken", BLOCKING_SEND_FIRST)
    with pytest.raises(launch.PipelineDeadlockError) as info:
        launch.run_pipeline("1f1b", 2, 2, model=TINY, impl=str(impl), timeout=300)
    message = str(info.value)
    assert "blocked in a send or receive for over 2 s" in message
    assert "timed out" not in message
    assert "rank 1: last completed action nothing; blocked in send of a test tensor to rank 0" in message
    _assert_processes_gone(info.value.pids)


SLOW_SENDER = '''
import time

import torch

def run_step(ctx, actions, tokens, targets):
    # Rank 1 computes for 4 s before it sends; rank 0 waits in its receive.
    if ctx.pp_rank == 1:
        time.sleep(4.0)
        ctx.send_tensor(torch.zeros(ctx.activation_shape(), dtype=getattr(torch, ctx.config.dtype)),
                        0, 7, "a late tensor")
        ctx.finish_sends()
    else:
        ctx.recv_tensor(1, 7, "a late tensor")
    return 0.0
'''


def test_slow_rank_is_not_a_deadlock(tmp_path, monkeypatch):
    # Rank 0 is blocked for longer than the stall limit, but rank 1 is
    # computing, so the run goes on and completes.
    monkeypatch.setattr(launch, "GLOO_STALL_S", 1.0)
    impl = _copy_runtime_to(tmp_path / "slow", SLOW_SENDER)
    result = launch.run_pipeline("1f1b", 2, 2, model=TINY, impl=str(impl), timeout=300)
    assert result.num_stages == 2


class _Reports:
    """A results queue with a few rank reports. Asking for more than it contains fails the test."""

    def __init__(self, items):
        self.items = list(items)

    def get(self, timeout=None):
        assert self.items, "kept waiting after every rank had reported"
        return self.items.pop(0)


def test_first_cause_stops_waiting_once_every_rank_reported(monkeypatch):
    monkeypatch.setattr(launch, "CAUSE_GRACE_S", 600.0)
    reports = _Reports([(2, "error", "RuntimeError: Connection reset by peer"),
                        (1, "error", "NotImplementedError: run_step"),
                        (3, "ok", {})])
    rank, text = launch._first_cause(0, "RuntimeError: Connection closed by peer", reports, 4)
    assert (rank, text) == (1, "NotImplementedError: run_step")
    # Ranks that delivered their results before the failure count as reported.
    reports = _Reports([(1, "error", "RuntimeError: Connection reset by peer")])
    assert launch._first_cause(2, "ValueError: bad shape", reports, 3, {0}) == (2, "ValueError: bad shape")


def test_rank_exception_stops_all_ranks(tmp_path):
    impl = _copy_runtime_to(tmp_path / "raises", RAISES_ON_RANK_1)
    with pytest.raises(launch.RankFailedError) as info:
        launch.run_pipeline("1f1b", 3, 3, model=TINY, impl=str(impl), timeout=60)
    assert info.value.rank == 1
    assert "ArithmeticError: rank one cannot divide by zero today" in info.value.traceback
    assert "Traceback of rank 1" in str(info.value)
    assert len(info.value.pids) == 3
    _assert_processes_gone(info.value.pids)


@pytest.mark.slow
def test_two_cli_runs_at_once(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    trace, png = tmp_path / "trace.json", tmp_path / "gantt.png"
    small = ["--layers", "4", "--d-model", "16", "--seq-len", "8", "--microbatch-size", "2"]
    commands = [
        [sys.executable, "-m", "reference.pipeline_launch", "--schedule", "1f1b", "--stages", "4",
         "--microbatches", "8", "--trace", str(trace), "--png", str(png), *small],
        [sys.executable, "-m", "reference.pipeline_launch", "--schedule", "interleaved",
         "--stages", "2", "--microbatches", "4", "--chunks", "2", *small],
    ]
    procs = [subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for c in commands]
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
        assert "step 0: loss" in out
        assert "bubble fraction: measured" in out
    # closed forms: (P-1)/(M+P-1) = 3/11 for 1F1B; (P-1)/(vM+P-1) = 1/9 interleaved
    assert "closed form 0.273" in outputs[0][0]
    assert "closed form 0.111" in outputs[1][0]

    events = json.loads(trace.read_text())["traceEvents"]
    spans = [e for e in events if e["ph"] == "X"]
    assert len(spans) == 4 * 2 * 8
    assert {e["pid"] for e in spans} == {0, 1, 2, 3}
    assert all(e["ts"] >= 0 and e["dur"] >= 0 for e in spans)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.gpu
def test_nccl_gradients_match_single_process():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA: torch.cuda.is_available() is False")
    # NCCL needs one GPU per rank; with a single GPU, P = 1 still runs the CUDA path.
    num_stages = min(4, torch.cuda.device_count())
    specs = valid_specs(num_stages, range(1, 2 * num_stages + 1))
    results = launch.run_pipelines(specs, num_stages, model=TINY, backend="nccl", timeout=300)
    for spec, result in zip(specs, results):
        check_against_reference(spec, result, rtol=1e-9)


@pytest.mark.slow
def test_torchrun_entry_point():
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip(f"torchrun not found beside {sys.executable}")
    env = dict(os.environ, PYTHONPATH=str(ROOT), GLOO_SOCKET_IFNAME="lo")
    command = [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m",
               "reference.pipeline_launch", "--schedule", "zero_bubble_h1", "--microbatches", "3",
               "--layers", "4", "--d-model", "16", "--seq-len", "8", "--microbatch-size", "2",
               "--dtype", "float64"]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "P=2, M=3" in proc.stdout, proc.stdout + proc.stderr
    config = runtime.ModelConfig(vocab_size=64, seq_len=8, d_model=16, num_heads=4, num_layers=4,
                                 microbatch_size=2, dtype="float64")
    expected = reference(config, 3).losses[0]
    assert f"step 0: loss {expected:.6f}" in proc.stdout, proc.stdout


def test_loaded_module_passes_to_ranks_by_path(tmp_path):
    directory = _copy_runtime_to(tmp_path / "mine")
    module = launch.load_impl(str(directory))
    assert launch._impl_reference(module) == str(directory.resolve())
    assert launch._impl_reference(runtime) == "reference"


def channel_sequences(schedule, num_stages: int, num_chunks: int):
    """Messages per (sender, receiver, kind) channel, in posting order on each side."""
    last = num_stages * num_chunks - 1
    sent: dict[tuple, list] = {}
    received: dict[tuple, list] = {}
    for rank, actions in enumerate(schedule):
        for action in actions:
            stage = action.chunk * num_stages + rank
            mb = action.microbatch
            if action.kind == "F":
                if stage > 0:
                    channel = ((stage - 1) % num_stages, rank, runtime.ACTIVATION)
                    received.setdefault(channel, []).append((mb, stage))
                if stage < last:
                    channel = (rank, (stage + 1) % num_stages, runtime.ACTIVATION)
                    sent.setdefault(channel, []).append((mb, stage + 1))
            elif action.kind == "B":
                if stage < last:
                    channel = ((stage + 1) % num_stages, rank, runtime.GRADIENT)
                    received.setdefault(channel, []).append((mb, stage))
                if stage > 0:
                    channel = (rank, (stage - 1) % num_stages, runtime.GRADIENT)
                    sent.setdefault(channel, []).append((mb, stage - 1))
    return sent, received


def test_channel_order_matches_on_both_sides():
    # NCCL pairs messages by posting order, so each channel's order must agree.
    for num_stages in range(2, 6):
        for spec in valid_specs(num_stages, range(1, 3 * num_stages + 1)):
            schedule = build_schedule(spec.schedule, num_stages, spec.num_microbatches,
                                      spec.num_chunks)
            sent, received = channel_sequences(schedule, num_stages, spec.num_chunks)
            assert sent == received, spec
