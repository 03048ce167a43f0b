"""Named errors raised by the library; the CLI turns each into a message and an exit code."""

from __future__ import annotations


class CurateError(Exception):
    """Base class of every error the library raises on purpose."""

    exit_code = 1


class SpecError(CurateError):
    """The spec file is not valid: YAML syntax, unknown keys or operators, wrong types."""

    exit_code = 2

    def __init__(self, message: str, *, problems: list[str] | None = None) -> None:
        self.problems = problems or [message]
        super().__init__(message)


class InputError(CurateError):
    """An input file cannot be read as configured (missing, empty, malformed rows)."""

    exit_code = 3


class OperatorError(CurateError):
    """An operator failed on data it was given (a bug in the data or the parameters)."""

    exit_code = 4


class MissingDependencyError(CurateError):
    """An optional dependency is needed for a feature that was asked for."""

    exit_code = 5

    def __init__(self, *, package: str, extra: str, feature: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{feature} needs the package '{package}', which is not installed. "
            f"Install it with: pip install 'curate[{extra}]'"
        )


class RunDirError(CurateError):
    """A run directory is missing or does not hold a finished build."""

    exit_code = 6


class PublishError(CurateError):
    """Publishing to the Hub cannot go ahead: no licence, a bad repo name, no token, or the Hub
    refused the upload."""

    exit_code = 7


class TeacherError(CurateError):
    """A teacher cannot be used: its key's environment variable is unset, the endpoint refuses
    the key (401, 403) or does not know the model (404), or its provider cannot start."""

    exit_code = 8


class BuildStopped(CurateError):
    """A build stopped on purpose before its end (budget reached, Ctrl-C). What was done is kept:
    the stage is written marked incomplete and a re-run resumes from the request cache."""

    exit_code = 9


class ExecutorError(CurateError):
    """The executor cannot run the build: Ray is unreachable at the given address, or a task
    failed on a worker after its retries."""

    exit_code = 10
