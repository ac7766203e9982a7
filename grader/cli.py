"""The ``pplab`` command line: grade, viz, plan, run, stubs."""

from __future__ import annotations

import argparse
import importlib
import inspect
import importlib.util
import logging
import sys
import traceback
from pathlib import Path

from . import __version__

EXIT_OK, EXIT_BELOW_THRESHOLD, EXIT_USAGE = 0, 1, 2
REPO_ROOT = Path(__file__).resolve().parents[1]
# A student release has no reference/, so its scripts run the learner's exercises/ by default.
DEFAULT_IMPL = "reference" if (REPO_ROOT / "reference").is_dir() else "exercises"


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


def _fail(message: str) -> int:
    print(f"pplab: error: {message}", file=sys.stderr)
    return EXIT_USAGE


# --- grade --------------------------------------------------------------------

def _add_grade(subparsers) -> None:
    parser = subparsers.add_parser(
        "grade", help="grade a submission folder laid out like exercises/",
        description="Grade a submission: every check runs the submission in a sandboxed worker process.")
    parser.add_argument("path", nargs="?", default="exercises",
                        help="submission folder (default: ./exercises)")
    parser.add_argument("--format", choices=("text", "json", "gradescope", "junit"), default="text",
                        help="report format on stdout: text, json, Gradescope results.json, "
                             "or JUnit XML (default: text)")
    parser.add_argument("--output", metavar="FILE",
                        help="also write the report to FILE, in --format's format (JSON for text)")
    parser.add_argument("--check", action="append", metavar="ID", dest="checks",
                        help="run only this check (repeatable), e.g. schedules.one_f_one_b")
    parser.add_argument("--visible-only", action="store_true", help="run only the visible checks")
    parser.add_argument("--replay", metavar="ID",
                        help="run one check again and show its counterexample, the calls your code got, "
                             "its traceback and a line to rerun the failing call")
    parser.add_argument("--list", action="store_true", help="list the checks with points and exit")
    parser.add_argument("--seed", type=int, metavar="N",
                        help="explore with a random seed and 4x the examples (not an official grade)")
    parser.add_argument("--timeout", type=float, default=20.0, metavar="SECONDS",
                        help="wall-clock limit for one call into the submission (default: 20)")
    parser.add_argument("--fail-under", type=float, metavar="PCT",
                        help="exit with status 1 when the score is below PCT percent")
    parser.add_argument("--rubric", metavar="FILE", help="rubric TOML file (default: the packaged one)")
    parser.add_argument("--no-history", action="store_true",
                        help="do not store this grade in PATH/.pplab/, where pplab status and the hints read it")
    parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log debug messages to stderr")
    parser.set_defaults(handler=_grade)


def _grade(args: argparse.Namespace) -> int:
    from .checking import ExplorationMode
    from .report import render_gradescope, render_json, render_junit, render_text
    from .rubric import DEFAULT_RUBRIC, RubricError, load_rubric
    from .runner import SubmissionError, grade
    from .sandbox import Limits

    if args.timeout <= 0:
        return _fail(f"--timeout must be a positive number of seconds, got {args.timeout:g}")
    if args.fail_under is not None and not 0 <= args.fail_under <= 100:
        return _fail(f"--fail-under must be a percentage from 0 to 100, got {args.fail_under:g}")
    try:
        rubric = load_rubric(Path(args.rubric) if args.rubric else DEFAULT_RUBRIC)
    except RubricError as error:
        return _fail(str(error))
    if args.list:
        if args.format == "json":
            import json

            print(json.dumps([{"id": e.id, "exercise": e.exercise, "title": e.title, "points": e.points,
                               "visibility": e.visibility} for e in rubric.checks], indent=2))
            return EXIT_OK
        for entry in rubric.checks:
            print(f"{entry.id:<36} {entry.points:>4g}  {entry.visibility:<7}  {entry.title}")
        for entry in rubric.official_only:
            print(f"{entry.id:<36} {entry.points:>4g}  hidden   {entry.title} (graded only officially)")
        return EXIT_OK
    known = {entry.id for entry in rubric.checks}
    if args.replay:
        if args.checks:
            return _fail("--replay runs one check; drop --check")
        args.checks = [args.replay]
    unknown = [c for c in args.checks or [] if c not in known]
    if unknown and unknown[0] in {entry.id for entry in rubric.official_only}:
        return _fail(f"check {unknown[0]!r} is hidden: only the official grader runs it, "
                     "and this release does not contain it")
    if unknown:
        return _fail(f"unknown check {unknown[0]!r}; known checks: {', '.join(sorted(known))}")
    subset = bool(args.checks or args.visible_only)
    rubric = rubric.select("visible" if args.visible_only else None, args.checks)
    if not rubric.checks:
        return _fail("the selected checks are all hidden; drop --visible-only or pick visible checks")
    if args.output:
        problem = _output_problem(Path(args.output), Path(args.path))
        if problem:
            return _fail(problem)

    if args.seed is not None and DEFAULT_IMPL == "exercises":
        return _fail("--seed explores new inputs with the reference solutions, which this student copy "
                     "does not have: its checks replay recorded inputs; drop --seed")
    mode = ExplorationMode() if args.seed is None else ExplorationMode(seed=args.seed, example_scale=4.0)
    if subset:
        # A subset is never an official grade, whatever the seed.
        mode = ExplorationMode(seed=mode.seed, example_scale=mode.example_scale, subset=True)
    show_progress = args.format == "text" and sys.stderr.isatty()

    def progress(result, done, total):
        if show_progress:
            print(f"\r[{done}/{total}] {result.id:<40}", end="", file=sys.stderr, flush=True)

    try:
        report = grade(Path(args.path), rubric, Limits(call_timeout=args.timeout), mode, progress,
                       replay=bool(args.replay))
    except SubmissionError as error:
        return _fail(str(error))
    if show_progress:
        print("\r" + " " * 60 + "\r", end="", file=sys.stderr)

    renderers = {"text": render_text, "json": render_json, "gradescope": render_gradescope,
                 "junit": render_junit}
    print(renderers[args.format](report))
    if args.format == "text":
        # Learner history (hints, status) only for people reading the text
        # report; CI formats leave the submission folder untouched.
        from .status import after_grade

        extra = after_grade(Path(args.path), report.to_dict(), rubric, save=not args.no_history,
                            list_hidden=not subset)
        if extra:
            print("\n" + extra)
    if args.output:
        saved = render_json if args.format == "text" else renderers[args.format]
        Path(args.output).write_text(saved(report) + "\n", encoding="utf-8")
    if args.fail_under is not None and report.max_score:
        if 100.0 * report.score / report.max_score < args.fail_under:
            return EXIT_BELOW_THRESHOLD
    return EXIT_OK


def _output_problem(output: Path, submission: Path) -> str | None:
    """Say why the report cannot go to ``output``, or return None."""
    if not output.parent.is_dir():
        return f"--output {output}: folder {output.parent} does not exist"
    if output.suffix == ".py":
        return f"--output {output}: refusing to overwrite a Python file; name the report *.json"
    try:
        output.resolve().relative_to(submission.resolve())
    except ValueError:
        return None
    return f"--output {output} is inside the submission folder {submission}; write the report elsewhere"


# --- viz ----------------------------------------------------------------------

def load_implementation(impl: str, module: str):
    """Import ``module`` from ``reference``, ``exercises`` or a submission folder path."""
    if impl == "exercises" and Path("exercises", f"{module}.py").is_file():
        impl = "exercises/"  # the learner's folder here, like `pplab grade`'s default
    if impl == "reference" and not (REPO_ROOT / "reference").is_dir():
        raise UsageError("--impl reference needs reference/, which only the instructor's copy has; "
                         "use --impl exercises or a submission folder")
    if impl in ("reference", "exercises"):
        return importlib.import_module(f"{impl}.{module}")
    folder = Path(impl)
    if not folder.is_dir():
        raise UsageError(f"--impl {impl!r} is neither 'reference', 'exercises' nor an existing folder")
    if not (folder / f"{module}.py").is_file():
        raise UsageError(f"{folder} has no {module}.py; copy it from exercises/")
    # Load the folder as a private package so its relative imports resolve to its own files.
    package = "pplab_submission"
    spec = importlib.util.spec_from_file_location(
        package, folder / "__init__.py" if (folder / "__init__.py").exists() else None,
        submodule_search_locations=[str(folder)])
    if spec.loader is None:
        import types

        root = types.ModuleType(package)
        root.__path__ = [str(folder)]
        sys.modules[package] = root
    else:
        root = importlib.util.module_from_spec(spec)
        sys.modules[package] = root
        spec.loader.exec_module(root)
    return importlib.import_module(f"{package}.{module}")


def _add_script(subparsers, name: str, module: str, help_text: str) -> None:
    parser = subparsers.add_parser(name, help=help_text, add_help=False,
                                   description=f"{help_text}. Options after the command go to {module}.py; "
                                               "--impl reference|exercises|PATH picks whose code runs.")
    parser.add_argument("--impl", default=DEFAULT_IMPL,
                        help=f"whose code to run: reference (instructors only), exercises or a submission "
                             f"folder (default: {DEFAULT_IMPL})")
    parser.set_defaults(handler=lambda args: _run_script(module, args))


def _run_script(module: str, args: argparse.Namespace) -> int:
    try:
        script = load_implementation(args.impl, module)
    except UsageError as error:
        return _fail(str(error))
    except SyntaxError as error:
        return _fail(f"{error.filename}, line {error.lineno}: {error.msg}")
    except ImportError as error:
        return _fail(f"cannot import {module}.py from {args.impl}: {error}")
    try:
        if "prog" in inspect.signature(script.main).parameters:
            return int(script.main(args.rest, prog=f"pplab {args.command}") or 0)
        return int(script.main(args.rest) or 0)
    except NotImplementedError as error:
        where = traceback.extract_tb(error.__traceback__)[-1]
        advice = "finish it" + (", or run with --impl reference" if DEFAULT_IMPL == "reference" else "")
        return _fail(f"{module}.py from {args.impl} calls {where.name}() in {Path(where.filename).name}, "
                     f"which is not implemented yet; {advice}")


def _add_run(subparsers) -> None:
    parser = subparsers.add_parser(
        "run", add_help=False, help="run a pipeline schedule on several processes (pplab run --help)",
        description="Options go to pipeline_launch.py; --impl reference|PATH picks whose per-rank loop runs.")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    # The launcher is given code, identical in reference/ and exercises/;
    # a student release has only the latter.
    try:
        launcher = importlib.import_module("reference.pipeline_launch")
    except ImportError:
        launcher = importlib.import_module("exercises.pipeline_launch")
    rest = list(args.rest)
    if DEFAULT_IMPL == "exercises":
        impl = next((rest[i + 1] for i, arg in enumerate(rest[:-1]) if arg == "--impl"), None)
        impl = next((arg.split("=", 1)[1] for arg in rest if arg.startswith("--impl=")), impl)
        if impl == "reference":
            return _fail("--impl reference needs reference/, which only the instructor's copy has; "
                         "use --impl exercises or a submission folder")
        if impl is None:
            rest += ["--impl", "exercises"]
    try:
        return int(launcher.main(rest) or 0)
    except NotImplementedError as error:
        return _fail(f"a function the run needs is not implemented yet ({error}); finish schedules.py "
                     "and pipeline_runtime.py first")



# --- stubs --------------------------------------------------------------------

def _add_stubs(subparsers) -> None:
    parser = subparsers.add_parser("stubs", help="regenerate exercises/ from reference/ (instructors)")
    parser.add_argument("--check", action="store_true",
                        help="only report whether exercises/ is up to date (exit 1 when stale)")
    parser.set_defaults(handler=_stubs)


def _stubs(args: argparse.Namespace) -> int:
    if not (REPO_ROOT / "reference").is_dir():
        return _fail("pplab stubs is for instructors: it regenerates exercises/ from reference/, which "
                     "this copy does not have; your exercises/ is already the stubs")
    try:
        import nbgrader  # noqa: F401
    except ImportError:
        return _fail("pplab stubs needs nbgrader: pip install -e '.[test]'")
    from .stubs import generate_stubs, stale_files

    reference, exercises = REPO_ROOT / "reference", REPO_ROOT / "exercises"
    if not reference.is_dir():
        return _fail(f"{reference} not found: stubs are generated from the instructor's copy")
    if args.check:
        stale = stale_files(reference, exercises)
        for name in stale:
            print(f"stale: exercises/{name}")
        return 1 if stale else EXIT_OK
    for name in generate_stubs(reference, exercises):
        print(f"wrote exercises/{name}")
    return EXIT_OK


# --- entry point --------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pplab", description="Pipeline- and expert-parallelism exercises and grader.")
    parser.add_argument("--version", action="version", version=f"pplab {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages to stderr")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_grade(subparsers)
    _add_script(subparsers, "viz", "pipeline_schedule_viz", "draw pipeline schedules as ASCII or PNG charts")
    _add_script(subparsers, "plan", "parallel_strategy_calculator",
                "memory, communication and the best parallel configurations for a model on a cluster")
    _add_run(subparsers)
    _add_stubs(subparsers)
    from . import batch, bundle

    batch.add_parser(subparsers)
    bundle.add_parser(subparsers)
    from . import golden, release, status

    golden.add_parser(subparsers)
    release.add_parser(subparsers)
    status.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command not in ("viz", "plan", "run") and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("pplab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader closed the pipe (`pplab ... | head`), so stop quietly.
        sys.stderr.close()
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
