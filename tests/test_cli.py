"""The pplab command line, run as a user would run it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pplab(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "grader.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def without_timing(report: dict) -> dict:
    report = dict(report, duration_s=None)
    report["checks"] = [dict(c, duration_s=None) for c in report["checks"]]
    return report


def test_grade_json_is_deterministic():
    runs = [pplab("grade", "datasets/submissions/correct_alt", "--format", "json") for _ in range(3)]
    for run in runs:
        assert run.returncode == 0, run.stderr
    reports = [without_timing(json.loads(run.stdout)) for run in runs]
    assert reports[0] == reports[1] == reports[2]
    assert reports[0]["seed"] == "derandomized"
    assert reports[0]["score"] == reports[0]["max_score"]


def test_grade_buggy_json_messages_are_deterministic(sample_dirs):
    folder = str(sample_dirs["warmup_p_minus_rank"])
    first, second = (json.loads(pplab("grade", folder, "--format", "json").stdout) for _ in range(2))
    assert without_timing(first) == without_timing(second)
    failed = [c for c in first["checks"] if c["status"] != "passed"]
    assert [c["id"] for c in failed] == ["schedules.one_f_one_b"]
    assert "for P=" in failed[0]["message"]


def copy_of(folder: str, tmp_path: Path) -> str:
    """Copy the repository folder's modules to ``tmp_path``, so grading history stays out of the repository."""
    target = tmp_path / folder
    target.mkdir()
    for module in (ROOT / folder).glob("*.py"):
        shutil.copyfile(module, target / module.name)
    return str(target)


def test_grade_stubs_scores_zero_with_exit_zero(tmp_path):
    run = pplab("grade", copy_of("exercises", tmp_path))
    assert run.returncode == 0, run.stderr
    assert "Total: 0/" in run.stdout
    assert run.stdout.count("not implemented yet") == run.stdout.count("  TODO  ") >= 10


def test_fail_under_sets_exit_status(tmp_path):
    stubs, reference = copy_of("exercises", tmp_path), copy_of("reference", tmp_path)
    assert pplab("grade", stubs, "--check", "exercise_1.gpipe", "--fail-under", "50").returncode == 1
    assert pplab("grade", reference, "--check", "exercise_1.gpipe", "--fail-under", "50").returncode == 0


def test_output_file_holds_json(tmp_path):
    out = tmp_path / "report.json"
    run = pplab("grade", "reference", "--check", "exercise_1.gpipe", "--output", str(out))
    assert run.returncode == 0
    assert json.loads(out.read_text())["score"] == 2


@pytest.mark.parametrize("args, text", [
    (["grade", "/no/such/folder"], "does not exist"),
    (["grade", "pyproject.toml"], "is not a folder"),
    (["grade", "reference", "--check", "no.such"], "unknown check"),
    (["grade", "reference", "--timeout", "0"], "--timeout"),
    (["viz", "--stages", "0"], "stages"),
    (["viz", "--impl", "/no/such/folder"], "--impl"),
    (["plan", "--model", "llama-2-70b", "--gpu", "h100-80gb", "--gpus", "6", "--gpus-per-node", "8"], "6"),
    (["plan", "--model", "no-such-model", "--gpu", "h100-80gb", "--gpus", "8", "--gpus-per-node", "8"], "no-such-model"),
])
def test_bad_input_gives_one_line_and_status_two(args, text):
    run = pplab(*args)
    assert run.returncode == 2, run.stdout + run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, run.stderr
    assert text in lines[0]
    assert "Traceback" not in run.stderr


def test_submission_missing_module(tmp_path):
    folder = tmp_path / "sub"
    shutil.copytree(ROOT / "exercises", folder)
    (folder / "simulator.py").unlink()
    run = pplab("grade", str(folder))
    assert run.returncode == 2
    assert "missing simulator.py" in run.stderr


def test_viz_on_reference_and_submission(tmp_path):
    png = tmp_path / "chart.png"
    run = pplab("viz", "--schedule", "1f1b", "--stages", "4", "--microbatches", "8", "--png", str(png))
    assert run.returncode == 0, run.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "rank 0" in run.stdout.lower() or "r0" in run.stdout.lower()
    stubs = pplab("viz", "--impl", "exercises", "--schedule", "1f1b")
    assert "not implemented" in (stubs.stdout + stubs.stderr)


def test_stubs_check_reports_up_to_date():
    run = pplab("stubs", "--check")
    assert run.returncode == 0, run.stdout


def test_plan_recommends_for_exercise_3():
    run = pplab("plan", "--model", "llama-2-70b", "--gpu", "h100-80gb", "--gpus", "64", "--gpus-per-node", "8")
    assert run.returncode == 0, run.stderr
    assert "Recommended:" in run.stdout
    assert "optimizer states" in run.stdout


def test_plan_json_is_machine_readable():
    run = pplab("plan", "--model", "mixtral-8x7b", "--gpu", "h100-80gb", "--gpus", "16",
                "--gpus-per-node", "8", "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)


def test_run_reports_loss_and_bubbles():
    run = pplab("run", "--schedule", "1f1b", "--stages", "2", "--microbatches", "4", "--layers", "2",
                "--d-model", "16", "--seq-len", "8")
    assert run.returncode == 0, run.stderr
    assert "loss" in run.stdout.lower()
    assert "bubble" in run.stdout.lower()


def test_run_bad_input_is_one_line():
    run = pplab("run", "--stages", "0")
    assert run.returncode == 2
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("fmt, check_text", [("gradescope", '"tests"'), ("junit", "<testsuites")])
def test_grade_ci_formats(fmt, check_text):
    run = pplab("grade", "reference", "--check", "exercise_1.gpipe", "--format", fmt)
    assert run.returncode == 0, run.stderr
    assert check_text in run.stdout


def test_replay_shows_counterexample(sample_dirs):
    import re

    folder = str(sample_dirs["warmup_p_minus_rank"])
    run = pplab("grade", folder, "--replay", "schedules.one_f_one_b")
    assert run.returncode == 0, run.stderr
    assert "Counterexample found by hypothesis" in run.stdout
    # The shrunk example in the message, the hypothesis note and the rerun line agree.
    stages, microbatches = re.search(r"for P=(\d+), M=(\d+)", run.stdout).groups()
    assert f"num_stages={stages}," in run.stdout
    assert f"num_microbatches={microbatches}," in run.stdout
    assert f"print(schedules.one_f_one_b({stages}, {microbatches}))" in run.stdout
    assert "Last calls into your code" in run.stdout


def test_replay_shows_traceback(tmp_path):
    folder = tmp_path / "submission"
    shutil.copytree(ROOT / "reference", folder)
    source = (folder / "schedules.py").read_text()
    marker = "def gpipe(num_stages: int, num_microbatches: int) -> Schedule:\n"
    assert marker in source
    (folder / "schedules.py").write_text(source.replace(
        marker, marker + "    if num_microbatches > 3:\n        raise IndexError('microbatch out of range')\n", 1))
    run = pplab("grade", str(folder), "--replay", "schedules.gpipe")
    assert run.returncode == 0, run.stderr
    assert "Your code raised IndexError: microbatch out of range" in run.stdout
    assert "schedules.py" in run.stdout
    assert "gpipe(" in run.stdout
    assert "Counterexample" not in pplab("grade", str(ROOT / "reference"), "--replay", "schedules.gpipe").stdout


def test_list_as_json_matches_the_rubric():
    from grader.rubric import load_rubric

    run = pplab("grade", "--list", "--format", "json")
    assert run.returncode == 0, run.stderr
    listed = json.loads(run.stdout)
    rubric = load_rubric()
    assert [c["id"] for c in listed] == [e.id for e in rubric.checks]
    assert sum(c["points"] for c in listed) == sum(e.points for e in rubric.checks)


def test_secret_examples_defeat_lookup_table(tmp_path):
    # A "submission" that only contains the results for the public (golden)
    # examples of schedules.gpipe: derandomised grading alone passes it, the
    # instructor's secret examples do not.
    golden = json.loads((ROOT / "datasets" / "golden" / "visible.json").read_text())
    table = {}
    for step in golden["checks"]["schedules.gpipe"]["interactions"]:
        if step.get("op") == "call":
            table[tuple(step["args"])] = [[(f[0][1], f[1][1], f[2][1]) for f in
                                           (action["fields"] for action in rank)] for rank in step["returns"]]
    folder = tmp_path / "table"
    shutil.copytree(ROOT / "exercises", folder)
    source = (folder / "schedules.py").read_text()
    (folder / "schedules.py").write_text(source + f"\n\n_TABLE = {table!r}\n\n\ndef gpipe(num_stages, num_microbatches):\n"
                                         "    rows = _TABLE.get((num_stages, num_microbatches), [])\n"
                                         "    return [[Action(*a) for a in rank] for rank in rows]\n")
    public = pplab("grade", str(folder), "--check", "schedules.gpipe", "--format", "json", "--no-history")
    assert public.returncode == 0, public.stderr
    assert json.loads(public.stdout)["score"] == 2

    env = dict(os.environ, PPLAB_SECRET_SEED="instructor secret for tests")
    secret = subprocess.run([sys.executable, "-m", "grader.cli", "grade", str(folder), "--check", "schedules.gpipe",
                             "--format", "json", "--no-history"], cwd=ROOT, capture_output=True, text=True,
                            timeout=600, env=env)
    assert secret.returncode == 0, secret.stderr
    report = json.loads(secret.stdout)
    assert report["score"] == 0
    assert report["secret_examples"] and "instructor" not in report["secret_examples"]

    # The reference still gets full marks with the secret examples.
    reference = subprocess.run([sys.executable, "-m", "grader.cli", "grade", "reference", "--check", "schedules.gpipe",
                                "--format", "json", "--no-history"], cwd=ROOT, capture_output=True, text=True,
                               timeout=600, env=env)
    assert json.loads(reference.stdout)["score"] == 2


def test_run_on_stubs_one_line():
    run = pplab("run", "--schedule", "1f1b", "--stages", "2", "--microbatches", "2", "--impl", "exercises")
    assert run.returncode == 1
    assert "not implemented yet" in run.stderr
    assert "pipeline_runtime.py" in run.stderr
    assert "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_single_check_omits_hidden_list():
    from grader.rubric import load_rubric
    from grader.status import after_grade

    rubric = load_rubric()
    report = {"checks": []}
    if rubric.official_only:
        assert "Hidden checks" in after_grade(ROOT / "exercises", report, rubric, save=False)
    assert "Hidden checks" not in after_grade(ROOT / "exercises", report, rubric, save=False, list_hidden=False)
