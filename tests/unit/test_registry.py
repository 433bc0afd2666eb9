"""What the registry answers, read as untrusted input; messages that name real fixes."""

from __future__ import annotations

import pytest

from buildtasks.docker.registry import (
    RegistryError,
    index_platforms,
    platform_name,
    split_reference,
)
from buildtasks.errors import CommandError
from buildtasks.shell import Shell


def entry(os: str, arch: str, variant: str = "", attestation: bool = False) -> dict:
    platform = {"os": os, "architecture": arch, **({"variant": variant} if variant else {})}
    annotations = {"vnd.docker.reference.type": "attestation-manifest"} if attestation else {}
    return {"digest": "sha256:" + "a" * 64, "platform": platform, "annotations": annotations}


def test_index_platforms_leave_out_attestations_and_unknown_entries():
    index = {
        "manifests": [
            entry("linux", "arm64"),
            entry("linux", "arm", "v7"),
            entry("unknown", "unknown", attestation=True),
            entry("linux", "amd64"),
        ]
    }
    assert index_platforms(index) == ["linux/amd64", "linux/arm/v7", "linux/arm64"]
    assert index_platforms({"manifests": None}) == []


def test_an_image_config_names_its_platform():
    assert platform_name({"os": "linux", "architecture": "amd64"}, "x") == "linux/amd64"
    config = {"os": "linux", "architecture": "arm64", "variant": "v8"}
    assert platform_name(config, "x") == "linux/arm64/v8"


@pytest.mark.parametrize(
    "fields",
    [
        {"os": "linux"},
        {"os": "linux", "architecture": 5},
        {"os": "linux", "architecture": "../../etc"},
        {"os": "linux", "architecture": "amd64", "variant": "v8\nFAKE"},
    ],
)
def test_a_platform_the_registry_made_up_is_refused(fields):
    with pytest.raises(RegistryError, match="names no valid platform"):
        platform_name(fields, "127.0.0.1:5000/app@sha256:1")
    with pytest.raises(RegistryError):
        index_platforms({"manifests": [{"platform": fields}]})


@pytest.mark.parametrize(
    ("reference", "parts"),
    [
        ("127.0.0.1:5000/team/app:web-1a2b3c4", ("127.0.0.1:5000", "team/app", "web-1a2b3c4")),
        ("localhost:5000/app:1.2", ("localhost:5000", "app", "1.2")),
        ("registry.example.com/a/b/c:x", ("registry.example.com", "a/b/c", "x")),
        ("app:1", ("docker.io", "library/app", "1")),
        ("me/app:1", ("docker.io", "me/app", "1")),
    ],
)
def test_split_reference(reference, parts):
    assert split_reference(reference) == parts


@pytest.mark.parametrize("reference", ["127.0.0.1:5000/app", "127.0.0.1:5000/app@sha256:1"])
def test_a_reference_without_a_tag_is_refused(reference):
    with pytest.raises(RegistryError, match="names no tag"):
        split_reference(reference)


def test_a_missing_docker_cli_points_at_the_engine_install_docs(tmp_path):
    shell = Shell(echo=False, env={"PATH": str(tmp_path)})
    with pytest.raises(CommandError) as raised:
        shell.run(["docker", "version"])
    assert str(raised.value) == (
        "docker: command not found; install it (https://docs.docker.com/engine/install/, "
        "with the buildx and compose plugins) or add it to PATH"
    )
    with pytest.raises(CommandError, match=r"^sqlite3: command not found; install it or add"):
        shell.run(["sqlite3", "x.db"])
