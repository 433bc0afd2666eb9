"""Signed, attested releases against the machine's registry: cosign signatures by digest,
a CycloneDX SBOM attestation checked against `pip list` in the image, provenance, promoted
tags on the staged digest, `inv verify`; retries through a fault-injecting proxy."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import threading
import urllib.request
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from buildtasks import config
from buildtasks.docker import retry
from buildtasks.platforms import native
from buildtasks.release import attest, inventory, sbom
from buildtasks.runtime import Runtime
from tests.conftest import remove_images, run_cli, run_once
from tests.faultproxy import Fault, FaultProxy
from tests.integration.test_release import (
    IDENTITY,
    LOCAL_REGISTRY,
    delete_repository,
    git,
    platform_digests,
    raw_manifest,
    release_project,
    small_project,
    tags_of,
)

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery staple"  # the test key's password


def key_pair(directory: Path, password: str = PASSWORD) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "COSIGN_PASSWORD": password}
    subprocess.run(["cosign", "generate-key-pair"], cwd=directory, check=True,
                   capture_output=True, env=env)  # fmt: skip
    return directory / "cosign.key", directory / "cosign.pub"


def publish_table(keys: tuple[Path, Path], **extra) -> str:
    lines = ['sign = "cosign"', f'key = "{keys[0]}"', f'public_key = "{keys[1]}"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    return "\n[tool.buildtasks.publish]\n" + "\n".join(lines) + "\n"


def add_config(project: Path, text: str) -> None:
    """Append to the project's pyproject.toml, commit and push it."""
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + text)
    git(project, "commit", "--quiet", "-am", "publish settings")
    git(project, "push", "--quiet", "origin", "main")


def cosign(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["cosign", *args, "--insecure-ignore-tlog", "--allow-http-registry"],
                          capture_output=True, text=True)  # fmt: skip


class ArgvWatch:
    """Scans every process's argv (/proc/*/cmdline) while a release runs, for a secret."""

    def __init__(self, secret: str):
        self.secret, self.hits, self.scans = secret.encode(), [], 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._scan, daemon=True)
        self.thread.start()

    def _scan(self):
        while not self.done.wait(0.02):
            self.scans += 1
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    if self.secret in cmdline.read_bytes():
                        self.hits.append(cmdline.read_bytes())
                except OSError:
                    pass

    def stop(self):
        self.done.set()
        self.thread.join()


@pytest.fixture(scope="module")
def signed(engine, tmp_path_factory):
    """One signed two-platform release of the example, shared by the tests below (arm64
    builds under QEMU: too slow to repeat). Its repository is deleted afterwards."""
    tmp = tmp_path_factory.mktemp("signed")
    prefix = f"{LOCAL_REGISTRY}/test-{uuid.uuid4().hex[:8]}"
    keys = key_pair(tmp / "keys")
    project = release_project(tmp)
    add_config(project, publish_table(keys))
    env = {"REGISTRY": prefix, "COSIGN_PASSWORD": PASSWORD, **IDENTITY}
    watch = ArgvWatch(PASSWORD)
    try:
        result = run_cli(["buildtasks", "release", "--bump", "minor"], cwd=project, env=env)
    finally:
        watch.stop()
    image = f"{prefix}/buildtasks/jobsvc"
    yield {"result": result, "image": image, "project": project, "keys": keys, "env": env,
           "tmp": tmp, "argv_hits": watch.hits, "scans": watch.scans}  # fmt: skip
    delete_repository(image.split("/", 1)[1])
    remove_images(engine, prefix)


def release_ok(signed) -> dict[str, str]:
    result = signed["result"]
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return tags_of(LOCAL_REGISTRY, signed["image"].split("/", 1)[1])


def staged(signed) -> str:
    """The digest the release pushed under its staging tag and verified."""
    tags = release_ok(signed)
    (staging,) = [t for t in tags if t.startswith("prod-release-")]
    return tags[staging]


def test_cosign_verifies_the_index_and_both_platform_digests(signed):
    image, index = signed["image"], staged(signed)
    digests = platform_digests(f"{image}@{index}")
    assert sorted(digests) == ["linux/amd64", "linux/arm64"]
    for digest in [index, *digests.values()]:
        verified = cosign("verify", "--key", str(signed["keys"][1]), f"{image}@{digest}")
        assert verified.returncode == 0, verified.stderr
        (claim,) = json.loads(verified.stdout)
        assert claim["critical"]["image"]["docker-manifest-digest"] == digest
    stranger = key_pair(signed["tmp"] / "stranger", "another password")[1]
    refused = cosign("verify", "--key", str(stranger), f"{image}@{index}")
    assert refused.returncode != 0  # a key that did not sign it


def test_the_password_is_in_no_argv_and_no_output(signed):
    release_ok(signed)
    assert signed["scans"] > 10 and signed["argv_hits"] == []
    result = signed["result"]
    assert PASSWORD not in result.stdout + result.stderr
    # the signatures and attestations were written, each write echoed
    for kind in ("sig", "att"):
        assert re.search(rf"^PUT \S+/manifests/sha256-[0-9a-f]{{64}}\.{kind} ", result.stderr, re.M)


def test_sbom_attestation_lists_what_pip_lists_in_each_platform_image(engine, signed):
    image, index = signed["image"], staged(signed)
    for platform, digest in platform_digests(f"{image}@{index}").items():
        attested = cosign("verify-attestation", "--key", str(signed["keys"][1]),
                          "--type", "cyclonedx", f"{image}@{digest}")  # fmt: skip
        assert attested.returncode == 0, attested.stderr
        (envelope,) = [json.loads(line) for line in attested.stdout.splitlines()]
        statement = json.loads(base64.b64decode(envelope["payload"]))
        assert statement["subject"][0]["digest"]["sha256"] == digest.removeprefix("sha256:")
        bom = statement["predicate"]
        assert bom["bomFormat"] == "CycloneDX"
        assert bom["metadata"]["component"]["name"] == image  # the app, at its version
        assert bom["metadata"]["component"]["version"] == "0.2.0"
        listed = {(c["name"].lower(), c["version"]) for c in bom["components"]}
        listing = run_once(engine, f"{image}@{digest}",
                           ["python", "-m", "pip", "list", "--format", "json"],
                           platform=platform, entrypoint=[])  # fmt: skip
        pip = json.loads(listing.splitlines()[-1])  # after pip's warning about its cache
        assert pip
        assert {(p["name"].lower(), p["version"]) for p in pip} <= listed
        assert ("grpcio", "1.85.1") in listed
        debs = [c for c in bom["components"] if c["purl"].startswith("pkg:deb/debian/")]
        arch = platform.split("/")[1]
        assert debs and all(c["purl"].endswith(f"?arch={arch}") or "arch=all" in c["purl"]
                            for c in debs)  # fmt: skip


def test_the_engine_export_gives_what_the_registrys_layers_give(signed, tmp_path, monkeypatch):
    """The SBOM's fallback (an image whose layers the registry cannot serve us) reads the
    same packages from an export of the image as the layers give."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # no layer read earlier counts
    image, index = signed["image"], staged(signed)
    rt = Runtime(config.load(signed["project"]))
    images = platform_digests(f"{image}@{index}")
    layered = inventory.packages(rt, retry.Policy.of(rt.settings), image, images)
    for platform, digest in images.items():
        exported = sbom.merge([rt.engine.read_export(f"{image}@{digest}", platform, sbom.layer)])
        assert exported == layered[platform]
        assert sbom.python_packages(exported) and sbom.dpkg_packages(exported)


def test_provenance_is_attached_to_each_platform_image(signed):
    image, index = signed["image"], staged(signed)
    attestations = {
        entry["annotations"]["vnd.docker.reference.digest"]: entry["digest"]
        for entry in raw_manifest(f"{image}@{index}")["manifests"]
        if (entry.get("annotations") or {}).get("vnd.docker.reference.type")
        == "attestation-manifest"
    }
    assert set(attestations) == set(platform_digests(f"{image}@{index}").values())
    for digest in attestations.values():
        layers = raw_manifest(f"{image}@{digest}")["layers"]
        types = {layer["annotations"]["in-toto.io/predicate-type"] for layer in layers}
        assert any(t.startswith("https://slsa.dev/provenance/") for t in types), types


def test_promoted_tags_hold_the_staged_digest_and_its_signature(signed):
    tags, index = release_ok(signed), staged(signed)
    assert {tags["0.2.0"], tags["0.2"], tags["0"]} == {index}
    verified = cosign("verify", "--key", str(signed["keys"][1]), f"{signed['image']}:0.2")
    assert verified.returncode == 0, verified.stderr
    assert f"{signed['image']}@{index} tagged" in signed["result"].stdout


def test_inv_verify_passes_then_fails_once_another_image_takes_the_tag(signed, tmp_path):
    release_ok(signed)
    image, project, env = signed["image"], signed["project"], signed["env"]
    passed = run_cli(["buildtasks", "verify", f"{image}:0", "--json"], cwd=project, env=env)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    report = json.loads(passed.stdout)
    assert report["ok"] and report["pinned"] == f"{image}@{staged(signed)}"
    assert {c["what"] for c in report["checks"]} >= {
        "platforms", "provenance linux/amd64", "provenance linux/arm64",
        "sbom linux/amd64", "sbom linux/arm64",
    }  # fmt: skip
    # A different image pushed under the tag: unsigned, without SBOM.
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY f /\n")
    (tmp_path / "f").write_text("not the release\n")
    other = subprocess.run(["docker", "buildx", "build", "--platform", "linux/amd64,linux/arm64",
                            "--tag", f"{image}:0", "--push", str(tmp_path)],
                           capture_output=True, text=True)  # fmt: skip
    assert other.returncode == 0, other.stderr[-2000:]
    failed = run_cli(["buildtasks", "verify", f"{image}:0"], cwd=project, env=env)
    assert failed.returncode == 1
    assert "FAIL signature" in failed.stdout and "FAIL sbom linux/arm64" in failed.stdout
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {image}:0 failed ") and "checks: signature" in last


# Pushes and promotions through a proxy that injects registry faults. The small project
# (single-platform `FROM scratch`, files at its root) builds in about a second.


@pytest.fixture
def proxied(engine, tmp_path):
    """A fault proxy in front of the machine's registry and a small signed project whose
    image goes through it; the repository is deleted afterwards."""
    proxy = FaultProxy(LOCAL_REGISTRY)
    address = proxy.start()
    path = f"test-{uuid.uuid4().hex[:8]}/small"
    keys = key_pair(tmp_path / "keys")
    project = small_project(tmp_path, f"{address}/{path}")
    add_config(project, publish_table(keys, retry_delay=0.2))
    yield proxy, project, f"{address}/{path}", keys
    proxy.stop()
    delete_repository(path)
    remove_images(engine, address)


def signed_push(project: Path):
    return run_cli(["buildtasks", "push"], cwd=project, env={"COSIGN_PASSWORD": PASSWORD})


def test_transient_registry_errors_are_retried(proxied):
    proxy, project, image, keys = proxied
    proxy.faults = [
        Fault(503, 2),  # the first two requests, whatever they are (the access probe)
        # More manifest PUTs than BuildKit's own three attempts absorb: the push is rerun.
        Fault(503, 4, "PUT", r"/manifests/sha256:"),
        Fault("reset", 4, "PUT", r"/manifests/sha256-.*\.sig$"),  # cosign sign's upload
        Fault(429, 4, "PUT", r"/manifests/sha256-.*\.att$"),  # cosign attest's upload
    ]
    result = signed_push(project)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [f.hits for f in proxy.faults] == [2, 4, 4, 4]
    assert re.search(r"retry 1 of 4 in [0-9.]+s", result.stderr), result.stderr[-3000:]
    digest = re.search(r"pushed \S+@(sha256:[0-9a-f]{64})", result.stdout)[1]
    verified = cosign("verify", "--key", str(keys[1]), f"{image}@{digest}")
    assert verified.returncode == 0, verified.stderr


def test_an_auth_error_fails_at_once_with_one_line(proxied):
    proxy, project, _, _ = proxied
    proxy.faults = [Fault(401, 100, "PUT", r"/manifests/")]
    result = signed_push(project)
    assert result.returncode != 0
    builds = [line for line in result.stderr.splitlines() if line.startswith("docker buildx build")]
    assert len(builds) == 1  # never retried
    assert "retry" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors == result.stderr.strip().splitlines()[-1:]
    assert "401 Unauthorized" in errors[0] and "docker login" in errors[0]


def test_release_stopped_at_signing_resumes_without_rebuilding(proxied):
    proxy, project, image, keys = proxied
    # The registry refuses the signatures: images are pushed and verified, signing fails.
    proxy.faults = [Fault(401, 100, "PUT", r"\.sig$")]
    env = {"COSIGN_PASSWORD": PASSWORD, **IDENTITY}
    failed = run_cli(["buildtasks", "release", "--bump", "minor"], cwd=project, env=env)
    assert failed.returncode != 0
    assert "the images are published" in failed.stderr
    progress = json.loads((project / ".git/buildtasks-release.json").read_text())
    assert progress["done"] == ["commit", "images"]
    # A resume whose key cannot sign is refused before it touches anything.
    refused = run_cli(["buildtasks", "release", "--resume"], cwd=project,
                      env={**env, "COSIGN_PASSWORD": "wrong"})  # fmt: skip
    assert refused.returncode != 0
    assert "release 0.2.0 cannot resume:" in refused.stderr, refused.stderr[-2000:]
    assert "nothing was changed" in refused.stderr and "Traceback" not in refused.stderr
    assert json.loads((project / ".git/buildtasks-release.json").read_text()) == progress
    # The promotion's own tag writes meet a 503 and a 429 (with Retry-After): retried.
    proxy.faults = [Fault(503, 1, "PUT", r"/manifests/0\.2\.0$"),
                    Fault(429, 1, "PUT", r"/manifests/0\.2$")]  # fmt: skip
    resumed = run_cli(["buildtasks", "release", "--resume"], cwd=project, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [f.hits for f in proxy.faults] == [1, 1]
    assert re.search(r"tagging \S+:0\.2: HTTP 429; retry 1 of 4 in 1s", resumed.stderr)
    assert "docker buildx build" not in resumed.stderr  # nothing rebuilt
    staged_digest = progress["digests"]["web"].rpartition("@")[2]
    for tag in ("0.2.0", "0.2", "0"):
        verified = cosign("verify", "--key", str(keys[1]), f"{image}:{tag}")
        assert verified.returncode == 0, verified.stderr
        assert json.loads(verified.stdout)[0]["critical"]["image"]["docker-manifest-digest"] == (
            staged_digest
        )


def artifact_layers(image: str, digest: str, kind: str) -> list[dict]:
    """The layers of the signature (sig) or attestation (att) artifact of image@digest."""
    host, _, path = image.partition("/")
    tag = f"{digest.replace(':', '-')}.{kind}"
    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    request = urllib.request.Request(f"http://{host}/v2/{path}/manifests/{tag}", headers=accept)
    with urllib.request.urlopen(request) as answer:
        return json.loads(answer.read())["layers"]


def test_signing_again_adds_nothing_and_keeps_another_signers_signature(
    proxied, tmp_path, monkeypatch
):
    _, project, image, keys = proxied
    pushed = signed_push(project)
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    ref = re.search(r"pushed (\S+@sha256:[0-9a-f]{64})", pushed.stdout).group(1)
    digest = ref.rpartition("@")[2]
    other = key_pair(tmp_path / "other", "other password")
    cosigned = subprocess.run(
        ["cosign", "sign", "--key", str(other[0]), "--tlog-upload=false", "--yes",
         "--allow-http-registry", ref],
        capture_output=True, text=True, env={**os.environ, "COSIGN_PASSWORD": "other password"},
    )  # fmt: skip
    assert cosigned.returncode == 0, cosigned.stderr
    assert len(artifact_layers(image, digest, "sig")) == 2
    monkeypatch.setenv("COSIGN_PASSWORD", PASSWORD)
    rt = Runtime(config.load(project))
    signer = attest.require_signing(rt)
    for _ in range(2):
        attest.sign_pushed(rt, ref, signer)
    assert len(artifact_layers(image, digest, "sig")) == 2  # ours once, and the other's
    (platform_image,) = platform_digests(ref).values()
    (sbom_layer,) = artifact_layers(image, platform_image, "att")  # replaced, not added
    assert sbom_layer["annotations"]["predicateType"] == attest.CYCLONEDX
    for public in (keys[1], other[1]):
        verified = cosign("verify", "--key", str(public), ref)
        assert verified.returncode == 0, verified.stderr
    attested = cosign("verify-attestation", "--key", str(keys[1]), "--type", "cyclonedx",
                      f"{image}@{platform_image}")  # fmt: skip
    assert attested.returncode == 0, attested.stderr


def test_an_ed25519_key_imported_into_cosign_signs_what_cosign_verifies(proxied, tmp_path):
    # cosign generate-key-pair makes the ECDSA P-256 keys the other tests sign with
    project = proxied[1]
    key = ed25519.Ed25519PrivateKey.generate()
    plain = tmp_path / "plain.pem"
    plain.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))  # fmt: skip
    imported = subprocess.run(
        ["cosign", "import-key-pair", "--key", str(plain), "--output-key-prefix",
         str(tmp_path / "imported")],
        capture_output=True, text=True, env={**os.environ, "COSIGN_PASSWORD": PASSWORD},
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    pair = (tmp_path / "imported.key", tmp_path / "imported.pub")
    pyproject = project / "pyproject.toml"
    text = re.sub(r"\n\[tool\.buildtasks\.publish\]\n.*", "", pyproject.read_text(), flags=re.S)
    pyproject.write_text(text)
    add_config(project, publish_table(pair))
    pushed = signed_push(project)
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    ref = re.search(r"pushed (\S+@sha256:[0-9a-f]{64})", pushed.stdout).group(1)
    (platform_image,) = platform_digests(ref).values()
    for signed in (ref, f"{ref.partition('@')[0]}@{platform_image}"):
        verified = cosign("verify", "--key", str(pair[1]), signed)
        assert verified.returncode == 0, verified.stderr
    attested = cosign("verify-attestation", "--key", str(pair[1]), "--type", "cyclonedx", signed)
    assert attested.returncode == 0, attested.stderr


@pytest.mark.parametrize("problem", ["password", "missing key", "other public key"])
def test_preflight_refuses_a_key_that_cannot_sign_before_building(engine, tmp_path, problem):
    path = f"test-{uuid.uuid4().hex[:8]}/small"
    keys = key_pair(tmp_path / "keys")
    project = small_project(tmp_path, f"{LOCAL_REGISTRY}/{path}")
    if problem == "missing key":
        keys = (tmp_path / "nowhere.key", keys[1])
    elif problem == "other public key":
        keys = (keys[0], key_pair(tmp_path / "other")[1])
    add_config(project, publish_table(keys))
    password = "not-the-passphrase-7f3" if problem == "password" else PASSWORD
    env = {"COSIGN_PASSWORD": password, **IDENTITY}
    result = run_cli(["buildtasks", "release", "--bump", "patch"], cwd=project, env=env)
    assert result.returncode == 1
    expected = {
        "password": "does not open with COSIGN_PASSWORD",
        "missing key": "nowhere.key does not exist",
        "other public key": "is not the public half of",
    }[problem]  # fmt: skip
    assert expected in result.stderr and "nothing was changed" in result.stderr
    assert "docker buildx build" not in result.stderr
    assert password not in result.stderr
    assert git(project, "tag", "--list") == ""
    assert tags_of(LOCAL_REGISTRY, path) == {}
    doctor = run_cli(["buildtasks", "doctor"], cwd=project, env=env)
    (line,) = [line for line in doctor.stdout.splitlines() if " signing " in line]
    assert doctor.returncode == 1 and line.startswith("FAIL signing") and expected in line


def test_unsigned_single_platform_push_without_provenance_stays_an_image_manifest(engine, proxied):
    _, project, image, _ = proxied
    pyproject = project / "pyproject.toml"
    text = pyproject.read_text().replace('sign = "cosign"', 'sign = ""\nprovenance = "off"')
    pyproject.write_text(text)
    git(project, "commit", "--quiet", "-am", "unsigned")
    result = run_cli(["buildtasks", "push"], cwd=project)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cosign" not in result.stderr
    raw = raw_manifest(f"{image}:web")
    assert "config" in raw and "manifests" not in raw
    assert native() in result.stdout
