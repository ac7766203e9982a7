"""Every sample submission gets exactly its expected score on every check."""

from __future__ import annotations

import pytest

from grader.samples import load_samples
from grader.runner import PASSED

SAMPLE_NAMES = sorted(load_samples())


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_sample_scores_exactly(name, samples, graded):
    sample = samples[name]
    report = graded(name)
    for result in report.results:
        expected = sample.expected_score(result.id, result.max_score)
        assert result.score == expected, (
            f"{name}: {result.id} scored {result.score}, expected {expected}\n{result.message}")


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_sample_messages_explain_failures(name, samples, graded):
    sample = samples[name]
    report = graded(name)
    by_id = {r.id: r for r in report.results}
    for check_id, text in sample.messages.items():
        result = by_id[check_id]
        shown = f"{result.message}\n{result.misconception or ''}"
        assert text in shown, f"{name}: {check_id} report lacks {text!r}:\n{shown}"
    for result in report.results:
        if result.status != PASSED:
            assert result.message, f"{name}: {result.id} failed without a message"


def test_buggy_samples_fail_somewhere(samples):
    for name, sample in samples.items():
        if sample.edits:
            assert sample.scores, f"{name} changes the reference but expects full marks everywhere"


def test_sample_edit_must_match_once(tmp_path):
    from grader.samples import Sample, SampleError, materialize

    sample = Sample(name="broken", description="", base="reference",
                    edits=({"module": "schedules", "old": "no such text", "new": "x"},))
    with pytest.raises(SampleError, match="occurs 0 times"):
        materialize(sample, tmp_path / "broken")
