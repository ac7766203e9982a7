"""Write the nbgrader source notebook for pplab's three exercises.

Run from anywhere: ``python nbgrader/build_notebook.py`` rewrites
``nbgrader/source/pipeline_exercises/pipeline_exercises.ipynb``;
``--check`` exits with status 1 when the committed notebook differs from
what this script writes.

The solution cells are the functions ``exercise_1`` to ``exercise_3`` of
``reference/answers.py``, copied with their ``### BEGIN SOLUTION`` /
``### END SOLUTION`` regions. There is one autograded test cell per rubric
check, worth the check's points in ``grader/rubric.toml``, so a notebook
scores what ``pplab grade`` gives for the same answers. A test cell runs its
check through ``grader.notebook.grade_cell`` where learners see it, unless
the rubric marks the check hidden; its hidden region runs the check again
three times on fresh calls.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

import nbformat

REPO_ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENT = "pipeline_exercises"
NOTEBOOK_PATH = Path(__file__).resolve().parent / "source" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
REFERENCE_ANSWERS = REPO_ROOT / "reference" / "answers.py"
EXERCISES = ("exercise_1", "exercise_2", "exercise_3")
HIDDEN_REPEATS = 3
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}

sys.path.insert(0, str(REPO_ROOT))
from grader.rubric import RubricEntry, load_rubric  # noqa: E402

INTRO = """\
# Pipeline and expert parallelism: three exercises

Each exercise asks for numbers (or, in Exercise 3, a parallel configuration)
and you return them from a function as a named tuple. Write the body of each
function in the cell marked `# YOUR CODE HERE`, run it, then run the test
cells below it. A test cell prints one line per check: `PASS` with the
points, or `FAIL` with what is wrong and, where the wrong value matches a
common mistake, that mistake. The cells run the same checks as `pplab grade`.

Give every number as a Python `int` or `float` and round nothing: a fraction
such as `1 / 3` is fine, and floats are compared with a relative tolerance of
1e-6. When the notebook is graded, hidden tests also run: they call each
function again several times, so an answer must not depend on earlier calls.
"""

SETUP = """\
# The answer types. Each exercise returns one of them, e.g.
# Exercise1Answer(gpipe_bubble_fraction=..., ...); run help(Exercise1Answer) for its fields.
from exercises.answers import Exercise1Answer, Exercise2Answer, Exercise3Answer
"""

EXERCISE_TEXT = {
    "exercise_1": """\
## Exercise 1: bubble fraction and activation memory

A pipeline has P = 4 stages and runs M = 16 microbatches per training step.
Every stage takes the same time for a forward pass, every backward pass
takes the same time, and sending activations between stages costs nothing.
The *bubble fraction* is the share of the step's total time that a stage
sits idle.

Return an `Exercise1Answer` with:

- `gpipe_bubble_fraction`: the bubble fraction with naive (GPipe)
  scheduling, where every forward pass runs before any backward pass;
- `one_f_one_b_bubble_fraction`: the same with 1F1B scheduling;
- `gpipe_peak_activations` and `one_f_one_b_peak_activations`: how many
  microbatches' activations the first stage (rank 0) holds at once, at its
  peak, under each schedule (an `int`);
- `interleaved_bubble_fraction`: the bubble fraction of interleaved 1F1B
  with v = 2 model chunks per rank.

Think about what 1F1B changes and what it leaves as it was.
""",
    "exercise_2": """\
## Exercise 2: communication volume of an MoE layer

An MoE layer has 64 experts with top-2 routing (k = 2) and hidden size 4096.
A batch of 4 x 1024 = 4096 tokens in bf16 (2 bytes per element) runs on
8 GPUs. Count the bytes each GPU *sends* during the layer's forward pass
only, leaving out data a GPU keeps for itself. Let S = tokens x hidden x 2
bytes.

- With 8-way tensor parallelism (TP-8), each expert's weights are split over
  the 8 GPUs, every GPU holds all tokens, and the layer output is summed with
  one all-reduce. `tp_chapter_bytes` is the chapter's estimate 2S;
  `tp_ring_bytes` is what a ring all-reduce over 8 GPUs sends,
  2 (8 - 1) / 8 x S.
- With 8-way expert parallelism (EP-8), each GPU holds 8 whole experts and,
  outside the experts, acts as a data-parallel rank that holds 1/8 of the
  tokens. Each token travels to its k experts in the dispatch all-to-all and
  back in the combine all-to-all.
  `ep_chapter_bytes` is the chapter's 2kS/N, where N is the number of GPUs
  in the expert-parallel group (not the number of experts);
  `ep_exact_bytes` is the same traffic under uniform routing, without the
  1/N of token copies whose expert sits on their own GPU.

Return an `Exercise2Answer` with the four values in bytes.
""",
    "exercise_3": """\
## Exercise 3: a parallel configuration for a 70B model

Train a dense model of Llama-2-70B's shape (80 layers, hidden size 8192,
64 attention heads with 8 key/value heads, MLP width 28672, vocabulary
32000) on 64 H100 80 GB GPUs, 8 per node with NVLink inside a node. A step
takes 1024 sequences of 4096 tokens in microbatches of one sequence, in bf16
mixed precision with Adam, ZeRO stage 1, sequence parallelism and selective
recomputation.

Return an `Exercise3Answer(tp=..., pp=..., dp=...)` with `tp * pp * dp == 64`.
`ep` stays 1 (the model has no experts); set `num_chunks` above 1 for
interleaved 1F1B.

Two checks grade it, both with partial credit:

- validity: the degrees multiply to 64, tensor parallelism stays inside a
  node, the degrees divide the heads, the MLP width, the layers and the
  batch, interleaving (`num_chunks > 1`) needs `pp > 1` and a number of
  microbatches divisible by `pp`, and the configuration fits in 80 GB under
  pplab's memory model. Each rule you break costs its share of the points,
  but a configuration that does not fit in memory earns nothing, because it
  cannot run;
- quality: the estimated step time against the fastest configuration pplab's
  search finds; full credit up to 5% slower, none from 25% slower.
""",
}

OUTRO = """\
## Score

The test cells above are worth {total:g} points in all. A test cell that
ends with a traceback earns no points, and one that shows a number as its
result earns that many (partial credit). Any other test cell earns all of
its points.
"""


def _function_source(path: Path, name: str) -> str:
    """Return the source of the top-level function ``name`` in ``path``, markers included."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            # The AST ends at the last statement; the indented comment lines
            # after it (### END SOLUTION) belong to the function too.
            end = node.end_lineno
            while end < len(lines) and lines[end].startswith((" ", "\t")) and lines[end].strip().startswith("#"):
                end += 1
            source = "\n".join(lines[node.lineno - 1:end])
            for marker in ("### BEGIN SOLUTION", "### END SOLUTION"):
                if marker not in source:
                    raise ValueError(f"{path}: {name}() has no {marker} line")
            return source + "\n"
    raise ValueError(f"{path} has no function {name}()")


def _nbgrader_metadata(grade_id: str, *, grade: bool, solution: bool, locked: bool,
                       points: float | None = None) -> dict:
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": 3,
            "solution": solution, "task": False}
    if points is not None:
        meta["points"] = points
    return meta


def _markdown(cell_id: str, text: str) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_markdown_cell(text.rstrip("\n"))
    cell.id = cell_id
    return cell


def _code(cell_id: str, source: str, nbgrader: dict) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(source.rstrip("\n"), metadata={"nbgrader": nbgrader})
    cell.id = cell_id
    return cell


def _test_source(exercise: str, entry: RubricEntry) -> str:
    """Return a test cell's code: the check if it is visible, then the hidden region.

    The hidden call comes last, so that its value (the points earned, when
    they are partial) is the cell's result once nbgrader restores it.
    """
    call = f'grade_cell("{entry.id}", {exercise}={exercise}'
    lines = [f"# {entry.id}: {entry.title} ({entry.points:g} points)",
             "from grader.notebook import grade_cell", ""]
    if entry.visibility == "visible":
        lines.append(call + ")")
    else:
        lines.append("# This check is hidden: it runs when the notebook is graded.")
    lines.append("### BEGIN HIDDEN TESTS")
    lines.append(call + f", repeat={HIDDEN_REPEATS})")
    lines.append("### END HIDDEN TESTS")
    return "\n".join(lines) + "\n"


def build_notebook() -> nbformat.NotebookNode:
    """Return the source notebook: intro, setup, then per exercise its text, solution and tests."""
    rubric = load_rubric()
    cells = [_markdown("intro", INTRO),
             _code("setup", SETUP, _nbgrader_metadata("setup", grade=False, solution=False, locked=True))]
    total = 0.0

    for exercise in EXERCISES:
        cells.append(_markdown(f"{exercise}_text", EXERCISE_TEXT[exercise]))
        cells.append(_code(f"{exercise}_solution", _function_source(REFERENCE_ANSWERS, exercise),
                           _nbgrader_metadata(f"{exercise}_solution", grade=False, solution=True, locked=False)))

        for entry in (e for e in rubric.checks if e.exercise == exercise):
            total += entry.points
            grade_id = "test_" + entry.id.replace(".", "_")
            cells.append(_code(grade_id, _test_source(exercise, entry),
                               _nbgrader_metadata(grade_id, grade=True, solution=False, locked=True,
                                                  points=entry.points)))

    cells.append(_markdown("score", OUTRO.format(total=total)))
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata = {"kernelspec": KERNELSPEC,
                         "language_info": {"name": "python"}}
    nbformat.validate(notebook)
    return notebook


def render_notebook() -> str:
    """Return the notebook as the text this script writes."""
    return nbformat.writes(build_notebook()) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit with status 1 when the committed notebook is not what this script writes")
    args = parser.parse_args(argv)
    text = render_notebook()
    if args.check:
        current = NOTEBOOK_PATH.read_text(encoding="utf-8") if NOTEBOOK_PATH.exists() else ""
        if current != text:
            print(f"{NOTEBOOK_PATH} is stale; run python nbgrader/build_notebook.py", file=sys.stderr)
            return 1
        return 0
    NOTEBOOK_PATH.parent.mkdir(parents=True, exist_ok=True)
    NOTEBOOK_PATH.write_text(text, encoding="utf-8")
    print(f"wrote {NOTEBOOK_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
