"""The pieces every check is built from: registration, failures, hypothesis settings.

A check is a function that receives a :class:`grader.sandbox.Worker` for the
submission and returns normally when the submission passes. It fails by
raising :class:`CheckFailed` with a message in the learner's terms ("for P=2,
M=1, rank 0 runs B0 before F0") and, where the wrong value matches a known
mistake, the name of that misconception.

Checks draw their inputs with hypothesis. Official grading runs every
property derandomised, with no example database and no deadline, so a
submission gets the same examples, the same shrunk counterexample and the
same score on every run and machine.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

from hypothesis import HealthCheck, Phase, settings
from hypothesis.reporting import with_reporter

from .sandbox import Worker


class CheckFailed(AssertionError):
    """The submission returned a wrong result; the message shows which and where.

    ``credit`` is the share of the check's points still earned (0 to 1), for
    checks that give partial credit.
    """

    def __init__(self, message: str, misconception: str | None = None, credit: float = 0.0):
        super().__init__(message)
        self.message = message
        self.misconception = misconception
        self.credit = min(1.0, max(0.0, credit))


@dataclass(frozen=True)
class Check:
    """A registered check: its id (``module.topic``), the modules it imports and its body."""

    id: str
    modules: tuple[str, ...]
    body: Callable[[Worker], None]
    doc: str


REGISTRY: dict[str, Check] = {}


def check(check_id: str, modules: tuple[str, ...]) -> Callable[[Callable[[Worker], None]], Callable[[Worker], None]]:
    """Register the decorated function as the check ``check_id``."""

    def register(body: Callable[[Worker], None]) -> Callable[[Worker], None]:
        if check_id in REGISTRY:
            raise ValueError(f"check {check_id!r} is registered twice")
        REGISTRY[check_id] = Check(check_id, tuple(modules), body, (body.__doc__ or "").strip())
        return body

    return register


@dataclass(frozen=True)
class ExplorationMode:
    """Example-drawing mode of the properties: official (derandomised) or exploratory."""

    seed: int | None = None
    example_scale: float = 1.0
    subset: bool = False
    secret: int | None = None


_MODE = ExplorationMode()
_REPORTED: list[str] | None = None
_EXAMPLE_STARTS: Callable[[], None] | None = None


def set_mode(mode: ExplorationMode) -> None:
    """Switch between official grading (``seed=None``) and a seeded exploration run."""
    global _MODE
    _MODE = mode


def collect_reports(target: list[str] | None) -> None:
    """Append what hypothesis reports (the falsifying example) to ``target``; None drops it."""
    global _REPORTED
    _REPORTED = target


def on_example_start(callback: Callable[[], None] | None) -> None:
    """Call ``callback`` before each example a property runs (None: stop)."""
    global _EXAMPLE_STARTS
    _EXAMPLE_STARTS = callback


def _report(message: str) -> None:
    if _REPORTED is not None:
        _REPORTED.append(str(message))


def _configured(test: Callable[..., Any], examples: int, seed: int | None) -> Callable[..., Any]:
    """Apply the grading settings to ``test``: derandomised, or seeded with ``seed``."""
    if hasattr(test, "_hypothesis_internal_settings_applied"):
        # A second run of the same property (the secret pass) gets new settings.
        del test._hypothesis_internal_settings_applied
    configured = settings(
        max_examples=examples,
        derandomize=seed is None,
        database=None,
        deadline=None,
        print_blob=False,
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
    )(test)
    if seed is not None:
        from hypothesis import seed as with_seed

        configured = with_seed(seed)(configured)
    return configured


def run_property(test: Callable[..., Any], max_examples: int) -> None:
    """Run a ``@given`` test under the grading settings.

    Officially the run is derandomised: hypothesis seeds itself from the
    test's own source, so the examples depend on the grader version only and
    anyone can reproduce them. With an instructor's secret
    (``PPLAB_SECRET_SEED``) an official run then draws as many examples
    again from that secret, which a learner cannot know, so a table of the
    public examples' answers does not pass. With a seed (``pplab grade
    --seed N``) the run explores other examples and more of them, and is
    not an official grade.
    """
    examples = max(1, round(max_examples * _MODE.example_scale))
    seeds: list[int | None] = [_MODE.seed]
    if _MODE.seed is None and _MODE.secret is not None:
        seeds.append(_MODE.secret)
    if _EXAMPLE_STARTS is not None:
        inner, starts = test.hypothesis.inner_test, _EXAMPLE_STARTS

        @functools.wraps(inner)
        def announced(*args: Any, **kwargs: Any) -> Any:
            starts()
            return inner(*args, **kwargs)

        test.hypothesis.inner_test = announced
    for seed in seeds:
        with with_reporter(_report):
            _configured(test, examples, seed)()
