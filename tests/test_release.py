"""Tests of the golden data, its replay, the student release, and pplab status and hints."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from grader import golden
from grader.checking import CheckFailed
from grader.cli import main
from grader.golden_replay import SCHEDULE_NOTE, Leniency, compare, replay_bodies
from grader.inprocess import InProcessWorker
from grader.release import build_release
from grader.rubric import load_rubric
from grader.samples import load_samples, materialize
from grader.sandbox import Record, SubmissionAborted
from grader.status import after_grade, module_status, status_text
from grader.stubs import BEGIN, END, expected_stubs

REPO_ROOT = Path(__file__).resolve().parents[1]
MIN_SOLUTION_LINE = 12

# Runs the release's own CLI: the release folder comes first on sys.path and
# `reference` cannot be imported, as on a learner's machine (this test
# environment has the instructor's packages installed).
RUNNER = """
import importlib.abc, sys

class BlockReference(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "reference":
            raise ImportError("the student release has no reference package")
        return None

release = sys.argv[1]
sys.meta_path.insert(0, BlockReference())
sys.path.insert(0, release)
import grader
assert grader.__file__.startswith(release), grader.__file__
from grader.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def golden_document():
    return golden.load()


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    out = tmp_path_factory.mktemp("release") / "pplab-release"
    build_release(out)
    return out


@pytest.fixture(scope="module")
def run_release(tmp_path_factory, release):
    runner = tmp_path_factory.mktemp("runner") / "run_release.py"
    runner.write_text(RUNNER, encoding="utf-8")

    def run(*args: str, cwd: Path = release) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(runner), str(release), *args], cwd=cwd,
                              capture_output=True, text=True, timeout=300)

    return run


def _copy_release_with(release: Path, target: Path, modules: Path) -> Path:
    """Copy the release to ``target`` with every ``*.py`` of ``modules`` in its exercises/."""
    import shutil

    shutil.copytree(release, target, ignore=shutil.ignore_patterns(".pplab", "__pycache__"))
    for path in modules.glob("*.py"):
        shutil.copyfile(path, target / "exercises" / path.name)
    return target


def _failing_checks(report: dict) -> set[str]:
    return {c["id"] for c in report["checks"] if c["score"] < c["max_score"]}


# --- (a) golden data ------------------------------------------------------------------

def test_golden_data_up_to_date(capsys):
    assert golden.staleness() is None
    assert main(["golden", "--check"]) == 0
    assert "up to date" in capsys.readouterr().out


def test_golden_check_reports_stale_file(tmp_path, capsys, golden_document):
    stale = dict(golden_document, visible_checks=golden_document["visible_checks"][:-1])
    path = tmp_path / "visible.json"
    path.write_text(golden.dumps(stale), encoding="utf-8")
    assert main(["golden", "--check", "--output", str(path)]) == 1
    assert "stale:" in capsys.readouterr().out


def test_golden_covers_visible_checks(golden_document):
    visible = [e.id for e in load_rubric().checks if e.visibility == "visible"]
    assert golden_document["visible_checks"] == visible
    assert set(golden_document["checks"]) == set(visible)


def test_golden_bytes_deterministic(golden_document):
    text = golden.GOLDEN_PATH.read_text(encoding="utf-8")
    assert golden.dumps(golden.from_storage(json.loads(text))) == text


def test_replay_of_reference_passes(golden_document):
    failures = {}
    for check_id, (_modules, body) in replay_bodies(golden_document).items():
        try:
            body(InProcessWorker(REPO_ROOT / "reference"))
        except (CheckFailed, SubmissionAborted) as error:
            failures[check_id] = str(error)[:300]
    assert failures == {}


def test_exercise_3_table_scores_reference_answer(golden_document):
    from reference.answers import exercise_3

    answer = exercise_3()
    key = ",".join(str(getattr(answer, f)) for f in golden.EXERCISE_3_FIELDS)
    assert golden_document["exercise_3"]["table"][key] == [[1.0, -1], [1.0, -1]]


def test_exercise_3_table_explains_broken_rule(golden_document):
    scores = golden_document["exercise_3"]
    credit, index = scores["table"]["16,2,2,1,1"][0]
    assert 0 < credit < 1
    assert "tp_within_node" in scores["messages"][index]


def test_exercise_3_unscored_config_says_so(golden_document):
    _modules, body = replay_bodies(golden_document)["exercise_3.valid"]

    class Answer:
        call_timeout = 0.0

        def import_module(self, module):
            pass

        def call(self, module, function):
            return Record("Exercise3Answer", {"tp": 3, "pp": 8, "dp": 4, "ep": 1, "num_chunks": 1})

    with pytest.raises(CheckFailed, match="official grader scores any configuration"):
        body(Answer())


# --- comparator -------------------------------------------------------------------------

def test_compare_int_needs_int_unless_lenient():
    assert compare(3, 3.0) is not None
    assert compare(Record("T", {"n": 3}), Record("T", {"n": 3.0}), Leniency(float_for_int=["T.n"])) is None


def test_compare_float_tolerance():
    assert compare(1.0, 1.0 + 1e-8) is None
    assert compare(1.0, 1.0 + 1e-4) is not None
    assert compare(0.0, 5e-10) is None
    assert compare(1.0, True) is not None


def test_compare_free_strings_only_where_allowed():
    expected = [Record("RuleFailure", {"rule": "memory", "reason": "needs 90 GB"})]
    got = [Record("RuleFailure", {"rule": "memory", "reason": "too big"})]
    assert compare(expected, got) is not None
    assert compare(expected, got, Leniency(free_strings=["RuleFailure.reason"])) is None
    wrong_rule = [Record("RuleFailure", {"rule": "world_size", "reason": "needs 90 GB"})]
    assert compare(expected, wrong_rule, Leniency(free_strings=["RuleFailure.reason"])) is not None


def test_compare_arrays_kind_shape_values():
    expected = np.array([[1, 2], [3, 4]])
    assert compare(expected, expected.astype(np.int32)) is None
    assert "float" in compare(expected, expected.astype(float))
    assert "shape" in compare(expected, expected.T.reshape(4))
    problem = compare(np.array([0.5, 0.25]), np.array([0.5, 0.3]))
    assert "index (1,)" in problem


def test_compare_schedule_names_rank_and_step():
    def action(kind, mb):
        return Record("Action", {"kind": kind, "microbatch": mb, "chunk": 0})

    expected = [[action("F", 0), action("B", 0), action("F", 1), action("B", 1)]]
    got = [[action("F", 0), action("F", 1), action("B", 0), action("B", 1)]]
    assert compare(expected, got) == "rank 0 step 1 is F1, the reference runs B0"


def test_replay_schedule_message_is_compact():
    from grader.golden_replay import replay_interactions

    def action(kind, mb):
        return {"__type__": "namedtuple", "name": "Action", "fields": {"kind": kind, "microbatch": mb, "chunk": 0}}

    entry = {"interactions": [{"op": "call", "module": "schedules", "function": "gpipe", "args": [1, 2],
                               "kwargs": {"__type__": "dict", "items": []},
                               "returns": [[action("F", 0), action("F", 1), action("B", 0), action("B", 1)]]}]}

    class EarlyBackward:
        call_timeout = 0.0

        def call(self, module, function, *args):
            act = lambda kind, mb: Record("Action", {"kind": kind, "microbatch": mb, "chunk": 0})  # noqa: E731
            return [[act("F", 0), act("B", 0), act("F", 1), act("B", 1)]]

    with pytest.raises(CheckFailed) as failure:
        replay_interactions(EarlyBackward(), entry)
    message = failure.value.message
    assert message.startswith("gpipe(1, 2): rank 0 step 1 is B0")
    assert "rank 0: F0 F1 B0 B1" in message
    assert "rank 0: F0 B0 F1 B1" in message
    assert SCHEDULE_NOTE in message


def test_replay_reports_smallest_failure():
    from grader.golden_replay import replay_interactions

    def call(num_stages, num_microbatches):
        return {"op": "call", "module": "bubbles", "function": "bubble_fraction",
                "args": ["gpipe", num_stages, num_microbatches], "kwargs": {"__type__": "dict", "items": []},
                "returns": (num_stages - 1) / (num_microbatches + num_stages - 1)}

    entry = {"interactions": [{"op": "import", "module": "bubbles"}, call(4, 12), call(2, 3), call(3, 3)]}

    class Overhead:
        call_timeout = 0.0

        def import_module(self, module):
            pass

        def call(self, module, function, schedule, num_stages, num_microbatches):
            return (num_stages - 1) / num_microbatches

    with pytest.raises(CheckFailed) as failure:
        replay_interactions(Overhead(), entry)
    assert failure.value.message.startswith("bubble_fraction('gpipe', 2, 3): expected 0.25, returned 0.3333333333")
    assert "3 of 3 recorded calls fail" in failure.value.message


# --- (b) the release's contents ---------------------------------------------------------------

def test_release_leaves_out_instructor_files(release):
    assert not (release / "reference").exists()
    assert not (release / "grader" / "checks").exists()
    assert not (release / "datasets" / "submissions").exists()
    assert (release / "grader" / "checks.py").is_file()
    assert (release / "datasets" / "golden" / "visible.json").is_file()
    assert sorted(p.name for p in (release / "exercises").glob("*.py")) == \
        sorted(p.name for p in (REPO_ROOT / "reference").glob("*.py"))


def _solution_lines() -> dict[str, str]:
    """Return each solution line of reference/ worth searching for, mapped to its file.

    A line counts when it lies between ``### BEGIN SOLUTION`` and
    ``### END SOLUTION``, is at least MIN_SOLUTION_LINE characters long once
    stripped, and does not occur anywhere in the generated stubs, not even
    inside a longer line. Given code (argument checks, a loop header, an
    unpacking such as ``tp, pp, dp, ep, v = config``) repeats in some
    solutions, and it is public anyway.
    """
    stubs = "\n".join(expected_stubs(REPO_ROOT / "reference").values())
    found = {}
    for path in sorted((REPO_ROOT / "reference").glob("*.py")):
        inside = False
        for line in path.read_text(encoding="utf-8").splitlines():
            stripped = line.strip()
            if stripped == BEGIN:
                inside = True
            elif stripped == END:
                inside = False
            elif inside and len(stripped) >= MIN_SOLUTION_LINE and stripped not in stubs:
                found[stripped] = path.name
    return found


def test_release_contains_no_solution_line(release):
    solutions = _solution_lines()
    assert len(solutions) > 100
    leaks = []
    for path in sorted(release.rglob("*")):
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        leaks += [f"{path.relative_to(release)}: {line!r} (from {source})"
                  for line, source in solutions.items() if line in text]
    assert leaks == []


def test_release_rubric_lists_hidden_as_official_only(release):
    main_rubric = load_rubric()
    rubric = load_rubric(release / "grader" / "rubric.toml")
    assert [e.id for e in rubric.checks] == [e.id for e in main_rubric.checks if e.visibility == "visible"]
    assert [(e.id, e.points) for e in rubric.official_only] == \
        [(e.id, e.points) for e in main_rubric.checks if e.visibility == "hidden"]
    assert all(e.hints == m.hints for e, m in zip(rubric.checks, main_rubric.select("visible").checks))


def test_release_into_non_empty_folder_fails(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("x", encoding="utf-8")
    assert main(["release", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_release_readme_starts_with_setup_and_grade(release):
    text = (release / "README.md").read_text(encoding="utf-8")
    commands = [block.split("```")[0].strip() for block in text.split("```sh")[1:3]]
    assert commands[0].startswith("python3 -m venv .venv")
    assert "pip install torch==2.13.0" in commands[0]
    assert commands[1] == "pplab grade"


# --- (c) grading in the release -------------------------------------------------------------

def test_release_grades_stubs_zero(run_release, tmp_path):
    report_path = tmp_path / "report.json"
    done = run_release("grade", "--no-history", "--output", str(report_path))
    assert done.returncode == 0, done.stderr
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["score"] == 0
    assert {c["status"] for c in report["checks"]} == {"not_implemented"}
    hidden = [e for e in load_rubric().checks if e.visibility == "hidden"]
    assert "graded only by the official grader" in done.stdout
    assert all(entry.id in done.stdout for entry in hidden)


def test_release_hidden_check_is_named(run_release):
    done = run_release("grade", "--check", "simulator.deadlock")
    assert done.returncode == 2
    assert "hidden" in done.stderr


def test_release_instructor_commands_refused(run_release):
    for args in (["golden"], ["release", "somewhere"], ["stubs"], ["viz", "--impl", "reference"]):
        done = run_release(*args)
        assert done.returncode == 2, args
        assert "pplab: error:" in done.stderr


def test_release_grades_reference_full(run_release, release, tmp_path):
    copy = _copy_release_with(release, tmp_path / "full", REPO_ROOT / "reference")
    done = subprocess.run([sys.executable, "-c", RUNNER, str(copy), "grade", "--format", "json"],
                          cwd=copy, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [c["id"] for c in report["checks"] if c["status"] != "passed"] == []
    assert report["score"] == report["max_score"] == load_rubric().select("visible").max_points


def test_release_fails_same_checks_as_official(release, tmp_path):
    sample = load_samples()["warmup_p_minus_rank"]
    folder = materialize(sample, tmp_path / "sample")
    copy = _copy_release_with(release, tmp_path / "release", folder)
    done = subprocess.run([sys.executable, "-c", RUNNER, str(copy), "grade", "--format", "json"],
                          cwd=copy, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    visible = load_rubric().select("visible").checks
    officially_short = {e.id for e in visible if sample.expected_score(e.id, e.points) < e.points}
    assert officially_short == {"schedules.one_f_one_b"}
    assert _failing_checks(json.loads(done.stdout)) == officially_short


# Samples whose official score on every check samples.toml states (and
# tests/test_samples.py enforces), replayed in this process: they are the
# project's own code, and none of them loops, exits or spawns processes.
PARITY_SAMPLES = ["correct_alt", "partial", "warmup_not_capped", "gpipe_overhead_as_fraction", "one_f_one_b_cuts_bubble",
                  "softmax_wrong_axis", "capacity_floor", "probs_drop_order_reversed", "send_counts_transposed",
                  "ep_experts_as_n", "optimizer_states_forgotten", "tp_divides_embedding_twice"]


@pytest.mark.parametrize("name", PARITY_SAMPLES)
def test_replay_scores_match_official(name, tmp_path, golden_document):
    sample = load_samples()[name]
    folder = materialize(sample, tmp_path / name)
    points = {e.id: e.points for e in load_rubric().checks}
    mismatches = {}
    for check_id, (_modules, body) in replay_bodies(golden_document).items():
        if check_id.startswith("pipeline_runtime."):
            continue  # ranks spawned in this process cannot import a private package
        try:
            body(InProcessWorker(folder))
            score = points[check_id]
        except CheckFailed as failure:
            score = round(points[check_id] * failure.credit, 3)
        except SubmissionAborted:
            score = 0.0
        official = sample.expected_score(check_id, points[check_id])
        if abs(score - official) > 1e-9:
            mismatches[check_id] = (score, official)
    assert mismatches == {}


# --- (d) status and hints -------------------------------------------------------------------------

def _solution_functions(path: Path) -> set[str]:
    """Top-level functions of a reference module whose source holds a solution region."""
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text)
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef)
            and BEGIN in (ast.get_source_segment(text, node) or "")}


def test_status_finds_every_stub(tmp_path):
    for name, text in expected_stubs(REPO_ROOT / "reference").items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    for path in sorted((REPO_ROOT / "reference").glob("*.py")):
        assert set(module_status(tmp_path / path.name).stubs) == _solution_functions(path), path.name
        assert module_status(path).stubs == ()


def test_status_reports_syntax_error(tmp_path):
    (tmp_path / "moe.py").write_text("def softmax(:\n", encoding="utf-8")
    assert "syntax error on line 1" in module_status(tmp_path / "moe.py").problem


def _report(check_id: str, status: str) -> dict:
    return {"checks": [{"id": check_id, "status": status, "score": 0.0, "max_score": 4.0, "message": "wrong"}]}


def test_hints_unlock_one_per_failure(tmp_path):
    rubric = load_rubric()
    entry = next(e for e in rubric.checks if e.id == "schedules.one_f_one_b")
    first, second = entry.hints[:2]

    code = tmp_path / "schedules.py"
    code.write_text("# first try\n", encoding="utf-8")
    assert after_grade(tmp_path, _report(entry.id, "not_implemented"), rubric) == ""
    text = after_grade(tmp_path, _report(entry.id, "failed"), rubric)
    assert first in text
    assert second not in text
    # Grading unchanged code again is no new attempt.
    text = after_grade(tmp_path, _report(entry.id, "failed"), rubric)
    assert second not in text
    code.write_text("# second try\n", encoding="utf-8")
    text = after_grade(tmp_path, _report(entry.id, "failed"), rubric)
    assert first in text
    assert second in text
    attempts = json.loads((tmp_path / ".pplab" / "attempts.json").read_text(encoding="utf-8"))
    assert attempts["failures"] == {entry.id: 2}


def test_history_unwritable_is_harmless(tmp_path):
    (tmp_path / ".pplab").write_text("not a folder", encoding="utf-8")
    rubric = load_rubric()
    text = after_grade(tmp_path, _report("schedules.gpipe", "failed"), rubric)
    first_hint = next(e for e in rubric.checks if e.id == "schedules.gpipe").hints[0]
    assert first_hint in text


def test_status_names_next_check(tmp_path):
    rubric = load_rubric()
    for name, text in expected_stubs(REPO_ROOT / "reference").items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    first, second = rubric.checks[0], rubric.checks[1]
    after_grade(tmp_path, {"checks": [
        {"id": first.id, "status": "passed", "score": first.points, "max_score": first.points, "message": ""},
        {"id": second.id, "status": "failed", "score": 0, "max_score": second.points, "message": "x"},
    ]}, rubric)
    text = status_text(tmp_path, rubric)
    assert f"Next: {second.id}" in text
    assert "schedules.py" in text
    assert "still stubs" in text
    assert "pipeline_launch.py  given code, nothing to implement" in text


def test_given_modules_match_reference():
    # The checks' modules whose reference copy has no solution region are
    # exactly the modules pplab status calls given code.
    from grader import checks  # noqa: F401  (registers every check)
    from grader.checking import REGISTRY
    from grader.status import GIVEN_MODULES
    from grader.stubs import BEGIN

    used = {module for check in REGISTRY.values() for module in check.modules}
    without_solutions = {module for module in used
                         if BEGIN not in (REPO_ROOT / "reference" / f"{module}.py").read_text(encoding="utf-8")}
    assert without_solutions == GIVEN_MODULES


def test_release_hints_after_repeated_failure(release, tmp_path):
    folder = materialize(load_samples()["warmup_p_minus_rank"], tmp_path / "sample")
    copy = _copy_release_with(release, tmp_path / "release", folder)
    hints = next(e for e in load_rubric().checks if e.id == "schedules.one_f_one_b").hints
    outputs = []
    for attempt in range(2):
        schedules = copy / "exercises" / "schedules.py"
        schedules.write_text(schedules.read_text() + f"\n# attempt {attempt}\n")
        done = subprocess.run([sys.executable, "-c", RUNNER, str(copy), "grade", "--check", "schedules.one_f_one_b"],
                              cwd=copy, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    assert hints[0] in outputs[0]
    assert hints[1] not in outputs[0]
    assert hints[1] in outputs[1]
    status = subprocess.run([sys.executable, "-c", RUNNER, str(copy), "status"], cwd=copy,
                            capture_output=True, text=True, timeout=300)
    assert status.returncode == 0, status.stderr
    assert "FAIL  schedules.one_f_one_b" in status.stdout
    assert "Next: schedules.gpipe" in status.stdout


def test_gpipe_relabelled_backward_accepted():
    from grader.golden_replay import compare
    from grader.sandbox import Record

    def action(kind, microbatch):
        return Record("Action", {"kind": kind, "microbatch": microbatch, "chunk": 0})

    def gpipe(backward_orders):
        return [[action("F", m) for m in range(4)] + [action("B", m) for m in order] for order in backward_orders]

    reference = gpipe([[0, 1, 2, 3]] * 3)
    assert compare(reference, gpipe([[3, 2, 1, 0]] * 3)) is None
    # Ranks that disagree, or a microbatch run twice, are still wrong.
    assert compare(reference, gpipe([[0, 1, 2, 3], [3, 2, 1, 0], [0, 1, 2, 3]])) is not None
    assert compare(reference, gpipe([[0, 0, 2, 3]] * 3)) is not None
    # 1F1B-like orders (a backward before the last forward) get no such freedom.
    interleaved = [[action("F", 0), action("B", 0), action("F", 1), action("B", 1)]] * 2
    swapped = [[action("F", 1), action("B", 1), action("F", 0), action("B", 0)]] * 2
    assert compare(interleaved, swapped) is not None


def test_release_replay_rerun_line(release, tmp_path):
    import re

    folder = materialize(load_samples()["warmup_p_minus_rank"], tmp_path / "sample")
    copy = _copy_release_with(release, tmp_path / "release", folder)
    done = subprocess.run([sys.executable, "-c", RUNNER, str(copy), "grade", "--replay", "schedules.one_f_one_b",
                           "--no-history"], cwd=copy, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    failing = re.search(r"FAIL .*\n\s+(one_f_one_b\([^)]*\)):", done.stdout).group(1)
    assert f"print(schedules.{failing})" in done.stdout
