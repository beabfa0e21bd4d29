"""The refusals every entry point turns into exit 2 (`plan.EXIT_REFUSED`), importable without torch.

A stage or data error is raised deep inside torch-bound modules, but the CLI must catch it
without importing them: `--help`, `config` and `plan` stay free of torch. `ConfigError` and the
store's errors live beside the code that raises them (both modules are torch-free).
"""
from __future__ import annotations

from .config import ConfigError
from .store import ArtifactError


class DataError(ValueError):
    """Data that cannot be loaded; the message names the field or file and how to fix it."""


class StageError(RuntimeError):
    """A stage cannot run with these inputs; the message says why and what to do."""


class MissingExtra(ImportError):
    """An optional part of the package whose dependencies are not installed; the message names the extra."""

    def __init__(self, feature: str, extra: str, cause: ImportError):
        super().__init__(f"{feature} needs the {extra!r} extra, which is not installed ({cause}): "
                         f"pip install 'infer-distill[{extra}]'")


USER_ERRORS = (ConfigError, DataError, ArtifactError, StageError, MissingExtra)
