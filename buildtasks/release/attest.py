"""cosign: every pushed digest signed by digest (each platform image and the index), a
CycloneDX SBOM per platform image attached as a signed attestation, and all of it verified
against the public key. Key-based and offline: nothing is uploaded to a transparency log
(`--tlog-upload=false`; verification passes `--insecure-ignore-tlog`), Fulcio is never
asked, and registries on loopback are spoken to over plain http (`--allow-http-registry`).
The key's password reaches cosign as COSIGN_PASSWORD in its environment, never in argv."""

from __future__ import annotations

import base64
import binascii
import json
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from buildtasks.config import Settings
from buildtasks.docker import registry, retry
from buildtasks.errors import BuildtasksError
from buildtasks.release import inventory, sbom
from buildtasks.runtime import Runtime
from buildtasks.shell import Shell
from buildtasks.version import __version__

PASSWORD = "COSIGN_PASSWORD"
CYCLONEDX = "https://cyclonedx.org/bom"


class SigningError(BuildtasksError):
    """The signing key cannot be used, or cosign refused."""


def _key(settings: Settings, key: str) -> str:
    """A key as cosign takes it: env://VAR as is, a path resolved against the project."""
    return key if key.startswith("env://") else str(settings.root / key)


def _http(reference: str) -> list[str]:
    loopback = registry.is_loopback(registry.registry_host(reference))
    return ["--allow-http-registry"] if loopback else []


def signing_problems(settings: Settings, sh: Shell) -> list[str]:
    """Why the configured key cannot sign, found by signing and verifying a blob (nothing
    is uploaded); [] when it can or signing is off."""
    publish = settings.publish
    if publish.sign != "cosign":
        return []
    if not shutil.which("cosign"):
        return ["cosign not found; install it (bash scripts/install-cosign) or set publish.sign"]
    problems = []
    for name, key in (("key", publish.key), ("public_key", publish.public_key)):
        if not key.startswith("env://") and not (settings.root / key).is_file():
            problems.append(
                f"publish.{name}: {key} does not exist; `cosign generate-key-pair` makes a pair"
            )
        elif key.startswith("env://") and not settings.environment.get(key[6:]):
            problems.append(f"publish.{name}: ${key[6:]} is not set")
    if PASSWORD not in settings.environment:
        problems.append(f"{PASSWORD} is not set; cosign needs the signing key's password from it")
    if problems:
        return problems
    with tempfile.TemporaryDirectory(prefix="buildtasks-sign-") as tmp:
        blob, signature = Path(tmp, "blob"), Path(tmp, "blob.sig")
        blob.write_text("buildtasks signing check\n")
        signed = sh.run(["cosign", "sign-blob", "--key", _key(settings, publish.key),
                         "--tlog-upload=false", "--yes", "--output-signature", str(signature),
                         str(blob)], query=True, check=False, input="")  # fmt: skip
        if signed.returncode != 0:
            return [f"the signing key {publish.key} cannot sign ({_reason(sh, signed)}); "
                    f"check {PASSWORD}"]  # fmt: skip
        verified = sh.run(["cosign", "verify-blob", "--key", _key(settings, publish.public_key),
                           "--insecure-ignore-tlog", "--signature", str(signature), str(blob)],
                          query=True, check=False)  # fmt: skip
        if verified.returncode != 0:
            return [f"publish.public_key {publish.public_key} does not verify what "
                    f"{publish.key} signs; configure the matching pair"]  # fmt: skip
    return []


def require_signing(rt: Runtime) -> None:
    problems = signing_problems(rt.settings, rt)
    if problems:
        raise SigningError(f"cannot sign: {'; '.join(problems)}; nothing was built")


def _reason(sh: Shell, result) -> str:
    lines = [line for line in sh.redacted(result.stderr).splitlines() if line.strip()]
    if not lines:
        return f"exit {result.returncode}"
    return lines[-1].removeprefix("Error: ").removeprefix("error during command execution: ")


def images_of(sh: Shell, reference: str, manifest: dict) -> dict[str, str]:
    """platform -> digest of the platform images at reference (repository@digest), whose
    raw manifest is given: the entries of an index, or the image manifest itself."""
    found = registry.platform_digests(manifest)
    if found:
        return found
    named = registry.platforms(sh, reference, manifest)
    if len(named) != 1:  # an index whose entries carry no valid digest
        raise registry.RegistryError(f"{reference} names no platform image by a valid digest")
    return {named[0]: reference.rpartition("@")[2]}


def sign_pushed(rt: Runtime, reference: str, manifest: dict | None = None) -> None:
    """Attach a signed SBOM to each platform image at reference (repository@digest; its raw
    manifest when the caller read it already), the platforms side by side, while one
    cosign call signs every platform image and the index, each by digest, once the SBOMs'
    contents are read (signatures and attestations are separate artifacts, so neither waits
    for the other); nothing when signing is off."""
    settings, sh = rt.settings, rt
    publish = settings.publish
    if publish.sign != "cosign":
        return
    policy = retry.Policy.of(settings)
    repository, _, digest = reference.rpartition("@")
    images = images_of(sh, reference, manifest or registry.raw_manifest(sh, reference))
    key = ["--key", _key(settings, publish.key), "--tlog-upload=false", "--yes", *_http(reference)]
    signed = [f"{repository}@{d}" for d in dict.fromkeys([*images.values(), digest])]

    def attach(platform: str, image: str, found: sbom.Found, tmp: str) -> None:
        bom = sbom.document(
            found, image=repository, version=settings.version, digest=image, platform=platform,
            tool_version=__version__, timestamp=datetime.now(UTC).isoformat(),
        )  # fmt: skip
        predicate = Path(tmp, f"{image.replace(':', '-')}.cdx.json")
        if not sh.dry:
            predicate.write_text(json.dumps(bom))
        argv = ["cosign", "attest", *key, "--replace", "--type", "cyclonedx",
                "--predicate", str(predicate), f"{repository}@{image}"]  # fmt: skip
        retry.run(sh, policy, f"attesting the SBOM of {repository}@{image}", argv, input="")

    # What the SBOMs list is read first: an image whose packages cannot be read is not signed.
    found = inventory.packages(rt, policy, repository, images) if publish.sbom else {}
    with (
        tempfile.TemporaryDirectory(prefix="buildtasks-sbom-") as tmp,
        ThreadPoolExecutor(len(images) + 1) as pool,
    ):
        what = f"signing {len(signed)} digests of {repository}"
        running = [pool.submit(retry.run, sh, policy, what, ["cosign", "sign", *key, *signed],
                               input="")]  # fmt: skip
        running += [pool.submit(attach, p, images[p], found[p], tmp) for p in found]
        for done in running:
            done.result()


@dataclass(frozen=True)
class Check:
    what: str
    ok: bool
    detail: str = ""


def verify(rt: Runtime, reference: str, platforms: tuple[str, ...]) -> tuple[str, list[Check]]:
    """(repository@digest, checks) for the image at reference (a tag or a digest): the
    platforms, the signature of the index and of every platform image, the provenance and
    the SBOM attestation of every platform image."""
    settings, sh = rt.settings, rt
    publish = settings.publish
    public_key = publish.public_key
    if not shutil.which("cosign"):
        raise SigningError("cosign not found; install it (bash scripts/install-cosign)")
    if not public_key.startswith("env://") and not (settings.root / public_key).is_file():
        raise SigningError(
            f"publish.public_key: {public_key} does not exist; configure the signer's public key"
        )
    repository = registry.repository_of(reference)
    digest = registry.digest_of(sh, reference)
    pinned = f"{repository}@{digest}"
    manifest = registry.raw_manifest(sh, pinned)  # read once: the platforms and provenance
    images = images_of(sh, pinned, manifest)
    checks = [
        Check(
            "platforms",
            sorted(images) == sorted(platforms),
            f"holds {', '.join(sorted(images))}; expected {', '.join(sorted(platforms))}",
        )
    ]
    public = ["--key", _key(settings, public_key), "--insecure-ignore-tlog", *_http(pinned)]
    for signed in dict.fromkeys([digest, *images.values()]):
        result = sh.run(["cosign", "verify", *public, f"{repository}@{signed}"],
                        query=True, check=False)  # fmt: skip
        ok = result.returncode == 0
        checks.append(Check(f"signature {signed}", ok, "" if ok else _reason(sh, result)))
    if publish.provenance != "off":
        found = registry.provenance_of(sh, pinned, manifest)
        for platform, image in images.items():
            ok = image in found
            checks.append(Check(f"provenance {platform}", ok, "" if ok else "none attached"))
    if publish.sbom:
        for platform, image in images.items():
            checks.append(_sbom_check(sh, public, f"{repository}@{image}", platform))
    return pinned, checks


def _sbom_check(sh: Shell, public: list[str], reference: str, platform: str) -> Check:
    """The CycloneDX attestation of one platform image: signed with the key, about this
    digest and platform (an image without packages has an empty list)."""
    what = f"sbom {platform}"
    result = sh.run(["cosign", "verify-attestation", *public, "--type", "cyclonedx", reference],
                    query=True, check=False)  # fmt: skip
    if result.returncode != 0:
        return Check(what, False, _reason(sh, result))
    ok, detail = _sbom_verdict(result.stdout, reference.rpartition("@")[2], platform)
    return Check(what, ok, detail)


def _sbom_verdict(output: str, digest: str, platform: str) -> tuple[bool, str]:
    """(ok, detail) of what verify-attestation printed for the image at digest: whether a
    CycloneDX statement about it holds this platform's SBOM, with how many components it
    lists, or what is wrong. The documents are untrusted: any shape gives a verdict."""
    for line in output.splitlines():
        statement = _statement(line)
        subjects = statement.get("subject")
        first = _mapping(subjects[0]) if isinstance(subjects, list) and subjects else {}
        about = _mapping(first.get("digest")).get("sha256")
        if statement.get("predicateType") != CYCLONEDX or f"sha256:{about}" != digest:
            continue
        predicate = _mapping(statement.get("predicate"))
        component = _mapping(_mapping(predicate.get("metadata")).get("component"))
        properties = component.get("properties") or []
        named = {
            p.get("name"): p.get("value")
            for p in (properties if isinstance(properties, list) else ())
            if isinstance(p, dict) and isinstance(p.get("name"), str)
        }
        components = predicate.get("components") or []
        if (
            predicate.get("bomFormat") != "CycloneDX"
            or named.get("buildtasks:platform") not in (platform, None)
            or not isinstance(components, list)
        ):
            return False, "the attested document is not this image's CycloneDX SBOM"
        return True, f"{len(components)} components"
    return False, "no CycloneDX statement about this digest"


def _mapping(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _statement(line: str) -> dict:
    """The in-toto statement a DSSE envelope line of verify-attestation carries ({} if none)."""
    try:
        envelope = json.loads(line)
        statement = json.loads(base64.b64decode(envelope.get("payload", "")))
    except (ValueError, TypeError, AttributeError, binascii.Error):
        return {}
    return statement if isinstance(statement, dict) else {}
