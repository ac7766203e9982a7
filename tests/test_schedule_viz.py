"""Tests of reference.pipeline_schedule_viz: charts read back against the simulator, PNG output, CLI."""

from __future__ import annotations

import math
import re
import struct
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference import bubbles, schedules
from reference import pipeline_schedule_viz as viz
from reference.schedules import Action, build_schedule
from reference.simulator import simulate

SETTINGS = settings(derandomize=True, database=None, deadline=None, max_examples=25)
REPO_ROOT = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ROW = re.compile(r"^rank (\d+)\s* \|(.*)\|$")


# ---------------------------------------------------------------------------
# reading a chart back


def chart_rows(chart: str) -> dict[int, str]:
    """Return the cells of every rank row of an ASCII chart, by rank."""
    rows = {}
    for line in chart.splitlines():
        match = ROW.match(line)
        if match:
            rows[int(match.group(1))] = match.group(2)
    return rows


def split_tokens(cells: str) -> list[tuple[int, int, str]]:
    """Split a row into (first column, end column, text) runs: idle runs and one run per action."""
    tokens = []
    column = 0
    while column < len(cells):
        end = column + 1
        if cells[column] == ".":
            while end < len(cells) and cells[end] == ".":
                end += 1
        else:
            assert cells[column] in "FBWfbw", f"action run starts with {cells[column]!r} in {cells!r}"
            while end < len(cells) and cells[end] not in ".FBWfbw":
                end += 1
        tokens.append((column, end, cells[column:end]))
        column = end
    return tokens


def parse_label(text: str) -> Action:
    """Decode a full label such as F3, f3 (chunk 1) or f3:2 followed by fill characters."""
    match = re.fullmatch(r"([FBWfbw])(\d+)(?::(\d+))?-*", text)
    assert match, f"cannot read label {text!r}"
    letter, microbatch, chunk = match.groups()
    if letter.isupper():
        assert chunk is None, f"upper-case label {text!r} carries a chunk"
        return Action(letter, int(microbatch), 0)
    return Action(letter.upper(), int(microbatch), int(chunk) if chunk else 1)


def read_chart(chart: str, makespan: float) -> dict[int, list[tuple[Action, float, float]]]:
    """Rebuild every rank's (action, start, end) from the chart, taking row length / makespan as the scale."""
    rows = chart_rows(chart)
    lengths = {len(cells) for cells in rows.values()}
    assert len(lengths) == 1, f"rows differ in length: {lengths}"
    scale = lengths.pop() / makespan
    result = {}
    for rank, cells in rows.items():
        result[rank] = [
            (parse_label(text), start / scale, end / scale)
            for start, end, text in split_tokens(cells)
            if text[0] != "."
        ]
    return result


def expected_rows(timeline) -> dict[int, list[tuple[Action, float, float]]]:
    return {
        rank: [(iv.action, iv.start, iv.end) for iv in rank_iv if iv.end > iv.start]
        for rank, rank_iv in enumerate(timeline.intervals)
    }


def declared_scale(chart: str) -> float:
    """Return the scale in columns per time unit that the chart's legend states."""
    match = re.search(r"1 time unit = ([\d.]+) columns", chart)
    if match:
        return float(match.group(1))
    match = re.search(r"1 column = ([\d.]+) time units", chart)
    assert match, "legend states no scale"
    return 1 / float(match.group(1))


def wide_enough(timeline) -> int:
    """A width at which every label fits: six columns per time unit plus the row frame."""
    return int(timeline.makespan * viz.MAX_COLUMNS_PER_UNIT) + 20


def png_size(path: Path) -> tuple[int, int]:
    """Return (width, height) from a PNG file's IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# ---------------------------------------------------------------------------
# ASCII chart against the simulator


CASES = [
    # (schedule, P, M, v, forward, backward, weight, comm), integer per-action times
    ("gpipe", 4, 8, 1, 1, 2, 0, 0),
    ("1f1b", 4, 8, 1, 1, 2, 0, 0),
    ("1f1b", 3, 12, 1, 2, 3, 1, 1),
    ("interleaved", 4, 8, 2, 1, 2, 0, 0),
    ("interleaved", 2, 4, 3, 1, 1, 0, 1),
    ("interleaved", 4, 3, 2, 2, 3, 0, 0),
    ("zero_bubble_h1", 4, 8, 1, 1, 1, 1, 0),
    ("zero_bubble_h1", 3, 5, 1, 2, 1, 3, 1),
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: "-".join(map(str, case)))
def test_ascii_chart_matches_simulator(case):
    name, num_stages, num_microbatches, num_chunks, forward, backward, weight, comm = case
    schedule = build_schedule(name, num_stages, num_microbatches, num_chunks)
    timeline = simulate(schedule, forward, backward, weight, comm)

    chart = viz.render_ascii(timeline, width=wide_enough(timeline))

    assert read_chart(chart, timeline.makespan) == expected_rows(timeline)


def test_default_width_chart_matches_simulator():
    timeline = simulate(build_schedule("1f1b", 4, 8), 1, 2)
    chart = viz.render_ascii(timeline)

    assert read_chart(chart, timeline.makespan) == expected_rows(timeline)
    assert all(len(line) <= viz.DEFAULT_WIDTH for line in chart.splitlines())


@st.composite
def integer_runs(draw):
    name = draw(st.sampled_from(sorted(schedules.SCHEDULES)))
    num_stages = draw(st.integers(1, 5))
    if name == "interleaved":
        num_chunks = draw(st.integers(2, 3))
        small = draw(st.booleans())
        num_microbatches = (draw(st.integers(1, num_stages)) if small
                            else num_stages * draw(st.integers(1, 3)))
    else:
        num_chunks = 1
        num_microbatches = draw(st.integers(1, 12))
    times = [draw(st.integers(1, 3)), draw(st.integers(1, 3)),
             draw(st.integers(0, 2)), draw(st.integers(0, 2))]
    return name, num_stages, num_microbatches, num_chunks, times


@SETTINGS
@given(integer_runs())
def test_ascii_chart_matches_simulator_property(run):
    name, num_stages, num_microbatches, num_chunks, times = run
    timeline = simulate(build_schedule(name, num_stages, num_microbatches, num_chunks), *times)

    chart = viz.render_ascii(timeline, width=wide_enough(timeline))

    assert read_chart(chart, timeline.makespan) == expected_rows(timeline)


@pytest.mark.parametrize("width", [30, 57, 100, 163])
@pytest.mark.parametrize("name, num_microbatches, num_chunks",
                         [("gpipe", 40, 1), ("interleaved", 16, 2), ("zero_bubble_h1", 9, 1)])
def test_narrow_chart_columns_show_running_action(width, name, num_microbatches, num_chunks):
    # At any scale, a column shows the kind and chunk case of the action that
    # runs at the column's midpoint, and '.' when the rank is idle there.
    num_stages = 4
    times = (1.0 / num_chunks, 2.0 / num_chunks, 0.5 if name == "zero_bubble_h1" else 0, 0.25)
    timeline = simulate(build_schedule(name, num_stages, num_microbatches, num_chunks), *times)

    chart = viz.render_ascii(timeline, width=width)

    rows = chart_rows(chart)
    chart_lines = chart.splitlines()[:num_stages + 1]
    for line in chart_lines:
        assert len(line) <= width, f"line longer than {width}: {line!r}"
        assert len(line) <= len(chart_lines[1]), f"axis overhangs the chart: {line!r}"
    assert sorted(rows) == list(range(num_stages))
    scale = declared_scale(chart)
    assert len(rows[0]) == math.ceil(timeline.makespan * scale - 1e-9)
    for rank, cells in rows.items():
        for start, end, text in split_tokens(cells):
            for column in range(start, end):
                midpoint = (column + 0.5) / scale
                running = [iv.action for iv in timeline.intervals[rank]
                           if iv.start <= midpoint < iv.end]
                if text[0] == ".":
                    assert running == [], f"rank {rank} column {column} idle but {running} runs"
                else:
                    assert len(running) == 1, f"rank {rank} column {column}: {running}"
                    action = running[0]
                    letter = action.kind if action.chunk == 0 else action.kind.lower()
                    assert text[0] == letter, f"rank {rank} column {column}: {text!r} vs {action}"


@pytest.mark.parametrize("width", [130, 170, 240])
def test_narrow_chart_never_cuts_numbers(width):
    # Labels that do not fit shrink to the kind letter, so every number shown is whole.
    timeline = simulate(build_schedule("interleaved", 4, 16, 2), 0.5, 1.0)
    chart = viz.render_ascii(timeline, width=width)
    scale = declared_scale(chart)

    assert "kind letter" in chart
    numbered = 0
    for rank, cells in chart_rows(chart).items():
        for start, _, text in split_tokens(cells):
            if text[0] == "." or len(text.rstrip("-")) == 1:
                continue
            midpoint = (start + 0.5) / scale
            running = [iv.action for iv in timeline.intervals[rank]
                       if iv.start <= midpoint < iv.end]
            assert [parse_label(text)] == running, f"rank {rank} column {start}: {text!r}"
            numbered += 1
    assert numbered > 0


def test_action_labels_distinguish_chunks():
    assert viz.action_label(Action("F", 3, 0), 2) == "F3"
    assert viz.action_label(Action("B", 12, 1), 2) == "b12"
    assert viz.action_label(Action("W", 3, 0), 3) == "W3"
    assert viz.action_label(Action("F", 3, 2), 3) == "f3:2"
    assert viz.action_label(Action("B", 0, 1), 4) == "b0:1"


# ---------------------------------------------------------------------------
# pass times and figures


def test_interleaved_times_divided_by_chunks():
    run = viz.run_schedule("interleaved", 4, 8, 2, forward_time=1, backward_time=2)
    direct = simulate(build_schedule("interleaved", 4, 8, 2), 0.5, 1.0)

    assert (run.forward_time, run.backward_time, run.weight_time) == (0.5, 1.0, 0.0)
    assert run.timeline.makespan == direct.makespan


def test_zero_bubble_splits_backward():
    split = viz.run_schedule("zero_bubble_h1", 4, 8, forward_time=1, backward_time=2)
    given_weight = viz.run_schedule("zero_bubble_h1", 4, 8, forward_time=1, backward_time=2,
                                    weight_time=0.5)
    one_f_one_b = viz.run_schedule("1f1b", 4, 8, forward_time=1, backward_time=2, weight_time=0.5)

    assert (split.backward_time, split.weight_time) == (1.0, 1.0)
    assert (given_weight.backward_time, given_weight.weight_time) == (2.0, 0.5)
    # 1F1B runs B and W as one pass: every B lasts backward + weight time.
    durations = {iv.end - iv.start for iv in one_f_one_b.timeline.intervals[0]
                 if iv.action.kind == "B"}
    assert durations == {2.5}


def test_summary_shows_exercise_one_bubbles():
    # P = 4, M = 16: (P-1)/(M+P-1) = 3/19 for GPipe and 1F1B,
    # (P-1)/(vM+P-1) = 3/35 for interleaved with v = 2.
    gpipe = viz.summary(viz.run_schedule("gpipe", 4, 16))
    one_f_one_b = viz.summary(viz.run_schedule("1f1b", 4, 16))
    interleaved = viz.summary(viz.run_schedule("interleaved", 4, 16, 2))

    assert gpipe.count("(3/19)") == 2
    assert one_f_one_b.count("(3/19)") == 2
    assert interleaved.count("(3/35)") == 2
    assert re.search(r"peak activations\s+16 16 16 16\s+closed form 16 16 16 16", gpipe)
    assert re.search(r"peak activations\s+4 3 2 1\s+closed form 4 3 2 1", one_f_one_b)


def test_summary_notes_communication():
    text = viz.summary(viz.run_schedule("1f1b", 4, 8, comm_time=1))
    assert "assume comm_time = 0" in text


# ---------------------------------------------------------------------------
# PNG


def test_draw_png_writes_valid_png(tmp_path):
    path = tmp_path / "one.png"
    run = viz.run_schedule("interleaved", 4, 8, 2)

    viz.draw_png([(run.name, run.timeline)], path)

    assert path.stat().st_size > 1000
    width, height = png_size(path)
    assert width > 500
    assert height > 100


def test_compare_png_stacks_four_charts(tmp_path):
    single = tmp_path / "single.png"
    stacked = tmp_path / "stacked.png"

    assert viz.main(["--png", str(single)]) == 0
    assert viz.main(["--compare", "--png", str(stacked)]) == 0

    single_width, single_height = png_size(single)
    stacked_width, stacked_height = png_size(stacked)
    assert stacked_width == single_width
    assert stacked_height > 3 * single_height * 0.8


def test_draw_png_rejects_empty_list(tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        viz.draw_png([], tmp_path / "empty.png")


# ---------------------------------------------------------------------------
# command line


def table_rows(output: str) -> dict[str, list[str]]:
    """Return the compare table's rows by schedule name."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("schedule "))
    return {line.split()[0]: line.split()[1:] for line in lines[start + 2:] if line.strip()}


def test_compare_mode_lists_all_four_schedules(capsys):
    assert viz.main(["--compare", "--stages", "4", "--microbatches", "8"]) == 0
    output = capsys.readouterr().out

    rows = table_rows(output)
    assert list(rows) == ["gpipe", "1f1b", "interleaved", "zero_bubble_h1"]
    for name in rows:
        assert f"{name}: P=4, M=8" in output
    # bubble fraction column: (P-1)/(M+P-1) = 3/11 for GPipe and 1F1B,
    # (P-1)/(vM+P-1) = 3/19 for interleaved with v = 2
    assert rows["gpipe"][1] == f"{3 / 11:.4f}"
    assert rows["1f1b"][1] == f"{3 / 11:.4f}"
    assert rows["interleaved"][1] == f"{3 / 19:.4f}"
    # peak activations on rank 0: M for GPipe, P for 1F1B and ZB-H1
    assert rows["gpipe"][3] == "8"
    assert rows["1f1b"][3] == "4"
    assert rows["zero_bubble_h1"][3] == "4"
    # interleaved: (v-1)P + 2(P-1) + 1 = 11 chunk stashes, 5.5 microbatches
    assert rows["interleaved"][3:] == ["11", "5.5"]


def test_compare_mode_skips_invalid_interleaved(capsys):
    assert viz.main(["--compare", "--stages", "4", "--microbatches", "6"]) == 0
    output = capsys.readouterr().out

    assert "interleaved skipped: --microbatches 6" in output
    assert list(table_rows(output)) == ["gpipe", "1f1b", "zero_bubble_h1"]


def test_compare_mode_shares_one_scale(capsys):
    viz.main(["--compare"])
    output = capsys.readouterr().out

    scales = re.findall(r"1 time unit = (\d+) columns", output)
    assert len(scales) == 4
    assert len(set(scales)) == 1


def raise_not_implemented(*args, **kwargs):
    raise NotImplementedError("replace this line with your implementation")


def test_unimplemented_schedule_in_compare(monkeypatch, capsys):
    def one_f_one_b(num_stages, num_microbatches):
        raise NotImplementedError("replace this line with your implementation")

    monkeypatch.setitem(schedules.SCHEDULES, "1f1b", one_f_one_b)

    assert viz.main(["--compare"]) == 0
    captured = capsys.readouterr()

    assert "one_f_one_b is not implemented yet" in captured.out
    assert "Traceback" not in captured.out + captured.err
    assert list(table_rows(captured.out)) == ["gpipe", "interleaved", "zero_bubble_h1"]


def test_unimplemented_schedule_alone_returns_1(monkeypatch, capsys):
    monkeypatch.setattr(schedules, "interleaved_1f1b", raise_not_implemented)

    assert viz.main(["--schedule", "interleaved"]) == 1
    captured = capsys.readouterr()

    assert captured.out.strip() == "interleaved_1f1b is not implemented yet"
    assert captured.err == ""


def test_unimplemented_simulate_reported(monkeypatch, capsys):
    monkeypatch.setattr(viz, "simulate", raise_not_implemented)

    assert viz.main(["--compare"]) == 1
    lines = capsys.readouterr().out.split()

    assert " ".join(lines).count("simulate is not implemented yet") == 4


def test_unimplemented_closed_forms_reported(monkeypatch, capsys):
    monkeypatch.setattr(bubbles, "bubble_fraction", raise_not_implemented)
    monkeypatch.setattr(bubbles, "peak_activations", raise_not_implemented)

    assert viz.main(["--schedule", "gpipe"]) == 0
    output = capsys.readouterr().out

    assert "bubble_fraction is not implemented yet" in output
    assert "peak_activations is not implemented yet" in output
    assert "closed form" not in output
    assert "0.2727 (3/11)" in output


def test_deadlocking_schedule_reported(monkeypatch, capsys):
    def one_f_one_b(num_stages, num_microbatches):
        # B0 needs F0 of its own rank, which comes after it, so no rank can start
        return [[Action("B", 0), Action("F", 0)] for _ in range(num_stages)]

    monkeypatch.setitem(schedules.SCHEDULES, "1f1b", one_f_one_b)

    assert viz.main(["--schedule", "1f1b", "--microbatches", "1"]) == 1
    output = capsys.readouterr().out

    assert output.startswith("1f1b could not be drawn: schedule deadlocks")


BAD_ARGUMENTS = [
    (["--stages", "0"], "--stages 0"),
    (["--stages", "65"], "--stages 65"),
    (["--stages", "x"], "'x'"),
    (["--microbatches", "-1"], "--microbatches -1"),
    (["--schedule", "pipedream"], "'pipedream'"),
    (["--schedule", "interleaved", "--microbatches", "6"], "--microbatches 6"),
    (["--schedule", "interleaved", "--chunks", "1"], "--chunks 1"),
    (["--forward-time", "0"], "--forward-time 0"),
    (["--backward-time", "nan"], "--backward-time nan"),
    (["--comm-time", "-1"], "--comm-time -1"),
    (["--width", "10"], "--width 10"),
    (["--frobnicate"], "--frobnicate"),
]


@pytest.mark.parametrize("argv, quoted", BAD_ARGUMENTS, ids=lambda value: str(value))
def test_bad_input_exits_2_with_one_line(argv, quoted, capsys):
    assert viz.main(argv) == 2
    captured = capsys.readouterr()

    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert quoted in lines[0]
    assert "Traceback" not in captured.err
    assert captured.out == ""


def test_png_in_missing_folder_exits_2(tmp_path, capsys):
    target = tmp_path / "missing" / "chart.png"

    assert viz.main(["--png", str(target)]) == 2
    captured = capsys.readouterr()

    assert len(captured.err.strip().splitlines()) == 1
    assert "does not exist" in captured.err
    assert not target.exists()


def test_help_returns_0(capsys):
    assert viz.main(["--help"]) == 0
    assert "--microbatches" in capsys.readouterr().out


@pytest.mark.parametrize("command", [
    ["-m", "reference.pipeline_schedule_viz"],
    ["reference/pipeline_schedule_viz.py"],
], ids=["module", "file"])
def test_script_runs_from_command_line(command):
    result = subprocess.run(
        [sys.executable, *command, "--stages", "2", "--microbatches", "3"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )

    assert result.returncode == 0, result.stderr
    rows = chart_rows(result.stdout)
    assert sorted(rows) == [0, 1]
    assert str(Fraction(1, 4)) in result.stdout  # (P-1)/(M+P-1) for P=2, M=3
