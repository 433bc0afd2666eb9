"""Multi-service projects: per-target contexts and images, shared bases, compose mirror,
integration defaults, the configuration reference."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildtasks import config, lfs, reference, sessions
from buildtasks.docker.build import BuildRequest, bake_definition, plan
from buildtasks.docker.compose import mirrored_images
from buildtasks.errors import ConfigError
from buildtasks.git import GitState
from buildtasks.release.flow import release_image_tags

REPO = Path(__file__).resolve().parents[2]


def settings(tmp_path: Path, **targets) -> config.Settings:
    for name in ("services/api", "services/base"):
        (tmp_path / name).mkdir(parents=True, exist_ok=True)
    return config.parse({"image": "reg:5000/shop/api", "targets": targets}, root=tmp_path)


def test_every_key_is_documented_and_the_reference_is_current():
    undocumented = [
        f"{table}.{key}" for table, key, _, _, note in reference.documented_keys() if not note
    ]
    assert undocumented == []
    assert (REPO / "docs/configuration.md").read_text() == reference.render(), (
        "docs/configuration.md is stale: python -m buildtasks.reference > docs/configuration.md"
    )


def test_a_target_has_its_own_context_image_and_dockerfile_inside_it(tmp_path):
    project = settings(
        tmp_path,
        base={"context": "services/base", "image": "reg:5000/shop/base"},
        api={"context": "services/api", "contexts": {"base": "target:base"}},
    )
    base, api = project.targets["base"], project.targets["api"]
    built = plan(project, api, GitState(), "FROM base\n", BuildRequest(tags=("x",)))
    assert built.context == tmp_path / "services/api"
    assert built.tags == ("reg:5000/shop/api:x",)
    assert built.contexts == {"base": "target:base"} and built.needs_bake
    assert (
        plan(project, base, GitState(), "FROM python:3.11-slim\n")
        .tags[0]
        .startswith("reg:5000/shop/base:")
    )
    with pytest.raises(ConfigError, match=r"targets\.api\.dockerfile: '../base/Dockerfile'"):
        settings(tmp_path, api={"context": "services/api", "dockerfile": "../base/Dockerfile"})


def test_shared_bases_come_first_and_cycles_or_unknown_targets_are_one_line(tmp_path):
    project = settings(
        tmp_path,
        api={"contexts": {"base": "target:base"}},
        base={},
        worker={"contexts": {"base": "target:base"}},
    )
    assert config.build_order(project.targets, ["api", "worker"]) == ["base", "api", "worker"]
    with pytest.raises(ConfigError, match="build FROM each other: a -> b -> a"):
        settings(tmp_path, a={"contexts": {"x": "target:b"}}, b={"contexts": {"y": "target:a"}})
    with pytest.raises(ConfigError, match="contexts: no target 'nope'"):
        settings(tmp_path, a={"contexts": {"x": "target:nope"}})


def test_bake_keeps_target_contexts_and_the_mirror_skips_them(tmp_path):
    project = config.parse(
        {"image": "r/app", "mirror": "m:5000/mirror", "targets": {"base": {}, "api": {
            "contexts": {"base": "target:base"}}}},
        root=tmp_path,
    )  # fmt: skip
    api = plan(project, project.targets["api"], GitState(), "FROM base\nFROM redis:7\n")
    assert api.contexts == {
        "redis:7": "docker-image://m:5000/mirror/redis:7",
        "base": "target:base",
    }
    assert bake_definition([api])["target"]["api"]["contexts"]["base"] == "target:base"


def test_compose_base_images_come_from_the_mirror_but_not_the_projects_own():
    resolved = {
        "services": {
            "redis": {"image": "redis:7"},
            "api": {"image": "reg:5000/shop/api:abc"},
            "built": {"image": "x:1", "build": {"context": "."}},
            "done": {"image": "m:5000/mirror/python:3.11-slim"},
        }
    }
    assert mirrored_images(resolved, "m:5000/mirror", {"reg:5000/shop/api"}) == {
        "redis": "m:5000/mirror/redis:7"
    }
    assert mirrored_images(resolved, "", set()) == {}


def test_release_tags_are_plain_per_image_and_suffixed_when_images_are_shared(tmp_path):
    project = settings(tmp_path, api={}, worker={"image": "reg:5000/shop/worker"}, cli={})
    tags = release_image_tags(project, ["api", "worker", "cli"], ["1.2.0", "1.2"])
    assert tags == {
        "api": ["reg:5000/shop/api:1.2.0-api", "reg:5000/shop/api:1.2-api"],
        "worker": ["reg:5000/shop/worker:1.2.0", "reg:5000/shop/worker:1.2"],
        "cli": ["reg:5000/shop/api:1.2.0-cli", "reg:5000/shop/api:1.2-cli"],
    }


def test_integration_installs_the_projects_own_test_requirements(tmp_path):
    def load(text: str) -> list[str]:
        (tmp_path / "pyproject.toml").write_text('[tool.buildtasks]\nimage = "app"\n' + text)
        return sessions.test_requirements(config.load(tmp_path))

    assert load("") == ["pytest"]
    (tmp_path / "requirements-test.txt").write_text("pytest\n")
    assert load("") == ["-r", str(tmp_path / "requirements-test.txt")]
    groups = (
        '[dependency-groups]\nlint = ["ruff"]\ntest = ["pytest>=8", {include-group = "lint"}]\n'
    )
    assert load(groups) == ["pytest>=8", "ruff"]
    assert load('[tool.buildtasks.integration]\ninstall = ["-e", "."]\n') == ["-e", "."]


def test_pointer_files_are_told_from_content(tmp_path):
    pointer = tmp_path / "p.bin"
    pointer.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 3\n")
    content = tmp_path / "c.bin"
    content.write_bytes(b"version https://git-lfs.github.com/spec/v1" + b"x" * 2000)
    assert lfs.is_pointer(pointer) and not lfs.is_pointer(content)
    assert not lfs.uses_lfs(tmp_path)
    (tmp_path / ".gitattributes").write_text("*.bin filter=lfs diff=lfs merge=lfs -text\n")
    assert lfs.uses_lfs(tmp_path)
