"""Generate the learner's ``exercises/`` from the instructor's ``reference/``.

Each reference module is wrapped in a one-cell notebook marked as an nbgrader
solution cell and passed through nbgrader's ``ClearSolutions`` preprocessor,
which replaces every ``### BEGIN SOLUTION`` / ``### END SOLUTION`` region
with a stub at the region's indentation. Modules without a region come out
unchanged. nbgrader is needed only here, by instructors and the tests.
"""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

STUB = '# YOUR CODE HERE\nraise NotImplementedError("replace this line with your implementation")'
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"


def clear_solutions(source: str) -> str:
    """Return ``source`` with every solution region replaced by the stub."""
    import nbformat
    from nbgrader.preprocessors import ClearSolutions

    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["nbgrader"] = {"solution": True, "grade": False, "locked": False,
                                 "grade_id": "module", "schema_version": 3}
    notebook = nbformat.v4.new_notebook(cells=[cell])
    notebook.metadata["kernelspec"] = {"language": "python", "name": "python3", "display_name": "Python 3"}
    preprocessor = ClearSolutions(code_stub={"python": STUB})
    if BEGIN not in source:
        return source
    notebook, _ = preprocessor.preprocess(notebook, {})
    text = notebook.cells[0].source
    return text if text.endswith("\n") else text + "\n"


def expected_stubs(reference: Path) -> dict[str, str]:
    """Map each file name in ``reference`` to the text its stub must have."""
    return {path.name: clear_solutions(path.read_text(encoding="utf-8"))
            for path in sorted(reference.glob("*.py"))}


def stale_files(reference: Path, exercises: Path) -> list[str]:
    """List the files of ``exercises`` that differ from what the generator writes."""
    expected = expected_stubs(reference)
    stale = [name for name, text in expected.items()
             if not (exercises / name).is_file() or (exercises / name).read_text(encoding="utf-8") != text]
    extra = [p.name for p in sorted(exercises.glob("*.py")) if p.name not in expected]
    return stale + extra


def generate_stubs(reference: Path, exercises: Path) -> list[str]:
    """Write ``exercises/`` from ``reference/``, removing files with no reference; return names written."""
    exercises.mkdir(exist_ok=True)
    expected = expected_stubs(reference)
    for path in exercises.glob("*.py"):
        if path.name not in expected:
            logger.info("removing %s: no reference module", path)
            path.unlink()
    written = []
    for name, text in expected.items():
        target = exercises / name
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")
            written.append(name)
    return written
