"""Restoring a backup set.

The configuration, not the set, says where each artifact goes: a manifest entry is only
accepted when its kind, source and file name are those the current
``[tool.buildtasks.backup]`` gives. Every artifact is verified, then staged next to its
destination; only then are the live files moved aside and the staged ones renamed in.
Redis goes last; a failure at any point puts every live file back.

With the stack down, or on a machine that never ran it (disaster recovery), the compose
project's containers and volumes are created without starting the application, the data is
written through helper containers of the services' own images, then the stack is started
and must become healthy.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from buildtasks.atomic import fsync_dir, fsync_file
from buildtasks.backup import archive, redis, sets
from buildtasks.backup.manifest import Artifact, Manifest
from buildtasks.config import Settings
from buildtasks.docker import compose
from buildtasks.errors import BuildtasksError
from buildtasks.runtime import Runtime
from buildtasks.stack import (
    healthchecks_driven,
    interrupts_on_sigterm,
    live_stack,
    signals_deferred,
    up,
)

ORDER = {"files": 0, "sqlite": 1, "redis": 2}  # a database inside a files tree after it

# Run in helper containers that share a service's volumes, one call per phase and service:
# `stage` writes next to the target, `swap` moves the live files into TARGET.restore-old
# and the staged copy in, `commit` drops the old files, `undo` puts them back.
SERVICE_SCRIPT = """set -e
owner() {  # the live target's owner; else its nearest directory's; else the data owner
  p=$1
  while [ ! -e "$p" ]; do p=$(dirname "$p"); done
  if [ "$p" = "$1" ] || [ "$(stat -c %u "$p")" != 0 ]; then stat -c %u:%g "$p"
  else echo "$DATA_OWNER"; fi
}
live() {  # KIND TARGET: the live files a swap replaces
  echo "$2"
  if [ "$1" = sqlite ]; then printf '%s\\n' "$2-wal" "$2-shm" "$2-journal"; fi
}
stage() {  # KIND TARGET FILE STAGE_AT
  if [ -e "$2.restore-old" ]; then
    echo "$2.restore-old exists: an earlier restore was interrupted; check it, remove it"
    exit 1
  fi
  rm -rf "$4"
  mkdir -p "$(dirname "$4")"
  o=$(owner "$2")
  if [ "$1" = sqlite ]; then cp "/restore/$3" "$4"
  else mkdir "$4" && tar -xf "/restore/$3" -C "$4" --no-same-owner --no-same-permissions; fi
  chown -R "$o" "$4"
}
swap() {  # KIND TARGET STAGED
  mkdir "$2.restore-old"
  live "$1" "$2" | while IFS= read -r f; do
    if [ -e "$f" ]; then mv "$f" "$2.restore-old/"; fi
  done
  mv "$3" "$2"
}
undo() {  # KIND TARGET STAGED (after a swap began)
  if [ -d "$2.restore-old" ]; then
    if [ ! -e "$3" ]; then rm -rf "$2"; fi
    find "$2.restore-old" -mindepth 1 -maxdepth 1 -exec mv {} "$(dirname "$2")/" \\;
  fi
  rm -rf "$3" "$2.restore-old"
}
discard() {  # KIND TARGET STAGED STAGE_AT (never swapped)
  rm -rf "$3" "$4"
}
commit() {  # KIND TARGET STAGED
  rm -rf "$2.restore-old"
}
"""


class RestoreRefused(BuildtasksError):
    """The set is not sound or not this configuration's; nothing was changed."""


class RestoreFailed(BuildtasksError):
    """A restore step failed; the live data was put back as it was."""


@dataclass(frozen=True)
class Step:
    artifact: Artifact
    location: sets.Location  # from the configuration, never from the manifest

    def describe(self) -> str:
        where = str(self.location)
        if self.artifact.kind == "redis":
            where = redis.redact(where)  # the configured URL may carry a password
        return f"{self.artifact.kind:<7} {self.artifact.file} -> {where}"


def steps(settings: Settings, found: Manifest, only: tuple[str, ...] = ()) -> list[Step]:
    """The set's artifacts matched to the configured sources, in restore order; refuses the
    whole set on any entry the configuration does not account for."""
    configured = {}
    for kind, source in sets.sources(settings, only):
        shown = redis.redact(source) if kind == "redis" else source
        configured[(kind, shown)] = (source, sets.artifact_name(kind, source))
    refuse = f"backup {found.id} refused, nothing restored:"
    chosen: dict[tuple[str, str], Step] = {}
    for artifact in found.artifacts:
        key = (artifact.kind, artifact.source)
        if artifact.kind not in sets.KINDS:
            raise RestoreRefused(f"{refuse} unknown artifact kind {artifact.kind[:20]!r}")
        if only and artifact.kind not in only:
            continue
        if key not in configured:
            raise RestoreRefused(
                f"{refuse} {artifact.kind} {artifact.source[:80]!r} is not a configured source"
            )
        source, name = configured[key]
        if artifact.file != name:
            raise RestoreRefused(
                f"{refuse} {artifact.kind} {source} is stored as {artifact.file[:80]!r}, "
                f"the configuration names it {name}"
            )
        if key in chosen:
            raise RestoreRefused(f"{refuse} {artifact.kind} {source} appears twice")
        if artifact.kind == "redis" and "service" in settings.backup.redis:
            _check_redis_details(refuse, artifact.details)
        chosen[key] = Step(artifact, sets.parse_location(source))
    missing = sorted(set(only) - {kind for kind, _ in chosen})
    if missing:
        raise RestoreRefused(f"{refuse} the set holds no {', '.join(missing)}")
    if not chosen:
        raise RestoreRefused(f"{refuse} it holds none of the configured sources")
    return sorted(chosen.values(), key=lambda s: ORDER[s.artifact.kind])


def _check_redis_details(refuse: str, details: dict) -> None:
    """The Redis data directory and file a service restore writes: an absolute path and a
    plain name (they are read back from the manifest, so they are input)."""
    directory = PurePosixPath(str(details.get("dir", "")))
    if not (
        directory.is_absolute()
        and ".." not in directory.parts
        and sets.is_plain_name(str(details.get("dbfilename", "")))
        and details.get("appendonly", "no") in ("yes", "no")
    ):
        raise RestoreRefused(f"{refuse} the Redis details of the manifest are not sound")


def needs_stack(settings: Settings, chosen: list[Step]) -> bool:
    """Whether any artifact lives in a compose service (the stack is stopped around it)."""
    in_service = "service" in settings.backup.redis
    return any(s.location.service or (s.artifact.kind == "redis" and in_service) for s in chosen)


def plan_lines(settings: Settings, found: Manifest, only: tuple[str, ...] = ()) -> list[str]:
    chosen = steps(settings, found, only)
    in_stack = needs_stack(settings, chosen)
    actions = [
        ("verify the set", True),
        ("create the stack's containers and volumes if missing (no start)", in_stack),
        ("take a safety backup of the current state", True),
        ("stop the compose stack", in_stack),
        ("stage every artifact, then swap them in (the live data kept until done)", True),
        ("start the stack and wait until it is healthy", in_stack),
    ]
    partial = " (partial set)" if found.partial else ""
    lines = [f"restore backup {found.id} ({found.created}){partial}:"]
    for number, action in enumerate((a for a, wanted in actions if wanted), start=1):
        lines.append(f"  {number}. {action}")
        if action.startswith("stage"):
            lines += [f"     {s.describe()}" for s in chosen]
    return lines


def run(settings: Settings, sh: Runtime, found: Manifest, only: tuple[str, ...] = ()) -> Manifest:
    """Restore found (or its kinds in only); returns the safety backup taken first."""
    root = sets.backup_dir(settings)
    with sets.locked(root):
        chosen = steps(settings, found, only)
        problems = sets.verify(settings, sh, found.id)
        if problems:
            raise RestoreRefused(
                f"backup {found.id} failed verification, nothing restored: {'; '.join(problems)}"
            )
        stack = live_stack(sh, settings) if needs_stack(settings, chosen) else None
        if stack:
            prepare_stack(settings, sh, stack)
        safety = sets.create(settings, sh, safety=True)
        sh.note(f"safety backup: {safety.id}")

        swap_in(settings, sh, root / found.id, chosen, stack)
    return safety


def swap_in(
    settings: Settings,
    sh: Runtime,
    directory: Path,
    chosen: list[Step],
    stack: compose.Compose | None,
) -> None:
    """Stop the stack (given when it holds data), stage and swap the set's artifacts in,
    start it again and wait for health, whatever happened in between."""
    with interrupts_on_sigterm():  # SIGTERM unwinds like Ctrl-C: put back, start
        if stack:
            sh.run(stack.argv("stop"))
        try:
            Restorer(settings, sh, directory).apply(chosen)
        finally:
            if stack:
                up(sh, stack, settings.stack.wait_timeout)


def prepare_stack(settings: Settings, sh: Runtime, stack: compose.Compose) -> None:
    """A stack that is down or never ran (disaster recovery): its containers and volumes
    are created without starting the application; Redis alone is started for the safety
    backup (it only loads its own data)."""
    states = {c.get("Service"): c.get("State") for c in compose.containers(sh, stack)}
    services = {sets.parse_location(s).service for _, s in sets.sources(settings)}
    redis_service = settings.backup.redis.get("service", "")
    wanted = (services | {redis_service}) - {""}
    if not wanted <= set(states):
        sh.run(stack.argv("up", "--no-start"))
    if redis_service and states.get(redis_service) != "running":
        wait = ["--wait", "--wait-timeout", str(settings.stack.wait_timeout)]
        with healthchecks_driven(sh, stack.project):
            sh.run(stack.argv("up", "--detach", *wait, "--no-deps", redis_service))


@dataclass
class Placement:
    """Where one artifact is staged and swapped in. A database inside a files tree is
    staged inside that tree's staged copy (`stage_at`) and lands at `staged` with it."""

    step: Step
    target: str
    stage_at: str
    staged: str
    aside: str


class Restorer(sets.ServiceAccess):
    """Stages each artifact of a set directory, swaps them all in, puts back on failure."""

    def apply(self, chosen: list[Step]) -> None:

        placements = self._placements([s for s in chosen if s.artifact.kind != "redis"])
        swapped: list[Placement] = []
        try:
            self._stage(placements)
            for group in _swap_groups(placements):
                swapped += group  # undo checks what a partly done group really moved
                self._phase("swap", group)
            for step in chosen:
                if step.artifact.kind == "redis":
                    self._redis(step)
        except BaseException as exc:
            with signals_deferred():  # putting the live data back must not be cut short
                self._phase("undo", swapped[::-1])
                self._phase("discard", [p for p in placements if p not in swapped])
            if isinstance(exc, OSError):
                raise RestoreFailed(
                    f"restore of {self.directory.name} failed, the live data is as it was: "
                    f"{exc.strerror or exc}"
                ) from None
            raise
        with signals_deferred():  # dropping the old files is quick; no half-done commit
            self._phase("commit", placements)

    def _placements(self, chosen: list[Step]) -> list[Placement]:
        pid = os.getpid()
        made: list[Placement] = []
        for step in chosen:
            path = step.location.path
            if not step.location.service:
                path = str(self.settings.root / path)
            target = PurePosixPath(path)
            if step.location.service:
                staged, aside = f"{target}.restore-new", f"{target}.restore-old"
            else:
                staged = str(target.with_name(f".{target.name}.restore-new-{pid}"))
                aside = str(target.with_name(f".{target.name}.restore-old-{pid}"))
            stage_at = staged
            for tree in made:  # files first: a database inside a tree rides along with it
                inside = tree.step.location.service == step.location.service
                if inside and PurePosixPath(tree.target) in target.parents:
                    relative = PurePosixPath(staged).relative_to(tree.target)
                    stage_at = str(PurePosixPath(tree.stage_at) / relative)
            made.append(Placement(step, str(target), stage_at, staged, aside))
        return made

    def _stage(self, placements: list[Placement]) -> None:
        for placement in placements:
            if not placement.step.location.service:
                _stage_local(self.directory / placement.step.artifact.file, placement)
        by_service: dict[str, list[Placement]] = {}
        for placement in placements:
            if placement.step.location.service:
                by_service.setdefault(placement.step.location.service, []).append(placement)
        for service, group in by_service.items():
            lines = [
                _call("stage", p.step.artifact.kind, p.target, p.step.artifact.file, p.stage_at)
                for p in group
            ]
            self._helper(service, lines, [self.directory / p.step.artifact.file for p in group])

    def _phase(self, phase: str, placements: list[Placement]) -> None:
        """swap, undo, discard or commit: local placements here, service ones in one helper
        per service."""
        by_service: dict[str, list[str]] = {}
        for p in placements:
            if p.step.location.service:
                line = _call(phase, p.step.artifact.kind, p.target, p.staged, p.stage_at)
                by_service.setdefault(p.step.location.service, []).append(line)
            else:
                LOCAL_PHASES[phase](p)
        for service, lines in by_service.items():
            self._helper(service, lines, [])

    def _redis(self, step: Step) -> None:
        source = self.directory / step.artifact.file
        if "url" in self.settings.backup.redis:
            with tempfile.TemporaryDirectory(prefix="buildtasks-redis-") as scratch:
                redis.restore_url(self.sh, source, self.settings.backup.redis["url"], Path(scratch))
        else:
            script = redis.restore_script(step.artifact.details)
            service = self.settings.backup.redis["service"]
            self._run_helper(service, script, [(source, "redis.rdb")])

    def _helper(self, service: str, lines: list[str], inputs: list[Path]) -> None:
        owner = f"DATA_OWNER={shlex.quote(self.settings.stack.data_owner)}\n"
        script = SERVICE_SCRIPT + owner + "".join(f"{line}\n" for line in lines) + "sync\n"
        self._run_helper(service, script, [(path, path.name) for path in inputs])

    def _run_helper(self, service: str, script: str, inputs: list[tuple[Path, str]]) -> None:
        container = self.container(service)
        with tempfile.TemporaryDirectory(prefix="buildtasks-restore-") as scratch:
            for path, name in inputs:
                shutil.copy(path, Path(scratch) / name)
            timeout = max(600, self.settings.backup.redis_timeout)
            self.engine.run_helper(container.image.id, container.id, script, Path(scratch), timeout)


def _swap_groups(placements: list[Placement]) -> list[list[Placement]]:
    """Local placements one by one; a service's together, in one helper container."""
    groups: list[list[Placement]] = []
    by_service: dict[str, list[Placement]] = {}
    for placement in placements:
        service = placement.step.location.service
        if not service:
            groups.append([placement])
        elif service not in by_service:
            by_service[service] = [placement]
            groups.append(by_service[service])
        else:
            by_service[service].append(placement)
    return groups


def _call(*words: str) -> str:
    return shlex.join(words)


def _live(placement: Placement) -> list[Path]:
    target = Path(placement.target)
    if placement.step.artifact.kind != "sqlite":
        return [target]
    return [target, *(target.with_name(target.name + s) for s in ("-wal", "-shm", "-journal"))]


def _stage_local(source: Path, placement: Placement) -> None:
    """Copy (SQLite) or extract (files) next to the target and fsync it all; the live
    data is untouched until every artifact is staged."""
    target, stage_at = Path(placement.target), Path(placement.stage_at)
    if Path(placement.aside).exists():
        raise RestoreFailed(f"{placement.aside} exists: an earlier restore was interrupted")
    _remove(stage_at)
    stage_at.parent.mkdir(parents=True, exist_ok=True)
    if placement.step.artifact.kind == "sqlite":
        shutil.copy(source, stage_at)
        fsync_file(stage_at)
        if target.exists():
            st = target.stat()
            os.chown(stage_at, st.st_uid, st.st_gid)
    else:
        archive.extract(source, stage_at)
        for path in sorted(stage_at.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            (fsync_file if path.is_file() else fsync_dir)(path)
        fsync_dir(stage_at)
    fsync_dir(stage_at.parent)


def _swap_local(placement: Placement) -> None:
    """The live files (a database with its -wal/-shm/-journal, which would be replayed over
    the restored file) into the aside directory, the staged copy into place."""
    aside = Path(placement.aside)
    aside.mkdir()
    for live in _live(placement):
        if live.exists() or live.is_symlink():
            os.rename(live, aside / live.name)
    os.rename(placement.staged, placement.target)
    fsync_dir(Path(placement.target).parent)


def _undo_local(placement: Placement) -> None:
    aside, target = Path(placement.aside), Path(placement.target)
    if aside.is_dir():
        if not Path(placement.staged).exists():
            _remove(target)
        for kept in aside.iterdir():
            os.rename(kept, target.parent / kept.name)
        fsync_dir(target.parent)
    for leftover in (placement.staged, placement.stage_at, placement.aside):
        _remove(Path(leftover))


def _discard_local(placement: Placement) -> None:
    _remove(Path(placement.staged))
    _remove(Path(placement.stage_at))


def _commit_local(placement: Placement) -> None:
    _remove(Path(placement.aside))


LOCAL_PHASES = {
    "swap": _swap_local,
    "undo": _undo_local,
    "discard": _discard_local,
    "commit": _commit_local,
}


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
