"""Checks for ``pipeline_runtime.py``: the learner's per-rank loop on real processes.

The submission's own launcher (given code in ``pipeline_launch.py``) spawns
the ranks inside the worker, and they exchange activations and gradients
over gloo. The grader compares the loss and every parameter gradient with a
single-process run of the reference model computed here, in float64, and
checks each rank's executed order and peak stash against the schedule.

NOTE: the ranks report their own order, stash peak and gradients. A
submission that fakes those reports is not caught, because the checks
are built to find honest bugs (wrong pairing, scaling, freeing).
"""

from __future__ import annotations

import functools

import numpy as np

from reference import pipeline_runtime as runtime
from reference.schedules import build_schedule
from reference.simulator import simulate

from ..checking import CheckFailed, check
from ..sandbox import LearnerRaised, Record, SubmissionAborted, Worker

MODEL = runtime.ModelConfig(vocab_size=32, seq_len=8, d_model=16, num_heads=2, num_layers=4,
                            microbatch_size=2, dtype="float64", seed=3)
NUM_STAGES = 2
RUN_TIMEOUT_S = 40.0
CALL_TIMEOUT_S = 240.0
RTOL = 1e-9


NOT_IMPLEMENTED_MESSAGE = ("the per-rank loop in pipeline_runtime.py is not implemented yet (a rank raised "
                           "NotImplementedError); pipeline_launch.py is given code and needs no change")


@functools.lru_cache(maxsize=None)
def expected_run(num_microbatches: int) -> runtime.ReferenceResult:
    return runtime.reference_run(MODEL, num_microbatches)


def _run(worker: Worker, specs: list[tuple[str, int, int]]) -> list[Record]:
    worker.import_module("pipeline_runtime")
    worker.import_module("pipeline_launch")
    worker.call_timeout = CALL_TIMEOUT_S
    try:
        # The reference schedules go along, so a bug in the learner's
        # schedules.py costs points there and not here too.
        plans = [build_schedule(name, NUM_STAGES, m, v) for name, m, v in specs]
        value = worker.call("pipeline_launch", "run_pipelines", [list(s) for s in specs], NUM_STAGES,
                            model=MODEL, timeout=RUN_TIMEOUT_S, plans=plans)
    except SubmissionAborted as aborted:
        if aborted.kind == "not_implemented":
            raise SubmissionAborted("not_implemented", NOT_IMPLEMENTED_MESSAGE) from None
        raise
    except LearnerRaised as error:
        if "NotImplementedError" in error.message:
            raise SubmissionAborted("not_implemented", NOT_IMPLEMENTED_MESSAGE) from None
        what = "deadlocked" if error.is_a("PipelineDeadlockError") else f"failed with {error.error}"
        lines = error.message.splitlines()
        if error.is_a("RankFailedError") and len(lines) > 8:
            # The rank's own frames are at the end of its traceback.
            lines = lines[:1] + ["  ..."] + lines[-5:]
        hint = None
        if "still has stashed activations" in error.message:
            hint = "activations never freed: pop each stash when its last backward pass ends"
        raise CheckFailed(f"the pipeline run {what}: " + "\n".join(lines), hint) from None
    if not isinstance(value, list) or len(value) != len(specs) or not all(isinstance(r, Record) for r in value):
        raise CheckFailed("run_pipelines did not return one RunResult per configuration")
    return value


def _check_result(result: Record, spec: tuple[str, int, int]) -> None:
    schedule_name, num_microbatches, num_chunks = spec
    context = f"{schedule_name} with P={NUM_STAGES}, M={num_microbatches}" + (
        f", v={num_chunks}" if num_chunks > 1 else "")
    expected = expected_run(num_microbatches)

    losses = result.get("losses")
    if not isinstance(losses, list) or len(losses) != 1 or type(losses[0]) is not float:
        raise CheckFailed(f"{context}: losses is {losses!r}, expected one float per step")
    if not np.isclose(losses[0], expected.losses[0], rtol=RTOL, atol=0):
        hint = None
        if np.isclose(losses[0], expected.losses[0] * num_microbatches, rtol=1e-6):
            hint = "loss not scaled by 1/M: the step's loss is the mean over microbatches"
        raise CheckFailed(f"{context}: loss {losses[0]:.12g}, single-process run gives "
                          f"{expected.losses[0]:.12g}", hint)

    gradients = result.get("gradients")
    if not isinstance(gradients, dict) or set(gradients) != set(expected.gradients):
        raise CheckFailed(f"{context}: gradients must hold one array per parameter "
                          f"({len(expected.gradients)} names)")
    for name, want in expected.gradients.items():
        got = gradients[name]
        if not isinstance(got, np.ndarray) or got.shape != want.shape or not np.allclose(got, want, rtol=RTOL,
                                                                                          atol=1e-12):
            hint = None
            if isinstance(got, np.ndarray) and got.shape == want.shape:
                if np.allclose(got * num_microbatches, want, rtol=1e-6) and num_microbatches > 1:
                    hint = "gradients zeroed between microbatches: they must accumulate over all M"
                elif np.allclose(got, want * num_microbatches, rtol=1e-6) and num_microbatches > 1:
                    hint = "loss not scaled by 1/M"
            raise CheckFailed(f"{context}: the gradient of {name} differs from the single-process run", hint)

    schedule = build_schedule(schedule_name, NUM_STAGES, num_microbatches, num_chunks)
    actions = result.get("actions")
    for rank, planned in enumerate(schedule):
        ran = [tuple(a) for a in actions[rank]] if isinstance(actions, list) and rank < len(actions) else None
        if ran != [tuple(a) for a in planned]:
            raise CheckFailed(f"{context}: rank {rank} ran {ran}, but its schedule is {[str(a) for a in planned]}")

    allowed = simulate(schedule, 1.0, 1.0, 1.0 if schedule_name == "zero_bubble_h1" else 0.0).peak_activations
    peaks = result.get("peak_stash")
    if not isinstance(peaks, list) or any(type(p) is not int or p > a for p, a in zip(peaks, allowed)):
        raise CheckFailed(f"{context}: ranks stashed up to {peaks} activations; the schedule needs at most "
                          f"{allowed}", "activations never freed: pop each stash when its last backward pass ends")


ONE_F_ONE_B_SPECS = [("1f1b", 1, 1), ("1f1b", 3, 1), ("1f1b", 5, 1), ("gpipe", 3, 1)]
OTHER_SPECS = [("interleaved", 2, 2), ("interleaved", 4, 2), ("zero_bubble_h1", 3, 1)]


@check("pipeline_runtime.one_f_one_b", modules=("pipeline_runtime", "pipeline_launch"))
def one_f_one_b_run_check(worker: Worker) -> None:
    """Two processes run 1F1B and GPipe: same loss and gradients as one process, stash within bounds."""
    for result, spec in zip(_run(worker, ONE_F_ONE_B_SPECS), ONE_F_ONE_B_SPECS):
        _check_result(result, spec)


@check("pipeline_runtime.interleaved_and_zero_bubble", modules=("pipeline_runtime", "pipeline_launch"))
def other_schedules_run_check(worker: Worker) -> None:
    """Two processes run interleaved 1F1B (v = 2) and ZB-H1 with split B and W passes."""
    for result, spec in zip(_run(worker, OTHER_SPECS), OTHER_SPECS):
        _check_result(result, spec)
