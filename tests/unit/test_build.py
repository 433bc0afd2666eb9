from pathlib import Path

import msgspec
import pytest

from buildtasks import config
from buildtasks.docker.build import (
    BuildRequest,
    bake_definition,
    buildx_argv,
    plan,
    render_tags,
    sanitize_tag,
)
from buildtasks.errors import ConfigError
from buildtasks.git import GitState

ROOT = Path("/proj")
GIT = GitState(
    sha="0123456789abcdef0123456789abcdef01234567",
    branch="feature/x",
    dirty=False,
    commit_time="2026-11-01T10:00:00Z",
    remote_url="https://git.example/svc.git",
)
DOCKERFILE = "ARG BASE=python:3.11-slim\nFROM ${BASE} AS deps\nFROM deps\n"
LABELS = {
    "org.opencontainers.image.title": "svc",
    "org.opencontainers.image.version": "1.0.0",
    "org.opencontainers.image.revision": GIT.sha,
    "org.opencontainers.image.created": "2026-11-01T10:00:00Z",
    "org.opencontainers.image.source": "https://git.example/svc.git",
}


def project_labels(target: str) -> dict[str, str]:
    return {"io.buildtasks.image": "reg:5000/team/svc", "io.buildtasks.target": target}


def settings(monkeypatch):
    monkeypatch.setenv("TOKEN_VALUE", "s3cret")
    return config.parse(
        {
            "image": "reg:5000/team/svc",
            "context": "app",
            "mirror": "reg:5000/mirror",
            "version": "1.0.0",
            "env_files": [],
            "targets": {
                "prod": {
                    "dockerfile": "Dockerfile.prod",
                    "stage": "runtime",
                    "platforms": ["linux/amd64", "linux/arm64"],
                    "build_args": {"MODE": "prod"},
                    "secrets": ["token=env:TOKEN_VALUE", "ca=ca-bundle", "key=file:keys/k.pem"],
                    "cache_from": ["type=registry,ref=reg:5000/team/svc:buildcache-prod"],
                },
                "dev": {"dockerfile": "Dockerfile.dev", "tags": ["dev", "{branch}-{short_sha}"]},
            },
        },
        root=ROOT,
    )


def test_buildx_argv_of_prod(monkeypatch):
    project = settings(monkeypatch)
    build = plan(
        project, project.targets["prod"], GIT, DOCKERFILE, ca_bundle="/etc/ca.crt", now="unused"
    )
    assert buildx_argv(build, "/tmp/m.json") == [
        "docker", "buildx", "build",
        "--file", "/proj/app/Dockerfile.prod",
        "--target", "runtime",
        "--tag", "reg:5000/team/svc:prod",
        "--tag", "reg:5000/team/svc:prod-0123456",
        *[arg for key, value in LABELS.items() for arg in ("--label", f"{key}={value}")],
        "--label", "io.buildtasks.image=reg:5000/team/svc",
        "--label", "io.buildtasks.target=prod",
        "--build-arg", "MODE=prod",
        "--secret", "id=token,env=TOKEN_VALUE",
        "--secret", "id=ca,src=/etc/ca.crt",
        "--secret", "id=key,src=/proj/keys/k.pem",
        "--build-context", "python:3.11-slim=docker-image://reg:5000/mirror/python:3.11-slim",
        "--cache-from", "type=registry,ref=reg:5000/team/svc:buildcache-prod",
        "--provenance=false",
        "--metadata-file", "/tmp/m.json",
        "--load",
        "/proj/app",
    ]  # fmt: skip


def test_request_overrides_and_push_uses_configured_platforms(monkeypatch):
    project = settings(monkeypatch)
    request = BuildRequest(
        tags=("rc", "other.reg/x:y"), build_args={"MODE": "debug"}, push=True, no_cache=True
    )
    build = plan(project, project.targets["prod"], GIT, DOCKERFILE, request, ca_bundle="")
    argv = buildx_argv(build, "m.json")
    assert build.tags == ("reg:5000/team/svc:rc", "other.reg/x:y")
    assert build.build_args == {"MODE": "debug"}
    assert build.secrets == ("id=token,env=TOKEN_VALUE", "id=key,src=/proj/keys/k.pem")
    assert argv[argv.index("--platform") + 1] == "linux/amd64,linux/arm64"
    assert argv[-6:] == [
        "--no-cache",
        "--provenance=mode=min",  # pushes carry provenance by default
        "--metadata-file",
        "m.json",
        "--push",
        "/proj/app",
    ]


def test_dirty_tree_and_branch_templates(monkeypatch):
    project = settings(monkeypatch)
    dirty = msgspec.structs.replace(GIT, dirty=True)
    build = plan(project, project.targets["dev"], dirty, "FROM python:3.11\n", now="unused")
    assert build.tags == ("reg:5000/team/svc:dev", "reg:5000/team/svc:feature-x-0123456-dirty")
    assert build.platforms == ()


def test_bake_definition_of_two_targets(monkeypatch):
    project = settings(monkeypatch)
    builds = [
        plan(project, project.targets[name], GIT, DOCKERFILE, ca_bundle="/etc/ca.crt")
        for name in ("prod", "dev")
    ]
    mirror = {"python:3.11-slim": "docker-image://reg:5000/mirror/python:3.11-slim"}
    assert bake_definition(builds) == {
        "group": {"default": {"targets": ["prod", "dev"]}},
        "target": {
            "prod": {
                "context": "/proj/app",
                "dockerfile": "Dockerfile.prod",
                "tags": ["reg:5000/team/svc:prod", "reg:5000/team/svc:prod-0123456"],
                "labels": {**LABELS, **project_labels("prod")},
                "target": "runtime",
                "args": {"MODE": "prod"},
                "secret": [
                    "id=token,env=TOKEN_VALUE",
                    "id=ca,src=/etc/ca.crt",
                    "id=key,src=/proj/keys/k.pem",
                ],
                "contexts": mirror,
                "cache-from": ["type=registry,ref=reg:5000/team/svc:buildcache-prod"],
                "attest": ["type=provenance,disabled=true"],
                "output": ["type=docker"],
            },
            "dev": {
                "context": "/proj/app",
                "dockerfile": "Dockerfile.dev",
                "tags": ["reg:5000/team/svc:dev", "reg:5000/team/svc:feature-x-0123456"],
                "labels": {**LABELS, **project_labels("dev")},
                "contexts": mirror,
                "attest": ["type=provenance,disabled=true"],
                "output": ["type=docker"],
            },
        },
    }


def test_tag_templates():
    values = {"target": "prod", "version": "1.2", "sha": "", "short_sha": "", "branch": "main"}
    assert render_tags(("{target}", "v{version}", "{short_sha}"), "r/x", values) == (
        "r/x:prod",
        "r/x:v1.2",
    )
    with pytest.raises(ConfigError, match=r"uses \{commit\}; known fields"):
        render_tags(("{commit}",), "r/x", values)
    assert sanitize_tag("-feature/ÜX..1") == "feature-X..1"


def test_bad_secret_spec(monkeypatch):
    project = settings(monkeypatch)
    target = config.Target(name="x", secrets=("a=vault:b",))
    with pytest.raises(ConfigError, match="write ID, ID=env:VAR, ID=file:PATH or ID=ca-bundle"):
        plan(project, target, GIT, "FROM a\n")


def test_registry_cache_preset_and_attestations(monkeypatch):
    project = settings(monkeypatch)
    target = config.Target(name="api", cache="registry", attest=("provenance", "sbom"))
    local = plan(project, target, GIT, "FROM scratch\n", now="unused")
    assert local.cache_from == ("type=registry,ref=reg:5000/team/svc:buildcache-api",)
    assert local.cache_to == ()
    request = BuildRequest(push=True, platforms=("linux/amd64",))
    pushed = plan(project, target, GIT, "FROM scratch\n", request, now="unused")
    assert pushed.cache_to == ("type=registry,ref=reg:5000/team/svc:buildcache-api,mode=max",)
    assert buildx_argv(pushed, "m.json")[-6:] == [
        "--provenance=mode=max",
        "--sbom=true",
        "--metadata-file",
        "m.json",
        "--push",
        "/proj/app",
    ]


@pytest.mark.parametrize(("mode", "push_flag", "bake"), [
    ("max", "--provenance=mode=max", "type=provenance,mode=max"),
    ("off", "--provenance=false", "type=provenance,disabled=true"),
])  # fmt: skip
def test_publish_provenance_mode_applies_to_pushes_only(monkeypatch, mode, push_flag, bake):
    project = msgspec.structs.replace(
        settings(monkeypatch), publish=config.PublishSettings(provenance=mode)
    )
    target = project.targets["dev"]
    pushed = plan(project, target, GIT, DOCKERFILE, BuildRequest(push=True))
    local = plan(project, target, GIT, DOCKERFILE)
    assert push_flag in buildx_argv(pushed, "m.json")
    assert "--provenance=false" in buildx_argv(local, "m.json")
    assert bake_definition([pushed])["target"]["dev"]["attest"] == [bake]
