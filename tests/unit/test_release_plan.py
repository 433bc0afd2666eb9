"""What a release plans before it changes anything: valid image tags, files as they were."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildtasks import config
from buildtasks.release import flow


def project(tmp_path: Path, targets=("web",), newline: str = "\n") -> Path:
    (tmp_path / "service").mkdir()
    sections = ""
    for name in targets:
        (tmp_path / f"service/{name}.Dockerfile").write_text("FROM scratch\n")
        sections += (
            f'\n[tool.buildtasks.targets.{name}]\ndockerfile = "{name}.Dockerfile"\n'
            'platforms = ["linux/amd64"]\n'
        )
    pyproject = (
        '[project]\nname = "small"\nversion = "0.3.2"\n\n'
        '[tool.buildtasks]\nimage = "127.0.0.1:5000/team/small"\ncontext = "service"\n'
        f"{sections}"
    )
    changelog = "# Changelog\n\n## [Unreleased]\n\n### Added\n- A thing.\n\n## [0.3.2] - x\n"
    for name, text in (("pyproject.toml", pyproject), ("CHANGELOG.md", changelog)):
        (tmp_path / name).write_bytes(text.replace("\n", newline).encode())
    return tmp_path


def test_a_local_version_is_refused_before_anything_changes(tmp_path):
    settings = config.load(project(tmp_path, targets=("web", "worker")))
    with pytest.raises(flow.PreflightFailed) as refused:
        flow.make_plan(settings, explicit="0.3.3+local")
    assert str(refused.value) == (
        "release 0.3.3+local cannot start: image tag '0.3.3+local-web' is not a valid tag "
        "(letters, digits, _ . -, not starting with . or -, at most 128 characters); "
        "nothing was changed"
    )
    assert flow.make_plan(settings, explicit="0.3.3").image_tags["web"][0].endswith(":0.3.3-web")


def test_a_target_name_too_long_for_its_staging_tag_is_refused(tmp_path):
    name = "w" * 80  # {name}-release-{40 hex} would be 129 characters
    settings = config.load(project(tmp_path, targets=(name,)))
    with pytest.raises(flow.PreflightFailed, match=rf"image tag '{name}-release-f{{40}}' is not"):
        flow.make_plan(settings, bump="patch")


def test_the_staging_tag_is_never_a_normal_build_tag():
    sha = "4590848722cfa2b6dceda016dc7809f0d4a66dbf"
    assert flow.staging_tag("web", sha) == f"web-release-{sha}"
    assert flow.staging_tag("web", sha) != f"web-{sha[:7]}"  # the default {target}-{short_sha}


def test_crlf_version_and_changelog_keep_their_line_endings(tmp_path):
    settings = config.load(project(tmp_path, newline="\r\n"))
    plan = flow.make_plan(settings, bump="patch")
    for text in (plan.version_text, plan.changelog_text):
        assert text.count("\n") == text.count("\r\n") > 5  # no bare LF
    assert 'version = "0.3.3"\r\n' in plan.version_text
    assert "## [Unreleased]\r\n\r\n## [0.3.3] - " in plan.changelog_text
    diff = plan.diff()  # only the changed lines, not every line of the file
    removed = [line for line in diff.split("\n") if line[:1] == "-" and line[:3] != "---"]
    assert removed == ['-version = "0.3.2"\r']


def test_lf_files_stay_lf(tmp_path):
    plan = flow.make_plan(config.load(project(tmp_path)), bump="minor")
    assert "\r" not in plan.version_text + plan.changelog_text


def test_release_plan_gives_each_image_of_the_shop_plain_version_tags(monkeypatch):
    prefix = "127.0.0.1:5000/shop-plan"
    monkeypatch.setenv("SHOP_REGISTRY", prefix)
    plan = flow.make_plan(config.load(Path(__file__).parents[1] / "fixtures/shop"), bump="minor")
    assert plan.new == "0.2.0"
    assert plan.image_tags == {
        "api": [f"{prefix}/api:0.2.0", f"{prefix}/api:0.2", f"{prefix}/api:0"],
        "worker": [f"{prefix}/worker:0.2.0", f"{prefix}/worker:0.2", f"{prefix}/worker:0"],
    }
