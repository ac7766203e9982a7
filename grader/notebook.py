"""Run pplab checks from a Jupyter notebook's test cells, the way nbgrader grades them.

A test cell of the nbgrader assignment in ``nbgrader/`` ends with a call
such as ``grade_cell("exercise_1.gpipe", exercise_1=exercise_1)``. The call
runs the same check bodies as ``pplab grade``, in this process, on the
functions the learner defined in the notebook, and prints one line per check.

nbgrader 0.9.6 (``nbgrader.utils.determine_grade``) scores a test cell from
its outputs, read in order:

- an ``error`` output, or a ``stream`` output named ``stderr``, gives 0;
- otherwise the first ``execute_result`` whose text is a number between 0
  and the cell's points gives that many points (partial credit);
- otherwise the cell gets full points.

So :func:`grade_cell` raises AssertionError when the checks earn nothing,
returns the points earned when a check gives partial credit (the call must
be the cell's last expression for IPython to show that value), and returns
None when every check passes. Anything written to stderr while the checks
run (warnings, torch or hypothesis messages, the learner's own prints to
``sys.stderr``) is captured and printed on stdout instead, so that it does
not zero a correct cell.

The learner's code runs in the notebook kernel, not in pplab's sandbox:
isolation is nbgrader's job (autograde in a container).
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import types
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

# Only standard-library and pplab modules that import nothing heavy load
# here: a test cell imports this module outside the stderr capture.
from .rubric import RubricEntry, load_rubric

MARKS = {"passed": "PASS", "failed": "FAIL", "not_implemented": "TODO", "error": "ERR "}
STDERR_PREFIX = "  stderr | "
WARNING_PREFIX = "  warning | "


@dataclass
class CheckOutcome:
    """The result of one check in a notebook cell, in points of the rubric."""

    id: str
    title: str
    status: str
    score: float
    max_score: float
    message: str = ""
    misconception: str | None = None


@dataclass
class CapturedOutput:
    """Text written to stderr (Python-level and file descriptor 2) and warnings raised."""

    stderr: str = ""
    warnings: list[str] = field(default_factory=list)


@contextmanager
def capture_stderr() -> Iterator[CapturedOutput]:
    """Redirect ``sys.stderr``, file descriptor 2 and Python warnings for the duration.

    The text lands in the yielded :class:`CapturedOutput` once the block ends.
    Warning filters stay as they were, so a warning that would not have been
    shown is not recorded either.
    """
    captured = CapturedOutput()
    # The StringIO is never closed: a logging handler created inside the
    # block may keep it and write to it later, which must not raise.
    python_stream = io.StringIO()
    for stream in (sys.stdout, sys.stderr, sys.__stderr__):
        if stream is not None:
            stream.flush()
    saved_fd = os.dup(2)
    saved_stderr = sys.stderr
    with tempfile.TemporaryFile() as fd_file, warnings.catch_warnings(record=True) as recorded:
        os.dup2(fd_file.fileno(), 2)
        sys.stderr = python_stream
        try:
            yield captured
        finally:
            sys.stderr = saved_stderr
            if sys.__stderr__ is not None:
                sys.__stderr__.flush()
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            fd_file.seek(0)
            fd_text = fd_file.read().decode("utf-8", "replace")
            captured.stderr = python_stream.getvalue() + fd_text
            captured.warnings = [
                warnings.formatwarning(w.message, w.category, w.filename, w.lineno).strip()
                for w in recorded
            ]


def _run_check(entry: RubricEntry, namespace: object) -> CheckOutcome:
    """Run one registered check on ``namespace`` and score it with the rubric's points."""
    from .checking import REGISTRY, CheckFailed
    from .inprocess import InProcessWorker
    from .sandbox import SubmissionAborted

    check = REGISTRY[entry.id]
    outcome = CheckOutcome(entry.id, entry.title, "failed", 0.0, float(entry.points))
    worker = InProcessWorker({module: namespace for module in check.modules})
    try:
        check.body(worker)
    except CheckFailed as failure:
        outcome.message = failure.message
        outcome.misconception = failure.misconception
        outcome.score = round(entry.points * failure.credit, 3)
    except SubmissionAborted as aborted:
        if aborted.kind == "not_implemented":
            outcome.status = "not_implemented"
        outcome.message = aborted.message
    except Exception as error:  # a bug in the grader, reported in the cell
        outcome.status = "error"
        outcome.message = f"the grader failed while running this check: {type(error).__name__}: {error}"
    else:
        outcome.status, outcome.score = "passed", float(entry.points)
    return outcome


def run_checks(check_ids: tuple[str, ...], functions: dict[str, Callable[..., Any]],
               repeat: int = 1) -> tuple[list[CheckOutcome], CapturedOutput]:
    """Run each check ``repeat`` times on ``functions``; keep each check's worst run.

    Raises ValueError for an unknown check id; a function missing from
    ``functions`` fails the checks that call it. Output to stderr during the
    checks is returned, not written.
    """
    with capture_stderr() as captured:
        from . import checks  # noqa: F401  (registers every check)
        from .checking import REGISTRY

        entries = {entry.id: entry for entry in load_rubric().checks}
        for check_id in check_ids:
            if check_id not in REGISTRY or check_id not in entries:
                known = ", ".join(sorted(i for i in REGISTRY if i.startswith("exercise_")))
                raise ValueError(f"unknown check {check_id!r}; the notebook checks are {known}")
        namespace = types.SimpleNamespace(**functions)

        outcomes = []
        for check_id in check_ids:
            worst = None
            for _ in range(repeat):
                outcome = _run_check(entries[check_id], namespace)
                if worst is None or outcome.score < worst.score:
                    worst = outcome
                if outcome.status != "passed":
                    break
            outcomes.append(worst)
    return outcomes, captured


def format_outcomes(outcomes: list[CheckOutcome], captured: CapturedOutput) -> str:
    """Return the lines a notebook cell prints: one per check, then any captured stderr."""
    width = max(len(o.id) for o in outcomes)
    lines = []
    for o in outcomes:
        lines.append(f"{MARKS[o.status]}  {o.id:<{width}}  {o.score:g}/{o.max_score:g}  {o.title}")
        if o.status != "passed" and o.message:
            lines.extend("      " + line for line in o.message.splitlines())
        if o.misconception:
            lines.append(f"      likely misconception: {o.misconception}")
    if captured.stderr.strip() or captured.warnings:
        lines.append("Output to stderr during the checks (shown here so that it does not fail the cell):")
        lines.extend(STDERR_PREFIX + line for line in captured.stderr.rstrip().splitlines())
        for warning in captured.warnings:
            lines.extend(WARNING_PREFIX + line for line in warning.splitlines())
    return "\n".join(lines)


def grade_cell(*check_ids: str, repeat: int = 1, **functions: Callable[..., Any]) -> float | None:
    """Run the named checks on the learner's functions and print what each found.

    ``check_ids`` are rubric ids such as ``"exercise_1.gpipe"``; the keyword
    arguments are the learner's functions by name
    (``exercise_1=exercise_1``), looked up by the checks as attributes of the
    ``answers`` module. With ``repeat=N`` every check runs N times, each on
    fresh calls, and keeps its lowest score: an answer must be right on
    every call.

    Returns None when every check passes and the points earned (a float
    greater than 0, rounded to 3 decimals) when some check gives only
    partial credit. Raises AssertionError when the checks earn no points,
    and ValueError for an unknown check id or a ``repeat`` below 1.
    """
    if not check_ids:
        raise ValueError("grade_cell needs at least one check id, e.g. grade_cell('exercise_1.gpipe', ...)")
    if repeat < 1:
        raise ValueError(f"repeat is {repeat}; it must be at least 1")

    outcomes, captured = run_checks(check_ids, functions, repeat)
    # The printed lines are the cell's output: the learner's feedback.
    print(format_outcomes(outcomes, captured))

    earned = round(sum(o.score for o in outcomes), 3)
    total = sum(o.max_score for o in outcomes)
    if all(o.status == "passed" for o in outcomes):
        return None
    if earned <= 0:
        failed = ", ".join(o.id for o in outcomes if o.status != "passed")
        raise AssertionError(f"{failed}: 0/{total:g} points; see the lines above")
    return earned
