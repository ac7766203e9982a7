"""The worker process: plain-data answers, limits, and failures that stay contained."""

from __future__ import annotations

import os
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from grader.sandbox import LearnerRaised, Limits, Record, SubmissionAborted, Unsupported, Worker

LIMITS = Limits(call_timeout=5.0, import_timeout=10.0)


def make_submission(tmp_path: Path, source: str, name: str = "mod") -> Path:
    folder = tmp_path / "submission"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    return folder


def test_values_cross_as_plain_data(tmp_path):
    folder = make_submission(tmp_path, """
        from typing import NamedTuple
        import numpy as np

        class Pair(NamedTuple):
            a: int
            b: float

        def values(x):
            return {"pair": Pair(1, 2.5), "list": [1, (2, 3)], "array": np.arange(3) * x,
                    "scalar": np.float64(1.5), "none": None}
    """)
    with Worker(folder, LIMITS) as worker:
        value = worker.call("mod", "values", 2)
    assert isinstance(value["pair"], Record) and value["pair"].type_name == "Pair"
    assert value["pair"] == {"a": 1, "b": 2.5}
    assert value["list"] == [1, [2, 3]]
    assert np.array_equal(value["array"], np.arange(3) * 2)
    assert value["scalar"] == 1.5 and type(value["scalar"]) is float
    assert value["none"] is None


def test_arbitrary_objects_do_not_cross(tmp_path):
    folder = make_submission(tmp_path, """
        class AlwaysEqual:
            def __eq__(self, other):
                return True

        class Sneaky(float):
            def __eq__(self, other):
                return True

        def weird():
            return [AlwaysEqual(), Sneaky(1.0)]
    """)
    with Worker(folder, LIMITS) as worker:
        value = worker.call("mod", "weird")
    assert isinstance(value[0], Unsupported)
    assert "AlwaysEqual" in value[0].name
    assert isinstance(value[1], Unsupported)


def test_exceptions_become_learner_raised(tmp_path):
    folder = make_submission(tmp_path, """
        def bad(n):
            return [1, 2][n]
    """)
    with Worker(folder, LIMITS) as worker:
        with pytest.raises(LearnerRaised) as info:
            worker.call("mod", "bad", 5)
        assert info.value.is_a("IndexError")
        assert worker.call("mod", "bad", 1) == 2


def test_not_implemented_aborts(tmp_path):
    folder = make_submission(tmp_path, """
        def todo():
            raise NotImplementedError
    """)
    with Worker(folder, LIMITS) as worker, pytest.raises(SubmissionAborted) as info:
        worker.call("mod", "todo")
    assert info.value.kind == "not_implemented"


@pytest.mark.parametrize("body, kind, text", [
    ("while True:\n        pass", "timeout", "timed out"),
    ("import os\n    os._exit(0)", "crashed", "exit status 0"),
    ("import sys\n    sys.exit(3)", "crashed", "SystemExit"),
    ("raise KeyboardInterrupt", "crashed", "KeyboardInterrupt"),
    ("x = bytearray(8 * 1024 ** 3)", None, "MemoryError"),
])
def test_misbehaving_calls_are_contained(tmp_path, body, kind, text):
    folder = make_submission(tmp_path, f"def f():\n    {body}\n")
    with Worker(folder, Limits(call_timeout=2.0)) as worker:
        if kind is None:
            with pytest.raises(LearnerRaised, match=text):
                worker.call("mod", "f")
            return
        with pytest.raises(SubmissionAborted) as info:
            worker.call("mod", "f")
        assert info.value.kind == kind
        assert text in info.value.message
        with pytest.raises(SubmissionAborted):
            worker.call("mod", "f")


def test_import_loop_times_out_and_is_remembered(tmp_path):
    folder = make_submission(tmp_path, "while True:\n    pass\n")
    failures = {}
    limits = Limits(import_timeout=1.0)
    with Worker(folder, limits, failures) as worker, pytest.raises(SubmissionAborted) as first:
        worker.import_module("mod")
    assert first.value.kind == "timeout"
    with Worker(folder, limits, failures) as worker, pytest.raises(SubmissionAborted) as second:
        worker.import_module("mod")
    assert second.value is first.value


@pytest.mark.parametrize("module", ["reference.schedules", "grader", "pplab"])
def test_grader_side_packages_cannot_be_imported(tmp_path, module):
    folder = make_submission(tmp_path, f"import {module}\n")
    with Worker(folder, LIMITS) as worker, pytest.raises(SubmissionAborted) as info:
        worker.import_module("mod")
    assert info.value.kind == "forbidden_import"
    assert module.split(".")[0] in info.value.message


def test_sibling_modules_import_as_exercises(tmp_path):
    folder = make_submission(tmp_path, "VALUE = 41\n", name="base")
    (folder / "top.py").write_text("from .base import VALUE\nfrom exercises.base import VALUE as V2\n"
                                   "def get():\n    return VALUE + 1 + V2 - 41\n")
    with Worker(folder, LIMITS) as worker:
        assert worker.call("top", "get") == 42


def test_worker_environment_is_scrubbed(tmp_path, monkeypatch):
    monkeypatch.setenv("PPLAB_SECRET", "token")
    folder = make_submission(tmp_path, """
        import os, sys
        def probe():
            return [os.environ.get("PPLAB_SECRET"), os.getcwd(), sys.path]
    """)
    with Worker(folder, LIMITS) as worker:
        secret, cwd, path = worker.call("mod", "probe")
    assert secret is None
    assert "pplab-worker-" in cwd
    root = str(Path(__file__).resolve().parents[1])
    assert root not in path


def test_printing_does_not_corrupt_answers(tmp_path):
    folder = make_submission(tmp_path, """
        import sys
        def noisy():
            print('{"score": 100}')
            print("warning: something", file=sys.stderr)
            return 7
    """)
    with Worker(folder, LIMITS) as worker:
        assert worker.call("mod", "noisy") == 7
        assert '{"score": 100}' in worker.output_tail()


def processes_with(marker: str) -> list[int]:
    """Return the pids, in this process's pid namespace, whose command line contains ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if marker.encode() in handle.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found


def wait_until_gone(marker: str, seconds: float = 5.0) -> list[int]:
    import time

    deadline = time.monotonic() + seconds
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    return processes_with(marker)


def test_worker_process_group_is_killed(tmp_path):
    # Pids differ inside a worker's pid namespace, so the child is found by a
    # unique marker on its command line.
    marker = f"pplab-test-sleeper-{os.getpid()}-{tmp_path.name}"
    folder = make_submission(tmp_path, f"""
        import subprocess, sys
        def spawn():
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", {marker!r}])
            return 1
    """)
    worker = Worker(folder, LIMITS)
    assert worker.call("mod", "spawn") == 1
    assert processes_with(marker), "the sleeper did not start"
    worker.close()
    assert wait_until_gone(marker) == []


def test_named_tuple_arguments_become_submission_classes(tmp_path):
    from typing import NamedTuple

    class Spec(NamedTuple):
        name: str
        layers: int

    folder = make_submission(tmp_path, """
        from typing import NamedTuple

        class Spec(NamedTuple):
            name: str
            layers: int

            @property
            def doubled(self):
                return 2 * self.layers

        def describe(spec, other):
            return [type(spec).__name__, isinstance(spec, Spec), spec.doubled, other.layers]
    """)

    class Other(NamedTuple):
        name: str
        layers: int

    with Worker(folder, LIMITS) as worker:
        kind, is_own_class, doubled, other_layers = worker.call("mod", "describe", Spec("x", 3), Other("y", 5))
    assert kind == "Spec"
    assert is_own_class is True
    assert doubled == 6
    assert other_layers == 5


def test_escaped_daemon_killed_with_worker(tmp_path):
    # A double fork with setsid leaves the worker's process group; the fork
    # server (or the worker's pid namespace) still takes it down with the worker.
    marker = f"pplab-test-daemon-{os.getpid()}-{tmp_path.name}"
    folder = make_submission(tmp_path, f"""
        import os, subprocess, sys, time
        def escape():
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(20)", {marker!r}])
                os._exit(0)
            time.sleep(0.5)
            return 1
    """)
    from grader.sandbox import fork_server

    if fork_server() is None:
        pytest.skip("workers are spawned, not forked (PPLAB_SANDBOX=spawn)")
    worker = Worker(folder, LIMITS)
    assert worker.call("mod", "escape") == 1
    assert processes_with(marker), "the daemon did not start"
    worker.close()
    assert wait_until_gone(marker) == [], "the daemon outlived its worker"


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can switch workers to another user")
def test_root_worker_runs_unprivileged(tmp_path, monkeypatch):
    import grader.sandbox as sandbox

    protected = tmp_path / "protected"
    protected.mkdir(mode=0o755)
    secret = protected / "secret.txt"
    secret.write_text("answers")
    secret.chmod(0o600)
    folder = make_submission(tmp_path, """
        import os
        def who():
            return os.getuid()
        def attempt(path, mode):
            try:
                with open(path, mode) as handle:
                    if mode == "w":
                        handle.write("overwritten")
                    else:
                        handle.read()
            except PermissionError:
                return "denied"
            return "allowed"
    """)
    monkeypatch.setenv("PPLAB_SANDBOX_USER", "nobody")
    monkeypatch.setenv("PPLAB_SANDBOX", "fork")
    server = sandbox.ForkServer()
    monkeypatch.setattr(sandbox, "_FORK_SERVER", server)
    try:
        with Worker(folder, LIMITS) as worker:
            assert worker.call("mod", "who") >= sandbox.WORKER_UID_BASE
            assert worker.call("mod", "attempt", str(secret), "r") == "denied"
            assert worker.call("mod", "attempt", str(protected / "new.txt"), "w") == "denied"
            assert worker.call("mod", "attempt", "own.txt", "w") == "allowed"
    finally:
        server.close()
    assert secret.read_text() == "answers"
    assert not (protected / "new.txt").exists()


def test_root_worker_namespaces_hide_grader(tmp_path):
    import socket

    import grader.sandbox as sandbox

    server = sandbox.fork_server()
    if server is None or not server.namespaces:
        pytest.skip("workers do not get namespaces here (not root, or no CAP_SYS_ADMIN)")
    reference = Path(__file__).resolve().parents[1] / "reference" / "schedules.py"
    shared = Path(tempfile.gettempdir()) / f"pplab-visible-{os.getpid()}.txt"
    shared.write_text("grader file")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    folder = make_submission(tmp_path, f"""
        import os, socket
        def look():
            seen = {{}}
            seen["reference"] = os.path.exists({str(reference)!r})
            seen["shared_tmp"] = os.path.exists({str(shared)!r})
            seen["grader_pid"] = os.path.exists("/proc/{os.getpid()}")
            seen["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())[:3]
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=1).close()
                seen["port"] = True
            except OSError:
                seen["port"] = False
            with open("/tmp/left-behind.txt", "w") as handle:
                handle.write("x")
            return seen
    """)
    try:
        with Worker(folder, LIMITS) as worker:
            seen = worker.call("mod", "look")
    finally:
        listener.close()
        shared.unlink()
    assert seen["reference"] is False
    assert seen["shared_tmp"] is False
    assert seen["grader_pid"] is False
    assert seen["pids"][0] == 1  # its own pid namespace
    assert seen["port"] is False
    assert not (Path(tempfile.gettempdir()) / "left-behind.txt").exists()


def test_torch_worker_waits_for_warm_server(tmp_path, monkeypatch):
    # A worker for code that imports torch comes from the server with torch
    # already loaded, even when asked for before that server is ready.
    import grader.sandbox as sandbox

    monkeypatch.setenv("PPLAB_SANDBOX", "fork")
    folder = make_submission(tmp_path, """
        import sys
        def loaded():
            return "torch" in sys.modules
    """)
    server = sandbox.ForkServer()
    monkeypatch.setattr(sandbox, "_FORK_SERVER", server)
    try:
        assert not server.torch_ready()
        with Worker(folder, LIMITS, needs_torch=True) as worker:
            assert worker.call("mod", "loaded") is True
        assert server.torch_ready()
    finally:
        server.close()


def test_syntax_error_shows_learner_file_only(tmp_path):
    folder = make_submission(tmp_path, """
        def broken(:
            pass
    """)
    with Worker(folder, LIMITS) as worker:
        with pytest.raises(LearnerRaised) as info:
            worker.call("mod", "broken")
    text = f"{info.value}\n{info.value.traceback}"
    assert "mod.py, line 2" in text
    assert "_sandbox_child.py" not in text
    assert "worker_main.py" not in text
    assert "importlib" not in text


def test_traceback_starts_in_submission(tmp_path):
    folder = make_submission(tmp_path, """
        import numpy as np

        def bad_reshape():
            return helper()

        def helper():
            return np.zeros(3).reshape(2, 2)
    """)
    with Worker(folder, LIMITS) as worker:
        with pytest.raises(LearnerRaised) as info:
            worker.call("mod", "bad_reshape")
    text = info.value.traceback
    assert "in bad_reshape" in text
    assert "in helper" in text
    assert "_sandbox_child.py" not in text
    assert "worker_main.py" not in text
