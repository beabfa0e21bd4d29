"""Every refusal an entry point turns into an exit code, importable without torch.

Errors are raised deep inside torch-bound modules, but the CLI and the engines must catch them
without importing those modules: `--help`, `config` and `plan` stay free of torch. So every
error class is defined here, and the modules that raise them import them from here.
"""
from __future__ import annotations

import signal


class ConfigError(ValueError):
    """A config that cannot be run; the message names the field and how to fix it."""


class DataError(ValueError):
    """Data that cannot be loaded; the message names the field or file and how to fix it."""


class ArtifactError(RuntimeError):
    """A store failure that trying again cannot fix; the message names the artifact URI (and file) and the fix."""


class StoreUnavailable(RuntimeError):
    """The object store did not answer, or answered that it is busy or failing (network errors,
    timeouts, cut or truncated answers, HTTP 5xx, throttling), after every retry: trying again later may succeed.

    Not an ArtifactError, so no caller mistakes an outage for a missing or invalid artifact.
    """


class StageError(RuntimeError):
    """A stage cannot run with these inputs; the message says why and what to do."""


class MissingExtra(ImportError):
    """An optional part of the package whose dependencies are not installed; the message names the extra."""

    def __init__(self, feature: str, extra: str, cause: ImportError):
        super().__init__(f"{feature} needs the {extra!r} extra, which is not installed ({cause}): "
                         f"pip install 'infer-distill[{extra}]'")


class Interrupted(BaseException):
    """SIGTERM or SIGINT stopped the work (`runtime.signals`): exit 128 + the signal's number, as a shell reports a
    process that signal ended. A BaseException, like KeyboardInterrupt, so that no `except Exception` of a stage
    takes it for a failure of its own and carries on."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)  # the args a worker process pickles it back to the parent with
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


# Refused input: exit 2, never worth retrying. StoreUnavailable is not among them (exit 75: retry later).
USER_ERRORS = (ConfigError, DataError, ArtifactError, StageError, MissingExtra)
