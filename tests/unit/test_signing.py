"""SBOM documents from image files, retry classification and policy, publish settings."""

from __future__ import annotations

import base64
import json
import urllib.error
from email.message import Message
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from buildtasks import config
from buildtasks.docker import registry, retry
from buildtasks.errors import BuildtasksError, ConfigError
from buildtasks.release import attest, inventory, sbom, signing
from buildtasks.release.attest import CYCLONEDX, _sbom_verdict
from buildtasks.runtime import Runtime
from buildtasks.shell import Shell
from tests.unit.test_sbom_layers import image, layer_tar

STATUS = b"""Package: bash
Status: install ok installed
Architecture: arm64
Version: 5.2.15-2+b2

Package: gone
Status: deinstall ok config-files
Architecture: arm64
Version: 1.0

Package: tzdata
Status: install ok installed
Architecture: all
Version: 2024a-0+deb12u1
"""

FILES = {
    "opt/venv/lib/python3.11/site-packages/grpcio-1.85.1.dist-info/METADATA":
        b"Metadata-Version: 2.1\nName: grpcio\nVersion: 1.85.1\n\nlong description\nName: no\n",
    "opt/venv/lib/python3.11/site-packages/Typing_Extensions-4.0.dist-info/METADATA":
        b"Name: Typing_Extensions\nVersion: 4.0\n",
    "usr/lib/python3/dist-packages/grpcio-1.85.1.dist-info/METADATA":
        b"Name: grpcio\nVersion: 1.85.1\n",
    # vendored inside a package: not an installed distribution
    "opt/venv/lib/python3.11/site-packages/setuptools/_vendor/packaging-24.0.dist-info/METADATA":
        b"Name: packaging\nVersion: 24.0\n",
    "var/lib/dpkg/status": STATUS,
}  # fmt: skip


def test_wanted_files():
    assert sbom.wanted("./var/lib/dpkg/status") and sbom.wanted("var/lib/dpkg/status.d/base")
    assert sbom.wanted("usr/lib/python3/dist-packages/x-1.dist-info/METADATA")
    assert not sbom.wanted("site-packages/setuptools/_vendor/p-1.dist-info/METADATA")
    assert not sbom.wanted("var/lib/dpkg/status-old")
    assert not sbom.wanted("app/site-packages/x-1.dist-info/RECORD")


def test_document_lists_installed_python_and_debian_packages():
    found = image(layer_tar(*FILES.items()))
    bom = sbom.document(found, image="reg/app", version="1.2.0", digest="sha256:ab",
                        platform="linux/arm64", tool_version="9", timestamp="T")  # fmt: skip
    assert bom["bomFormat"] == "CycloneDX" and bom["specVersion"] == "1.5"
    assert bom["metadata"]["component"]["bom-ref"] == "reg/app@sha256:ab"
    purls = [c["purl"] for c in bom["components"]]
    assert purls == [
        "pkg:pypi/grpcio@1.85.1",
        "pkg:pypi/typing-extensions@4.0",
        "pkg:pypi/grpcio@1.85.1",
        "pkg:deb/debian/bash@5.2.15-2%2Bb2?arch=arm64",
        "pkg:deb/debian/tzdata@2024a-0%2Bdeb12u1?arch=all",
    ]
    refs = [c["bom-ref"] for c in bom["components"]]
    assert len(set(refs)) == len(refs)  # the second grpcio is told apart by its location
    assert refs[2] == "pkg:pypi/grpcio@1.85.1#/usr/lib/python3/dist-packages"
    assert bom["components"][0]["properties"] == [
        {"name": "buildtasks:location", "value": "/opt/venv/lib/python3.11/site-packages"}
    ]


@pytest.mark.parametrize(("text", "expected"), [
    ("unexpected status from PUT request to http://r/v2/x: 503 Service Unavailable",
     "transient"),
    ("failed to do request: Put \"https://r\": read: connection reset by peer", "transient"),
    ("unexpected status: 429 Too Many Requests", "transient"),
    ("PUT http://r/v2/x/manifests/sha256-1.sig: TOOMANYREQUESTS: too many requests",
     "transient"),
    ("unexpected status from PUT request to http://r/v2/x: 401 Unauthorized", "auth"),
    ("denied: requested access to the resource is denied", "auth"),
    ("PUT http://r/v2/x: UNAUTHORIZED: authentication required", "auth"),
    ("failed to solve: process \"/bin/sh -c false\" did not complete successfully", ""),
])  # fmt: skip
def test_kind_of_registry_errors(text, expected):
    assert retry.kind(text) == expected


def test_attempt_retries_transient_failures_within_the_bound(capsys):
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise retry.Transient("HTTP 503")
        return "done"

    assert retry.attempt(Shell(), retry.Policy(4, 0), "pushing x", flaky) == "done"
    assert len(calls) == 3
    assert "pushing x: HTTP 503; retry 2 of 4 in 0s" in capsys.readouterr().err

    def down():
        calls.append(1)
        raise retry.Transient("HTTP 503")

    calls.clear()
    with pytest.raises(BuildtasksError, match=r"pushing x failed after 3 attempts: HTTP 503"):
        retry.attempt(Shell(), retry.Policy(2, 0), "pushing x", down)
    assert len(calls) == 3


def test_http_errors_transient_only_for_5xx_429_and_resets():
    headers = Message()
    headers["Retry-After"] = "7"
    limited = retry.http_transient(urllib.error.HTTPError("u", 429, "Too Many", headers, None))
    assert limited and limited.retry_after == 7
    assert retry.http_transient(urllib.error.HTTPError("u", 502, "Bad", Message(), None))
    assert retry.http_transient(urllib.error.HTTPError("u", 401, "No", Message(), None)) is None
    assert retry.http_transient(urllib.error.URLError(ConnectionResetError(104, "reset")))
    assert retry.http_transient(urllib.error.URLError(ConnectionRefusedError())) is None


def test_repository_of():
    assert registry.repository_of("127.0.0.1:5000/a/b:1.0") == "127.0.0.1:5000/a/b"
    assert registry.repository_of("127.0.0.1:5000/a/b") == "127.0.0.1:5000/a/b"
    assert registry.repository_of("r:5000/a@sha256:00") == "r:5000/a"
    assert registry.repository_of("r:5000/a:t@sha256:00") == "r:5000/a"


@pytest.mark.parametrize(("table", "error"), [
    ({"sign": "gpg"}, "publish.sign must be '' or 'cosign'"),
    ({"provenance": "full"}, "publish.provenance must be"),
    ({"retries": 50}, "publish.retries must be an integer from 0 to 20"),
    ({"key": "env://1X"}, "publish.key: the value names no variable after env://"),
    ({"key": "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nabc"},
     "publish.key: the value holds a key, not where to find one"),
])  # fmt: skip
def test_publish_settings_errors_name_the_key_and_never_echo_a_key(table, error):
    with pytest.raises(ConfigError) as caught:
        config.parse({"image": "r/x", "env_files": [], "publish": table}, root=Path("/tmp"))
    assert error in str(caught.value)
    assert "abc" not in str(caught.value) and "\n" not in str(caught.value)


def test_publish_defaults_sign_nothing_and_attach_provenance():
    settings = config.parse({"image": "r/x", "env_files": []}, root=Path("/tmp"))
    assert settings.publish.sign == "" and settings.publish.provenance == "min"
    assert retry.Policy.of(settings) == retry.Policy(4, 2.0)


DIGEST = "sha256:" + "d" * 64


def envelope(statement: object) -> str:
    """A line of verify-attestation: a DSSE envelope carrying statement."""
    payload = base64.b64encode(json.dumps(statement).encode()).decode()
    return json.dumps({"payloadType": "application/vnd.in-toto+json", "payload": payload})


def statement(subject: list | object = None, platform: str = "linux/arm64", **predicate) -> dict:
    bom = {
        "bomFormat": "CycloneDX",
        "metadata": {"component": {"properties": [
            {"name": "buildtasks:platform", "value": platform}]}},
        "components": [{"name": "bash"}, {"name": "tzdata"}],
        **predicate,
    }  # fmt: skip
    return {
        "predicateType": CYCLONEDX,
        "subject": [{"digest": {"sha256": "d" * 64}}] if subject is None else subject,
        "predicate": bom,
    }


def verdict(*lines: str) -> tuple[bool, str]:
    return _sbom_verdict("\n".join(lines), DIGEST, "linux/arm64")


def test_the_sbom_verdict_accepts_this_images_cyclonedx_sbom():
    assert verdict(envelope(statement())) == (True, "2 components")
    other = statement(subject=[{"digest": {"sha256": "e" * 64}}])
    assert verdict(envelope(other), envelope(statement(components=[]))) == (True, "0 components")


def test_the_sbom_verdict_names_a_document_of_another_platform_or_format():
    wrong = (False, "the attested document is not this image's CycloneDX SBOM")
    assert verdict(envelope(statement(platform="linux/amd64"))) == wrong
    assert verdict(envelope(statement(bomFormat="SPDX"))) == wrong


@pytest.mark.parametrize(
    "line",
    [
        envelope(statement(subject=[])),  # no subject: about nothing
        envelope(statement(subject="sha256:" + "d" * 64)),
        envelope(statement(subject=[{"digest": {"sha256": "e" * 64}}])),
        envelope({**statement(), "predicateType": "https://slsa.dev/provenance/v1"}),
        envelope(["not", "a", "statement"]),
        "not json",
        json.dumps({"payload": "%%%"}),
        json.dumps({"payload": 5}),
        "",
    ],
)
def test_the_sbom_verdict_finds_no_statement_in_an_empty_foreign_or_malformed_one(line):
    assert verdict(line) == (False, "no CycloneDX statement about this digest")


@pytest.mark.parametrize(
    "predicate",
    [
        {"metadata": "x"},
        {"metadata": {"component": {"properties": ["x", 3]}}},
        {"metadata": {"component": {"properties": "x"}}},
        {"metadata": {"component": {"properties": [{"name": ["x"], "value": "y"}]}}},
        {"components": 7},
    ],
)
def test_the_sbom_verdict_of_a_malformed_predicate_is_a_verdict_not_a_traceback(predicate):
    ok, _ = verdict(envelope(statement(**predicate)))
    assert ok is ("components" not in predicate)


def test_an_attestation_whose_predicate_is_not_a_mapping_is_not_this_images_sbom():
    line = envelope({**statement(), "predicate": ["x"]})
    assert verdict(line) == (False, "the attested document is not this image's CycloneDX SBOM")


def _signing_runtime(
    tmp_path, monkeypatch, held: dict | None, sbom: bool = False
) -> tuple[Runtime, list]:
    """A runtime signing for 127.0.0.1:5000/app whose registry holds `held` at every
    signature tag; what would be written is collected instead."""
    (tmp_path / "pyproject.toml").write_text(
        '[tool.buildtasks]\nimage = "127.0.0.1:5000/app"\n[tool.buildtasks.targets.web]\n'
        '[tool.buildtasks.publish]\nsign = "cosign"\nkey = "cosign.key"\n'
        f"sbom = {str(sbom).lower()}\n"
    )
    written = []
    monkeypatch.setattr(registry, "put_artifact", lambda *args: written.append(args))
    monkeypatch.setattr(registry, "tag_manifest", lambda *args: held)
    return Runtime(config.load(tmp_path)), written


def test_an_image_whose_packages_cannot_be_read_is_not_signed(tmp_path, monkeypatch):
    rt, written = _signing_runtime(tmp_path, monkeypatch, None, sbom=True)

    def unreadable(*args):
        raise BuildtasksError("reading 127.0.0.1:5000/app@sha256:… failed: 503 after 3 tries")

    monkeypatch.setattr(inventory, "packages", unreadable)
    manifest = {
        "mediaType": registry.INDEX_TYPES[0],
        "manifests": [
            {"digest": "sha256:" + "a" * 64, "platform": {"os": "linux", "architecture": "amd64"}}
        ],
    }
    signer = signing.Signer(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(BuildtasksError, match="503"):
        attest.sign_pushed(rt, "127.0.0.1:5000/app@sha256:" + "b" * 64, signer, manifest)
    assert written == []  # no signature, no attestation


def test_an_index_naming_no_platform_image_by_a_valid_digest_is_one_error():
    manifest = {"mediaType": registry.INDEX_TYPES[0], "manifests": [
        {"digest": "sha256:short", "platform": {"os": "linux", "architecture": arch}}
        for arch in ("amd64", "arm64")]}  # fmt: skip
    with pytest.raises(registry.RegistryError, match="names no platform image by a valid"):
        attest.images_of(Shell(), "127.0.0.1:5000/app@sha256:" + "b" * 64, manifest)


ONE_IMAGE = {"mediaType": registry.IMAGE_TYPES[0], "config": {}, "layers": []}


def test_a_signature_tag_cosign_wrote_with_docker_media_types_keeps_them(tmp_path, monkeypatch):
    theirs = {"mediaType": signing.DOCKER_MANIFEST, "layers": [{
        "mediaType": signing.SIMPLE_SIGNING, "size": 3, "digest": "sha256:" + "c" * 64,
        "annotations": {signing.SIGNATURE_ANNOTATION: "c2ln"}}]}  # fmt: skip
    rt, written = _signing_runtime(tmp_path, monkeypatch, theirs)
    signer = signing.Signer(ec.generate_private_key(ec.SECP256R1()))
    monkeypatch.setattr(registry, "platforms", lambda *args: ["linux/amd64"])
    attest.sign_pushed(rt, "127.0.0.1:5000/app@sha256:" + "b" * 64, signer, ONE_IMAGE)
    (call,) = written
    *_, manifest, media_type = call
    document = json.loads(manifest)
    assert media_type == document["mediaType"] == signing.DOCKER_MANIFEST
    assert document["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    assert document["layers"][0] == theirs["layers"][0]  # the other signer's stays
    assert len(document["layers"]) == 2


@pytest.mark.parametrize("held", [
    {"mediaType": registry.INDEX_TYPES[0], "manifests": []},
    {"mediaType": ["x"] * 3, "layers": []},
    {"mediaType": signing.OCI_MANIFEST, "layers": "not a list"},
])  # fmt: skip
def test_a_signature_tag_holding_another_kind_of_manifest_is_one_error(tmp_path, monkeypatch, held):
    rt, written = _signing_runtime(tmp_path, monkeypatch, held)
    signer = signing.Signer(ec.generate_private_key(ec.SECP256R1()))
    monkeypatch.setattr(registry, "platforms", lambda *args: ["linux/amd64"])
    with pytest.raises(registry.RegistryError, match="not a signature artifact"):
        attest.sign_pushed(rt, "127.0.0.1:5000/app@sha256:" + "b" * 64, signer, ONE_IMAGE)
    assert written == []


@pytest.mark.parametrize(("repository", "identity"), [
    ("org/app", "index.docker.io/org/app"),
    ("busybox", "index.docker.io/library/busybox"),
    ("docker.io/org/app", "index.docker.io/org/app"),
    ("docker.io/busybox", "index.docker.io/library/busybox"),
    ("index.docker.io/org/app", "index.docker.io/org/app"),
    ("127.0.0.1:5000/org/app", "127.0.0.1:5000/org/app"),
    ("localhost/app", "localhost/app"),
    ("ghcr.io/org/app", "ghcr.io/org/app"),
])  # fmt: skip
def test_signatures_name_the_repository_as_cosign_does(repository, identity):
    assert registry.canonical_repository(repository) == identity


@pytest.mark.parametrize("answer", [b"[" * 100_000, b'{"a":' * 100_000, b"\xff", b"[]", b"3"])
def test_registry_answers_that_are_no_json_object_are_one_error(answer):
    with pytest.raises(registry.RegistryError, match="is not a JSON object"):
        registry._object(answer, "the answer")


def test_a_registry_answer_over_the_manifest_limit_is_refused_unread():
    class Endless:
        def read(self, size=-1):
            return b" " * size

    with pytest.raises(registry.RegistryError, match="over 4 MiB"):
        registry._body(Endless(), "127.0.0.1:5000/app:x")


def test_a_docker_hub_image_is_signed_under_the_name_cosign_gives_it(tmp_path, monkeypatch):
    rt, written = _signing_runtime(tmp_path, monkeypatch, None)
    signer = signing.Signer(ec.generate_private_key(ec.SECP256R1()))
    monkeypatch.setattr(registry, "platforms", lambda *args: ["linux/amd64"])
    attest.sign_pushed(rt, "org/app@sha256:" + "b" * 64, signer, ONE_IMAGE)
    (call,) = written
    payload = json.loads(call[4][0])  # the signature layer's blob
    assert payload["critical"]["identity"]["docker-reference"] == "index.docker.io/org/app"
    assert call[2] == "org/app"  # written where the image is, as configured
