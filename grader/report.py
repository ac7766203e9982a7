"""Render a :class:`grader.runner.GradeReport` as a terminal table, JSON, Gradescope JSON or JUnit XML."""

from __future__ import annotations

import json
import re

from .runner import ERROR, FAILED, NOT_IMPLEMENTED, PASSED, GradeReport

MARKS = {PASSED: "PASS", FAILED: "FAIL", NOT_IMPLEMENTED: "TODO", ERROR: "ERR "}
MAX_MESSAGE_LINES = 14


def _points(value: float) -> str:
    return f"{value:g}"


def _indent(text: str, prefix: str) -> str:
    lines = text.splitlines()
    if len(lines) > MAX_MESSAGE_LINES:
        lines = lines[:MAX_MESSAGE_LINES] + ["..."]
    return "\n".join(prefix + line for line in lines)


def render_text(report: GradeReport) -> str:
    """Return the terminal report: per exercise and per check, points and first counterexample."""
    lines = [f"pplab grade {report.submission}"]
    if report.secret:
        lines.append(f"  official run: public examples plus the instructor's secret ones (key {report.secret})")
    if not report.official:
        if report.seed is not None:
            lines.append(f"  exploration run (seed {report.seed}); only the default run is an official grade")
        else:
            lines.append("  a selection of checks; only a run of every check is an official grade")
    width = max((len(r.id) for r in report.results), default=10)

    for key, title in report.exercises.items():
        results = [r for r in report.results if r.exercise == key]
        if not results:
            continue
        got = sum(r.score for r in results)
        total = sum(r.max_score for r in results)
        lines.append("")
        lines.append(f"{title}  [{_points(got)}/{_points(total)}]")
        for r in results:
            hidden = "  (hidden)" if r.visibility == "hidden" else ""
            lines.append(f"  {MARKS[r.status]}  {r.id:<{width}}  {_points(r.score):>3}/{_points(r.max_score):<3}"
                         f" {r.title}{hidden}")
            if r.status != PASSED and r.message:
                lines.append(_indent(r.message, "        "))
            if r.misconception:
                lines.append(_indent(f"likely misconception: {r.misconception}", "        "))
            if r.status not in (PASSED, NOT_IMPLEMENTED) and r.output:
                lines.append(_indent(f"your code printed:\n{r.output}", "        "))
            if r.details:
                lines.append("")
                lines.append("\n".join("        " + line for line in r.details.splitlines()))
                lines.append("")

    percent = 100.0 * report.score / report.max_score if report.max_score else 0.0
    counts = {status: sum(r.status == status for r in report.results) for status in MARKS}
    lines.append("")
    lines.append(f"Total: {_points(report.score)}/{_points(report.max_score)} ({percent:.1f}%)  "
                 f"passed {counts[PASSED]}, failed {counts[FAILED]}, "
                 f"not implemented {counts[NOT_IMPLEMENTED]}"
                 + (f", grader errors {counts[ERROR]}" if counts[ERROR] else ""))
    return "\n".join(lines)


def render_json(report: GradeReport) -> str:
    """Return the report as JSON (scores, checks, messages, environment)."""
    return json.dumps(report.to_dict(), indent=2, sort_keys=False)


# Gradescope's results.json, as its autograder specification documents it
# (docs/gradescope.md lists the fields and the pages they come from).
# A test's "visibility" decides when students see it: hidden checks carry
# points, so they use "after_published" rather than "hidden", and show once
# the instructor publishes the grades.
GRADESCOPE_VISIBILITY = {"visible": "visible", "hidden": "after_published"}
# Messages hold schedule grids and learner values, so they are sent as plain
# text: Gradescope renders "html", "md" and "simple_format" output as markup.
GRADESCOPE_TEXT_FORMAT = "text"


def _check_output(result, with_printed: bool = False) -> str:
    parts = [result.message] if result.message else []
    if result.misconception:
        parts.append(f"likely misconception: {result.misconception}")
    if with_printed and result.status not in (PASSED, NOT_IMPLEMENTED) and result.output:
        parts.append(f"your code printed:\n{result.output}")
    return "\n".join(parts)


def _gradescope_summary(report: GradeReport) -> str:
    """Return the top-level text students see at once: visible checks only.

    Gradescope hides a student's total while tests are not yet visible to
    them, so this text gives the visible checks' points and never the total.
    """
    visible = [r for r in report.results if r.visibility == "visible"]
    lines = [f"Graded by pplab {report.environment.get('pplab', '')}."]
    if visible:
        lines.append(f"Visible checks: {_points(sum(r.score for r in visible))}/"
                     f"{_points(sum(r.max_score for r in visible))} points.")
    if len(visible) < len(report.results):
        lines.append("Hidden checks and your total show once the grades are published.")
    if not report.official:
        lines.append("NOTE: not an official grade (a selection of checks or an exploration seed).")
    return "\n".join(lines)


def render_gradescope(report: GradeReport) -> str:
    """Return the report as a Gradescope autograder ``results.json``.

    Top level: ``score`` (points, the sum of the tests' scores),
    ``execution_time`` (whole seconds), ``output`` with its
    ``output_format``, ``test_output_format``, ``stdout_visibility``
    ("hidden": the grader's own log stays with the instructor),
    ``extra_data`` (whether the run is official, and tool versions) and
    ``tests``. Each test has ``name`` ("check id: title"), ``number``,
    ``score``, ``max_score``, ``status`` ("passed" only at full marks, so
    partial credit shows as failed), ``output`` and ``visibility``.
    There is no top-level ``max_score``: Gradescope takes the assignment's
    total from its own settings. ``grader/schemas/gradescope_results.schema.json``
    describes the documented fields.
    """
    tests = []
    for index, result in enumerate(report.results, start=1):
        tests.append({
            "name": f"{result.id}: {result.title}",
            "number": str(index),
            "score": result.score,
            "max_score": result.max_score,
            "status": "passed" if result.status == PASSED else "failed",
            "output": _check_output(result, with_printed=True),
            "visibility": GRADESCOPE_VISIBILITY[result.visibility],
        })
    document = {
        "score": report.score,
        "execution_time": int(round(report.duration_s)),
        "output": _gradescope_summary(report),
        "output_format": GRADESCOPE_TEXT_FORMAT,
        "test_output_format": GRADESCOPE_TEXT_FORMAT,
        "stdout_visibility": "hidden",
        "extra_data": {"official": report.official,
                       "seed": "derandomized" if report.seed is None else report.seed,
                       "environment": dict(report.environment)},
        "tests": tests,
    }
    return json.dumps(document, indent=2)


# Characters XML 1.0 cannot hold even escaped: C0 controls except tab,
# newline and carriage return. A learner's value can contain them.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml_text(text: str) -> str:
    return _XML_INVALID.sub("\ufffd", text)


def render_junit(report: GradeReport) -> str:
    """Return the report as JUnit XML: one test case per check, grouped by exercise.

    A failed or unimplemented check is a ``<failure>`` and a grader crash an
    ``<error>``. ``failures`` and ``errors`` count them separately at both
    levels. ``time`` is in seconds.
    """
    import xml.etree.ElementTree as ElementTree

    suites = ElementTree.Element(
        "testsuites", name="pplab", tests=str(len(report.results)),
        failures=str(sum(r.status in (FAILED, NOT_IMPLEMENTED) for r in report.results)),
        errors=str(sum(r.status == ERROR for r in report.results)),
        time=f"{report.duration_s:.3f}")
    for key, title in report.exercises.items():
        results = [r for r in report.results if r.exercise == key]
        if not results:
            continue
        suite = ElementTree.SubElement(
            suites, "testsuite", name=_xml_text(title), tests=str(len(results)),
            failures=str(sum(r.status in (FAILED, NOT_IMPLEMENTED) for r in results)),
            errors=str(sum(r.status == ERROR for r in results)),
            time=f"{sum(r.duration_s for r in results):.3f}")
        for result in results:
            case = ElementTree.SubElement(suite, "testcase", classname=f"pplab.{key}", name=result.id,
                                          time=f"{result.duration_s:.3f}")
            if result.status == PASSED:
                continue
            tag = "error" if result.status == ERROR else "failure"
            summary = f"{result.score:g}/{result.max_score:g} points: " + (result.message.splitlines() or [""])[0]
            element = ElementTree.SubElement(case, tag, message=_xml_text(summary[:500]), type=result.status)
            element.text = _xml_text(_check_output(result, with_printed=True))
    ElementTree.indent(suites)
    return ElementTree.tostring(suites, encoding="unicode", xml_declaration=True)
