"""The registry side: reachability, login state, and what a pushed reference holds."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from buildtasks.errors import BuildtasksError
from buildtasks.shell import Shell


class RegistryError(BuildtasksError):
    """The registry is unreachable, refuses us, or does not hold what was pushed."""


def registry_host(reference: str) -> str:
    """The registry part of an image reference (docker.io when there is none)."""
    first, _, rest = reference.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def _api_host(host: str) -> str:
    return "registry-1.docker.io" if host == "docker.io" else host


def probe(host: str, timeout: float = 5.0) -> tuple[bool, bool, str]:
    """(reachable, needs_login, detail) from GET /v2/ (http too for loopback registries)."""
    api = _api_host(host)
    schemes = ["http", "https"] if api.startswith(("127.", "localhost")) else ["https"]
    reason = ""
    for scheme in schemes:
        try:
            urllib.request.urlopen(f"{scheme}://{api}/v2/", timeout=timeout)
            return True, False, f"{scheme}://{api} answers"
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                return True, True, f"{scheme}://{api} answers (login required)"
            reason = f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:
            reason = str(getattr(exc, "reason", exc))
    return False, False, f"{api} unreachable ({reason})"


def logged_in(host: str) -> bool:
    """Whether the docker CLI holds credentials (or a credential helper) for host."""
    config_dir = Path(os.environ.get("DOCKER_CONFIG", Path.home() / ".docker"))
    try:
        config = json.loads((config_dir / "config.json").read_text())
    except (OSError, ValueError):
        return False
    names = {host, f"https://{host}", f"http://{host}"}
    if host == "docker.io":
        names |= {"https://index.docker.io/v1/", "index.docker.io"}
    known = set(config.get("auths", {})) | set(config.get("credHelpers", {}))
    return bool(names & known)


def require_push_access(reference: str) -> None:
    """One clear error before any build when the push cannot succeed."""
    host = registry_host(reference)
    reachable, needs_login, detail = probe(host)
    if not reachable:
        raise RegistryError(f"cannot push {reference}: registry {detail}; start it or fix `image`")
    if needs_login and not logged_in(host):
        raise RegistryError(f"cannot push {reference}: not logged in; run `docker login {host}`")


def platforms(sh: Shell, reference: str) -> list[str]:
    """Platforms of the image index at reference, attestation manifests left out."""
    result = sh.run(
        ["docker", "buildx", "imagetools", "inspect", "--raw", reference], query=True, check=False
    )
    if result.returncode != 0:
        raise RegistryError(
            f"cannot read {reference} back from the registry: "
            f"{(result.stderr.strip().splitlines() or ['no output'])[-1]}"
        )
    return index_platforms(json.loads(result.stdout))


def index_platforms(index: dict) -> list[str]:
    """os/arch[/variant] of each image manifest in an index (or a single manifest)."""
    found = []
    for manifest in index.get("manifests", []):
        annotations = manifest.get("annotations") or {}
        if annotations.get("vnd.docker.reference.type") == "attestation-manifest":
            continue
        platform = manifest.get("platform") or {}
        if platform.get("os") in (None, "unknown"):
            continue
        name = f"{platform['os']}/{platform['architecture']}"
        if platform.get("variant"):
            name += f"/{platform['variant']}"
        found.append(name)
    return sorted(found)
