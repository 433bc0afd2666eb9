"""What each platform image holds for its SBOM, read from its layers as the registry holds
them. What a layer records (sbom.layer) is cached on disk under the layer's digest, so a
release that changed only its source fetches and parses only that layer. The cache is
content-addressed: an entry cannot go stale, and one that does not read back whole is read
again. Images whose layers cannot be read from the registry directly (a login kept by a
credential helper, a compression Python cannot read) are exported from the engine instead."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from buildtasks import dirs
from buildtasks.docker import registry, retry
from buildtasks.release import sbom
from buildtasks.runtime import Runtime

# An entry is trusted only when recorded the way sbom.layer records now: a change to what
# it reads or records gives another FORMAT, so entries of an earlier one are read again.
FORMAT = hashlib.sha256(repr(sbom.RECORDING).encode()).hexdigest()[:16]
READABLE = {
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
}


def cache_dir() -> Path | None:
    base = dirs.cache_home()
    return base / "sbom-layers" if base else None


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _valid(read: object) -> bool:
    """Whether a cache entry's layer has the shape sbom.layer gives (the file is input)."""
    if not (isinstance(read, dict) and _strings(read.get("removed"))):
        return False
    files = read.get("files")
    return (
        _strings(read.get("opaque"))
        and isinstance(files, dict)
        and all(
            sbom.wanted(path)
            and isinstance(found, list)
            and all(
                isinstance(p, dict)
                and set(p) == sbom.fields(path)
                and all(isinstance(v, str) for v in p.values())
                for p in found
            )
            for path, found in files.items()
        )
    )


def cached(path: Path, digest: str) -> dict | None:
    """The layer recorded at path for digest; None when there is none that reads back whole."""
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(entry, dict) or (entry.get("format"), entry.get("digest")) != (
        FORMAT,
        digest,
    ):
        return None
    return entry["layer"] if _valid(entry.get("layer")) else None


def layer(rt: Runtime, policy: retry.Policy, repository: str, digest: str) -> dict:
    """sbom.layer of the layer blob repository@digest: from the cache, else read from the
    registry and cached. A cache that cannot be written only costs the next release a read."""
    directory = cache_dir()
    path = directory / f"{digest.removeprefix('sha256:')}.json" if directory else None
    read = cached(path, digest) if path else None
    if read is not None:
        return read
    read = registry.read_blob(rt, policy, f"{repository}@{digest}", sbom.layer)
    if path is None:  # no cache directory can be named: read again next time
        return read
    try:
        if not path.parent.is_dir() and rt.change(["mkdir", "-p", str(path.parent)]):
            path.parent.mkdir(parents=True, exist_ok=True)
        rt.write_text(path, json.dumps({"format": FORMAT, "digest": digest, "layer": read}))
    except OSError as exc:
        rt.note(f"cannot cache what layer {digest} holds ({exc}); it is read again next time")
    return read


def packages(
    rt: Runtime, policy: retry.Policy, repository: str, images: Mapping[str, str]
) -> dict[str, sbom.Found]:
    """platform -> what the image repository@digest holds for its SBOM, for each platform
    and digest of images; each distinct layer is read once, the reads side by side."""
    try:
        layers = {
            platform: registry.image_layers(rt, policy, f"{repository}@{digest}")
            for platform, digest in images.items()
        }
        unreadable = {kind for found in layers.values() for kind, _ in found} - READABLE
        if unreadable:
            raise registry.RegistryError(f"its layers are {', '.join(sorted(unreadable))}")
        distinct = list(dict.fromkeys(digest for found in layers.values() for _, digest in found))
        with ThreadPoolExecutor(len(images)) as pool:
            reads = pool.map(lambda digest: layer(rt, policy, repository, digest), distinct)
            read = dict(zip(distinct, reads, strict=True))
    except registry.RegistryError as exc:
        rt.note(f"cannot read the layers of {repository} from the registry ({exc}); "
                "exporting each image from the engine instead")  # fmt: skip
        with ThreadPoolExecutor(len(images)) as pool:
            exports = {  # one flattened layer each: what it holds is the image's filesystem
                platform: pool.submit(
                    rt.engine.read_export, f"{repository}@{digest}", platform, sbom.layer
                )
                for platform, digest in images.items()
            }
            return {
                platform: sbom.merge([read.result()]) if read.result() else {}
                for platform, read in exports.items()
            }
    return {
        platform: sbom.merge(read[digest] for _, digest in found)
        for platform, found in layers.items()
    }
