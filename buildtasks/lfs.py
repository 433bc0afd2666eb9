"""Git LFS before a build: pull the content, and never send a pointer file to BuildKit.

A checkout made without git-lfs (or with GIT_LFS_SKIP_SMUDGE=1) holds, in place of each
LFS-tracked file, a small text pointer. An image built from it starts, and then fails at
the first read of a model or asset; so a build of such a project pulls first and refuses
to start while a file in its context is still a pointer.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from buildtasks import git
from buildtasks.errors import BuildtasksError
from buildtasks.shell import Shell

POINTER_PREFIX = b"version https://git-lfs.github.com/spec/"
POINTER_MAX_BYTES = 1024  # pointers are ~130 bytes; content never starts like one


class PointerFile(BuildtasksError):
    """A file the build would send is a Git LFS pointer, not its content."""


def uses_lfs(root: Path) -> bool:
    """Whether the project's .gitattributes route any file through the LFS filter."""
    try:
        return "filter=lfs" in (root / ".gitattributes").read_text(errors="replace")
    except OSError:
        return False


def _up_to_checkout(root: Path) -> list[Path]:
    """root and the directories above it up to the top of its checkout (the first that
    holds .git, a directory or a worktree's file)."""
    found = []
    for directory in (root, *root.parents):
        found.append(directory)
        if (directory / ".git").exists():
            break
    return found


def _lfs_attributes(sh: Shell, root: Path) -> Path | None:
    """The first .gitattributes that routes files through LFS: in root or above it up to
    the checkout's top, else any git tracks below root (a directory of assets may carry
    its own); None when there is none."""
    above = next((d / ".gitattributes" for d in _up_to_checkout(root) if uses_lfs(d)), None)
    if above is not None:
        return above
    argv = ["git", "-C", str(root), "ls-files", "-z", "--", ":(glob)**/.gitattributes"]
    listed = sh.run(argv, query=True, check=False)  # unstripped: a name may start with a space
    names = listed.stdout.split("\0") if listed.returncode == 0 else []
    below = (root / name for name in names if name)
    return next((path for path in below if uses_lfs(path.parent)), None)


def is_pointer(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            head = handle.read(POINTER_MAX_BYTES + 1)
    except OSError:
        return False
    return len(head) <= POINTER_MAX_BYTES and head.startswith(POINTER_PREFIX)


def require_content(sh: Shell, root: Path, contexts: Iterable[Path]) -> None:
    """`git lfs pull`, then fail with one line naming the first LFS-tracked file inside the
    build contexts that is still a pointer. Nothing to do for a project without LFS, which
    a .gitattributes in the project, or above it up to the repository's top, says."""
    root = Path(root).resolve()
    attributes = _lfs_attributes(sh, root)
    top = git.toplevel(sh, root) if attributes else None  # git only where LFS is in use
    if top is None:
        return
    if shutil.which("git-lfs") is None:
        raise BuildtasksError(
            f"{attributes} routes files through Git LFS but git-lfs is not "
            "installed; install it (apt-get install git-lfs), then build again"
        )
    pulled = sh.run(["git", "-C", str(root), "lfs", "pull"], check=False, capture=True)
    if sh.dry:
        return
    # paths relative to the repository's top, which may lie above the project
    listed = sh.output(["git", "-C", str(root), "lfs", "ls-files", "--name-only"], check=False)
    dirs = [Path(c).resolve() for c in contexts]
    for name in listed.splitlines():
        path = (top / name).resolve()
        if any(path.is_relative_to(d) for d in dirs) and is_pointer(path):
            why = (
                f"`git lfs pull` failed: {(pulled.stderr or '').strip().splitlines()[-1]}"
                if pulled.returncode and (pulled.stderr or "").strip()
                else "its object is not on the LFS remote"
            )
            raise PointerFile(
                f"{os.path.relpath(path, root)} is a Git LFS pointer, not the file ({why}); fetch "
                "it with `git lfs pull` (check the LFS remote and credentials), then build again"
            )
