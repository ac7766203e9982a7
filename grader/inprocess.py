"""Call submission code in the grader's own process, with the worker's interface.

:class:`InProcessWorker` has the methods checks use on a
:class:`grader.sandbox.Worker` (``import_module``, ``call``, ``close``,
``output_tail``) and returns the same plain data, converted by the same
encoder the sandboxed worker uses. It isolates nothing, so it serves only
code that is trusted or already isolated elsewhere:

- benchmarks that measure what the sandbox costs (the same checks, run with
  no worker process at all);
- recording golden data from the reference solutions;
- notebook cells graded by nbgrader, whose kernel already runs the learner's
  code (nbgrader's own model is to run autograding in a container).
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from . import _sandbox_child as child
from .sandbox import LearnerRaised, SubmissionAborted, decode_value, encode_argument

_PACKAGE_COUNTER = itertools.count()


def _load_package(package_dir: Path) -> str:
    """Import ``package_dir`` as a package and return its name.

    A folder that is already an importable top-level package (``reference``
    with pplab installed) keeps its own name, so that processes it spawns can
    import its modules again. Any other folder gets a private name.
    """
    package_dir = package_dir.resolve()
    existing = sys.modules.get(package_dir.name)
    if existing is not None and any(Path(p).resolve() == package_dir for p in getattr(existing, "__path__", [])):
        return package_dir.name
    spec = importlib.util.find_spec(package_dir.name) if package_dir.name.isidentifier() else None
    if spec is not None and any(Path(p).resolve() == package_dir
                                for p in (spec.submodule_search_locations or [])):
        importlib.import_module(package_dir.name)
        return package_dir.name

    name = f"_pplab_inprocess_{next(_PACKAGE_COUNTER)}"
    init = package_dir / "__init__.py"
    spec = importlib.util.spec_from_file_location(
        name, init if init.is_file() else None, submodule_search_locations=[str(package_dir)])
    package = importlib.util.module_from_spec(spec)
    if init.is_file():
        sys.modules[name] = package
        spec.loader.exec_module(package)
    else:
        package.__path__ = [str(package_dir)]
        sys.modules[name] = package
    return name


class InProcessWorker:
    """Run submission functions in this process; the interface of :class:`grader.sandbox.Worker`.

    ``source`` is either a folder laid out like ``exercises/`` (each module is
    imported from ``<folder>/<module>.py``) or a mapping from module name to
    any object whose attributes are the functions (a module, a
    ``types.SimpleNamespace`` of notebook functions).

    ``call_timeout`` exists for checks that set it; nothing enforces it here.
    """

    def __init__(self, source: Path | str | Mapping[str, Any]):
        self.call_timeout = 0.0
        self.blocked_imports: set[str] = set()
        if isinstance(source, Mapping):
            self._modules: dict[str, Any] = dict(source)
            self._package: str | None = None
        else:
            folder = Path(source)
            if not folder.is_dir():
                raise ValueError(f"{folder} is not a folder of submission modules")
            self._modules = {}
            self._package = _load_package(folder)

    def __enter__(self) -> "InProcessWorker":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release; present for the worker interface."""

    def output_tail(self) -> str:
        """Output is not captured in process; always empty."""
        return ""

    def _module(self, module: str) -> Any:
        if module not in self._modules:
            if self._package is None:
                raise SubmissionAborted("missing", f"no module {module!r} was given to the grader")
            try:
                self._modules[module] = importlib.import_module(f"{self._package}.{module}")
            except ModuleNotFoundError as error:
                raise SubmissionAborted("missing", f"{module}.py is missing: {error}") from None
            except BaseException as error:  # noqa: BLE001 - an import error of the submission
                raise SubmissionAborted("import_error",
                                        f"importing {module}.py failed with {type(error).__name__}: {error}") from None
        return self._modules[module]

    def import_module(self, module: str) -> None:
        """Import ``module`` (or check that it was given), or raise SubmissionAborted."""
        self._module(module)

    def call(self, module: str, function: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``module.function`` and return its value as the sandboxed worker would."""
        namespace = self._module(module)
        target = getattr(namespace, function, None)
        if target is None or not callable(target):
            raise SubmissionAborted("missing", f"{module}.py has no function {function}()")
        namespace_for_types = namespace if isinstance(namespace, ModuleType) else None
        call_args = child.decode(encode_argument(list(args)), namespace_for_types)
        call_kwargs = child.decode(encode_argument(dict(kwargs)), namespace_for_types)
        label = f"{function}()"
        try:
            value = target(*call_args, **call_kwargs)
        except NotImplementedError:
            raise SubmissionAborted("not_implemented",
                                    f"{label} is not implemented yet (it raised NotImplementedError)") from None
        except (SystemExit, KeyboardInterrupt) as error:
            raise SubmissionAborted("crashed", f"{label} raised {type(error).__name__}; "
                                               "submissions must return values, not exit") from None
        except Exception as error:  # noqa: BLE001 - the submission's own exception
            described = child._describe_exception(error)
            raise LearnerRaised(described["error"], described["mro"], described["message"],
                                described["traceback"], label) from None
        return decode_value(child.encode(value))
