"""Golden data: what the visible checks ask the reference solutions, and what they return.

The student release has no ``reference/`` and no check sources, so its
visible checks replay recorded calls (see :mod:`grader.replay`). Recording
(``pplab golden``, instructors only) runs each visible check of the rubric
against the reference through a :class:`RecordingWorker`. The reference passes
every check, so the calls it records are exactly the derandomised inputs of
an official run, in order.

Three refinements keep replay as lenient as the official check:

- Only the fields of a named tuple that the check read are stored (a field
  the check never looks at, such as a timing, is not compared). A named
  tuple the check never indexed at all (compared with ``==``, converted with
  ``dict()``) keeps every field.
- After recording, each check runs again against the recorded responses with
  one small change at a time (the ints of one field turned into floats, the
  strings of one field replaced). Where the check still passes, replay
  accepts the same freedom.
- ``answers.exercise_3()`` is scored by lookup in a table of every
  configuration a learner is likely to return, filled in by the official
  checks themselves.

File format (``datasets/golden/visible.json``): JSON with sorted keys and
the tagged encoding of :func:`grader.sandbox.encode_argument` (arrays as
base64 ``.npy``), except that a named tuple's fields are a list of
``[name, value]`` pairs, which keeps their order.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import namedtuple
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from . import __version__
from .checking import CheckFailed
from .sandbox import LearnerRaised, Record, SubmissionAborted, Unsupported, decode_value, encode_argument

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
GOLDEN_PATH = REPO_ROOT / "datasets" / "golden" / "visible.json"
FORMAT_VERSION = 1

# Sources whose content decides the recorded data; their hash is stored, so
# a stale file is found without recording again.
# What decides the recorded calls and answers. Library versions are left out on
# purpose: another hypothesis draws other inputs, but the recorded answers stay
# right, and the replay of the reference (a test) proves it.
FINGERPRINT_GLOBS = ("reference/*.py", "grader/checks/*.py", "grader/checking.py",
                     "datasets/models/*.toml", "datasets/hardware/*.toml")

EXERCISE_3_CHECKS = ("exercise_3.valid", "exercise_3.quality")
EXERCISE_3_FIELDS = ("tp", "pp", "dp", "ep", "num_chunks")
EXERCISE_3_DEFAULTS = {"ep": 1, "num_chunks": 1}
# Configurations scored in advance: powers of two for every degree, with
# tp * pp * dp from 32 to 128 GPUs, up to 8 expert-parallel ranks and 4
# chunks per rank. A world size off by a factor of two thus still gets its
# official message. The official grader scores anything else.
EXERCISE_3_DEGREES = {"tp": (1, 2, 4, 8, 16, 32, 64), "pp": (1, 2, 4, 8, 16, 32, 64),
                      "dp": (1, 2, 4, 8, 16, 32, 64), "ep": (1, 2, 4, 8), "num_chunks": (1, 2, 4)}
EXERCISE_3_WORLD_SIZES = (32, 64, 128)

PROBE_STRING = "pplab-probe"


class GoldenError(RuntimeError):
    """Golden data cannot be recorded or read."""


# --- values -------------------------------------------------------------------

def encode_value(value: Any) -> Any:
    """Encode a decoded worker value (Record, dict, list, array, scalar) as tagged JSON.

    The inverse of :func:`grader.sandbox.decode_value`.
    """
    if isinstance(value, Record):
        return {"__type__": "namedtuple", "name": value.type_name,
                "fields": {name: encode_value(item) for name, item in dict.items(value)}}
    if isinstance(value, Unsupported):
        return {"__type__": "unsupported", "name": value.name}
    if isinstance(value, dict):
        return {"__type__": "dict", "items": [[encode_value(k), encode_value(v)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [encode_value(item) for item in value]
    return encode_argument(value)


def decode_argument(value: Any) -> Any:
    """Decode a tagged argument into the Python value that :func:`encode_argument` encodes back to it.

    Named tuples come back as instances of a class of the same name and fields.
    """
    if isinstance(value, list):
        return [decode_argument(item) for item in value]
    if not isinstance(value, dict):
        return value
    tag = value.get("__type__")
    if tag == "namedtuple":
        fields = value["fields"]
        cls = _namedtuple_class(value["name"], tuple(fields))
        return cls(**{name: decode_argument(item) for name, item in fields.items()})
    if tag == "tuple":
        return tuple(decode_argument(item) for item in value["items"])
    if tag == "dict":
        return {decode_argument(k): decode_argument(v) for k, v in value["items"]}
    if tag == "ndarray":
        return decode_value(value)
    raise GoldenError(f"unknown argument tag {tag!r} in golden data")


_CLASSES: dict[tuple[str, tuple[str, ...]], type] = {}


def _namedtuple_class(name: str, fields: tuple[str, ...]) -> type:
    key = (name, fields)
    if key not in _CLASSES:
        _CLASSES[key] = namedtuple(name, fields)
    return _CLASSES[key]


def request_key(op: str, module: str, function: str = "", args: Any = None, kwargs: Any = None) -> str:
    """Return the canonical text of one request, used to find repeated calls."""
    return json.dumps([op, module, function, args, kwargs], sort_keys=True)


# --- which fields a check reads -------------------------------------------------

class TrackedRecord(Record):
    """A Record that notes which fields the check reads (``read``)."""

    def __init__(self, type_name: str, fields: dict[str, Any]):
        super().__init__(type_name, fields)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def values(self):
        self.read.update(self.keys())
        return super().values()

    def items(self):
        self.read.update(self.keys())
        return super().items()

    def __iter__(self) -> Iterator[str]:
        # Defined so that dict(record) takes the keys() + __getitem__ path,
        # which marks every field as read.
        return super().__iter__()


def track(value: Any) -> Any:
    """Return ``value`` with every Record replaced by a TrackedRecord."""
    if isinstance(value, Record):
        return TrackedRecord(value.type_name, {k: track(v) for k, v in dict.items(value)})
    if isinstance(value, list):
        return [track(item) for item in value]
    if isinstance(value, dict):
        return {k: track(v) for k, v in value.items()}
    return value


def project(value: Any) -> Any:
    """Drop the fields of each TrackedRecord the check never read (keep all when it read none)."""
    if isinstance(value, TrackedRecord):
        names = [k for k in dict.keys(value) if k in value.read] if value.read else list(dict.keys(value))
        return Record(value.type_name, {k: project(dict.__getitem__(value, k)) for k in names})
    if isinstance(value, list):
        return [project(item) for item in value]
    if isinstance(value, dict):
        return {k: project(v) for k, v in value.items()}
    return value


# --- recording ----------------------------------------------------------------

class RecordingWorker:
    """Wrap a worker and record each request a check makes and its response, in order.

    A request repeated with the same arguments gets the first response
    again and is recorded once. ``interactions`` is ready once the check
    returned and :meth:`finish` ran.
    """

    def __init__(self, inner: Any):
        self._inner = inner
        self._timeout: float | None = None
        self._responses: dict[str, dict] = {}
        self.interactions: list[dict] = []

    @property
    def call_timeout(self) -> float:
        return self._inner.call_timeout

    @call_timeout.setter
    def call_timeout(self, seconds: float) -> None:
        self._timeout = seconds
        self._inner.call_timeout = seconds

    def output_tail(self) -> str:
        return self._inner.output_tail()

    def close(self) -> None:
        self._inner.close()

    def import_module(self, module: str) -> None:
        key = request_key("import", module)
        if key in self._responses:
            return
        self._inner.import_module(module)
        entry = {"op": "import", "module": module}
        self._responses[key] = entry
        self.interactions.append(entry)

    def call(self, module: str, function: str, *args: Any, **kwargs: Any) -> Any:
        encoded_args, encoded_kwargs = encode_argument(list(args)), encode_argument(dict(kwargs))
        key = request_key("call", module, function, encoded_args, encoded_kwargs)
        entry = self._responses.get(key)
        if entry is None:
            entry = {"op": "call", "module": module, "function": function,
                     "args": encoded_args, "kwargs": encoded_kwargs}
            if self._timeout is not None:
                entry["call_timeout"] = self._timeout
            try:
                entry["_value"] = track(self._inner.call(module, function, *args, **kwargs))
            except LearnerRaised as error:
                entry["_raised"] = error
            self._responses[key] = entry
            self.interactions.append(entry)
        if "_raised" in entry:
            raise entry["_raised"]
        return entry["_value"]

    def finish(self) -> list[dict]:
        """Return the interactions with responses encoded (only the fields read)."""
        for entry in self.interactions:
            if "_value" in entry:
                entry["returns"] = encode_value(project(entry.pop("_value")))
            elif "_raised" in entry:
                error = entry.pop("_raised")
                entry["raises"] = {"error": error.error, "mro": list(error.mro)}
        return self.interactions


class _ProbeMiss(BaseException):
    """A re-run check made a request the recording does not hold."""


class StoredAnswers:
    """A worker stand-in that returns recorded responses, optionally altered by ``transform``."""

    def __init__(self, interactions: list[dict], transform: Callable[[Any], Any] = lambda value: value):
        self.call_timeout = 0.0
        self._imports = {entry["module"] for entry in interactions if entry["op"] == "import"}
        self._calls = {request_key("call", e["module"], e["function"], e["args"], e["kwargs"]): e
                       for e in interactions if e["op"] == "call"}
        self._transform = transform

    def output_tail(self) -> str:
        return ""

    def close(self) -> None:
        pass

    def import_module(self, module: str) -> None:
        if module not in self._imports:
            raise _ProbeMiss(module)

    def call(self, module: str, function: str, *args: Any, **kwargs: Any) -> Any:
        key = request_key("call", module, function, encode_argument(list(args)), encode_argument(dict(kwargs)))
        entry = self._calls.get(key)
        if entry is None:
            raise _ProbeMiss(f"{module}.{function}")
        if "raises" in entry:
            raised = entry["raises"]
            raise LearnerRaised(raised["error"], raised["mro"], raised.get("mention", ""), "", f"{function}()")
        return self._transform(decode_value(entry["returns"]))


def _passes(body: Callable[[Any], None], worker: Any) -> bool:
    try:
        body(worker)
    except (CheckFailed, _ProbeMiss, SubmissionAborted):
        return False
    return True


def _map_values(value: Any, change: Callable[[Any, str | None], Any], field: str | None = None) -> Any:
    """Apply ``change(leaf, "Type.field")`` to every leaf of a decoded value."""
    if isinstance(value, Record):
        return Record(value.type_name, {k: _map_values(v, change, f"{value.type_name}.{k}")
                                        for k, v in dict.items(value)})
    if isinstance(value, list):
        return [_map_values(item, change, field) for item in value]
    if isinstance(value, dict):
        return {k: _map_values(v, change, field) for k, v in value.items()}
    return change(value, field)


def _leaf_fields(interactions: list[dict], wanted: Callable[[Any], bool]) -> set[str]:
    """Return the ``Type.field`` labels ("" outside any named tuple) of the wanted response leaves."""
    found: set[str] = set()

    def note(leaf: Any, field: str | None) -> Any:
        if wanted(leaf):
            found.add(field or "")
        return leaf

    for entry in interactions:
        if "returns" in entry:
            _map_values(decode_value(entry["returns"]), note)
    return found


def _altered(interactions: list[dict], field: str, wanted: Callable[[Any], bool],
             change: Callable[[Any], Any]) -> StoredAnswers:
    def alter(leaf: Any, label: str | None) -> Any:
        return change(leaf) if (label or "") == field and wanted(leaf) else leaf

    return StoredAnswers(interactions, lambda value: _map_values(value, alter))


def _is_int(value: Any) -> bool:
    return type(value) is int


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def probe_leniency(check_id: str, body: Callable[[Any], None], interactions: list[dict]) -> dict:
    """Find which freedoms the official check allows, by re-running it on altered recorded responses.

    Returns ``{"float_for_int": [...], "free_strings": [...]}``: the
    ``Type.field`` labels ("" for values outside a named tuple) where a
    float may come back for an int, and where the check does not compare
    the string (any string passes).
    """
    if not _passes(body, StoredAnswers(interactions)):
        raise GoldenError(f"{check_id} fails on its own recorded responses; the fields kept are not enough")
    float_for_int = [field for field in sorted(_leaf_fields(interactions, _is_int))
                     if _passes(body, _altered(interactions, field, _is_int, lambda leaf: leaf + 0.0))]
    free_strings = [field for field in sorted(_leaf_fields(interactions, _is_str))
                    if _passes(body, _altered(interactions, field, _is_str, lambda leaf: PROBE_STRING))]
    return {"float_for_int": float_for_int, "free_strings": free_strings}


def _invalid_argument_names() -> dict[str, str]:
    """Map each call of ``schedules.invalid_arguments`` to the argument its message must name."""
    from .checks.schedules import INVALID_ARGUMENTS

    return {request_key("call", "schedules", function, encode_argument(list(args)), encode_argument({})): name
            for function, args, name in INVALID_ARGUMENTS}


def record_check(check_id: str, make_worker: Callable[[], Any]) -> dict:
    """Run one registered check through a RecordingWorker and return its golden entry."""
    from .checking import REGISTRY

    check = REGISTRY[check_id]
    recorder = RecordingWorker(make_worker())
    try:
        check.body(recorder)
    except (CheckFailed, SubmissionAborted, LearnerRaised) as error:
        raise GoldenError(f"the reference fails {check_id}, so it cannot be recorded: {error}") from None
    finally:
        recorder.close()
    interactions = recorder.finish()

    if check_id == "schedules.invalid_arguments":
        names = _invalid_argument_names()
        for entry in interactions:
            if "raises" in entry:
                key = request_key("call", entry["module"], entry["function"], entry["args"], entry["kwargs"])
                entry["raises"]["mention"] = names[key]

    entry = {"modules": list(check.modules), "interactions": interactions}
    entry.update(probe_leniency(check_id, check.body, interactions))
    return entry


def _exercise_3_configs() -> Iterator[tuple[int, ...]]:
    for tp in EXERCISE_3_DEGREES["tp"]:
        for pp in EXERCISE_3_DEGREES["pp"]:
            for dp in EXERCISE_3_DEGREES["dp"]:
                if tp * pp * dp not in EXERCISE_3_WORLD_SIZES:
                    continue
                for ep in EXERCISE_3_DEGREES["ep"]:
                    for v in EXERCISE_3_DEGREES["num_chunks"]:
                        yield tp, pp, dp, ep, v


class _FixedAnswer:
    """A worker stand-in whose ``answers.exercise_3()`` returns one configuration."""

    call_timeout = 0.0

    def __init__(self, config: tuple[int, ...]):
        self._answer = Record("Exercise3Answer", dict(zip(EXERCISE_3_FIELDS, config)))

    def import_module(self, module: str) -> None:
        pass

    def call(self, module: str, function: str, *args: Any, **kwargs: Any) -> Any:
        return self._answer


def record_exercise_3() -> dict:
    """Score the configurations of EXERCISE_3_DEGREES with the official exercise 3 checks.

    Returns ``{"fields", "defaults", "messages", "table"}``: ``table`` maps
    ``"tp,pp,dp,ep,num_chunks"`` to ``[[credit, message index or -1], ...]``
    in the order of EXERCISE_3_CHECKS; messages are stored once each.
    """
    from .checking import REGISTRY

    messages: list[str] = []
    index: dict[str, int] = {}
    table = {}
    for config in _exercise_3_configs():
        outcomes = []
        for check_id in EXERCISE_3_CHECKS:
            try:
                REGISTRY[check_id].body(_FixedAnswer(config))
                outcomes.append([1.0, -1])
            except CheckFailed as failure:
                text = failure.message + (f"\nlikely misconception: {failure.misconception}"
                                          if failure.misconception else "")
                if text not in index:
                    index[text] = len(messages)
                    messages.append(text)
                outcomes.append([round(failure.credit, 6), index[text]])
        table[",".join(map(str, config))] = outcomes
    return {"fields": list(EXERCISE_3_FIELDS), "defaults": dict(EXERCISE_3_DEFAULTS),
            "messages": messages, "table": table}


def source_fingerprint(root: Path = REPO_ROOT) -> str:
    """Return a SHA-256 over the sources that decide the golden data."""
    digest = hashlib.sha256()
    for pattern in FINGERPRINT_GLOBS:
        for path in sorted(root.glob(pattern)):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def record(rubric=None, make_worker: Callable[[], Any] | None = None,
           progress: Callable[[str], None] | None = None) -> dict:
    """Record every visible check of ``rubric`` (default: the packaged one) and return the document.

    ``make_worker`` builds a fresh worker on the reference solutions for each
    check; the default is an in-process worker on ``reference/``.
    """
    import hypothesis

    from . import checks  # noqa: F401  (registers every check)
    from .checking import ExplorationMode, set_mode
    from .rubric import load_rubric

    rubric = rubric or load_rubric()
    if make_worker is None:
        from .inprocess import InProcessWorker

        def make_worker():
            return InProcessWorker(REPO_ROOT / "reference")

    set_mode(ExplorationMode())
    visible = [entry.id for entry in rubric.checks if entry.visibility == "visible"]
    recorded = {}
    for check_id in visible:
        if progress is not None:
            progress(check_id)
        if check_id in EXERCISE_3_CHECKS:
            recorded[check_id] = {"modules": ["answers"], "kind": "exercise_3_table"}
            continue
        recorded[check_id] = record_check(check_id, make_worker)
        recorded[check_id]["kind"] = "interactions"

    document = {
        "format": FORMAT_VERSION,
        "grader_version": __version__,
        "fingerprint": source_fingerprint(),
        "recorded_with": {"hypothesis": hypothesis.__version__, "numpy": np.__version__},
        "visible_checks": visible,
        "checks": recorded,
    }
    if any(c in visible for c in EXERCISE_3_CHECKS):
        document["exercise_3"] = record_exercise_3()
    return document


def to_storage(value: Any) -> Any:
    """Rewrite named-tuple fields as ``[name, value]`` pairs, so sorting keys keeps field order."""
    if isinstance(value, list):
        return [to_storage(item) for item in value]
    if not isinstance(value, dict):
        return value
    if value.get("__type__") == "namedtuple":
        return {"__type__": "namedtuple", "name": value["name"],
                "fields": [[name, to_storage(item)] for name, item in value["fields"].items()]}
    return {key: to_storage(item) for key, item in value.items()}


def from_storage(value: Any) -> Any:
    """Undo :func:`to_storage`: named-tuple fields become a dict again, in their stored order."""
    if isinstance(value, list):
        return [from_storage(item) for item in value]
    if not isinstance(value, dict):
        return value
    if value.get("__type__") == "namedtuple":
        return {"__type__": "namedtuple", "name": value["name"],
                "fields": {name: from_storage(item) for name, item in value["fields"]}}
    return {key: from_storage(item) for key, item in value.items()}


def dumps(document: dict) -> str:
    """Serialise a golden document deterministically (sorted keys, no spaces, final newline)."""
    def reject(value: Any) -> Any:
        raise TypeError(f"golden data cannot store {type(value).__name__}")

    return json.dumps(to_storage(document), sort_keys=True, separators=(",", ":"), allow_nan=True,
                      default=reject) + "\n"


def load(path: Path = GOLDEN_PATH) -> dict:
    """Read a golden document, or raise GoldenError saying what is wrong."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise GoldenError(f"cannot read golden data {path}: {error.strerror}") from None
    except ValueError as error:
        raise GoldenError(f"golden data {path} is not valid JSON: {error}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT_VERSION:
        found = document.get("format") if isinstance(document, dict) else None
        raise GoldenError(f"golden data {path} has format {found!r}, expected {FORMAT_VERSION}; "
                          "record it again with pplab golden")
    return from_storage(document)


def staleness(path: Path = GOLDEN_PATH, rubric=None) -> str | None:
    """Say why the golden data at ``path`` is out of date, or return None when it is current."""
    from .rubric import load_rubric

    rubric = rubric or load_rubric()
    try:
        document = load(path)
    except GoldenError as error:
        return str(error)
    visible = [entry.id for entry in rubric.checks if entry.visibility == "visible"]
    if document.get("visible_checks") != visible:
        return (f"{path} was recorded for other visible checks than the rubric lists "
                f"(recorded {len(document.get('visible_checks', []))}, rubric {len(visible)})")
    if document.get("grader_version") != __version__:
        return f"{path} was recorded by grader {document.get('grader_version')}, this is {__version__}"
    if document.get("fingerprint") != source_fingerprint():
        changed = ", ".join(FINGERPRINT_GLOBS)
        return f"{path} was recorded from other versions of these files: {changed}"
    return None


# --- command line ------------------------------------------------------------------

def add_parser(subparsers) -> None:
    """Register ``pplab golden`` on the CLI's subparsers."""
    parser = subparsers.add_parser(
        "golden", help="record the golden data of the visible checks from reference/ (instructors)",
        description="Run every visible check against reference/ and write what it asked and got to "
                    f"{GOLDEN_PATH.relative_to(REPO_ROOT)}. The student release replays it.")
    parser.add_argument("--check", action="store_true",
                        help="only report whether the golden data is up to date (exit 1 when stale)")
    parser.add_argument("--full", action="store_true",
                        help="with --check: record again and compare the bytes (slow, about a minute)")
    parser.add_argument("--output", metavar="FILE", help=f"write here instead of {GOLDEN_PATH.name}")
    parser.set_defaults(handler=run_command)


def run_command(args) -> int:
    """Run ``pplab golden``: record, or with ``--check`` compare."""
    import sys

    if not (REPO_ROOT / "reference").is_dir() or not (REPO_ROOT / "grader" / "checks").is_dir():
        print("pplab: error: pplab golden is for instructors: it needs reference/ and grader/checks/, "
              "which the student release does not have", file=sys.stderr)
        return 2
    path = Path(args.output) if args.output else GOLDEN_PATH
    if args.check:
        problem = staleness(path)
        if problem is None and args.full:
            if dumps(record()) != path.read_text(encoding="utf-8"):
                problem = f"{path} differs from a fresh recording"
        if problem:
            print(f"stale: {problem}; run pplab golden to record it again")
            return 1
        print(f"up to date: {path}")
        return 0

    def progress(check_id: str) -> None:
        print(f"recording {check_id}", file=sys.stderr)

    document = record(progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(document), encoding="utf-8")
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {len(document['checks'])} visible checks)")
    return 0
