"""Backup sets: one directory per backup named by UTC time, built under a hidden temporary
name, fsynced, manifest written last, renamed into place. A directory without a valid
manifest is not a backup; leftovers of killed runs are swept by the next one."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import tarfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from buildtasks import __version__
from buildtasks.atomic import fsync_dir, fsync_file, sha256, write_text
from buildtasks.backup import archive, manifest, quiesce, redis, sqlite
from buildtasks.backup.manifest import Artifact, InvalidManifest, Manifest
from buildtasks.config import Settings
from buildtasks.docker.compose import stack_compose
from buildtasks.errors import BuildtasksError, ConfigError
from buildtasks.platforms import pid_alive
from buildtasks.shell import Shell

TMP_PREFIX = ".tmp-"
ID_FORMAT = "%Y%m%dT%H%M%S.%fZ"
_SERVICE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class BackupFailed(BuildtasksError):
    """A source could not be backed up; nothing was added to the backup directory."""


class SourceMissing(BackupFailed):
    """A configured source does not exist (yet)."""


@dataclass(frozen=True)
class Location:
    service: str  # "" for a path on this machine
    path: str

    def __str__(self) -> str:
        return f"{self.service}:{self.path}" if self.service else self.path


def parse_location(entry: str) -> Location:
    """`SERVICE:/abs/path` is inside a compose service's container, anything else is local."""
    service, sep, path = entry.partition(":")
    if sep and path.startswith("/") and not path.startswith("//") and _SERVICE.match(service):
        return Location(service, path)
    return Location("", entry)


def artifact_file(kind: str, source: str, suffix: str) -> str:
    return f"{kind}-{re.sub(r'[^A-Za-z0-9]+', '-', source).strip('-') or 'root'}{suffix}"


def backup_dir(settings: Settings) -> Path:
    return settings.root / settings.backup.dir


def sources(settings: Settings, only: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(kind, source) pairs to back up; only filters by kind (sqlite, files, redis)."""
    config = settings.backup
    pairs = [("sqlite", s) for s in config.sqlite] + [("files", s) for s in config.files]
    if config.redis:
        pairs.append(("redis", next(iter(config.redis.values()))))
    unknown = set(only) - {"sqlite", "files", "redis"}
    if unknown:
        raise ConfigError(f"--only: unknown kind {min(unknown)!r}; kinds: sqlite, files, redis")
    return [(kind, source) for kind, source in pairs if not only or kind in only]


class ServiceAccess:
    """Settings, shell and a set directory, with the engine opened on first use."""

    def __init__(self, settings: Settings, sh: Shell, directory: Path):
        self.settings, self.sh, self.directory = settings, sh, directory
        self._engine = None

    @property
    def engine(self):
        if self._engine is None:
            from buildtasks.docker.engine import Engine

            self._engine = Engine()
        return self._engine

    def container(self, service: str):
        """The container of a service of the project's compose stack."""
        return self.engine.service_container(stack_compose(self.settings).project, service)


class Collector(ServiceAccess):
    """Copies each source into a set directory being built."""

    def collect(self, kind: str, source: str) -> Artifact:
        handler = {"sqlite": self.sqlite, "files": self.files, "redis": self.redis}[kind]
        shown = redis.redact(source) if kind == "redis" else source  # no password shown/kept
        try:
            file, integrity, details = handler(source)
        except FileNotFoundError as exc:
            raise SourceMissing(f"{kind} {shown}: {exc}") from None
        except (OSError, tarfile.TarError, sqlite3.Error) as exc:
            raise BackupFailed(f"{kind} {shown}: {exc}") from None
        path = self.directory / file
        fsync_file(path)
        if integrity != "ok":
            raise BackupFailed(f"{kind} {shown}: the copy failed its check ({integrity})")
        return Artifact(kind, shown, file, path.stat().st_size, sha256(path), integrity, details)

    def sqlite(self, source: str) -> tuple[str, str, dict]:
        location = parse_location(source)
        file = artifact_file("sqlite", source, ".db")
        dest = self.directory / file
        if not location.service:
            path = self.settings.root / location.path
            if not path.is_file():
                raise FileNotFoundError(f"no database at {path}")
            integrity = sqlite.snapshot(str(path), str(dest))
        else:
            container = self.container(location.service)
            if container.status == "paused":  # quiesced: exec is refused, a helper reads it
                integrity = quiesce.sqlite_snapshot(
                    self.engine, container, location.path, dest, self._copy_single_file
                )
                return file, integrity, {}
            if container.exec_run(["test", "-f", location.path])[0] != 0:
                raise FileNotFoundError(f"{location.path} does not exist in {container.name}")
            scratch = f"/tmp/buildtasks-snapshot-{os.getpid()}.db"
            try:
                snapshot = ["python3", "-c", sqlite.SNAPSHOT_SOURCE(), location.path, scratch]
                integrity = self.engine.exec(container, snapshot).splitlines()[-1]
                self._copy_single_file(container, scratch, dest)
            finally:
                self.engine.exec(container, ["rm", "-f", scratch])
        return file, integrity, {}

    def files(self, source: str) -> tuple[str, str, dict]:
        location = parse_location(source)
        file = artifact_file("files", source, ".tar")
        dest = self.directory / file
        if not location.service:
            path = self.settings.root / location.path
            if not path.is_dir():
                raise FileNotFoundError(f"no directory at {path}")
            count = archive.create(path, dest)
        else:
            stream = dest.with_name(dest.name + ".stream")
            self.engine.copy_out(self.container(location.service), location.path, stream)
            count = archive.rewrite_sorted(stream, dest, strip=Path(location.path).name)
            stream.unlink()
        return file, archive.check(dest), {"members": count}

    def redis(self, source: str) -> tuple[str, str, dict]:
        file = "redis.rdb"
        dest = self.directory / file
        if "service" in self.settings.backup.redis:
            details = redis.snapshot_service(
                self.engine, self.container(source), dest, self.settings.backup.redis_timeout
            )
        else:
            details = redis.snapshot_url(self.sh, source, dest)
        return file, redis.check(self.sh, dest), details

    def _copy_single_file(self, container, path: str, dest: Path) -> None:
        stream = dest.with_name(dest.name + ".stream")
        self.engine.copy_out(container, path, stream)
        with tarfile.open(stream) as tar, open(dest, "wb") as out:
            shutil.copyfileobj(tar.extractfile(tar.getmembers()[0]), out)
        stream.unlink()


def sweep(root: Path) -> list[str]:
    """Remove temporary directories of runs that are no longer alive."""
    removed = []
    for path in root.glob(f"{TMP_PREFIX}*"):
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and (int(pid) == os.getpid() or pid_alive(int(pid))):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path.name)
    return removed


def create(
    settings: Settings,
    sh: Shell,
    only: tuple[str, ...] = (),
    skip_missing: bool = False,
    quiesce_services: tuple[str, ...] = (),
) -> Manifest:
    """Take a backup set of every configured source (or the kinds in only). skip_missing
    leaves out sources that do not exist, as a safety backup before a restore must;
    quiesce_services are paused for the capture (see quiesce)."""
    pairs = sources(settings, only)
    if not pairs:
        raise ConfigError(
            "nothing to back up: configure [tool.buildtasks.backup] sqlite/files/redis"
        )
    root = backup_dir(settings)
    root.mkdir(parents=True, exist_ok=True)
    sweep(root)
    now = datetime.now(UTC)
    set_id = now.strftime(ID_FORMAT)
    building = root / f"{TMP_PREFIX}{set_id}-{os.getpid()}"
    building.mkdir()
    try:
        collector = Collector(settings, sh, building)
        artifacts = []
        with quiesce.paused(collector, quiesce_services) as pause:
            for kind, source in pairs:
                try:
                    artifacts.append(collector.collect(kind, source))
                except SourceMissing as exc:
                    if not skip_missing:
                        raise
                    print(f"safety backup: skipping {exc}", flush=True)
        result = Manifest(
            id=set_id,
            created=now.isoformat(),
            tool=f"buildtasks {__version__}",
            artifacts=tuple(artifacts),
            quiesce=pause.record(),
        )
        write_text(building / manifest.NAME, manifest.dumps(result))
        fsync_dir(building)
        os.rename(building, root / set_id)
        fsync_dir(root)
        return result
    finally:
        shutil.rmtree(building, ignore_errors=True)


def listing(settings: Settings) -> tuple[list[Manifest], list[str]]:
    """(valid sets newest first, names of directories that are not valid sets)."""
    root = backup_dir(settings)
    valid, invalid = [], []
    for path in sorted(root.iterdir() if root.is_dir() else (), reverse=True):
        if path.name.startswith(".") or not path.is_dir():
            continue
        try:
            valid.append(manifest.load(path))
        except InvalidManifest:
            invalid.append(path.name)
    return valid, invalid


def find(settings: Settings, set_id: str = "") -> Manifest:
    """A valid set by id (or id prefix); the newest when set_id is empty."""
    valid, _ = listing(settings)
    matches = [m for m in valid if m.id.startswith(set_id)]
    if not matches:
        raise BuildtasksError(
            f"no valid backup set {set_id!r} in {backup_dir(settings)}; see inv backup.list"
            if set_id
            else f"no valid backup set in {backup_dir(settings)}; take one with inv backup"
        )
    if set_id and len(matches) > 1 and matches[0].id != set_id:
        raise BuildtasksError(f"backup id {set_id!r} is ambiguous; give more of it")
    return matches[0]


def verify(settings: Settings, sh: Shell, set_id: str) -> list[str]:
    """Every problem of a set: manifest, sizes, checksums, SQLite integrity, RDB check."""
    directory = backup_dir(settings) / set_id
    try:
        found = manifest.load(directory)
    except InvalidManifest as exc:
        return [str(exc)]
    problems = []
    checks = {"sqlite": sqlite.check, "files": archive.check, "redis": lambda p: redis.check(sh, p)}
    for artifact in found.artifacts:
        path = directory / artifact.file
        if not path.is_file():
            problems.append(f"{artifact.file}: missing")
        elif path.stat().st_size != artifact.size:
            problems.append(
                f"{artifact.file}: size {path.stat().st_size}, manifest says {artifact.size}"
            )
        elif sha256(path) != artifact.sha256:
            problems.append(f"{artifact.file}: checksum mismatch")
        elif (result := checks[artifact.kind](path)) != "ok":
            problems.append(f"{artifact.file}: {result}")
    return problems


def intact(settings: Settings, found: Manifest) -> bool:
    """Cheap check for retention: every artifact present with its recorded size."""
    directory = backup_dir(settings) / found.id
    return all(
        (directory / a.file).is_file() and (directory / a.file).stat().st_size == a.size
        for a in found.artifacts
    )


def remove(settings: Settings, set_id: str) -> None:
    """Hide the set first (atomic), then delete it: a half-deleted set never looks valid."""
    root = backup_dir(settings)
    hidden = root / f".del-{set_id}"
    os.rename(root / set_id, hidden)
    fsync_dir(root)
    shutil.rmtree(hidden)


def apply_retention(settings: Settings, dry: bool) -> list[str]:
    """Delete the intact sets the retention policy does not keep; returns their ids.
    Sets that are not intact are neither counted nor deleted: they are left to inspect."""
    from buildtasks.backup import retention

    valid, _ = listing(settings)
    intact_ids = [m.id for m in valid if intact(settings, m)]
    config = settings.backup
    _, delete = retention.plan(intact_ids, config.keep_last, config.keep_daily, config.keep_weekly)
    if not dry:
        for set_id in delete:
            remove(settings, set_id)
    return delete
