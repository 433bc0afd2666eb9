"""Reclaiming space without touching what is not provably the project's and stale.

The project's images are the ones its builds recorded (docker/builds.py): a label would not
do, since an image built ``FROM`` the project's image inherits every label. Of those, an
image is kept when a container (running or stopped) uses it, another image is built from
it, it was built from HEAD or from a commit a git tag points at, it carries a floating tag
of a target or a tag outside the project's repository, or it is one of the ``keep_images``
newest tagged builds of its target (by the time the build finished, not the ``created``
label, which is the commit time). Everything is sorted, so the same engine and checkout
give the same plan; the run removes exactly that plan.

The estimate counts the layers only the removed images hold (layers are shared by chain
id, as the engine stores them). The measured figure is scoped to the project too: the
planned images' layers that no image on the engine holds after the run, plus the removed
containers' writable layers and the deleted cache blobs; what other users of the engine
remove meanwhile is not counted. Local cache exports lose only blobs no index references,
so they still import; a layout without a well-formed index is left alone, and blobs
younger than a few minutes are kept, since an export writes its blobs before its index.
BuildKit's build cache belongs to the whole engine: it is pruned only on request.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from stat import S_ISREG

from buildtasks import git, lazy
from buildtasks.docker import builds
from buildtasks.docker.build import render_tags, template_values
from buildtasks.docker.compose import PROJECT_LABEL, stack_compose
from buildtasks.docker.registry import repository_of
from buildtasks.errors import BuildtasksError
from buildtasks.shell import Shell

docker = lazy.module("docker")

_JSON_TYPES = ("manifest", "index", "json")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_SETTLE_SECONDS = 300  # a blob this young may belong to an export still writing its index
_ORDER = {"container": 0, "image-tag": 1, "image": 1, "cache-blob": 2}


@dataclass(frozen=True)
class Item:
    """One thing prune removes: kind, name, the bytes its removal is expected to free."""

    kind: str  # container, image-tag, image (an untagged one), cache-blob
    name: str
    size: int
    ident: str = ""  # engine id or file path


@dataclass(frozen=True)
class ImageInfo:
    id: str
    tags: tuple[str, ...]
    layers: tuple[str, ...]  # diff ids, bottom first


@dataclass(frozen=True)
class Kept:
    image: str  # first tag, or the id
    target: str
    reason: str


@dataclass(frozen=True)
class Guards:
    """What protects an image whatever its age."""

    repository: str
    head: str = ""
    release_commits: Mapping[str, str] = field(default_factory=dict)  # commit -> git tag
    floating: frozenset[str] = frozenset()  # full references
    in_use: Mapping[str, str] = field(default_factory=dict)  # image id -> container name


@dataclass(frozen=True)
class ImagePlan:
    remove: list[ImageInfo]  # whole images, newest first within each target
    kept: list[Kept]


def chain_ids(layers: Iterable[str]) -> list[str]:
    """The engine's identity of each layer: a diff id on top of exactly these parents."""
    chain: list[str] = []
    for diff_id in layers:
        parent = chain[-1] if chain else ""
        chain.append(
            diff_id
            if not parent
            else "sha256:" + hashlib.sha256(f"{parent} {diff_id}".encode()).hexdigest()
        )
    return chain


def _built_from(base: ImageInfo, other: ImageInfo, project_ids: set[str]) -> bool:
    """Whether other was built from base: it starts with all of base's layers. Two of the
    project's builds with the same layers (same content, other labels) are siblings."""
    if other.id == base.id or not base.layers:
        return False
    if other.layers[: len(base.layers)] != base.layers:
        return False
    return len(other.layers) > len(base.layers) or other.id not in project_ids


def _guard(
    image: ImageInfo,
    record: builds.BuildRecord,
    guards: Guards,
    images: list[ImageInfo],
    project_ids: set[str],
) -> str:
    """Why image must stay whatever its age, or ''."""
    if image.id in guards.in_use:
        return f"used by container {guards.in_use[image.id]}"
    child = next((o for o in images if _built_from(image, o, project_ids)), None)
    if child is not None:
        return f"image {child.tags[0] if child.tags else child.id[:19]} is built from it"
    if record.revision and record.revision == guards.head:
        return "built from HEAD"
    if record.revision in guards.release_commits:
        return f"built from git tag {guards.release_commits[record.revision]}"
    floating = sorted(set(image.tags) & guards.floating)
    if floating:
        return f"carries the floating tag {floating[0]}"
    foreign = sorted(t for t in image.tags if repository_of(t) != guards.repository)
    if foreign:
        return f"also tagged {foreign[0]}"
    return ""


def plan_images(
    images: list[ImageInfo], records: list[builds.BuildRecord], guards: Guards, keep: int
) -> ImagePlan:
    """Which of the project's recorded images go: per target, newest build first, the
    guarded ones stay, then the `keep` newest tagged ones; ties break on the image id."""
    record_of = {image_id: r for r in records for image_id in r.ids}
    ours = sorted(
        (i for i in images if i.id in record_of),
        key=lambda i: (record_of[i.id].target, -record_of[i.id].built_ns, i.id),
    )
    project_ids = {i.id for i in ours}
    remove, kept, counted = [], [], {}
    for image in ours:
        record = record_of[image.id]
        name = image.tags[0] if image.tags else image.id[:19]
        reason = _guard(image, record, guards, images, project_ids)
        if not reason and image.tags and counted.get(record.target, 0) < keep:
            counted[record.target] = counted.get(record.target, 0) + 1
            reason = f"one of the {keep} newest builds of {record.target}"
        if reason:
            kept.append(Kept(name, record.target, reason))
        else:
            remove.append(image)
    for image in images:  # say why the repository's other images stay
        mine = [t for t in image.tags if repository_of(t) == guards.repository]
        if mine and image.id not in project_ids:
            kept.append(Kept(mine[0], "", "not built by this checkout (no build record)"))
    return ImagePlan(remove, kept)


def image_items(
    remove: list[ImageInfo], images: list[ImageInfo], layer_sizes: Callable[[str], list[int]]
) -> list[Item]:
    """Items that remove the given images: each tag, or the id of an untagged image. The
    bytes are those of the layers no remaining image holds, on the image's last item."""
    removed = {i.id for i in remove}
    held = {c for i in images if i.id not in removed for c in chain_ids(i.layers)}
    items = []
    for image in remove:
        freed = 0
        for chain, size in zip(chain_ids(image.layers), layer_sizes(image.id), strict=True):
            if chain not in held:
                held.add(chain)  # shared by two removed images: counted once
                freed += size
        names = sorted(image.tags) or [image.id]
        kind = "image-tag" if image.tags else "image"
        items += [Item(kind, n, freed if n == names[-1] else 0, image.id) for n in names]
    return items


def align_sizes(history_sizes: list[int], layer_count: int) -> list[int]:
    """Layer sizes from an image's history (bottom first). History also has entries that
    make no layer (ENV, LABEL): with more entries than layers, the non-empty ones are the
    layers, matched from the top."""
    if len(history_sizes) == layer_count:
        return history_sizes
    sizes = [s for s in history_sizes if s > 0][-layer_count:] if layer_count else []
    return [0] * (layer_count - len(sizes)) + sizes


class CacheLayoutError(BuildtasksError):
    """A cache directory that is not a well-formed OCI layout: prune removes nothing."""

    def __init__(self, problem: str):
        super().__init__(f"cache dir {problem}; nothing pruned (fix or empty the directory)")


def referenced_blobs(layout: Path) -> set[str]:
    """Digests reachable from index.json of an OCI layout (a `type=local` cache export).
    Anything malformed raises CacheLayoutError: a misread index would orphan every blob."""
    if not (layout / "oci-layout").is_file():
        raise CacheLayoutError(f"{layout}: no oci-layout file; not a cache export")
    index = _json(layout / "index.json")
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if (
        not manifests
        or not isinstance(manifests, list)
        or not all(isinstance(m, dict) and isinstance(m.get("digest"), str) for m in manifests)
    ):
        raise CacheLayoutError(f"{layout}/index.json: no well-formed manifests list")
    seen: set[str] = set()
    pending = [index]
    while pending:
        for digest, media_type in _descriptors(pending.pop()):
            if not _DIGEST.fullmatch(digest):
                raise CacheLayoutError(f"{layout}: malformed digest {digest[:80]!r}")
            if digest in seen:
                continue
            seen.add(digest)
            blob = layout / "blobs" / "sha256" / digest.removeprefix("sha256:")
            if any(t in media_type for t in _JSON_TYPES) and blob.is_file():
                with contextlib.suppress(CacheLayoutError):  # a layer with a JSON-ish type
                    pending.append(_json(blob))
    return seen


def _json(path: Path):
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CacheLayoutError(f"{path}: unreadable ({exc.__class__.__name__})") from None


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


def orphan_blobs(layout: Path, settle: float = _SETTLE_SECONDS) -> list[Item]:
    """Blobs of a cache export no index reaches, older than settle seconds. A directory
    with no index.json is not an export yet; a malformed one raises CacheLayoutError."""
    if not (layout / "index.json").is_file():
        return []
    keep = referenced_blobs(layout)
    cutoff = datetime.now(UTC).timestamp() - settle
    items = []
    for blob in sorted((layout / "blobs" / "sha256").glob("*")):
        digest = f"sha256:{blob.name}"
        with contextlib.suppress(FileNotFoundError):
            info = blob.lstat()
            if S_ISREG(info.st_mode) and digest not in keep and info.st_mtime < cutoff:
                items.append(Item("cache-blob", digest, info.st_size, str(blob)))
    return items


def directory_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


class Engine:
    """What prune asks of the engine (through the docker SDK)."""

    def __init__(self, client, layer_cache: bool = False):
        self.client = client
        # Podman lists its layer cache (one image per cached build step) among all images;
        # no image is built from those, so they are left out.
        self.layer_cache = layer_cache

    def images(self) -> list[ImageInfo]:
        """Every image, by id; one removed while we look is left out."""
        found = []
        for summary in self.client.api.images(all=not self.layer_cache):
            try:
                attrs = self.client.api.inspect_image(summary["Id"])
            except docker.errors.NotFound:
                continue
            tags = sorted(t for t in attrs.get("RepoTags") or () if t != "<none>:<none>")
            layers = (attrs.get("RootFS") or {}).get("Layers") or ()
            found.append(ImageInfo(attrs["Id"], tuple(tags), tuple(layers)))
        return sorted(found, key=lambda i: i.id)

    def layer_sizes(self, image: ImageInfo) -> list[int]:
        history = [e.get("Size") or 0 for e in reversed(self.client.api.history(image.id))]
        return align_sizes(history, len(image.layers))

    def images_in_use(self, leaving: Iterable[str] = ()) -> dict[str, str]:
        """{image id: a container using it}, stopped containers included, except the
        containers leaving (the ones the same plan removes first)."""
        gone = set(leaving)
        used: dict[str, str] = {}
        for c in sorted(self.client.api.containers(all=True), key=lambda c: c["Names"]):
            if c["Id"] not in gone:
                used.setdefault(c["ImageID"], c["Names"][0].lstrip("/"))
        return used

    def stopped_containers(self, project: str) -> list[Item]:
        """Exited containers of exactly this compose project (the label, not a prefix)."""
        found = self.client.api.containers(
            all=True, size=True, filters={"label": f"{PROJECT_LABEL}={project}", "status": "exited"}
        )
        items = [
            Item("container", c["Names"][0].lstrip("/"), c.get("SizeRw") or 0, c["Id"])
            for c in found
            if (c.get("Labels") or {}).get(PROJECT_LABEL) == project
        ]
        return sorted(items, key=lambda i: i.name)

    def chains_held(self) -> set[str]:
        """The chain id of every layer some image on the engine holds."""
        return {c for image in self.images() for c in chain_ids(image.layers)}

    def build_cache_records(self) -> list[dict]:
        return self.client.df().get("BuildCache") or []

    def remove(self, item: Item) -> bool:
        """Remove one planned item; False when it changed since the plan (a tag moved to
        another image, a container started using the image): then it stays."""
        try:
            if item.kind == "image-tag":
                if self.client.api.inspect_image(item.name)["Id"] != item.ident:
                    return False
                self.client.api.remove_image(item.name)
            elif item.kind == "image":
                # Removing by id deletes an image even when it has one tag: someone may
                # have tagged it, or started a container on it, since the plan.
                if self._claimed(item.ident):
                    return False
                self.client.api.remove_image(item.ident)
            elif item.kind == "container":
                self.client.api.remove_container(item.ident)
        except docker.errors.NotFound:
            pass  # already gone
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: in use now
                raise
            return False
        return True

    def _claimed(self, image_id: str) -> bool:
        tags = self.client.api.inspect_image(image_id).get("RepoTags") or ()
        users = self.client.api.containers(all=True)
        return any(t != "<none>:<none>" for t in tags) or any(
            c["ImageID"] == image_id for c in users
        )


def old_build_cache(records: list[dict], until: timedelta) -> list[dict]:
    """Build cache records not in use and unused for longer than until."""
    cutoff = datetime.now(UTC) - until
    return [
        r
        for r in records
        if not r.get("InUse")
        and (last := r.get("LastUsedAt") or r.get("CreatedAt") or "")
        and _parse_time(last) < cutoff
    ]


def _parse_time(text: str) -> datetime:
    """RFC 3339 as the engine writes it (nanoseconds, Z or an offset)."""
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)?", text)
    if not match:
        return datetime.now(UTC)
    fraction = (match.group(2) or ".0")[:7]
    zone = "+00:00" if match.group(3) in (None, "Z") else match.group(3)
    return datetime.fromisoformat(f"{match.group(1)}{fraction}{zone}")


def guards(sh, settings, in_use: Mapping[str, str]) -> Guards:
    """HEAD, the commits git tags point at, the floating tags of every target, in_use."""
    state = git.state(sh, settings.root)
    listing = ""
    if state.sha:
        listing = sh.output(
            ["git", "-C", str(settings.root), "for-each-ref", "--sort=refname",
             "--format=%(objectname) %(*objectname) %(refname:strip=2)", "refs/tags"],
        )  # fmt: skip
    commits: dict[str, str] = {}
    for line in listing.splitlines():
        obj, peeled, name = line.split(" ", 2)
        commits.setdefault(peeled or obj, name)  # an annotated tag peels to its commit
    floating = {f"{repository_of(settings.image)}:latest"}
    for target in settings.targets.values():
        values = {
            **template_values(target.name, settings.version, state),
            "sha": "",
            "short_sha": "",
        }
        floating.update(render_tags(target.tags, settings.image, values))
    return Guards(repository_of(settings.image), state.sha, commits, frozenset(floating), in_use)


@dataclass(frozen=True)
class Plan:
    items: list[Item]
    kept: list[Kept]
    layers: Mapping[str, int] = field(default_factory=dict)  # removed images' chain id: size

    @property
    def estimate(self) -> int:
        return sum(i.size for i in self.items)


def plan(sh: Shell, settings, engine: Engine) -> Plan:
    """Everything a project-scoped prune removes, in the order it removes it."""
    images = engine.images()
    items = engine.stopped_containers(stack_compose(settings).project)
    # The containers go first, so the images only they use go in the same run.
    protect = guards(sh, settings, engine.images_in_use(i.ident for i in items))
    chosen = plan_images(images, builds.load(settings.root), protect, settings.cache.keep_images)
    sizes = {i.id: engine.layer_sizes(i) for i in chosen.remove}
    items += image_items(chosen.remove, images, sizes.__getitem__)
    for directory in settings.cache.dirs:
        items += orphan_blobs(settings.root / directory)
    layers = {
        chain: size
        for image in chosen.remove
        for chain, size in zip(chain_ids(image.layers), sizes[image.id], strict=True)
    }
    return Plan(sorted(items, key=lambda i: _ORDER[i.kind]), chosen.kept, layers)


def build_cache_argv(settings) -> list[str]:
    """BuildKit's own prune of the engine's build cache (every project's)."""
    return ["docker", "buildx", "prune", "--force", "--filter", f"until={settings.cache.until}",
            "--keep-storage", settings.cache.keep_storage]  # fmt: skip


WHOLE_ENGINE = (
    ["docker", "system", "prune", "--all", "--force"],
    ["docker", "buildx", "prune", "--all", "--force"],
)


@dataclass(frozen=True)
class Pruned:
    removed: list[Item]
    skipped: list[Item]  # changed since the plan, left alone
    reclaimed: int


def removal_argv(item: Item) -> list[str]:
    """The command a removal stands for: what is echoed, and what --dry skips."""
    return {
        "image-tag": ["docker", "rmi", item.name],
        "image": ["docker", "rmi", item.ident],
        "container": ["docker", "rm", item.ident],
        "cache-blob": ["rm", "-f", item.ident],
    }[item.kind]


def run(sh: Shell, engine: Engine, settings, planned: Plan) -> Pruned:
    """Remove exactly the planned items. The bytes reclaimed, as measured for this project
    alone: the planned images' layers no image on the engine holds afterwards, the removed
    containers' writable layers and the cache blobs deleted."""
    removed, skipped, blobs = [], [], 0
    for item in planned.items:
        if not sh.change(removal_argv(item)):
            continue
        if item.kind == "cache-blob":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(item.ident)
                blobs += item.size
        elif not engine.remove(item):
            skipped.append(item)
            continue
        removed.append(item)
    gone = {i.ident for i in removed if i.kind in ("image", "image-tag")}
    builds.forget(settings.root, gone - {i.ident for i in skipped})
    held = engine.chains_held() if gone else set(planned.layers)
    layers = sum(size for chain, size in planned.layers.items() if chain not in held)
    containers = sum(i.size for i in removed if i.kind == "container")
    return Pruned(removed, skipped, layers + containers + blobs)


def usage_report(sh, settings, engine: Engine) -> dict:
    """What `inv cache.usage` shows. The build cache is the engine's, shared by every
    project on it, and labelled so."""
    cache = engine.build_cache_records()
    old_cache = old_build_cache(cache, timedelta(seconds=settings.cache.until_seconds))
    chosen = plan(sh, settings, engine)
    return {
        "engine_build_cache": {
            "scope": "engine-wide: every project's builds, not only this one's",
            "total": sum(r.get("Size", 0) for r in cache),
            "reclaimable": sum(r.get("Size", 0) for r in cache if not r.get("InUse")),
            "older_than_until": sum(r.get("Size", 0) for r in old_cache),
        },
        "project": {
            "kept": [k.__dict__ for k in chosen.kept],
            "prune_would_remove": [i.__dict__ for i in chosen.items],
            "prune_would_reclaim": chosen.estimate,
        },
        "cache_dirs": {d: directory_size(settings.root / d) for d in settings.cache.dirs},
    }
