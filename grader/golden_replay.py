"""Visible checks that replay golden data: the checks of the student release.

Each replayed check calls the submission with the recorded inputs of the
official check, in the same order, and compares every return value with
the reference's recorded one (see :mod:`grader.golden` for how the data is
recorded). Comparison rules:

- ints, strings, bools and None exactly (an int may come back as a float
  where the official check allows it, and a string is not compared where
  the official check does not compare it);
- floats with a relative tolerance of 1e-6 plus an absolute one of 1e-9;
- arrays: same shape and dtype kind (integer, float, bool), integers exactly,
  floats with the same tolerances;
- named tuples field by field (only the fields the official check reads),
  lists item by item, dicts key by key;
- a recorded exception: the submission must raise the same class (or a
  subclass), and for ``schedules.invalid_arguments`` name the argument.

The replayed messages are shorter than the official ones and name no
misconceptions; the official grade decides the score.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .checking import CheckFailed, check
from .golden import EXERCISE_3_CHECKS, GOLDEN_PATH, decode_argument, load
from .sandbox import LearnerRaised, Record, SubmissionAborted, Unsupported, Worker, decode_value

REL_TOLERANCE = 1e-6
ABS_TOLERANCE = 1e-9
GRID_STEPS = 12
MAX_ERROR_LINES = 8

# NOTE: the release compares schedules with the reference order, except that a
# GPipe-like order may rename microbatches the same way on every rank (see
# _relabelled). Other orders can be right too, and the official check
# accepts any order with the same makespan and the same stash per rank, which
# it measures with the reference simulator. The release cannot ship that
# simulator, since writing it is an exercise, so the message states this.
SCHEDULE_NOTE = ("note: the release compares with the reference order; the official grader also "
                 "accepts other orders with the same makespan and the same stash per rank")


# Functions of given code (not exercises) whose "not implemented" comes from a
# stub they call, with the message to show instead.
GIVEN_CODE = {"run_pipelines": "the per-rank loop in pipeline_runtime.py is not implemented yet (a rank "
                               "raised NotImplementedError); pipeline_launch.py is given code and needs no change"}


# --- showing values ---------------------------------------------------------------

def is_action(value: Any) -> bool:
    """Return whether ``value`` is an Action: a named tuple or Record with kind, microbatch and chunk."""
    if isinstance(value, Record):
        return {"kind", "microbatch", "chunk"} <= set(dict.keys(value))
    return isinstance(value, tuple) and {"kind", "microbatch", "chunk"} <= set(getattr(value, "_fields", ()))


def is_schedule(value: Any) -> bool:
    """Return whether ``value`` is a list of per-rank lists of actions."""
    if not isinstance(value, list) or not value or not all(isinstance(rank, list) for rank in value):
        return False
    items = [item for rank in value for item in rank]
    return bool(items) and all(is_action(item) for item in items)


def show_action(action: Any) -> str:
    """Write an action as ``F3`` (chunk 0) or ``F3.1`` (chunk 1)."""
    fields = dict(dict.items(action)) if isinstance(action, Record) else action._asdict()
    chunk = fields.get("chunk", 0)
    return f"{fields.get('kind')}{fields.get('microbatch')}" + (f".{chunk}" if chunk else "")


def schedule_grid(schedule: list, prefix: str = "  ") -> str:
    """Write a schedule as one line per rank: ``rank 0: F0 F1 B0 ...``."""
    lines = []
    for rank, actions in enumerate(schedule[:8]):
        if not isinstance(actions, list):
            lines.append(f"{prefix}rank {rank}: {brief(actions)}")
            continue
        shown = " ".join(show_action(a) if is_action(a) else brief(a, 20) for a in actions[:GRID_STEPS])
        more = " ..." if len(actions) > GRID_STEPS else ""
        lines.append(f"{prefix}rank {rank}: {shown}{more}")
    if len(schedule) > 8:
        lines.append(f"{prefix}... ({len(schedule)} ranks)")
    return "\n".join(lines)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def brief(value: Any, limit: int = 80) -> str:
    """Show a value in one short line."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, float):
        return f"{value:.10g}"
    if isinstance(value, (int, str)):
        return _cut(repr(value), limit)
    if isinstance(value, np.ndarray):
        flat = np.array2string(value.ravel()[:6], precision=6, separator=", ")
        more = " ..." if value.size > 6 else ""
        return f"array of shape {value.shape}, dtype {value.dtype}: {flat}{more}"
    if isinstance(value, Unsupported):
        return f"an object of type {value.name}"
    if is_action(value):
        return show_action(value)
    if isinstance(value, Record):
        inner = ", ".join(f"{k}={brief(v, 30)}" for k, v in dict.items(value))
        return _cut(f"{value.type_name}({inner})", limit)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        if "name" in value._fields:
            return f"{type(value).__name__}({getattr(value, 'name')!r})"
        return _cut(repr(value), limit)
    if is_schedule(value):
        return f"a schedule of {len(value)} ranks"
    if isinstance(value, list):
        items = ", ".join(brief(v, 20) for v in value[:8]) + (", ..." if len(value) > 8 else "")
        return _cut(f"[{items}]", limit) + (f" ({len(value)} items)" if len(value) > 8 else "")
    if isinstance(value, dict):
        return _cut("{" + ", ".join(f"{k!r}: {brief(v, 20)}" for k, v in value.items()) + "}", limit)
    return _cut(repr(value), limit)


def describe_call(function: str, args: list, kwargs: dict) -> tuple[str, str]:
    """Return ``function(arg, ...)`` with short arguments, and detail lines for schedules and arrays."""
    shown, details = [], []
    for name, value in [(None, a) for a in args] + list(kwargs.items()):
        label = name or f"argument {len(shown) + 1}"
        if is_schedule(value):
            text = "schedule"
            details.append(f"{label} (schedule):\n{schedule_grid(value)}")
        elif isinstance(value, np.ndarray):
            text = f"<{'x'.join(map(str, value.shape))} {value.dtype} array>"
            if value.ndim <= 2:
                rows = np.array2string(value[:6], precision=4, separator=", ")
                details.append(f"{label}:\n{rows}" + (" ..." if len(value) > 6 else ""))
        elif isinstance(value, list) and len(value) > 8:
            text = f"<list of {len(value)}>"
        else:
            text = brief(value, 60)
        shown.append(f"{name}={text}" if name else text)
    return f"{function}({', '.join(shown)})", "\n".join(details)


# --- comparing ----------------------------------------------------------------------

class Leniency:
    """Freedoms the official check allows, by ``Type.field`` label ("" outside any named tuple)."""

    def __init__(self, float_for_int=(), free_strings=()):
        self.float_for_int = set(float_for_int)
        self.free_strings = set(free_strings)


def _number(value: Any) -> bool:
    return type(value) in (int, float)


def _floats_close(expected: float, got: float) -> bool:
    if math.isnan(expected):
        return math.isnan(got)
    return math.isclose(got, expected, rel_tol=REL_TOLERANCE, abs_tol=ABS_TOLERANCE)


def _where(path: str) -> str:
    return f"{path}: " if path else ""


def compare(expected: Any, got: Any, leniency: Leniency = Leniency(), path: str = "", label: str = "") -> str | None:
    """Return the first difference between the recorded and the returned value, or None.

    ``path`` names the position (``.intervals[0][2].start``); ``label`` is
    the ``Type.field`` of the innermost named tuple, for ``leniency``.
    """
    if is_schedule(expected) and isinstance(got, list):
        return _compare_schedule(expected, got, path)
    if isinstance(expected, Record):
        if not isinstance(got, Record):
            return f"{_where(path)}expected a {expected.type_name}, returned {brief(got)}"
        for field, want in dict.items(expected):
            if field not in got:
                return f"{_where(path)}the returned {got.type_name} has no field {field!r}"
            problem = compare(want, dict.__getitem__(got, field), leniency, f"{path}.{field}",
                              f"{expected.type_name}.{field}")
            if problem:
                return problem
        return None
    if isinstance(expected, np.ndarray):
        return _compare_array(expected, got, path)
    if isinstance(expected, list):
        if not isinstance(got, list):
            return f"{_where(path)}expected a list of {len(expected)}, returned {brief(got)}"
        if len(got) != len(expected):
            return f"{_where(path)}expected {len(expected)} items, returned {len(got)}: {brief(got)}"
        for index, (want, have) in enumerate(zip(expected, got)):
            problem = compare(want, have, leniency, f"{path}[{index}]", label)
            if problem:
                return problem
        return None
    if isinstance(expected, dict):
        if not isinstance(got, dict) or isinstance(got, Record):
            return f"{_where(path)}expected a dict, returned {brief(got)}"
        if set(got) != set(expected):
            return f"{_where(path)}expected the keys {sorted(map(str, expected))}, returned {sorted(map(str, got))}"
        for key, want in expected.items():
            problem = compare(want, got[key], leniency, f"{path}[{key!r}]", label)
            if problem:
                return problem
        return None
    return _compare_scalar(expected, got, leniency, path, label)


def _compare_scalar(expected: Any, got: Any, leniency: Leniency, path: str, label: str) -> str | None:
    where = _where(path)
    if isinstance(expected, bool) or expected is None:
        ok = type(got) is type(expected) and got == expected
    elif type(expected) is int:
        if label in leniency.float_for_int:
            ok = _number(got) and math.isfinite(got) and got == expected
        else:
            ok = type(got) is int and got == expected
    elif type(expected) is float:
        ok = _number(got) and _floats_close(expected, float(got))
    elif isinstance(expected, str):
        ok = isinstance(got, str) and (label in leniency.free_strings or got == expected)
    else:
        ok = got == expected
    if ok:
        return None
    if type(expected) is int and type(got) is float and got == expected:
        return f"{where}expected the int {expected}, returned the float {got!r}"
    return f"{where}expected {brief(expected)}, returned {brief(got)}"


def _kind(dtype: np.dtype) -> str:
    return {"i": "integer", "u": "integer", "f": "float", "b": "bool", "c": "complex"}.get(dtype.kind, str(dtype))


def _compare_array(expected: np.ndarray, got: Any, path: str) -> str | None:
    where = _where(path)
    if not isinstance(got, np.ndarray):
        return f"{where}expected an array of shape {expected.shape}, returned {brief(got)}"
    if got.shape != expected.shape:
        return f"{where}expected shape {expected.shape}, returned shape {got.shape}"
    if _kind(got.dtype) != _kind(expected.dtype):
        return f"{where}expected a {_kind(expected.dtype)} array, returned dtype {got.dtype}"
    if expected.dtype.kind in "fc":
        same = np.isclose(got, expected, rtol=REL_TOLERANCE, atol=ABS_TOLERANCE, equal_nan=True)
    else:
        same = got == expected
    if np.all(same):
        return None
    index = tuple(int(i) for i in np.argwhere(~same)[0])
    return (f"{where}first difference at index {index}: expected {brief(expected[index].item())}, "
            f"returned {brief(got[index].item())}")


def _same_action(got: Record, expected: Record) -> bool:
    for field in ("kind", "microbatch", "chunk"):
        have, want = dict.__getitem__(got, field), dict.__getitem__(expected, field)
        if type(have) is not type(want) or have != want:
            return False
    return True


def _forwards_first(schedule: list) -> bool:
    """Return whether every rank runs all its forward passes before any other pass."""
    for actions in schedule:
        if not isinstance(actions, list):
            return False
        other_seen = False
        for step in actions:
            if not (isinstance(step, Record) and is_action(step)):
                return False
            if dict.__getitem__(step, "kind") != "F":
                other_seen = True
            elif other_seen:
                return False
    return True


def _relabelled(expected: list, got: list) -> bool:
    """Return whether ``got`` is ``expected`` with microbatches renamed per pass kind, alike on every rank.

    Only asked for schedules where every rank runs all forwards first (GPipe).
    There each rank's passes of one kind run back to back, so renaming the
    microbatches consistently across ranks keeps the dependencies, the
    makespan and the stash: the official check accepts such an order too.
    """
    if not (_forwards_first(expected) and _forwards_first(got)) or len(got) != len(expected):
        return False
    renaming: dict[tuple, Any] = {}
    for want, have in zip(expected, got):
        if not isinstance(have, list) or len(have) != len(want):
            return False
        for action, item in zip(want, have):
            if not isinstance(item, Record) or not is_action(item):
                return False
            kind, chunk = dict.__getitem__(action, "kind"), dict.__getitem__(action, "chunk")
            if dict.__getitem__(item, "kind") != kind or dict.__getitem__(item, "chunk") != chunk:
                return False
            key = (kind, chunk, dict.__getitem__(action, "microbatch"))
            value = dict.__getitem__(item, "microbatch")
            if type(value) is not int or renaming.setdefault(key, value) != value:
                return False
    per_kind: dict[tuple, set] = {}
    for (kind, chunk, _), value in renaming.items():
        targets = per_kind.setdefault((kind, chunk), set())
        if value in targets:
            return False  # two microbatches renamed to one
        targets.add(value)
    return all(targets == {m for (k, c, m) in renaming if (k, c) == key} for key, targets in per_kind.items())


def _compare_schedule(expected: list, got: list, path: str) -> str | None:
    problem = _compare_schedule_exactly(expected, got, path)
    if problem and _relabelled(expected, got):
        return None
    return problem


def _compare_schedule_exactly(expected: list, got: list, path: str) -> str | None:
    where = _where(path)
    if len(got) != len(expected):
        return f"{where}expected {len(expected)} ranks, returned {len(got)}"
    for rank, (want, have) in enumerate(zip(expected, got)):
        if not isinstance(have, list):
            return f"{where}rank {rank} is {brief(have)}, not a list of actions"
        for step, action in enumerate(want):
            if step >= len(have):
                return f"{where}rank {rank} stops after {len(have)} actions; the reference runs {len(want)}"
            item = have[step]
            if not isinstance(item, Record) or not is_action(item):
                return f"{where}rank {rank} step {step} is {brief(item)}, not an Action(kind, microbatch, chunk)"
            if not _same_action(item, action):
                return (f"{where}rank {rank} step {step} is {show_action(item)}, "
                        f"the reference runs {show_action(action)}")
        if len(have) > len(want):
            return f"{where}rank {rank} runs {len(have)} actions; the reference runs {len(want)}"
    return None


# --- replaying ----------------------------------------------------------------------

def _trim(message: str) -> str:
    lines = message.splitlines()
    if len(lines) > MAX_ERROR_LINES:
        lines = lines[:1] + ["  ..."] + lines[-(MAX_ERROR_LINES - 2):]
    return "\n".join(lines)


def _same_passes(expected: list, got: Any) -> bool:
    """Return whether every rank of ``got`` runs exactly the passes of ``expected``, in some order.

    Only then can another order still be right; a missing, extra or
    malformed pass is wrong whatever the order.
    """
    if not isinstance(got, list) or len(got) != len(expected):
        return False
    for want, have in zip(expected, got):
        if not isinstance(have, list) or not all(isinstance(a, Record) and is_action(a) for a in have):
            return False
        if sorted(map(show_action, want)) != sorted(map(show_action, have)):
            return False
    return True


def _mismatch(label: str, details: str, expected: Any, got: Any, problem: str) -> str:
    parts = [f"{label}: {problem}"]
    if is_schedule(expected):
        parts.append("reference order:\n" + schedule_grid(expected))
        if isinstance(got, list) and all(isinstance(rank, list) for rank in got):
            parts.append("your schedule:\n" + schedule_grid(got))
        if _same_passes(expected, got):
            parts.append(SCHEDULE_NOTE)
    if details:
        parts.append("where " + details)
    return "\n".join(parts)


def _replay_call(worker: Worker, item: dict, leniency: Leniency, default_timeout: float) -> None:
    """Make one recorded call and compare its outcome; raise CheckFailed on a difference."""
    function = item["function"]
    args, kwargs = decode_argument(item["args"]), decode_argument(item["kwargs"])
    label, details = describe_call(function, args, kwargs)
    worker.call_timeout = item.get("call_timeout", default_timeout)
    expected_error = item.get("raises")
    try:
        got = worker.call(item["module"], function, *args, **kwargs)
    except LearnerRaised as error:
        if "NotImplementedError" in error.message and "NotImplementedError" not in error.mro:
            # A stub raised in a process the submission started (a pipeline rank).
            raise SubmissionAborted("not_implemented", f"{function}() is not implemented yet: a process "
                                                       "it started raised NotImplementedError") from None
        if expected_error is None:
            raise CheckFailed(f"{label} raised {error.error}: {_trim(error.message)}"
                              + (f"\nwhere {details}" if details else "")) from None
        if not error.is_a(expected_error["error"]):
            raise CheckFailed(f"{label} raised {error.error}; expected {expected_error['error']}") from None
        mention = expected_error.get("mention")
        if mention and mention not in error.message:
            raise CheckFailed(f"{label} raised {error.error}({error.message!r}), which does not name "
                              f"the argument {mention!r}") from None
        return
    if expected_error is not None:
        naming = f" naming {expected_error['mention']!r}" if expected_error.get("mention") else ""
        raise CheckFailed(f"{label} returned {brief(got)}; expected it to raise {expected_error['error']}{naming}")
    expected = decode_value(item["returns"])
    problem = compare(expected, got, leniency)
    if problem:
        raise CheckFailed(_mismatch(label, details, expected, got, problem))


def _input_size(item: dict) -> tuple[int, float]:
    """Order recorded inputs by encoded length, then by the sum of their plain numbers."""
    total = 0.0
    pending = [item["args"], item["kwargs"]]
    while pending:
        value = pending.pop()
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            total += abs(value)
        elif isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, dict) and value.get("__type__") != "ndarray":
            pending.extend(value.values())
    return len(json.dumps([item["args"], item["kwargs"]])), total


def replay_interactions(worker: Worker, entry: dict) -> None:
    """Make every recorded call and compare; raise CheckFailed for the smallest failing input.

    The official check shrinks a failing example to a small one. Replay
    cannot shrink, so it makes all recorded calls and reports the failing
    call whose encoded arguments are shortest. When the worker stops (a timeout, a
    crash) after some calls failed, the smallest failure so far is reported.
    """
    leniency = Leniency(entry.get("float_for_int", []), entry.get("free_strings", []))
    default_timeout = worker.call_timeout
    calls = sum(item["op"] == "call" for item in entry["interactions"])
    failures: list[tuple[tuple[int, float], int, CheckFailed]] = []
    for index, item in enumerate(entry["interactions"]):
        try:
            if item["op"] == "import":
                worker.import_module(item["module"])
            else:
                _replay_call(worker, item, leniency, default_timeout)
        except CheckFailed as failure:
            failures.append((_input_size(item), index, failure))
        except SubmissionAborted as aborted:
            if failures:
                break
            if aborted.kind == "not_implemented" and item.get("function") in GIVEN_CODE:
                # The given launcher only reports what the learner's code raised.
                raise SubmissionAborted("not_implemented", GIVEN_CODE[item["function"]]) from None
            raise
    if failures:
        _size, index, smallest = min(failures, key=lambda failure: failure[:2])
        if hasattr(worker, "new_example"):
            # A replay log (pplab grade --replay) should end with the failing call.
            worker.new_example()
            try:
                _replay_call(worker, entry["interactions"][index], leniency, default_timeout)
            except (CheckFailed, SubmissionAborted):
                pass
        count = f"\n({len(failures)} of {calls} recorded calls fail; this one has the smallest input)" \
            if len(failures) > 1 else ""
        raise CheckFailed(smallest.message + count, smallest.misconception, smallest.credit)


def _exercise_3_body(check_id: str, index: int, scores: dict) -> Callable[[Worker], None]:
    fields, defaults = scores["fields"], scores["defaults"]

    def body(worker: Worker) -> None:
        worker.import_module("answers")
        try:
            value = worker.call("answers", "exercise_3")
        except LearnerRaised as error:
            raise CheckFailed(f"exercise_3() raised {error.error}: {error.message}") from None
        if not isinstance(value, Record):
            raise CheckFailed(f"exercise_3() returned {type(value).__name__}; expected Exercise3Answer")
        degrees = []
        for field in fields:
            degree = value.get(field, defaults.get(field))
            if type(degree) is not int:
                raise CheckFailed(f"exercise_3().{field} is {degree!r}; expected an int")
            degrees.append(degree)
        outcome = scores["table"].get(",".join(map(str, degrees)))
        if outcome is None:
            shown = " ".join(f"{f}={d}" for f, d in zip(fields, degrees))
            raise CheckFailed(f"the student release cannot score {shown}: it contains scores only for powers "
                              "of two with tp*pp*dp from 32 to 128, ep up to 8 and num_chunks up to 4. "
                              "The official grader scores any configuration.")
        credit, message = outcome[index]
        if message >= 0:
            raise CheckFailed(scores["messages"][message], credit=credit)

    body.__doc__ = f"{check_id}: look the configuration up in scores recorded from the official check."
    return body


def _interactions_body(check_id: str, entry: dict) -> Callable[[Worker], None]:
    def body(worker: Worker) -> None:
        replay_interactions(worker, entry)

    calls = sum(item["op"] == "call" for item in entry["interactions"])
    body.__doc__ = f"{check_id}: replay {calls} recorded calls of the official check."
    return body


def replay_bodies(document: dict) -> dict[str, tuple[tuple[str, ...], Callable[[Worker], None]]]:
    """Map each visible check id of a golden document to (modules, check body)."""
    bodies = {}
    for check_id in document["visible_checks"]:
        entry = document["checks"][check_id]
        if entry["kind"] == "exercise_3_table":
            body = _exercise_3_body(check_id, EXERCISE_3_CHECKS.index(check_id), document["exercise_3"])
        else:
            body = _interactions_body(check_id, entry)
        bodies[check_id] = (tuple(entry["modules"]), body)
    return bodies


def register_replay_checks(path: Path = GOLDEN_PATH) -> list[str]:
    """Register a replaying check for each visible check in the golden data; return their ids."""
    bodies = replay_bodies(load(path))
    for check_id, (modules, body) in bodies.items():
        check(check_id, modules)(body)
    return list(bodies)
