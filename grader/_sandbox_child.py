"""Worker process that runs a submission's code for the grader.

This file runs as a script (``python -I _sandbox_child.py SUBMISSION FD_IN FD_OUT``)
and imports nothing from pplab: the grader package and the reference
solutions must stay out of the process that runs untrusted code. It reads
length-prefixed JSON requests from ``FD_IN``, runs them against the
submission (loaded as the package ``exercises``), and writes length-prefixed
JSON responses to ``FD_OUT``. Values cross the boundary as plain data only
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


def _describe_exception(error):
    frames = traceback.extract_tb(error.__traceback__)
    # Keep the frames from the submission, the ones a learner can act on.
    mine = [f for f in frames if os.path.abspath(f.filename) != os.path.abspath(__file__)
            and not f.filename.startswith("<frozen")]
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


def main():
    submission_dir, fd_in, fd_out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
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


if __name__ == "__main__":
    main()
elif __name__ == "__mp_main__" and os.environ.get(SUBMISSION_ENV):
    _scrub_import_path(SubmissionImportGuard(os.environ[SUBMISSION_ENV]))
