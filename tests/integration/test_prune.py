"""`inv prune` on a real engine: only the project's stale images go."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import urllib.request
import uuid

import docker
import pytest

from buildtasks import config
from buildtasks.docker import builds
from buildtasks.docker import prune as pruning
from buildtasks.docker.compose import PROJECT_LABEL
from buildtasks.docker.prune import orphan_blobs, referenced_blobs
from buildtasks.shell import Shell
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


def cli(project, *args: str, state=None):
    """buildtasks in project, its build records kept under state (not the user's)."""
    env = {"XDG_STATE_HOME": str(state or project.parent / "state")}
    result = run_cli(["buildtasks", *args], cwd=project, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def build(project, content: str, *tags: str) -> None:
    (project / "content.txt").write_text(content)
    cli(project, "build-app", *[a for t in tags for a in ("--tag", t)])


def git(project, *args: str) -> str:
    identity = ["-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"]
    argv = ["git", "-C", str(project), *identity, *args]
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


def commit(project, payload: bytes, message: str) -> str:
    (project / "payload.bin").write_bytes(payload)
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", message)
    return git(project, "rev-parse", "--short=7", "HEAD")


def tags_of(engine) -> set[str]:
    # The low-level listings: the SDK's inspect of each entry races others' removals.
    return {t for i in engine.api.images() for t in i.get("RepoTags") or ()}


def snapshot(engine, marker: str) -> tuple:
    """This test's images and containers (others share the engine): tags or labels or
    names with marker in them."""
    images = {
        (i["Id"], tuple(sorted(i.get("RepoTags") or ())))
        for i in engine.api.images(all=True)
        if marker in " ".join(i.get("RepoTags") or ())
        or marker in (i.get("Labels") or {}).get("io.buildtasks.image", "")
    }
    containers = {
        (c["Id"], c["State"]) for c in engine.api.containers(all=True) if marker in c["Names"][0]
    }
    return images, containers


def listed(output: str, verb: str) -> list[tuple[str, str, str]]:
    """(kind, name, size) of every `would remove` / `remove` line."""
    found = []
    for line in output.splitlines():
        if line.startswith(verb + " "):
            kind, name, size = line[len(verb) + 1 :].split(None, 2)
            found.append((kind, name, size))
    return found


def test_prune_scenario_removes_exactly_the_dry_plan_and_nothing_protected(
    engine, mirror, tmp_path
):
    """Three commits, a release tag on HEAD, a foreign image built FROM the project's, a
    foreign compose project whose name starts with the project's, images in use."""
    run_id = uuid.uuid4().hex[:8]
    repo = f"127.0.0.1:5000/prune-{run_id}/app"
    stack = f"prune{run_id}"
    base = f"{mirror or 'docker.io/library'}/python:3.11-slim"
    extra = f'[tool.buildtasks.stack]\nproject = "{stack}"\n'
    dockerfile = "FROM python:3.11-slim\nCOPY payload.bin content.txt /\n"
    project = project_dir(tmp_path / "p", repo, dockerfile, "", mirror)
    (project / "pyproject.toml").write_text((project / "pyproject.toml").read_text() + extra)
    (project / ".gitignore").write_text("content.txt\n")
    git(project, "init", "-q")
    mib = 4 << 20  # far above the engine's noise (containers writing, others' builds)
    created = []
    try:
        c1 = commit(project, os.urandom(mib), "one")
        build(project, "a1")  # app, app-c1
        build(project, "a3", "extra")  # only :extra, built from c1: stale
        c2 = commit(project, os.urandom(mib), "two")
        build(project, "b0", "extra2")  # stale
        build(project, "b1")  # app, app-c2: in use
        (project / "payload.bin").write_bytes(os.urandom(mib))  # a dirty tree
        build(project, "b2")  # app, app-c2-dirty: the newest build not otherwise kept
        c3 = commit(project, os.urandom(mib), "three")
        git(project, "tag", "-a", "v0.2.0", "-m", "v0.2.0")
        build(project, "c")  # app, app-c3: HEAD, released

        # The foreign image inherits every io.buildtasks label; it protects app-c1.
        foreign = tmp_path / "foreign"
        foreign.mkdir()
        (foreign / "Dockerfile").write_text(f"FROM {repo}:app-{c1}\nLABEL owner=someone-else\n")
        subprocess.run(
            ["docker", "buildx", "build", "--provenance=false", "--load",
             "--tag", f"{repo}-derived:1", str(foreign)],
            check=True, capture_output=True,
        )  # fmt: skip
        if base not in tags_of(engine):
            engine.images.pull(base)
        for project_label, image in (
            (stack, base),
            (f"{stack}-other", base),
            ("x", f"{repo}:app-{c2}"),
        ):
            container = engine.containers.run(
                image, ["true"], detach=True, name=f"{project_label}-{run_id}",
                labels={"com.docker.compose.project": project_label},
            )  # fmt: skip
            created.append(container)
            container.wait(timeout=60)

        before = snapshot(engine, run_id)
        dry = cli(project, "--dry", "prune")
        assert snapshot(engine, run_id) == before
        plan = listed(dry.stdout, "would remove")
        expected = [f"{stack}-{run_id}", f"{repo}:extra2", f"{repo}:extra"]
        assert [name for _, name, _ in plan] == expected, dry.stdout
        assert dry.stdout == cli(project, "--dry", "prune").stdout  # deterministic
        usage = json.loads(cli(project, "cache.usage", "--json").stdout)
        assert usage["engine_build_cache"]["scope"].startswith("engine-wide")
        assert [i["name"] for i in usage["project"]["prune_would_remove"]] == expected
        estimate = int(re.search(r"would reclaim about .* \((\d+) bytes", dry.stdout).group(1))
        assert 2 * mib < estimate < 2.1 * mib  # two payloads, not the shared base image

        result = cli(project, "prune")
        assert listed(result.stdout, "removed") == plan
        reclaimed = int(re.search(r"reclaimed .* \((\d+) bytes", result.stdout).group(1))
        assert abs(reclaimed - estimate) <= 0.1 * reclaimed, result.stdout

        tags = tags_of(engine)
        assert f"{repo}:extra" not in tags and f"{repo}:extra2" not in tags
        for kept in (f"app-{c1}", f"app-{c2}", f"app-{c2}-dirty", f"app-{c3}", "app"):
            assert f"{repo}:{kept}" in tags, kept
        assert f"{repo}-derived:1" in tags
        assert engine.images.get(f"{repo}:app").id == engine.images.get(f"{repo}:app-{c3}").id
        remaining = {c["Names"][0].lstrip("/") for c in engine.api.containers(all=True)}
        assert f"{stack}-other-{run_id}" in remaining and f"{stack}-{run_id}" not in remaining
        after = listed(cli(project, "--dry", "prune").stdout, "would remove")
        assert after == []
    finally:
        for container in created:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
        remove_images(engine, f"127.0.0.1:5000/prune-{run_id}/")
        for image in engine.api.images(filters={"dangling": True}):
            if (image.get("Labels") or {}).get("io.buildtasks.image") == repo:
                engine.api.remove_image(image["Id"], force=True)


@pytest.mark.podman
def test_prune_removes_only_the_projects_stale_images(engine, tmp_path):
    marker = uuid.uuid4().hex[:8]
    prefix = f"127.0.0.1:5000/prune-{marker}"
    dockerfile = "FROM scratch\nCOPY content.txt /\n"
    project = project_dir(tmp_path / "p", f"{prefix}/app", dockerfile)
    foreign = project_dir(tmp_path / "f", f"{prefix}-other/tool", dockerfile)
    build(foreign, "foreign", "1")
    for version in ("v1", "v2", "v3"):
        build(project, f"content {version}", version)
    build(project, "app one", "app")
    build(project, "app two", "app")  # the first is left untagged
    old = engine.images.get(f"{prefix}/app:v1")
    holder = engine.containers.create(old.id, ["/content.txt"])
    try:
        before = snapshot(engine, marker)
        dry = cli(project, "--dry", "prune")
        assert snapshot(engine, marker) == before
        planned = [(kind, name) for kind, name, _ in listed(dry.stdout, "would remove")]
        untagged = [name for kind, name in planned if kind == "image"]
        # newest first: `app one` (left untagged by the classic store; the containerd store
        # deletes it), then v2; app:app floats, v3 is the 1 newest of the rest, v1 is in use
        assert planned == [*[("image", u) for u in untagged], ("image-tag", f"{prefix}/app:v2")]
        result = cli(project, "prune")
        assert [(k, n) for k, n, _ in listed(result.stdout, "removed")] == planned
        tags = tags_of(engine)
        assert f"{prefix}/app:app" in tags  # the newest
        assert f"{prefix}/app:v1" in tags  # used by a container
        assert f"{prefix}/app:v2" not in tags and f"{prefix}/app:v3" in tags
        assert f"{prefix}-other/tool:1" in tags  # another project's
        assert not {i["Id"] for i in engine.api.images(all=True)} & set(untagged)
    finally:
        holder.remove(force=True, v=True)
        remove_images(engine, prefix)


def test_prune_all_without_yes_removes_nothing(engine, tmp_path):
    marker = uuid.uuid4().hex[:8]
    dockerfile = "FROM scratch\nCOPY content.txt /\n"
    project = project_dir(tmp_path, f"127.0.0.1:5000/prune-{marker}/app", dockerfile)
    build(project, "an unused image, which a whole-engine prune would remove", "unused")
    try:
        before = snapshot(engine, marker)
        # No engine behind DOCKER_HOST: were the refusal broken, nothing could be pruned.
        no_engine = {"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
        result = run_cli(["buildtasks", "prune", "--all"], cwd=project, env=no_engine)
        assert result.returncode == 1
        assert "nothing removed. Add --yes to confirm" in result.stderr
        assert snapshot(engine, marker) == before and before[0]
    finally:
        remove_images(engine, f"127.0.0.1:5000/prune-{marker}/")


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
    assert orphan_blobs(project / "cache") == []  # too fresh: an export may be running
    for blob in blobs.iterdir():  # as if the exports had finished ten minutes ago
        os.utime(blob, (blob.stat().st_atime, blob.stat().st_mtime - 600))
    size_before = sum(p.stat().st_size for p in blobs.iterdir())
    orphans = sum(i.size for i in orphan_blobs(project / "cache"))
    assert orphans > 0
    cli(project, "prune")
    size_after = sum(p.stat().st_size for p in blobs.iterdir())
    assert size_before - size_after == orphans
    assert orphan_blobs(project / "cache") == []
    # Every blob the index reaches is still there, so the export still imports (the
    # engine's build cache is everyone's: it is not pruned here to prove it).
    reachable = referenced_blobs(project / "cache")
    assert all((blobs / d.split(":", 1)[1]).is_file() for d in reachable)
    (project / "content.txt").write_text("second")
    rebuilt = cli(project, "build-app", "--tag", "three")
    assert "importing cache manifest from local:" in rebuilt.stderr


def untagged_build(project, marker: str) -> str:
    """An image of project's Dockerfile with no tag (as a rebuild leaves the old one)."""
    (project / "content.txt").write_text(f"untagged {uuid.uuid4()}")
    argv = ["docker", "buildx", "build", "-q", "--load", "--label", f"test.marker={marker}"]
    return subprocess.run(
        [*argv, str(project)], check=True, capture_output=True, text=True
    ).stdout.strip()


def remove_marked(engine, marker: str) -> None:
    for image in engine.api.images(all=True, filters={"label": f"test.marker={marker}"}):
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            engine.api.remove_image(image["Id"], force=True)


@pytest.mark.parametrize("claim", ["tag", "container"])
def test_an_untagged_image_claimed_after_the_plan_stays(engine, tmp_path, monkeypatch, claim):
    """Removing by id deletes an image that has one tag: prune looks again first."""
    marker = uuid.uuid4().hex[:8]
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    project = project_dir(
        tmp_path / "p", f"127.0.0.1:5000/prune-{marker}/app", "FROM scratch\nCOPY content.txt /\n"
    )
    image_id = untagged_build(project, marker)
    builds.record(project, "app", "", {"containerimage.digest": image_id})
    settings, prune_engine = config.load(project), pruning.Engine(engine)
    holder = None
    try:
        planned = pruning.plan(Shell(echo=False), settings, prune_engine)
        assert [(i.kind, i.ident) for i in planned.items] == [("image", image_id)]
        if claim == "tag":  # someone tags it between the plan and the run
            engine.api.tag(image_id, f"127.0.0.1:5000/prune-{marker}/mine", "late")
        else:
            holder = engine.api.create_container(image_id, ["/content.txt"])
        result = pruning.run(Shell(echo=False), prune_engine, settings, planned)
        assert result.removed == [] and [i.ident for i in result.skipped] == [image_id]
        assert result.reclaimed == 0
        assert engine.api.inspect_image(image_id)["Id"] == image_id
    finally:
        if holder:
            engine.api.remove_container(holder["Id"], force=True)
        remove_images(engine, f"127.0.0.1:5000/prune-{marker}/")
        remove_marked(engine, marker)


class RemovingAlongside(pruning.Engine):
    """The engine as another user of it sees it: they remove their image while we prune."""

    def __init__(self, client, other: str):
        super().__init__(client)
        self.other = other

    def remove(self, item):
        with contextlib.suppress(docker.errors.NotFound):
            self.client.api.remove_image(self.other)
        return super().remove(item)


def test_reclaimed_counts_only_what_this_prune_freed(engine, tmp_path, monkeypatch):
    marker = uuid.uuid4().hex[:8]
    repo = f"127.0.0.1:5000/prune-{marker}/app"
    state = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    project = project_dir(tmp_path / "p", repo, "FROM scratch\nCOPY content.txt /\n")
    other = project_dir(
        tmp_path / "o", f"127.0.0.1:5000/prune-{marker}/other", "FROM scratch\nCOPY content.txt /\n"
    )
    try:
        for version in ("v1", "v2"):  # keep_images = 1: v1 goes
            build(project, os.urandom(1 << 20).hex(), version)
        build(other, os.urandom(2 << 20).hex(), "big")  # another user's image, 4 MiB
        settings = config.load(project)
        prune_engine = RemovingAlongside(engine, f"127.0.0.1:5000/prune-{marker}/other:big")
        planned = pruning.plan(Shell(echo=False), settings, prune_engine)
        assert [i.name for i in planned.items] == [f"{repo}:v1"]
        result = pruning.run(Shell(echo=False), prune_engine, settings, planned)
        assert [i.name for i in result.removed] == [f"{repo}:v1"]
        # the v1 layer (2 MiB of hex) alone, not the other user's 4 MiB
        assert result.reclaimed == planned.estimate and 2 << 20 <= result.reclaimed < 3 << 20
        again = pruning.plan(Shell(echo=False), settings, prune_engine)
        assert again.items == []
        assert pruning.run(Shell(echo=False), prune_engine, settings, again).reclaimed == 0
    finally:
        remove_images(engine, f"127.0.0.1:5000/prune-{marker}/")


def test_one_run_removes_a_stopped_stack_container_and_the_image_only_it_used(
    engine, mirror, tmp_path
):
    """Prune is idempotent: what the plan removes first does not protect what follows."""
    marker = uuid.uuid4().hex[:8]
    repo = f"127.0.0.1:5000/prune-{marker}/app"
    stack = f"prune{marker}"
    extra = f'[tool.buildtasks.stack]\nproject = "{stack}"\n'
    dockerfile = "FROM python:3.11-slim\nCOPY content.txt /\n"
    project = project_dir(tmp_path / "p", repo, dockerfile, "", mirror)
    (project / "pyproject.toml").write_text((project / "pyproject.toml").read_text() + extra)
    container = None
    try:
        build(project, "one", "v1")
        build(project, "two", "v2")  # keep_images = 1: v1 is stale but for its container
        container = engine.containers.create(
            f"{repo}:v1", ["true"], name=f"{stack}-api-{marker}", labels={PROJECT_LABEL: stack}
        )
        container.start()
        container.wait(timeout=60)
        result = cli(project, "prune")
        removed = [(kind, name) for kind, name, _ in listed(result.stdout, "removed")]
        assert removed == [("container", f"{stack}-api-{marker}"), ("image-tag", f"{repo}:v1")], (
            result.stdout + result.stderr[-2000:]
        )
        assert listed(cli(project, "--dry", "prune").stdout, "would remove") == []
    finally:
        if container is not None:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
        remove_images(engine, f"127.0.0.1:5000/prune-{marker}/")


@pytest.mark.parametrize(
    ("flag", "value", "reason"),
    [
        ("--until", "7d", "is not a duration"),
        ("--until", "99999999999h", "too long"),
        ("--keep-storage", "lots", "is not a size"),
        ("--keep-storage", "9" * 320 + "MB", "too large"),
    ],
)
def test_prune_flags_are_checked_like_the_configuration(engine, tmp_path, flag, value, reason):
    project = project_dir(tmp_path, "127.0.0.1:5000/prune-flags/app", "FROM scratch\n")
    result = run_cli(["buildtasks", "prune", "--build-cache", flag, value], cwd=project)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: {flag}: ") and reason in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_a_pushed_build_is_the_projects_own(engine, tmp_path):
    """A push keeps the image in the engine's store: prune knows it built it."""
    marker = uuid.uuid4().hex[:8]
    repo = f"127.0.0.1:5000/prune-{marker}/app"
    machine = {"x86_64": "amd64", "aarch64": "arm64"}[engine.info()["Architecture"]]
    project = project_dir(tmp_path / "p", repo, "FROM scratch\nCOPY content.txt /\n")
    text = (project / "pyproject.toml").read_text()
    (project / "pyproject.toml").write_text(text + f'platforms = ["linux/{machine}"]\n')
    (project / "content.txt").write_text(marker)
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "one")
    pushed = ""
    try:
        cli(project, "push")
        pushed = engine.api.inspect_image(f"{repo}:app")["Id"]  # the manifest's digest
        dry = cli(project, "--dry", "prune").stdout
        assert f"keep {repo}:app  (built from HEAD)" in dry.splitlines(), dry
        assert "no build record" not in dry
    finally:
        if pushed:  # the machine's registry allows deletes
            url = f"http://127.0.0.1:5000/v2/prune-{marker}/app/manifests/{pushed}"
            with contextlib.suppress(OSError):
                urllib.request.urlopen(urllib.request.Request(url, method="DELETE")).close()
        remove_images(engine, f"127.0.0.1:5000/prune-{marker}/")
