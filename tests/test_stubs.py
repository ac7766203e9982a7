"""exercises/ is exactly what the stub generator makes from reference/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from grader.stubs import BEGIN, END, clear_solutions, generate_stubs, stale_files

ROOT = Path(__file__).resolve().parents[1]
REFERENCE, EXERCISES = ROOT / "reference", ROOT / "exercises"


def test_exercises_are_up_to_date():
    stale = stale_files(REFERENCE, EXERCISES)
    assert not stale, f"exercises/ is stale for {stale}: run `pplab stubs`"


def test_stale_detection_notices_edits(tmp_path):
    copy = tmp_path / "exercises"
    generate_stubs(REFERENCE, copy)
    assert stale_files(REFERENCE, copy) == []
    (copy / "schedules.py").write_text((copy / "schedules.py").read_text() + "\n# edited\n")
    (copy / "extra.py").write_text("")
    assert stale_files(REFERENCE, copy) == ["schedules.py", "extra.py"]


@pytest.mark.parametrize("path", sorted(EXERCISES.glob("*.py")), ids=lambda p: p.name)
def test_stubs_keep_no_solution_text(path):
    text = path.read_text()
    assert BEGIN not in text and END not in text
    ast.parse(text)


def test_every_solution_region_becomes_not_implemented():
    for path in REFERENCE.glob("*.py"):
        source = path.read_text()
        regions = source.count(BEGIN)
        assert regions == source.count(END), path.name
        assert clear_solutions(source).count("raise NotImplementedError") >= regions


def test_stub_keeps_indentation_signature_and_hint():
    source = (
        "def f(x: int) -> int:\n"
        '    """Double x."""\n'
        "    # Hint: multiply.\n"
        "    ### BEGIN SOLUTION\n"
        "    return 2 * x\n"
        "    ### END SOLUTION\n"
    )
    stub = clear_solutions(source)
    assert "def f(x: int) -> int:" in stub
    assert '"""Double x."""' in stub
    assert "# Hint: multiply." in stub
    assert "    raise NotImplementedError(" in stub
    assert "2 * x" not in stub


def test_packages_import_only_themselves():
    for folder in (REFERENCE, EXERCISES):
        for path in folder.glob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    top = node.module.split(".")[0]
                    assert top not in {"reference", "exercises", "grader"}, f"{path}: imports {node.module}"
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        top = alias.name.split(".")[0]
                        assert top not in {"reference", "exercises", "grader"}, f"{path}: imports {alias.name}"
