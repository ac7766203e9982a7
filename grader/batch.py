"""Grade a folder of submissions in parallel and write one CSV row per submission.

Each submission is graded as ``pplab grade --format json`` would grade it,
by one of ``--jobs`` long-lived grading processes (``python -m grader.batch
--serve SUBMISSIONS_DIR``, see :class:`Job`), each in its own process group.
The submission's code runs in sandboxed workers that the grading process
starts and removes per check. A grading process that crashes or runs past
the wall-clock limit is stopped and replaced, so a crash, a hang or a
runaway submission costs that submission's row and nothing else. A thread
per job sends it submissions and waits for the replies; the main thread
records results and draws the progress.

Each finished submission is appended to a state file (JSON lines, by
default ``<csv>.partial.jsonl``) as soon as it finishes. A rerun with the
same options after an interruption skips the submissions recorded there
whose files have not changed, and the CSV it writes is the one an
uninterrupted run would have written. The state file is removed once the
CSV is complete.

CSV columns: ``submission, score, max_score, percent, status, <one column
per check id>, duration_s, message``. ``status`` is ``ok`` (graded),
``invalid`` (the submission cannot be graded, for example a missing module:
score 0), ``error`` (the grader process failed) or ``timeout`` (it ran past
the limit). ``error`` and ``timeout`` rows leave the score and the check
columns empty, because they are not grades.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

logger = logging.getLogger(__name__)

OK, INVALID, ERROR, TIMEOUT = "ok", "invalid", "error", "timeout"
EXIT_OK, EXIT_USAGE, EXIT_INTERRUPTED = 0, 2, 130
# Seconds a grading process gets to remove its workers after SIGTERM before
# its process group is killed.
TERMINATE_GRACE_S = 10.0
STATE_SUFFIX = ".partial.jsonl"
# The interpreter that runs each grading process; pplab must be importable there.
PYTHON = sys.executable
# Submissions one grading process grades before a fresh one replaces it.
SUBMISSIONS_PER_JOB = 50


def default_jobs() -> int:
    """Return the number of CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class BatchOptions:
    """Grading options shared by every submission of a batch.

    ``timeout_s`` is the wall-clock limit for one whole submission, in
    seconds; ``call_timeout_s`` is ``pplab grade --timeout``, the limit for
    one call into the submission.
    """

    rubric: Path | None = None
    checks: tuple[str, ...] = ()
    visible_only: bool = False
    call_timeout_s: float = 20.0
    timeout_s: float = 900.0
    jobs: int = field(default_factory=default_jobs)

    def grade_arguments(self, submission: Path) -> list[str]:
        """Return the ``pplab grade`` arguments for ``submission``."""
        arguments = ["grade", str(submission), "--format", "json", "--timeout", f"{self.call_timeout_s:g}"]
        if self.rubric is not None:
            arguments += ["--rubric", str(self.rubric)]
        for check in self.checks:
            arguments += ["--check", check]
        if self.visible_only:
            arguments.append("--visible-only")
        return arguments


class BatchError(ValueError):
    """Bad input to a batch: a missing folder, an unusable path or option."""


# --- inputs -------------------------------------------------------------------

# Subfolders of a submissions folder that are never submissions.
NOT_SUBMISSIONS = frozenset({"__pycache__"})


def list_submissions(root: Path) -> list[Path]:
    """Return the submission folders in ``root``, sorted by name.

    Hidden subfolders (starting with '.') and Python's ``__pycache__`` are skipped.
    """
    if not root.is_dir():
        raise BatchError(f"submissions folder {root} does not exist or is not a folder; "
                         "pass a folder with one subfolder per submission")
    folders = sorted((p for p in root.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and p.name not in NOT_SUBMISSIONS),
                     key=lambda p: p.name)
    if not folders:
        raise BatchError(f"submissions folder {root} has no subfolders; put each submission in its own folder")
    return folders


def fingerprint(folder: Path) -> str:
    """Return a SHA-256 over the names and contents of the folder's ``*.py`` files (what grading reads)."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.py")):
        digest.update(path.name.encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def selected_checks(options: BatchOptions) -> list[tuple[str, float]]:
    """Return (check id, points) for the checks ``options`` grade, in rubric order.

    Raises BatchError for an unreadable rubric, an unknown check or an empty selection.
    """
    from .rubric import DEFAULT_RUBRIC, RubricError, load_rubric

    try:
        rubric = load_rubric(options.rubric or DEFAULT_RUBRIC)
    except RubricError as error:
        raise BatchError(str(error)) from None
    known = {entry.id for entry in rubric.checks}
    unknown = [check for check in options.checks if check not in known]
    if unknown:
        raise BatchError(f"unknown check {unknown[0]!r}; `pplab grade --list` lists the check ids")
    rubric = rubric.select("visible" if options.visible_only else None, list(options.checks))
    if not rubric.checks:
        raise BatchError("the selected checks are all hidden; drop --visible-only or pick visible checks")
    return [(entry.id, entry.points) for entry in rubric.checks]


def configuration_key(options: BatchOptions, checks: list[tuple[str, float]]) -> str:
    """Return a digest of everything that changes a grade, so a state file from other options is not reused."""
    from .rubric import DEFAULT_RUBRIC

    rubric_text = Path(options.rubric or DEFAULT_RUBRIC).read_bytes()
    payload = json.dumps({"checks": checks, "call_timeout_s": options.call_timeout_s,
                          "rubric": hashlib.sha256(rubric_text).hexdigest()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# --- grading processes ----------------------------------------------------------

class _Children:
    """The grading processes still running, so an interrupt can stop them all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._processes: set[subprocess.Popen] = set()
        self.stopping = threading.Event()

    def add(self, process: subprocess.Popen) -> None:
        with self._lock:
            self._processes.add(process)

    def discard(self, process: subprocess.Popen) -> None:
        with self._lock:
            self._processes.discard(process)

    def stop_all(self) -> None:
        self.stopping.set()
        with self._lock:
            processes = list(self._processes)
        # Signal them all first, so their grace periods overlap.
        for process in processes:
            try:
                process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        for process in processes:
            _terminate(process)


def _terminate(process: subprocess.Popen) -> None:
    """Stop a grading process: SIGTERM (it then removes its workers), SIGKILL to its group after a grace period."""
    if process.poll() is not None:
        return
    try:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=TERMINATE_GRACE_S)
    except subprocess.TimeoutExpired:
        logger.warning("grading process %s ignored SIGTERM; killing its process group", process.pid)
    except ProcessLookupError:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    return lines[-1].removeprefix("pplab: error: ")


def _exit_message(status: int | None, stderr: str) -> str:
    """Describe a failed grading run by its exit status and the last line it wrote on stderr."""
    return f"grading exited with status {status}: {_last_line(stderr) or 'no error message'}"


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def job_environment() -> dict[str, str]:
    """Environment of one grading job: one math-library thread unless the caller chose otherwise.

    Jobs run side by side, one per core. Each job's torch and BLAS would
    otherwise start a thread per core as well, and the surplus threads spin
    while they wait, which costs the batch a quarter of its CPU time here.
    """
    environment = dict(os.environ)
    for name in THREAD_VARIABLES:
        environment.setdefault(name, "1")
    return environment


class JobDied(RuntimeError):
    """The grading process ended while it graded a submission."""


class Job:
    """A long-lived grading process that grades one submission per request.

    Starting Python, importing the grader and torch, and warming the
    sandbox's fork servers takes about a third of the time of grading one
    submission. A job pays that once, then grades one submission after
    another, each exactly as ``pplab grade --format json`` would. No
    submission code runs in the job itself: it runs in sandboxed workers
    that the job forks per check and removes afterwards, so one submission
    cannot change how the next is graded.

    Protocol: one JSON request per line on the job's stdin
    (``{"argv": [...]}``, the ``pplab`` arguments) and one JSON reply per
    line on its stdout (``{"status": exit status, "stdout": ..., "stderr":
    ...}``). The job's own stderr goes to a file, read when the job dies.
    """

    def __init__(self, root: Path, children: _Children | None = None):
        self.graded = 0
        self._buffer = b""
        self._stderr = tempfile.TemporaryFile()
        self._children = children
        self.process = subprocess.Popen(
            [PYTHON, "-m", "grader.batch", "--serve", str(root)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._stderr, start_new_session=True, env=job_environment())
        if children is not None:
            children.add(self.process)
            if children.stopping.is_set():  # the batch was interrupted while this job started
                _terminate(self.process)

    def grade(self, arguments: list[str], timeout_s: float) -> tuple[int, str, str] | None:
        """Run ``pplab ARGUMENTS`` in the job; return (exit status, stdout, stderr), or None after ``timeout_s``.

        Raises JobDied when the process ends before it replies; its message
        names the exit status and the last line the process wrote on stderr.
        """
        self.graded += 1
        error_offset = self._stderr.seek(0, os.SEEK_END)
        try:
            self.process.stdin.write(json.dumps({"argv": arguments}).encode() + b"\n")
            self.process.stdin.flush()
        except OSError:
            pass  # the process is gone, and the read below reports how it ended
        deadline = time.monotonic() + timeout_s
        descriptor = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            readable, _, _ = select.select([descriptor], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(descriptor, 1 << 16)
            if not chunk:
                self.process.wait()
                self._stderr.seek(error_offset)
                stderr = self._stderr.read().decode(errors="replace")
                raise JobDied(_exit_message(self.process.returncode, stderr))
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        reply = json.loads(line)
        return int(reply["status"]), reply["stdout"], reply["stderr"]

    def close(self) -> None:
        """End the job: close its input so it exits, and stop it if it does not."""
        try:
            self.process.stdin.close()
        except OSError:
            pass
        try:
            self.process.wait(timeout=TERMINATE_GRACE_S)
        except subprocess.TimeoutExpired:
            _terminate(self.process)
        self.stop()

    def stop(self) -> None:
        """Stop the job at once, whatever it is doing."""
        _terminate(self.process)
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self._stderr.close()
        if self._children is not None:
            self._children.discard(self.process)


class JobPool:
    """Grading jobs shared by the batch's threads: a thread takes an idle job or starts one.

    A job that timed out or died is not reused, and a job is replaced after
    ``SUBMISSIONS_PER_JOB`` submissions, so memory that grading leaves
    behind cannot pile up over a large class.
    """

    def __init__(self, root: Path, children: _Children):
        self.root = root
        self.children = children
        self._idle: list[Job] = []
        self._lock = threading.Lock()

    def take(self) -> Job:
        """Return an idle job that is still alive, or a new one."""
        while True:
            with self._lock:
                job = self._idle.pop() if self._idle else None
            if job is None:
                return Job(self.root, self.children)
            if job.process.poll() is None:
                return job
            job.stop()

    def give_back(self, job: Job) -> None:
        if job.graded >= SUBMISSIONS_PER_JOB or job.process.poll() is not None:
            job.close()
            return
        with self._lock:
            self._idle.append(job)

    def close(self) -> None:
        with self._lock:
            jobs, self._idle = self._idle, []
        for job in jobs:
            job.close()


# --- grading one submission ---------------------------------------------------

def grade_one(folder: Path, options: BatchOptions, checks: list[tuple[str, float]],
              json_dir: Path | None, jobs: JobPool) -> dict:
    """Grade one submission folder in a job from ``jobs`` and return its record (a CSV row as a dict)."""
    max_score = sum(points for _, points in checks)
    record = {"submission": folder.name, "fingerprint": fingerprint(folder), "status": ERROR,
              "score": None, "max_score": max_score, "checks": {}, "duration_s": 0.0, "message": ""}
    started = time.monotonic()
    job = jobs.take()
    try:
        reply = job.grade(options.grade_arguments(folder), options.timeout_s)
    except JobDied as error:
        job.stop()
        record["message"] = str(error)
        reply = None
    except BaseException:
        job.stop()
        raise
    else:
        if reply is None:
            job.stop()
            record["status"] = TIMEOUT
            record["message"] = f"grading took longer than {options.timeout_s:g} s and was stopped"
        else:
            jobs.give_back(job)
    record["duration_s"] = round(time.monotonic() - started, 3)
    if reply is None:
        return record

    status, stdout, stderr = reply
    if status == 2:
        record.update(status=INVALID, score=0.0, message=_last_line(stderr) or "the submission cannot be graded")
        return record
    if status != 0:
        record["message"] = _exit_message(status, stderr)
        return record
    try:
        report = json.loads(stdout)
        scores = {check["id"]: float(check["score"]) for check in report["checks"]}
        score = float(report["score"])
    except (ValueError, KeyError, TypeError) as error:
        record["message"] = f"grading printed no valid JSON report ({type(error).__name__}: {error})"
        return record

    record.update(status=OK, score=score, checks=scores)
    crashed = [check["id"] for check in report["checks"] if check.get("status") == "error"]
    if crashed:
        record["message"] = f"the grader failed in check(s) {', '.join(crashed)}; see the JSON report"
    if json_dir is not None:
        (json_dir / f"{folder.name}.json").write_text(stdout, encoding="utf-8")
    return record


def _grade_one_safely(folder: Path, options: BatchOptions, checks: list[tuple[str, float]],
                      json_dir: Path | None, jobs: JobPool) -> dict:
    """Call :func:`grade_one`; turn an exception in the batch itself into an ``error`` record."""
    try:
        return grade_one(folder, options, checks, json_dir, jobs)
    except Exception as error:  # for example an unreadable file or a failed process start
        logger.exception("grading %s failed", folder)
        return {"submission": folder.name, "fingerprint": "", "status": ERROR, "score": None,
                "max_score": sum(points for _, points in checks), "checks": {}, "duration_s": 0.0,
                "message": f"the batch could not grade this folder: {type(error).__name__}: {error}"}


# --- state file and CSV ---------------------------------------------------------

def read_state(path: Path, key: str) -> dict[str, dict]:
    """Return the records in a state file made with configuration ``key``, by submission name.

    Lines that do not parse (a line cut short by a kill) and records made
    with other options are skipped.
    """
    records: dict[str, dict] = {}
    if not path.exists():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("config") == key and "submission" in record:
            records[record["submission"]] = record
    return records


def csv_row(record: dict, check_ids: list[str]) -> list[str]:
    """Return the CSV cells of one record, in the column order of :func:`write_csv`."""
    def number(value) -> str:
        return "" if value is None else f"{value:g}"

    score, max_score = record["score"], record["max_score"]
    percent = "" if score is None or not max_score else f"{100.0 * score / max_score:.2f}"
    checks = record.get("checks") or {}
    return ([record["submission"], number(score), number(max_score), percent, record["status"]]
            + [number(checks.get(check_id)) for check_id in check_ids]
            + [f"{record['duration_s']:.1f}", record["message"]])


def write_csv(records: list[dict], check_ids: list[str], path: Path) -> None:
    """Write the grade table, rows sorted by submission name, replacing ``path`` atomically."""
    partial = path.with_name(path.name + ".tmp")
    with open(partial, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["submission", "score", "max_score", "percent", "status", *check_ids,
                         "duration_s", "message"])
        for record in sorted(records, key=lambda r: r["submission"]):
            writer.writerow(csv_row(record, check_ids))
    os.replace(partial, path)


# --- progress -------------------------------------------------------------------

def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class Progress:
    """Done/total, elapsed time and ETA on ``stream``: a redrawn bar on a terminal, plain lines otherwise.

    The ETA assumes the remaining submissions take as long on average as
    those graded so far in this run.
    """

    def __init__(self, total: int, already_done: int, stream: TextIO = sys.stderr):
        self.total = total
        self.done = already_done
        self.graded_here = 0
        self.stream = stream
        self.started = time.monotonic()
        self.is_tty = stream.isatty()
        if already_done:
            self._line(f"resuming: {already_done} of {total} submissions already graded")

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def _times(self) -> str:
        elapsed = time.monotonic() - self.started
        if self.graded_here:
            eta = _clock(elapsed / self.graded_here * (self.total - self.done))
        else:
            eta = "?"
        return f"elapsed {_clock(elapsed)}, ETA {eta}"

    def finished(self, record: dict) -> None:
        self.done += 1
        self.graded_here += 1
        score = "" if record["score"] is None else f" {record['score']:g}/{record['max_score']:g}"
        if self.is_tty:
            self.tick(f"{record['submission']}: {record['status']}{score}")
        else:
            self._line(f"[{self.done}/{self.total}] {record['submission']}: {record['status']}{score} "
                       f"in {record['duration_s']:.1f} s; {self._times()}")

    def tick(self, last: str = "") -> None:
        """Redraw the bar (terminals only)."""
        if not self.is_tty:
            return
        width = 24
        filled = int(width * self.done / self.total) if self.total else width
        bar = "#" * filled + "." * (width - filled)
        text = f"\r[{bar}] {self.done}/{self.total}  {self._times()}  {last}"
        print(text[:150].ljust(100), end="", file=self.stream, flush=True)

    def close(self) -> None:
        if self.is_tty:
            print(file=self.stream, flush=True)


# --- the batch ------------------------------------------------------------------

def default_state_path(csv_path: Path) -> Path:
    """Return where a batch writing ``csv_path`` records finished submissions."""
    return csv_path.with_name(csv_path.name + STATE_SUFFIX)


def check_output_paths(csv_path: Path, json_dir: Path | None, state_path: Path) -> None:
    """Raise BatchError unless the CSV, the JSON folder and the state file can be written where asked."""
    for option, path, example in (("--csv", csv_path, "grades.csv"), ("--state", state_path, "grades.jsonl")):
        if path.is_dir():
            raise BatchError(f"{option} {path} is a folder; name a file such as {example}")
        if not path.parent.is_dir():
            raise BatchError(f"{option} {path}: folder {path.parent} does not exist; create it first")
    if json_dir is not None:
        if json_dir.exists() and not json_dir.is_dir():
            raise BatchError(f"--json-dir {json_dir} is not a folder; name a new or existing folder")
        if not json_dir.exists() and not json_dir.parent.is_dir():
            raise BatchError(f"--json-dir {json_dir}: folder {json_dir.parent} does not exist; create it first")


def _grade_pending(pending: list[Path], options: BatchOptions, checks: list[tuple[str, float]],
                   json_dir: Path | None, jobs: JobPool, key: str, state_path: Path, done: dict[str, dict],
                   progress: Progress | None, on_record: Callable[[dict], None] | None) -> None:
    """Grade ``pending``, ``options.jobs`` at a time; record each finished submission in ``done`` and the state file."""
    with open(state_path, "a", encoding="utf-8") as state, \
            concurrent.futures.ThreadPoolExecutor(max_workers=options.jobs) as pool:
        futures = {pool.submit(_grade_one_safely, folder, options, checks, json_dir, jobs): folder
                   for folder in pending}
        try:
            waiting = set(futures)
            while waiting:
                finished, waiting = concurrent.futures.wait(
                    waiting, timeout=1.0, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in finished:
                    record = future.result()
                    record["config"] = key
                    state.write(json.dumps(record) + "\n")
                    state.flush()
                    done[record["submission"]] = record
                    if on_record is not None:
                        on_record(record)
                    if progress is not None:
                        progress.finished(record)
                if progress is not None and not finished:
                    progress.tick()
        except BaseException:
            # Ctrl-C, a kill turned into an exception, or a bug: stop the
            # grading processes before the pool waits for its threads, and
            # keep the state file.
            for future in futures:
                future.cancel()
            jobs.children.stop_all()
            raise


def grade_all(
    root: Path,
    csv_path: Path,
    options: BatchOptions = BatchOptions(),
    json_dir: Path | None = None,
    state_path: Path | None = None,
    progress_stream: TextIO | None = sys.stderr,
    on_record: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Grade every submission folder in ``root``, write ``csv_path`` and return the records, sorted.

    Raises BatchError for bad input. When interrupted, it stops the running
    grading processes and raises KeyboardInterrupt. The state file then
    keeps every submission finished so far, so the next run skips them.
    """
    if options.jobs < 1:
        raise BatchError(f"--jobs must be at least 1, got {options.jobs}")
    if options.timeout_s <= 0 or options.call_timeout_s <= 0:
        raise BatchError("--timeout and --call-timeout must be positive numbers of seconds")
    folders = list_submissions(root)
    state_path = state_path or default_state_path(csv_path)
    check_output_paths(csv_path, json_dir, state_path)
    checks = selected_checks(options)
    check_ids = [check_id for check_id, _ in checks]
    key = configuration_key(options, checks)
    if json_dir is not None:
        json_dir.mkdir(exist_ok=True)

    previous = read_state(state_path, key)
    done: dict[str, dict] = {}
    pending: list[Path] = []
    for folder in folders:
        record = previous.get(folder.name)
        if record is not None and record.get("fingerprint") == fingerprint(folder):
            done[folder.name] = record
        else:
            pending.append(folder)

    progress = Progress(len(folders), len(done), progress_stream) if progress_stream is not None else None
    children = _Children()
    jobs = JobPool(root, children)
    try:
        _grade_pending(pending, options, checks, json_dir, jobs, key, state_path, done, progress, on_record)
        jobs.close()
    except BaseException:
        # An interrupt can also land between submissions or while the jobs
        # shut down: stop whatever still runs.
        children.stop_all()
        raise
    finally:
        if progress is not None:
            progress.close()

    records = sorted(done.values(), key=lambda r: r["submission"])
    write_csv(records, check_ids, csv_path)
    state_path.unlink(missing_ok=True)
    return records


# --- command line ---------------------------------------------------------------

def add_parser(subparsers) -> None:
    """Register ``pplab grade-all``."""
    parser = subparsers.add_parser(
        "grade-all", help="grade every submission folder in a folder, in parallel, into a CSV",
        description="Grade each subfolder of SUBMISSIONS_DIR in its own process and write one CSV row "
                    "per submission. An interrupted run resumes where it stopped when rerun with the "
                    "same options.")
    parser.add_argument("submissions", metavar="SUBMISSIONS_DIR", help="folder with one subfolder per submission")
    parser.add_argument("--csv", default="grades.csv", metavar="FILE", help="grade table to write (default: grades.csv)")
    parser.add_argument("--jobs", "-j", type=int, default=default_jobs(), metavar="N",
                        help="submissions graded at once (default: the number of CPUs, here %(default)s)")
    parser.add_argument("--json-dir", metavar="DIR", help="also write each submission's JSON report to DIR/NAME.json")
    parser.add_argument("--timeout", type=float, default=900.0, metavar="SECONDS",
                        help="wall-clock limit for grading one submission (default: 900)")
    parser.add_argument("--call-timeout", type=float, default=20.0, metavar="SECONDS",
                        help="wall-clock limit for one call into a submission, as pplab grade --timeout (default: 20)")
    parser.add_argument("--check", action="append", metavar="ID", dest="checks",
                        help="grade only this check (repeatable); the CSV then has only these columns")
    parser.add_argument("--visible-only", action="store_true", help="grade only the visible checks")
    parser.add_argument("--rubric", metavar="FILE", help="rubric TOML file (default: the packaged one)")
    parser.add_argument("--state", metavar="FILE",
                        help=f"file recording finished submissions (default: the CSV path + {STATE_SUFFIX})")
    parser.set_defaults(handler=_grade_all_command)


def _grade_all_command(args: argparse.Namespace) -> int:
    options = BatchOptions(rubric=Path(args.rubric) if args.rubric else None, checks=tuple(args.checks or ()),
                           visible_only=args.visible_only, call_timeout_s=args.call_timeout,
                           timeout_s=args.timeout, jobs=args.jobs)
    csv_path = Path(args.csv)
    started = time.monotonic()

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    # `kill` stops the batch like Ctrl-C: its grading processes are stopped too.
    previous_handler = signal.signal(signal.SIGTERM, interrupt)
    try:
        records = grade_all(Path(args.submissions), csv_path, options,
                            json_dir=Path(args.json_dir) if args.json_dir else None,
                            state_path=Path(args.state) if args.state else None)
    except BatchError as error:
        print(f"pplab: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        state = Path(args.state) if args.state else default_state_path(csv_path)
        print(f"pplab: interrupted; finished submissions are kept in {state}; "
              "rerun the same command to grade the rest", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    counts = {status: sum(r["status"] == status for r in records) for status in (OK, INVALID, ERROR, TIMEOUT)}
    summary = ", ".join(f"{count} {status}" for status, count in counts.items() if count)
    noun = "submission" if len(records) == 1 else "submissions"
    print(f"wrote {csv_path}: {len(records)} {noun} ({summary}) in {_clock(time.monotonic() - started)}")
    return EXIT_OK


class _Stop(BaseException):
    """SIGTERM in a grading process: unwind (removing workers) and exit."""


def _stop_on_sigterm() -> None:
    def stop(signum, frame):
        raise _Stop(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def _grade_in_child(argv: list[str]) -> int:
    """Run ``pplab ARGV`` once, with SIGTERM unwinding, so the grader's cleanup removes its workers."""
    _stop_on_sigterm()
    from .cli import main

    try:
        return main(argv)
    except _Stop as stop:
        return stop.args[0]


def _stop_when_orphaned(parent: int, interval_s: float = 1.0) -> None:
    """Send this process SIGTERM once ``parent`` is no longer its parent (the batch died, even by SIGKILL)."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def _serve() -> int:
    """Serve :class:`Job` requests from stdin until it closes; return the exit status.

    Each request runs ``pplab`` in this process with its stdout and stderr
    captured. Replies go to the original stdout. Nothing else may write
    there, so fd 1 points at stderr while the job runs.
    """
    _stop_on_sigterm()
    _stop_when_orphaned(os.getppid())
    from .cli import main

    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    try:
        for line in sys.stdin:
            argv = json.loads(line)["argv"]
            stdout, stderr = io.StringIO(), io.StringIO()
            # `pplab` configures logging on its stream of the moment: drop the
            # handler a previous request installed so this one's stderr is used.
            logging.root.handlers.clear()
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                try:
                    status = main(argv)
                except SystemExit as exit:  # argparse's usage errors
                    status = exit.code if isinstance(exit.code, int) else EXIT_USAGE
                except Exception:
                    traceback.print_exc()
                    status = 1
            replies.write(json.dumps({"status": status, "stdout": stdout.getvalue(),
                                      "stderr": stderr.getvalue()}) + "\n")
            replies.flush()
    except _Stop as stop:
        return stop.args[0]
    return EXIT_OK


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        # The submissions folder that follows only names the batch in `ps`.
        sys.exit(_serve())
    sys.exit(_grade_in_child(sys.argv[1:]))
