"""Job-file archives: tar with sorted members; links and special files refused both ways."""

from __future__ import annotations

import tarfile
from pathlib import Path, PurePosixPath

from buildtasks.errors import BuildtasksError


class UnsafeArchive(BuildtasksError):
    """An archive or a source tree holds something that could escape or surprise."""


def create(source: Path, dest: Path) -> int:
    """Archive the tree under source (member names relative to it); returns member count."""
    members = sorted(source.rglob("*"))
    for path in members:
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise UnsafeArchive(
                f"{path}: symlinks and special files are not backed up; remove or replace it"
            )
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in members:
            tar.add(path, arcname=path.relative_to(source).as_posix(), recursive=False)
    return len(members)


def rewrite_sorted(stream_tar: Path, dest: Path, strip: str) -> int:
    """Re-archive a tar (as the engine hands out a container directory) with sorted
    members relative to its top directory `strip`, refusing links and special files."""
    with tarfile.open(stream_tar) as source:
        members = sorted(source.getmembers(), key=lambda m: m.name)
        check_members(members, allow_top=strip)
        with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as out:
            for member in members:
                name = PurePosixPath(member.name)
                if str(name) == strip:
                    continue
                member.name = str(name.relative_to(strip))
                out.addfile(member, source.extractfile(member) if member.isfile() else None)
        return len(members) - 1


def check_members(members: list[tarfile.TarInfo], allow_top: str = "") -> None:
    """Refuse members that would escape the target or are not plain files/directories."""
    for member in members:
        name = PurePosixPath(member.name)
        if name.is_absolute() or ".." in name.parts:
            raise UnsafeArchive(f"archive member {member.name!r} would escape the target")
        if not (member.isfile() or member.isdir()):
            raise UnsafeArchive(
                f"archive member {member.name!r} is a link or special file; refused"
            )
        if allow_top and name.parts[0] != allow_top:
            raise UnsafeArchive(f"archive member {member.name!r} is outside {allow_top}/")


def check(path: Path) -> str:
    """ "ok" when the archive reads through and every member is safe."""
    try:
        with tarfile.open(path) as tar:
            members = tar.getmembers()
            check_members(members)
            for member in members:
                if member.isfile():
                    tar.extractfile(member).read()
        return "ok"
    except (tarfile.TarError, OSError, EOFError) as exc:
        return f"unreadable archive: {exc}"
    except UnsafeArchive as exc:
        return str(exc)


def extract(path: Path, target: Path) -> None:
    """Extract into target (which must not exist) after checking every member first."""
    with tarfile.open(path) as tar:
        members = tar.getmembers()
        check_members(members)
        target.mkdir(parents=True)
        tar.extractall(target, members=members, filter="data")
