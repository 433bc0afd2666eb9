"""The manifest of a backup set: written last, self-checksummed, the set's proof of life."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from buildtasks.errors import BuildtasksError

SCHEMA = 1
ID_FORMAT = "%Y%m%dT%H%M%S.%fZ"  # a set's id: its creation time in UTC
ID_PATTERN = r"\d{8}T\d{6}\.\d{6}Z"
NAME = "manifest.json"


class InvalidManifest(BuildtasksError):
    """The manifest is missing, unreadable or does not match its checksum."""


@dataclass(frozen=True)
class Artifact:
    kind: str  # sqlite | files | redis
    source: str  # as configured: path, service:/path, service name or URL
    file: str  # name inside the set directory
    size: int
    sha256: str
    integrity: str  # "ok" or what the check said
    details: dict = field(default_factory=dict)  # e.g. redis save counter, data dir


@dataclass(frozen=True)
class Manifest:
    id: str
    created: str
    tool: str
    artifacts: tuple[Artifact, ...]
    schema: int = SCHEMA
    partial: bool = False  # taken with `backup --only`: never counted as a full set
    quiesce: dict = field(default_factory=dict)  # services paused for the capture, seconds

    def body(self) -> dict:
        body = asdict(self)
        body["artifacts"] = [asdict(a) for a in self.artifacts]
        return body


def _canonical(body: dict) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def dumps(manifest: Manifest) -> str:
    body = manifest.body()
    return json.dumps({**body, "checksum": hashlib.sha256(_canonical(body)).hexdigest()}, indent=2)


def loads(text: str, where: str = NAME) -> Manifest:
    """Parse and check a manifest; any flipped byte makes it invalid."""
    try:
        data = json.loads(text)
        checksum = data.pop("checksum")
        if hashlib.sha256(_canonical(data)).hexdigest() != checksum:
            raise InvalidManifest(f"{where}: checksum mismatch, the manifest was altered")
        if data["schema"] != SCHEMA:
            raise InvalidManifest(
                f"{where}: schema {data['schema']}, this buildtasks reads {SCHEMA}"
            )
        artifacts = tuple(_typed(Artifact, a) for a in data.pop("artifacts"))
        return _typed(Manifest, {**data, "artifacts": artifacts})
    except InvalidManifest:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        # The reason may quote a hostile key: kept to one printable line.
        reason = "".join(c if c.isprintable() else "?" for c in str(exc))[:200]
        raise InvalidManifest(f"{where}: unreadable manifest ({reason})") from None


def _typed(cls, values: dict):
    """cls(**values) with every field of the type its annotation names (read back, the
    values are input: a number where a name belongs must not reach a path join)."""
    kinds = {"str": str, "int": int, "bool": bool, "dict": dict}
    made = cls(**values)
    for name, annotation in cls.__annotations__.items():
        expected = kinds.get(str(annotation).split("[")[0])
        value = getattr(made, name)
        if expected and (type(value) is not expected):
            raise TypeError(f"{name} is {type(value).__name__}, not {expected.__name__}")
    return made


def load(directory: Path) -> Manifest:
    path = directory / NAME
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidManifest(f"{path}: cannot read ({exc})") from None
    return loads(text, str(path))
