"""pplab's grader: hypothesis checks, a sandboxed worker, the rubric and reports."""

__version__ = "0.1.0"
