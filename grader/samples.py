"""Sample submissions described in ``datasets/submissions/samples.toml``.

A sample is built from a base folder (``exercises`` means stubs freshly
generated from ``reference/``), optional modules from an overlay
folder, and text edits, so that a buggy sample stays one small, readable
change to the reference even when the reference evolves. An edit whose
``old`` text is not found exactly once is an error, not a silently clean
sample.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

REPO_ROOT = Path(__file__).resolve().parents[1]
MANIFEST = REPO_ROOT / "datasets" / "submissions" / "samples.toml"


class SampleError(ValueError):
    """A sample's description cannot be applied."""


@dataclass(frozen=True)
class Sample:
    """One sample submission and the scores it must get."""

    name: str
    description: str
    base: str
    overlay: str | None = None
    overlay_modules: tuple[str, ...] = ()
    edits: tuple[dict, ...] = ()
    default: str = "full"
    scores: dict[str, float] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)

    def expected_score(self, check_id: str, max_score: float) -> float:
        """Return the score this sample must get on ``check_id``."""
        if check_id in self.scores:
            return float(self.scores[check_id])
        return 0.0 if self.default == "zero" else max_score


def load_samples(manifest: Path = MANIFEST) -> dict[str, Sample]:
    """Read the sample manifest, keyed by sample name."""
    data = tomllib.loads(manifest.read_text(encoding="utf-8"))
    samples = {}
    for raw in data.get("sample", []):
        sample = Sample(
            name=raw["name"], description=raw.get("description", ""), base=raw["base"],
            overlay=raw.get("overlay"), overlay_modules=tuple(raw.get("overlay_modules", ())),
            edits=tuple(raw.get("edit", ())), default=raw.get("default", "full"),
            scores=dict(raw.get("scores", {})), messages=dict(raw.get("messages", {})),
        )
        if sample.name in samples:
            raise SampleError(f"{manifest}: sample {sample.name!r} appears twice")
        samples[sample.name] = sample
    return samples


def materialize(sample: Sample, target: Path, root: Path = REPO_ROOT) -> Path:
    """Write ``sample`` as a submission folder at ``target`` and return it."""
    target.mkdir(parents=True, exist_ok=False)
    if sample.base == "exercises":
        # Fresh stubs, not the working copy a learner may have edited.
        from .stubs import generate_stubs

        generate_stubs(root / "reference", target)
    else:
        for path in sorted((root / sample.base).glob("*.py")):
            shutil.copyfile(path, target / path.name)
    for module in sample.overlay_modules:
        shutil.copyfile(root / sample.overlay / f"{module}.py", target / f"{module}.py")

    for edit in sample.edits:
        path = target / f"{edit['module']}.py"
        text = path.read_text(encoding="utf-8")
        if "append" in edit:
            text = text + edit["append"]
        else:
            count = text.count(edit["old"])
            if count != 1:
                raise SampleError(f"sample {sample.name!r}: the text to replace occurs {count} times "
                                  f"in {edit['module']}.py, expected once:\n{edit['old']}")
            text = text.replace(edit["old"], edit["new"])
        path.write_text(text, encoding="utf-8")
    return target
