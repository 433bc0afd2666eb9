"""Image checks after a build: pure functions over what the engine reports."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import msgspec

from buildtasks.config import parse_size


class ImageFacts(msgspec.Struct, frozen=True):
    """What the checks need from an image's inspect data."""

    ref: str
    user: str = ""
    healthcheck: tuple[str, ...] = ()
    size: int = 0  # inspect's Size: the compressed blobs under the containerd image store
    uncompressed_size: int = 0  # the layers unpacked: what the image takes once pulled


def human_size(size: int) -> str:
    for unit, factor in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size} B"


def runs_as_root(user: str) -> bool:
    name = user.split(":", 1)[0]
    return name in ("", "root", "0")


def has_dockerignore(context: Path, dockerfile: Path) -> bool:
    """BuildKit reads <Dockerfile>.dockerignore beside the Dockerfile, else the context's."""
    return (context / ".dockerignore").is_file() or dockerfile.with_name(
        dockerfile.name + ".dockerignore"
    ).is_file()


def violations(
    facts: ImageFacts, checks: Iterable[str], size_budget: str, dockerignore: bool
) -> list[str]:
    """One sentence per failed check, in the order the checks are configured."""
    found = []
    for check in checks:
        if check == "non-root" and runs_as_root(facts.user):
            found.append(
                f"non-root: runs as {facts.user or 'root (no USER)'}; "
                "add `USER 1000` or another non-root user"
            )
        elif check == "healthcheck" and (not facts.healthcheck or facts.healthcheck[0] == "NONE"):
            found.append("healthcheck: the image has no HEALTHCHECK; add one")
        elif check == "size" and size_budget and facts.uncompressed_size > parse_size(size_budget):
            found.append(
                f"size: {human_size(facts.uncompressed_size)} uncompressed is over the budget "
                f"of {size_budget}; slim the image or raise size_budget"
            )
        elif check == "dockerignore" and not dockerignore:
            found.append("dockerignore: the build context has no .dockerignore; add one")
    return found
