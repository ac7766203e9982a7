"""Render a :class:`grader.runner.GradeReport` as a terminal table or JSON."""

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
