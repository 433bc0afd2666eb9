"""Restoring a backup set: verify, safety backup, stop the stack, swap files in atomically
with the right owner, bring Redis back with its keys, start, wait for health."""

from __future__ import annotations

import os
import shlex
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from buildtasks.atomic import fsync_dir, fsync_file
from buildtasks.backup import archive, redis, sets, sqlite
from buildtasks.backup.manifest import Artifact, Manifest
from buildtasks.config import Settings
from buildtasks.docker.compose import stack_compose
from buildtasks.errors import BuildtasksError
from buildtasks.shell import Shell

# Run in a helper container that shares the service's volumes: rename swaps, then owner
# taken from the parent directory (the image's user owns its data directory).
SQLITE_SCRIPT = """set -e
rm -f "$T-wal" "$T-shm" "$T-journal"
cp "/restore/$F" "$T.restore-tmp"
chown "$(stat -c %u:%g "$(dirname "$T")")" "$T.restore-tmp"
mv "$T.restore-tmp" "$T"
"""
FILES_SCRIPT = """set -e
rm -rf "$T.restore-tmp" "$T.restore-old"
mkdir -p "$T.restore-tmp"
tar -xf "/restore/$F" -C "$T.restore-tmp" --no-same-owner --no-same-permissions
chown -R "$(stat -c %u:%g "$(dirname "$T")")" "$T.restore-tmp"
if [ -e "$T" ]; then mv "$T" "$T.restore-old"; fi
mv "$T.restore-tmp" "$T"
rm -rf "$T.restore-old"
"""


class RestoreRefused(BuildtasksError):
    """The set is not sound; nothing was changed."""


@dataclass(frozen=True)
class Step:
    artifact: Artifact
    location: sets.Location

    def describe(self) -> str:
        return f"{self.artifact.kind:<7} {self.artifact.file} -> {self.location}"


def steps(found: Manifest) -> list[Step]:
    return [Step(a, sets.parse_location(a.source)) for a in found.artifacts]


def needs_stack(settings: Settings, found: Manifest) -> bool:
    """Whether any artifact lives in a compose service (the stack is stopped around it)."""
    in_service = "service" in settings.backup.redis
    return any(
        s.location.service or (s.artifact.kind == "redis" and in_service) for s in steps(found)
    )


def plan_lines(settings: Settings, found: Manifest) -> list[str]:
    lines = [f"restore backup {found.id} ({found.created}):", "  1. verify the set"]
    lines.append("  2. take a safety backup of the current state")
    in_stack = needs_stack(settings, found)
    if in_stack:
        lines.append("  3. stop the compose stack")
    lines += [f"     {s.describe()}" for s in steps(found)]
    if in_stack:
        lines.append("  4. start the stack and wait until it is healthy")
    return lines


def run(settings: Settings, sh: Shell, found: Manifest) -> Manifest:
    """Restore found; returns the safety backup taken first."""
    problems = sets.verify(settings, sh, found.id)
    if problems:
        raise RestoreRefused(
            f"backup {found.id} failed verification, nothing restored: {'; '.join(problems)}"
        )
    directory = sets.backup_dir(settings) / found.id
    for step in steps(found):  # hostile archives are refused before anything changes
        if step.artifact.kind == "files":
            with tarfile.open(directory / step.artifact.file) as tar:
                archive.check_members(tar.getmembers())
    safety = sets.create(settings, sh, skip_missing=True)
    print(f"safety backup: {safety.id}", flush=True)
    restorer = Restorer(settings, sh, directory)
    in_stack = needs_stack(settings, found)
    if in_stack:
        sh.run(restorer.compose.argv("stop"))
    try:
        for step in steps(found):
            restorer.restore(step)
    finally:
        if in_stack:
            from buildtasks.stack import up

            up(sh, restorer.compose, settings.stack.wait_timeout)
    return safety


class Restorer(sets.ServiceAccess):
    """Swaps each artifact of a set directory into place."""

    @property
    def compose(self):
        return stack_compose(self.settings)

    def restore(self, step: Step) -> None:
        artifact, location = step.artifact, step.location
        source = self.directory / artifact.file
        if artifact.kind == "redis":
            if "url" in self.settings.backup.redis:
                with tempfile.TemporaryDirectory(prefix="buildtasks-redis-") as scratch:
                    redis.restore_url(
                        self.sh, source, self.settings.backup.redis["url"], Path(scratch)
                    )
            else:
                script = redis.restore_script(artifact.details)
                self._in_container(artifact.source, source, "redis.rdb", script)
        elif location.service:
            script = SQLITE_SCRIPT if artifact.kind == "sqlite" else FILES_SCRIPT
            variables = f"T={shlex.quote(location.path)}\nF={shlex.quote(artifact.file)}\n"
            self._in_container(location.service, source, artifact.file, variables + script)
        elif artifact.kind == "sqlite":
            restore_local_sqlite(source, self.settings.root / location.path)
        else:
            restore_local_files(source, self.settings.root / location.path)

    def _in_container(self, service: str, source: Path, name: str, script: str) -> None:
        container = self.container(service)
        with tempfile.TemporaryDirectory(prefix="buildtasks-restore-") as inputs:
            shutil.copy(source, Path(inputs) / name)
            image = container.image.tags[0] if container.image.tags else container.image.id
            print(f"restoring {name} into {service} with a helper from {image}", flush=True)
            timeout = max(600, self.settings.backup.redis_timeout)
            self.engine.run_helper(container.image.id, container.id, script, Path(inputs), timeout)


def restore_local_sqlite(source: Path, target: Path) -> None:
    """Copy aside and fsync first; only then drop the stale -wal/-shm/-journal (which would
    be replayed over the restored file) and rename the copy into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.restore-{os.getpid()}")
    shutil.copy(source, staging)
    fsync_file(staging)
    if target.exists():
        st = target.stat()
        os.chown(staging, st.st_uid, st.st_gid)
    for companion in sqlite.stale_companions(target):
        companion.unlink(missing_ok=True)
    os.replace(staging, target)
    fsync_dir(target.parent)


def restore_local_files(source: Path, target: Path) -> None:
    staging = target.with_name(f".{target.name}.restore-{os.getpid()}")
    retired = target.with_name(f".{target.name}.old-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    archive.extract(source, staging)
    for path in sorted(staging.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        (fsync_file if path.is_file() else fsync_dir)(path)  # contents durable before the swap
    fsync_dir(staging)
    if target.exists():
        os.rename(target, retired)
    os.rename(staging, target)
    fsync_dir(target.parent)
    shutil.rmtree(retired, ignore_errors=True)
