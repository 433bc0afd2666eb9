"""What every task shares: the invocation's runtime, one-line errors."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

from invoke import Context
from invoke.exceptions import Exit

from buildtasks import lazy
from buildtasks.errors import BuildtasksError, CommandError

if TYPE_CHECKING:
    from buildtasks.runtime import Runtime

config = lazy.module("buildtasks.config")
git = lazy.module("buildtasks.git")  # with the shell it runs: paid for when a task runs
runtimes = lazy.module("buildtasks.runtime")


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


_runtimes: dict[tuple[str, bool], Runtime] = {}


def runtime(c: Context) -> Runtime:
    """The invocation's runtime: one per project root and dry flag, so the tasks of one
    `inv a b` share settings, engine connection and secrets. config.load says whether the
    settings still hold (an earlier task may have changed the version file)."""
    root, dry = c.config.buildtasks.root, bool(c.config.run.dry)
    settings = config.load(root)
    current = _runtimes.get((root, dry))
    if current is None or current.settings is not settings:
        current = _runtimes[(root, dry)] = runtimes.Runtime(settings, dry=dry)
    return current
