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

import base64
import io
import json
import logging
import os
import resource
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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
    """Show an argument in a message: a spec by its type and name, anything long cut short."""
    if isinstance(value, tuple) and hasattr(value, "_fields") and "name" in value._fields:
        return f"{type(value).__name__}({getattr(value, 'name')!r})"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _set_limits(limits: Limits) -> None:
    os.setsid()
    if limits.address_space is not None:
        resource.setrlimit(resource.RLIMIT_AS, (limits.address_space, limits.address_space))
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 5))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_size, limits.file_size))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))
    except (ValueError, OSError):
        pass


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


class Worker:
    """One sandboxed process running a submission; use as a context manager."""

    def __init__(self, submission: Path, limits: Limits = Limits(),
                 import_failures: dict[str, SubmissionAborted] | None = None):
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
        with open(self._stdout_path, "wb") as out, open(self._stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-I", "-u", str(CHILD_SCRIPT), str(self.package_dir),
                 str(request_read), str(response_write)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                pass_fds=(request_read, response_write),
                cwd=self.home, env=_worker_environment(),
                preexec_fn=lambda: _set_limits(limits),
            )
        os.close(request_read)
        os.close(response_write)

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill the worker's whole process group and remove its files."""
        if self.process.poll() is None:
            self._kill()
        else:
            self._kill_group()
        for fd in (self._request_write, self._response_read):
            try:
                os.close(fd)
            except OSError:
                pass
        self._tmp.cleanup()

    def _kill_group(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
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
        shown = ", ".join([_short_repr(a) for a in args if not isinstance(a, (list, np.ndarray))]
                          + [f"{k}={_short_repr(v)}" for k, v in kwargs.items()
                             if not isinstance(v, (list, np.ndarray))])
        label = f"{function}({shown})"
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
