"""Render a :class:`grader.runner.GradeReport` as a terminal table, JSON, Gradescope JSON or JUnit XML."""

from __future__ import annotations

import json

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


# Gradescope shows a test's output to students per its visibility: hidden
# checks appear once the instructor publishes the grades.
GRADESCOPE_VISIBILITY = {"visible": "visible", "hidden": "after_published"}


def _check_output(result) -> str:
    parts = [result.message] if result.message else []
    if result.misconception:
        parts.append(f"likely misconception: {result.misconception}")
    return "\n".join(parts)


def render_gradescope(report: GradeReport) -> str:
    """Return the report as a Gradescope autograder ``results.json``.

    Fields: ``score``, ``execution_time`` (whole seconds), ``output`` and
    ``tests``, each test with ``name``, ``number``, ``score``, ``max_score``,
    ``status`` ("passed" or "failed"), ``output`` and ``visibility``.

    NOTE: these fields follow Gradescope's autograder specification as
    recalled, not as checked against its documentation or a real Gradescope run.
    """
    tests = []
    for index, result in enumerate(report.results, start=1):
        tests.append({
            "name": f"{result.id}: {result.title}",
            "number": str(index),
            "score": result.score,
            "max_score": result.max_score,
            "status": "passed" if result.status == PASSED else "failed",
            "output": _check_output(result),
            "visibility": GRADESCOPE_VISIBILITY[result.visibility],
        })
    document = {
        "score": report.score,
        "execution_time": int(round(report.duration_s)),
        "output": f"pplab {report.environment.get('pplab', '')}: {report.score:g}/{report.max_score:g}",
        "tests": tests,
    }
    return json.dumps(document, indent=2)


def render_junit(report: GradeReport) -> str:
    """Return the report as JUnit XML: one test case per check, grouped by exercise."""
    import xml.etree.ElementTree as ElementTree

    suites = ElementTree.Element("testsuites", name="pplab", tests=str(len(report.results)),
                                 failures=str(sum(r.status != PASSED for r in report.results)),
                                 time=f"{report.duration_s:.3f}")
    for key, title in report.exercises.items():
        results = [r for r in report.results if r.exercise == key]
        if not results:
            continue
        suite = ElementTree.SubElement(
            suites, "testsuite", name=title, tests=str(len(results)),
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
            element = ElementTree.SubElement(case, tag, message=summary[:500], type=result.status)
            element.text = _check_output(result)
    ElementTree.indent(suites)
    return ElementTree.tostring(suites, encoding="unicode", xml_declaration=True)
