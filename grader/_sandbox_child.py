"""Worker process that runs a submission's code for the grader.

This file runs as a script and imports nothing from pplab: the grader
package and the reference solutions must stay out of the process that runs
untrusted code. It runs in one of two ways:

- ``python -I -u _sandbox_child.py SUBMISSION FD_IN FD_OUT`` serves one
  worker directly;
- ``python -I -u _sandbox_child.py --fork-server CONTROL_FD [--preload]``
  imports numpy (and with ``--preload`` torch, warmed up) once and forks a
  worker per request (see :func:`fork_server`), which is how the grader
  normally starts workers.

A worker reads length-prefixed JSON requests from ``FD_IN``, runs them
against the submission (loaded as the package ``exercises``), and writes
length-prefixed JSON responses to ``FD_OUT``. Values cross the boundary as plain data only
(JSON, with arrays as ``.npy`` bytes loaded with ``allow_pickle=False``).
"""

import base64
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import io
import json
import os
import struct
import sys
import traceback
from collections import namedtuple

BLOCKED_PACKAGES = ("reference", "grader", "pplab")
PACKAGE = "exercises"
MAX_DEPTH = 64

class SubmissionImportGuard(importlib.abc.MetaPathFinder):
    """Load ``exercises.*`` from the submission and reject grader-side packages."""

    def __init__(self, submission_dir):
        self.submission_dir = submission_dir
        self.blocked_attempts = []

    def find_spec(self, fullname, path=None, target=None):
        top = fullname.partition(".")[0]
        if top in BLOCKED_PACKAGES:
            self.blocked_attempts.append(fullname)
            raise ImportError(
                f"submissions may not import {fullname!r}: the grader runs your "
                "code without the reference solutions and without the grader"
            )
        if top != PACKAGE:
            return None
        if fullname == PACKAGE:
            init = os.path.join(self.submission_dir, "__init__.py")
            if not os.path.exists(init):
                init = None
            return importlib.util.spec_from_file_location(
                PACKAGE, init, submodule_search_locations=[self.submission_dir],
                loader=None if init else _EmptyPackageLoader(),
            )
        parts = fullname.split(".")
        if len(parts) != 2:
            return None
        module_path = os.path.join(self.submission_dir, parts[1] + ".py")
        if not os.path.isfile(module_path):
            return None
        return importlib.util.spec_from_file_location(fullname, module_path)


class _EmptyPackageLoader(importlib.abc.Loader):
    def create_module(self, spec):
        return None

    def exec_module(self, module):
        module.__path__ = list(module.__spec__.submodule_search_locations)


def _scrub_import_path(guard):
    # Drop path entries and editable-install finders that expose the
    # grader or reference packages, then put the guard first.
    def exposes_grader(entry):
        return any(os.path.isdir(os.path.join(entry, name)) and
                   os.path.isfile(os.path.join(entry, name, "__init__.py"))
                   for name in ("reference", "grader"))

    sys.path[:] = [p for p in sys.path if p and not exposes_grader(p)]
    sys.meta_path[:] = [f for f in sys.meta_path
                        if "editable" not in type(f).__module__.lower()
                        and "editable" not in getattr(f, "__name__", "").lower()]
    sys.meta_path.insert(0, guard)
    for name in list(sys.modules):
        if name.partition(".")[0] in BLOCKED_PACKAGES + (PACKAGE,):
            del sys.modules[name]


# --- plain-data encoding ---------------------------------------------------

def _encode_array(array):
    buffer = io.BytesIO()
    import numpy

    numpy.save(buffer, numpy.ascontiguousarray(array), allow_pickle=False)
    return {"__type__": "ndarray", "npy": base64.b64encode(buffer.getvalue()).decode("ascii")}


def encode(value, depth=0):
    """Turn a return value into JSON-ready plain data; unknown types are tagged."""
    if depth > MAX_DEPTH:
        return {"__type__": "unsupported", "name": "structure nested too deeply"}
    kind = type(value)
    if value is None or kind in (bool, int, str, float):
        return value
    module = getattr(kind, "__module__", "") or ""
    if module == "numpy" or module.startswith("numpy."):
        if kind.__name__ == "ndarray":
            if value.dtype.hasobject:
                return {"__type__": "unsupported", "name": "numpy array of Python objects"}
            return _encode_array(value)
        if hasattr(value, "item") and hasattr(value, "dtype") and not value.dtype.hasobject:
            return encode(value.item(), depth + 1)
    if module.startswith("torch") and kind.__name__ in ("Tensor", "Parameter"):
        return _encode_array(value.detach().cpu().numpy())
    if isinstance(value, tuple) and hasattr(kind, "_fields"):
        fields = {}
        for name in kind._fields:
            fields[str(name)] = encode(tuple.__getitem__(value, kind._fields.index(name)), depth + 1)
        return {"__type__": "namedtuple", "name": kind.__name__, "fields": fields}
    if kind in (list, tuple):
        return [encode(item, depth + 1) for item in list.__iter__(value)] if kind is list \
            else [encode(item, depth + 1) for item in tuple.__iter__(value)]
    if kind is dict:
        items = [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in dict.items(value)]
        return {"__type__": "dict", "items": items}
    return {"__type__": "unsupported", "name": f"{module}.{kind.__qualname__}"}


def decode(value, namespace):
    """Turn request arguments into Python values for the submission.

    A named tuple becomes the class of the same name in ``namespace`` (the
    called module) when that class has the same fields, so submissions get
    their own ``Action`` or ``ModelSpec``; otherwise a plain named tuple.
    """
    if isinstance(value, list):
        return [decode(item, namespace) for item in value]
    if isinstance(value, dict):
        tag = value.get("__type__")
        if tag == "namedtuple":
            fields = {name: decode(item, namespace) for name, item in value["fields"].items()}
            cls = getattr(namespace, value["name"], None)
            if not (isinstance(cls, type) and issubclass(cls, tuple)
                    and tuple(getattr(cls, "_fields", ())) == tuple(fields)):
                cls = namedtuple(value["name"], list(fields))
            return cls(**fields)
        if tag == "tuple":
            return tuple(decode(item, namespace) for item in value["items"])
        if tag == "ndarray":
            import numpy

            raw = base64.b64decode(value["npy"])
            return numpy.load(io.BytesIO(raw), allow_pickle=False)
        if tag == "dict":
            return {decode(k, namespace): decode(v, namespace) for k, v in value["items"]}
        raise ValueError(f"unknown argument tag {tag!r}")
    return value


# --- protocol ---------------------------------------------------------------

def _read_exact(fd, size):
    chunks = []
    while size:
        chunk = os.read(fd, size)
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _send(fd, message):
    data = json.dumps(message).encode("utf-8")
    payload = struct.pack(">I", len(data)) + data
    view = memoryview(payload)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _is_machinery(filename):
    """Return whether a traceback frame's file is this worker or Python's import system."""
    if filename.startswith("<frozen"):
        return True
    # A forked worker runs this file's code under its original name, an
    # exec'd one under the copy's name (worker_main.py).
    path = os.path.abspath(filename)
    return (os.path.basename(path) in ("_sandbox_child.py", "worker_main.py", os.path.basename(__file__))
            or os.path.dirname(path) == os.path.dirname(os.path.abspath(importlib.__file__)))


def _learner_frames(frames):
    """Return the traceback frames a learner can act on.

    From the first frame in the submission's folder on (the grader's request
    dispatch and the import system come before it), or, when no frame is in
    the submission (a syntax error, say), every frame outside that machinery.
    """
    root = os.environ.get(SUBMISSION_ENV)
    if root:
        root = os.path.abspath(root) + os.sep
        for index, frame in enumerate(frames):
            if os.path.abspath(frame.filename).startswith(root):
                return frames[index:]
    return [frame for frame in frames if not _is_machinery(frame.filename)]


def _describe_exception(error):
    mine = _learner_frames(traceback.extract_tb(error.__traceback__))
    message = str(error)[:4000]
    if isinstance(error, SyntaxError) and error.filename:
        pointer = " " * max(0, (error.offset or 1) - 1) + "^"
        message = (f"{os.path.basename(error.filename)}, line {error.lineno}: {error.msg}\n"
                   f"    {(error.text or '').rstrip()}\n    {pointer}")
    return {
        "ok": False,
        "error": type(error).__name__,
        "mro": [cls.__name__ for cls in type(error).__mro__],
        "message": message,
        "traceback": "".join(traceback.format_list(mine[-6:]))[-4000:],
    }


def _handle(request, guard):
    op = request.get("op")
    module_name = f"{PACKAGE}.{request['module']}"
    module = importlib.import_module(module_name)
    if op == "import":
        return {"ok": True, "value": None}
    function = getattr(module, request["function"], None)
    if function is None or not callable(function):
        return {"ok": False, "error": "MissingFunction", "mro": ["MissingFunction"],
                "message": f"{request['module']}.py has no function {request['function']}()",
                "traceback": ""}
    args = decode(request.get("args", []), module)
    kwargs = decode(request.get("kwargs", {"__type__": "dict", "items": []}), module)
    result = function(*args, **kwargs)
    return {"ok": True, "value": encode(result)}


SUBMISSION_ENV = "PPLAB_SUBMISSION_DIR"


def serve(submission_dir, fd_in, fd_out):
    """Read requests from ``fd_in`` and write responses to ``fd_out`` until the grader closes it."""
    # Processes the submission spawns (multiprocessing's "spawn" re-imports
    # this file as __mp_main__) install the same guard from this variable.
    os.environ[SUBMISSION_ENV] = submission_dir
    guard = SubmissionImportGuard(submission_dir)
    _scrub_import_path(guard)
    sys.argv[:] = ["submission"]

    while True:
        header = _read_exact(fd_in, 4)
        if header is None:
            return
        body = _read_exact(fd_in, struct.unpack(">I", header)[0])
        if body is None:
            return
        request = json.loads(body)
        try:
            response = _handle(request, guard)
        except BaseException as error:  # SystemExit and KeyboardInterrupt from the submission too
            response = _describe_exception(error)
        if guard.blocked_attempts:
            response["blocked_imports"] = sorted(set(guard.blocked_attempts))
        try:
            _send(fd_out, response)
        except (TypeError, ValueError) as error:
            _send(fd_out, {"ok": False, "error": "BadOutput", "mro": ["BadOutput"],
                           "message": f"the return value could not be sent: {error}",
                           "traceback": ""})


# --- limits and privileges --------------------------------------------------

def apply_limits(limits):
    """Start a new session and set the rlimits named in ``limits`` (a dict of ints or None)."""
    import resource

    os.setsid()
    if limits.get("address_space") is not None:
        resource.setrlimit(resource.RLIMIT_AS, (limits["address_space"], limits["address_space"]))
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_seconds"], limits["cpu_seconds"] + 5))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_size"], limits["file_size"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:
        resource.setrlimit(resource.RLIMIT_NPROC, (limits["processes"], limits["processes"]))
    except (ValueError, OSError):
        pass


def drop_privileges(uid, gid):
    """Become ``uid``/``gid`` with no supplementary groups (only possible as root)."""
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


def _read_all(fd):
    """Read ``fd`` to its end, close it and return the bytes."""
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def probe_user(uid, gid, paths):
    """Return the paths in ``paths`` that ``uid`` cannot read, from a throwaway child."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 0
        try:
            os.close(read_fd)
            drop_privileges(uid, gid)
            missing = [path for path in paths if not os.access(path, os.R_OK)]
            os.write(write_fd, json.dumps(missing).encode("utf-8"))
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(write_fd)
    data = _read_all(read_fd)
    _, status = os.waitpid(pid, 0)
    if status != 0 or not data:
        return list(paths)
    return json.loads(data)


# --- namespaces (root only) ---------------------------------------------------

# Linux constants, from <sched.h>, <sys/mount.h>, <sys/prctl.h>,
# <linux/capability.h> and <linux/sockios.h>.
CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x8, 0x1000, 0x4000, 1 << 18
PR_SET_PDEATHSIG, PR_SET_KEEPCAPS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE = 1, 8, 47, 2
CAP_DAC_READ_SEARCH = 2
LINUX_CAPABILITY_VERSION_3 = 0x20080522
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


def _libc():
    import ctypes

    return ctypes, ctypes.CDLL(None, use_errno=True)


def _check(result, what):
    if result != 0:
        import ctypes

        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def _mount(source, target, fstype, flags, data=None):
    ctypes, libc = _libc()
    encode = (lambda text: None if text is None else text.encode())
    _check(libc.mount(encode(source), encode(target), encode(fstype), ctypes.c_ulong(flags), encode(data)),
           f"mount {target}")


def _loopback_up():
    import fcntl
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock.fileno(), SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))


def enter_namespaces():
    """Move into new mount, network and pid namespaces; return in the pid-1 child.

    The calling process stays behind as a proxy: it waits for the child and
    exits the way the child did, so the grader gets the worker's real exit
    status. The child dies with the proxy (PDEATHSIG), and everything it
    starts dies with it, because it is pid 1 of its namespace.
    """
    ctypes, libc = _libc()
    _check(libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID), "unshare")
    pid = os.fork()
    if pid:
        import signal

        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for fd in range(3, 256):
            try:
                os.close(fd)
            except OSError:
                pass
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
            os.kill(os.getpid(), os.WTERMSIG(status))
        os._exit(os.WEXITSTATUS(status))
    _check(libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0), "prctl PDEATHSIG")


def hide_paths(hide, keep):
    """Cover each folder in ``hide`` with an empty tmpfs, leaving the paths in ``keep`` reachable.

    Runs inside a private mount namespace, so nothing changes for other
    processes. ``/proc`` is mounted again for the new pid namespace, so the
    worker lists only its own processes.
    """
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    reopened = [(path, os.open(path, os.O_PATH)) for path in keep if os.path.exists(path)]
    for path in sorted(hide, key=len):
        if os.path.isdir(path):
            _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "size=256m,mode=1777")
    for path, fd in reopened:
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            os.makedirs(path, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "a").close()
        _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
        os.close(fd)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _loopback_up()


def drop_to_reader(uid, gid):
    """Become ``uid``/``gid`` but keep CAP_DAC_READ_SEARCH, also across exec.

    The worker can then read the Python installation wherever it lives
    (even under a root-only home) while the kernel treats it as an ordinary
    user: no writes to other users' files, no signals to their processes,
    and RLIMIT_NPROC applies.
    """
    ctypes, libc = _libc()

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    _check(libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0), "prctl KEEPCAPS")
    drop_privileges(uid, gid)
    bit = 1 << CAP_DAC_READ_SEARCH
    data = (Data * 2)(Data(bit, bit, bit), Data(0, 0, 0))
    _check(libc.capset(ctypes.byref(Header(LINUX_CAPABILITY_VERSION_3, 0)), data), "capset")
    _check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_DAC_READ_SEARCH, 0, 0), "prctl AMBIENT")


def _can_read(path):
    # Not os.access(): it ignores capabilities for a non-root real uid.
    try:
        if os.path.isdir(path):
            os.listdir(path)
        else:
            os.close(os.open(path, os.O_RDONLY))
    except OSError:
        return False
    return True


def probe_namespaces(request):
    """Try the whole isolation sequence in a throwaway child; return None or why it failed."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            enter_namespaces()
            hide_paths(request["hide"], request["keep"])
            drop_to_reader(*request["user"])
            unreadable = [path for path in request["paths"] if not _can_read(path)]
            message = f"cannot read {', '.join(unreadable)}" if unreadable else ""
        except BaseException as error:
            message = f"{type(error).__name__}: {error}"
        try:
            os.write(write_fd, (message or "ok").encode("utf-8"))
        finally:
            os._exit(0)
    os.close(write_fd)
    data = _read_all(read_fd)
    os.waitpid(pid, 0)
    text = data.decode("utf-8", "replace")
    return None if text == "ok" else (text or "the probe died")


# --- fork server --------------------------------------------------------------

# The grader starts this file once with --fork-server. That process never
# runs submission code: it imports the heavy, trusted libraries once and
# forks one child per worker, which sets its own limits and only then loads
# the submission. Children that escape their session (a double fork, a
# setsid daemon) are re-parented to it, because it is a child subreaper, and
# it kills them when their worker is released.

PR_SET_CHILD_SUBREAPER = 36


def _become_subreaper():
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _children():
    """Pids of this process's live children, from /proc (Linux)."""
    me = os.getpid()
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read().decode("ascii", "replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == me and fields[0] != "Z":
            found.append(int(entry))
    return found


def _exit_code(status):
    """Turn a waitpid status into subprocess's convention (negative signal numbers)."""
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _become_worker(request, fds, control):
    status = 0
    try:
        control.close()
        fd_in, fd_out = fds
        import signal

        signal.signal(signal.SIGINT, signal.default_int_handler)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for target, path in ((1, request["stdout"]), (2, request["stderr"])):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(fd, target)
            os.close(fd)
        if request.get("namespaces"):
            enter_namespaces()
            hide_paths(request["hide"], request["keep"])
        # multiprocessing's "spawn" re-runs the main script by path; point it
        # at the copy next to the submission, since grader/ may be hidden.
        main_module = sys.modules.get("__main__")
        if main_module is not None and request.get("main_script"):
            main_module.__file__ = request["main_script"]
        apply_limits(request["limits"])
        if request.get("user") is not None:
            if request.get("namespaces"):
                drop_to_reader(*request["user"])
            else:
                drop_privileges(*request["user"])
        os.chdir(request["home"])
        os.environ.clear()
        os.environ.update(request["env"])
        serve(request["submission_dir"], fd_in, fd_out)
    except BaseException:
        status = 70
        try:
            traceback.print_exc()
        except BaseException:
            pass
    finally:
        os._exit(status)


def _warm_up_torch():
    """Import torch and run one tiny training step, so forked workers start warm.

    torch sets up much of itself lazily on the first forward, backward and
    optimizer step, which took about a second on a 2-core machine. A child
    forked afterwards inherits that state instead of paying for it again.
    With OMP_NUM_THREADS=1 this starts no thread, so forking stays safe.
    """
    try:
        import torch
    except ImportError:
        return
    layer = torch.nn.Linear(4, 4).double()
    loss = layer(torch.ones(2, 4, dtype=torch.float64)).square().mean()
    loss.backward()
    torch.optim.SGD(layer.parameters(), lr=0.1).step()


def fork_server(control_fd, preload):
    """Serve spawn/status/release requests from the grader on a SOCK_SEQPACKET socket.

    With ``preload`` the server first imports torch and warms it up, then
    sends a ``{"ready": true}`` message.
    """
    import signal
    import socket
    import time

    importlib.import_module("numpy")
    _become_subreaper()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    control = socket.socket(fileno=control_fd)
    if preload:
        _warm_up_torch()
        control.send(json.dumps({"ready": True}).encode("utf-8"))
    statuses = {}
    workers = set()

    def reap():
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            statuses[pid] = _exit_code(status)
            workers.discard(pid)

    def kill_strays():
        # Everything still running that is not a live worker escaped its session.
        for _ in range(20):
            strays = [pid for pid in _children() if pid not in workers]
            if not strays:
                return
            for pid in strays:
                for kill in (os.killpg, os.kill):
                    try:
                        kill(pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
            time.sleep(0.01)
            reap()

    while True:
        try:
            data, fds, _, _ = socket.recv_fds(control, 1 << 20, 4)
        except OSError:
            data, fds = b"", []
        if not data:
            workers.clear()
            kill_strays()
            return
        request = json.loads(data)
        reap()
        op = request.get("op")
        if op == "spawn":
            pid = os.fork()
            if pid == 0:
                _become_worker(request, fds, control)
            for fd in fds:
                os.close(fd)
            workers.add(pid)
            reply = {"pid": pid}
        elif op == "status":
            pid = request["pid"]
            deadline = time.monotonic() + float(request.get("timeout", 0))
            while pid not in statuses and pid in workers:
                reap()
                if pid in statuses or time.monotonic() >= deadline:
                    break
                time.sleep(0.005)
            reply = {"status": statuses.get(pid)}
        elif op == "release":
            pid = request["pid"]
            deadline = time.monotonic() + 10
            while pid in workers and time.monotonic() < deadline:
                reap()
                time.sleep(0.002)
            workers.discard(pid)
            kill_strays()
            statuses.pop(pid, None)
            reply = {"released": True}
        elif op == "probe":
            reply = {"unreadable": probe_user(request["uid"], request["gid"], request["paths"])}
        elif op == "probe_namespaces":
            reply = {"problem": probe_namespaces(request)}
        else:
            reply = {"error": f"unknown op {op!r}"}
        if request.get("reply", True):
            control.send(json.dumps(reply).encode("utf-8"))


def main():
    if sys.argv[1] == "--fork-server":
        fork_server(int(sys.argv[2]), preload="--preload" in sys.argv[3:])
        return
    submission_dir, fd_in, fd_out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    serve(submission_dir, fd_in, fd_out)


if __name__ == "__main__":
    main()
elif __name__ == "__mp_main__" and os.environ.get(SUBMISSION_ENV):
    _scrub_import_path(SubmissionImportGuard(os.environ[SUBMISSION_ENV]))
