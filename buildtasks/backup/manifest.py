"""The manifest of a backup set: written last, self-checksummed, the set's proof of life."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from buildtasks.errors import BuildtasksError

SCHEMA = 1
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
        artifacts = tuple(Artifact(**a) for a in data.pop("artifacts"))
        return Manifest(artifacts=artifacts, **data)
    except InvalidManifest:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidManifest(f"{where}: unreadable manifest ({exc})") from None


def load(directory: Path) -> Manifest:
    path = directory / NAME
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidManifest(f"{path}: cannot read ({exc})") from None
    return loads(text, str(path))
