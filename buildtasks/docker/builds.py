"""The record of the images this project built: what `inv prune` may consider its own.

A label cannot say "this project built me": an image built ``FROM`` the project's image
inherits every label. The image id can: it is the digest of the image's own config (classic
store) or manifest (containerd store), which any derived image changes. So each local build
appends its ids, read from buildx's metadata file, with the time the build finished, to a
state file outside the checkout (writing into the tree would make it dirty):
``$XDG_STATE_HOME/buildtasks/builds-<hash of the project root>.json``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import msgspec

from buildtasks import atomic, dirs
from buildtasks.docker.checks import ImageFacts


class BuildRecord(msgspec.Struct, frozen=True):
    ids: tuple[str, ...]  # the digests the engine may list the image under
    target: str
    revision: str  # the git commit it was built from ('' outside git)
    built_ns: int  # when the build finished: the order prune keeps images in
    # What the image checks read from the engine (user, healthcheck, sizes). An id is the
    # digest of the image's content, so a rebuild that yields the same id needs no inspect.
    facts: dict | None = None


def state_file(root: Path) -> Path:
    base = dirs.state_home()
    if base is None:
        raise OSError("no state directory: set XDG_STATE_HOME or HOME")
    return base / f"builds-{dirs.project_key(root.resolve())}.json"


def load(root: Path) -> list[BuildRecord]:
    """Every recorded build, oldest first; a missing or unreadable file records nothing."""
    try:
        entries = json.loads(state_file(root).read_text())
        return [
            BuildRecord(
                tuple(e["ids"]), e["target"], e["revision"], int(e["built_ns"]), e.get("facts")
            )
            for e in entries
        ]
    except (OSError, ValueError, TypeError, KeyError):
        return []


def ids_from_metadata(metadata: dict) -> tuple[str, ...]:
    """The image digests in one build's buildx metadata."""
    keys = ("containerimage.digest", "containerimage.config.digest")
    return tuple(dict.fromkeys(metadata[k] for k in keys if isinstance(metadata.get(k), str)))


def known_facts(root: Path, metadata: dict) -> ImageFacts | None:
    """The facts recorded for the image a build's metadata names, when it was built before."""
    ids = set(ids_from_metadata(metadata))
    for entry in reversed(load(root)):
        if ids & set(entry.ids) and isinstance(entry.facts, dict):
            if set(entry.facts) != set(ImageFacts.__struct_fields__):
                return None  # written by another version: inspect again
            try:
                return msgspec.convert(entry.facts, ImageFacts)
            except msgspec.ValidationError:
                return None  # damaged: inspect again
    return None


def record(
    root: Path, target: str, revision: str, metadata: dict, facts: ImageFacts | None = None
) -> bool:
    """Add one finished local build (a rebuild of the same image moves it to now). An
    unwritable state directory does not fail the build: prune then keeps the image."""
    ids = ids_from_metadata(metadata)
    if not ids:
        return False
    entry = BuildRecord(
        ids,
        target,
        revision,
        time.time_ns(),
        msgspec.structs.asdict(facts) if facts is not None else None,
    )
    try:
        with _locked(root):
            _write(root, [r for r in load(root) if not set(r.ids) & set(ids)] + [entry])
    except OSError:
        return False
    return True


def forget(root: Path, ids: Iterable[str]) -> None:
    """Drop the records of images that are gone."""
    gone = set(ids)
    # a record that cannot be dropped is harmless: prune skips images that are gone
    with contextlib.suppress(OSError):
        if gone:
            with _locked(root):
                _write(root, [r for r in load(root) if not set(r.ids) & gone])


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Two builds at once must not lose each other's record."""
    path = state_file(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _write(root: Path, records: list[BuildRecord]) -> None:
    body = json.dumps([msgspec.structs.asdict(r) for r in records])
    atomic.write_text(state_file(root), body, mode=0o600)
