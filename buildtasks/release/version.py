"""Versions: PEP 440 bumps, release tags, and editing version files in place."""

from __future__ import annotations

import re
from pathlib import Path

from packaging.version import InvalidVersion, Version

from buildtasks import lazy
from buildtasks.errors import ConfigError

tomlkit = lazy.module("tomlkit")  # keeps comments, ordering and quoting of a rewritten file

PARTS = ("major", "minor", "patch", "pre")
_DUNDER = re.compile(r"""^(__version__\s*=\s*)(["'])([^"']*)\2""", re.MULTILINE)


def parse(text: str) -> Version:
    try:
        return Version(text)
    except InvalidVersion:
        raise ConfigError(f"{text!r} is not a PEP 440 version (e.g. 1.2.0 or 1.3.0rc1)") from None


def bump(current: str, part: str) -> str:
    """The next version. A pre-release finalizes on major/minor/patch (1.3.0rc1 -> 1.3.0);
    `pre` counts up a pre-release (rc1 -> rc2) or starts the next minor's rc1."""
    version = parse(current)
    major, minor, micro = (*version.release, 0, 0)[:3]
    if part not in PARTS:
        raise ConfigError(f"--bump {part!r}: use one of {', '.join(PARTS)}")
    if part == "pre":
        if version.pre:
            kind, number = version.pre
            return f"{major}.{minor}.{micro}{kind}{number + 1}"
        return f"{major}.{minor + 1}.0rc1"
    if version.is_prerelease:
        return f"{major}.{minor}.{micro}"
    return {
        "major": f"{major + 1}.0.0",
        "minor": f"{major}.{minor + 1}.0",
        "patch": f"{major}.{minor}.{micro + 1}",
    }[part]


def next_version(current: str, part: str = "", explicit: str = "") -> str:
    if bool(part) == bool(explicit):
        raise ConfigError("give exactly one of --bump PART or --version X")
    new = str(parse(explicit)) if explicit else bump(current, part)
    if parse(new) <= parse(current):
        raise ConfigError(f"version {new} is not newer than the current {current}")
    return new


def image_tags(version: str, latest: bool) -> list[str]:
    """X.Y.Z, X.Y, X (and latest when configured) for a stable release; a pre-release
    gets only its own tag, so it never moves the moving tags."""
    parsed = parse(version)
    if parsed.is_prerelease or parsed.is_devrelease:
        return [version]
    major, minor, _ = (*parsed.release, 0, 0)[:3]
    return [version, f"{major}.{minor}", str(major), *(["latest"] if latest else [])]


def read(path: Path) -> str:
    text = path.read_text()
    if path.name == "pyproject.toml":
        try:
            return str(tomlkit.parse(text)["project"]["version"])
        except (KeyError, tomlkit.exceptions.TOMLKitError):
            raise ConfigError(
                f"{path}: no static [project] version; set version_file to a file with "
                "__version__ = '...'"
            ) from None
    match = _DUNDER.search(text)
    if not match:
        raise ConfigError(f"{path}: no __version__ = '...' line")
    return match.group(3)


def rewrite(path: Path, text: str, new: str) -> str:
    """The file's text with the version replaced, formatting and comments kept."""
    if path.name == "pyproject.toml":
        document = tomlkit.parse(text)
        document["project"]["version"] = new
        return tomlkit.dumps(document)
    return _DUNDER.sub(lambda m: f"{m.group(1)}{m.group(2)}{new}{m.group(2)}", text, count=1)
