"""Build a Gradescope autograder zip, and grade one submission inside it.

Gradescope unpacks the zip into ``/autograder/source`` and runs
``setup.sh`` once, when it builds the image. It then runs
``run_autograder`` once per submission, with the learner's files in
``/autograder/submission``, and reads the score from
``/autograder/results/results.json``. docs/gradescope.md has the details
and their sources. The zip contains those two scripts and the pplab
sources grading needs: ``grader/``, ``reference/``, ``datasets/`` without
the sample submissions, ``pyproject.toml`` and ``README.md``.

``run_autograder`` calls :func:`run_autograder` (``python -m grader.bundle
run-autograder``), which always leaves a valid ``results.json``: score 0
and a message when files are missing or grading fails. Environment
variables change where and how it runs, for tests and local trials:

- ``PPLAB_AUTOGRADER_ROOT``: the folder used instead of ``/autograder``;
- ``PPLAB_PYTHON``: the Python that runs pplab (default: the virtual
  environment ``setup.sh`` made, else ``python3``);
- ``PPLAB_RUBRIC``: a rubric TOML file used instead of the bundled one;
- ``PPLAB_GRADE_TIMEOUT``: wall-clock seconds for grading (default 1800).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
# Files and folders copied from the repository into the zip, and what is left out.
SOURCES = ("grader", "reference", "datasets", "pyproject.toml", "README.md")
EXCLUDED = ("datasets/submissions",)
BUNDLED_RUBRIC = "autograder_rubric.toml"
DEFAULT_GRADE_TIMEOUT_S = 1800.0
# A fixed timestamp makes two bundles of the same sources byte-identical.
ZIP_TIMESTAMP = (2020, 1, 1, 0, 0, 0)

SETUP_SH = r"""#!/usr/bin/env bash
# Install pplab into a virtual environment. Gradescope runs this once, as
# root, when it builds the autograder image; it needs Python 3.10 or newer
# (Ubuntu 22.04 base image or later).
set -euo pipefail
root="${PPLAB_AUTOGRADER_ROOT:-/autograder}"
source_dir="$root/source"
venv="$root/pplab-venv"

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends python3 python3-venv python3-pip
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    echo "pplab needs Python 3.10 or newer, found $(python3 --version); pick a newer base image" >&2
    exit 1
fi

python3 -m venv "$venv"
"$venv/bin/python" -m pip install --upgrade pip
# The CPU build of torch: the default index installs the far larger CUDA build.
"$venv/bin/python" -m pip install "torch>=2.4,<3" --index-url https://download.pytorch.org/whl/cpu
# Editable, because reference/ reads datasets/ next to it.
"$venv/bin/python" -m pip install -e "$source_dir"
"$venv/bin/python" -c "import grader.checks, torch; print('pplab installed with torch', torch.__version__)"

# The grader reads the solutions and the hidden checks as root. Sandbox
# workers that run as an unprivileged user must read neither.
chmod -R go-rwx "$source_dir/reference" "$source_dir/grader/checks" "$source_dir/grader/rubric.toml"
if [ -f "$source_dir/secret_seed.txt" ]; then chmod 600 "$source_dir/secret_seed.txt"; fi
"""

RUN_AUTOGRADER = r"""#!/usr/bin/env bash
# Grade one Gradescope submission with pplab. Gradescope runs this as root
# from /autograder; PPLAB_AUTOGRADER_ROOT moves that root for local trials.
set -u
root="${PPLAB_AUTOGRADER_ROOT:-/autograder}"
source_dir="$root/source"
results="$root/results/results.json"
python="${PPLAB_PYTHON:-}"
if [ -z "$python" ]; then
    if [ -x "$root/pplab-venv/bin/python" ]; then python="$root/pplab-venv/bin/python"; else python=python3; fi
fi

mkdir -p "$root/results"
rm -f "$results"
cd "$source_dir" && PYTHONPATH="$source_dir" "$python" -m grader.bundle run-autograder --root "$root"
status=$?

# Python itself could not run pplab (a failed setup.sh, a broken image):
# still hand Gradescope a valid results.json.
if [ ! -s "$results" ]; then
    echo "run_autograder: pplab exited with status $status and wrote no results; writing score 0" >&2
    printf '%s\n' '{"score": 0, "output": "The autograder could not start pplab, so this submission was not graded. Your instructor can see the error log; please tell them.", "output_format": "text", "stdout_visibility": "hidden", "tests": []}' > "$results"
fi
exit 0
"""


class BundleError(ValueError):
    """Bad input to ``pplab gradescope-bundle``."""


# --- building the zip -----------------------------------------------------------

def bundle_members(repo_root: Path = REPO_ROOT) -> list[tuple[str, Path]]:
    """Return (name in the zip, file) for every pplab source file the autograder needs, sorted."""
    members = []
    for name in SOURCES:
        path = repo_root / name
        if path.is_file():
            members.append((name, path))
            continue
        if not path.is_dir():
            raise BundleError(f"{path} not found: build the bundle from a full pplab checkout")
        for file in sorted(path.rglob("*")):
            relative = file.relative_to(repo_root).as_posix()
            if (not file.is_file() or "__pycache__" in file.parts or file.suffix == ".pyc"
                    or any(relative == e or relative.startswith(e + "/") for e in EXCLUDED)):
                continue
            members.append((relative, file))
    return sorted(members)


def _add(archive: zipfile.ZipFile, name: str, data: bytes, executable: bool = False) -> None:
    info = zipfile.ZipInfo(name, date_time=ZIP_TIMESTAMP)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = (0o100755 if executable else 0o100644) << 16
    archive.writestr(info, data)


def build_bundle(output: Path, repo_root: Path = REPO_ROOT, rubric: Path | None = None,
                 secret: Path | None = None) -> list[str]:
    """Write the Gradescope autograder zip to ``output`` and return the names it holds.

    ``setup.sh`` and ``run_autograder`` sit at the root of the zip, as
    Gradescope requires, with their executable bits set. ``rubric``, when
    given, is bundled as ``autograder_rubric.toml`` and used instead of
    ``grader/rubric.toml``. ``secret``, when given, is bundled as
    ``secret_seed.txt``: official grading then adds examples drawn from it.
    """
    names = []
    with zipfile.ZipFile(output, "w") as archive:
        for name, text in (("setup.sh", SETUP_SH), ("run_autograder", RUN_AUTOGRADER)):
            _add(archive, name, text.encode(), executable=True)
            names.append(name)
        if rubric is not None:
            _add(archive, BUNDLED_RUBRIC, rubric.read_bytes())
            names.append(BUNDLED_RUBRIC)
        if secret is not None:
            _add(archive, SECRET_FILE, secret.read_bytes())
            names.append(SECRET_FILE)
        for name, path in bundle_members(repo_root):
            _add(archive, name, path.read_bytes())
            names.append(name)
    return names


# --- grading inside the autograder ------------------------------------------------

def failure_results(message: str, execution_time_s: float = 0.0) -> dict:
    """Return a results.json document with score 0 and ``message`` as the learner's explanation."""
    return {"score": 0.0, "execution_time": int(round(execution_time_s)), "output": message,
            "output_format": "text", "stdout_visibility": "hidden", "tests": []}


def _write_results(path: Path, document: dict) -> None:
    from .schemas import validate_gradescope_results

    problems = validate_gradescope_results(document)
    if problems:
        raise ValueError(f"results.json would be invalid, so it was not written: {'; '.join(problems)}")
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def find_submission(submission_dir: Path, modules: list[str]) -> tuple[Path | None, list[str]]:
    """Return the folder holding the learner's modules and the modules it lacks.

    The modules are looked for at the top of the upload, then in its
    ``exercises/`` folder (a submission from a clone of the pplab
    repository). Of two incomplete candidates the one lacking fewer wins.
    """
    best, best_missing = None, list(modules)
    for folder in (submission_dir, submission_dir / "exercises"):
        if not folder.is_dir():
            continue
        missing = [module for module in modules if not (folder / f"{module}.py").is_file()]
        if not missing:
            return folder, []
        if best is None or len(missing) < len(best_missing):
            best, best_missing = folder, missing
    return best, best_missing


def _rubric_path(source_dir: Path) -> Path:
    from .rubric import DEFAULT_RUBRIC

    if os.environ.get("PPLAB_RUBRIC"):
        return Path(os.environ["PPLAB_RUBRIC"])
    if (source_dir / BUNDLED_RUBRIC).is_file():
        return source_dir / BUNDLED_RUBRIC
    return DEFAULT_RUBRIC


SECRET_FILE = "secret_seed.txt"


def grading_environment(source_dir: Path) -> dict[str, str]:
    """Environment of the grading process: the sources on the path, the bundled secret if any."""
    environment = dict(os.environ, PYTHONPATH=str(source_dir))
    secret = source_dir / SECRET_FILE
    if secret.is_file() and not environment.get("PPLAB_SECRET_SEED"):
        environment["PPLAB_SECRET_SEED"] = secret.read_text(encoding="utf-8").strip()
    return environment


def _grade_submission(root: Path, source_dir: Path) -> dict:
    """Grade ``root/submission`` and return the results.json document."""
    from . import checks  # noqa: F401  (registers every check)
    from .batch import _terminate
    from .rubric import load_rubric
    from .runner import required_modules

    rubric_path = _rubric_path(source_dir)
    modules = required_modules(load_rubric(rubric_path))
    folder, missing = find_submission(root / "submission", modules)
    if folder is None:
        return failure_results("No submission files were found. Upload the .py files from exercises/.")
    if missing:
        names = ", ".join(f"{module}.py" for module in missing)
        return failure_results(
            f"Your submission is missing {names}, so it was not graded (score 0). Upload every .py file "
            "of exercises/, the unfinished ones as they are, at the top level of your submission.")

    work = root / "pplab-work" / "exercises"
    shutil.rmtree(work.parent, ignore_errors=True)
    work.mkdir(parents=True)
    for path in sorted(folder.glob("*.py")):
        shutil.copyfile(path, work / path.name)

    results = root / "results" / "results.json"
    timeout_s = float(os.environ.get("PPLAB_GRADE_TIMEOUT", DEFAULT_GRADE_TIMEOUT_S))
    command = [sys.executable, "-m", "grader.batch", "grade", str(work), "--format", "gradescope",
               "--output", str(results), "--rubric", str(rubric_path)]
    environment = grading_environment(source_dir)
    started = time.monotonic()
    print(f"run_autograder: {' '.join(command)}", flush=True)
    process = subprocess.Popen(command, cwd=source_dir, env=environment, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _terminate(process)
        process.communicate()
        return failure_results(
            f"Grading took longer than {timeout_s:g} s and was stopped, so this submission got score 0. "
            "Look for code that loops forever or is very slow, and run `pplab grade` on your machine.",
            time.monotonic() - started)
    elapsed = time.monotonic() - started
    if stderr.strip():
        print(stderr.rstrip(), flush=True)  # results/stdout: instructors only

    if process.returncode == 0 and results.is_file():
        from .schemas import validate_gradescope_results

        document = json.loads(results.read_text(encoding="utf-8"))
        problems = validate_gradescope_results(document)
        if not problems:
            return document
        print(f"run_autograder: pplab wrote an invalid results.json: {problems}", flush=True)
    lines = [line for line in stderr.splitlines() if line.strip()]
    if process.returncode == 2 and lines:
        reason = lines[-1].removeprefix("pplab: error: ")
        return failure_results(f"This submission cannot be graded: {reason}", elapsed)
    return failure_results(
        f"The autograder failed while grading (exit status {process.returncode}), so this submission got "
        "score 0. This is not a verdict on your code: your instructor can see the error log.", elapsed)


def run_autograder(root: Path) -> int:
    """Grade ``root/submission`` and write ``root/results/results.json``; return 0.

    Every failure, including a crash of this function, ends in a valid
    results.json with score 0 and a message for the learner.
    """
    source_dir = REPO_ROOT  # the unpacked zip this module was loaded from
    results = root / "results" / "results.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    try:
        document = _grade_submission(root, source_dir)
    except Exception as error:  # the learner gets a message, the instructor the traceback
        logger.exception("run_autograder failed")
        document = failure_results(
            f"The autograder failed ({type(error).__name__}), so this submission got score 0. This is not "
            "a verdict on your code: your instructor can see the error log.")
    _write_results(results, document)
    print(f"run_autograder: score {document.get('score')} written to {results}", flush=True)
    return 0


# --- command line -------------------------------------------------------------------

def add_parser(subparsers) -> None:
    """Register ``pplab gradescope-bundle``."""
    parser = subparsers.add_parser(
        "gradescope-bundle", help="write a Gradescope autograder zip (instructors)",
        description="Write a zip to upload as a Gradescope programming assignment's autograder: "
                    "setup.sh, run_autograder and the pplab sources, reference solutions included.")
    parser.add_argument("output", metavar="OUT.zip", help="zip file to write")
    parser.add_argument("--rubric", metavar="FILE", help="rubric TOML file to grade with (default: the packaged one)")
    parser.add_argument("--secret-file", metavar="FILE",
                        help="text file with the course's secret: grading adds examples drawn from it, "
                             "so answers copied from the public examples do not pass")
    parser.set_defaults(handler=_bundle_command)


def _bundle_command(args: argparse.Namespace) -> int:
    from .rubric import RubricError, load_rubric

    output = Path(args.output)
    problem = None
    if output.is_dir():
        problem = f"{output} is a folder; name the zip file to write, such as autograder.zip"
    elif not output.parent.is_dir():
        problem = f"folder {output.parent} for {output.name} does not exist; create it first"
    elif output.suffix != ".zip":
        problem = f"{output} does not end in .zip; Gradescope takes a .zip file"
    rubric = Path(args.rubric) if args.rubric else None
    if problem is None and rubric is not None:
        from . import checks  # noqa: F401  (registers every check)
        from .checking import REGISTRY

        try:
            unknown = [entry.id for entry in load_rubric(rubric).checks if entry.id not in REGISTRY]
            if unknown:
                problem = f"rubric {rubric} names checks that do not exist: {', '.join(unknown)}"
        except RubricError as error:
            problem = str(error)
    secret = Path(args.secret_file) if args.secret_file else None
    if problem is None and secret is not None and not (secret.is_file() and secret.read_text(encoding="utf-8").strip()):
        problem = f"--secret-file {secret}: not a file with text in it; write the course's secret there"
    if problem is None:
        try:
            names = build_bundle(output, rubric=rubric, secret=secret)
        except BundleError as error:
            problem = str(error)
    if problem is not None:
        print(f"pplab: error: {problem}", file=sys.stderr)
        return 2
    print(f"wrote {output}: {len(names)} files. Upload it on the assignment's Configure Autograder page "
          "with an Ubuntu 22.04 (or newer) base image.")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m grader.bundle run-autograder --root ROOT``."""
    parser = argparse.ArgumentParser(prog="python -m grader.bundle")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run-autograder", help="grade ROOT/submission into ROOT/results/results.json")
    run.add_argument("--root", default=os.environ.get("PPLAB_AUTOGRADER_ROOT", "/autograder"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run_autograder(Path(args.root))


if __name__ == "__main__":
    sys.exit(main())
