"""buildtasks: Invoke task collections and nox sessions for containerised Python services.

Importing this package stays cheap: the docker SDK, yaml and the engine are touched only
when a task runs.
"""

from __future__ import annotations

import os
import sys

from buildtasks import lazy
from buildtasks.errors import ConfigError
from buildtasks.version import __version__

# Private names: `from buildtasks import listing` must find the module, not these.
_listing = lazy.module("buildtasks.listing")
_tasks = lazy.module("buildtasks.tasks")

__all__ = ["__version__", "namespace"]


def namespace(root: str | os.PathLike[str] = "."):
    """The invoke Collection for the project whose pyproject.toml is in root.

    A broken configuration ends the program with its one-line error (exit 2), since no
    task list can be shown without it. What the list needs is remembered between runs
    while the configuration and what it reads stay unchanged (listing.py).
    """
    try:
        return _tasks.collection(_listing.shape(root))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
