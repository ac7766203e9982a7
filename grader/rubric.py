"""Load and validate the rubric: points, visibility, exercise and hints of every check.

A student release's rubric also lists the hidden checks under
``[[official_only]]`` (id, exercise, title, points): the release cannot run
them, but its reports say they exist and are graded officially.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULT_RUBRIC = Path(__file__).with_name("rubric.toml")
VISIBILITIES = ("visible", "hidden")


class RubricError(ValueError):
    """The rubric file is malformed."""


@dataclass(frozen=True)
class RubricEntry:
    """One check's line in the rubric."""

    id: str
    exercise: str
    title: str
    points: float
    visibility: str
    hints: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rubric:
    """Exercises (id to title) in report order, checks in report order, and checks graded only officially.

    ``official_only`` is empty except in a student release, where it lists
    the hidden checks that the release does not contain.
    """

    exercises: dict[str, str]
    checks: tuple[RubricEntry, ...]
    official_only: tuple[RubricEntry, ...] = ()

    @property
    def max_points(self) -> float:
        return sum(entry.points for entry in self.checks)

    def select(self, visibility: str | None = None, ids: list[str] | None = None) -> "Rubric":
        """Return the rubric restricted to one visibility and/or some check ids."""
        checks = tuple(c for c in self.checks
                       if (visibility is None or c.visibility == visibility)
                       and (not ids or c.id in ids))
        return Rubric(self.exercises, checks, self.official_only)


def load_rubric(path: Path = DEFAULT_RUBRIC) -> Rubric:
    """Read a rubric TOML file and check every entry's fields."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise RubricError(f"cannot read rubric {path}: {error}") from None

    exercises = {}
    for key, table in data.get("exercises", {}).items():
        if not isinstance(table, dict) or not isinstance(table.get("title"), str):
            raise RubricError(f"rubric {path}: exercise {key!r} needs a string title")
        exercises[key] = table["title"]

    seen: set[str] = set()
    checks = [_entry(raw, f"rubric {path}: check #{index + 1}", exercises, seen)
              for index, raw in enumerate(data.get("checks", []))]
    official_only = []
    for index, raw in enumerate(data.get("official_only", [])):
        entry = _entry({"visibility": "hidden", **raw}, f"rubric {path}: official_only #{index + 1}",
                       exercises, seen)
        if entry.visibility != "hidden":
            raise RubricError(f"rubric {path}: official_only #{index + 1} ({entry.id}) must be hidden")
        official_only.append(entry)
    return Rubric(exercises, tuple(checks), tuple(official_only))


def _entry(raw: dict, where: str, exercises: dict[str, str], seen: set[str]) -> RubricEntry:
    """Validate one check's table and return its entry; ``seen`` collects the ids so far."""
    for field, kind in (("id", str), ("exercise", str), ("title", str), ("visibility", str)):
        if not isinstance(raw.get(field), kind):
            raise RubricError(f"{where} needs a string field {field!r}")
    points = raw.get("points")
    if isinstance(points, bool) or not isinstance(points, (int, float)) or points < 0:
        raise RubricError(f"{where} ({raw['id']}): points must be a number >= 0, got {points!r}")
    if raw["visibility"] not in VISIBILITIES:
        raise RubricError(f"{where} ({raw['id']}): visibility must be one of {VISIBILITIES}, "
                          f"got {raw['visibility']!r}")
    if raw["exercise"] not in exercises:
        raise RubricError(f"{where} ({raw['id']}): unknown exercise {raw['exercise']!r}")
    if raw["id"] in seen:
        raise RubricError(f"{where}: check {raw['id']!r} appears twice")
    hints = raw.get("hints", [])
    if not isinstance(hints, list) or not all(isinstance(hint, str) and hint.strip() for hint in hints):
        raise RubricError(f"{where} ({raw['id']}): hints must be a list of non-empty strings, got {hints!r}")
    seen.add(raw["id"])
    return RubricEntry(raw["id"], raw["exercise"], raw["title"], float(points), raw["visibility"], tuple(hints))
