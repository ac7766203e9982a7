"""Checks for ``answers.exercise_3()``: a parallel configuration for a 70B model on 64 H100s.

Validity earns the share of the rules in ``strategy.RULES`` the
configuration passes (memory counts as failed when another rule failed
first, since it is not checked then), except that a configuration that does
not fit in memory earns nothing: it cannot run at all. Quality compares the
configuration's estimated step time with the best the reference search
finds: full credit up to 5% slower than the best, falling linearly to none
at 25% slower.
"""

from __future__ import annotations

from reference import strategy as ref

from ..checking import CheckFailed, check
from ..sandbox import Worker
from .values import fetch_answer

FULL_CREDIT_RATIO = 1.05
ZERO_CREDIT_RATIO = 1.25
FIELDS = ("tp", "pp", "dp", "ep", "num_chunks")


def quality_credit(ratio: float) -> float:
    """Return the share of quality points for a step time ``ratio`` times the best."""
    return min(1.0, max(0.0, (ZERO_CREDIT_RATIO - ratio) / (ZERO_CREDIT_RATIO - FULL_CREDIT_RATIO)))


def score_exercise_3(config: ref.ParallelConfig) -> tuple[float, float, list[str]]:
    """Return (validity share, quality share, reasons) for a configuration."""
    model, cluster, settings = ref.exercise_3_problem()
    failures = ref.validate_config(model, cluster, config, settings)
    reasons = [f"{failure.rule}: {failure.reason}" for failure in failures]
    if failures and failures[0].rule == "positive_degrees":
        return 0.0, 0.0, reasons
    failed = {failure.rule for failure in failures}
    if failures and "memory" not in failed:
        failed.add("memory")
        reasons.append("memory: not checked because other rules failed")
    validity = 1 - len(failed) / len(ref.RULES)
    if any(failure.rule == "memory" for failure in failures):
        validity = 0.0
    if failures:
        return validity, 0.0, reasons

    best = ref.recommend(model, cluster, settings, top=1)[0]
    mine = ref.estimate_step_time(model, cluster, config, settings).total
    ratio = mine / best.step_time.total
    memory = ref.memory_per_gpu(model, config, settings)
    reasons.append(
        f"estimated step {mine:.2f} s, {ratio:.3f}x the best configuration's {best.step_time.total:.2f} s; "
        f"peak memory {memory.total / ref.GB:.1f} GB on pipeline rank {memory.pp_rank}"
    )
    return validity, quality_credit(ratio), reasons


def _config(worker: Worker) -> ref.ParallelConfig:
    value = fetch_answer(worker, "exercise_3", "Exercise3Answer")
    degrees = []
    for field in FIELDS:
        degree = value.get(field, 1 if field in ("ep", "num_chunks") else None)
        if type(degree) is not int:
            raise CheckFailed(f"exercise_3().{field} is {degree!r}; expected an int")
        degrees.append(degree)
    return ref.ParallelConfig(*degrees)


@check("exercise_3.valid", modules=("answers",))
def valid_configuration_check(worker: Worker) -> None:
    """Check that the configuration obeys every rule and fits in 80 GB."""
    config = _config(worker)
    validity, _, reasons = score_exercise_3(config)
    if validity < 1.0:
        shown = " ".join(f"{f}={getattr(config, f)}" for f in FIELDS)
        raise CheckFailed(f"{shown} breaks these rules:\n" + "\n".join(reasons), credit=validity)


@check("exercise_3.quality", modules=("answers",))
def quality_check(worker: Worker) -> None:
    """Estimated step time against the best configuration the reference search finds."""
    config = _config(worker)
    validity, quality, reasons = score_exercise_3(config)
    if validity < 1.0:
        raise CheckFailed("an invalid configuration earns no quality points; see exercise_3.valid")
    if quality < 1.0:
        raise CheckFailed(reasons[-1] + f"; full credit within {FULL_CREDIT_RATIO:g}x, "
                          f"none from {ZERO_CREDIT_RATIO:g}x", credit=quality)
