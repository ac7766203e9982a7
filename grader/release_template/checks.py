"""The visible checks of this student release.

Each check calls your code with the inputs the official check uses, recorded
from the instructor's solutions in ``datasets/golden/visible.json``, and
compares your return values with the recorded ones (see
``grader/golden_replay.py``). The hidden checks are not in this release; the
official grader runs them.
"""

from .golden_replay import register_replay_checks

CHECK_IDS = register_replay_checks()
