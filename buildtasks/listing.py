"""What the task list needs of a project's configuration, remembered between runs.

`inv --list` and `inv --help` need the targets' names and what their help says, and
whether the project has a database and protos. Validating the configuration to learn them
costs more than invoke itself (the schema library, the .env parser, TOML). So a
configuration that loaded cleanly leaves that shape in a cache file outside the checkout,
and the next listing uses it while these are unchanged:

- pyproject.toml, byte for byte;
- the files the load read (the .env files and the version file), by their stat, change
  time included;
- the environment, as a whole (a salted digest: the file holds no value of it);
- buildtasks itself (its version, and the stat of the modules that decide the shape).

Anything else loads and checks the configuration again, with its one-line error. Checks
that read other files (a path that must stay inside its root) run when a task runs, as
every task loads the configuration. The cache holds no value from the environment or the
.env files; damaged or foreign content is ignored, and a cache that cannot be written only
costs the next listing its speed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from buildtasks import lazy
from buildtasks.version import __version__

if TYPE_CHECKING:
    from buildtasks.config import Settings

config = lazy.module("buildtasks.config")

FORMAT = 1
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")  # a target name, as the schema allows
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
    try:
        data = (root / "pyproject.toml").read_bytes()
    except OSError:
        return of(config.load(root))  # says what is wrong, in one line
    path = cache_file(root)
    remembered = _remembered(path, root, data)
    if remembered is not None:
        return remembered
    settings = config.load(root)
    found = of(settings)
    reads = [root / name for name in settings.env_files] + [root / settings.release.version_file]
    _remember(path, data, reads, found)
    return found


def cache_file(root: Path) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    key = hashlib.sha256(str(root).encode()).hexdigest()[:16]
    return base / "buildtasks" / f"listing-{key}.json"


def _stamp(path: Path) -> list[int] | None:
    try:
        stat = path.stat()
    except (OSError, ValueError):
        return None
    return [stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size, stat.st_ino]


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
        "version": __version__,
        "code": [_stamp(path) for path in _CODE],
        "pyproject": _digest(salt, data),
        "environment": _digest(salt, _environment()),
        "reads": [[str(path), _stamp(path)] for path in reads],
    }


def _remembered(path: Path, root: Path, data: bytes) -> Shape | None:
    """The shape the cache holds for these inputs; None when there is none, it is for other
    inputs, or it is not what this module writes."""
    try:
        entry = json.loads(path.read_bytes())
        salt = bytes.fromhex(entry["salt"])
        reads = [Path(p) for p, _ in entry["inputs"]["reads"]]
        if entry["inputs"] != _inputs(salt, data, reads):
            return None
        targets = tuple(
            TargetShape(name, dockerfile, tuple(depends_on))
            for name, dockerfile, depends_on in entry["targets"]
        )
        db, proto = entry["db"], entry["proto"]
    except (OSError, ValueError, TypeError, KeyError, RecursionError):
        return None
    names = [t.name for t in targets] + [d for t in targets for d in t.depends_on]
    if not all(isinstance(n, str) and _NAME.fullmatch(n) for n in names) or not all(
        isinstance(t.dockerfile, str) for t in targets
    ):
        return None
    if not (isinstance(db, bool) and isinstance(proto, bool)):
        return None
    return Shape(root, targets, db, proto)


def _remember(path: Path, data: bytes, reads: list[Path], found: Shape) -> None:
    """Write the cache entry atomically, readable by this user only; a failure is
    ignored (the next listing loads the configuration again)."""
    salt = os.urandom(16)
    entry = {
        "salt": salt.hex(),
        "inputs": _inputs(salt, data, reads),
        "targets": [[t.name, t.dockerfile, list(t.depends_on)] for t in found.targets],
        "db": found.db,
        "proto": found.proto,
    }
    with contextlib.suppress(OSError):
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".listing-")
        try:
            with os.fdopen(fd, "w") as stream:
                json.dump(entry, stream)
            os.replace(temporary, path)
        except OSError:
            Path(temporary).unlink(missing_ok=True)
            raise
