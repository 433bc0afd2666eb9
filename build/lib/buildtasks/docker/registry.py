"""The registry side: reachability, login state, and what a pushed reference holds."""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
import urllib.response
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


def _docker_config() -> dict:
    config_dir = Path(os.environ.get("DOCKER_CONFIG", Path.home() / ".docker"))
    try:
        config = json.loads((config_dir / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def _config_names(host: str) -> set[str]:
    names = {host, f"https://{host}", f"http://{host}"}
    if host == "docker.io":
        names |= {"https://index.docker.io/v1/", "index.docker.io"}
    return names


def logged_in(host: str) -> bool:
    """Whether the docker CLI holds credentials (or a credential helper) for host."""
    config = _docker_config()
    known = set(config.get("auths") or {}) | set(config.get("credHelpers") or {})
    return bool(_config_names(host) & known)


def require_push_access(reference: str) -> None:
    """One clear error before any build when the push cannot succeed."""
    host = registry_host(reference)
    reachable, needs_login, detail = probe(host)
    if not reachable:
        raise RegistryError(f"cannot push {reference}: registry {detail}; start it or fix `image`")
    if needs_login and not logged_in(host):
        raise RegistryError(f"cannot push {reference}: not logged in; run `docker login {host}`")


INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
IMAGE_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
_PLATFORM_PART = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def _inspect(sh: Shell, reference: str, *flags: str) -> dict:
    """A JSON document `imagetools inspect` reads from the registry (with the CLI's logins)."""
    result = sh.run(
        ["docker", "buildx", "imagetools", "inspect", *flags, reference], query=True, check=False
    )
    if result.returncode != 0:
        raise RegistryError(
            f"cannot read {reference} back from the registry: "
            f"{(result.stderr.strip().splitlines() or ['no output'])[-1]}"
        )
    try:
        document = json.loads(result.stdout)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise RegistryError(f"the registry's answer for {reference} is not a JSON object")
    return document


def platforms(sh: Shell, reference: str) -> list[str]:
    """Platforms the registry holds at reference: those of an index (attestation manifests
    left out), or the one of an image manifest, which its config blob names."""
    manifest = _inspect(sh, reference, "--raw")
    kind = manifest.get("mediaType", "")
    if kind in INDEX_TYPES or (not kind and "manifests" in manifest):
        return index_platforms(manifest)
    if kind in IMAGE_TYPES or (not kind and "config" in manifest):
        image_config = _inspect(sh, reference, "--format", "{{json .Image}}")
        return [platform_name(image_config, reference)]
    raise RegistryError(
        f"{reference} is a {kind or 'manifest of unknown type'}, not an image or an index"
    )


def promoted_digest(sh: Shell, reference: str, verified: str) -> str:
    """The digest reference holds, checked to be the verified one or an index of exactly it
    (`imagetools create` wraps a single image manifest in a one-entry index)."""
    manifest = _inspect(sh, reference, "--format", "{{json .Manifest}}")
    digest = manifest.get("digest")
    entries = [m.get("digest") for m in manifest.get("manifests") or [] if isinstance(m, dict)]
    if not isinstance(digest, str) or (digest != verified and entries != [verified]):
        raise RegistryError(f"{reference} holds {digest}, not the verified {verified}")
    return digest


def platform_name(fields: dict, where: str) -> str:
    """os/arch[/variant] from an index entry's platform or an image config, checked."""
    parts = [fields.get("os"), fields.get("architecture")]
    if fields.get("variant"):
        parts.append(fields["variant"])
    if not all(isinstance(p, str) and _PLATFORM_PART.match(p) for p in parts):
        raise RegistryError(f"{where} names no valid platform ({parts!r})")
    return "/".join(parts)


def index_platforms(index: dict) -> list[str]:
    """os/arch[/variant] of each image manifest in an index."""
    found = []
    for manifest in index.get("manifests") or []:
        annotations = manifest.get("annotations") or {}
        if annotations.get("vnd.docker.reference.type") == "attestation-manifest":
            continue
        platform = manifest.get("platform") or {}
        if platform.get("os") in (None, "unknown"):
            continue
        found.append(platform_name(platform, f"an entry of {manifest.get('digest', 'the index')}"))
    return sorted(found)


# Deleting from the registry. The docker CLI cannot delete from a registry, so this speaks
# the distribution API itself, with the `auth` a `docker login` stored (credential helpers
# are not read). A manifest is deleted by digest, which removes every tag on it, so a tag
# is only removed when no other tag shares its digest.


def _api_base(host: str) -> str:
    api = _api_host(host)
    # dockerd treats loopback registries as insecure (plain http) by default.
    return f"{'http' if api.startswith(('127.', 'localhost')) else 'https'}://{api}/v2"


def _basic_auth(host: str) -> str:
    auths = _docker_config().get("auths") or {}
    for name in _config_names(host):
        entry = auths.get(name)
        if isinstance(entry, dict) and isinstance(entry.get("auth"), str) and entry["auth"]:
            return f"Basic {entry['auth']}"
    return ""


def _challenge_auth(challenge: str, host: str) -> str:
    """The Authorization header a 401's WWW-Authenticate challenge asks for ('' if none)."""
    basic = _basic_auth(host)
    scheme, _, params = challenge.partition(" ")
    if scheme.lower() == "basic":
        return basic
    if scheme.lower() != "bearer":
        return ""
    fields = dict(re.findall(r'(\w+)="([^"]*)"', params))
    realm = urllib.parse.urlsplit(fields.get("realm", ""))
    if realm.scheme not in ("https", "http") or not realm.hostname:
        return ""
    # The login goes to a token service only over TLS, or in the clear to the registry's
    # own host (which a plain-http registry already is); never to another host over http.
    registry_name = urllib.parse.urlsplit(f"//{_api_host(host)}").hostname
    if realm.scheme == "http" and realm.hostname != registry_name:
        basic = ""
    query = urllib.parse.urlencode({k: v for k, v in fields.items() if k in ("service", "scope")})
    request = urllib.request.Request(
        f"{fields['realm']}?{query}", headers={"Authorization": basic} if basic else {}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        body = json.loads(answer.read())
    token = body.get("token") or body.get("access_token") if isinstance(body, dict) else ""
    return f"Bearer {token}" if isinstance(token, str) and token else ""


def _call(host: str, method: str, path: str) -> urllib.response.addinfourl:
    """One registry API request, answering an authentication challenge once."""
    url = f"{_api_base(host)}{path}"
    headers = {"Accept": ", ".join(INDEX_TYPES + IMAGE_TYPES)}
    try:
        return urllib.request.urlopen(
            urllib.request.Request(url, method=method, headers=headers), timeout=30
        )
    except urllib.error.HTTPError as exc:
        authorization = (
            _challenge_auth(exc.headers.get("WWW-Authenticate", ""), host)
            if exc.code == 401
            else ""
        )
        if not authorization:
            raise
    headers["Authorization"] = authorization
    return urllib.request.urlopen(
        urllib.request.Request(url, method=method, headers=headers), timeout=30
    )


def split_reference(reference: str) -> tuple[str, str, str]:
    """(registry host, repository path, tag) of host/path:tag."""
    host = registry_host(reference)
    rest = reference[len(host) + 1 :] if reference.startswith(f"{host}/") else reference
    path, sep, tag = rest.rpartition(":")
    if not sep or "/" in tag or not path or "@" in rest:
        raise RegistryError(f"{reference} names no tag")
    if host == "docker.io" and "/" not in path:
        path = f"library/{path}"
    return host, path, tag


def _digest_of(host: str, path: str, tag: str) -> str:
    """The digest a tag points to; '' when the tag does not exist."""
    try:
        with _call(host, "HEAD", f"/{path}/manifests/{urllib.parse.quote(tag)}") as answer:
            digest = answer.headers.get("Docker-Content-Digest", "")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return ""
        raise
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise RegistryError(f"{host}/{path}:{tag}: the registry named no valid digest")
    return digest


def _next_page(link: str) -> str:
    """The path (under /v2) of the next page a `Link: <...>; rel="next"` header names, on the
    same registry whatever host it spells ('' when there is none)."""
    match = re.search(r'<([^>]*)>\s*;[^,]*rel="?next"?', link)
    if not match:
        return ""
    target = urllib.parse.urlsplit(match.group(1))
    if not target.path.startswith("/v2/"):
        return ""
    return target.path[len("/v2") :] + (f"?{target.query}" if target.query else "")


def _tags(host: str, path: str) -> list[str]:
    """Every tag of the repository, following the registry's pagination."""
    found: list[str] = []
    page, seen = f"/{path}/tags/list", set()
    while page and page not in seen:
        seen.add(page)
        with _call(host, "GET", page) as answer:
            listing = json.loads(answer.read())
            page = _next_page(answer.headers.get("Link", ""))
        tags = listing.get("tags") if isinstance(listing, dict) else None
        found += [t for t in tags or [] if isinstance(t, str)]
    return found


def remove_tag(sh: Shell, reference: str, expected: str) -> str:
    """Delete a tag's manifest from the registry while it holds the expected digest and no
    other tag shares it; what happened, as one line. Raises RegistryError when the registry
    cannot be read or refuses."""
    host, path, tag = split_reference(reference)
    try:
        digest = _digest_of(host, path, tag)
        if not digest:
            return f"{reference} is not in the registry"
        if digest != expected:
            return f"{reference} kept: it now holds {digest}, not {expected} the release pushed"
        sharing = [t for t in _tags(host, path) if t != tag and _digest_of(host, path, t) == digest]
        if sharing:
            return f"{reference} kept: tags {', '.join(sharing)} share its digest {digest}"
        if sh.dry:
            return f"[dry] would delete {reference} ({digest})"
        _call(host, "DELETE", f"/{path}/manifests/{digest}").close()
    except urllib.error.HTTPError as exc:
        if exc.code == 405:  # distribution answers UNSUPPORTED while deletion is disabled
            raise RegistryError(
                f"registry {host} refuses deletion (distribution needs `storage: delete: "
                f"enabled: true`); {reference} remains"
            ) from None
        raise RegistryError(
            f"cannot delete {reference}: registry {host} answered HTTP {exc.code}"
        ) from None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RegistryError(
            f"cannot check or delete {reference}: registry {host} unreachable ({reason})"
        ) from None
    return f"deleted {reference} ({digest}) from the registry"
