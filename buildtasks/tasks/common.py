"""What every task shares: settings from the project root, the shell, one-line errors."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

from invoke import Context
from invoke.exceptions import Exit

from buildtasks import config, git
from buildtasks.config import Settings
from buildtasks.errors import BuildtasksError, CommandError

if TYPE_CHECKING:
    from buildtasks.shell import Shell


def one_line_errors(body: Callable) -> Callable:
    """Expected failures end the task with their message and exit code, not a traceback."""

    @functools.wraps(body)
    def wrapper(c: Context, *args, **kwargs):
        git.forget()  # a task run before this one in the same invocation may have changed the tree
        try:
            return body(c, *args, **kwargs)
        except BuildtasksError as exc:
            code = exc.returncode if isinstance(exc, CommandError) else exc.exit_code
            raise Exit(f"error: {exc}", code=code or 1) from None
        except Exception as exc:
            # The docker SDK's errors (refused request, conflict) are the engine speaking.
            if not type(exc).__module__.startswith("docker."):
                raise
            raise Exit(f"error: the Docker engine refused: {exc}", code=1) from None

    return wrapper


def settings(c: Context) -> Settings:
    # Invoke's config holds only the root; config.load returns the settings namespace()
    # already loaded, unless an input changed since.
    return config.load(c.config.buildtasks.root)


def shell(c: Context, project: Settings) -> Shell:
    from buildtasks.docker import builder

    return builder.shell(project, dry=bool(c.config.run.dry))
