"""`inv prune` on a real engine: only the project's stale images go."""

from __future__ import annotations

import re
import subprocess
import uuid

import pytest

from buildtasks.docker.engine import Engine
from buildtasks.docker.prune import Engine as PruneEngine
from tests.conftest import remove_images, run_cli

pytestmark = pytest.mark.integration


def project_dir(tmp_path, image: str, dockerfile: str, extra: str = "", mirror: str = ""):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "pyproject.toml").write_text(
        f'[tool.buildtasks]\nimage = "{image}"\nmirror = "{mirror}"\n'
        f"[tool.buildtasks.cache]\nkeep_images = 1\n{extra}\n"
        "[tool.buildtasks.targets.app]\nchecks = []\n"
    )
    (tmp_path / "Dockerfile").write_text(dockerfile)
    return tmp_path


def build(project, content: str, *tags: str) -> None:
    (project / "content.txt").write_text(content)
    argv = ["buildtasks", "build-app", *[a for t in tags for a in ("--tag", t)]]
    result = run_cli(argv, cwd=project)
    assert result.returncode == 0, result.stderr[-2000:]


def images(engine) -> set[tuple[str, tuple[str, ...]]]:
    return {(i.id, tuple(sorted(i.tags))) for i in engine.images.list(all=True)}


def buildx_du() -> list[list[str]]:
    """Cache records as (id, reclaimable, size), without the relative `last accessed`."""
    output = subprocess.run(["docker", "buildx", "du"], capture_output=True, text=True).stdout
    return [line.split()[:3] for line in output.splitlines()]


def test_prune_removes_only_the_projects_stale_images(engine, tmp_path):
    prefix = f"127.0.0.1:5000/prune-{uuid.uuid4().hex[:6]}"
    dockerfile = "FROM scratch\nCOPY content.txt /\n"
    project = project_dir(tmp_path / "p", f"{prefix}/app", dockerfile)
    foreign = project_dir(tmp_path / "f", f"{prefix}-other/tool", dockerfile)
    build(foreign, "foreign", "1")
    for version in ("v1", "v2", "v3"):
        build(project, f"content {version}", version)
    build(project, "app one", "app")
    build(project, "app two", "app")  # the classic store keeps the first as dangling
    old = engine.images.get(f"{prefix}/app:v1")
    holder = engine.containers.create(old.id, ["/content.txt"])
    try:
        before_images, before_du = images(engine), buildx_du()
        dry = run_cli(["buildtasks", "--dry", "prune"], cwd=project)
        assert dry.returncode == 0, dry.stderr
        planned = [line.split()[2:4] for line in dry.stdout.splitlines() if "would remove" in line]
        assert sorted(planned) == [
            ["image-tag", f"{prefix}/app:v2"],
            ["image-tag", f"{prefix}/app:v3"],
        ]
        assert images(engine) == before_images and buildx_du() == before_du

        usage = PruneEngine(Engine().client).usage
        before = usage()
        result = run_cli(["buildtasks", "prune"], cwd=project)
        assert result.returncode == 0, result.stderr
        after = usage()
        reported = int(re.search(r"\((\d+) bytes", result.stdout).group(1))
        assert abs(reported - (before - after)) <= max(0.01 * (before - after), 0)
        tags = {t for i in engine.images.list() for t in i.tags}
        assert f"{prefix}/app:app" in tags  # the newest
        assert f"{prefix}/app:v1" in tags  # used by a container
        assert f"{prefix}/app:v2" not in tags and f"{prefix}/app:v3" not in tags
        assert f"{prefix}-other/tool:1" in tags  # another project's
        dangling = engine.images.list(
            filters={"dangling": True, "label": f"io.buildtasks.image={prefix}/app"}
        )
        assert dangling == []
    finally:
        holder.remove(force=True, v=True)
        remove_images(engine, prefix)


def test_prune_all_without_yes_removes_nothing(engine, tmp_path):
    project = project_dir(tmp_path, "127.0.0.1:5000/prune-all/app", "FROM scratch\n")
    before = images(engine)
    result = run_cli(["buildtasks", "prune", "--all"], cwd=project)
    assert result.returncode == 1
    assert "nothing removed. Add --yes to confirm" in result.stderr
    assert images(engine) == before


def test_local_cache_export_loses_orphans_and_still_imports(
    engine, mirror, registry_prefix, tmp_path
):
    dockerfile = (
        "FROM python:3.11-slim\nRUN echo one > /one\nRUN echo two > /two\nCOPY content.txt /\n"
    )
    extra = 'dirs = ["cache"]'
    project = project_dir(tmp_path, f"{registry_prefix}/app", dockerfile, extra, mirror)
    text = (
        (project / "pyproject.toml")
        .read_text()
        .replace(
            "checks = []\n",
            'checks = []\ncache_from = ["type=local,src=cache"]\n'
            'cache_to = ["type=local,dest=cache,mode=max"]\n',
        )
    )
    (project / "pyproject.toml").write_text(text)
    (project / "cache").mkdir()
    build(project, "first", "one")
    build(project, "second", "two")  # rewrites the index; the first COPY layer is orphaned
    blobs = project / "cache/blobs/sha256"
    size_before = sum(p.stat().st_size for p in blobs.iterdir())
    result = run_cli(["buildtasks", "prune"], cwd=project)
    assert result.returncode == 0, result.stderr
    size_after = sum(p.stat().st_size for p in blobs.iterdir())
    assert size_after < size_before
    from buildtasks.docker.prune import orphan_blobs

    assert orphan_blobs(project / "cache") == []
    subprocess.run(
        ["docker", "buildx", "prune", "--all", "--force"], check=True, capture_output=True
    )
    (project / "content.txt").write_text("second")
    rebuilt = run_cli(["buildtasks", "build-app", "--tag", "three"], cwd=project)
    assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]
    assert "importing cache manifest from local:" in rebuilt.stderr
    assert rebuilt.stderr.count("CACHED") >= 2
