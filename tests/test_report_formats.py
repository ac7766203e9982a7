"""Report formats for CI systems: Gradescope results.json and JUnit XML."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree

import pytest

from grader.report import render_gradescope, render_junit
from grader.rubric import load_rubric
from grader.runner import grade
from conftest import TEST_LIMITS

CHECKS = ["schedules.one_f_one_b", "schedules.zero_bubble_h1", "bubbles.bubble_fraction", "exercise_1.gpipe"]
# The results.json fields pplab writes, top level and per test, with their types.
TOP_LEVEL = {"score": (int, float), "execution_time": int, "output": str, "tests": list,
             "output_format": str, "test_output_format": str, "stdout_visibility": str, "extra_data": dict}
PER_TEST = {"name": str, "number": str, "score": (int, float), "max_score": (int, float),
            "status": str, "output": str, "visibility": str}
VISIBILITIES = {"hidden", "after_due_date", "after_published", "visible"}


@pytest.fixture(scope="module")
def buggy_report(sample_dirs):
    rubric = load_rubric().select(None, CHECKS)
    return grade(sample_dirs["warmup_p_minus_rank"], rubric, TEST_LIMITS)


def test_gradescope_results_have_documented_fields(buggy_report):
    document = json.loads(render_gradescope(buggy_report))
    assert set(document) == set(TOP_LEVEL)
    for field, kind in TOP_LEVEL.items():
        assert isinstance(document[field], kind), field
    assert len(document["tests"]) == len(CHECKS)
    for test in document["tests"]:
        assert set(test) == set(PER_TEST)
        for field, kind in PER_TEST.items():
            assert isinstance(test[field], kind), (test["name"], field)
        assert test["status"] in ("passed", "failed")
        assert test["visibility"] in VISIBILITIES
        assert 0 <= test["score"] <= test["max_score"]


def test_gradescope_scores_and_visibility(buggy_report):
    document = json.loads(render_gradescope(buggy_report))
    by_name = {t["name"].split(":")[0]: t for t in document["tests"]}
    assert by_name["schedules.one_f_one_b"]["status"] == "failed"
    assert by_name["schedules.one_f_one_b"]["score"] == 0
    assert "warmup of P - rank" in by_name["schedules.one_f_one_b"]["output"]
    assert by_name["schedules.zero_bubble_h1"]["visibility"] == "after_published"
    assert by_name["exercise_1.gpipe"]["visibility"] == "visible"
    assert document["score"] == sum(t["score"] for t in document["tests"])


def test_junit_lists_every_check_and_failure(buggy_report):
    root = ElementTree.fromstring(render_junit(buggy_report))
    cases = root.findall(".//testcase")
    assert [c.get("name") for c in cases] == CHECKS
    failures = root.findall(".//testcase/failure")
    assert len(failures) == 1
    assert "0/4 points" in failures[0].get("message")
    assert int(root.get("failures")) == 1
    assert sum(int(s.get("tests")) for s in root.findall("testsuite")) == len(CHECKS)
