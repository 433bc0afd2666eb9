"""Backup sets: one directory per backup named by UTC time, built under a hidden temporary
name, fsynced, manifest written last, renamed into place. A directory without a valid
manifest is not a backup; leftovers of killed runs are swept by the next one.

The backup directory is shared with people: only names of the tool's own patterns that
carry its marker file are ever swept, and one flock serialises backup, restore and
retention on it."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import re
import shutil
import sqlite3
import tarfile
import tempfile
import time
from collections.abc import Container, Generator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from buildtasks.atomic import fsync_dir, fsync_file, sha256, write_text
from buildtasks.backup import archive, manifest, quiesce, redis, retention, sqlite, sqlite_snapshot
from buildtasks.backup.manifest import ID_FORMAT, ID_PATTERN, Artifact, InvalidManifest, Manifest
from buildtasks.config import Settings
from buildtasks.docker.compose import stack_compose
from buildtasks.docker.engine import Engine, run_in
from buildtasks.errors import BuildtasksError, ConfigError
from buildtasks.platforms import pid_alive
from buildtasks.runtime import Runtime
from buildtasks.shell import Shell
from buildtasks.version import __version__

TMP_PREFIX = ".tmp-"
DEL_PREFIX = ".del-"
MARKER = ".buildtasks-set"  # written first into every set this tool builds
LOCK = ".buildtasks.lock"
LOCK_WAIT = 600  # seconds a run waits for another one holding the directory
_OWN = re.compile(rf"^(?:\{TMP_PREFIX}({ID_PATTERN})-(\d+)|\{DEL_PREFIX}({ID_PATTERN}))$")
KINDS = ("sqlite", "files", "redis")
_SERVICE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class BackupFailed(BuildtasksError):
    """A source could not be backed up; nothing was added to the backup directory."""


class SourceMissing(BackupFailed):
    """A configured source does not exist (yet)."""


class DirectoryBusy(BuildtasksError):
    """Another backup, restore or retention holds the backup directory."""


def is_set_id(name: str) -> bool:
    return re.fullmatch(ID_PATTERN, name) is not None


def is_plain_name(name: str) -> bool:
    """A file name that stays inside the set directory."""
    return (
        bool(name)
        and name not in (".", "..")
        and "/" not in name
        and "\\" not in name
        and "\0" not in name
    )


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


def artifact_name(kind: str, source: str) -> str:
    """The file a configured source is saved as: restore expects exactly this name."""
    if kind == "redis":
        return "redis.rdb"
    return artifact_file(kind, source, ".db" if kind == "sqlite" else ".tar")


def backup_dir(settings: Settings) -> Path:
    """The backup directory; never /, the project root or inside a configured source
    (retention and restores would then reach the user's own files)."""
    root = (settings.root / settings.backup.dir).resolve()
    where = f"[tool.buildtasks.backup] dir = {settings.backup.dir!r} ({root})"
    if root == Path(root.anchor) or root == settings.root.resolve():
        raise ConfigError(f"{where} is / or the project root; use a directory of its own")
    for kind, source in sources(settings):
        location = parse_location(source)
        if kind == "redis" or location.service:
            continue
        path = (settings.root / location.path).resolve()
        if root == path or path in root.parents:
            raise ConfigError(f"{where} is inside the {kind} source {source!r}; move it out")
    return root


def sources(settings: Settings, only: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(kind, source) pairs to back up; only filters by kind (sqlite, files, redis)."""
    config = settings.backup
    pairs = [("sqlite", s) for s in config.sqlite] + [("files", s) for s in config.files]
    if config.redis:
        pairs.append(("redis", next(iter(config.redis.values()))))
    unknown = set(only) - set(KINDS)
    if unknown:
        raise ConfigError(f"--only: unknown kind {min(unknown)!r}; kinds: {', '.join(KINDS)}")
    names = [artifact_name(kind, source) for kind, source in pairs]
    clash = next((n for n in names if names.count(n) > 1), "")
    if clash:
        raise ConfigError(f"[tool.buildtasks.backup]: two sources would both be saved as {clash}")
    return [(kind, source) for kind, source in pairs if not only or kind in only]


def overlapping(settings: Settings, files_source: str) -> frozenset[str]:
    """Names, relative to a files source, of the configured SQLite databases (and their
    -wal/-shm/-journal) inside it: those are captured only through the backup API, a tar
    of a live database file is torn."""
    tree = parse_location(files_source)
    names = set()
    for db in settings.backup.sqlite:
        location = parse_location(db)
        if location.service != tree.service:
            continue
        if tree.service:
            path, base = PurePosixPath(location.path), PurePosixPath(tree.path)
        else:
            path = (settings.root / location.path).resolve()
            base = (settings.root / tree.path).resolve()
        if base not in path.parents:
            continue
        relative = path.relative_to(base).as_posix()
        names.update(relative + suffix for suffix in ("", "-wal", "-shm", "-journal"))
    return frozenset(names)


_held: dict[Path, int] = {}  # directories this process holds the lock of (re-entrant)


@contextlib.contextmanager
def locked(root: Path, wait: float = LOCK_WAIT) -> Iterator[None]:
    """Hold the backup directory's flock; waits up to `wait` seconds for another run."""
    if _held.get(root):
        _held[root] += 1
        try:
            yield
        finally:
            _held[root] -= 1
        return
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise BackupFailed(f"cannot use the backup directory {root}: {exc.strerror}") from None
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise DirectoryBusy(
                        f"{root} is held by another backup, restore, retention or migration "
                        f"(waited {wait:g}s for {root / LOCK}); try again when it has finished"
                    ) from None
                time.sleep(0.1)
        _held[root] = 1
        try:
            yield
        finally:
            del _held[root]
    finally:
        os.close(fd)  # closing releases the flock


class ServiceAccess:
    """Settings, the runtime (its engine for the stack's containers) and a set directory."""

    def __init__(self, settings: Settings, sh: Runtime, directory: Path):
        self.settings, self.sh, self.directory = settings, sh, directory

    @property
    def engine(self) -> Engine:
        return self.sh.engine

    def container(self, service: str):
        """The container of a service of the project's compose stack."""
        return self.engine.service_container(stack_compose(self.settings).project, service)


class Capture:
    """One source captured in two steps: started (pinned) while the services are paused,
    finished (copied out, checked) once they run again. A handler is a generator: what it
    does before its one `yield` is the pinning; one that never yields is done at once.
    close() ends what is left of it (removes a helper container)."""

    def __init__(self, collector: Collector, kind: str, source: str, safety: bool):
        self.collector, self.kind, self.source, self.safety = collector, kind, source, safety
        self.shown = redis.redact(source) if kind == "redis" else source  # no password shown
        handler = {"sqlite": collector.sqlite, "files": collector.files, "redis": collector.redis}
        self._steps = handler[kind](source)
        self._result: tuple[str, str, dict] | None = None
        self._step()

    def _step(self) -> None:
        try:
            next(self._steps)
        except StopIteration as done:
            self._result = done.value
        except FileNotFoundError as exc:
            raise SourceMissing(f"{self.kind} {self.shown}: {exc}") from None
        except sqlite3.Error as exc:
            if not self.safety:
                raise BackupFailed(f"{self.kind} {self.shown}: {exc}") from None
            self._result = self.collector._raw_sqlite(self.source, exc)
        except (OSError, tarfile.TarError) as exc:
            raise BackupFailed(f"{self.kind} {self.shown}: {exc}") from None

    def finish(self) -> Artifact:
        """The artifact. A safety backup (before a restore) keeps what it finds even when
        it is not sound: a damaged database is the usual reason to restore."""
        if self._result is None:
            self._step()
        file, integrity, details = self._result
        path = self.collector.directory / file
        fsync_file(path)
        if integrity != "ok" and not self.safety:
            raise BackupFailed(f"{self.kind} {self.shown}: the copy failed its check ({integrity})")
        return Artifact(
            self.kind, self.shown, file, path.stat().st_size, sha256(path), integrity, details
        )

    def close(self) -> None:
        self._steps.close()


Step = Generator[None, None, tuple[str, str, dict]]


class Collector(ServiceAccess):
    """Copies each source into a set directory being built (see Capture)."""

    def __init__(self, settings: Settings, sh: Runtime, directory: Path):
        super().__init__(settings, sh, directory)
        self.helpers: dict[str, quiesce.SnapshotHelper] = {}  # by sqlite source

    def prepare(self, pairs: list[tuple[str, str]], services: tuple[str, ...]) -> None:
        """Start the snapshot helpers of the databases in services about to be paused:
        starting a container is most of what pinning one would cost."""
        for kind, source in pairs:
            location = parse_location(source)
            if kind == "sqlite" and location.service in services:
                container = self.container(location.service)
                self.helpers[source] = quiesce.SnapshotHelper(self.engine, container, location.path)

    def close(self) -> None:
        """Remove the helpers no capture took."""
        while self.helpers:
            self.helpers.popitem()[1].remove()

    def sqlite(self, source: str) -> Step:
        location = parse_location(source)
        file = artifact_name("sqlite", source)
        dest = self.directory / file
        if not location.service:
            path = self.settings.root / location.path
            if not path.is_file():
                raise FileNotFoundError(f"no database at {path}")
            src, wal = sqlite_snapshot.pin(str(path))
            try:
                if wal:  # the read transaction holds the view: the copy may follow
                    yield
                return file, sqlite_snapshot.copy(src, str(dest)), {}
            finally:
                src.close()
        container = self.container(location.service)
        if container.status == "paused":  # quiesced: exec is refused, a helper reads it
            helper = self.helpers.pop(source, None)
            helper = helper or quiesce.SnapshotHelper(self.engine, container, location.path)
            try:
                integrity = yield from helper.snapshot(dest, self._copy_single_file)
            finally:
                helper.remove()
            return file, integrity, {}
        if container.status != "running":
            return file, self._stopped_sqlite(container, location.path, dest), {}
        if run_in(container, ["test", "-f", location.path])[0] != 0:
            raise FileNotFoundError(f"{location.path} does not exist in {container.name}")
        scratch = f"/tmp/buildtasks-snapshot-{os.getpid()}.db"
        try:
            snapshot = ["python3", "-c", sqlite.SNAPSHOT_SOURCE(), location.path, scratch]
            integrity = self.engine.exec(container, snapshot).splitlines()[-1]
            self._copy_single_file(container, scratch, dest)
        finally:
            self.engine.exec(container, ["rm", "-f", scratch])
        return file, integrity, {}

    def _raw_sqlite(self, source: str, error: sqlite3.Error) -> tuple[str, str, dict]:
        """The bytes of a database the backup API cannot read (a safety backup only)."""
        location = parse_location(source)
        file = artifact_name("sqlite", source)
        if location.service:
            self._copy_single_file(
                self.container(location.service), location.path, self.directory / file
            )
        else:
            shutil.copy(self.settings.root / location.path, self.directory / file)
        return file, f"raw copy, not a sound database: {error}", {}

    def _stopped_sqlite(self, container, path: str, dest: Path) -> str:
        """A database in a stopped container (a restore into a stack that is down): its
        file and WAL copied out, the WAL applied in a scratch copy, then snapshotted."""
        with tempfile.TemporaryDirectory(prefix="buildtasks-sqlite-") as scratch:
            copy = Path(scratch) / "db"
            self._copy_single_file(container, path, copy)
            with contextlib.suppress(FileNotFoundError):
                self._copy_single_file(container, path + "-wal", copy.with_name("db-wal"))
            sqlite3.connect(copy).close()  # the last connection checkpoints the WAL
            return sqlite.snapshot(str(copy), str(dest))

    def files(self, source: str) -> Step:
        """The tree is read at once (while paused: files have no cheap snapshot); only
        rewriting and checking the archive follow."""
        location = parse_location(source)
        file = artifact_name("files", source)
        dest = self.directory / file
        exclude = overlapping(self.settings, source)
        if not location.service:
            path = self.settings.root / location.path
            if not path.is_dir():
                raise FileNotFoundError(f"no directory at {path}")
            count, left_out = archive.create(path, dest, exclude)
            yield
        else:
            stream = dest.with_name(dest.name + ".stream")
            self.engine.copy_out(self.container(location.service), location.path, stream)
            yield
            strip = Path(location.path).name
            count, left_out = archive.rewrite_sorted(stream, dest, strip, exclude)
            stream.unlink()
        details: dict = {"members": count}
        if left_out:  # said in the summary: these are captured by the sqlite artifacts
            details["left_out"] = left_out
        return file, archive.check(dest), details

    def redis(self, source: str) -> Step:
        file = artifact_name("redis", source)
        dest = self.directory / file
        if "service" in self.settings.backup.redis:
            details = yield from redis.snapshot_service(
                self.engine, self.container(source), dest, self.settings.backup.redis_timeout
            )
        else:  # a replica's full transfer: no point at which its snapshot is known fixed
            details = redis.snapshot_url(self.sh, source, dest)
        return file, redis.check(self.sh, dest), details

    def _copy_single_file(self, container, path: str, dest: Path) -> None:
        stream = dest.with_name(dest.name + ".stream")
        self.engine.copy_out(container, path, stream)
        with tarfile.open(stream) as tar, open(dest, "wb") as out:
            shutil.copyfileobj(tar.extractfile(tar.getmembers()[0]), out)
        stream.unlink()


def sweep(root: Path) -> list[str]:
    """Remove what killed runs left: this tool's temporary and half-deleted sets (its name
    patterns, its marker inside, no live owner). Called with the lock held."""
    removed = []
    for path in sorted(root.iterdir()):
        own = _OWN.match(path.name)
        if not own or path.is_symlink() or not (path / MARKER).is_file():
            continue
        pid = own.group(2)
        if pid and int(pid) != os.getpid() and pid_alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path.name)
    return removed


def create(
    settings: Settings,
    sh: Runtime,
    only: tuple[str, ...] = (),
    safety: bool = False,
    quiesce_services: tuple[str, ...] = (),
) -> Manifest:
    """Take a backup set of every configured source (or the kinds in only: a partial
    set). A safety backup (before a restore) leaves out sources that do not exist and
    keeps unsound ones as they are; such a set is marked partial. quiesce_services are
    paused for the capture (see quiesce)."""
    pairs = sources(settings, only)
    if not pairs:
        raise ConfigError(
            "nothing to back up: configure [tool.buildtasks.backup] sqlite/files/redis"
        )
    root = backup_dir(settings)
    with locked(root):
        try:
            return _create(settings, sh, root, pairs, bool(only), safety, quiesce_services)
        except OSError as exc:  # disk full, read-only directory: nothing was added
            raise BackupFailed(
                f"writing the backup set in {root} failed: {exc.strerror or exc}"
            ) from None


def _create(
    settings: Settings,
    sh: Runtime,
    root: Path,
    pairs: list[tuple[str, str]],
    partial: bool,
    safety: bool,
    quiesce_services: tuple[str, ...],
) -> Manifest:
    sweep(root)
    now = datetime.now(UTC)
    set_id = now.strftime(ID_FORMAT)
    building = root / f"{TMP_PREFIX}{set_id}-{os.getpid()}"
    building.mkdir()
    try:
        (building / MARKER).write_text(f"buildtasks {__version__}\n")
        collector = Collector(settings, sh, building)
        captures: list[Capture] = []
        # Closed last: the services are unpaused first, then what an error left is removed.
        with contextlib.ExitStack() as cleanup:
            cleanup.callback(collector.close)
            prepare = functools.partial(collector.prepare, pairs, quiesce_services)
            with quiesce.paused(collector, quiesce_services, prepare) as pause:
                for kind, source in pairs:  # pin every store while the services are paused
                    try:
                        capture = Capture(collector, kind, source, safety)
                    except SourceMissing as exc:
                        if not safety:
                            raise
                        print(f"safety backup: skipping {exc}", flush=True)
                        partial = True
                        continue
                    cleanup.callback(capture.close)
                    captures.append(capture)
                pause.end()
                artifacts = [capture.finish() for capture in captures]
        for unsound in [a for a in artifacts if a.integrity != "ok"]:
            print(f"safety backup: {unsound.kind} {unsound.source}: {unsound.integrity}")
            partial = True
        result = Manifest(
            id=set_id,
            created=now.isoformat(),
            tool=f"buildtasks {__version__}",
            artifacts=tuple(artifacts),
            partial=partial,
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
    """(valid sets newest first, names of set directories that are not valid sets).
    Directories not named like a set (a user's `keep-<id>` copy) are not the tool's:
    neither listed nor counted, verified or deleted."""
    root = backup_dir(settings)
    valid, invalid = [], []
    for path in sorted(root.iterdir() if root.is_dir() else (), reverse=True):
        if not is_set_id(path.name) or not path.is_dir() or path.is_symlink():
            continue
        try:
            found = manifest.load(path)
        except InvalidManifest:
            invalid.append(path.name)
            continue
        if found.id == path.name:
            valid.append(found)
        else:
            invalid.append(path.name)
    return valid, invalid


def find(settings: Settings, set_id: str = "") -> Manifest:
    """A valid set by id (or id prefix); the newest full set when set_id is empty (a
    partial set from `backup --only` is restored only when named)."""
    valid, _ = listing(settings)
    chosen = named([m.id for m in valid], set_id, {m.id for m in valid if not m.partial})
    if chosen is None:
        raise BuildtasksError(
            f"no valid backup set {set_id!r} in {backup_dir(settings)}; see inv backup.list"
            if set_id
            else f"no valid full backup set in {backup_dir(settings)}; take one with inv backup"
            " (partial sets are restored only with --id)"
        )
    return next(m for m in valid if m.id == chosen)


def named(ids: list[str], set_id: str, full: Container[str], where: str = "") -> str | None:
    """The id among ids (newest first) that set_id names: itself, or the one it is a
    prefix of; the newest full set's when set_id is empty; None when it names none. A
    prefix of several ids, none of them itself, is refused."""
    matches = [i for i in ids if i.startswith(set_id) and (set_id or i in full)]
    if set_id and len(matches) > 1 and matches[0] != set_id:
        raise BuildtasksError(f"backup id {set_id!r} is ambiguous{where}; give more of it")
    return matches[0] if matches else None


def verify(settings: Settings, sh: Shell, name: str) -> list[str]:
    """Every problem of a set (by id, or a copy's directory name such as `keep-ID`):
    manifest, file names, sizes, checksums, SQLite integrity, archive members, RDB check."""
    if not is_plain_name(name) or name.startswith("."):
        return [f"{name!r} is not a backup set in {backup_dir(settings)}"]
    return verify_directory(sh, backup_dir(settings) / name, name if is_set_id(name) else "")


def verify_directory(sh: Shell, directory: Path, expected_id: str = "") -> list[str]:
    """Every problem of the set in directory (a set of the backup directory, or one just
    downloaded); expected_id, when given, is the id its manifest must carry."""
    if (directory / manifest.NAME).is_symlink():
        return [f"{directory / manifest.NAME}: a symlink, not the set's manifest"]
    try:
        found = manifest.load(directory)
    except InvalidManifest as exc:
        return [str(exc)]
    if expected_id and found.id != expected_id:
        return [f"{directory}: the manifest is of set {found.id}"]
    problems = []
    checks = {"sqlite": sqlite.check, "files": archive.check, "redis": lambda p: redis.check(sh, p)}
    for artifact in found.artifacts:
        path = directory / artifact.file
        if artifact.kind not in checks:
            problems.append(f"{artifact.file[:80]!r}: unknown artifact kind {artifact.kind[:20]!r}")
        elif not is_plain_name(artifact.file) or artifact.file in (manifest.NAME, MARKER):
            problems.append(f"{artifact.file[:80]!r}: not a plain file name inside the set")
        elif path.is_symlink() or not path.is_file():
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
        is_plain_name(a.file)
        and (directory / a.file).is_file()
        and (directory / a.file).stat().st_size == a.size
        for a in found.artifacts
    )


def remove(settings: Settings, set_id: str) -> None:
    """Hide the set first (atomic), then delete it: a half-deleted set never looks valid;
    a `.del-` directory a kill left behind is swept by the next run."""
    root = backup_dir(settings)
    hidden = root / f"{DEL_PREFIX}{set_id}"
    (root / set_id / MARKER).touch()  # sets of older versions: the sweep knows it as ours
    os.rename(root / set_id, hidden)
    fsync_dir(root)
    shutil.rmtree(hidden)


def apply_retention(settings: Settings, dry: bool) -> list[str]:
    """Delete the intact sets the retention policy does not keep; returns their ids.
    Full sets and each kind of partial set (`backup --only redis`, ...) are counted
    apart: a partial set never displaces a full one. Sets that are not intact are
    neither counted nor deleted: they are left to inspect."""
    root = backup_dir(settings)
    with contextlib.nullcontext() if dry else locked(root):
        try:
            if not dry:
                sweep(root)
            valid, _ = listing(settings)
            groups: dict[tuple, list[str]] = {}
            for m in valid:
                if intact(settings, m):
                    key = tuple(sorted({a.kind for a in m.artifacts})) if m.partial else ()
                    groups.setdefault(key, []).append(m.id)
            delete = retention.expired(groups.values(), settings.backup)
            if not dry:
                for set_id in delete:
                    remove(settings, set_id)
        except OSError as exc:
            raise BackupFailed(f"retention in {root} failed: {exc.strerror or exc}") from None
    return sorted(delete, reverse=True)
