"""Helpers every check uses: call the submission, and accept only plain, finite numbers."""

from __future__ import annotations

import math
from typing import Any

from ..checking import CheckFailed
from ..sandbox import LearnerRaised, Record, Unsupported, Worker


def close(a: float, b: float, rel: float = 1e-9, abs_tol: float = 1e-12) -> bool:
    """Compare two finite floats with a relative tolerance."""
    return math.isfinite(a) and math.isfinite(b) and math.isclose(a, b, rel_tol=rel, abs_tol=abs_tol)


def as_number(value: Any, what: str) -> float:
    """Accept an int or a finite float (never a bool); raise CheckFailed otherwise."""
    if isinstance(value, Unsupported):
        raise CheckFailed(f"{what} is an instance of {value.name.rsplit('.', 1)[-1]}; return a plain "
                          "int or float (subclasses and custom objects are not accepted)")
    if type(value) not in (int, float):
        raise CheckFailed(f"{what} is {value!r} of type {type(value).__name__}; expected a number")
    if not math.isfinite(value):
        raise CheckFailed(f"{what} is {value!r}; expected a finite number")
    return float(value)


def call_or_fail(worker: Worker, module: str, function: str, *args: Any, context: str, **kwargs: Any) -> Any:
    """Call the submission; an exception it raises becomes a CheckFailed that starts with ``context``."""
    try:
        return worker.call(module, function, *args, **kwargs)
    except LearnerRaised as error:
        raise CheckFailed(f"{context} raised {error.error}: {error.message}") from None


def fetch_answer(worker: Worker, function: str, type_name: str) -> Record:
    """Return the named tuple ``answers.<function>()`` returns, or fail saying what came instead."""
    worker.import_module("answers")
    value = call_or_fail(worker, "answers", function, context=f"{function}()")
    if not isinstance(value, Record):
        raise CheckFailed(f"{function}() returned {type(value).__name__}; expected {type_name}")
    return value


def answer_field(answer: Record, function: str, name: str) -> float:
    """Return the number in field ``name`` of an answer, or fail naming the field."""
    if name not in answer:
        raise CheckFailed(f"{function}() returned a {answer.type_name} without the field {name!r}")
    return as_number(answer[name], f"{function}().{name}")
