"""The registry side: reachability, login state, and what a pushed reference holds."""

from __future__ import annotations

import hashlib
import http.client
import io
import ipaddress
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
import urllib.response
from collections.abc import Callable
from typing import BinaryIO, TypeVar

from buildtasks.docker import retry
from buildtasks.docker.dockerfile import registry_of
from buildtasks.engines import docker_config_dir
from buildtasks.errors import BuildtasksError
from buildtasks.shell import Shell

T = TypeVar("T")


class RegistryError(BuildtasksError):
    """The registry is unreachable, refuses us, or does not hold what was pushed."""


def registry_host(reference: str) -> str:
    """The registry part of an image reference (docker.io when there is none)."""
    return registry_of(reference) or "docker.io"


def canonical_repository(repository: str) -> str:
    """The repository's full name, as signatures name it (cosign's identity): Docker Hub's
    written out as index.docker.io, with library/ for its official images."""
    host = registry_of(repository)
    if host not in ("", "docker.io", "index.docker.io"):
        return repository
    path = repository[len(host) + 1 :] if host else repository
    return f"index.docker.io/{path if '/' in path else f'library/{path}'}"


def is_loopback(host: str) -> bool:
    """Whether a registry host (NAME, NAME:PORT or [V6]:PORT) is this machine: exactly
    localhost, an address in 127.0.0.0/8 or ::1; not a name that only starts like one
    (localhost.corp.com, 127.example.com)."""
    name = host
    if name.startswith("["):
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _api_host(host: str) -> str:
    return "registry-1.docker.io" if host == "docker.io" else host


def probe(host: str, timeout: float = 5.0) -> tuple[bool, bool, str]:
    """(reachable, needs_login, detail) from GET /v2/ (http too for loopback registries)."""
    api = _api_host(host)
    schemes = ["http", "https"] if is_loopback(api) else ["https"]
    reason = ""
    for scheme in schemes:
        try:
            _OPENER.open(f"{scheme}://{api}/v2/", timeout=timeout)
            return True, False, f"{scheme}://{api} answers"
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                return True, True, f"{scheme}://{api} answers (login required)"
            return False, False, f"{scheme}://{api} answers HTTP {exc.code} {exc.reason}"
        except (OSError, ValueError) as exc:
            reason = str(getattr(exc, "reason", exc))
    return False, False, f"{api} unreachable ({reason})"


def _docker_config() -> dict:
    try:
        config = json.loads((docker_config_dir(os.environ) / "config.json").read_text())
    except (OSError, ValueError, RecursionError):
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


def require_push_access(sh: Shell, policy: retry.Policy, reference: str) -> None:
    """One clear error before any build when the push cannot succeed (a registry that
    answers with a transient error is asked again, as policy allows)."""
    host = registry_host(reference)

    def answer():
        found = probe(host)
        if not found[0] and retry.kind(found[2]) == "transient":
            raise retry.Transient(f"registry {found[2]}")
        return found

    reachable, needs_login, detail = retry.attempt(sh, policy, f"reaching {host}", answer)
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
    return _object(result.stdout, f"the registry's answer for {reference}")


# Registries refuse manifests over 4 MiB; a larger answer is read no further.
MAX_DOCUMENT = 4 << 20


def _body(answer, where: str) -> bytes:
    body = answer.read(MAX_DOCUMENT + 1)
    if len(body) > MAX_DOCUMENT:
        raise RegistryError(f"{where}: the registry answered with over 4 MiB; not a manifest")
    return body


def _object(text: str | bytes, where: str) -> dict:
    """The JSON object text holds: the registry's answers are input, so anything else
    (including nesting too deep to parse) is one RegistryError."""
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        document = None
    if not isinstance(document, dict):
        raise RegistryError(f"{where} is not a JSON object")
    return document


def raw_manifest(sh: Shell, reference: str) -> dict:
    """The manifest (an index or an image manifest) the registry holds at reference, as it
    holds it: read once, then passed to what reads it."""
    return _inspect(sh, reference, "--raw")


def platforms(sh: Shell, reference: str, manifest: dict) -> list[str]:
    """Platforms the registry holds at reference, whose raw manifest is given: those of an
    index (attestation manifests left out), or the one of an image manifest, which its
    config blob names."""
    kind = manifest.get("mediaType", "")
    if kind in INDEX_TYPES or (not kind and "manifests" in manifest):
        return index_platforms(manifest)
    if kind in IMAGE_TYPES or (not kind and "config" in manifest):
        image_config = _inspect(sh, reference, "--format", "{{json .Image}}")
        return [platform_name(image_config, reference)]
    raise RegistryError(
        f"{reference} is a {kind or 'manifest of unknown type'}, not an image or an index"
    )


def require_promoted(sh: Shell, reference: str, verified: str) -> None:
    """Fail unless the tag reference holds the verified digest."""
    manifest = _inspect(sh, reference, "--format", "{{json .Manifest}}")
    digest = manifest.get("digest")
    if digest != verified:
        raise RegistryError(f"{reference} holds {digest}, not the verified {verified}")


def platform_digests(manifest: dict) -> dict[str, str]:
    """platform -> digest of each image manifest an index holds (attestations left out);
    {} for an image manifest."""
    found = {}
    for entry in manifest.get("manifests") or []:
        platform = index_platforms({"manifests": [entry]})
        digest = entry.get("digest")
        if platform and is_digest(digest):
            found[platform[0]] = digest
    return found


_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def is_digest(value: object) -> bool:
    """Whether value is a sha256 digest as the registry API writes one (answers are input)."""
    return isinstance(value, str) and bool(_DIGEST.fullmatch(value))


def repository_of(reference: str) -> str:
    """The repository of repository[:tag][@digest]."""
    name = reference.partition("@")[0]
    head, sep, tag = name.rpartition(":")
    return head if sep and "/" not in tag else name


def digest_of(sh: Shell, reference: str) -> str:
    """The digest the registry holds at reference (a tag or a digest)."""
    digest = _inspect(sh, reference, "--format", "{{json .Manifest}}").get("digest")
    if not is_digest(digest):
        raise RegistryError(f"the registry named no valid digest for {reference}")
    return digest


def provenance_of(sh: Shell, reference: str, manifest: dict) -> set[str]:
    """Digests of the images in the index at reference (repository@digest), whose raw
    manifest is given, that an attestation manifest in it gives an SLSA provenance
    statement."""
    repository = repository_of(reference)
    found = set()
    for entry in manifest.get("manifests") or []:
        annotations = entry.get("annotations") or {}
        subject, digest = annotations.get("vnd.docker.reference.digest"), entry.get("digest")
        if annotations.get("vnd.docker.reference.type") != "attestation-manifest":
            continue
        if not is_digest(digest):
            continue
        layers = _inspect(sh, f"{repository}@{digest}", "--raw").get("layers") or []
        types = {(layer.get("annotations") or {}).get("in-toto.io/predicate-type", "")
                 for layer in layers}  # fmt: skip
        if any(t.startswith("https://slsa.dev/provenance/") for t in types):
            found.add(subject)
    return found


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
    return f"{'http' if is_loopback(api) else 'https'}://{api}/v2"


def _basic_auth(host: str) -> str:
    auths = _docker_config().get("auths") or {}
    for name in _config_names(host):
        entry = auths.get(name)
        if isinstance(entry, dict) and isinstance(entry.get("auth"), str) and entry["auth"]:
            return f"Basic {entry['auth']}"
    return ""


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    return (
        parts.scheme,
        parts.hostname or "",
        parts.port or {"http": 80, "https": 443}.get(parts.scheme),
    )


class _SameOriginCredentials(urllib.request.HTTPRedirectHandler):
    """Redirects keep our credentials only on the origin they were sent to: registries send
    blob downloads to a CDN or object store (Docker Hub, GHCR, ECR), which must never get
    the login or token, and neither must a plain-http hop of an https registry."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        request = super().redirect_request(req, fp, code, msg, headers, newurl)
        if request is not None and _origin(request.full_url) != _origin(req.full_url):
            for name in ("Authorization", "Proxy-Authorization", "Cookie"):
                request.remove_header(name)
        return request


# Every request that may carry credentials goes through this one opener.
_OPENER = urllib.request.build_opener(_SameOriginCredentials)


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
    with _OPENER.open(request, timeout=30) as answer:
        body = _object(_body(answer, "token service"), "the token service's answer")
    token = body.get("token") or body.get("access_token")
    return f"Bearer {token}" if isinstance(token, str) and token else ""


def _call(
    host: str, method: str, path: str, data: bytes | None = None, content_type: str = ""
) -> urllib.response.addinfourl:
    """One registry API request, answering an authentication challenge once."""
    url = f"{_api_base(host)}{path}"
    headers = {"Accept": ", ".join(INDEX_TYPES + IMAGE_TYPES)}
    if content_type:
        headers["Content-Type"] = content_type
    try:
        return _OPENER.open(
            urllib.request.Request(url, data, method=method, headers=headers), timeout=30
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
    return _OPENER.open(
        urllib.request.Request(url, data, method=method, headers=headers), timeout=30
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
    if not is_digest(digest):
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
            listing = _object(answer.read(), f"the tag list of {host}/{path}")
            page = _next_page(answer.headers.get("Link", ""))
        tags = listing.get("tags")
        found += [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []
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


def tag_digest(sh: Shell, policy: retry.Policy, source: str, tags: list[str]) -> None:
    """Point each tag (repository:tag) at the manifest source (repository@digest) holds,
    byte for byte, so the tags carry that digest and the signatures made for it. Transient
    registry errors are retried as policy allows; an auth error fails at once."""
    repository, _, digest = source.rpartition("@")
    host, path, _ = split_reference(f"{repository}:x")
    body, media_type = _manifest(sh, policy, source)
    for reference in tags:
        tag_host, tag_path, tag = split_reference(reference)
        if (tag_host, tag_path) != (host, path):
            raise RegistryError(f"{reference} is not in {repository}; tags stay in one repository")
        if not sh.change(["PUT", f"{_api_base(host)}/{path}/manifests/{tag}", f"<{digest}>"]):
            continue
        _retried(sh, policy, f"tagging {reference}",
                 lambda t=tag: _put_manifest(host, path, t, body, media_type))  # fmt: skip


def _manifest(sh: Shell, policy: retry.Policy, source: str) -> tuple[bytes, str]:
    """(bytes, media type) of the manifest at source (repository@digest), checked against
    its digest."""
    repository, _, digest = source.rpartition("@")
    host, path, _ = split_reference(f"{repository}:x")

    def fetch() -> tuple[bytes, str]:
        with _call(host, "GET", f"/{path}/manifests/{digest}") as answer:
            return _body(answer, source), answer.headers.get("Content-Type", "")

    body, media_type = _retried(sh, policy, f"reading {source}", fetch)
    if "sha256:" + hashlib.sha256(body).hexdigest() != digest:
        raise RegistryError(f"the registry's manifest for {source} does not match its digest")
    return body, media_type


def manifest_at(sh: Shell, policy: retry.Policy, source: str) -> dict:
    """The manifest at source (repository@digest) as a JSON object, read over the registry
    API (no CLI process) and checked against its digest."""
    body, _ = _manifest(sh, policy, source)
    return _object(body, f"the registry's manifest at {source}")


def image_layers(sh: Shell, policy: retry.Policy, source: str) -> list[tuple[str, str]]:
    """(media type, digest) of each layer of the image manifest at source
    (repository@digest), bottom layer first."""
    manifest = manifest_at(sh, policy, source)
    kind = manifest.get("mediaType", "")
    if kind and kind not in IMAGE_TYPES:
        raise RegistryError(f"{source} is not an image manifest")
    layers = []
    for layer in manifest.get("layers") or []:
        digest = layer.get("digest") if isinstance(layer, dict) else None
        media_type = layer.get("mediaType") if isinstance(layer, dict) else None
        if not is_digest(digest):
            raise RegistryError(f"{source} names a layer without a valid digest")
        layers.append((media_type if isinstance(media_type, str) else "", digest))
    return layers


def tag_manifest(sh: Shell, policy: retry.Policy, repository: str, tag: str) -> dict | None:
    """The JSON object the registry holds at repository:tag (None when there is no such
    tag): an artifact to add to, whose contents the caller checks."""
    host, path, _ = split_reference(f"{repository}:x")

    def fetch() -> bytes | None:
        try:
            with _call(host, "GET", f"/{path}/manifests/{urllib.parse.quote(tag)}") as answer:
                return _body(answer, f"{repository}:{tag}")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    body = _retried(sh, policy, f"reading {repository}:{tag}", fetch)
    if body is None:
        return None
    return _object(body, f"the registry's manifest at {repository}:{tag}")


def put_artifact(
    sh: Shell, policy: retry.Policy, repository: str, tag: str, blobs: list[bytes],
    manifest: bytes, media_type: str,
) -> None:  # fmt: skip
    """Upload the blobs the registry lacks, then the manifest under tag (one change,
    skipped in a dry run); transient errors are retried as policy allows."""
    host, path, _ = split_reference(f"{repository}:x")
    url = f"{_api_base(host)}/{path}/manifests/{tag}"
    if not sh.change(["PUT", url, f"<{len(blobs)} blobs + manifest>"]):
        return
    for blob in blobs:
        digest = f"sha256:{hashlib.sha256(blob).hexdigest()}"
        _retried(sh, policy, f"uploading {digest} to {repository}",
                 lambda b=blob, d=digest: _upload(host, path, b, d))  # fmt: skip
    _retried(sh, policy, f"writing {repository}:{tag}",
             lambda: _put_manifest(host, path, tag, manifest, media_type))  # fmt: skip


def _put_manifest(host: str, path: str, tag: str, body: bytes, media_type: str) -> None:
    _call(host, "PUT", f"/{path}/manifests/{urllib.parse.quote(tag)}", body, media_type).close()


def _upload(host: str, path: str, blob: bytes, digest: str) -> None:
    """One blob pushed monolithically (POST, then PUT with its digest), unless the
    repository holds it already."""
    try:
        _call(host, "HEAD", f"/{path}/blobs/{digest}").close()
        return
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise
    with _call(host, "POST", f"/{path}/blobs/uploads/", b"") as started:
        location = started.headers.get("Location", "")
    base = _api_base(host)
    target = urllib.parse.urljoin(f"{base}/", location)
    if (
        not location
        or _origin(target) != _origin(base)
        or not urllib.parse.urlsplit(target).path.startswith("/v2/")
    ):
        raise RegistryError(f"registry {host} named no upload location on itself ({location!r})")
    parts = urllib.parse.urlsplit(target)
    query = urllib.parse.urlencode([*urllib.parse.parse_qsl(parts.query), ("digest", digest)])
    _call(host, "PUT", f"{parts.path[len('/v2') :]}?{query}", blob,
          "application/octet-stream").close()  # fmt: skip


class _Checked(io.RawIOBase):
    """A blob's bytes as they are read, hashed on the way (the registry is input)."""

    def __init__(self, answer):
        self._answer = answer
        self._hash = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = self._answer.readinto(buffer)
        self._hash.update(memoryview(buffer)[:count])
        return count

    def digest(self) -> str:
        """The digest of the whole blob (what consume left unread is read first)."""
        while self.read(1 << 20):
            pass
        return f"sha256:{self._hash.hexdigest()}"


def read_blob(sh: Shell, policy: retry.Policy, source: str, consume: Callable[[BinaryIO], T]) -> T:
    """consume(stream) over the blob at source (repository@digest), as the registry streams
    it; its result once the whole blob proves to match the digest (RegistryError when it
    does not). consume raises ValueError for content it cannot read. Transient registry
    errors are retried, consume's reading and all."""
    repository, _, digest = source.rpartition("@")
    host, path, _ = split_reference(f"{repository}:x")

    def fetch() -> T:
        with _call(host, "GET", f"/{path}/blobs/{digest}") as answer:
            stream = _Checked(answer)
            result = consume(io.BufferedReader(stream, 1 << 20))
            if stream.digest() != digest:
                raise RegistryError(f"the registry's blob {source} does not match its digest")
        return result

    return _retried(sh, policy, f"reading {source}", fetch)


def _retried(sh: Shell, policy: retry.Policy, what: str, request):
    """request() with transient failures retried; other failures one RegistryError."""

    def once():
        try:
            return request()
        except (OSError, ValueError, http.client.HTTPException) as exc:
            transient = retry.http_transient(exc)
            if transient:
                raise transient from None
            if isinstance(exc, urllib.error.HTTPError) and exc.code in (401, 403):
                raise RegistryError(
                    f"{what}: the registry refused us (HTTP {exc.code}); `docker login` to it"
                ) from None
            raise RegistryError(f"{what}: {getattr(exc, 'reason', exc)}") from None

    return retry.attempt(sh, policy, what, once)
