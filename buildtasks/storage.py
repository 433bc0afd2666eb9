"""`inv clean-storage`: empty the stack's configured data, only when a backup set holds it.

The data is what [tool.buildtasks.backup] names as `sqlite` and `files` sources (host
paths or SERVICE:/path); nothing else is touched. A database goes with its -wal and -shm
files; a files directory is emptied, not removed (a bind mount or volume keeps working).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from buildtasks.backup import sets
from buildtasks.config import Settings
from buildtasks.docker.compose import stack_compose
from buildtasks.errors import BuildtasksError, ConfigError
from buildtasks.shell import Shell


@dataclass(frozen=True)
class Cleaning:
    backup_id: str  # the set that holds every source removed
    commands: tuple[tuple[str, ...], ...]  # what removes each source, as run


def plan(settings: Settings) -> Cleaning:
    """The commands that remove the configured data, and the newest full set holding all
    of it; refused (one line) when there is no such set."""
    pairs = [(k, s) for k, s in sets.sources(settings, ("sqlite", "files"))]
    if not pairs:
        raise ConfigError("nothing to clean: configure [tool.buildtasks.backup] sqlite/files")
    names = {sets.artifact_name(kind, source) for kind, source in pairs}
    valid, _ = sets.listing(settings)
    covering = [m for m in valid if names <= {a.file for a in m.artifacts}]
    if not covering:
        raise BuildtasksError(
            f"no backup set in {sets.backup_dir(settings)} holds all of "
            f"{', '.join(s for _, s in pairs)}; take one with `inv backup` first"
        )
    return Cleaning(covering[0].id, tuple(_command(settings, k, s) for k, s in pairs))


def _command(settings: Settings, kind: str, source: str) -> tuple[str, ...]:
    location = sets.parse_location(source)
    path = location.path if location.service else str(settings.root / location.path)
    argv = (
        ("rm", "-f", "--", path, f"{path}-wal", f"{path}-shm")
        if kind == "sqlite"
        else ("find", path, "-mindepth", "1", "-delete")
    )
    if location.service:
        return tuple(stack_compose(settings).argv("exec", "-T", location.service, *argv))
    return argv


def clean(settings: Settings, sh: Shell, cleaning: Cleaning) -> None:
    """Run the plan's commands (echoed; skipped under --dry), holding the backup directory
    so that no retention removes the set and no backup or migration runs meanwhile."""
    with contextlib.nullcontext() if sh.dry else sets.locked(sets.backup_dir(settings)):
        problems = sets.verify(settings, sh, cleaning.backup_id)
        if problems:
            raise BuildtasksError(
                f"backup set {cleaning.backup_id} fails verification ({problems[0]}); not cleaning"
            )
        for argv in cleaning.commands:
            sh.run(list(argv))
