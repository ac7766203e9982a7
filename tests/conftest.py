"""Shared fixtures: sample submissions materialised once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from grader.rubric import load_rubric
from grader.runner import grade
from grader.samples import load_samples, materialize
from grader.sandbox import Limits

REPO_ROOT = Path(__file__).resolve().parents[1]
# Generous limits: CI machines are slow and shared, and only the import-loop
# sample ever reaches them.
TEST_LIMITS = Limits(call_timeout=15.0, import_timeout=15.0)


@pytest.fixture(scope="session", autouse=True)
def repository_left_unchanged():
    """Fail the session when a test leaves grading history (``.pplab/``) in the repository's folders.

    Tests grade copies: history in ``exercises/`` would give the next
    ``pplab grade`` there other hints and attempt counts.
    """
    def history_folders():
        return {path for path in REPO_ROOT.glob("**/.pplab") if ".venv" not in path.parts}

    before = history_folders()
    yield
    created = sorted(str(path.relative_to(REPO_ROOT)) for path in history_folders() - before)
    assert not created, f"tests left grading history in the repository: {', '.join(created)}"


@pytest.fixture(scope="session")
def samples():
    return load_samples()


@pytest.fixture(scope="session")
def sample_dirs(tmp_path_factory, samples):
    root = tmp_path_factory.mktemp("samples")
    return {name: materialize(sample, root / name) for name, sample in samples.items()}


@pytest.fixture(scope="session")
def graded(sample_dirs):
    """Grade each sample once, lazily, and cache the report."""
    cache = {}
    rubric = load_rubric()

    def report_for(name):
        if name not in cache:
            cache[name] = grade(sample_dirs[name], rubric, TEST_LIMITS)
        return cache[name]

    return report_for
