"""Cut the student release: a standalone repository with stubs, visible checks and golden data.

``pplab release OUT`` writes:

- ``exercises/``: stubs freshly generated from ``reference/``;
- ``grader/``: this package without ``grader/checks/`` (which imports the
  reference and holds the hidden checks) and without the release templates,
  plus ``grader/checks.py``, which registers the replaying visible checks of
  :mod:`grader.golden_replay`, and a release rubric that lists the hidden
  checks (title and points only) under ``[[official_only]]``;
- ``datasets/``: model and hardware specs and the golden data, but not
  ``datasets/submissions`` (its samples are built from the solutions);
- ``pyproject.toml``, ``README.md``, ``docs/learner_guide.md`` and
  ``.gitignore`` from ``grader/release_template/``.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from string import Template

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from . import __version__
from .golden import GOLDEN_PATH, staleness
from .rubric import Rubric, load_rubric

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = Path(__file__).with_name("release_template")
# Parts of grader/ that stay with the instructor.
GRADER_EXCLUDED = {"checks", "release_template", "__pycache__", "rubric.toml"}
DATASET_FOLDERS = ("models", "hardware", "golden")


class ReleaseError(ValueError):
    """The release cannot be written; the message names the reason and the fix."""


def _toml_string(text: str) -> str:
    # A JSON string is a valid TOML basic string (same escapes, \\uXXXX included).
    return json.dumps(text)


def _toml_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def release_rubric_text(rubric: Rubric) -> str:
    """Return the release's rubric: visible checks with points and hints, hidden ones as official_only."""
    lines = [
        "# Points and hints of the checks in this release. The visible checks run",
        "# here; the checks under [[official_only]] are hidden and run only in",
        "# official grading. Hint n of a check shows after it failed n times.",
        "",
    ]
    for key, title in rubric.exercises.items():
        lines += [f"[exercises.{key}]", f"title = {_toml_string(title)}", ""]
    for entry in rubric.checks:
        if entry.visibility != "visible":
            continue
        lines += ["[[checks]]", f"id = {_toml_string(entry.id)}", f"exercise = {_toml_string(entry.exercise)}",
                  f"title = {_toml_string(entry.title)}", f"points = {_toml_number(entry.points)}",
                  'visibility = "visible"']
        if entry.hints:
            lines.append("hints = [")
            lines += [f"  {_toml_string(hint)}," for hint in entry.hints]
            lines.append("]")
        lines.append("")
    for entry in rubric.checks:
        if entry.visibility == "hidden":
            lines += ["[[official_only]]", f"id = {_toml_string(entry.id)}",
                      f"exercise = {_toml_string(entry.exercise)}", f"title = {_toml_string(entry.title)}",
                      f"points = {_toml_number(entry.points)}", ""]
    return "\n".join(lines)


def _pyproject_text(root: Path) -> str:
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    dependencies = "\n".join(f"    {_toml_string(d)}," for d in project["dependencies"])
    template = Template((TEMPLATES / "pyproject.toml").read_text(encoding="utf-8"))
    return template.substitute(version=project.get("version", __version__),
                               requires_python=project.get("requires-python", ">=3.10"),
                               dependencies=dependencies)


def _check_target(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ReleaseError(f"release folder {out} is a file; pass an empty or new folder")
    if out.is_dir() and any(out.iterdir()):
        raise ReleaseError(f"release folder {out} is not empty; pass an empty or new folder")


def _copy_grader(root: Path, target: Path) -> None:
    target.mkdir(parents=True)
    for path in sorted((root / "grader").iterdir()):
        if path.name in GRADER_EXCLUDED or path.suffix == ".pyc":
            continue
        if path.is_dir():
            shutil.copytree(path, target / path.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copyfile(path, target / path.name)
    shutil.copyfile(TEMPLATES / "checks.py", target / "checks.py")


def build_release(out: Path, root: Path = REPO_ROOT) -> list[str]:
    """Write the student release to ``out`` (new or empty) and return the files written, relative to it.

    Raises ReleaseError when ``out`` is not empty, the golden data is stale,
    or nbgrader (needed for the stubs) is missing.
    """
    out = Path(out)
    _check_target(out)
    rubric = load_rubric(root / "grader" / "rubric.toml")
    problem = staleness(root / GOLDEN_PATH.relative_to(REPO_ROOT), rubric)
    if problem:
        raise ReleaseError(f"the golden data is stale ({problem}); run pplab golden first")
    try:
        from .stubs import generate_stubs
        import nbgrader  # noqa: F401
    except ImportError:
        raise ReleaseError("pplab release needs nbgrader for the stubs: pip install -e '.[test]'") from None

    out.mkdir(parents=True, exist_ok=True)
    generate_stubs(root / "reference", out / "exercises")
    _copy_grader(root, out / "grader")
    (out / "grader" / "rubric.toml").write_text(release_rubric_text(rubric), encoding="utf-8")
    for folder in DATASET_FOLDERS:
        shutil.copytree(root / "datasets" / folder, out / "datasets" / folder)
    (out / "pyproject.toml").write_text(_pyproject_text(root), encoding="utf-8")
    shutil.copyfile(TEMPLATES / "README.md", out / "README.md")
    (out / "docs").mkdir()
    shutil.copyfile(TEMPLATES / "learner_guide.md", out / "docs" / "learner_guide.md")
    shutil.copyfile(TEMPLATES / "gitignore", out / ".gitignore")
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def add_parser(subparsers) -> None:
    """Register ``pplab release`` on the CLI's subparsers."""
    parser = subparsers.add_parser(
        "release", help="write the student release to a new folder (instructors)",
        description="Write a standalone student repository: stubs, the visible checks as replays of "
                    "the golden data, datasets without solutions, a README and a learner guide.")
    parser.add_argument("out", metavar="OUT", help="new or empty folder to write the release to")
    parser.set_defaults(handler=run_command)


def run_command(args) -> int:
    """Run ``pplab release OUT``."""
    if not (REPO_ROOT / "reference").is_dir() or not (REPO_ROOT / "grader" / "checks").is_dir():
        print("pplab: error: pplab release is for instructors: it needs reference/ and grader/checks/, "
              "which the student release does not have", file=sys.stderr)
        return 2
    try:
        files = build_release(Path(args.out))
    except ReleaseError as error:
        print(f"pplab: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(files)} files to {args.out}")
    return 0
