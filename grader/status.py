"""Report a submission's progress: functions still stubs, the last grade, the next check, and hints.

``pplab grade`` stores its last results in ``PATH/.pplab/last_grade.json``
and counts each check's failures in ``PATH/.pplab/attempts.json``. The
grader's workers copy only the ``*.py`` files of a submission, so this
folder never reaches the submission's code. Saving is best effort: a
read-only folder only loses the history. A check's n-th hint from the
rubric shows once that check has failed n times for this submission.

Stubs are found statically: a function whose body raises
``NotImplementedError`` (outside an ``except`` block) is a stub. The
submission is parsed with :mod:`ast`, never imported.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .rubric import Rubric, RubricEntry

logger = logging.getLogger(__name__)

# Modules the checks import that learners do not write: given code, copied
# unchanged from the instructor's copy (it has no solution regions).
GIVEN_MODULES = frozenset({"pipeline_launch"})
STATE_DIR = ".pplab"
LAST_GRADE_FILE = "last_grade.json"
ATTEMPTS_FILE = "attempts.json"
FAILED = "failed"
PASSED = "passed"


# --- stubs ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ModuleStatus:
    """The functions of one submission module, and which of them are still stubs."""

    module: str
    functions: tuple[str, ...]
    stubs: tuple[str, ...]
    problem: str | None = None


def _raises_not_implemented(node: ast.AST) -> bool:
    if not isinstance(node, ast.Raise) or node.exc is None:
        return False
    target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
    return isinstance(target, ast.Name) and target.id == "NotImplementedError"


def _is_stub(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Return whether the function's own body raises NotImplementedError outside an except block."""
    pending = list(function.body)
    while pending:
        node = pending.pop()
        if _raises_not_implemented(node):
            return True
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, (ast.ExceptHandler, ast.FunctionDef, ast.AsyncFunctionDef,
                                      ast.ClassDef, ast.Lambda)):
                pending.append(child)
    return False


def module_status(path: Path) -> ModuleStatus:
    """Parse one module file and list its functions (``Class.method`` for methods) and stubs."""
    module = path.stem
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as error:
        return ModuleStatus(module, (), (), f"syntax error on line {error.lineno}: {error.msg}")
    except (OSError, UnicodeDecodeError) as error:
        return ModuleStatus(module, (), (), f"cannot be read: {error}")
    functions, stubs = [], []
    for node in tree.body:
        members = [(node.name, node)] if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else []
        if isinstance(node, ast.ClassDef):
            members = [(f"{node.name}.{item.name}", item) for item in node.body
                       if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for name, function in members:
            functions.append(name)
            if _is_stub(function):
                stubs.append(name)
    return ModuleStatus(module, tuple(functions), tuple(stubs))


def submission_status(submission: Path, modules: list[str]) -> dict[str, ModuleStatus]:
    """Return the status of each named module of ``submission`` (missing files included)."""
    result = {}
    for module in modules:
        path = submission / f"{module}.py"
        result[module] = module_status(path) if path.is_file() else ModuleStatus(module, (), (), "missing")
    return result


# --- stored state --------------------------------------------------------------------

def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        logger.warning("ignoring %s: %s", path, error)
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict) -> None:
    try:
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    except OSError as error:
        logger.warning("could not save %s (the grade itself is unaffected): %s", path, error)


def load_last_grade(submission: Path) -> dict:
    """Return the stored last results: ``{"checks": {id: {...}}, "report": {...}}``, or {}."""
    return _read_json(Path(submission) / STATE_DIR / LAST_GRADE_FILE)


def load_attempts(submission: Path) -> dict[str, int]:
    """Return how many times each check has failed for this submission."""
    counts = _read_json(Path(submission) / STATE_DIR / ATTEMPTS_FILE).get("failures", {})
    return {key: value for key, value in counts.items() if isinstance(value, int) and value >= 0}


def save_grade(submission: Path, report_data: dict) -> dict[str, int]:
    """Store a report (``GradeReport.to_dict()``) and count its failures; return the failure counts.

    Results merge per check, so grading one check with ``--check`` keeps the
    others' last results.
    """
    submission = Path(submission)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    last = load_last_grade(submission)
    checks = last.get("checks", {}) if isinstance(last.get("checks"), dict) else {}
    counts = load_attempts(submission)
    seen = _read_json(submission / STATE_DIR / ATTEMPTS_FILE).get("code", {})
    seen = seen if isinstance(seen, dict) else {}
    code = submission_digest(submission)
    for result in report_data.get("checks", []):
        message = (result.get("message") or "").splitlines()
        checks[result["id"]] = {"status": result["status"], "score": result["score"],
                                "max_score": result["max_score"], "graded": stamp,
                                "message": message[0] if message else ""}
        # Grading the same code again is no new attempt: only a failure of
        # changed code unlocks the next hint.
        if result["status"] == FAILED and seen.get(result["id"]) != code:
            counts[result["id"]] = counts.get(result["id"], 0) + 1
            seen[result["id"]] = code
    _write_json(submission / STATE_DIR / LAST_GRADE_FILE, {"checks": checks, "report": report_data})
    _write_json(submission / STATE_DIR / ATTEMPTS_FILE, {"failures": counts, "code": seen})
    return counts


def submission_digest(submission: Path) -> str:
    """Return a SHA-256 over the submission's ``*.py`` files (names and bytes)."""
    digest = hashlib.sha256()
    for path in sorted(Path(submission).glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


# --- text ------------------------------------------------------------------------------

def earned_hints(entry: RubricEntry, failures: int) -> tuple[str, ...]:
    """Return the hints a check has unlocked: hint n after n failures."""
    return entry.hints[:max(0, failures)]


def hints_text(rubric: Rubric, failed_ids: list[str], counts: dict[str, int]) -> str:
    """Return the hints earned by the checks that failed in this run, or an empty string."""
    entries = {entry.id: entry for entry in rubric.checks}
    blocks = []
    for check_id in failed_ids:
        entry = entries.get(check_id)
        hints = earned_hints(entry, counts.get(check_id, 0)) if entry else ()
        if not hints:
            continue
        times = counts[check_id]
        more = len(entry.hints) - len(hints)
        lines = [f"  {check_id} (failed {times} time{'s' if times != 1 else ''}"
                 + (f"; {more} more hint{'s' if more != 1 else ''} if it fails again)" if more else ")")]
        lines += [f"    {index}. {hint}" for index, hint in enumerate(hints, start=1)]
        blocks.append("\n".join(lines))
    return "Hints:\n" + "\n".join(blocks) if blocks else ""


def official_only_text(rubric: Rubric) -> str:
    """List the hidden checks a student release cannot run, or return an empty string."""
    if not rubric.official_only:
        return ""
    total = sum(entry.points for entry in rubric.official_only)
    width = max(len(entry.id) for entry in rubric.official_only)
    lines = [f"Hidden checks, graded only by the official grader ({total:g} more points):"]
    lines += [f"  {entry.id:<{width}}  {entry.points:>3g}  {entry.title}" for entry in rubric.official_only]
    return "\n".join(lines)


def after_grade(submission: Path, report_data: dict, rubric: Rubric, save: bool = True,
                list_hidden: bool = True) -> str:
    """Store the grade (unless ``save`` is false) and return the text to print below the report.

    ``list_hidden`` adds the list of checks only the official grader runs
    (a student release has some); runs of single checks leave it out.

    Grading the instructor's ``reference/`` is never stored: it is no
    learner's attempt, and it keeps that folder clean.
    """
    reference = Path(__file__).resolve().parents[1] / "reference"
    save = save and Path(submission).resolve() != reference
    counts = save_grade(submission, report_data) if save else load_attempts(submission)
    failed = [r["id"] for r in report_data.get("checks", []) if r.get("status") == FAILED]
    parts = [hints_text(rubric, failed, counts), official_only_text(rubric) if list_hidden else ""]
    return "\n\n".join(part for part in parts if part)


def _check_modules(rubric: Rubric) -> dict[str, tuple[str, ...]]:
    from . import checks  # noqa: F401  (registers every check)
    from .checking import REGISTRY

    return {entry.id: REGISTRY[entry.id].modules for entry in rubric.checks if entry.id in REGISTRY}


def _check_functions() -> dict[str, set[str]]:
    """Map each visible check to the functions its golden data calls (empty when there is none)."""
    from .golden import GOLDEN_PATH, GoldenError, load

    try:
        document = load(GOLDEN_PATH)
    except GoldenError:
        return {}
    calls = {}
    for check_id, entry in document.get("checks", {}).items():
        calls[check_id] = {f"{i['module']}.{i['function']}" for i in entry.get("interactions", [])
                           if i["op"] == "call"}
    if "exercise_3" in document:
        for check_id in ("exercise_3.valid", "exercise_3.quality"):
            calls[check_id] = {"answers.exercise_3"}
    return calls


MARKS = {PASSED: "PASS", FAILED: "FAIL", "not_implemented": "TODO", "error": "ERR "}


def status_text(submission: Path, rubric: Rubric) -> str:
    """Return the status report of ``submission``: modules, checks, hidden checks and what to do next."""
    submission = Path(submission)
    check_modules = _check_modules(rubric)
    check_functions = _check_functions()
    modules = list(dict.fromkeys(m for entry in rubric.checks for m in check_modules.get(entry.id, ())))
    statuses = submission_status(submission, modules)
    last = load_last_grade(submission).get("checks", {})
    counts = load_attempts(submission)

    lines = [f"pplab status {submission}", "", "Modules:"]
    width = max((len(m) for m in modules), default=8) + 3
    for module in modules:
        state = statuses[module]
        if state.problem:
            text = state.problem
        elif module in GIVEN_MODULES and not state.stubs:
            text = "given code, nothing to implement"
        elif state.stubs:
            text = f"{len(state.stubs)} of {len(state.functions)} functions still stubs: {', '.join(state.stubs)}"
        else:
            text = f"implemented ({len(state.functions)} functions, no stubs left)"
        lines.append(f"  {module + '.py':<{width}} {text}")

    lines += ["", "Checks (last result of pplab grade):"]
    width = max((len(entry.id) for entry in rubric.checks), default=10)
    next_entry = None
    for entry in rubric.checks:
        result = last.get(entry.id)
        stubs = _stubs_for(entry.id, check_modules, check_functions, statuses)
        if result:
            mark = MARKS.get(result.get("status"), "????")
            text = f"{result.get('score', 0):g}/{entry.points:g}  graded {result.get('graded', '?')}"
        else:
            mark, text = "----", "not graded yet"
        if stubs:
            text += f"; stubs: {', '.join(stubs)}"
        failures = counts.get(entry.id, 0)
        if failures:
            text += f"; failed {failures}x, {len(earned_hints(entry, failures))} hint(s) shown by pplab grade"
        hidden = "  (hidden)" if entry.visibility == "hidden" else ""
        lines.append(f"  {mark}  {entry.id:<{width}}  {text}{hidden}")
        if next_entry is None and (result or {}).get("status") != PASSED:
            next_entry = (entry, stubs)

    hidden = official_only_text(rubric)
    if hidden:
        lines += ["", hidden]
    lines.append("")
    if next_entry is None:
        lines.append("Next: every check passed in the last grade. Run pplab grade once more after any change.")
    else:
        entry, stubs = next_entry
        todo = f" (implement {', '.join(stubs)} first)" if stubs else ""
        lines.append(f"Next: {entry.id} ({entry.title}){todo}: pplab grade {submission} --check {entry.id}")
    return "\n".join(lines)


def _stubs_for(check_id: str, check_modules: dict, check_functions: dict, statuses: dict) -> list[str]:
    """Return the stub functions a check calls (or, without golden data, all stubs of its modules)."""
    called = check_functions.get(check_id)
    stubs = []
    for module in check_modules.get(check_id, ()):
        state = statuses.get(module)
        if state is None:
            continue
        for name in state.stubs:
            if not called or f"{module}.{name}" in called:
                stubs.append(f"{module}.{name}")
    return stubs


# --- command line ----------------------------------------------------------------------

def add_parser(subparsers) -> None:
    """Register ``pplab status`` on the CLI's subparsers."""
    parser = subparsers.add_parser(
        "status", help="show which functions are still stubs, the last grade and the next check",
        description="Show a submission's progress: functions still raising NotImplementedError (found "
                    "without running your code), each check's last result from pplab grade, and what to do next.")
    parser.add_argument("path", nargs="?", default="exercises", help="submission folder (default: ./exercises)")
    parser.add_argument("--rubric", metavar="FILE", help="rubric TOML file (default: the packaged one)")
    parser.set_defaults(handler=run_command)


def run_command(args: Any) -> int:
    """Run ``pplab status``."""
    import sys

    from .golden import GoldenError
    from .rubric import DEFAULT_RUBRIC, RubricError, load_rubric

    path = Path(args.path)
    if not path.is_dir():
        print(f"pplab: error: submission folder {path} does not exist; pass a folder laid out like exercises/",
              file=sys.stderr)
        return 2
    try:
        rubric = load_rubric(Path(args.rubric) if args.rubric else DEFAULT_RUBRIC)
        print(status_text(path, rubric))
    except (RubricError, GoldenError) as error:
        print(f"pplab: error: {error}", file=sys.stderr)
        return 2
    return 0
