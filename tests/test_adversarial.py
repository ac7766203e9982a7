"""Adversarial submissions cannot crash, hang, fool or escape the grader.

Each sample in ``datasets/submissions/adversarial/adversarial.toml`` is the
correct submission with one attacked ``bubbles.py``. Every sample is graded
once, in this process, with a small rubric: the three ``bubbles`` checks plus
three checks of other modules that run after them in the same grading run.
The tests then check that

- the grader returned a report (it survived),
- the attacked checks got the manifest's score, with a message naming the reason,
- the other checks kept full points,
- the attack left no trace outside the worker: no changed files, no stray
  process, nothing received on a loopback listener.

Attacks find their targets through two channels the tests set up. The first
is the fixed folder ``/tmp/pplab-adversarial/<sample>/``. The second, for
grading through the CLI in a subprocess, is the ``PPLAB_ADVERSARIAL_DIR`` and
``PPLAB_ADVERSARIAL_PORT`` variables in the grader's environment, which a
worker running as the grader's user reads through ``/proc/<pid>/environ``.
That file contains the environment a process started with, so a variable set
inside pytest would not show there. Attacks on files touch nothing else.

NOTE: the fixed folder is shared, so two sessions running this file at once
on one machine disturb each other.

Where the grader still fails an attack, the test carries
``xfail(strict=True)`` with the reason; remove the mark once the grader is fixed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from grader.rubric import load_rubric
from grader.runner import PASSED, GradeReport, grade
from grader.samples import load_samples, materialize
from grader.sandbox import Limits, Worker

REPO_ROOT = Path(__file__).resolve().parents[1]
MANIFEST = REPO_ROOT / "datasets" / "submissions" / "adversarial" / "adversarial.toml"
SAMPLES = load_samples(manifest=MANIFEST)
SAMPLE_NAMES = sorted(SAMPLES)

# The attacked module's checks, then checks of other modules that run after
# them in rubric order, so a leak from the attack into later workers shows.
ATTACKED_IDS = ["bubbles.bubble_fraction", "bubbles.bubble_overhead", "bubbles.peak_activations"]
LATER_IDS = ["exercise_1.gpipe", "moe.softmax", "comm_volume.collectives"]
SMALL_RUBRIC = load_rubric().select(ids=ATTACKED_IDS + LATER_IDS)

# Short limits so loops end fast. Touching memory up to the 2 GiB address-space
# limit takes about 2 s on a loaded two-core machine, so the memory hog gets
# a longer call timeout: it must fail on memory, not on time.
LIMITS = Limits(call_timeout=3.0, import_timeout=5.0)
SAMPLE_LIMITS = {"memory_hog": Limits(call_timeout=20.0, import_timeout=5.0)}
FULL_RUBRIC_LIMITS = Limits(call_timeout=15.0, import_timeout=15.0)

KNOWN_ROOT = Path("/tmp/pplab-adversarial")
# Attacks that record child pids need a folder any user can write, so that a
# worker running as an unprivileged user still leaves evidence.
WORLD_WRITABLE = {"daemon", "process_flood"}
# The daemon writes its marker this long after the call (see daemon/bubbles.py).
DAEMON_MARKER_DELAY = 2.0
FAKE_NAMES = ("results.json", "report.json")
SHARED_TMP_FAKES = [Path("/tmp") / f"pplab-adversarial-{name}" for name in FAKE_NAMES]



def _probe_worker() -> tuple[int, bool]:
    """Return the uid a worker runs as and whether it can read the reference and the rubric."""
    paths = [str(REPO_ROOT / "reference" / "bubbles.py"), str(REPO_ROOT / "grader" / "rubric.toml")]
    folder = Path(tempfile.mkdtemp(prefix="pplab-probe-"))
    try:
        (folder / "probe.py").write_text(
            "import os\n\n\ndef probe(paths):\n"
            "    return [os.geteuid(), all(os.access(path, os.R_OK) for path in paths)]\n")
        with Worker(folder, Limits(call_timeout=30.0, import_timeout=30.0)) as worker:
            uid, readable = worker.call("probe", "probe", paths)
        return uid, readable
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# Which attacks succeed depends on the user workers run as (the grader drops
# root to "nobody" only where "nobody" can read the Python installation).
WORKER_UID, WORKER_READS_REFERENCE = _probe_worker()
SAME_USER = WORKER_UID == os.geteuid()


def _namespaced() -> bool:
    from grader.sandbox import fork_server

    server = fork_server()
    return server is not None and server.namespaces


# As root with namespaces, each worker has a private /tmp, its own network
# (loopback only) and its own pid namespace. The attacks' evidence channel
# (files in /tmp/pplab-adversarial) is then cut as well, so the tests look
# for stray processes by command line instead.
NAMESPACED = _namespaced()
SAME_USER_REASON = f"the worker runs as the grader's user (uid {WORKER_UID})"


def _xfail(reason: str, condition: bool = True):
    return pytest.mark.xfail(condition, strict=True, reason=reason)


# Known failures of the grader, by test and sample. Each reason names what
# goes wrong; docs/isolation.md describes what stops each attack.
SCORE_XFAILS = {
    "process_flood": (WORKER_UID == 0, "as root all 200 forks succeed because RLIMIT_NPROC does not apply"),
    "import_reference_by_path": (WORKER_READS_REFERENCE,
                                 "spec_from_file_location loads reference/ by path, and the "
                                 "import guard only sees imports by name"),
    "read_hidden_checks": (WORKER_READS_REFERENCE,
                           "the worker can read grader/rubric.toml, grader/checks/ and reference/ by path"),
}


def _score_params():
    params = []
    for name in SAMPLE_NAMES:
        if name in SCORE_XFAILS:
            condition, reason = SCORE_XFAILS[name]
            params.append(pytest.param(name, marks=_xfail(reason, condition)))
        else:
            params.append(name)
    return params


# --- helpers -----------------------------------------------------------------


def _digest(folder: Path) -> dict[str, str]:
    """Map every file under ``folder`` to the SHA-256 of its bytes."""
    if not folder.is_dir():
        return {}
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def _worker_alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process forked from a grader worker."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    state = stat.rpartition(")")[2].split()[0]
    return state != "Z" and (b"_sandbox_child" in command or b"worker_main" in command)


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rpartition(")")[2].split()[1])


def _stray_workers() -> list[int]:
    """Live descendants of this process's fork server: workers, or what they started, still running."""
    from grader import sandbox

    server = sandbox._FORK_SERVER
    if server is None:
        return []
    servers = {process.pid for process in server.processes}
    strays = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or not _worker_alive(int(entry)):
            continue
        pid = int(entry)
        for _ in range(64):
            pid = _parent(pid)
            if pid in (0, 1):
                break
            if pid in servers:
                strays.append(int(entry))
                break
    return strays


def _recorded_pids(folder: Path) -> list[int]:
    pids = []
    for name in ("pids.txt", "daemon.pid"):
        path = folder / name
        if path.is_file():
            pids += [int(word) for word in path.read_text().split() if word.isdigit()]
    return pids


def _plant_victims(folder: Path) -> None:
    """Create the files the overwrite attack goes after, including a decoy grader layout."""
    for relative in ("victim.txt", "victim_delete.txt", "decoy/grader/checks/values.py",
                     "decoy/grader/rubric.toml", "decoy/reference/bubbles.py"):
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"original content of {relative}\n")
        path.chmod(0o644)


class Listener:
    """A TCP listener on 127.0.0.1 that records every byte it receives."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.server.accept()
            except (socket.timeout, OSError):
                continue
            with connection:
                connection.settimeout(2.0)
                chunks = []
                try:
                    while chunk := connection.recv(65536):
                        chunks.append(chunk)
                except OSError:
                    pass
                self.received.append(b"".join(chunks) or b"<connected, sent nothing>")

    def close(self) -> list[bytes]:
        self._stop.set()
        self._thread.join(timeout=5)
        self.server.close()
        return self.received


@dataclass
class AttackRun:
    """What one grading of an adversarial sample returned and left behind."""

    report: GradeReport | None
    error: BaseException | None
    submission_changed: bool
    known_before: dict[str, str]
    known_after: dict[str, str]
    received: list[bytes]
    recorded_pids: list[int] = field(default_factory=list)
    live_pids: list[int] = field(default_factory=list)
    marker_seen: bool = False
    shared_tmp_fakes: list[str] = field(default_factory=list)
    strays: list[int] = field(default_factory=list)

    def result(self, check_id: str):
        return next(r for r in self.report.results if r.id == check_id)


def _prepare_known_dir(name: str, port: int) -> Path:
    KNOWN_ROOT.mkdir(exist_ok=True)
    KNOWN_ROOT.chmod(0o755)
    folder = KNOWN_ROOT / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    folder.chmod(0o1777 if name in WORLD_WRITABLE else 0o755)
    if name == "overwrite_outside":
        _plant_victims(folder)
    if name == "loopback_socket":
        (folder / "port").write_text(str(port))
    return folder


def _kill_leftovers(pids: list[int]) -> None:
    for pid in pids:
        if _worker_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _remove_shared_tmp_fakes() -> None:
    for path in SHARED_TMP_FAKES:
        path.unlink(missing_ok=True)


def _run_attack(name: str, folder: Path, rubric, limits: Limits) -> AttackRun:
    """Grade one sample in this process and record its side effects."""
    listener = Listener()
    known = _prepare_known_dir(name, listener.port)
    _remove_shared_tmp_fakes()
    submission = materialize(SAMPLES[name], folder)
    submission_before = _digest(submission)
    known_before = _digest(known)

    report, error = None, None
    try:
        report = grade(submission, rubric, limits)
    except Exception as caught:  # the test reports it; the grader must not raise
        error = caught
    if name == "daemon":
        time.sleep(DAEMON_MARKER_DELAY + 1.0)

    pids = _recorded_pids(known)
    run = AttackRun(
        report=report, error=error,
        submission_changed=_digest(submission) != submission_before,
        known_before=known_before, known_after=_digest(known),
        received=listener.close(),
        recorded_pids=pids,
        live_pids=[pid for pid in pids if _worker_alive(pid)],
        marker_seen=(known / "marker").exists(),
        shared_tmp_fakes=[str(path) for path in SHARED_TMP_FAKES if path.exists()],
        strays=_stray_workers(),
    )
    _kill_leftovers(pids)
    _remove_shared_tmp_fakes()
    return run


@pytest.fixture(scope="module")
def attack(tmp_path_factory):
    """Grade a sample with the small rubric once, lazily, and cache what happened."""
    cache: dict[str, AttackRun] = {}
    root = tmp_path_factory.mktemp("adversarial")

    def run_for(name: str) -> AttackRun:
        if name not in cache:
            limits = SAMPLE_LIMITS.get(name, LIMITS)
            cache[name] = _run_attack(name, root / name, SMALL_RUBRIC, limits)
        return cache[name]

    yield run_for
    shutil.rmtree(KNOWN_ROOT, ignore_errors=True)


# --- survival and scores ----------------------------------------------------------


def test_manifest_covers_every_attack_folder():
    folders = {p.name for p in MANIFEST.parent.iterdir() if p.is_dir()}
    assert folders == set(SAMPLES)
    for name, sample in SAMPLES.items():
        assert sample.base == "datasets/submissions/correct_alt", name
        assert sample.overlay_modules == ("bubbles",), name
        assert set(sample.scores) <= set(ATTACKED_IDS), f"{name} expects a later check to lose points"


def test_attack_modules_define_every_function():
    import ast

    expected = {node.name for node in ast.parse(
        (REPO_ROOT / "datasets/submissions/correct_alt/bubbles.py").read_text()).body
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")}
    for name in SAMPLE_NAMES:
        tree = ast.parse((MANIFEST.parent / name / "bubbles.py").read_text())
        defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        assert expected <= defined, f"{name}/bubbles.py lacks {sorted(expected - defined)}"


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_grader_returns_report(name, attack):
    run = attack(name)
    assert run.error is None, f"{name}: grade() raised {run.error!r}"
    assert [r.id for r in run.report.results] == [e.id for e in SMALL_RUBRIC.checks]


@pytest.mark.parametrize("name", _score_params())
def test_attacked_checks_lose_points(name, attack):
    sample = SAMPLES[name]
    run = attack(name)
    assert run.report is not None, f"{name}: no report ({run.error!r})"
    for check_id in ATTACKED_IDS:
        result = run.result(check_id)
        expected = sample.expected_score(check_id, result.max_score)
        assert result.score == expected, (
            f"{name}: {check_id} scored {result.score}, expected {expected}\n{result.message}")
    for check_id, text in sample.messages.items():
        result = run.result(check_id)
        shown = f"{result.message}\n{result.misconception or ''}"
        assert text.lower() in shown.lower(), f"{name}: {check_id} message lacks {text!r}:\n{shown}"
    for result in run.report.results:
        if result.status != PASSED:
            assert result.message, f"{name}: {result.id} failed without a message"


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_later_checks_keep_full_points(name, attack):
    run = attack(name)
    assert run.report is not None, f"{name}: no report ({run.error!r})"
    for check_id in LATER_IDS:
        result = run.result(check_id)
        assert result.status == PASSED, f"{name}: {check_id} is {result.status}: {result.message}"
        assert result.score == result.max_score, f"{name}: {check_id} scored {result.score}"


def test_noisy_submission_gets_full_marks(attack):
    run = attack("noisy_correct")
    assert [r.status for r in run.report.results] == [PASSED] * len(SMALL_RUBRIC.checks)
    assert run.report.score == run.report.max_score


def test_enormous_output_is_cut_to_a_tail(attack):
    run = attack("enormous_output")
    result = run.result("bubbles.bubble_fraction")
    assert 0 < len(result.output) <= 10_000
    assert "fake grader output" in result.output


# --- side effects --------------------------------------------------------------


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_submission_folder_unchanged(name, attack):
    assert not attack(name).submission_changed


@pytest.mark.parametrize("name", [
    pytest.param("overwrite_outside", marks=_xfail(
        f"{SAME_USER_REASON}, so it overwrites and deletes the grader's files in /tmp/pplab-adversarial",
        SAME_USER)),
    pytest.param("fake_results", marks=_xfail(
        f"{SAME_USER_REASON}, so it writes results.json and report.json into the grader's folder",
        SAME_USER)),
    "patch_grader", "import_reference_by_path", "read_hidden_checks", "loopback_socket",
])
def test_files_outside_worker_unchanged(name, attack):
    run = attack(name)
    added = sorted(set(run.known_after) - set(run.known_before))
    removed = sorted(set(run.known_before) - set(run.known_after))
    changed = sorted(k for k in run.known_before.keys() & run.known_after.keys()
                     if run.known_before[k] != run.known_after[k])
    assert not added, f"{name} created {added}"
    assert not removed, f"{name} deleted {removed}"
    assert not changed, f"{name} overwrote {changed}"


@_xfail("the worker shares the grader's /tmp; only a private mount namespace or a "
        "container keeps it from leaving files there", not NAMESPACED)
def test_fake_results_not_left_in_shared_tmp(attack):
    assert attack("fake_results").shared_tmp_fakes == []


def test_daemon_does_not_outlive_grading(attack):
    run = attack("daemon")
    if not NAMESPACED:
        assert run.recorded_pids, "the daemon never started, so this test proves nothing"
    assert run.strays == [], f"worker processes {run.strays} still run after grading"
    assert not run.marker_seen, "the daemon wrote its marker after grading ended"
    assert run.live_pids == [], f"the daemon {run.live_pids} is still running after grading"


@_xfail("RLIMIT_NPROC does not apply to root, so all 200 forks succeed", WORKER_UID == 0)
def test_process_flood_is_capped(attack):
    run = attack("process_flood")
    if NAMESPACED:
        assert "at most" in run.result("bubbles.peak_activations").message
    else:
        assert len(run.recorded_pids) < 200, f"the worker forked {len(run.recorded_pids)} processes"


def test_process_flood_leaves_no_process(attack):
    run = attack("process_flood")
    if NAMESPACED:
        # The pid files stay in the worker's private /tmp; the report shows the forks ran into the limit.
        assert "at most" in run.result("bubbles.peak_activations").message
    else:
        assert run.recorded_pids, "no fork succeeded, so this test proves nothing"
    assert run.strays == [], f"worker processes {run.strays} still run after grading"
    assert run.live_pids == [], f"{len(run.live_pids)} forked children still run after grading"


@_xfail("the worker shares the grader's network namespace, so it reaches any port on 127.0.0.1",
        not NAMESPACED)
def test_loopback_listener_receives_nothing(attack):
    assert attack("loopback_socket").received == []


# --- grading through the CLI in a subprocess ----------------------------------------


@dataclass
class CliRun:
    returncode: int
    stdout: str
    stderr: str
    report_file: Path
    outside: Path
    outside_before: dict[str, str]
    outside_after: dict[str, str]


def _run_cli(name: str, tmp_path: Path, checks: list[str]) -> CliRun:
    """Grade a sample with ``python -m grader.cli`` and the attack channels in its environment."""
    submission = materialize(SAMPLES[name], tmp_path / "submission")
    outside = tmp_path / "outside"
    _plant_victims(outside)
    listener = Listener()
    _prepare_known_dir(name, listener.port)
    report_file = tmp_path / "report.json"
    env = dict(os.environ, PPLAB_ADVERSARIAL_DIR=str(outside),
               PPLAB_ADVERSARIAL_PORT=str(listener.port))
    before = _digest(outside)
    command = [sys.executable, "-m", "grader.cli", "grade", str(submission), "--format", "json",
               "--output", str(report_file), "--timeout", "5"]
    for check_id in checks:
        command += ["--check", check_id]
    try:
        completed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True,
                                   text=True, timeout=180)
    finally:
        listener.close()
        _remove_shared_tmp_fakes()
    return CliRun(completed.returncode, completed.stdout, completed.stderr, report_file,
                  outside, before, _digest(outside))


def _scores(report: dict) -> dict[str, float]:
    return {check["id"]: check["score"] for check in report["checks"]}


def _expected_scores(name: str) -> dict[str, float]:
    sample = SAMPLES[name]
    return {entry.id: sample.expected_score(entry.id, entry.points) for entry in SMALL_RUBRIC.checks}


@pytest.fixture(scope="module")
def fake_results_cli(tmp_path_factory):
    return _run_cli("fake_results", tmp_path_factory.mktemp("cli-fake"), ATTACKED_IDS + LATER_IDS)


def test_cli_report_ignores_fake_output(fake_results_cli):
    run = fake_results_cli
    assert run.returncode == 0, run.stderr
    printed = json.loads(run.stdout)  # one JSON document, nothing the worker printed
    written = json.loads(run.report_file.read_text())
    expected = _expected_scores("fake_results")
    assert _scores(printed) == expected
    assert _scores(written) == expected
    assert printed["score"] == sum(expected.values())
    assert "fake grader" not in run.stdout


@_xfail(f"{SAME_USER_REASON}, so it reads PPLAB_ADVERSARIAL_DIR from /proc/<grader>/environ "
        "and writes there", SAME_USER)
def test_cli_fake_results_stay_in_worker(fake_results_cli):
    run = fake_results_cli
    added = sorted(set(run.outside_after) - set(run.outside_before))
    assert added == [], f"the worker wrote {added} into the grader's folder"


@_xfail(f"{SAME_USER_REASON}, so it reads PPLAB_ADVERSARIAL_DIR from /proc/<grader>/environ "
        "and overwrites files there", SAME_USER)
def test_cli_overwrite_outside_fails(tmp_path):
    run = _run_cli("overwrite_outside", tmp_path, ATTACKED_IDS[:1])
    assert run.returncode == 0, run.stderr
    assert run.outside_after == run.outside_before


@_xfail(f"{SAME_USER_REASON}, so its SIGKILL kills the grader CLI and the fork server", SAME_USER)
def test_cli_survives_kill_grader(tmp_path):
    run = _run_cli("kill_grader", tmp_path, ATTACKED_IDS + LATER_IDS)
    assert run.returncode == 0, f"the grader exited with {run.returncode}: {run.stderr[-2000:]}"
    assert _scores(json.loads(run.stdout)) == _expected_scores("kill_grader")


# --- the worst samples against the whole rubric ---------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fake_results", "patch_grader", "daemon"])
def test_full_rubric_scores(name, tmp_path):
    sample = SAMPLES[name]
    run = _run_attack(name, tmp_path / name, load_rubric(), FULL_RUBRIC_LIMITS)
    assert run.error is None, f"{name}: grade() raised {run.error!r}"
    for result in run.report.results:
        expected = sample.expected_score(result.id, result.max_score)
        assert result.score == expected, (
            f"{name}: {result.id} scored {result.score}, expected {expected}\n{result.message}")
    assert run.live_pids == []
