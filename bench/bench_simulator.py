"""Time simulate() on a large interleaved schedule and on one twice as long.

The simulator is meant to be linear in the number of actions, so doubling
the microbatches should at most roughly double the time. The script prints
both timings and their ratio; the benchmark page records them.

    python bench/bench_simulator.py [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import time

from reference.schedules import interleaved_1f1b
from reference.simulator import simulate


def time_simulation(num_stages: int, num_microbatches: int, num_chunks: int, repeats: int) -> tuple[int, float]:
    schedule = interleaved_1f1b(num_stages, num_microbatches, num_chunks)
    num_actions = sum(len(actions) for actions in schedule)
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        simulate(schedule, 1.0, 2.0, 0.0, 0.1)
        timings.append(time.perf_counter() - started)
    return num_actions, statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per size; the median is reported")
    args = parser.parse_args()

    base_actions, base_time = time_simulation(64, 1024, 4, args.repeats)
    double_actions, double_time = time_simulation(64, 2048, 4, args.repeats)
    print(f"interleaved P=64 M=1024 v=4: {base_actions:,} actions in {base_time:.2f} s "
          f"({base_actions / base_time:,.0f} actions/s)")
    print(f"interleaved P=64 M=2048 v=4: {double_actions:,} actions in {double_time:.2f} s "
          f"({double_actions / double_time:,.0f} actions/s)")
    print(f"time ratio (2x actions / 1x actions): {double_time / base_time:.2f} (target <= 2.3)")


if __name__ == "__main__":
    main()
