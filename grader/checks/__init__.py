"""All checks; importing this package registers them in :data:`grader.checking.REGISTRY`."""

from . import (  # noqa: F401
    bubbles,
    comm_volume,
    exercise_1,
    exercise_2,
    exercise_3,
    moe,
    pipeline_runtime,
    schedules,
    simulator,
    strategy,
)
