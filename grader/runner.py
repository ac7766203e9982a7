"""Grade a submission: run each rubric check in its own worker and collect results."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from . import __version__
from .checking import (REGISTRY, Check, CheckFailed, ExplorationMode, collect_reports, on_example_start,
                       set_mode)
from .replay import CallLog, describe
from .rubric import Rubric, load_rubric
from .sandbox import TORCH_MODULES, Limits, SubmissionAborted, Worker, describe_isolation, fork_server

logger = logging.getLogger(__name__)

# Statuses a check can end with.
PASSED, FAILED, NOT_IMPLEMENTED, ERROR = "passed", "failed", "not_implemented", "error"


class SubmissionError(ValueError):
    """The submission folder cannot be graded at all (missing, or a module is absent)."""


@dataclass
class CheckResult:
    """The outcome of one check, ready for every report format."""

    id: str
    exercise: str
    title: str
    status: str
    score: float
    max_score: float
    visibility: str
    message: str = ""
    misconception: str | None = None
    output: str = ""
    details: str = ""
    duration_s: float = 0.0


@dataclass
class GradeReport:
    """All results for one submission, with what is needed to reproduce them."""

    submission: str
    results: list[CheckResult]
    exercises: dict[str, str]
    environment: dict[str, str] = field(default_factory=dict)
    official: bool = True
    seed: int | None = None
    secret: str | None = None
    duration_s: float = 0.0

    @property
    def score(self) -> float:
        return sum(r.score for r in self.results)

    @property
    def max_score(self) -> float:
        return sum(r.max_score for r in self.results)

    def to_dict(self) -> dict:
        return {
            "submission": self.submission,
            "score": self.score,
            "max_score": self.max_score,
            "official": self.official,
            "seed": "derandomized" if self.seed is None else self.seed,
            "secret_examples": self.secret,
            "exercises": [
                {"id": key, "title": title,
                 "score": sum(r.score for r in self.results if r.exercise == key),
                 "max_score": sum(r.max_score for r in self.results if r.exercise == key)}
                for key, title in self.exercises.items()
                if any(r.exercise == key for r in self.results)
            ],
            "checks": [asdict(r) for r in self.results],
            "environment": self.environment,
            "duration_s": self.duration_s,
        }


SECRET_ENV = "PPLAB_SECRET_SEED"


def secret_seed(text: str) -> int:
    """Turn an instructor's secret (any text) into a hypothesis seed."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def environment() -> dict[str, str]:
    """Versions that decide which examples run and how they are scored."""
    import hypothesis
    import numpy

    versions = {"pplab": __version__, "python": platform.python_version(),
                "hypothesis": hypothesis.__version__, "numpy": numpy.__version__}
    torch = sys.modules.get("torch")
    if torch is not None:
        versions["torch"] = torch.__version__
    versions["workers"] = describe_isolation()
    return versions


def required_modules(rubric: Rubric) -> list[str]:
    """Modules the rubric's checks call, in first-use order."""
    modules: list[str] = []
    for entry in rubric.checks:
        for module in REGISTRY[entry.id].modules:
            if module not in modules:
                modules.append(module)
    return modules


def validate_submission(path: Path, rubric: Rubric) -> Path:
    """Return the submission folder, or raise SubmissionError saying what is wrong."""
    if not path.exists():
        raise SubmissionError(f"submission folder {path} does not exist; pass a folder laid out like exercises/")
    if not path.is_dir():
        raise SubmissionError(f"submission {path} is not a folder; pass a folder laid out like exercises/")
    missing = [m for m in required_modules(rubric) if not (path / f"{m}.py").is_file()]
    if missing:
        names = ", ".join(f"{m}.py" for m in missing)
        raise SubmissionError(f"submission {path} is missing {names}; copy the stub from exercises/ "
                              "and fill it in, or leave it unimplemented")
    return path


def run_check(entry, submission: Path, limits: Limits,
              import_failures: dict[str, SubmissionAborted] | None = None,
              replay: bool = False, worker: Worker | None = None) -> CheckResult:
    """Run one check in a fresh worker and turn its outcome into a result.

    With ``replay`` the result's ``details`` explain a failure step by step
    (counterexample, last calls, traceback, a line to rerun it). ``worker``
    is a fresh worker started in advance for this check (closed here); by
    default one is started now.
    """
    check = REGISTRY[entry.id]
    started = time.monotonic()
    result = CheckResult(entry.id, entry.exercise, entry.title, FAILED, 0.0, entry.points,
                         entry.visibility)
    log = None
    reported: list[str] = []
    if replay:
        collect_reports(reported)
    try:
        if worker is None:
            worker = Worker(submission, limits, import_failures, needs_torch=needs_torch(check))
        log = CallLog(worker) if replay else None
        if log is not None:
            on_example_start(log.new_example)
        check.body(log or worker)
        result.status, result.score = PASSED, entry.points
    except CheckFailed as failure:
        # Recent hypothesis versions attach the falsifying example as notes.
        reported.extend(getattr(failure, "__notes__", []))
        result.message = failure.message
        result.misconception = failure.misconception
        result.score = round(entry.points * failure.credit, 3)
    except SubmissionAborted as aborted:
        result.status = NOT_IMPLEMENTED if aborted.kind == "not_implemented" else FAILED
        result.message = aborted.message
    except Exception as error:  # a bug in the grader itself, not the submission's fault
        logger.exception("check %s crashed", entry.id)
        result.status = ERROR
        result.message = f"the grader failed while running this check: {type(error).__name__}: {error}"
    finally:
        collect_reports(None)
        on_example_start(None)
        if worker is not None:
            if result.status != PASSED:
                result.output = worker.output_tail()
            worker.close()
        if log is not None and result.status != PASSED:
            result.details = describe(log, reported)
    result.duration_s = round(time.monotonic() - started, 3)
    return result


def needs_torch(check: Check) -> bool:
    """Return whether ``check`` imports a submission module that imports torch."""
    return not TORCH_MODULES.isdisjoint(check.modules)


def _start_worker(submission: Path, limits: Limits, import_failures: dict[str, SubmissionAborted],
                  check: Check) -> Worker | None:
    """Start ``check``'s worker ahead of time, or return None (run_check then starts one).

    A check that needs torch gets no worker ahead of time while the server
    with torch is still warming up: waiting for it here would hold up the
    check that runs now.
    """
    wants_torch = needs_torch(check)
    server = fork_server()
    if wants_torch and server is not None and not server.torch_ready():
        return None
    try:
        return Worker(submission, limits, import_failures, needs_torch=wants_torch)
    except Exception:  # noqa: BLE001 - reported by run_check, which tries again
        return None


def grade(
    submission: Path,
    rubric: Rubric | None = None,
    limits: Limits = Limits(),
    mode: ExplorationMode = ExplorationMode(),
    progress: Callable[[CheckResult, int, int], None] | None = None,
    replay: bool = False,
) -> GradeReport:
    """Grade ``submission`` against ``rubric`` and return the report.

    Raises SubmissionError when the folder is missing or lacks a module.
    """
    # Start the fork servers first: torch warms up in them while the checks
    # (and the reference, with torch) import here.
    fork_server()
    from . import checks  # noqa: F401  (registers every check)

    rubric = rubric or load_rubric()
    unknown = [entry.id for entry in rubric.checks if entry.id not in REGISTRY]
    if unknown:
        raise SubmissionError(f"the rubric names checks that do not exist: {', '.join(unknown)}")
    submission = validate_submission(Path(submission), rubric)

    secret = os.environ.get(SECRET_ENV, "").strip()
    if secret and mode.seed is None and mode.secret is None:
        mode = dataclasses.replace(mode, secret=secret_seed(secret))
    set_mode(mode)
    started = time.monotonic()
    results = []
    import_failures: dict[str, SubmissionAborted] = {}
    ready: Worker | None = None
    try:
        for index, entry in enumerate(rubric.checks):
            worker, ready = ready, None
            if index + 1 < len(rubric.checks):
                # The next check's worker starts now, alongside this check. It
                # runs no submission code before that check sends its first request.
                ready = _start_worker(submission, limits, import_failures, REGISTRY[rubric.checks[index + 1].id])
            result = run_check(entry, submission, limits, import_failures, replay, worker)
            results.append(result)
            if progress is not None:
                progress(result, index + 1, len(rubric.checks))
    finally:
        if ready is not None:
            ready.close()
        set_mode(ExplorationMode())
    return GradeReport(
        submission=str(submission),
        results=results,
        exercises=dict(rubric.exercises),
        environment=environment(),
        official=mode.seed is None and mode.example_scale == 1.0 and not mode.subset,
        seed=mode.seed,
        secret=None if mode.secret is None else hashlib.sha256(str(mode.secret).encode()).hexdigest()[:12],
        duration_s=round(time.monotonic() - started, 3),
    )
