"""Exercise 3's scoring: validity share, quality curve, readable reasons."""

from __future__ import annotations

import pytest

from grader.checks.exercise_3 import FULL_CREDIT_RATIO, ZERO_CREDIT_RATIO, quality_credit, score_exercise_3
from reference.strategy import RULES, ParallelConfig, exercise_3_problem, recommend


def test_best_configuration_scores_full():
    model, cluster, settings = exercise_3_problem()
    best = recommend(model, cluster, settings, top=1)[0].config
    validity, quality, reasons = score_exercise_3(best)
    assert (validity, quality) == (1.0, 1.0)
    assert "1.000x the best" in reasons[-1]
    assert "tp=" not in reasons[-1], "the message must not give the best configuration away"


def test_memory_failure_scores_nothing_and_names_the_excess():
    validity, quality, reasons = score_exercise_3(ParallelConfig(1, 8, 8))
    assert quality == 0.0
    assert validity == 0.0
    assert any(reason.startswith("memory:") and "GB more than" in reason for reason in reasons)


def test_other_failures_leave_memory_unchecked():
    validity, quality, reasons = score_exercise_3(ParallelConfig(8, 4, 1))
    assert quality == 0.0
    assert validity == pytest.approx(1 - 2 / len(RULES))
    assert any("world_size" in reason for reason in reasons)
    assert any("not checked" in reason for reason in reasons)


def test_nonpositive_degree_scores_nothing():
    assert score_exercise_3(ParallelConfig(0, 8, 8))[:2] == (0.0, 0.0)


@pytest.mark.parametrize("ratio, credit", [(1.0, 1.0), (FULL_CREDIT_RATIO, 1.0), (1.15, 0.5),
                                           (ZERO_CREDIT_RATIO, 0.0), (2.0, 0.0)])
def test_quality_curve(ratio, credit):
    assert quality_credit(ratio) == pytest.approx(credit)


def test_every_valid_configuration_follows_the_curve():
    model, cluster, settings = exercise_3_problem()
    ranked = recommend(model, cluster, settings)
    best = ranked[0].step_time.total
    credits = []
    for entry in ranked:
        _, quality, _ = score_exercise_3(entry.config)
        assert quality == pytest.approx(quality_credit(entry.step_time.total / best))
        credits.append(quality)
    assert min(credits) < 1.0, "the curve should separate good from best configurations"
