"""Gradescope results.json against its schema, and the autograder bundle run as Gradescope runs it.

Grading uses a three-check rubric (about five seconds a submission) instead
of the full one (about half a minute).
"""

from __future__ import annotations

import copy
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from grader.bundle import build_bundle
from grader.schemas import SchemaError, load_schema, validate, validate_gradescope_results

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

REPO_ROOT = Path(__file__).resolve().parents[1]
SMALL_RUBRIC = """\
[exercises.pipeline]
title = "Pipeline schedules"

[exercises.exercise_1]
title = "Exercise 1"

[[checks]]
id = "schedules.gpipe"
exercise = "pipeline"
title = "GPipe schedule"
points = 2
visibility = "visible"

[[checks]]
id = "bubbles.bubble_fraction"
exercise = "pipeline"
title = "Bubble fraction closed forms"
points = 3
visibility = "hidden"

[[checks]]
id = "exercise_1.gpipe"
exercise = "exercise_1"
title = "Naive (GPipe) bubble fraction"
points = 1.5
visibility = "visible"
"""
VISIBILITIES = {"hidden", "after_due_date", "after_published", "visible"}


@pytest.fixture(scope="module")
def small_rubric(tmp_path_factory):
    path = tmp_path_factory.mktemp("rubric") / "rubric.toml"
    path.write_text(SMALL_RUBRIC)
    return path


@pytest.fixture(scope="module")
def rubric_points(small_rubric):
    """Points per check id, read from the rubric file itself."""
    return {c["id"]: float(c["points"]) for c in tomllib.loads(small_rubric.read_text())["checks"]}


def pplab(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "grader.cli", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300, **kwargs)


@pytest.fixture(scope="module")
def gradescope_document(small_rubric, tmp_path_factory):
    """results.json of the reference, through `pplab grade --format gradescope --output`."""
    out = tmp_path_factory.mktemp("gs") / "results.json"
    run = pplab("grade", "reference", "--rubric", str(small_rubric), "--format", "gradescope",
                "--output", str(out))
    assert run.returncode == 0, run.stderr
    printed = json.loads(run.stdout)
    saved = json.loads(out.read_text())
    assert printed["tests"] == saved["tests"]
    return saved


# --- the schema and the validator -------------------------------------------------

def test_schema_is_valid_draft07():
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft7Validator.check_schema(load_schema("gradescope_results"))


def test_grade_output_matches_schema(gradescope_document):
    assert validate_gradescope_results(gradescope_document) == []


def test_grade_output_matches_schema_per_jsonschema(gradescope_document):
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(gradescope_document, load_schema("gradescope_results"))


def test_grade_output_scores(gradescope_document, rubric_points):
    tests = {t["name"].split(":")[0]: t for t in gradescope_document["tests"]}
    assert set(tests) == set(rubric_points)
    for check_id, points in rubric_points.items():
        assert tests[check_id]["max_score"] == points
        assert tests[check_id]["score"] == points
        assert tests[check_id]["status"] == "passed"
    assert gradescope_document["score"] == sum(rubric_points.values())


def test_grade_output_visibility(gradescope_document):
    tests = {t["name"].split(":")[0]: t for t in gradescope_document["tests"]}
    assert tests["schedules.gpipe"]["visibility"] == "visible"
    # Hidden checks carry points, so they wait for publication rather than never showing.
    assert tests["bubbles.bubble_fraction"]["visibility"] == "after_published"
    assert gradescope_document["stdout_visibility"] == "hidden"
    assert gradescope_document["output_format"] == "text"


def test_top_level_output_hides_total(gradescope_document, rubric_points):
    # With a hidden check, students must not see the total before publication.
    total = sum(rubric_points.values())
    assert f"{total:g}/" not in gradescope_document["output"]
    visible = rubric_points["schedules.gpipe"] + rubric_points["exercise_1.gpipe"]
    assert f"{visible:g}/{visible:g}" in gradescope_document["output"]


def test_failed_check_output_in_test(small_rubric):
    run = pplab("grade", "exercises", "--rubric", str(small_rubric), "--format", "gradescope")
    assert run.returncode == 0, run.stderr
    document = json.loads(run.stdout)
    assert validate_gradescope_results(document) == []
    assert document["score"] == 0
    for test in document["tests"]:
        assert test["status"] == "failed"
        assert "not implemented" in test["output"]


@pytest.mark.parametrize("breakage, expected", [
    (lambda d: (d.pop("score"), d["tests"][0].pop("score")), "score"),
    (lambda d: (d.pop("score"), d.update(tests=[])), "score"),
    (lambda d: d["tests"][1].update(visibility="after_grading"), "after_grading"),
    (lambda d: d.update(stdout_visibility="shown"), "shown"),
    (lambda d: d["tests"][0].update(status="partial"), "partial"),
    (lambda d: d.update(output_format="markdown"), "markdown"),
    (lambda d: d.update(score="7"), "expected number"),
    (lambda d: d["tests"][0].update(number=1), "expected string"),
    (lambda d: d["tests"][0].update(visiblity="visible"), "visiblity"),
    (lambda d: d.update(max_points=10), "max_points"),
])
def test_schema_rejects_broken_document(gradescope_document, breakage, expected):
    document = copy.deepcopy(gradescope_document)
    breakage(document)
    errors = validate_gradescope_results(document)
    assert errors
    assert any(expected in error for error in errors), errors


def test_schema_rejects_same_as_jsonschema(gradescope_document):
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft7Validator(load_schema("gradescope_results"))
    variants = [copy.deepcopy(gradescope_document) for _ in range(4)]
    variants[0].pop("score")
    variants[1]["tests"][0]["visibility"] = "later"
    variants[2]["tests"] = [{"name": "Style check", "status": "failed"}]
    variants[3]["leaderboard"] = [{"name": "Time", "value": 15.1, "order": "asc"}]
    for document in variants:
        ours = validate_gradescope_results(document) == []
        theirs = validator.is_valid(document)
        assert ours == theirs, document


def test_validator_rejects_unsupported_keyword():
    with pytest.raises(SchemaError):
        validate({}, {"type": "object", "patternProperties": {}})


def test_score_only_in_tests_is_valid():
    # The specification lets per-test scores stand in for the top-level score.
    document = {"tests": [{"name": "a", "score": 1.0, "max_score": 1.0}]}
    assert validate_gradescope_results(document) == []


# --- the autograder bundle -----------------------------------------------------------

@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    path = tmp_path_factory.mktemp("bundle") / "autograder.zip"
    build_bundle(path)
    return path


def test_bundle_layout(bundle):
    with zipfile.ZipFile(bundle) as archive:
        infos = {info.filename: info for info in archive.infolist()}
    for name in ("setup.sh", "run_autograder"):
        assert name in infos
        assert (infos[name].external_attr >> 16) & stat.S_IXUSR, name
    for name in ("pyproject.toml", "grader/cli.py", "grader/rubric.toml", "reference/schedules.py",
                 "datasets/models/llama-2-70b.toml", "grader/schemas/gradescope_results.schema.json"):
        assert name in infos, name
    assert not any(name.startswith("datasets/submissions") for name in infos)
    assert not any("__pycache__" in name for name in infos)


def test_bundle_is_reproducible(bundle, tmp_path):
    again = tmp_path / "again.zip"
    build_bundle(again)
    assert again.read_bytes() == bundle.read_bytes()


def test_setup_script_installs_cpu_torch(bundle):
    with zipfile.ZipFile(bundle) as archive:
        setup = archive.read("setup.sh").decode()
    assert setup.startswith("#!/usr/bin/env bash")
    assert "--index-url https://download.pytorch.org/whl/cpu" in setup
    assert 'pip install -e "$source_dir"' in setup


def run_autograder(bundle: Path, root: Path, submission_files: dict[str, Path], rubric: Path | None,
                   **environment) -> dict:
    """Lay out ``root`` as Gradescope does, run run_autograder there, return results.json."""
    (root / "source").mkdir(parents=True)
    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(root / "source")
    for script in ("run_autograder", "setup.sh"):
        path = root / "source" / script
        path.chmod(path.stat().st_mode | stat.S_IXUSR)  # zipfile does not restore modes
    for name, source in submission_files.items():
        target = root / "submission" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    env = dict(os.environ, PPLAB_AUTOGRADER_ROOT=str(root), PPLAB_PYTHON=sys.executable)
    env.pop("PYTHONPATH", None)
    if rubric is not None:
        env["PPLAB_RUBRIC"] = str(rubric)
    env.update(environment)
    run = subprocess.run([str(root / "source" / "run_autograder")], cwd=root, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    results = json.loads((root / "results" / "results.json").read_text())
    assert validate_gradescope_results(results) == [], results
    return results


def module_files(folder: Path, under: str = "") -> dict[str, Path]:
    return {f"{under}{path.name}": path for path in sorted(folder.glob("*.py"))}


def test_autograder_grades_reference(bundle, tmp_path, small_rubric, rubric_points):
    results = run_autograder(bundle, tmp_path, module_files(REPO_ROOT / "reference"), small_rubric)
    assert results["score"] == sum(rubric_points.values())
    assert {t["name"].split(":")[0] for t in results["tests"]} == set(rubric_points)
    assert all(t["status"] == "passed" for t in results["tests"])


def test_autograder_grades_blank_stubs(bundle, tmp_path, small_rubric, rubric_points):
    results = run_autograder(bundle, tmp_path, module_files(REPO_ROOT / "exercises"), small_rubric)
    assert results["score"] == 0
    assert sorted(t["max_score"] for t in results["tests"]) == sorted(rubric_points.values())


def test_autograder_finds_exercises_folder(bundle, tmp_path, small_rubric, rubric_points):
    # A GitHub submission is a whole clone, with the learner's files in exercises/.
    files = module_files(REPO_ROOT / "reference", under="exercises/")
    files["README.md"] = REPO_ROOT / "README.md"
    results = run_autograder(bundle, tmp_path, files, small_rubric)
    assert results["score"] == sum(rubric_points.values())


def test_autograder_missing_module(bundle, tmp_path, small_rubric):
    files = module_files(REPO_ROOT / "reference")
    del files["bubbles.py"]
    results = run_autograder(bundle, tmp_path, files, small_rubric)
    assert results["score"] == 0
    assert results["tests"] == []
    assert "bubbles.py" in results["output"]
    assert "schedules.py" not in results["output"]


def test_autograder_empty_submission(bundle, tmp_path, small_rubric):
    (tmp_path / "submission").mkdir(parents=True)
    results = run_autograder(bundle, tmp_path, {}, small_rubric)
    assert results["score"] == 0
    assert "missing" in results["output"]


def test_autograder_timeout(bundle, tmp_path, small_rubric):
    results = run_autograder(bundle, tmp_path, module_files(REPO_ROOT / "reference"), small_rubric,
                             PPLAB_GRADE_TIMEOUT="0.2")
    assert results["score"] == 0
    assert "longer than 0.2 s" in results["output"]


def test_autograder_python_cannot_start(bundle, tmp_path, small_rubric):
    # A failed setup.sh leaves no working Python; the shell script still writes results.json.
    results = run_autograder(bundle, tmp_path, module_files(REPO_ROOT / "reference"), small_rubric,
                             PPLAB_PYTHON="/bin/false")
    assert results["score"] == 0
    assert "could not start pplab" in results["output"]


def test_autograder_grader_crash(bundle, tmp_path):
    # A rubric naming a check that does not exist makes the grading step fail.
    rubric = tmp_path / "broken.toml"
    rubric.write_text(SMALL_RUBRIC.replace('id = "schedules.gpipe"', 'id = "schedules.no_such_check"'))
    results = run_autograder(bundle, tmp_path / "root", module_files(REPO_ROOT / "reference"), rubric)
    assert results["score"] == 0
    assert results["tests"] == []
    assert "score 0" in results["output"]


@pytest.mark.parametrize("make_args, text", [
    (lambda tmp: [str(tmp / "no" / "ag.zip")], "does not exist"),
    (lambda tmp: [str(tmp)], "is a folder"),
    (lambda tmp: [str(tmp / "ag.tar")], ".zip"),
    (lambda tmp: [str(tmp / "ag.zip"), "--rubric", str(tmp / "none.toml")], "none.toml"),
])
def test_bundle_bad_input_exits_two(tmp_path, capsys, make_args, text):
    from grader.cli import main

    status = main(["gradescope-bundle", *make_args(tmp_path)])
    captured = capsys.readouterr()
    assert status == 2
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert text in lines[0]
    assert not (tmp_path / "ag.zip").exists()


# --- the GitHub Classroom example ------------------------------------------------------

CLASSROOM = REPO_ROOT / "docs" / "examples" / "classroom.yml"


def test_classroom_example_shown_in_doc():
    assert CLASSROOM.read_text() in (REPO_ROOT / "docs" / "ci.md").read_text()


def test_classroom_example_key_lines():
    lines = [line.strip() for line in CLASSROOM.read_text().splitlines()]
    assert "name: Autograding Tests" in lines
    assert "run-autograding-tests:" in lines
    assert "uses: classroom-resources/autograding-command-grader@v1" in lines
    assert "uses: classroom-resources/autograding-grading-reporter@v1" in lines
    commands = [line for line in lines if line.startswith("command: ")]
    assert len(commands) == 1
    assert "pplab grade" in commands[0]
    assert "--format junit" in commands[0]
    assert "--fail-under" in commands[0]


def test_classroom_example_parses():
    yaml = pytest.importorskip("yaml")
    workflow = yaml.safe_load(CLASSROOM.read_text())
    assert workflow["name"] == "Autograding Tests"
    assert "on" in workflow  # quoted, so YAML 1.1 does not read it as true
    assert list(workflow["jobs"]) == ["run-autograding-tests"]
    steps = workflow["jobs"]["run-autograding-tests"]["steps"]
    graders = [s for s in steps if s.get("uses", "").startswith("classroom-resources/autograding-command-grader@")]
    assert len(graders) == 1
    step = graders[0]
    reporter = next(s for s in steps
                    if s.get("uses", "").startswith("classroom-resources/autograding-grading-reporter@"))
    assert reporter["with"]["runners"] == step["id"]
    assert reporter["env"][f"{step['id'].upper()}_RESULTS"] == "${{steps.%s.outputs.result}}" % step["id"]
    assert "download.pytorch.org/whl/cpu" in step["with"]["setup-command"]


def test_classroom_command_is_valid_pplab():
    from grader.cli import build_parser

    line = next(line.strip() for line in CLASSROOM.read_text().splitlines() if line.strip().startswith("command: "))
    command = shlex.split(line.removeprefix("command: "))
    assert command[:2] == ["pplab", "grade"]
    args = build_parser().parse_args(command[1:])
    assert args.format == "junit"
    assert args.fail_under == 60
    assert args.output == "pplab-junit.xml"


def test_bundle_rejects_unknown_check(tmp_path, capsys):
    from grader.cli import main

    rubric = tmp_path / "rubric.toml"
    rubric.write_text(SMALL_RUBRIC.replace('id = "schedules.gpipe"', 'id = "schedules.no_such_check"'))
    assert main(["gradescope-bundle", str(tmp_path / "ag.zip"), "--rubric", str(rubric)]) == 2
    assert "schedules.no_such_check" in capsys.readouterr().err
    assert not (tmp_path / "ag.zip").exists()


# --- JUnit XML ---------------------------------------------------------------------------

def test_junit_counts_and_control_characters():
    from xml.etree import ElementTree

    from grader.report import render_junit
    from grader.runner import CheckResult, GradeReport

    results = [
        CheckResult("a.ok", "ex", "A", "passed", 1.0, 1.0, "visible"),
        CheckResult("a.bad", "ex", "B", "failed", 0.0, 2.0, "visible", message="got 'x\x00y\x1b'"),
        CheckResult("a.todo", "ex", "C", "not_implemented", 0.0, 1.0, "hidden", message="not implemented"),
        CheckResult("a.crash", "ex", "D", "error", 0.0, 1.0, "visible", message="grader failed"),
    ]
    report = GradeReport("sub", results, {"ex": "Exercise"}, duration_s=1.5)
    root = ElementTree.fromstring(render_junit(report))  # raises on characters XML cannot hold
    assert root.get("tests") == "4"
    assert root.get("failures") == "2"
    assert root.get("errors") == "1"
    assert len(root.findall(".//testcase/failure")) == 2
    assert len(root.findall(".//testcase/error")) == 1
    bad = root.find(".//testcase[@name='a.bad']/failure")
    assert bad.get("message").startswith("0/2 points: ")
    assert "\ufffd" in bad.text


def test_bundle_carries_the_secret_to_grading(tmp_path):
    import zipfile

    from grader.bundle import SECRET_FILE, build_bundle, grading_environment

    secret = tmp_path / "secret.txt"
    secret.write_text("staff only\n", encoding="utf-8")
    bundle = tmp_path / "autograder.zip"
    names = build_bundle(bundle, secret=secret)
    assert SECRET_FILE in names
    source = tmp_path / "source"
    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(source)
    assert grading_environment(source)["PPLAB_SECRET_SEED"] == "staff only"
    (source / SECRET_FILE).unlink()
    assert "PPLAB_SECRET_SEED" not in grading_environment(source) or os.environ.get("PPLAB_SECRET_SEED")
