"""Run submission code in a separate, limited worker process.

The grader never imports a submission. :class:`Worker` starts
``_sandbox_child.py`` with resource limits, in its own process group and a
temporary working directory holding a copy of the submission, and talks to it
over two pipes. Every response arrives as JSON and is decoded here into plain
Python data (lists, numbers, strings, :class:`Record` for named tuples,
numpy arrays loaded with ``allow_pickle=False``).

Failures split in two kinds. :class:`LearnerRaised` is an ordinary exception
raised by the submission (an ``IndexError``, a ``ValueError``): hypothesis
may shrink it like any failure. :class:`SubmissionAborted` derives from
``BaseException`` so hypothesis stops at once: a stub that is not
implemented, an import that fails, a timeout, a worker that died.
"""

from __future__ import annotations

import atexit
import base64
import io
import json
import logging
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import _sandbox_child as child

logger = logging.getLogger(__name__)

CHILD_SCRIPT = Path(__file__).with_name("_sandbox_child.py")
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
MAX_SUBMISSION_BYTES = 16 * 1024 * 1024
OUTPUT_TAIL_BYTES = 2000
GiB = 1024**3


@dataclass(frozen=True)
class Limits:
    """Resource limits for one worker process.

    ``call_timeout`` and ``import_timeout`` are wall-clock seconds.
    ``cpu_seconds`` is the RLIMIT_CPU of the whole worker. ``address_space``
    is RLIMIT_AS in bytes (``None`` leaves it unlimited, which CUDA needs).
    ``file_size`` is RLIMIT_FSIZE in bytes, which also caps captured output.
    ``processes`` is RLIMIT_NPROC, which the kernel ignores for root.
    """

    call_timeout: float = 20.0
    import_timeout: float = 60.0
    cpu_seconds: int = 600
    address_space: int | None = 2 * GiB
    file_size: int = 64 * 1024 * 1024
    processes: int = 64


class SubmissionAborted(BaseException):
    """The submission cannot be called any more in this check.

    ``kind`` is one of ``not_implemented``, ``missing``, ``import_error``,
    ``forbidden_import``, ``timeout``, ``crashed``, ``bad_output``.
    """

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


class LearnerRaised(Exception):
    """The submission raised an ordinary exception during a call."""

    def __init__(self, error: str, mro: list[str], message: str, traceback: str, call: str):
        super().__init__(f"{call} raised {error}: {message}")
        self.error = error
        self.mro = mro
        self.message = message
        self.traceback = traceback
        self.call = call

    def is_a(self, name: str) -> bool:
        return name in self.mro


class Record(dict):
    """A named tuple returned by the submission: its fields, plus ``type_name``."""

    def __init__(self, type_name: str, fields: dict[str, Any]):
        super().__init__(fields)
        self.type_name = type_name


class Unsupported:
    """A value of a type that cannot cross the process boundary."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"<unsupported {self.name}>"


def encode_argument(value: Any) -> Any:
    """Encode an argument for the worker as tagged JSON.

    A named tuple keeps its type name and fields; the worker rebuilds it as
    the submission's own class of that name when the called module has one
    with the same fields (``Action``, ``ModelSpec``), else as a plain named tuple.
    """
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        fields = {name: encode_argument(getattr(value, name)) for name in value._fields}
        return {"__type__": "namedtuple", "name": type(value).__name__, "fields": fields}
    if isinstance(value, np.ndarray):
        buffer = io.BytesIO()
        np.save(buffer, value, allow_pickle=False)
        return {"__type__": "ndarray", "npy": base64.b64encode(buffer.getvalue()).decode("ascii")}
    if isinstance(value, tuple):
        return {"__type__": "tuple", "items": [encode_argument(v) for v in value]}
    if isinstance(value, list):
        return [encode_argument(v) for v in value]
    if isinstance(value, dict):
        return {"__type__": "dict", "items": [[k, encode_argument(v)] for k, v in value.items()]}
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    raise TypeError(f"cannot send a {type(value).__name__} to the worker")


def decode_value(value: Any) -> Any:
    """Decode one JSON value from the worker into plain Python data."""
    if isinstance(value, list):
        return [decode_value(v) for v in value]
    if isinstance(value, dict):
        tag = value.get("__type__")
        if tag == "namedtuple":
            return Record(str(value.get("name")),
                          {str(k): decode_value(v) for k, v in value.get("fields", {}).items()})
        if tag == "dict":
            return {_hashable(decode_value(k)): decode_value(v) for k, v in value.get("items", [])}
        if tag == "ndarray":
            raw = base64.b64decode(value.get("npy", ""))
            try:
                return np.load(io.BytesIO(raw), allow_pickle=False)
            except ValueError as error:
                return Unsupported(f"array that numpy cannot load without pickle ({error})")
        return Unsupported(str(value.get("name", tag)))
    return value


def _short_repr(value: Any) -> str:
    """Show an argument in a message: a spec by its type and name, arrays and lists by their size."""
    if isinstance(value, tuple) and hasattr(value, "_fields") and "name" in value._fields:
        return f"{type(value).__name__}({getattr(value, 'name')!r})"
    if isinstance(value, np.ndarray):
        return f"<{'x'.join(map(str, value.shape)) or 'scalar'} {value.dtype} array>"
    if isinstance(value, list) and len(repr(value)) > 60:
        return f"<list of {len(value)}>"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def copy_submission(source: Path, target: Path) -> None:
    """Copy the ``*.py`` files of a submission folder (not its subfolders) to ``target``."""
    target.mkdir(parents=True)
    total = 0
    for path in sorted(source.glob("*.py")):
        total += path.stat().st_size
        if total > MAX_SUBMISSION_BYTES:
            raise ValueError(f"submission {source} is larger than {MAX_SUBMISSION_BYTES} bytes of Python")
        shutil.copyfile(path, target / path.name)


def _worker_environment() -> dict[str, str]:
    keep = ("PATH", "LANG", "LC_ALL", "SYSTEMROOT", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
    env = {key: os.environ[key] for key in keep if key in os.environ}
    env.update({
        "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
        "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "MPLBACKEND": "Agg",
        "CUDA_VISIBLE_DEVICES": "",
    })
    return env


def _limits_dict(limits: Limits) -> dict[str, int | None]:
    return {"address_space": limits.address_space, "cpu_seconds": limits.cpu_seconds,
            "file_size": limits.file_size, "processes": limits.processes}


UNPRIVILEGED = (65534, 65534)  # "nobody" on Linux
# Workers run under uids from this range (no accounts), one per worker.
WORKER_UID_BASE, WORKER_UID_SPAN = 2_000_000, 1_000_000


def hidden_paths() -> list[str]:
    """Return the folders a worker in its own mount namespace must not see.

    The first is the folder that contains the grader and the reference: the
    repository for an editable install, or the two packages alone for an
    install into site-packages. Then come the temporary folder (other
    submissions, reports, sample solutions) and /dev/shm.
    """
    package = Path(__file__).resolve().parent
    root = package.parent
    if root.name in ("site-packages", "dist-packages"):
        hidden = [str(package), str(root / "reference")]
    else:
        hidden = [str(root)]
    return hidden + [tempfile.gettempdir(), "/dev/shm"]


def kept_paths(*extra: Path) -> list[str]:
    """Return the paths inside hidden folders that workers still need: the Python environment, ``extra``."""
    hidden = [Path(p) for p in hidden_paths()]
    needed = []
    for path in (Path(sys.prefix), Path(sys.base_prefix), *extra):
        path = path.resolve()
        if any(path == h or h in path.parents for h in hidden) and str(path) not in needed:
            needed.append(str(path))
    return needed


class _ServerProcess:
    """One fork server process and the socket the grader talks to it over."""

    def __init__(self, preload: bool, cwd: str):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.socket = ours
        self.lock = threading.Lock()
        self.ready = not preload
        command = [sys.executable, "-I", "-u", str(CHILD_SCRIPT), "--fork-server", str(theirs.fileno())]
        self.process = subprocess.Popen(
            command + (["--preload"] if preload else []),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(theirs.fileno(),), cwd=cwd, env=_worker_environment(), start_new_session=True,
        )
        theirs.close()

    def poll_ready(self, timeout: float = 0.0) -> bool:
        """Return whether the server has finished preloading (it sends one unrequested message).

        Waits up to ``timeout`` seconds for that message.
        """
        if not self.ready:
            with self.lock:
                readable, _, _ = select.select([self.socket], [], [], timeout)
                if readable:
                    message = self.socket.recv(1 << 16)
                    self.ready = bool(message) and json.loads(message).get("ready") is True
        return self.ready

    def ask(self, request: dict, fds: tuple[int, ...] = (), reply: bool = True) -> dict:
        data = json.dumps({**request, "reply": reply}).encode("utf-8")
        with self.lock:
            if fds:
                socket.send_fds(self.socket, [data], list(fds))
            else:
                self.socket.send(data)
            if not reply:
                return {}
            answer = self.socket.recv(1 << 20)
            while answer and not self.ready and json.loads(answer).get("ready") is True:
                self.ready = True
                answer = self.socket.recv(1 << 20)
        if not answer:
            raise OSError("the fork server exited")
        return json.loads(answer)

    def close(self) -> None:
        self.socket.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


# Submission modules that use torch: the pipeline modules import it at the
# top, and moe's given helper imports it on first use. A worker for a check
# that imports one of them is forked from the server with torch loaded.
TORCH_MODULES = frozenset({"moe", "pipeline_runtime", "pipeline_launch"})
# Seconds such a worker waits for that server to finish its warm-up.
TORCH_WAIT_S = 60.0


class ForkServer:
    """Clean processes that fork sandboxed workers on request.

    Starting Python and importing numpy and torch takes one to three seconds,
    and torch's first forward and backward pass about one more; forking a
    process that has done both takes milliseconds. Two servers
    (``_sandbox_child.py --fork-server``) start side by side: a light one
    with numpy only, ready at once, and a full one that imports torch and
    runs a tiny training step first. Workers come from the full one as soon
    as it is ready. Neither runs submission code: each forked child sets its
    own session, limits and user before it loads the submission. Both are
    child subreapers, so processes that escape their worker's session end up
    as their children and die when the worker is released.
    """

    def __init__(self) -> None:
        self.owner = os.getpid()
        self._cwd = tempfile.TemporaryDirectory(prefix="pplab-forkserver-")
        self._full = _ServerProcess(preload=True, cwd=self._cwd.name)
        self._light = _ServerProcess(preload=False, cwd=self._cwd.name)
        self.process = self._full.process
        self.processes = (self._full.process, self._light.process)
        self._spawned_by: dict[int, _ServerProcess] = {}
        self._uid_counter = 0
        self._user_chosen = False
        self._user: tuple[int, int] | None = None
        self._namespaces = False
        self._user_note = ""

    # The user and namespaces are chosen on first use, so creating the
    # object does not wait for the light server to answer a probe.

    def _ensure_user(self) -> None:
        if not self._user_chosen:
            self._user_chosen = True
            self._user = self._choose_user()

    @property
    def user(self) -> tuple[int, int] | None:
        self._ensure_user()
        return self._user

    @property
    def namespaces(self) -> bool:
        self._ensure_user()
        return self._namespaces

    @property
    def user_note(self) -> str:
        self._ensure_user()
        return self._user_note

    def _ask(self, request: dict, fds: tuple[int, ...] = ()) -> dict:
        return self._light.ask(request, fds)

    def _choose_user(self) -> tuple[int, int] | None:
        """Pick the user (and, as root, the namespaces) workers run with.

        As root, each worker gets private mount, network and pid namespaces
        (the grader's folders and /tmp hidden, loopback only, no other
        processes visible) and runs as an unprivileged uid of its own with
        only the right to read files. Where namespaces are unavailable (a
        container without CAP_SYS_ADMIN), workers drop root only when an
        unprivileged user can read the Python installation, and otherwise
        stay root. The report records which case applied.
        ``PPLAB_SANDBOX_USER=keep`` never switches user; ``PPLAB_SANDBOX_USER=nobody``
        switches without namespaces and without checking first.
        """
        choice = os.environ.get("PPLAB_SANDBOX_USER", "auto")
        if os.geteuid() != 0 or choice == "keep":
            self._user_note = f"uid {os.geteuid()} (the grader's own user)"
            return None
        if choice == "nobody":
            self._user_note = "an unprivileged uid per worker"
            return UNPRIVILEGED
        import numpy

        readable = [sys.executable, os.path.dirname(os.__file__), os.path.dirname(numpy.__file__)]
        problem = self._ask({"op": "probe_namespaces", "hide": hidden_paths(), "keep": kept_paths(),
                             "user": list(UNPRIVILEGED), "paths": readable})["problem"]
        if problem is None:
            self._namespaces = True
            self._user_note = ("an unprivileged uid per worker, in private mount, network and pid "
                              "namespaces")
            return UNPRIVILEGED
        logger.info("worker namespaces unavailable: %s", problem)
        unreadable = self._ask({"op": "probe", "uid": UNPRIVILEGED[0], "gid": UNPRIVILEGED[1],
                                "paths": readable + [str(CHILD_SCRIPT), tempfile.gettempdir()]})["unreadable"]
        if unreadable:
            self._user_note = (f"uid 0 (root), no namespaces ({problem}); user {UNPRIVILEGED[0]} "
                              f"cannot read {', '.join(unreadable)}; see docs/isolation.md")
            logger.info("sandboxed workers run as %s", self.user_note)
            return None
        self._user_note = f"an unprivileged uid per worker, no namespaces ({problem})"
        return UNPRIVILEGED

    def worker_user(self) -> tuple[int, int] | None:
        """Return the uid/gid for the next worker: a fresh unused uid each time once root is dropped.

        Separate uids keep concurrent workers from signalling each other or
        touching each other's files, and make RLIMIT_NPROC count one
        worker's processes only. The uids have no account; the kernel needs none.
        """
        if self.user is None:
            return None
        self._uid_counter = (self._uid_counter + 1) % WORKER_UID_SPAN
        uid = WORKER_UID_BASE + (os.getpid() * 7919 + self._uid_counter) % WORKER_UID_SPAN
        return uid, uid

    def alive(self) -> bool:
        return self.owner == os.getpid() and all(p.poll() is None for p in self.processes)

    def torch_ready(self) -> bool:
        """Return whether the server with torch loaded can fork workers yet."""
        return self._full.poll_ready()

    def spawn(self, fd_in: int, fd_out: int, needs_torch: bool = False, **request: Any) -> int:
        """Fork a worker that serves ``fd_in``/``fd_out``; return its pid.

        A worker whose submission code imports torch (``needs_torch``) waits
        up to ``TORCH_WAIT_S`` for the server that has torch loaded, since
        importing torch again in the worker costs more than the rest of that
        server's warm-up. Other workers take whichever server is ready.
        """
        ready = self._full.poll_ready(TORCH_WAIT_S if needs_torch else 0.0)
        server = self._full if ready else self._light
        pid = int(server.ask({"op": "spawn", **request}, (fd_in, fd_out))["pid"])
        self._spawned_by[pid] = server
        return pid

    def status(self, pid: int, timeout: float) -> int | None:
        """Exit status of worker ``pid`` (negative: killed by that signal), or None while it runs."""
        try:
            return self._spawned_by[pid].ask({"op": "status", "pid": pid, "timeout": timeout})["status"]
        except (OSError, KeyError):
            return None

    def release(self, pid: int) -> None:
        """Have the server reap worker ``pid`` (already killed) and kill whatever escaped from it.

        The grader does not wait: the server does this while the next check runs.
        """
        server = self._spawned_by.pop(pid, None)
        if server is None:
            return
        try:
            server.ask({"op": "release", "pid": pid}, reply=False)
        except OSError:
            pass

    def close(self) -> None:
        for server in (self._full, self._light):
            server.close()
        self._cwd.cleanup()


_FORK_SERVER: ForkServer | None = None
_FORK_SERVER_LOCK = threading.Lock()


def fork_server() -> ForkServer | None:
    """Return the process-wide fork server, started on first use, or None where workers are spawned.

    Set ``PPLAB_SANDBOX=spawn`` to start every worker as a new Python
    process (slower, no shared imports).
    """
    global _FORK_SERVER
    if os.environ.get("PPLAB_SANDBOX", "fork") == "spawn" or not hasattr(socket, "send_fds"):
        return None
    with _FORK_SERVER_LOCK:
        if _FORK_SERVER is None or not _FORK_SERVER.alive():
            _FORK_SERVER = ForkServer()
            atexit.register(_FORK_SERVER.close)
        return _FORK_SERVER


def describe_isolation() -> str:
    """Describe in one line for reports how workers start and which user they run as."""
    server = fork_server()
    if server is None:
        return f"a new Python process per check, uid {os.geteuid()}"
    return f"forked per check from a clean server, {server.user_note}"


class _ForkedProcess:
    """The part of ``subprocess.Popen``'s interface the worker uses, for a forked worker."""

    def __init__(self, server: ForkServer, pid: int):
        self.server = server
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.server.status(self.pid, 0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = self.server.status(self.pid, 10 if timeout is None else timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired("worker", timeout or 0)
        return self.returncode


def _give_to(path: Path, user: tuple[int, int] | None) -> None:
    """Make ``path`` and everything under it belong to ``user`` (no-op for None)."""
    if user is None:
        return
    for item in [path, *path.rglob("*")]:
        os.chown(item, *user)


class Worker:
    """One sandboxed process running a submission; use as a context manager."""

    def __init__(self, submission: Path, limits: Limits = Limits(),
                 import_failures: dict[str, SubmissionAborted] | None = None, needs_torch: bool = False):
        """Start a worker for ``submission``. Pass ``needs_torch`` when the code it will run imports torch."""
        self.limits = limits
        self.call_timeout = limits.call_timeout
        # Shared by the workers of one grading run: a module that failed to
        # import fails at once in later checks instead of timing out again.
        self.import_failures = {} if import_failures is None else import_failures
        self._tmp = tempfile.TemporaryDirectory(prefix="pplab-worker-")
        root = Path(self._tmp.name)
        self.package_dir = root / "exercises"
        copy_submission(Path(submission), self.package_dir)
        self.home = root / "home"
        self.home.mkdir()
        self._stdout_path = root / "stdout.txt"
        self._stderr_path = root / "stderr.txt"
        self.blocked_imports: set[str] = set()
        self.dead_reason: SubmissionAborted | None = None

        request_read, self._request_write = os.pipe()
        self._response_read, response_write = os.pipe()
        try:
            server = fork_server()
            if server is not None:
                main_script = root / "worker_main.py"
                shutil.copyfile(CHILD_SCRIPT, main_script)
                user = server.worker_user()
                _give_to(root, user)
                pid = server.spawn(
                    request_read, response_write, needs_torch=needs_torch, submission_dir=str(self.package_dir),
                    home=str(self.home), stdout=str(self._stdout_path), stderr=str(self._stderr_path),
                    limits=_limits_dict(limits), env={**_worker_environment(), "HOME": str(self.home)},
                    user=user, namespaces=server.namespaces, hide=hidden_paths(),
                    keep=kept_paths(root), main_script=str(main_script),
                )
                self.process = _ForkedProcess(server, pid)
            else:
                with open(self._stdout_path, "wb") as out, open(self._stderr_path, "wb") as err:
                    self.process = subprocess.Popen(
                        [sys.executable, "-I", "-u", str(CHILD_SCRIPT), str(self.package_dir),
                         str(request_read), str(response_write)],
                        stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                        pass_fds=(request_read, response_write),
                        cwd=self.home, env={**_worker_environment(), "HOME": str(self.home)},
                        preexec_fn=lambda: child.apply_limits(_limits_dict(limits)),
                    )
        finally:
            os.close(request_read)
            os.close(response_write)

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill the worker's whole process group (and anything that escaped it) and remove its files."""
        if self.process.poll() is None:
            self._kill()
        else:
            self._kill_group()
        if isinstance(self.process, _ForkedProcess):
            self.process.server.release(self.process.pid)
        for fd in (self._request_write, self._response_read):
            try:
                os.close(fd)
            except OSError:
                pass
        self._tmp.cleanup()

    def _kill_group(self) -> None:
        # The worker may not have started its own session yet: kill it by pid too.
        for kill in (os.killpg, os.kill):
            try:
                kill(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def _kill(self) -> None:
        self._kill_group()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            logger.warning("worker %s did not exit after SIGKILL", self.process.pid)

    def output_tail(self) -> str:
        """Return the end of what the submission printed to stdout and stderr."""
        parts = []
        for label, path in (("stdout", self._stdout_path), ("stderr", self._stderr_path)):
            try:
                with open(path, "rb") as handle:
                    handle.seek(0, os.SEEK_END)
                    size = handle.tell()
                    handle.seek(max(0, size - OUTPUT_TAIL_BYTES))
                    text = handle.read().decode("utf-8", "replace").strip()
            except OSError:
                continue
            if text:
                parts.append(f"[{label}] {text}")
        return "\n".join(parts)

    # --- requests -----------------------------------------------------------

    def import_module(self, module: str) -> None:
        """Import ``exercises.<module>`` in the worker, or raise SubmissionAborted."""
        if module in self.import_failures:
            raise self.import_failures[module]
        try:
            self._request({"op": "import", "module": module}, self.limits.import_timeout,
                          f"importing {module}.py")
        except SubmissionAborted as failure:
            if failure.kind in ("timeout", "crashed", "import_error", "forbidden_import"):
                self.import_failures[module] = failure
            raise

    def call(self, module: str, function: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``exercises.<module>.<function>(*args, **kwargs)`` and return its decoded value."""
        arguments = ", ".join([_short_repr(a) for a in args]
                              + [f"{k}={_short_repr(v)}" for k, v in kwargs.items()])
        label = f"{function}({arguments})"
        request = {"op": "call", "module": module, "function": function,
                   "args": encode_argument(list(args)), "kwargs": encode_argument(dict(kwargs))}
        return self._request(request, self.call_timeout, label)

    def _request(self, request: dict, timeout: float, label: str) -> Any:
        if self.dead_reason is not None:
            raise self.dead_reason
        data = json.dumps(request).encode("utf-8")
        try:
            os.write(self._request_write, struct.pack(">I", len(data)) + data)
        except (BrokenPipeError, OSError):
            self._abort("crashed", f"the worker process had exited before {label}" + self._exit_detail())
        response = self._read_response(timeout, label)

        blocked = response.get("blocked_imports") or []
        self.blocked_imports.update(str(name) for name in blocked)
        if response.get("ok"):
            return decode_value(response.get("value"))

        error = str(response.get("error", "Exception"))
        mro = [str(name) for name in response.get("mro", [error])]
        message = str(response.get("message", ""))
        trace = str(response.get("traceback", ""))
        if "NotImplementedError" in mro:
            self._abort("not_implemented", f"{label} is not implemented yet (it raised NotImplementedError)")
        if error == "MissingFunction":
            self._abort("missing", message)
        if request["op"] == "import":
            if self.blocked_imports:
                self._abort("forbidden_import",
                            f"{label} failed: the submission imports {', '.join(sorted(self.blocked_imports))}, "
                            "which submissions may not use")
            self._abort("import_error", f"{label} failed with {error}: {message}\n{trace}".rstrip())
        if error == "OSError" and "File too large" in message:
            self._abort("bad_output", f"{label} wrote more than {self.limits.file_size // 2**20} MiB "
                                      "(printed output counts); remove debug prints")
        if "BlockingIOError" in mro and "temporarily unavailable" in message.lower():
            self._abort("crashed", f"{label} could not start another process or thread: the worker may "
                                   f"run at most {self.limits.processes} (raised {error}: {message})")
        if error in ("SystemExit", "KeyboardInterrupt"):
            self._abort("crashed", f"{label} raised {error} ({message or 'no message'}); "
                                   "submissions must return values, not exit")
        raise LearnerRaised(error, mro, message, trace, label)

    def _read_response(self, timeout: float, label: str) -> dict:
        deadline = time.monotonic() + timeout
        header = self._read_exact(4, deadline, label)
        size = struct.unpack(">I", header)[0]
        if size > MAX_RESPONSE_BYTES:
            self._abort("bad_output", f"{label} returned {size} bytes of data, more than the "
                                      f"{MAX_RESPONSE_BYTES} allowed")
        body = self._read_exact(size, deadline, label)
        try:
            response = json.loads(body)
        except ValueError:
            self._abort("bad_output", f"{label} sent a malformed response")
        if not isinstance(response, dict):
            self._abort("bad_output", f"{label} sent a malformed response")
        return response

    def _read_exact(self, size: int, deadline: float, label: str) -> bytes:
        chunks = []
        while size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._abort("timeout", f"{label} timed out after {self._timeout_for(label):g} s "
                                       "(an endless loop, or far too slow)")
            readable, _, _ = select.select([self._response_read], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(self._response_read, min(size, 1 << 20))
            if not chunk:
                self._abort("crashed", f"the worker process exited during {label}" + self._exit_detail())
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def _timeout_for(self, label: str) -> float:
        return self.limits.import_timeout if label.startswith("importing") else self.call_timeout

    def _exit_detail(self) -> str:
        try:
            code = self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return ""
        if code < 0:
            name = signal.Signals(-code).name
            hint = {"SIGKILL": " (killed: memory or CPU limit?)", "SIGXCPU": " (CPU time limit)",
                    "SIGXFSZ": " (output or file size limit)", "SIGSEGV": " (segmentation fault)"}
            return f" (killed by {name}{hint.get(name, '')})"
        return f" (exit status {code}: os._exit() or a crash)"

    def _abort(self, kind: str, message: str) -> None:
        self._kill()
        self.dead_reason = SubmissionAborted(kind, message)
        raise self.dead_reason
