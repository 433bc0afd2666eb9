"""What the task list needs of a project's configuration, remembered between runs.

`inv --list` and `inv --help` need the targets' names and what their help says, and
whether the project has a database and protos. Validating the configuration to learn them
costs more than invoke itself (the schema library, the .env parser, TOML). So a
configuration that loaded cleanly leaves that shape in a cache file outside the checkout,
and the next listing uses it while these are unchanged:

- pyproject.toml, byte for byte;
- the files the load read (the .env files and the version file), by their stat, change
  time included, taken before the shape is read from them;
- the environment, as a whole (a salted digest);
- buildtasks itself (its version, and the stat of the modules that decide the shape).

Anything else loads and checks the configuration again, with its one-line error. Checks
that read other files (a path that must stay inside its root) run when a task runs, as
every task loads the configuration. The cache holds what the task list shows (target
names, their Dockerfiles, what they build FROM) and no other value of the environment or
the .env files; content this module does not write is ignored, and a cache that cannot be
read or written only costs the listing its speed. Like Python's bytecode cache, it is
written whatever the invocation (`--dry` included): it changes nothing the project sees.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from buildtasks import atomic, dirs, lazy
from buildtasks.version import __version__

if TYPE_CHECKING:
    from buildtasks.config import Settings

config = lazy.module("buildtasks.config")

FORMAT = 2
MAX_ENTRY = 1 << 20  # an entry is a few hundred bytes; anything larger is not ours
_NAME = r"[a-z0-9][a-z0-9_-]*"  # a target name, as the schema allows
# The modules whose change can change a shape: the schema and this one.
_CODE = (Path(__file__).with_name("config.py"), Path(__file__))


# NamedTuples: a dataclass costs the listing about 0.5 ms each to generate
class TargetShape(NamedTuple):
    name: str
    dockerfile: str
    depends_on: tuple[str, ...]


class Shape(NamedTuple):
    """What the task list is built from."""

    root: Path
    targets: tuple[TargetShape, ...]
    db: bool
    proto: bool


def of(settings: Settings) -> Shape:
    """The shape of loaded settings."""
    targets = tuple(
        TargetShape(t.name, t.dockerfile, tuple(t.depends_on)) for t in settings.targets.values()
    )
    return Shape(Path(settings.root), targets, settings.db is not None, settings.proto is not None)


def shape(root: str | os.PathLike[str] = ".") -> Shape:
    """The shape of the project in root: remembered when nothing it depends on changed,
    else from the configuration, loaded and checked (ConfigError when it is broken)."""
    root = Path(root).resolve()
    path = cache_file(root)
    try:
        data = (root / "pyproject.toml").read_bytes()
    except OSError:
        path = None
    if path is None:
        return of(config.load(root))  # says what is wrong, in one line
    remembered = _remembered(path, root, data)
    if remembered is not None:
        return remembered
    settings = config.load(root)  # what the tasks use; it names the files it reads
    reads = [root / name for name in settings.env_files] + [root / settings.release.version_file]
    inputs = _inputs(os.urandom(16), data, reads)  # stamped before the shape is read...
    found = of(config.load_bytes(root, data))  # ...from exactly the bytes digested
    _remember(path, inputs, found)
    return found


def cache_file(root: Path) -> Path | None:
    base = dirs.cache_home()
    return base / f"listing-{dirs.project_key(root)}.json" if base else None


def _stamp(path: Path) -> list[int] | None:
    found = atomic.stamp(path)
    return list(found) if found else None  # as it reads back from JSON


def _digest(salt: bytes, data: bytes) -> str:
    return hashlib.blake2b(data, key=salt, digest_size=32).hexdigest()


def _environment() -> bytes:
    return "\0".join(f"{k}={v}" for k, v in sorted(os.environ.items())).encode(
        "utf-8", "surrogateescape"
    )


def _inputs(salt: bytes, data: bytes, reads: list[Path]) -> dict:
    """What a remembered shape is valid for."""
    return {
        "format": FORMAT,
        "salt": salt.hex(),
        "version": __version__,
        "code": [_stamp(path) for path in _CODE],
        "pyproject": _digest(salt, data),
        "environment": _digest(salt, _environment()),
        "reads": [[str(path), _stamp(path)] for path in reads],
    }


def _read(path: Path) -> bytes:
    """The cache file's bytes: a regular file of at most MAX_ENTRY, never a FIFO, a device
    or a symlink (OSError otherwise)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as stream:
        stats = os.fstat(fd)
        if not stat.S_ISREG(stats.st_mode) or stats.st_size > MAX_ENTRY:
            raise OSError(f"{path} is not a cache entry")
        return stream.read(MAX_ENTRY)


def _remembered(path: Path, root: Path, data: bytes) -> Shape | None:
    """The shape the cache holds for these inputs; None when there is none, it is for other
    inputs, or it is not what this module writes."""
    try:
        entry = json.loads(_read(path))
        inputs = entry["inputs"]
        reads = [Path(p) for p, _ in inputs["reads"]]
        if inputs != _inputs(bytes.fromhex(inputs["salt"]), data, reads):
            return None
        return _checked(root, entry["targets"], entry["db"], entry["proto"])
    except (OSError, ValueError, TypeError, KeyError, RecursionError):
        return None


def _checked(root: Path, targets: object, db: object, proto: object) -> Shape | None:
    """The shape an entry holds, if it is one this module could have written."""
    if not (isinstance(targets, list) and isinstance(db, bool) and isinstance(proto, bool)):
        return None
    found = []
    for target in targets:
        name, dockerfile, depends_on = target
        if not (isinstance(dockerfile, str) and dockerfile.isprintable()):
            return None
        if not (isinstance(depends_on, list) and all(isinstance(d, str) for d in depends_on)):
            return None
        found.append(TargetShape(name, dockerfile, tuple(depends_on)))
    names = [t.name for t in found]
    if not all(isinstance(n, str) and re.fullmatch(_NAME, n) for n in names):
        return None
    if len(set(names)) != len(names) or not {d for t in found for d in t.depends_on} <= set(names):
        return None
    return Shape(root, tuple(found), db, proto)


def _remember(path: Path, inputs: dict, found: Shape) -> None:
    """Write the cache entry atomically, readable by this user only; a failure is
    ignored (the next listing loads the configuration again)."""
    entry = {
        "inputs": inputs,
        "targets": [[t.name, t.dockerfile, list(t.depends_on)] for t in found.targets],
        "db": found.db,
        "proto": found.proto,
    }
    with contextlib.suppress(OSError):
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic.write_text(path, json.dumps(entry), mode=0o600)
