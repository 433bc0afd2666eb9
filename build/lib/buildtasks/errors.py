"""Expected failures. Tasks turn them into one line on stderr and an exit code."""


class BuildtasksError(Exception):
    """A failure the user can act on: the message says what failed, why, and what to do."""

    exit_code = 1


class ConfigError(BuildtasksError):
    """The project's configuration is wrong."""

    exit_code = 2


class CommandError(BuildtasksError):
    """An external command could not run or exited non-zero."""

    def __init__(self, message: str, returncode: int = 1):
        super().__init__(message)
        self.returncode = returncode


class EngineError(BuildtasksError):
    """The Docker engine is unreachable or refused a request."""


class CheckError(BuildtasksError):
    """An image or environment check failed."""
