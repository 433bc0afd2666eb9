"""Reclaiming space without touching what is not the project's.

The project's images are those of its repository or carrying its `io.buildtasks.image`
label; an image any container uses is never removed; local cache exports lose only blobs
no index references, so they still import afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from buildtasks.docker.build import IMAGE_LABEL, TARGET_LABEL
from buildtasks.docker.compose import PROJECT_LABEL, stack_compose

_JSON_TYPES = ("manifest", "index", "json")


@dataclass(frozen=True)
class Item:
    """One thing prune removes: kind, name, bytes."""

    kind: str  # image-tag, dangling-image, container, cache-blob, build-cache
    name: str
    size: int
    ident: str = ""  # engine id or file path


@dataclass(frozen=True)
class ImageInfo:
    id: str
    tags: tuple[str, ...]
    labels: dict
    created: str
    size: int


def is_project_image(image: ImageInfo, repository: str) -> bool:
    return image.labels.get(IMAGE_LABEL) == repository or any(
        tag.rsplit(":", 1)[0] == repository for tag in image.tags
    )


def stale_tags(
    images: Iterable[ImageInfo], repository: str, keep: int, in_use: set[str]
) -> list[Item]:
    """Tags of the project's images beyond the `keep` newest per target; images in use
    by a container are kept whatever their age."""
    by_target: dict[str, list[ImageInfo]] = {}
    for image in images:
        if image.tags and is_project_image(image, repository):
            by_target.setdefault(image.labels.get(TARGET_LABEL, ""), []).append(image)
    items = []
    for group in by_target.values():
        for image in sorted(group, key=lambda i: i.created, reverse=True)[keep:]:
            if image.id in in_use:
                continue
            own = [t for t in image.tags if t.rsplit(":", 1)[0] == repository] or list(image.tags)
            items += [
                Item("image-tag", tag, image.size if tag == own[-1] else 0, image.id) for tag in own
            ]
    return items


def referenced_blobs(layout: Path) -> set[str]:
    """Digests reachable from index.json of an OCI layout (a `type=local` cache export)."""
    seen: set[str] = set()
    pending = [json.loads((layout / "index.json").read_text())]
    while pending:
        document = pending.pop()
        for digest, media_type in _descriptors(document):
            if digest in seen:
                continue
            seen.add(digest)
            blob = layout / "blobs" / Path(*digest.split(":", 1))
            if any(t in media_type for t in _JSON_TYPES) and blob.is_file():
                with contextlib.suppress(ValueError):  # a layer with a JSON-ish media type
                    pending.append(json.loads(blob.read_bytes()))
    return seen


def _descriptors(document) -> Iterable[tuple[str, str]]:
    """Every (digest, mediaType) descriptor anywhere in a JSON document."""
    if isinstance(document, dict):
        if isinstance(document.get("digest"), str):
            yield document["digest"], str(document.get("mediaType", ""))
        for value in document.values():
            yield from _descriptors(value)
    elif isinstance(document, list):
        for value in document:
            yield from _descriptors(value)


def orphan_blobs(layout: Path) -> list[Item]:
    if not (layout / "index.json").is_file():
        return []
    keep = referenced_blobs(layout)
    items = []
    for blob in sorted((layout / "blobs").rglob("*")):
        if blob.is_file():
            digest = f"{blob.parent.name}:{blob.name}"
            if digest not in keep:
                items.append(Item("cache-blob", digest, blob.stat().st_size, str(blob)))
    return items


def directory_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def parse_duration(text: str) -> timedelta:
    """'168h', '7d', '30m' -> timedelta."""
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
    if not text or text[-1] not in units or not text[:-1].isdigit():
        from buildtasks.errors import ConfigError

        raise ConfigError(f"duration {text!r}: write a number with s, m, h or d (e.g. 168h)")
    return timedelta(**{units[text[-1]]: int(text[:-1])})


class Engine:
    """What prune asks of the engine (through the docker SDK)."""

    def __init__(self, client):
        self.client = client

    def images(self) -> list[ImageInfo]:
        return [
            ImageInfo(
                i.id,
                tuple(i.tags),
                i.labels or {},
                i.attrs.get("Created", ""),
                i.attrs.get("Size", 0),
            )
            for i in self.client.images.list(all=True)
        ]

    def images_in_use(self) -> set[str]:
        return {c.attrs["Image"] for c in self.client.containers.list(all=True)}

    def dangling(self, repository: str, in_use: set[str]) -> list[Item]:
        images = self.client.images.list(
            filters={"dangling": True, "label": f"{IMAGE_LABEL}={repository}"}
        )
        return [
            Item("dangling-image", i.short_id, i.attrs.get("Size", 0), i.id)
            for i in images
            if i.id not in in_use
        ]

    def stopped_containers(self, project_prefix: str) -> list[Item]:
        found = self.client.containers.list(
            all=True, filters={"label": PROJECT_LABEL, "status": "exited"}
        )
        return [
            Item("container", c.name, 0, c.id)
            for c in found
            if c.labels.get(PROJECT_LABEL, "").startswith(project_prefix)
        ]

    def build_cache_records(self) -> list[dict]:
        return self.client.df().get("BuildCache") or []

    def usage(self) -> int:
        """Bytes the engine holds: image layers, containers, volumes, build cache."""
        df = self.client.df()
        containers = sum(c.get("SizeRw", 0) or 0 for c in df.get("Containers") or [])
        volumes = sum(
            (v.get("UsageData") or {}).get("Size", 0) or 0 for v in df.get("Volumes") or []
        )
        cache = sum(b.get("Size", 0) or 0 for b in df.get("BuildCache") or [])
        return (df.get("LayersSize") or 0) + containers + max(volumes, 0) + cache

    def remove(self, item: Item) -> None:
        import docker

        try:
            if item.kind == "image-tag":
                self.client.images.remove(item.name, noprune=False)
            elif item.kind == "dangling-image":
                self.client.images.remove(item.ident)
            elif item.kind == "container":
                self.client.containers.get(item.ident).remove()
        except docker.errors.NotFound:
            pass  # already gone


def old_build_cache(records: list[dict], until: timedelta) -> list[Item]:
    """Build cache records not in use and unused for longer than until."""
    cutoff = datetime.now(UTC) - until
    items = []
    for record in records:
        last = record.get("LastUsedAt") or record.get("CreatedAt") or ""
        if not record.get("InUse") and last and _parse_time(last) < cutoff:
            items.append(
                Item("build-cache", record["ID"][:12], record.get("Size", 0), record["ID"])
            )
    return items


def _parse_time(text: str) -> datetime:
    """RFC 3339 as the engine writes it (nanoseconds, Z or an offset)."""
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)?", text)
    if not match:
        return datetime.now(UTC)
    fraction = (match.group(2) or ".0")[:7]
    zone = "+00:00" if match.group(3) in (None, "Z") else match.group(3)
    return datetime.fromisoformat(f"{match.group(1)}{fraction}{zone}")


def remove_blob(item: Item) -> None:
    os.unlink(item.ident)


def plan(settings, engine: Engine) -> list[Item]:
    """Everything a project-scoped prune would remove."""
    config = settings.cache
    in_use = engine.images_in_use()
    items = old_build_cache(engine.build_cache_records(), parse_duration(config.until))
    items += engine.dangling(settings.image, in_use)
    items += stale_tags(engine.images(), settings.image, config.keep_images, in_use)
    items += engine.stopped_containers(stack_compose(settings).project)
    for directory in config.dirs:
        items += orphan_blobs(settings.root / directory)
    return items


def apply(sh, engine: Engine, settings, items: list[Item]) -> None:
    """Remove the planned items: containers first, then images, blobs, and build cache
    through `docker buildx prune` (BuildKit's own age and storage limits)."""
    order = {"container": 0, "image-tag": 1, "dangling-image": 2, "cache-blob": 3}
    for item in sorted(items, key=lambda i: order.get(i.kind, 9)):
        if item.kind == "cache-blob":
            remove_blob(item)
        elif item.kind != "build-cache":
            engine.remove(item)
    config = settings.cache
    sh.run(["docker", "buildx", "prune", "--force", "--filter", f"until={config.until}",
            "--keep-storage", config.keep_storage])  # fmt: skip


def usage_report(settings, engine: Engine) -> dict:
    """What `inv cache.usage` shows: sizes of everything prune looks at."""
    cache = engine.build_cache_records()
    images = [i for i in engine.images() if is_project_image(i, settings.image)]
    old_cache = old_build_cache(cache, parse_duration(settings.cache.until))
    return {
        "build_cache": {
            "total": sum(r.get("Size", 0) for r in cache),
            "reclaimable": sum(r.get("Size", 0) for r in cache if not r.get("InUse")),
            "older_than_until": sum(i.size for i in old_cache),
        },
        "images": [
            {"id": i.id[:19], "tags": list(i.tags), "size": i.size, "created": i.created}
            for i in images
        ],
        "dangling": [i.name for i in engine.dangling(settings.image, engine.images_in_use())],
        "stopped_containers": [
            i.name for i in engine.stopped_containers(stack_compose(settings).project)
        ],
        "cache_dirs": {d: directory_size(settings.root / d) for d in settings.cache.dirs},
    }


WHOLE_ENGINE = (
    ["docker", "system", "prune", "--all", "--force"],
    ["docker", "buildx", "prune", "--all", "--force"],
)


def run(sh, engine: Engine, settings, items: list[Item], whole_engine: bool) -> int:
    """Remove items (or prune the whole engine); the bytes reclaimed, measured as usage
    before minus usage after."""
    dirs = [settings.root / d for d in settings.cache.dirs]

    def usage() -> int:
        return engine.usage() + sum(directory_size(d) for d in dirs)

    before = usage()
    if whole_engine:
        for argv in WHOLE_ENGINE:
            sh.run(argv)
    else:
        apply(sh, engine, settings, items)
    return before - usage()
