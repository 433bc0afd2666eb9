"""A CycloneDX SBOM of an image from its own files: the Python distributions installed in
every site-packages/dist-packages directory (the *.dist-info METADATA pip lists from) and
the OS packages dpkg records as installed. No scanner image, no code run in the image."""

from __future__ import annotations

import email.parser
import re
import tarfile
import urllib.parse
import uuid
import zlib
from collections.abc import Iterable
from typing import BinaryIO

# Files the SBOM reads: a distribution's METADATA directly in a packages directory (vendored
# copies inside a package, such as setuptools/_vendor, are not installed distributions),
# and dpkg's status database (status.d/ holds one file per package in distroless images).
_METADATA = re.compile(r"^(?P<dir>(?:.*/)?(?:site|dist)-packages)/[^/]+\.dist-info/METADATA$")
_DPKG = re.compile(r"^var/lib/dpkg/(?:status|status\.d/[^/.]+)$")


# Any distribution's METADATA, wanted or not: a wanted one may be a hard link to it (uv
# installs from its cache by hard links), so a layer reads these to resolve its links.
_ANY_METADATA = re.compile(r"^(?:.*/)?[^/]+\.dist-info/METADATA$")
_MAX_READ = 64 << 20  # bytes: a bigger "metadata" file is not one
# What layer() records depends on these: records made with others are not to be trusted
# (inventory keys its cache on them). The number goes up whenever layer(), packages() or
# merge() change what a record means.
RECORDING = (2, _METADATA.pattern, _DPKG.pattern, _ANY_METADATA.pattern, _MAX_READ)
PYTHON_FIELDS = frozenset({"name", "version", "location"})
DPKG_FIELDS = frozenset({"name", "version", "arch"})
WHITEOUT = ".wh."  # .wh.NAME in a layer deletes NAME from the layers below (OCI image spec)
OPAQUE = ".wh..wh..opq"  # in a directory: what the layers below hold there is hidden


def _clean(path: str) -> str:
    return path.removeprefix("./").strip("/")


def fields(path: str) -> frozenset[str]:
    """The fields of each package the file at path (relative to the image's root) records:
    PYTHON_FIELDS or DPKG_FIELDS; none when the file does not feed the SBOM."""
    path = _clean(path)
    if _METADATA.match(path):
        return PYTHON_FIELDS
    return DPKG_FIELDS if _DPKG.match(path) else frozenset()


def wanted(path: str) -> bool:
    """Whether the file at path (relative to the image's root) feeds the SBOM."""
    return bool(fields(path))


Found = dict[str, list[dict]]  # path of a wanted file -> the packages it records


def packages(path: str, data: bytes) -> list[dict]:
    """The packages one wanted file records: [{name, version, location}] of a METADATA
    with both fields, {name, version, arch} of each package a dpkg status marks installed."""
    match = _METADATA.match(_clean(path))
    if match:
        headers = email.parser.BytesHeaderParser().parsebytes(data)
        name, version = headers.get("Name", "").strip(), headers.get("Version", "").strip()
        if not (name and version):
            return []
        return [{"name": name, "version": version, "location": f"/{match['dir']}"}]
    found = []
    for stanza in data.decode("utf-8", "replace").split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+):[ \t]*(.*)$", stanza, re.MULTILINE))
        if fields.get("Status", "").endswith(" installed") and fields.get("Package"):
            found.append({"name": fields["Package"], "version": fields.get("Version", ""),
                          "arch": fields.get("Architecture", "")})  # fmt: skip
    return found


def layer(stream: BinaryIO) -> dict:
    """What one layer (a tar, compressed or not, read as a stream) means for the SBOM:
    {"files": Found of the wanted files it writes, "removed": paths whose content in the
    layers below it deletes, "opaque": directories whose content below it hides}. A wanted
    path that holds no regular file records nothing but still hides what was below; a hard
    link records what its target (earlier in the same tar) does at the link's own place.
    ValueError when the stream is not a tar."""
    files: Found = {}
    removed: list[str] = []
    opaque: list[str] = []
    linkable: dict[str, bytes] = {}  # what this layer's files that a link may need hold
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                path = _clean(member.name)
                directory, _, name = path.rpartition("/")
                if name == OPAQUE:
                    opaque.append(directory)
                elif name.startswith(WHITEOUT + WHITEOUT):
                    continue  # the storage driver's own bookkeeping (aufs), not a deletion
                elif name.startswith(WHITEOUT):
                    removed.append(f"{directory}/{name[len(WHITEOUT) :]}".lstrip("/"))
                elif member.isdir():  # it merges with a directory below
                    if wanted(path):
                        files[path] = []
                else:
                    data = None
                    if (
                        member.isfile()
                        and member.size <= _MAX_READ
                        and (_ANY_METADATA.match(path) or _DPKG.match(path))
                    ):
                        data = tar.extractfile(member).read()
                        # a METADATA's headers end at its first blank line: its body (often
                        # a whole README) is not kept for the links to it
                        linkable[path] = data if _DPKG.match(path) else data.partition(b"\n\n")[0]
                    elif member.islnk():
                        data = linkable.get(_clean(member.linkname))
                    if wanted(path):
                        files[path] = [] if data is None else packages(path, data)
                    else:
                        # Whatever this path was below (a directory above site-packages
                        # or var/lib/dpkg, say), this file or link replaces it and all it
                        # held. Every such path is kept, as layers are read apart: which
                        # one held wanted files is known only when merging. The cost is
                        # each path that is not a directory in the layer's cache entry.
                        removed.append(path)
    except (tarfile.TarError, zlib.error, EOFError) as exc:
        raise ValueError(f"not a readable layer ({exc})") from None
    return {"files": files, "removed": removed, "opaque": opaque}


def _ancestors(path: str) -> set[str]:
    """The directories above path, the root ("") included."""
    parts = path.split("/")
    return {"/".join(parts[:end]) for end in range(len(parts))}


def merge(layers: Iterable[dict]) -> Found:
    """What the image's filesystem records, from its layers bottom first: each layer's
    deletions and opaque directories apply to the layers below it, then its files."""
    found: Found = {}
    for read in layers:
        removed = set(read["removed"])
        above = removed | set(read["opaque"])
        found = {
            path: value
            for path, value in found.items()
            if path not in removed and not _ancestors(path) & above
        }
        found.update(read["files"])
    return found


def python_packages(found: Found) -> list[dict]:
    """{name, version, location} of every installed distribution, by location then name."""
    listed = [p for path, ps in found.items() if _METADATA.match(path) for p in ps]
    return sorted(listed, key=lambda p: (p["location"], p["name"].lower()))


def dpkg_packages(found: Found) -> list[dict]:
    """{name, version, arch} of every package dpkg's status marks installed."""
    listed = [p for path, ps in found.items() if _DPKG.match(path) for p in ps]
    return sorted(listed, key=lambda p: p["name"])


def _component(
    purl: str, name: str, version: str, properties: dict[str, str], ref: str = ""
) -> dict:
    return {
        "type": "library",
        "bom-ref": ref or purl,
        "name": name,
        "version": version,
        "purl": purl,
        "properties": [{"name": k, "value": v} for k, v in properties.items()],
    }


def document(
    found: Found, *, image: str, version: str, digest: str, platform: str,
    tool_version: str, timestamp: str,
) -> dict:  # fmt: skip
    """The CycloneDX 1.5 JSON document of one platform image."""
    components, seen = [], set()
    for package in python_packages(found):
        quoted = urllib.parse.quote(package["name"].lower().replace("_", "-"), safe="")
        purl = f"pkg:pypi/{quoted}@{urllib.parse.quote(package['version'], safe='')}"
        # the same distribution in another environment of the image: its own bom-ref
        ref = f"{purl}#{package['location']}" if purl in seen else purl
        seen.add(purl)
        location = {"buildtasks:location": package["location"]}
        components.append(_component(purl, package["name"], package["version"], location, ref))
    for package in dpkg_packages(found):
        quoted = urllib.parse.quote(package["version"], safe="")
        purl = f"pkg:deb/debian/{package['name']}@{quoted}?arch={package['arch']}"
        components.append(_component(purl, package["name"], package["version"], {}))
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{uuid.uuid4()}",
        "version": 1,
        "metadata": {
            "timestamp": timestamp,
            "tools": {
                "components": [
                    {"type": "application", "name": "buildtasks", "version": tool_version}
                ]
            },
            "component": {
                "type": "container",
                "bom-ref": f"{image}@{digest}",
                "name": image,
                "version": version,
                "properties": [{"name": "buildtasks:platform", "value": platform}],
            },
        },
        "components": components,
    }
