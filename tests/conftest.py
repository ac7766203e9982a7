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
