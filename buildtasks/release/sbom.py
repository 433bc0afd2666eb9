"""A CycloneDX SBOM of an image from its own files: the Python distributions installed in
every site-packages/dist-packages directory (the *.dist-info METADATA pip lists from) and
the OS packages dpkg records as installed. No scanner image, no code run in the image."""

from __future__ import annotations

import email.parser
import re
import urllib.parse
import uuid
from collections.abc import Mapping

# Files the SBOM reads: a distribution's METADATA directly in a packages directory (vendored
# copies inside a package, such as setuptools/_vendor, are not installed distributions),
# and dpkg's status database (status.d/ holds one file per package in distroless images).
_METADATA = re.compile(r"^(?P<dir>(?:.*/)?(?:site|dist)-packages)/[^/]+\.dist-info/METADATA$")
_DPKG = re.compile(r"^var/lib/dpkg/(?:status|status\.d/[^/.]+)$")


def wanted(path: str) -> bool:
    """Whether the file at path (relative to the image's root) feeds the SBOM."""
    path = path.removeprefix("./")
    return bool(_METADATA.match(path) or _DPKG.match(path))


def python_packages(files: Mapping[str, bytes]) -> list[dict]:
    """{name, version, location} of every installed distribution, by location then name."""
    found = []
    for path, data in files.items():
        match = _METADATA.match(path.removeprefix("./"))
        if not match:
            continue
        headers = email.parser.BytesHeaderParser().parsebytes(data)
        name, version = headers.get("Name", "").strip(), headers.get("Version", "").strip()
        if name and version:
            found.append({"name": name, "version": version, "location": f"/{match['dir']}"})
    return sorted(found, key=lambda p: (p["location"], p["name"].lower()))


def dpkg_packages(files: Mapping[str, bytes]) -> list[dict]:
    """{name, version, arch} of every package dpkg's status marks installed."""
    found = []
    for path, data in files.items():
        if not _DPKG.match(path.removeprefix("./")):
            continue
        for stanza in data.decode("utf-8", "replace").split("\n\n"):
            fields = dict(re.findall(r"^([A-Za-z-]+):[ \t]*(.*)$", stanza, re.MULTILINE))
            if fields.get("Status", "").endswith(" installed") and fields.get("Package"):
                found.append({"name": fields["Package"], "version": fields.get("Version", ""),
                              "arch": fields.get("Architecture", "")})  # fmt: skip
    return sorted(found, key=lambda p: p["name"])


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
    files: Mapping[str, bytes], *, image: str, version: str, digest: str, platform: str,
    tool_version: str, timestamp: str,
) -> dict:  # fmt: skip
    """The CycloneDX 1.5 JSON document of one platform image."""
    components, seen = [], set()
    for package in python_packages(files):
        quoted = urllib.parse.quote(package["name"].lower().replace("_", "-"), safe="")
        purl = f"pkg:pypi/{quoted}@{urllib.parse.quote(package['version'], safe='')}"
        # the same distribution in another environment of the image: its own bom-ref
        ref = f"{purl}#{package['location']}" if purl in seen else purl
        seen.add(purl)
        location = {"buildtasks:location": package["location"]}
        components.append(_component(purl, package["name"], package["version"], location, ref))
    for package in dpkg_packages(files):
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
