"""Signing: every pushed digest signed by digest (each platform image and the index), a
CycloneDX SBOM per platform image attached as a signed attestation, in cosign's formats
(signing.py makes them in this process, with the key decrypted once), and all of it
verified with cosign against the public key. Key-based and offline: nothing goes to a
transparency log (verification passes `--insecure-ignore-tlog`), Fulcio is never asked,
and registries on loopback are spoken to over plain http (`--allow-http-registry`). The
key's password is read from COSIGN_PASSWORD and never leaves this process."""

from __future__ import annotations

import base64
import binascii
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

from buildtasks.config import Settings
from buildtasks.docker import registry, retry
from buildtasks.release import inventory, sbom, signing
from buildtasks.release.signing import Signer, SigningError
from buildtasks.runtime import Runtime
from buildtasks.shell import Shell
from buildtasks.version import __version__

PASSWORD = "COSIGN_PASSWORD"
CYCLONEDX = "https://cyclonedx.org/bom"


def _key(settings: Settings, key: str) -> str:
    """A key as cosign takes it: env://VAR as is, a path resolved against the project."""
    return key if key.startswith("env://") else str(settings.root / key)


def _http(reference: str) -> list[str]:
    loopback = registry.is_loopback(registry.registry_host(reference))
    return ["--allow-http-registry"] if loopback else []


def _key_text(settings: Settings, name: str, key: str) -> str:
    """The PEM text of publish.<name>: the variable env://VAR names, or the file."""
    if key.startswith("env://"):
        return settings.environment.get(key[6:], "")
    try:
        return (settings.root / key).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SigningError(f"publish.{name}: cannot read {key} ({exc})") from None


def signing_key(settings: Settings) -> tuple[Signer | None, list[str]]:
    """(the key that signs, decrypted and checked against publish.public_key, []) or (None,
    why it cannot); (None, []) when signing is off."""
    publish = settings.publish
    if publish.sign != "cosign":
        return None, []
    problems = []
    for name, key in (("key", publish.key), ("public_key", publish.public_key)):
        if not key.startswith("env://") and not (settings.root / key).is_file():
            problems.append(
                f"publish.{name}: {key} does not exist; `cosign generate-key-pair` makes a pair"
            )
        elif key.startswith("env://") and not settings.environment.get(key[6:]):
            problems.append(f"publish.{name}: ${key[6:]} is not set")
    if PASSWORD not in settings.environment:
        problems.append(f"{PASSWORD} is not set; it holds the signing key's password")
    if problems:
        return None, problems
    try:
        signer = signing.load_key(
            _key_text(settings, "key", publish.key), settings.environment[PASSWORD],
            f"publish.key {publish.key}",
        )  # fmt: skip
        public = _key_text(settings, "public_key", publish.public_key)
    except SigningError as exc:
        return None, [str(exc)]
    if not signer.matches(public):
        return None, [f"publish.public_key {publish.public_key} is not the public half of "
                      f"{publish.key}; configure the matching pair"]  # fmt: skip
    return signer, []


def signing_problems(settings: Settings) -> list[str]:
    """Why the configured key cannot sign ([] when it can or signing is off)."""
    return signing_key(settings)[1]


def require_signing(rt: Runtime) -> Signer | None:
    """The key that signs (None when signing is off); SigningError when it cannot."""
    signer, problems = signing_key(rt.settings)
    if problems:
        raise SigningError(f"cannot sign: {'; '.join(problems)}; nothing was built")
    return signer


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


def sign_pushed(
    rt: Runtime, reference: str, signer: Signer | None, manifest: dict | None = None
) -> None:
    """Sign every platform image at reference (repository@digest; its raw manifest when
    the caller read it already) and the index, each by digest, and attach a signed SBOM
    to each platform image, once the SBOMs' contents are read; nothing without a signer
    (signing off)."""
    if signer is None:
        return
    settings, sh = rt.settings, rt
    policy = retry.Policy.of(settings)
    repository, _, digest = reference.rpartition("@")
    images = images_of(sh, reference, manifest or registry.manifest_at(sh, policy, reference))
    # What the SBOMs list is read first: an image whose packages cannot be read is not signed.
    found = inventory.packages(rt, policy, repository, images) if settings.publish.sbom else {}
    timestamp = datetime.now(UTC).isoformat()
    identity = registry.canonical_repository(repository)  # the name cosign signs with

    def sign(image: str) -> None:
        layer = signing.image_signature(signer, identity, image)
        tag = signing.artifact_tag(image, "sig")
        held, kind = _held(sh, policy, repository, tag)
        if not any(_signed_by(signer, layer, held_layer) for held_layer in held):
            _write(sh, policy, repository, tag, [*held, layer.descriptor()], layer.body, kind)

    def attach(platform: str) -> None:
        image = images[platform]
        bom = sbom.document(
            found[platform], image=repository, version=settings.version, digest=image,
            platform=platform, tool_version=__version__, timestamp=timestamp,
        )  # fmt: skip
        layer = signing.attestation(signer, identity, image, CYCLONEDX, bom)
        tag = signing.artifact_tag(image, "att")
        held, kind = _held(sh, policy, repository, tag)
        # the image's SBOM replaces any earlier one, as `cosign attest --replace` does
        kept = [h for h in held if h.get("annotations", {}).get("predicateType") != CYCLONEDX]
        _write(sh, policy, repository, tag, [*kept, layer.descriptor()], layer.body, kind)

    signed = list(dict.fromkeys([*images.values(), digest]))
    with ThreadPoolExecutor(len(signed) + len(found)) as pool:
        running = [pool.submit(sign, image) for image in signed]
        running += [pool.submit(attach, platform) for platform in found]
        for done in running:
            done.result()


def _held(sh: Shell, policy: retry.Policy, repository: str, tag: str) -> tuple[list[dict], str]:
    """(layer descriptors, manifest media type) of the signature or attestation artifact at
    repository:tag (none, OCI, when there is none), well-formed layers only: the registry's
    answer is input. Other signers' layers are kept, in the media type they chose."""
    manifest = registry.tag_manifest(sh, policy, repository, tag)
    if manifest is None:
        return [], signing.OCI_MANIFEST
    kind, layers = manifest.get("mediaType", signing.OCI_MANIFEST), manifest.get("layers")
    if (
        not isinstance(kind, str)
        or kind not in signing.ARTIFACT_CONFIG
        or not isinstance(layers, list)
    ):
        raise registry.RegistryError(
            f"{repository}:{tag} holds {str(kind)[:80]}, not a signature artifact; "
            "buildtasks adds signatures to no other kind of manifest"
        )
    return [
        layer
        for layer in layers
        if isinstance(layer, dict)
        and isinstance(layer.get("mediaType"), str)
        and isinstance(layer.get("size"), int)
        and registry.is_digest(layer.get("digest"))
        and isinstance(layer.get("annotations", {}), dict)
    ], kind


def _signed_by(signer: Signer, layer: signing.Layer, held: dict) -> bool:
    """Whether a held signature layer is this payload signed with this key already."""
    try:
        signature = base64.b64decode(held["annotations"][signing.SIGNATURE_ANNOTATION])
    except (KeyError, TypeError, ValueError, binascii.Error):
        return False
    return held["digest"] == layer.digest and signer.verifies(layer.body, signature)


def _write(
    sh: Shell, policy: retry.Policy, repository: str, tag: str, layers: list[dict], body: bytes,
    kind: str,
) -> None:  # fmt: skip
    config, manifest = signing.artifact(layers, kind)
    registry.put_artifact(sh, policy, repository, tag, [body, config], manifest, kind)


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
