"""Replay one check for the learner: the counterexample, the calls and a snippet to rerun.

Official grading is derandomised, so running a check again finds the same
failing example and shrinks it the same way. :class:`CallLog` wraps the
worker during such a run and keeps the calls of the current example only.
Hypothesis runs the shrunk failing example last, so the log ends up with
the calls of that example. :func:`describe` turns that into text a
learner can act on: the example hypothesis reports, the calls, the
submission's own traceback and a Python line that makes the same call.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from .sandbox import LearnerRaised

KEPT_CALLS = 6
MAX_ARGUMENT_CHARS = 400


def _literal(value: Any) -> str:
    """Python source that rebuilds ``value`` (arrays as ``np.array``), shortened when huge."""
    if isinstance(value, np.ndarray):
        text = f"np.array({value.tolist()!r}, dtype=np.{value.dtype})"
    elif isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        items = ", ".join(_literal(v) for v in value)
        text = f"[{items}]" if isinstance(value, list) else f"({items}{',' if len(value) == 1 else ''})"
    else:
        text = repr(value)
    return text if len(text) <= MAX_ARGUMENT_CHARS else text[:MAX_ARGUMENT_CHARS] + " ...<cut>"


class CallLog:
    """A worker wrapper that remembers the last calls and the last exception of the submission."""

    def __init__(self, worker: Any):
        self._worker = worker
        self.calls: deque[str] = deque(maxlen=KEPT_CALLS)
        self.last_error: LearnerRaised | None = None

    def new_example(self) -> None:
        """Forget the calls of earlier examples: hypothesis starts another one."""
        self.calls.clear()
        self.last_error = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._worker, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("_worker", "calls", "last_error"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._worker, name, value)

    def call(self, module: str, function: str, *args: Any, **kwargs: Any) -> Any:
        arguments = [_literal(a) for a in args] + [f"{k}={_literal(v)}" for k, v in kwargs.items()]
        self.calls.append(f"{module}.{function}({', '.join(arguments)})")
        try:
            return self._worker.call(module, function, *args, **kwargs)
        except LearnerRaised as error:
            self.last_error = error
            raise


def describe(log: CallLog, hypothesis_lines: list[str]) -> str:
    """Text for a failed check's replay: example, last calls, traceback, a line to rerun."""
    parts = []
    example = [line for line in hypothesis_lines if line.strip()]
    if example:
        parts.append("Counterexample found by hypothesis (after shrinking):\n"
                     + "\n".join("  " + line for text in example for line in text.splitlines()))
    if log.calls:
        parts.append("Last calls into your code, the failing one last:\n"
                     + "\n".join(f"  {call}" for call in log.calls))
        last = log.calls[-1]
        module = last.split(".", 1)[0]
        parts.append("Run that call yourself from the folder that holds your exercises/ package:\n"
                     f"  python -c \"import numpy as np; from exercises import {module}; "
                     f"print({last})\"")
    if log.last_error is not None and log.last_error.traceback:
        parts.append(f"Your code raised {log.last_error.error}: {log.last_error.message}\n"
                     + log.last_error.traceback.rstrip())
    return "\n\n".join(parts)
