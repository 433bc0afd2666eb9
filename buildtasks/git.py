"""What the build needs to know about the git checkout."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import msgspec

from buildtasks.shell import Shell


class GitState(msgspec.Struct, frozen=True):
    sha: str = ""
    branch: str = ""
    dirty: bool = False
    commit_time: str = ""  # ISO 8601 UTC of HEAD; a reproducible `created` label
    remote_url: str = ""

    @property
    def short_sha(self) -> str:
        return self.sha[:7]


_states: dict[Path, GitState] = {}


def state(sh: Shell, root: Path) -> GitState:
    """The checkout's HEAD, branch and dirtiness; an empty state outside a git repository.
    Read once per process and root (a task asks several times: tags, labels, the dirty
    check); whatever moves HEAD or edits the tree calls `forget` afterwards."""
    root = Path(root).resolve()
    if root not in _states:
        _states[root] = _read_state(sh, root)
    return _states[root]


def forget() -> None:
    """Drop the states read so far: HEAD or the tree changed (a release commit)."""
    _states.clear()


def query(sh: Shell, root: Path, *args: str) -> str:
    """stdout of a read-only git command run in root, stripped; '' when it fails."""
    result = sh.run(["git", "-C", str(root), *args], query=True, check=False)
    return result.stdout.strip() if result.returncode == 0 else ""


def succeeds(sh: Shell, root: Path, *args: str) -> bool:
    """Whether a read-only git command run in root exits 0 (`cat-file -e` says no more)."""
    return sh.run(["git", "-C", str(root), *args], query=True, check=False).returncode == 0


def toplevel(sh: Shell, root: Path) -> Path | None:
    """The top of the work tree root lies in (a project may be a subdirectory of its
    repository); None outside a git repository."""
    top = query(sh, root, "rev-parse", "--show-toplevel")
    return Path(top) if top else None


def _read_state(sh: Shell, root: Path) -> GitState:
    # Three reads side by side: the status says HEAD, the branch and whether the tree is
    # dirty; the others say HEAD's time and the remote (both fail harmlessly without HEAD).
    git = ["git", "-C", str(root)]
    status, epoch, remote = (
        result.stdout.strip() if result.returncode == 0 else ""
        for result in sh.queries(
            [*git, "status", "--porcelain=v2", "--branch", "--untracked-files=normal"],
            [*git, "show", "-s", "--format=%ct", "HEAD"],
            [*git, "remote", "get-url", "origin"],
        )
    )
    headers = dict(line[2:].split(" ", 1) for line in status.splitlines() if line.startswith("# "))
    sha = headers.get("branch.oid", "")
    if not sha or sha == "(initial)":
        return GitState()
    branch = headers.get("branch.head", "")
    return GitState(
        sha=sha,
        branch="HEAD" if branch == "(detached)" else branch,  # as `rev-parse --abbrev-ref`
        dirty=any(not line.startswith("# ") for line in status.splitlines()),
        commit_time=_utc(epoch),
        remote_url=without_credentials(remote),
    )


def _utc(epoch: str) -> str:
    """A commit time as ISO 8601 UTC; "" (the build's own time is used) when git gave none
    or one beyond what a timestamp holds (a commit may say year 11476)."""
    try:
        return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (ValueError, OverflowError, OSError):
        return ""


def without_credentials(url: str) -> str:
    """A URL without user:password@ (CI remotes carry tokens there)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    return f"{scheme}://{rest.split('@', 1)[1]}"
