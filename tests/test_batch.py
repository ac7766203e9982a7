"""`pplab grade-all`: one CSV row per submission, isolation, timeouts, resuming after an interruption.

Grading uses a two-check rubric (a few seconds a submission) instead of the
full one (about half a minute).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grader import batch
from grader.batch import BatchOptions, Progress, csv_row, grade_all, read_state
from grader.cli import build_parser, main

REPO_ROOT = Path(__file__).resolve().parents[1]
RUBRIC = """\
[exercises.pipeline]
title = "Pipeline schedules"

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
points = 3.5
visibility = "hidden"
"""
CHECK_IDS = ["schedules.gpipe", "bubbles.bubble_fraction"]
POINTS = {"schedules.gpipe": 2.0, "bubbles.bubble_fraction": 3.5}
COLUMNS = ["submission", "score", "max_score", "percent", "status", *CHECK_IDS, "duration_s", "message"]


def copy_modules(source: Path, target: Path, skip: tuple[str, ...] = ()) -> Path:
    target.mkdir(parents=True)
    for path in source.glob("*.py"):
        if path.name not in skip:
            shutil.copyfile(path, target / path.name)
    return target


@pytest.fixture(scope="module")
def rubric(tmp_path_factory):
    path = tmp_path_factory.mktemp("rubric") / "rubric.toml"
    path.write_text(RUBRIC)
    return path


@pytest.fixture(scope="module")
def class_dir(tmp_path_factory):
    """Three submissions: complete (the reference), blank stubs, and one lacking bubbles.py."""
    root = tmp_path_factory.mktemp("class")
    copy_modules(REPO_ROOT / "reference", root / "carol", skip=("bubbles.py",))
    copy_modules(REPO_ROOT / "exercises", root / "bob")
    copy_modules(REPO_ROOT / "reference", root / "alice")
    (root / ".hidden").mkdir()
    (root / "__pycache__").mkdir()
    (root / "notes.txt").write_text("not a submission")
    return root


@pytest.fixture(scope="module")
def slow_class_dir(class_dir, tmp_path_factory):
    """The three submissions of ``class_dir`` and "dave", a complete one that takes seconds to import.

    Dave, graded last, keeps a batch running long enough to interrupt it.
    """
    root = tmp_path_factory.mktemp("slow_class")
    for name in ("alice", "bob", "carol"):
        copy_modules(class_dir / name, root / name)
    dave = copy_modules(REPO_ROOT / "reference", root / "dave")
    with open(dave / "schedules.py", "a") as module:
        module.write("\n\nimport time\ntime.sleep(2.0)  # a slow import, well within the call timeout\n")
    return root


def pplab(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "grader.cli", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600, **kwargs)


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def grading_processes(marker: str) -> list[int]:
    """Return the ids of running `grader.batch` processes whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "grader.batch" in command and marker in command:
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def graded_class(class_dir, rubric, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    run = pplab("grade-all", str(class_dir), "--csv", str(out / "grades.csv"), "--jobs", "2",
                "--rubric", str(rubric), "--json-dir", str(out / "json"))
    assert run.returncode == 0, run.stderr
    return out, run


def test_csv_header_and_order(graded_class):
    out, _ = graded_class
    with open(out / "grades.csv", newline="") as handle:
        header = next(csv.reader(handle))
    assert header == COLUMNS
    assert [row["submission"] for row in read_rows(out / "grades.csv")] == ["alice", "bob", "carol"]


def test_csv_scores(graded_class):
    out, _ = graded_class
    rows = {row["submission"]: row for row in read_rows(out / "grades.csv")}
    total = sum(POINTS.values())
    assert rows["alice"]["status"] == "ok"
    assert float(rows["alice"]["score"]) == total
    assert float(rows["alice"]["max_score"]) == total
    assert float(rows["alice"]["percent"]) == 100.0
    for check_id, points in POINTS.items():
        assert float(rows["alice"][check_id]) == points
        assert float(rows["bob"][check_id]) == 0.0
    assert rows["bob"]["status"] == "ok"
    assert float(rows["bob"]["score"]) == 0.0
    assert float(rows["bob"]["percent"]) == 0.0


def test_csv_invalid_submission(graded_class):
    out, _ = graded_class
    carol = {row["submission"]: row for row in read_rows(out / "grades.csv")}["carol"]
    assert carol["status"] == "invalid"
    assert float(carol["score"]) == 0.0
    assert carol["schedules.gpipe"] == ""
    assert "bubbles.py" in carol["message"]


def test_json_dir_and_state_cleanup(graded_class):
    out, _ = graded_class
    assert sorted(p.name for p in (out / "json").iterdir()) == ["alice.json", "bob.json"]
    report = json.loads((out / "json" / "alice.json").read_text())
    assert report["score"] == sum(POINTS.values())
    assert not (out / "grades.csv.partial.jsonl").exists()
    assert not (out / "grades.csv.tmp").exists()


def test_plain_progress_lines(graded_class):
    _, run = graded_class
    lines = [line for line in run.stderr.splitlines() if line.startswith("[")]
    assert len(lines) == 3
    assert lines[-1].startswith("[3/3]")
    assert all("elapsed" in line and "ETA" in line for line in lines)
    assert "\r" not in run.stderr
    assert "3 submissions (2 ok, 1 invalid)" in run.stdout


def test_resume_after_kill_and_ctrl_c(class_dir, slow_class_dir, rubric, graded_class, tmp_path):
    csv_path = tmp_path / "grades.csv"
    state = tmp_path / "grades.csv.partial.jsonl"
    command = [sys.executable, "-m", "grader.cli", "grade-all", str(slow_class_dir), "--csv", str(csv_path),
               "--jobs", "1", "--rubric", str(rubric)]

    def interrupt_after(records: int, signum: int) -> None:
        """Start the batch and send ``signum`` once ``records`` are saved and a submission is being graded."""
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            saved = len(state.read_text().splitlines()) if state.exists() else 0
            if saved >= records and grading_processes(str(slow_class_dir)):
                break
            time.sleep(0.1)
        assert process.poll() is None, "the batch ended before it could be interrupted"
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 130, stderr
        assert "rerun the same command" in stderr
        assert not csv_path.exists()
        assert grading_processes(str(slow_class_dir)) == []

    interrupt_after(1, signal.SIGTERM)  # `kill` while a later submission is graded
    interrupt_after(1, signal.SIGINT)   # Ctrl-C at once after resuming
    options = BatchOptions(rubric=rubric)
    recorded = len(read_state(state, batch.configuration_key(options, batch.selected_checks(options))))
    assert 1 <= recorded < 4

    run = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert f"resuming: {recorded} of 4" in run.stderr
    assert len([line for line in run.stderr.splitlines() if line.startswith("[")]) == 4 - recorded

    def comparable(path, root):
        """Rows without durations, with the class folder's path taken out of the messages."""
        return [{k: v.replace(str(root), "CLASS") for k, v in row.items() if k != "duration_s"}
                for row in read_rows(path)]

    out, _ = graded_class
    resumed = comparable(csv_path, slow_class_dir)
    assert resumed[:3] == comparable(out / "grades.csv", class_dir)
    assert resumed[3]["submission"] == "dave"
    assert float(resumed[3]["score"]) == sum(POINTS.values())
    assert not state.exists()


def test_jobs_end_when_batch_killed(tmp_path, rubric):
    # Erin's import takes 60 s; once the batch is gone, her grading process
    # must stop long before that instead of finishing the submission.
    subs = tmp_path / "subs"
    erin = copy_modules(REPO_ROOT / "reference", subs / "erin")
    with open(erin / "schedules.py", "a") as module:
        module.write("\n\nimport time\ntime.sleep(60.0)\n")
    copy_modules(REPO_ROOT / "reference", subs / "frank")
    command = [sys.executable, "-m", "grader.cli", "grade-all", str(subs), "--csv", str(tmp_path / "grades.csv"),
               "--jobs", "2", "--rubric", str(rubric), "--call-timeout", "120"]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(grading_processes(str(subs))) < 2:
        time.sleep(0.1)
    assert len(grading_processes(str(subs))) == 2, "the batch never started its grading processes"
    time.sleep(3.0)  # both are grading now
    process.kill()  # SIGKILL: the batch cannot clean up
    process.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and grading_processes(str(subs)):
        time.sleep(0.2)
    assert grading_processes(str(subs)) == []


def test_changed_submission_is_regraded(tmp_path, rubric):
    subs = tmp_path / "subs"
    copy_modules(REPO_ROOT / "reference", subs / "dana")
    csv_path = tmp_path / "grades.csv"
    options = BatchOptions(rubric=rubric, jobs=1)
    checks = batch.selected_checks(options)
    key = batch.configuration_key(options, checks)
    # A state line from before dana's files changed, and one cut short by a kill.
    stale = {"submission": "dana", "fingerprint": "0" * 64, "status": "ok", "score": 0.0,
             "max_score": 5.5, "checks": {}, "duration_s": 1.0, "message": "", "config": key}
    state = batch.default_state_path(csv_path)
    state.write_text(json.dumps(stale) + "\n" + '{"submission": "da')
    records = grade_all(subs, csv_path, options, progress_stream=None)
    assert [r["score"] for r in records] == [sum(POINTS.values())]


def test_timeout_row_and_no_leftover_processes(tmp_path, rubric):
    subs = tmp_path / "subs"
    copy_modules(REPO_ROOT / "reference", subs / "fine")
    slow = copy_modules(REPO_ROOT / "reference", subs / "slow")
    with open(slow / "schedules.py", "a") as module:
        module.write("\n\nwhile True:  # loops at import\n    pass\n")
    run = pplab("grade-all", str(subs), "--csv", str(tmp_path / "grades.csv"), "--jobs", "2",
                "--rubric", str(rubric), "--check", "schedules.gpipe", "--timeout", "20")
    assert run.returncode == 0, run.stderr
    rows = {row["submission"]: row for row in read_rows(tmp_path / "grades.csv")}
    assert list(read_rows(tmp_path / "grades.csv")[0]) == [
        "submission", "score", "max_score", "percent", "status", "schedules.gpipe", "duration_s", "message"]
    assert rows["slow"]["status"] == "timeout"
    assert rows["slow"]["score"] == ""
    assert "longer than 20 s" in rows["slow"]["message"]
    assert rows["fine"]["status"] == "ok"
    assert float(rows["fine"]["score"]) == POINTS["schedules.gpipe"]
    assert grading_processes(str(subs)) == []


def counting_python(tmp_path: Path, body: str = "") -> Path:
    """Return an interpreter wrapper that logs each grading process it starts to ``tmp_path/starts``.

    ``body`` runs in the grading process before it serves requests.
    """
    script = tmp_path / "serve.py"
    script.write_text("import sys\nfrom grader import batch\n" + body + "\nsys.exit(batch._serve())\n")
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\necho "$$" >> {tmp_path / "starts"}\nexec {sys.executable} {script}\n')
    wrapper.chmod(0o755)
    return wrapper


def starts(tmp_path: Path) -> int:
    return len((tmp_path / "starts").read_text().split())


CRASH_ON_CRASHME = """
import os
import grader.cli
real_main = grader.cli.main

def main(argv):
    if any("crashme" in argument for argument in argv):
        os.write(2, b"boom\\n")
        os._exit(3)
    return real_main(argv)

grader.cli.main = main
"""


def test_crashed_grader_gives_error_row(tmp_path, rubric, monkeypatch):
    subs = tmp_path / "subs"
    copy_modules(REPO_ROOT / "reference", subs / "crashme")
    copy_modules(REPO_ROOT / "reference", subs / "fine")
    monkeypatch.setattr(batch, "PYTHON", str(counting_python(tmp_path, CRASH_ON_CRASHME)))
    # One job: "crashme" kills it, and a new one grades "fine".
    records = grade_all(subs, tmp_path / "grades.csv", BatchOptions(rubric=rubric, checks=("schedules.gpipe",),
                                                                     jobs=1), progress_stream=None)
    by_name = {r["submission"]: r for r in records}
    assert by_name["crashme"]["status"] == "error"
    assert by_name["crashme"]["score"] is None
    assert "status 3" in by_name["crashme"]["message"]
    assert "boom" in by_name["crashme"]["message"]
    assert by_name["fine"]["status"] == "ok"
    assert by_name["fine"]["score"] == POINTS["schedules.gpipe"]
    assert starts(tmp_path) == 2
    row = read_rows(tmp_path / "grades.csv")[0]
    assert row["submission"] == "crashme"
    assert row["score"] == ""
    assert row["percent"] == ""


def test_one_grading_process_per_job(class_dir, rubric, graded_class, tmp_path, monkeypatch):
    monkeypatch.setattr(batch, "PYTHON", str(counting_python(tmp_path)))
    csv_path = tmp_path / "grades.csv"
    grade_all(class_dir, csv_path, BatchOptions(rubric=rubric, jobs=1), progress_stream=None)
    assert starts(tmp_path) == 1
    # Grades do not depend on which process graded what, or in which order.
    out, _ = graded_class
    assert [row["score"] for row in read_rows(csv_path)] == [row["score"] for row in read_rows(out / "grades.csv")]
    assert grading_processes(str(class_dir)) == []


def test_grading_process_replaced_after_its_quota(class_dir, rubric, tmp_path, monkeypatch):
    monkeypatch.setattr(batch, "PYTHON", str(counting_python(tmp_path)))
    monkeypatch.setattr(batch, "SUBMISSIONS_PER_JOB", 2)
    records = grade_all(class_dir, tmp_path / "grades.csv", BatchOptions(rubric=rubric, checks=("schedules.gpipe",),
                                                                          jobs=1), progress_stream=None)
    assert len(records) == 3
    assert starts(tmp_path) == 2


def test_read_state_skips_other_options(tmp_path):
    state = tmp_path / "state.jsonl"
    lines = [{"submission": "a", "config": "k1", "score": 1}, {"submission": "b", "config": "k2", "score": 2},
             {"submission": "a", "config": "k1", "score": 3}]
    state.write_text("".join(json.dumps(line) + "\n" for line in lines) + "{broken")
    records = read_state(state, "k1")
    assert list(records) == ["a"]
    assert records["a"]["score"] == 3


def test_csv_row_formats_numbers():
    record = {"submission": "x", "score": 2.5, "max_score": 4.0, "status": "ok",
              "checks": {"c1": 2.5}, "duration_s": 12.345, "message": ""}
    assert csv_row(record, ["c1", "c2"]) == ["x", "2.5", "4", "62.50", "ok", "2.5", "", "12.3", ""]


def test_terminal_progress_redraws():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    progress = Progress(total=4, already_done=1, stream=stream)
    progress.finished({"submission": "alice", "status": "ok", "score": 3.0, "max_score": 4.0,
                       "duration_s": 1.0})
    progress.close()
    text = stream.getvalue()
    assert "resuming: 1 of 4" in text
    assert "\r[############............] 2/4" in text
    assert "ETA" in text
    assert "alice: ok 3/4" in text


def test_jobs_default_is_cpu_count():
    args = build_parser().parse_args(["grade-all", "subs"])
    assert args.jobs == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("make_args, text", [
    (lambda tmp, subs: [str(tmp / "missing")], "does not exist"),
    (lambda tmp, subs: [str(subs), "--jobs", "0"], "--jobs"),
    (lambda tmp, subs: [str(subs), "--csv", str(tmp / "no" / "grades.csv")], "does not exist"),
    (lambda tmp, subs: [str(subs), "--csv", str(tmp)], "is a folder"),
    (lambda tmp, subs: [str(subs), "--check", "no.such"], "unknown check"),
    (lambda tmp, subs: [str(subs), "--timeout", "0"], "--timeout"),
    (lambda tmp, subs: [str(tmp / "empty")], "no subfolders"),
    (lambda tmp, subs: [str(subs), "--state", str(tmp / "no" / "state.jsonl")], "does not exist"),
    (lambda tmp, subs: [str(subs), "--state", str(tmp)], "is a folder"),
    (lambda tmp, subs: [str(subs), "--json-dir", str(subs / "a" / "file.txt")], "is not a folder"),
])
def test_bad_input_exits_two(tmp_path, capsys, make_args, text):
    subs = tmp_path / "subs"
    (subs / "a").mkdir(parents=True)
    (subs / "a" / "file.txt").write_text("not a folder")
    (tmp_path / "empty").mkdir()
    args = make_args(tmp_path, subs)
    if "--csv" not in args:
        args += ["--csv", str(tmp_path / "g.csv")]
    status = main(["grade-all", *args])
    captured = capsys.readouterr()
    assert status == 2
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert text in lines[0]
    assert "Traceback" not in captured.err
    assert not (tmp_path / "g.csv").exists()
