"""Time `pplab grade-all` on the shipped sample submissions with one job, then with two.

Each job is one long-lived grading process that grades submission after
submission. On two idle cores, two jobs should take a little over half the
time of one: the target speed-up is 1.6. The script materialises the
samples of ``datasets/submissions/samples.toml`` (all of them, or the first
N) into a temporary folder. It skips the sample that loops at import, which
would only measure a timeout. It grades them with ``--jobs 1`` and then
``--jobs 2`` in this one invocation and checks that both runs give the same
grades. It prints both times, their ratio and the load average, because
other processes on the machine lower the speed-up.

    python bench/bench_grade_all.py [--samples N] [--check ID ...]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from grader.batch import BatchOptions, grade_all
from grader.samples import load_samples, materialize

SKIPPED = {"loop_at_import"}


def children_cpu_seconds() -> float:
    """Return the user and system CPU seconds of this process's finished child processes and theirs."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=None, metavar="N",
                        help="grade only the first N samples (default: all shipped samples)")
    parser.add_argument("--check", action="append", dest="checks", metavar="ID",
                        help="grade only this check (repeatable; default: the whole rubric)")
    args = parser.parse_args()

    samples = load_samples()
    names = [name for name in samples if name not in SKIPPED][:args.samples]
    with tempfile.TemporaryDirectory(prefix="pplab-bench-") as tmp:
        root = Path(tmp)
        for name in names:
            materialize(samples[name], root / "submissions" / name)
        print(f"{len(names)} submissions: {', '.join(names)}")
        print(f"load average before: {load_average()}")

        seconds, cpu_seconds, grades = {}, {}, {}
        for jobs in (1, 2):
            options = BatchOptions(checks=tuple(args.checks or ()), jobs=jobs)
            cpu_before = children_cpu_seconds()
            started = time.perf_counter()
            records = grade_all(root / "submissions", root / f"grades_{jobs}.csv", options, progress_stream=None)
            seconds[jobs] = time.perf_counter() - started
            cpu_seconds[jobs] = children_cpu_seconds() - cpu_before
            grades[jobs] = [(r["submission"], r["status"], r["score"]) for r in records]
            print(f"--jobs {jobs}: {seconds[jobs]:.1f} s ({seconds[jobs] / len(names):.1f} s per submission, "
                  f"{cpu_seconds[jobs] / len(names):.1f} CPU s per submission), load average after: {load_average()}")

    if grades[1] != grades[2]:
        raise SystemExit(f"the two runs disagree:\n{grades[1]}\n{grades[2]}")
    # One job already runs some work in parallel (worker and rank
    # processes), so two cores may not give two jobs twice its speed.
    cores_used = cpu_seconds[1] / seconds[1]
    print(f"--jobs 1 kept {cores_used:.2f} cores busy on average, so 2 idle cores allow a speed-up "
          f"of at most {min(2.0, 2.0 / cores_used):.2f}")
    print(f"speed-up of --jobs 2 over --jobs 1: {seconds[1] / seconds[2]:.2f} (target >= 1.6)")


if __name__ == "__main__":
    main()
