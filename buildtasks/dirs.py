"""Where buildtasks keeps what outlives one run, outside any checkout: the XDG base
directories, or None where none can be named."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def _base(variable: str, fallback: str) -> Path | None:
    value = os.environ.get(variable, "")
    if os.path.isabs(value):  # a relative value is ignored, as the XDG spec says
        return Path(value)
    try:
        return Path.home() / fallback
    except RuntimeError:  # no HOME, and a user the password database does not know
        return None


def cache_home() -> Path | None:
    """$XDG_CACHE_HOME/buildtasks: what may be deleted at any time."""
    base = _base("XDG_CACHE_HOME", ".cache")
    return base / "buildtasks" if base else None


def state_home() -> Path | None:
    """$XDG_STATE_HOME/buildtasks: records kept between runs."""
    base = _base("XDG_STATE_HOME", ".local/state")
    return base / "buildtasks" if base else None


def project_key(root: Path) -> str:
    """A file-name-safe key of a project's root, whatever bytes its name holds."""
    return hashlib.sha256(os.fsencode(root)).hexdigest()[:16]
