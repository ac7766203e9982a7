"""Draw pipeline schedules as ASCII charts and PNG Gantt charts, with their bubble and memory figures.

Each chart has one row per pipeline rank and time running left to right. It
comes with the makespan, the bubble fraction and overhead (simulated and
closed form) and the peak number of stashed activations per rank.
``--compare`` stacks GPipe, 1F1B, interleaved 1F1B and ZB-H1 for the same
``P`` and ``M``. The schedules drawn are those of the package this file sits
in (``reference``, or your own ``exercises``). Run it as a module or as a
file::

    python -m exercises.pipeline_schedule_viz --schedule 1f1b --stages 4 --microbatches 8
    python -m exercises.pipeline_schedule_viz --compare --png schedules.png
    python exercises/pipeline_schedule_viz.py --schedule interleaved --chunks 2

Pass times (``--forward-time``, ``--backward-time``, ``--weight-time``,
``--comm-time``) are for one microbatch through all the layers one rank holds,
in any consistent unit. The defaults 1, 2, 0, 0 measure time in forward
passes. Two schedules convert them before simulating:

- interleaved 1F1B gives each of its ``v`` chunks ``1 / v`` of a rank's
  layers, so a pass through one chunk takes ``1 / v`` of each time.
  ``comm_time`` is per transfer and stays as given, and interleaving makes
  ``v`` times as many transfers.
- ZB-H1 splits the backward pass into ``B`` (input gradient) and ``W`` (weight
  gradient). When ``--weight-time`` is 0, each half of ``--backward-time``
  goes to one of them. When it is not 0, ``B`` takes ``--backward-time`` and
  ``W`` takes ``--weight-time``, while the other schedules run both as one
  backward pass of ``backward_time + weight_time``.

Functions a learner has not written yet raise NotImplementedError. The
script then prints one line naming the function and goes on with the other
schedules.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import math
import os
import sys
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

if __name__ == "__main__" and not __package__:
    # Run as a file (python exercises/pipeline_schedule_viz.py): import the
    # enclosing folder as a package so that the relative imports resolve.
    # Python put the folder itself first on sys.path, where its modules could
    # shadow others, so its parent takes that place.
    _PACKAGE_DIR = Path(__file__).resolve().parent
    if sys.path and Path(sys.path[0] or ".").resolve() == _PACKAGE_DIR:
        sys.path[0] = str(_PACKAGE_DIR.parent)
    else:
        sys.path.insert(0, str(_PACKAGE_DIR.parent))
    __package__ = _PACKAGE_DIR.name
    importlib.import_module(__package__)

from . import bubbles
from .schedules import BACKWARD, FORWARD, SCHEDULES, WEIGHT, Action, build_schedule, interleaved_group_size
from .simulator import DeadlockError, Timeline, simulate

logger = logging.getLogger(__name__)

DEFAULT_WIDTH = 100
COMPARE_ORDER = ("gpipe", "1f1b", "interleaved", "zero_bubble_h1")
TIME_LABEL = "time (units of one forward pass)"

IDLE_CHAR = "."
FILL_CHAR = "-"
# The widest an action's box gets, in columns per time unit, so that short
# runs do not spread over the whole terminal.
MAX_COLUMNS_PER_UNIT = 6
# Larger inputs make unreadable charts, with more rows than a screen shows
# and boxes much narrower than one column.
MAX_STAGES = 64
MAX_MICROBATCHES = 1024
MIN_WIDTH = 30

KIND_COLORS = {FORWARD: "#3b6fb6", BACKWARD: "#d9822b", WEIGHT: "#3a9a5b"}
IDLE_COLOR = "#e4e4e4"


class ScheduleRun(NamedTuple):
    """A simulated schedule and the pass times the simulator ran it with.

    The times are per action, in the simulator's units: for interleaved 1F1B
    they are already divided by the number of chunks, and for ZB-H1 they are
    the split ``B`` and ``W`` times (see :func:`simulation_times`).
    """

    name: str
    timeline: Timeline
    forward_time: float
    backward_time: float
    weight_time: float
    comm_time: float


# ---------------------------------------------------------------- simulation


def simulation_times(
    name: str,
    num_chunks: int,
    forward_time: float,
    backward_time: float,
    weight_time: float,
) -> tuple[float, float, float]:
    """Convert per-rank pass times into the per-action times :func:`simulate` takes.

    Returns ``(forward, backward, weight)``. Interleaved 1F1B divides each
    time by ``num_chunks``. ZB-H1 with ``weight_time == 0`` splits
    ``backward_time`` in two equal halves for ``B`` and ``W``. Every other
    case returns the times unchanged.
    """
    if name == "interleaved":
        return forward_time / num_chunks, backward_time / num_chunks, weight_time / num_chunks
    if name == "zero_bubble_h1" and weight_time == 0:
        return forward_time, backward_time / 2, backward_time / 2
    return forward_time, backward_time, weight_time


def run_schedule(
    name: str,
    num_stages: int,
    num_microbatches: int,
    num_chunks: int = 2,
    *,
    forward_time: float = 1.0,
    backward_time: float = 2.0,
    weight_time: float = 0.0,
    comm_time: float = 0.0,
) -> ScheduleRun:
    """Build the schedule ``name`` and simulate it.

    ``num_chunks`` is used by the interleaved schedule only. Times are per
    rank as the module docstring describes. Raises NotImplementedError
    naming the first function that is not written yet, ValueError for
    invalid arguments or a malformed schedule, and DeadlockError when the
    schedule cannot finish.
    """
    chunks = num_chunks if name == "interleaved" else 1
    function_name = getattr(SCHEDULES.get(name), "__name__", name)
    try:
        schedule = build_schedule(name, num_stages, num_microbatches, chunks)
    except NotImplementedError as exc:
        raise NotImplementedError(f"{function_name} is not implemented yet") from exc

    forward, backward, weight = simulation_times(
        name, chunks, forward_time, backward_time, weight_time
    )
    logger.debug("simulating %s with F=%s B=%s W=%s comm=%s", name, forward, backward,
                 weight, comm_time)
    try:
        timeline = simulate(schedule, forward, backward, weight, comm_time)
    except NotImplementedError as exc:
        raise NotImplementedError("simulate is not implemented yet") from exc
    return ScheduleRun(name, timeline, forward, backward, weight, comm_time)


def _schedule_shape(timeline: Timeline) -> tuple[int, int, int]:
    """Return ``(P, M, v)`` as read from the actions of ``timeline``."""
    actions = [iv.action for rank_iv in timeline.intervals for iv in rank_iv]
    num_microbatches = 1 + max((a.microbatch for a in actions), default=-1)
    num_chunks = 1 + max((a.chunk for a in actions), default=0)
    return len(timeline.intervals), num_microbatches, num_chunks


def _has_weight_passes(timeline: Timeline) -> bool:
    return any(iv.action.kind == WEIGHT for rank_iv in timeline.intervals for iv in rank_iv)


# ---------------------------------------------------------------- ASCII chart


def action_label(action: Action, num_chunks: int) -> str:
    """Return the chart label of ``action``: kind letter, microbatch, chunk.

    Chunk 0 is upper case (``F3``). With two chunks, chunk 1 is lower case
    (``f3``). With more, every chunk after the first is lower case followed
    by its number (``f3:2``).
    """
    if action.chunk == 0:
        return f"{action.kind}{action.microbatch}"
    label = f"{action.kind.lower()}{action.microbatch}"
    if num_chunks > 2:
        label += f":{action.chunk}"
    return label


def _time_quantum(timelines: Sequence[Timeline]) -> int:
    """Return the smallest ``q`` in 1..12 that makes every start and end time ``q`` an integer.

    Returns 1 when there is no such ``q``.
    """
    times = [t for timeline in timelines for rank_iv in timeline.intervals
             for iv in rank_iv for t in (iv.start, iv.end)]
    for quantum in range(1, 13):
        if all(abs(t * quantum - round(t * quantum)) < 1e-9 for t in times):
            return quantum
    return 1


def columns_per_unit(makespan: float, columns: int, quantum: int = 1) -> float:
    """Return the chart scale in columns per time unit for a chart ``columns`` wide.

    When the makespan fits at one column per unit, the scale is an integer
    up to MAX_COLUMNS_PER_UNIT, a multiple of ``quantum`` where one fits, so
    that times that are multiples of ``1 / quantum`` fall on column edges.
    Otherwise it is ``1 / k`` for the smallest integer ``k`` that makes the
    chart fit.
    """
    if makespan <= 0:
        return 1.0
    fit = columns / makespan
    if fit < 1:
        return 1.0 / math.ceil(makespan / columns)
    upper = min(fit, max(MAX_COLUMNS_PER_UNIT, quantum))
    aligned = quantum * math.floor(upper / quantum)
    return float(aligned if aligned >= 1 else math.floor(upper))


def _prefix_width(num_stages: int) -> int:
    """Return the width of ``"rank r |"`` for the widest rank number."""
    return len(f"rank {max(0, num_stages - 1)}") + 2


def chart_scale(timelines: Sequence[Timeline], width: int = DEFAULT_WIDTH) -> float:
    """Return one scale, in columns per time unit, that fits every chart in ``width`` columns.

    Passing the result to :func:`render_ascii` for each timeline draws
    stacked charts on a common time axis.
    """
    prefix = max(_prefix_width(len(timeline.intervals)) for timeline in timelines)
    makespan = max(timeline.makespan for timeline in timelines)
    return columns_per_unit(makespan, max(1, width - prefix - 1), _time_quantum(timelines))


def _rank_cells(intervals: Sequence, scale: float, num_columns: int,
                num_chunks: int) -> tuple[str, bool]:
    """Return one rank's row of cells and whether a label had to be cut.

    Column ``j`` covers times ``[j / scale, (j + 1) / scale)`` and shows the
    action running at its midpoint, or IDLE_CHAR.
    """
    owner: list[int | None] = [None] * num_columns
    for index, interval in enumerate(intervals):
        first = max(0, math.ceil(interval.start * scale - 0.5))
        stop = min(num_columns, math.ceil(interval.end * scale - 0.5))
        for column in range(first, stop):
            owner[column] = index

    cells: list[str] = []
    shortened = False
    column = 0
    while column < num_columns:
        run_end = column
        while run_end < num_columns and owner[run_end] == owner[column]:
            run_end += 1
        run_length = run_end - column
        if owner[column] is None:
            cells.append(IDLE_CHAR * run_length)
        else:
            action = intervals[owner[column]].action
            label = action_label(action, num_chunks)
            if len(label) > run_length:
                # Never print part of a number: fall back to the kind letter.
                label = label[0]
                shortened = True
            cells.append(label + FILL_CHAR * (run_length - len(label)))
        column = run_end
    return "".join(cells), shortened


def _axis_row(prefix_width: int, num_columns: int, scale: float) -> str:
    """Return a row of time ticks, each number starting at its time's column."""
    widest = len(f"{math.floor(num_columns / scale):g}")
    steps = [multiplier * 10.0**exponent for exponent in range(8) for multiplier in (1, 2, 5)]
    step = next((s for s in steps if s * scale >= widest + 2), steps[-1])
    # The row is as long as a rank row, so a number that would overhang the
    # chart's closing bar is left out.
    row = [" "] * (num_columns + 1)
    index = 0
    while round(index * step * scale) <= num_columns:
        text = f"{index * step:g}"
        column = round(index * step * scale)
        if column + len(text) <= len(row):
            row[column:column + len(text)] = text
        index += 1
    return "time".ljust(prefix_width) + "".join(row).rstrip()


def _legend_lines(timeline: Timeline, scale: float, shortened: bool) -> list[str]:
    _, _, num_chunks = _schedule_shape(timeline)
    if _has_weight_passes(timeline):
        kinds = "F = forward, B = backward for the input gradient, W = weight gradient"
    else:
        kinds = "F = forward, B = backward (input and weight gradients together)"
    lines = [f"{kinds}. The number is the microbatch."]
    if num_chunks == 2:
        lines.append("Chunk 0 is upper case (F3), chunk 1 lower case (f3).")
    elif num_chunks > 2:
        lines.append("Chunk 0 is upper case (F3), chunk c >= 1 lower case with its number (f3:2).")
    if scale >= 1:
        scale_text = f"1 time unit = {scale:g} columns"
    else:
        scale_text = f"1 column = {1 / scale:g} time units"
    lines.append(f"'{IDLE_CHAR}' = idle, '{FILL_CHAR}' = the action continues, {scale_text}.")
    if shortened:
        lines.append("Actions narrower than their label show only the kind letter. "
                     "Raise --width to see every label.")
    return lines


def render_ascii(
    timeline: Timeline,
    width: int = DEFAULT_WIDTH,
    *,
    scale: float | None = None,
    legend: bool = True,
) -> str:
    """Render ``timeline`` as an ASCII Gantt chart at most ``width`` columns wide.

    The first line is a time axis. Then rank ``r`` has the line
    ``"rank r |<cells>|"`` (the rank number left-aligned to the widest),
    where column ``j`` covers times ``[j / s, (j + 1) / s)`` at scale ``s``
    and shows the action running at the column's midpoint. An action's
    columns start with its label (see :func:`action_label`) and continue
    with FILL_CHAR; idle columns are IDLE_CHAR. With integer times and an
    integer scale, an action running from ``t0`` to ``t1`` covers exactly
    columns ``s*t0 .. s*t1 - 1``. ``scale`` defaults to
    ``chart_scale([timeline], width)``; a larger one can exceed ``width``.
    Legend lines follow unless ``legend`` is false.
    """
    num_stages = len(timeline.intervals)
    _, _, num_chunks = _schedule_shape(timeline)
    if scale is None:
        scale = chart_scale([timeline], width)
    prefix_width = _prefix_width(num_stages)
    num_columns = max(0, math.ceil(timeline.makespan * scale - 1e-9))

    lines = [_axis_row(prefix_width, num_columns, scale)]
    any_shortened = False
    for rank, rank_intervals in enumerate(timeline.intervals):
        cells, shortened = _rank_cells(rank_intervals, scale, num_columns, num_chunks)
        any_shortened = any_shortened or shortened
        lines.append(f"{f'rank {rank}':<{prefix_width - 2}} |{cells}|")
    if legend:
        lines.extend(_legend_lines(timeline, scale, any_shortened))
    return "\n".join(lines)


# ---------------------------------------------------------------- figures


def _format_ratio(value: float) -> str:
    """Format ``value`` with four decimals, plus the fraction it equals when it is a simple one."""
    text = f"{value:.4f}"
    fraction = Fraction(value).limit_denominator(1000)
    if fraction.denominator > 1 and abs(float(fraction) - value) < 1e-12:
        text += f" ({fraction})"
    return text


class ClosedForms(NamedTuple):
    """Closed-form figures for one run, with ``None`` where they could not be computed."""

    bubble_fraction: float | None
    bubble_overhead: float | None
    peak_activations: list[int] | None
    notes: list[str]


def closed_forms(run: ScheduleRun) -> ClosedForms:
    """Compute the closed-form bubble and memory figures for ``run``.

    A closed-form function that raises NotImplementedError gives ``None``
    and a note naming it.
    """
    num_stages, num_microbatches, num_chunks = _schedule_shape(run.timeline)
    times = {"forward_time": run.forward_time, "backward_time": run.backward_time,
             "weight_time": run.weight_time}
    notes = []

    def attempt(function_name: str, *args, **kwargs):
        try:
            return getattr(bubbles, function_name)(*args, **kwargs)
        except NotImplementedError:
            note = f"{function_name} is not implemented yet"
            if note not in notes:
                notes.append(note)
            return None

    shape = (run.name, num_stages, num_microbatches, num_chunks)
    fraction = attempt("bubble_fraction", *shape, **times)
    overhead = attempt("bubble_overhead", *shape, **times)
    peaks = [attempt("peak_activations", *shape, pp_rank=rank) for rank in range(num_stages)]
    if run.comm_time:
        notes.append("the closed forms assume comm_time = 0")
    return ClosedForms(fraction, overhead, None if None in peaks else peaks, notes)


def summary(run: ScheduleRun) -> str:
    """Return the figures of ``run`` as text lines, simulated beside closed form.

    Lines: makespan, bubble fraction (idle over total time), bubble overhead
    (idle over busy time) and the peak count of stashed activations per rank,
    then notes (closed forms missing or assuming no communication).
    """
    timeline = run.timeline
    _, _, num_chunks = _schedule_shape(timeline)
    closed = closed_forms(run)

    fraction = timeline.bubble_fraction
    overhead = fraction / (1.0 - fraction) if fraction < 1 else math.inf
    fraction_text = _format_ratio(fraction)
    overhead_text = _format_ratio(overhead)
    if closed.bubble_fraction is not None:
        fraction_text += f"   closed form {_format_ratio(closed.bubble_fraction)}"
    if closed.bubble_overhead is not None:
        overhead_text += f"   closed form {_format_ratio(closed.bubble_overhead)}"
    peaks_text = " ".join(str(peak) for peak in timeline.peak_activations)
    if closed.peak_activations is not None:
        peaks_text += "   closed form " + " ".join(str(p) for p in closed.peak_activations)

    last_rank = len(timeline.intervals) - 1
    rank_range = f"ranks 0..{last_rank}" if last_rank else "rank 0"
    lines = [
        f"makespan          {timeline.makespan:g}",
        f"bubble fraction   {fraction_text}   (idle / total time)",
        f"bubble overhead   {overhead_text}   (idle / busy time)",
        f"peak activations  {peaks_text}   ({rank_range})",
    ]
    if num_chunks > 1:
        lines.append(f"                  one activation = one microbatch through one chunk, "
                     f"1/{num_chunks} of a rank's layers")
    lines.extend(f"note: {note}" for note in closed.notes)
    return "\n".join(lines)


def schedule_header(run: ScheduleRun) -> str:
    """Return a one-line title for ``run``: schedule, shape and per-action times."""
    num_stages, num_microbatches, num_chunks = _schedule_shape(run.timeline)
    return (f"{run.name}: P={num_stages}, M={num_microbatches}, v={num_chunks}; "
            f"per action F={run.forward_time:.4g}, B={run.backward_time:.4g}, "
            f"W={run.weight_time:.4g}, comm={run.comm_time:.4g}")


def compare_table(runs: Sequence[ScheduleRun]) -> str:
    """Return a table of makespan, bubble fraction and rank 0's peak activations per run.

    The last column divides the peak by the number of chunks, so that it
    counts whole microbatches of a rank's layers and compares across
    schedules.
    """
    headers = ("schedule", "makespan", "bubble fraction", "closed form",
               "peak act. rank 0", "in microbatches")
    rows = []
    for run in runs:
        _, _, num_chunks = _schedule_shape(run.timeline)
        closed = closed_forms(run).bubble_fraction
        peak = run.timeline.peak_activations[0]
        rows.append((
            run.name,
            f"{run.timeline.makespan:g}",
            f"{run.timeline.bubble_fraction:.4f}",
            "n/a" if closed is None else f"{closed:.4f}",
            str(peak),
            f"{peak / num_chunks:g}",
        ))
    widths = [max(len(headers[i]), *(len(row[i]) for row in rows)) for i in range(len(headers))]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                       for i, (h, w) in enumerate(zip(headers, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)


# ---------------------------------------------------------------- PNG chart


def _shade(color: str, chunk: int, num_chunks: int) -> tuple[float, float, float]:
    """Return ``color`` mixed with white: chunk 0 as is, later chunks lighter."""
    from matplotlib.colors import to_rgb

    red, green, blue = to_rgb(color)
    mix = 0.6 * chunk / max(1, num_chunks - 1) if num_chunks > 1 else 0.0
    return (red + (1 - red) * mix, green + (1 - green) * mix, blue + (1 - blue) * mix)


def draw_png(
    timelines: Sequence[tuple[str, Timeline]],
    path: str | Path,
    *,
    time_label: str = TIME_LABEL,
) -> None:
    """Draw one Gantt chart per ``(name, timeline)`` pair, stacked, and save a PNG to ``path``.

    Each chart has one row per rank with rank 0 on top, boxes coloured by
    kind (F, B, W) and lighter for later chunks, the microbatch number inside
    each box wide enough for it, and idle time in grey. The subplots share
    the time axis, labelled ``time_label``. The title of each gives the
    schedule, P, M, v and the simulated bubble fraction.

    Uses matplotlib's object-oriented API with the Agg canvas, so it changes
    no global backend and works without a display.
    """
    if not timelines:
        raise ValueError("timelines must contain at least one (name, timeline) pair, got none")
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    rows_per_chart = [max(1, len(timeline.intervals)) for _, timeline in timelines]
    fig_width = 12.0
    dpi = 110
    fig_height = sum(0.32 * rows + 0.9 for rows in rows_per_chart) + 0.9
    figure = Figure(figsize=(fig_width, fig_height), dpi=dpi, layout="constrained")
    axes = figure.subplots(len(timelines), 1, sharex=True, squeeze=False,
                           height_ratios=[rows + 1.2 for rows in rows_per_chart])[:, 0]

    x_max = max(timeline.makespan for _, timeline in timelines) or 1.0
    # Rough pixel budget: the axes take about 85 % of the figure width, and a
    # digit in 7-point type is about 0.6 em wide.
    pixels_per_unit = 0.85 * fig_width * dpi / x_max
    pixels_per_char = 0.6 * 7 / 72 * dpi

    legend_entries: dict[tuple[str, int], tuple[float, float, float]] = {}
    for axes_index, (name, timeline) in enumerate(timelines):
        ax = axes[axes_index]
        num_stages, num_microbatches, num_chunks = _schedule_shape(timeline)
        for rank, rank_intervals in enumerate(timeline.intervals):
            boxes = [(iv.start, iv.end - iv.start) for iv in rank_intervals]
            colors = []
            for interval in rank_intervals:
                key = (interval.action.kind, interval.action.chunk)
                if key not in legend_entries:
                    legend_entries[key] = _shade(KIND_COLORS[key[0]], key[1], num_chunks)
                colors.append(legend_entries[key])
            # White edges separate boxes, but would hide boxes a few pixels wide.
            edges = [0.6 if width * pixels_per_unit >= 4 else 0.0 for _, width in boxes]
            ax.broken_barh([(0, timeline.makespan)], (rank - 0.4, 0.8), facecolors=IDLE_COLOR,
                           zorder=1)
            ax.broken_barh(boxes, (rank - 0.4, 0.8), facecolors=colors, edgecolor="white",
                           linewidths=edges, zorder=2)
            for interval, (start, width) in zip(rank_intervals, boxes):
                text = str(interval.action.microbatch)
                if width * pixels_per_unit >= len(text) * pixels_per_char + 3:
                    ax.text(start + width / 2, rank, text, ha="center", va="center",
                            fontsize=7, zorder=3,
                            color="white" if interval.action.chunk == 0 else "black")
        ax.set_yticks(range(num_stages), [f"rank {rank}" for rank in range(num_stages)])
        ax.set_ylim(num_stages - 0.5, -0.5)
        ax.set_xlim(0, x_max)
        ax.set_title(f"{name}: P={num_stages}, M={num_microbatches}, v={num_chunks}, "
                     f"bubble fraction {timeline.bubble_fraction:.3f}", fontsize=10)
        ax.tick_params(axis="y", length=0)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    axes[-1].set_xlabel(time_label)

    weight_flags = {_has_weight_passes(timeline) for _, timeline in timelines}
    backward_names = {frozenset({False}): "B backward", frozenset({True}): "B input grad",
                      frozenset({False, True}): "B backward (input grad if W drawn)"}
    kind_names = {FORWARD: "F forward", BACKWARD: backward_names[frozenset(weight_flags)],
                  WEIGHT: "W weight grad"}
    show_chunks = any(chunk > 0 for _, chunk in legend_entries)
    order = {FORWARD: 0, BACKWARD: 1, WEIGHT: 2}
    handles = []
    for (kind, chunk), color in sorted(legend_entries.items(),
                                       key=lambda item: (order[item[0][0]], item[0][1])):
        label = kind_names[kind] + (f", chunk {chunk}" if show_chunks else "")
        handles.append(Patch(color=color, label=label))
    handles.append(Patch(color=IDLE_COLOR, label="idle"))
    figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4),
                  fontsize=8, frameon=False)
    figure.savefig(path)


# ---------------------------------------------------------------- command line


class _CommandLineError(Exception):
    """An invalid command line. Its message is one line for stderr."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise _CommandLineError(f"{message}; run with --help to see the options")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """Return the command-line parser, whose errors raise _CommandLineError instead of exiting."""
    parser = _Parser(
        prog=prog,
        description="Draw pipeline schedules as ASCII charts (and a PNG) with their "
                    "bubble fraction and peak activations, simulated and closed form.",
        epilog="Times are per microbatch through all of a rank's layers. Interleaved "
               "1F1B gives each chunk 1/v of every time. ZB-H1 splits the backward "
               "time in two halves for B and W when --weight-time is 0.",
    )
    parser.add_argument("--schedule", choices=sorted(SCHEDULES), default="1f1b",
                        help="schedule to draw (default: 1f1b)")
    parser.add_argument("--stages", type=int, default=4, metavar="P",
                        help="number of pipeline stages (ranks), 1 to %d (default: 4)" % MAX_STAGES)
    parser.add_argument("--microbatches", type=int, default=8, metavar="M",
                        help="number of microbatches, 1 to %d (default: 8)" % MAX_MICROBATCHES)
    parser.add_argument("--chunks", type=int, default=2, metavar="v",
                        help="model chunks per rank, interleaved schedule only, >= 2 (default: 2)")
    parser.add_argument("--forward-time", type=float, default=1.0, metavar="T",
                        help="forward pass time, > 0 (default: 1)")
    parser.add_argument("--backward-time", type=float, default=2.0, metavar="T",
                        help="backward pass time, > 0 (default: 2)")
    parser.add_argument("--weight-time", type=float, default=0.0, metavar="T",
                        help="weight-gradient time, >= 0; 0 lets ZB-H1 split the backward "
                             "time in half (default: 0)")
    parser.add_argument("--comm-time", type=float, default=0.0, metavar="T",
                        help="time of one transfer between ranks, >= 0 (default: 0)")
    parser.add_argument("--compare", action="store_true",
                        help="draw gpipe, 1f1b, interleaved and zero_bubble_h1 for the same "
                             "P and M and print a summary table; ignores --schedule")
    parser.add_argument("--png", metavar="FILE",
                        help="also write the chart(s) as a PNG image to FILE")
    parser.add_argument("--width", type=int, default=DEFAULT_WIDTH, metavar="N",
                        help=f"maximum ASCII chart width in columns, >= {MIN_WIDTH} "
                             f"(default: {DEFAULT_WIDTH})")
    return parser


def _interleaved_problem(num_stages: int, num_microbatches: int) -> str | None:
    """Return why M does not suit interleaved 1F1B with P stages, or None when it does."""
    try:
        interleaved_group_size(num_stages, num_microbatches)
    except ValueError:
        suggestion = num_stages * max(1, round(num_microbatches / num_stages))
        return (f"--microbatches {num_microbatches} is invalid for the interleaved schedule "
                f"with --stages {num_stages}: expected a multiple of {num_stages} or a number "
                f"below it; try --microbatches {suggestion}")
    return None


def _argument_problem(args: argparse.Namespace) -> str | None:
    """Return a one-line description of the first invalid argument, or None."""
    counts = (("--stages", args.stages, 1, MAX_STAGES),
              ("--microbatches", args.microbatches, 1, MAX_MICROBATCHES))
    for option, value, low, high in counts:
        if not low <= value <= high:
            return f"{option} {value} is invalid: expected an integer from {low} to {high}"
    times = (("--forward-time", args.forward_time, False),
             ("--backward-time", args.backward_time, False),
             ("--weight-time", args.weight_time, True),
             ("--comm-time", args.comm_time, True))
    for option, value, zero_allowed in times:
        valid = math.isfinite(value) and (value >= 0 if zero_allowed else value > 0)
        if not valid:
            expected = "a finite number >= 0" if zero_allowed else "a finite number > 0"
            return f"{option} {value:g} is invalid: expected {expected}"
    if args.width < MIN_WIDTH:
        return f"--width {args.width} is invalid: expected at least {MIN_WIDTH} columns"
    uses_interleaved = args.compare or args.schedule == "interleaved"
    if uses_interleaved and args.chunks < 2:
        return (f"--chunks {args.chunks} is invalid for the interleaved schedule: expected an "
                f"integer >= 2; use --schedule 1f1b for one chunk per rank")
    if args.schedule == "interleaved" and not args.compare:
        problem = _interleaved_problem(args.stages, args.microbatches)
        if problem:
            return problem
    if args.png is not None:
        if importlib.util.find_spec("matplotlib") is None:
            return ("--png needs matplotlib, which is not installed: install it "
                    "(pip install matplotlib) or leave out --png")
        folder = Path(args.png).resolve().parent
        if not folder.is_dir():
            return f"--png {args.png} is invalid: folder {folder} does not exist; create it first"
    return None


def _run_or_message(name: str, args: argparse.Namespace) -> ScheduleRun | str:
    """Simulate schedule ``name``, or return one line saying why it cannot be drawn."""
    if name == "interleaved" and args.compare:
        problem = _interleaved_problem(args.stages, args.microbatches)
        if problem:
            return f"interleaved skipped: {problem}"
    try:
        return run_schedule(
            name, args.stages, args.microbatches, args.chunks,
            forward_time=args.forward_time, backward_time=args.backward_time,
            weight_time=args.weight_time, comm_time=args.comm_time,
        )
    except NotImplementedError as exc:
        return str(exc)
    except (DeadlockError, ValueError) as exc:
        return f"{name} could not be drawn: {exc}"


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Run the command line and return the exit status.

    ``argv`` defaults to ``sys.argv[1:]`` and ``prog`` (the name in messages)
    to the script's name. Returns 0 when at least one schedule was drawn
    and after --help, 1 when none could be drawn (not implemented,
    deadlocked or malformed), and 2 for invalid options, after one line on
    stderr.
    """
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
    except _CommandLineError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:
        # --help prints the usage, then raises SystemExit(0).
        return exc.code if isinstance(exc.code, int) else 0
    problem = _argument_problem(args)
    if problem:
        print(f"{parser.prog}: error: {problem}", file=sys.stderr)
        return 2

    names = COMPARE_ORDER if args.compare else (args.schedule,)
    # Simulate everything first, so that compare mode can draw every chart
    # at one scale. Messages keep their place among the charts.
    outputs: list[ScheduleRun | str] = []
    for name in names:
        outputs.append(_run_or_message(name, args))
    runs = [item for item in outputs if isinstance(item, ScheduleRun)]
    scale = chart_scale([run.timeline for run in runs], args.width) if runs else None

    for item in outputs:
        if isinstance(item, str):
            print(item, end="\n\n")
            continue
        print(schedule_header(item))
        print(render_ascii(item.timeline, args.width, scale=scale))
        print(summary(item), end="\n\n")

    if args.compare and runs:
        print(compare_table(runs))
    if args.png and runs:
        unit_label = TIME_LABEL if args.forward_time == 1 else "time (same unit as --forward-time)"
        draw_png([(run.name, run.timeline) for run in runs], args.png, time_label=unit_label)
        print(f"wrote {args.png}")
    elif args.png:
        print(f"no schedule could be drawn, so {args.png} was not written")
    return 0 if runs else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:
        # The reader closed the pipe early (as `| head` does). Point stdout at
        # devnull so that the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
