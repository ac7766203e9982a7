"""All checks; importing this package registers them in :data:`grader.checking.REGISTRY`."""

from . import bubbles, exercise_1, schedules, simulator  # noqa: F401
