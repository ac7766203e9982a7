"""The cost of the sandbox: a full grade of the reference, isolated and not.

One invocation times two commands, each in a fresh Python process and from
its start to its exit, so that both pay for starting Python, importing the
grader and warming up torch:

- isolated: ``pplab grade reference`` (``python -m grader.cli``), with
  every check in its own sandboxed worker forked from the fork servers,
  whose start-up is part of the time;
- in process: this script with ``--in-process``, which imports the same
  checks and calls each check's body with an
  :class:`grader.inprocess.InProcessWorker` on ``reference/``: no worker
  process, no limits, no plain-data boundary beyond the value conversion.

The rounds alternate between the two and the medians are compared; the
target is isolated / in process <= 1.5. ``--warm`` also reports the
steady state of a long-lived grader (several grades in one process), which
is what ``pplab grade-all`` and the test suite see.

    python bench/bench_isolation.py [--rounds N] [--warm]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "reference"


def grade_in_process() -> None:
    """Run every check of the rubric on the reference in this process; fail loudly on a failure."""
    from grader import checks  # noqa: F401  (registers every check)
    from grader.checking import REGISTRY
    from grader.inprocess import InProcessWorker
    from grader.rubric import load_rubric

    for entry in load_rubric().checks:
        REGISTRY[entry.id].body(InProcessWorker(REFERENCE))


def timed(command: list[str]) -> float:
    """Run ``command`` from the repository root and return its wall-clock seconds."""
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with status {done.returncode}:\n{done.stderr[-2000:]}")
    return elapsed


def warm_grades(count: int) -> list[float]:
    """Grade the reference ``count`` times in this process; return each grade's seconds."""
    from grader.runner import grade

    times = []
    for _ in range(count):
        started = time.perf_counter()
        grade(REFERENCE)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are compared")
    parser.add_argument("--warm", action="store_true", help="also time repeated grades in one process")
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.in_process:
        grade_in_process()
        return

    isolated_command = [sys.executable, "-m", "grader.cli", "grade", "reference", "--format", "json",
                        "--no-history"]
    in_process_command = [sys.executable, str(Path(__file__).resolve()), "--in-process"]
    isolated, in_process = [], []
    for round_number in range(1, args.rounds + 1):
        in_process.append(timed(in_process_command))
        isolated.append(timed(isolated_command))
        print(f"round {round_number}: isolated {isolated[-1]:.2f} s, in process {in_process[-1]:.2f} s",
              flush=True)

    ratio = statistics.median(isolated) / statistics.median(in_process)
    print(f"full grade of the reference, process start to exit: isolated median "
          f"{statistics.median(isolated):.2f} s, in process median {statistics.median(in_process):.2f} s")
    print(f"ratio isolated / in process: {ratio:.2f} (target <= 1.5)")
    if args.warm:
        times = warm_grades(3)
        print("grades in one long-lived process (fork servers already warm after the first): "
              + ", ".join(f"{t:.2f} s" for t in times))


if __name__ == "__main__":
    main()
