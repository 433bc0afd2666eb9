"""Keep a Changelog: the Unreleased section becomes a release with a fresh empty one."""

from __future__ import annotations

import re

from buildtasks.errors import ConfigError

_UNRELEASED = re.compile(r"^## \[?Unreleased\]?[^\n]*\n", re.MULTILINE | re.IGNORECASE)
_NEXT_SECTION = re.compile(r"^## ", re.MULTILINE)


def unreleased(text: str) -> tuple[int, int]:
    """(start of the Unreleased heading, end of its body)."""
    heading = _UNRELEASED.search(text)
    if not heading:
        raise ConfigError("the changelog has no `## [Unreleased]` section")
    following = _NEXT_SECTION.search(text, heading.end())
    return heading.start(), following.start() if following else len(text)


def unreleased_notes(text: str) -> str:
    start, end = unreleased(text)
    return _UNRELEASED.sub("", text[start:end], count=1).strip()


def release(text: str, version: str, date: str) -> str:
    """Move the Unreleased notes under `## [version] - date`."""
    start, end = unreleased(text)
    notes = unreleased_notes(text)
    section = f"## [Unreleased]\n\n## [{version}] - {date}\n\n" + (f"{notes}\n\n" if notes else "")
    return text[:start] + section + text[end:].lstrip("\n")
