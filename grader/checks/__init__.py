"""All checks; importing this package registers them in :data:`grader.checking.REGISTRY`."""

from . import bubbles, exercise_1, exercise_3, schedules, simulator, strategy  # noqa: F401
