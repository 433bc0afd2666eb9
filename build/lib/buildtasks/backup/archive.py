"""Job-file archives: tar with sorted members; links and special files refused both ways."""

from __future__ import annotations

import tarfile
from pathlib import Path, PurePosixPath

from buildtasks.errors import BuildtasksError

# Far below PATH_MAX (4096) once joined to the restore target: a member that cannot be
# created is refused by the check, never discovered halfway through an extraction.
MAX_NAME = 2048
MAX_COMPONENT = 255


class UnsafeArchive(BuildtasksError):
    """An archive or a source tree holds something that could escape or surprise."""


def create(source: Path, dest: Path, exclude: frozenset[str] = frozenset()) -> tuple[int, list]:
    """Archive the tree under source (member names relative to it), leaving out the
    relative names in exclude; returns (member count, names left out)."""
    found = sorted(source.rglob("*"))
    members = [p for p in found if p.relative_to(source).as_posix() not in exclude]
    left_out = [p.relative_to(source).as_posix() for p in found if p not in members]
    for path in members:
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise UnsafeArchive(
                f"{path}: symlinks and special files are not backed up; remove or replace it"
            )
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in members:
            tar.add(path, arcname=path.relative_to(source).as_posix(), recursive=False)
    return len(members), left_out


def rewrite_sorted(
    stream_tar: Path, dest: Path, strip: str, exclude: frozenset[str] = frozenset()
) -> int:
    """Re-archive a tar (as the engine hands out a container directory) with sorted
    members relative to its top directory `strip`, refusing links and special files and
    leaving out the relative names in exclude; returns (member count, names left out)."""
    with tarfile.open(stream_tar) as source:
        members = sorted(source.getmembers(), key=lambda m: m.name)
        check_members(members, allow_top=strip)
        count, left_out = 0, []
        with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as out:
            for member in members:
                name = PurePosixPath(member.name)
                if str(name) == strip:
                    continue
                member.name = str(name.relative_to(strip))
                if member.name in exclude:
                    left_out.append(member.name)
                    continue
                out.addfile(member, source.extractfile(member) if member.isfile() else None)
                count += 1
        return count, left_out


def check_members(members: list[tarfile.TarInfo], allow_top: str = "") -> None:
    """Refuse members that would escape the target, are not plain files/directories, could
    not be created (too long, under a file, twice) or lie outside allow_top."""
    kinds: dict[PurePosixPath, bool] = {}  # name -> is a directory
    implied: set[PurePosixPath] = set()  # directories that members lie under
    for member in members:
        name = PurePosixPath(member.name)
        # Only canonical relative names: no "", "." or ".." component (absolute, `a//b`,
        # `a/.` would each land somewhere else than the name says)
        if {"", ".", ".."} & set(member.name.split("/")) or "\0" in member.name:
            raise UnsafeArchive(f"archive member {member.name[:80]!r} would escape the target")
        if not (member.isfile() or member.isdir()):
            raise UnsafeArchive(
                f"archive member {member.name[:80]!r} is a link or special file; refused"
            )
        if len(member.name.encode()) > MAX_NAME or any(
            len(part.encode()) > MAX_COMPONENT for part in name.parts
        ):
            raise UnsafeArchive(f"archive member {member.name[:80]!r}... has too long a path")
        if allow_top and name.parts[0] != allow_top:
            raise UnsafeArchive(f"archive member {member.name[:80]!r} is outside {allow_top}/")
        if name in kinds:
            raise UnsafeArchive(f"archive member {member.name[:80]!r} appears twice")
        if member.isfile() and name in implied:
            raise UnsafeArchive(f"archive member {member.name[:80]!r} is a file and a directory")
        for parent in name.parents:
            if kinds.get(parent) is False:
                raise UnsafeArchive(
                    f"archive member {member.name[:80]!r} lies under the file {str(parent)!r}"
                )
            implied.add(parent)
        kinds[name] = member.isdir()


def check(path: Path) -> str:
    """ "ok" when the archive reads through and every member is safe."""
    try:
        with tarfile.open(path) as tar:
            members = tar.getmembers()
            check_members(members)
            for member in members:
                if member.isfile():
                    with tar.extractfile(member) as data:
                        while data.read(1 << 20):
                            pass
        return "ok"
    except (tarfile.TarError, OSError, EOFError, ValueError, UnicodeError) as exc:
        return f"unreadable archive: {exc}"
    except UnsafeArchive as exc:
        return str(exc)


def extract(path: Path, target: Path) -> None:
    """Extract into target (which must not exist) after checking every member first; any
    failure is an UnsafeArchive (the caller removes the partial target)."""
    try:
        with tarfile.open(path) as tar:
            members = tar.getmembers()
            check_members(members)
            target.mkdir(parents=True)
            tar.extractall(target, members=members, filter="data")
    except (tarfile.TarError, OSError, EOFError, ValueError, UnicodeError) as exc:
        raise UnsafeArchive(f"{path.name}: cannot extract ({exc})") from None
