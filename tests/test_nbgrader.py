"""The nbgrader assignment: notebook build, grade_cell, and the real nbgrader commands."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_output

from grader.notebook import grade_cell
from grader.rubric import load_rubric
from grader.runner import grade
from grader.sandbox import Limits
from reference import answers

REPO_ROOT = Path(__file__).resolve().parents[1]
COURSE = REPO_ROOT / "nbgrader"
ASSIGNMENT = "pipeline_exercises"
NOTEBOOK = f"{ASSIGNMENT}.ipynb"
EXERCISES = ("exercise_1", "exercise_2", "exercise_3")
NBGRADER_TIMEOUT_S = 600

# Source-text edits that turn the reference solutions into each test
# submission; the sandboxed grader gets answers.py with the same edits.
WRONG_GPIPE = ("gpipe_bubble_fraction=bubble,",
               "gpipe_bubble_fraction=(num_stages - 1) / num_microbatches,")
SLOW_CONFIG = ("Exercise3Answer(tp=2, pp=8, dp=4)", "Exercise3Answer(tp=8, pp=8, dp=1)")
NOISY_LINES = ("### BEGIN SOLUTION\n"
               "    import logging, os, sys, warnings\n"
               "    warnings.warn('learner warning')\n"
               "    print('learner stderr', file=sys.stderr)\n"
               "    os.write(2, b'fd 2 bytes\\n')\n"
               "    logging.getLogger('learner').warning('learner log record')")
STUDENTS = {
    "correct": {},
    "wrong": {"exercise_1": [WRONG_GPIPE]},
    "partial": {"exercise_3": [SLOW_CONFIG]},
    "noisy": {"exercise_1": [("### BEGIN SOLUTION", NOISY_LINES)]},
}


def exercise_entries():
    return [entry for entry in load_rubric().checks if entry.exercise in EXERCISES]


def cell_grade_id(cell) -> str | None:
    return cell.metadata.get("nbgrader", {}).get("grade_id")


def load_build_script():
    # Loaded by path: a module named after the folder would shadow the
    # nbgrader package.
    spec = importlib.util.spec_from_file_location("pplab_build_notebook", COURSE / "build_notebook.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def apply_edits(text: str, edits: list[tuple[str, str]]) -> str:
    for old, new in edits:
        assert old in text, f"edit target {old!r} not found; the reference solution changed"
        text = text.replace(old, new, 1)
    return text


def nbgrader_env(root: Path) -> dict[str, str]:
    """Return an environment with this venv's bin first on PATH and Jupyter dirs under ``root``.

    nbgrader creates its gradebook by running ``alembic`` by name, so the
    venv's bin must be on PATH. Private Jupyter dirs keep the user's own
    config and kernelspecs out. The python3 kernelspec then comes from the
    venv (or ipykernel), and it starts the interpreter that runs nbgrader.
    """
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    for name in ("config", "data", "runtime"):
        folder = root / f"jupyter-{name}"
        folder.mkdir(exist_ok=True)
        env[f"JUPYTER_{name.upper()}_DIR"] = str(folder)
    return env


def run_nbgrader(course: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course,
                            env=nbgrader_env(course.parent), capture_output=True, text=True,
                            timeout=NBGRADER_TIMEOUT_S)
    if check:
        assert result.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def write_submission(course: Path, student: str, edits: dict[str, list[tuple[str, str]]]) -> None:
    """Fill the release notebook's solution cells with the source's, edited, as ``student``."""
    source = nbformat.read(course / "source" / ASSIGNMENT / NOTEBOOK, as_version=4)
    solutions = {cell_grade_id(c): c.source for c in source.cells
                 if c.metadata.get("nbgrader", {}).get("solution")}
    notebook = nbformat.read(course / "release" / ASSIGNMENT / NOTEBOOK, as_version=4)
    for cell in notebook.cells:
        grade_id = cell_grade_id(cell)
        if grade_id in solutions:
            exercise = grade_id.removesuffix("_solution")
            cell.source = apply_edits(solutions[grade_id], edits.get(exercise, []))
    folder = course / "submitted" / student / ASSIGNMENT
    folder.mkdir(parents=True)
    nbformat.write(notebook, folder / NOTEBOOK)


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """A copy of the course folder after the real generate_assignment and autograde."""
    root = tmp_path_factory.mktemp("nbgrader")
    course = root / "course"
    shutil.copytree(COURSE, course, ignore=shutil.ignore_patterns("__pycache__", "build_notebook.py"))
    run_nbgrader(course, "generate_assignment", ASSIGNMENT)
    for student, edits in STUDENTS.items():
        write_submission(course, student, edits)
    run_nbgrader(course, "autograde", ASSIGNMENT)
    return course


@pytest.fixture(scope="module")
def cell_scores(course):
    """Points nbgrader's gradebook records per student and test cell."""
    from nbgrader.api import Gradebook

    scores = {}
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        for student in STUDENTS:
            submission = gradebook.find_submission(ASSIGNMENT, student)
            (notebook,) = submission.notebooks
            scores[student] = {g.name: g.score for g in notebook.grades}
    return scores


def sandboxed_scores(tmp_path: Path, edits: dict[str, list[tuple[str, str]]]) -> dict[str, float]:
    """Grade answers.py with the same edits through ``pplab grade``'s sandbox, per check."""
    folder = tmp_path / "submission"
    folder.mkdir()
    text = (REPO_ROOT / "reference" / "answers.py").read_text(encoding="utf-8")
    for exercise_edits in edits.values():
        text = apply_edits(text, exercise_edits)
    (folder / "answers.py").write_text(text, encoding="utf-8")
    rubric = load_rubric().select(ids=[entry.id for entry in exercise_entries()])
    report = grade(folder, rubric, Limits(call_timeout=15.0, import_timeout=15.0))
    return {result.id: result.score for result in report.results}


def test_committed_notebook_is_build_output():
    build = load_build_script()
    committed = build.NOTEBOOK_PATH.read_text(encoding="utf-8")
    assert committed == build.render_notebook()


def test_test_cells_carry_rubric_points():
    notebook = nbformat.read(COURSE / "source" / ASSIGNMENT / NOTEBOOK, as_version=4)
    points = {cell_grade_id(c): c.metadata["nbgrader"]["points"] for c in notebook.cells
              if c.metadata.get("nbgrader", {}).get("grade")}
    expected = {"test_" + entry.id.replace(".", "_"): entry.points for entry in exercise_entries()}
    assert points == expected


def test_release_has_no_solutions_or_hidden_tests(course):
    release = nbformat.read(course / "release" / ASSIGNMENT / NOTEBOOK, as_version=4)
    text = "\n".join(cell.source for cell in release.cells)
    for marker in ("### BEGIN SOLUTION", "### END SOLUTION", "### BEGIN HIDDEN TESTS", "repeat="):
        assert marker not in text

    source = nbformat.read(course / "source" / ASSIGNMENT / NOTEBOOK, as_version=4)
    for cell in source.cells:
        if not cell.metadata.get("nbgrader", {}).get("solution"):
            continue
        region = cell.source.split("### BEGIN SOLUTION")[1].split("### END SOLUTION")[0]
        for line in region.splitlines():
            if any(ch.isalnum() for ch in line):
                assert line.strip() not in text, f"solution line {line.strip()!r} is in the release"

    solution_cells = [c for c in release.cells if c.metadata.get("nbgrader", {}).get("solution")]
    assert len(solution_cells) == len(EXERCISES)
    for cell in solution_cells:
        assert "raise NotImplementedError()" in cell.source
    for entry in exercise_entries():
        if entry.visibility == "visible":
            assert f'grade_cell("{entry.id}"' in text


@pytest.mark.parametrize("command", ["release_assignment", "collect"])
def test_exchange_commands_fail(course, command):
    before = sorted(p.name for p in course.iterdir())
    result = run_nbgrader(course, command, ASSIGNMENT, check=False)
    assert result.returncode != 0
    assert "does not use nbgrader's exchange" in result.stdout + result.stderr
    assert sorted(p.name for p in course.iterdir()) == before


def test_autograde_correct_gets_full_points(cell_scores):
    expected = {"test_" + entry.id.replace(".", "_"): entry.points for entry in exercise_entries()}
    assert cell_scores["correct"] == expected
    assert sum(cell_scores["correct"].values()) == load_rubric().select(
        ids=[entry.id for entry in exercise_entries()]).max_points


def test_autograde_wrong_loses_only_its_cell(cell_scores):
    wrong = cell_scores["wrong"]
    correct = cell_scores["correct"]
    assert wrong["test_exercise_1_gpipe"] == 0
    for grade_id, points in correct.items():
        if grade_id != "test_exercise_1_gpipe":
            assert wrong[grade_id] == points, grade_id
    gpipe_points = next(e.points for e in exercise_entries() if e.id == "exercise_1.gpipe")
    assert sum(wrong.values()) == sum(correct.values()) - gpipe_points


@pytest.mark.parametrize("student", ["wrong", "partial"])
def test_autograde_matches_pplab_grade(cell_scores, tmp_path, student):
    expected = sandboxed_scores(tmp_path, STUDENTS[student])
    got = {check_id: cell_scores[student]["test_" + check_id.replace(".", "_")] for check_id in expected}
    assert got == pytest.approx(expected, abs=1e-9)


def test_autograde_gives_partial_credit(cell_scores):
    quality = cell_scores["partial"]["test_exercise_3_quality"]
    assert 0 < quality < 3


def test_stderr_in_correct_cell_keeps_points(course, cell_scores):
    assert cell_scores["noisy"] == cell_scores["correct"]

    notebook = nbformat.read(course / "autograded" / "noisy" / ASSIGNMENT / NOTEBOOK, as_version=4)
    (cell,) = [c for c in notebook.cells if cell_grade_id(c) == "test_exercise_1_gpipe"]
    assert not [o for o in cell.outputs if o.output_type == "stream" and o.name == "stderr"]
    printed = "".join(o.text for o in cell.outputs if o.output_type == "stream")
    for text in ("PASS  exercise_1.gpipe", "learner stderr", "fd 2 bytes", "learner warning",
                 "learner log record"):
        assert text in printed


def test_nbgrader_zeroes_cell_with_stderr():
    # The premise grade_cell's capture rests on, in nbgrader 0.9.6's own grading.
    from nbgrader.utils import determine_grade

    meta = {"nbgrader": {"grade": True, "grade_id": "t", "points": 2, "solution": False,
                         "locked": True, "schema_version": 3}}
    cell = new_code_cell("", metadata=meta)
    cell.outputs = [new_output("stream", name="stdout", text="PASS\n")]
    assert determine_grade(cell) == (2, 2)
    cell.outputs.append(new_output("stream", name="stderr", text="a warning\n"))
    assert determine_grade(cell) == (0, 2)
    cell.outputs = [new_output("execute_result", data={"text/plain": "1.5"}, execution_count=1)]
    assert determine_grade(cell) == (1.5, 2)


def test_grade_cell_writes_nothing_to_stderr(capfd):
    def noisy_exercise_1():
        import warnings

        warnings.warn("checked warning")
        print("python-level", file=sys.stderr)
        os.write(2, b"fd-level\n")
        return answers.exercise_1()

    assert grade_cell("exercise_1.gpipe", exercise_1=noisy_exercise_1) is None
    out, err = capfd.readouterr()
    assert err == ""
    assert "PASS  exercise_1.gpipe" in out
    assert "stderr | python-level" in out
    assert "stderr | fd-level" in out
    assert "checked warning" in out


def test_grade_cell_failure_raises(capsys):
    def wrong_exercise_1():
        return answers.exercise_1()._replace(gpipe_bubble_fraction=3 / 16)

    with pytest.raises(AssertionError, match="exercise_1.gpipe"):
        grade_cell("exercise_1.gpipe", exercise_1=wrong_exercise_1)
    out = capsys.readouterr().out
    assert "FAIL  exercise_1.gpipe" in out
    assert "bubble overhead" in out


def test_grade_cell_returns_partial_points(capsys):
    def slow_exercise_3():
        return answers.Exercise3Answer(tp=8, pp=8, dp=1)

    earned = grade_cell("exercise_3.quality", exercise_3=slow_exercise_3)
    assert isinstance(earned, float)
    assert 0 < earned < 3


def test_grade_cell_not_implemented_raises(capsys):
    def stub():
        raise NotImplementedError

    with pytest.raises(AssertionError):
        grade_cell("exercise_2.tensor_parallel", exercise_2=stub)
    assert "TODO  exercise_2.tensor_parallel" in capsys.readouterr().out


def test_grade_cell_repeat_catches_changing_answer(capsys):
    calls = []

    def right_once():
        calls.append(None)
        value = answers.exercise_1()
        return value if len(calls) == 1 else value._replace(interleaved_bubble_fraction=0.5)

    assert grade_cell("exercise_1.interleaved", exercise_1=right_once) is None
    calls.clear()
    with pytest.raises(AssertionError):
        grade_cell("exercise_1.interleaved", exercise_1=right_once, repeat=3)


def test_grade_cell_rejects_unknown_check():
    with pytest.raises(ValueError, match="exercise_9.nothing"):
        grade_cell("exercise_9.nothing", exercise_1=answers.exercise_1)
