"""`inv push` and `inv release` against a real registry and a bare git remote."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from buildtasks.platforms import free_port, native
from tests.conftest import REPO, remove_images, run_cli, run_once

pytestmark = pytest.mark.integration


# The release commits and tags: give it an identity whatever the machine's git config.
IDENTITY = {
    "GIT_AUTHOR_NAME": "Release Manager",
    "GIT_AUTHOR_EMAIL": "rm@localhost",
    "GIT_COMMITTER_NAME": "Release Manager",
    "GIT_COMMITTER_EMAIL": "rm@localhost",
}


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=Release Manager", "-c", "user.email=rm@localhost", *args],
        cwd=cwd, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


def release_project(tmp_path: Path, platforms: str = '["linux/amd64", "linux/arm64"]') -> Path:
    """A clone of the example as its own repository, with a bare remote."""
    project = tmp_path / "project"
    shutil.copytree(
        REPO / "example",
        project / "example",
        ignore=shutil.ignore_patterns("gen", "data", "__pycache__"),
    )
    text = (REPO / "pyproject.toml").read_text()
    text = text.replace(
        'targets = ["prod"]\n\n[tool.buildtasks.targets.dev]',
        f'targets = ["prod"]\nplatforms = {platforms}\n\n[tool.buildtasks.targets.dev]',
    )
    (project / "pyproject.toml").write_text(text)
    shutil.copy(REPO / ".env", project / ".env")
    (project / ".gitignore").write_text(".env\n")
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "--quiet", "--bare", "-b", "main", str(remote))
    git(project, "init", "--quiet", "-b", "main")
    git(project, "add", "-A")
    git(project, "commit", "--quiet", "-m", "example")
    git(project, "remote", "add", "origin", str(remote))
    git(project, "push", "--quiet", "origin", "main")
    return project


INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)


def tags_of(address: str, repository: str) -> dict[str, str]:
    """tag -> digest of every tag of a repository in the registry ({} when it has none)."""
    try:
        listing = json.loads(
            urllib.request.urlopen(f"http://{address}/v2/{repository}/tags/list").read()
        )
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return {}
        raise
    digests = {}
    for tag in listing.get("tags") or []:
        request = urllib.request.Request(
            f"http://{address}/v2/{repository}/manifests/{tag}", method="HEAD",
            headers={"Accept": ", ".join(INDEX_TYPES)},
        )  # fmt: skip
        digests[tag] = urllib.request.urlopen(request).headers["Docker-Content-Digest"]
    return digests


LOCAL_REGISTRY = "127.0.0.1:5000"  # the machine's registry (scripts/install-docker)


def delete_repository(path: str) -> None:
    """Delete every manifest a repository of the machine's registry holds (the registry
    allows deletes)."""
    for digest in set(tags_of(LOCAL_REGISTRY, path).values()):
        request = urllib.request.Request(
            f"http://{LOCAL_REGISTRY}/v2/{path}/manifests/{digest}", method="DELETE"
        )
        urllib.request.urlopen(request).close()


@pytest.fixture
def repository(engine):
    """A repository of the test's own in the machine's registry. Afterwards the manifests
    it holds are deleted (that registry allows deletes) and its local images removed."""
    path = f"test-{uuid.uuid4().hex[:8]}/small"
    yield f"{LOCAL_REGISTRY}/{path}"
    delete_repository(path)
    remove_images(engine, f"{LOCAL_REGISTRY}/{path.split('/')[0]}")


def small_project(
    tmp_path: Path, image: str, targets=("web",), broken=(), newline: str = "\n"
) -> Path:
    """A project unlike the example: version in pyproject.toml, changelog at the root (both
    with newline line endings), single-platform `FROM scratch` targets (those in broken fail
    to build), a bare remote."""
    project = tmp_path / "small"
    (project / "service").mkdir(parents=True)
    (project / "service/app.txt").write_text("app\n")
    sections = ""
    for name in targets:
        source = "missing.txt" if name in broken else "app.txt"
        (project / f"service/{name}.Dockerfile").write_text(f"FROM scratch\nCOPY {source} /\n")
        sections += (
            f"\n[tool.buildtasks.targets.{name}]\n"
            f'dockerfile = "{name}.Dockerfile"\nplatforms = ["{native()}"]\n'
        )
    pyproject = (
        '[project]\nname = "small"\nversion = "0.1.0"\n\n'
        f'[tool.buildtasks]\nimage = "{image}"\ncontext = "service"\n\n'
        f"[tool.buildtasks.release]\ntargets = {json.dumps(list(targets))}\n{sections}"
    )
    changelog = "# Changelog\n\n## [Unreleased]\n\n### Added\n- The web target.\n"
    for name, text in (("pyproject.toml", pyproject), ("CHANGELOG.md", changelog)):
        (project / name).write_bytes(text.replace("\n", newline).encode())
    remote = tmp_path / "small.git"
    git(tmp_path, "init", "--quiet", "--bare", "-b", "main", str(remote))
    git(project, "init", "--quiet", "-b", "main")
    git(project, "add", "-A")
    git(project, "commit", "--quiet", "-m", "small")
    git(project, "remote", "add", "origin", str(remote))
    git(project, "push", "--quiet", "origin", "main")
    return project


def raw_manifest(ref: str) -> dict:
    inspect = ["docker", "buildx", "imagetools", "inspect", "--raw", ref]
    return json.loads(subprocess.run(inspect, capture_output=True, text=True, check=True).stdout)


def platforms_at(ref: str) -> list[str]:
    from buildtasks.docker.registry import platforms
    from buildtasks.shell import Shell

    return platforms(Shell(), ref, raw_manifest(ref))


def platform_digests(ref: str) -> dict[str, str]:
    """platform -> image manifest digest of the index at ref (attestations left out)."""
    found = {}
    for entry in raw_manifest(ref)["manifests"]:
        platform = entry["platform"]
        if platform["os"] != "unknown":
            found[f"{platform['os']}/{platform['architecture']}"] = entry["digest"]
    return found


def labels_at(ref: str) -> dict[str, str]:
    """The labels of the image at ref (of the native platform's when ref is an index)."""
    inspect = ["docker", "buildx", "imagetools", "inspect", "--format", "{{json .Image}}", ref]
    image = json.loads(subprocess.run(inspect, capture_output=True, text=True, check=True).stdout)
    if "config" not in image:  # an index: one image per platform
        image = image[native()]
    return image["config"]["Labels"]


def snapshot(project: Path) -> tuple:
    return (
        git(project, "rev-parse", "HEAD"),
        git(project, "tag", "--list"),
        (project / "example/src/jobsvc/__init__.py").read_text(),
        (project / "example/CHANGELOG.md").read_text(),
        git(project, "status", "--porcelain"),
    )


def test_push_verifies_both_platforms_and_arm64_runs_under_qemu(engine, registry, tmp_path):
    address, _ = registry
    digests = str(tmp_path / "d.json")
    result = run_cli(
        ["invoke", "push", "--target", "prod", "--digests-file", digests], env={"REGISTRY": address}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    pushed = json.loads((tmp_path / "d.json").read_text())["prod"]
    assert pushed["platforms"] == ["linux/amd64", "linux/arm64"]
    assert platforms_at(pushed["ref"]) == ["linux/amd64", "linux/arm64"]
    machine = ["python", "-c", "import platform; print(platform.machine())"]
    assert run_once(engine, pushed["ref"], machine, platform="linux/arm64") == "aarch64"


def test_single_platform_push_is_read_back_from_its_index(engine, repository, tmp_path):
    project = small_project(tmp_path, repository)
    sha = git(project, "rev-parse", "--short=7", "HEAD")
    result = run_cli(["buildtasks", "push"], cwd=project)
    assert result.returncode == 0, result.stderr[-3000:]
    tags = tags_of(LOCAL_REGISTRY, repository.split("/", 1)[1])
    assert set(tags) == {"web", f"web-{sha}"} and len(set(tags.values())) == 1
    digest = tags["web"]
    assert result.stdout.splitlines() == [
        f"web: pushed {repository}@{digest}  [{native()}]",
        f"  tags: {repository}:web, {repository}:web-{sha}",
    ]
    # Provenance by default: an index of the image and its attestation manifest.
    entries = raw_manifest(f"{repository}:web")["manifests"]
    kinds = [(e.get("annotations") or {}).get("vnd.docker.reference.type") for e in entries]
    assert kinds == [None, "attestation-manifest"]
    assert platforms_at(f"{repository}@{digest}") == [native()]


def test_single_platform_release(engine, repository, tmp_path):
    project = small_project(tmp_path, repository, newline="\r\n")  # CRLF files stay CRLF
    result = run_cli(["buildtasks", "release", "--bump", "minor"], cwd=project, env=IDENTITY)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    remote = tmp_path / "small.git"
    assert git(remote, "tag", "--list") == "v0.2.0"
    assert git(remote, "rev-parse", "main") == git(project, "rev-parse", "HEAD")
    pyproject, changelog = (
        (project / "pyproject.toml").read_bytes(),
        (project / "CHANGELOG.md").read_bytes(),
    )
    assert b'version = "0.2.0"\r\n' in pyproject and b"## [0.2.0] - " in changelog
    assert all(text.count(b"\n") == text.count(b"\r\n") for text in (pyproject, changelog))
    tags = tags_of(LOCAL_REGISTRY, repository.split("/", 1)[1])
    commit = git(project, "rev-parse", "HEAD")
    assert set(tags) == {"0.2.0", "0.2", "0", f"web-release-{commit}"}
    verified = tags[f"web-release-{commit}"]  # the staging tag: what was pushed and read back
    labels = labels_at(f"{repository}:0.2.0")
    assert labels["org.opencontainers.image.revision"] == commit  # the release commit
    assert labels["org.opencontainers.image.version"] == "0.2.0"
    assert {tags["0.2.0"], tags["0.2"], tags["0"]} == {verified}  # the staged digest
    assert platforms_at(f"{repository}:0.2.0") == [native()]
    promoted = ", ".join(f"{repository}:{t}" for t in ("0.2.0", "0.2", "0"))
    assert f"web: {repository}@{verified} tagged {promoted}" in result.stdout


def test_failed_release_deletes_its_staging_tag(engine, repository, tmp_path):
    # web is pushed under its staging tag, then worker fails to build: the release fails.
    project = small_project(tmp_path, repository, targets=("web", "worker"), broken=("worker",))
    before = (git(project, "rev-parse", "HEAD"), (project / "pyproject.toml").read_text())
    result = run_cli(["buildtasks", "release", "--bump", "patch"], cwd=project, env=IDENTITY)
    assert result.returncode != 0, result.stdout[-2000:]
    assert "rolled back" in result.stderr  # progress goes to stderr; stdout is for results
    staging = rf"{re.escape(repository)}:web-release-[0-9a-f]{{40}}"  # the rolled-back commit
    assert re.search(rf"^  deleted {staging} \(sha256:[0-9a-f]{{64}}\) from the registry$",
                     result.stderr, re.MULTILINE), result.stderr  # fmt: skip
    assert tags_of(LOCAL_REGISTRY, repository.split("/", 1)[1]) == {}
    assert (git(project, "rev-parse", "HEAD"), (project / "pyproject.toml").read_text()) == before
    assert git(tmp_path / "small.git", "tag", "--list") == ""


def test_resume_refuses_a_moved_head_then_builds_the_release_commit(engine, repository, tmp_path):
    project = small_project(tmp_path, repository)
    release = subprocess.Popen(
        [str(REPO / ".venv/bin/python"), "-m", "buildtasks", "release", "--bump", "minor"],
        cwd=project, env={**os.environ, **IDENTITY}, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    progress = project / ".git/buildtasks-release.json"
    while not (progress.exists() and json.loads(progress.read_text())["done"] == ["commit"]):
        assert release.poll() is None
        time.sleep(0.01)
    os.killpg(release.pid, signal.SIGKILL)  # killed mid-push, as by a lost terminal
    release.wait()
    commit = git(project, "rev-parse", "HEAD")
    (project / "service/app.txt").write_text("a later change\n")
    dirty = run_cli(["buildtasks", "release", "--resume"], cwd=project, env=IDENTITY)
    assert dirty.returncode == 1
    assert dirty.stderr.strip().splitlines()[-1] == (
        f"error: the working tree has changes since release commit {commit[:12]}; "
        "stash them, then `inv release --resume`"
    )
    git(project, "commit", "--quiet", "-am", "later")

    refused = run_cli(["buildtasks", "release", "--resume"], cwd=project, env=IDENTITY)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: HEAD moved since release commit {commit[:12]}; "
        f"`git switch --detach {commit[:12]}` (or reset) then `inv release --resume`"
    )
    assert "docker buildx" not in refused.stderr
    assert git(project, "tag", "--list") == "v0.2.0"  # refusing undoes nothing

    git(project, "switch", "--quiet", "--detach", commit)
    resumed = run_cli(["buildtasks", "release", "--resume"], cwd=project, env=IDENTITY)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    remote = tmp_path / "small.git"
    assert git(remote, "rev-parse", "main") == git(remote, "rev-parse", "v0.2.0^{}") == commit
    labels = labels_at(f"{repository}:0.2.0")
    assert labels["org.opencontainers.image.revision"] == commit


def test_failed_release_names_a_registry_that_refuses_deletion(engine, registry, tmp_path):
    address, _ = registry  # a registry of the test's own, left with deletion disabled
    image = f"{address}/small"
    project = small_project(tmp_path, image, targets=("web", "worker"), broken=("worker",))
    result = run_cli(["buildtasks", "release", "--bump", "patch"], cwd=project, env=IDENTITY)
    assert result.returncode != 0
    refused = [line for line in result.stderr.splitlines() if "refuses deletion" in line]
    assert len(refused) == 1, result.stderr
    assert refused[0].strip().startswith(f"registry {address} refuses deletion")
    assert refused[0].endswith(" remains") and f"{image}:web-" in refused[0]


def test_dirty_push_is_refused_unless_allowed_and_then_says_what_it_published(
    engine, repository, tmp_path
):
    project = small_project(tmp_path, repository)
    sha = git(project, "rev-parse", "--short=7", "HEAD")
    (project / "service/app.txt").write_text("edited, not committed\n")
    refused = run_cli(["buildtasks", "push"], cwd=project)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == (
        "error: the working tree has uncommitted changes; pushing would publish "
        f"{repository}:web, {repository}:web-{sha}-dirty from them; commit or stash them "
        "first (`inv push --allow-dirty` publishes them)"
    )
    assert "docker buildx build" not in refused.stderr
    assert tags_of(LOCAL_REGISTRY, repository.split("/", 1)[1]) == {}

    allowed = run_cli(["buildtasks", "push", "--allow-dirty"], cwd=project)
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert allowed.stdout.splitlines()[2:] == [
        f"  built from uncommitted changes (--allow-dirty): {repository}:web-{sha}-dirty",
        f"  floating tags moved to this uncommitted build: {repository}:web",
    ]
    assert set(tags_of(LOCAL_REGISTRY, repository.split("/", 1)[1])) == {"web", f"web-{sha}-dirty"}


def test_push_to_an_unreachable_registry_fails_before_building(engine):
    result = run_cli(
        ["invoke", "push", "--target", "prod"], env={"REGISTRY": f"127.0.0.1:{free_port()}"}
    )
    assert result.returncode == 1
    assert "docker buildx build" not in result.stderr
    assert "cannot push" in result.stderr and "unreachable" in result.stderr


def test_full_release_then_prerelease(engine, registry, tmp_path):
    address, _ = registry
    project = release_project(tmp_path)
    env = {"REGISTRY": address, **IDENTITY}
    released = run_cli(["buildtasks", "release", "--bump", "minor"], cwd=project, env=env)
    assert released.returncode == 0, released.stdout[-2000:] + released.stderr[-3000:]
    remote = tmp_path / "remote.git"
    assert git(remote, "tag", "--list") == "v0.2.0"
    assert git(remote, "cat-file", "-t", "v0.2.0") == "tag"  # annotated
    assert git(remote, "rev-parse", "main") == git(project, "rev-parse", "HEAD")
    assert '__version__ = "0.2.0"' in (project / "example/src/jobsvc/__init__.py").read_text()
    assert "## [Unreleased]\n\n## [0.2.0] - " in (project / "example/CHANGELOG.md").read_text()
    tags = tags_of(address, "buildtasks/jobsvc")
    assert {tags["0.2.0"], tags["0.2"], tags["0"]} == {tags["0.2.0"]}
    assert "latest" not in tags
    assert platforms_at(f"{address}/buildtasks/jobsvc:0.2.0") == ["linux/amd64", "linux/arm64"]

    (project / "example/CHANGELOG.md").write_text(
        (project / "example/CHANGELOG.md")
        .read_text()
        .replace("## [Unreleased]\n", "## [Unreleased]\n\n### Changed\n- A candidate.\n", 1)
    )
    git(project, "commit", "--quiet", "-am", "notes")
    git(project, "push", "--quiet", "origin", "main")
    pre = run_cli(["buildtasks", "release", "--bump", "pre"], cwd=project, env=env)
    assert pre.returncode == 0, pre.stderr[-3000:]
    after = tags_of(address, "buildtasks/jobsvc")
    assert "0.3.0rc1" in after
    assert {k: after[k] for k in ("0.2.0", "0.2", "0")} == {
        k: tags[k] for k in ("0.2.0", "0.2", "0")
    }


def test_registry_stopped_before_the_push_rolls_everything_back(engine, registry, tmp_path):
    address, process = registry
    project = release_project(tmp_path, platforms='["linux/amd64"]')
    before = snapshot(project)
    release = subprocess.Popen(
        [str(REPO / ".venv/bin/python"), "-m", "buildtasks", "release", "--bump", "patch"],
        cwd=project, env={**os.environ, "REGISTRY": address, **IDENTITY},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    progress = project / ".git/buildtasks-release.json"
    while not progress.exists():
        assert release.poll() is None, release.communicate()[0]
        time.sleep(0.05)
    process.kill()
    process.wait()
    output, _ = release.communicate(timeout=600)
    assert release.returncode != 0, output
    assert "rolled back" in output
    assert snapshot(project) == before
    assert git(tmp_path / "remote.git", "tag", "--list") == ""


@pytest.mark.parametrize("problem", ["dirty", "branch", "tag", "prefix", "changelog"])
def test_preflight_refuses_with_its_own_message(registry, tmp_path, problem):
    address, _ = registry
    project = release_project(tmp_path, platforms='["linux/amd64"]')
    expected = {
        "dirty": "the working tree has uncommitted changes",
        "branch": "on branch topic, releases are made from main",
        "tag": "tag v0.1.1 already exists locally",
        "prefix": "v..0.1.1 is not a valid git tag name; fix release.tag_prefix",
        "changelog": "the Unreleased section is empty",
    }[problem]
    if problem == "dirty":
        (project / "example/src/jobsvc/worker.py").write_text("# edited\n")
    elif problem == "branch":
        git(project, "checkout", "--quiet", "-b", "topic")
    elif problem == "tag":
        git(project, "tag", "v0.1.1")
    elif problem == "prefix":
        pyproject = project / "pyproject.toml"
        section = "[tool.buildtasks.release]\n"
        text = pyproject.read_text().replace(section, f'{section}tag_prefix = "v.."\n', 1)
        pyproject.write_text(text)
        git(project, "commit", "--quiet", "-am", "prefix")
        git(project, "push", "--quiet", "origin", "main")
    else:
        changelog = project / "example/CHANGELOG.md"
        text = changelog.read_text()
        start, end = text.index("### Added"), text.index("## [0.1.0]")
        changelog.write_text(text[:start] + text[end:])
        git(project, "commit", "--quiet", "-am", "empty notes")
        git(project, "push", "--quiet", "origin", "main")
    before = snapshot(project)
    result = run_cli(
        ["buildtasks", "release", "--bump", "patch"], cwd=project, env={"REGISTRY": address}
    )
    assert result.returncode == 1
    assert expected in result.stderr
    assert "nothing was changed" in result.stderr
    assert snapshot(project) == before


def test_dry_release_changes_nothing(engine, registry, tmp_path):
    address, _ = registry
    project = release_project(tmp_path, platforms='["linux/amd64"]')
    before = snapshot(project)
    result = run_cli(
        ["buildtasks", "--dry", "release", "--bump", "minor"],
        cwd=project,
        env={"REGISTRY": address},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "release 0.1.0 -> 0.2.0, git tag v0.2.0" in result.stdout
    assert '+__version__ = "0.2.0"' in result.stdout
    # The push the release makes: its staging tag only, the new version in the labels.
    image = f"{address}/buildtasks/jobsvc"
    staging = f"{image}:prod-release-RELEASE-COMMIT"
    promoted = ", ".join(f"{image}:{t}" for t in ("0.2.0", "0.2", "0"))
    assert f"prod: push {staging} (version 0.2.0), verify, then tag {promoted}" in result.stdout
    assert "RELEASE-COMMIT stands for the release commit" in result.stdout
    (build,) = [line for line in result.stderr.splitlines() if "[dry] docker buildx build" in line]
    assert re.findall(r"--tag (\S+)", build) == [staging]
    assert "--label org.opencontainers.image.version=0.2.0 " in build
    assert snapshot(project) == before
    assert git(tmp_path / "remote.git", "tag", "--list") == ""
    catalog = json.loads(urllib.request.urlopen(f"http://{address}/v2/_catalog").read())
    assert catalog["repositories"] == []


def test_registry_cache_is_reused_once_the_local_cache_is_gone(engine, registry, mirror, tmp_path):
    address, _ = registry
    nonce = uuid.uuid4().hex  # names this test's build steps, so only their cache is removed
    project = small_project(tmp_path, f"{address}/small")
    (project / "service/web.Dockerfile").write_text(
        # Each step writes the time it ran: a step that runs again makes a different layer.
        f"FROM redis:7\nRUN echo {nonce} > /nonce && date +%s%N >> /nonce\n"
        f"RUN cat /nonce > /copy && date +%s%N >> /copy # {nonce}\n"
    )
    pyproject = project / "pyproject.toml"
    text = pyproject.read_text().replace(
        'context = "service"\n', f'context = "service"\nmirror = "{mirror}"\n'
    )
    pyproject.write_text(text + 'cache = "registry"\n')  # the last table: targets.web
    git(project, "commit", "--quiet", "-am", "registry cache")
    first = run_cli(["buildtasks", "push"], cwd=project)
    assert first.returncode == 0, first.stderr[-3000:]
    # The image manifest, not the index: the provenance beside it records when it was built.
    first_image = platform_digests(f"{address}/small:web")

    def ours() -> list[str]:
        return [r["ID"] for r in engine.df()["BuildCache"] if nonce in (r.get("Description") or "")]

    assert len(ours()) == 2, ours()  # the two RUN steps
    remove_images(engine, f"{address}/small")  # its records are then unused: prunable by id
    for _ in range(2):  # the engine's cache is everyone's: remove only these records
        for record in ours():  # (a parent goes only once its child is gone: a second round)
            prune = ["docker", "builder", "prune", "--force", "--filter", f"id={record}"]
            subprocess.run(prune, check=True, capture_output=True)
    assert not ours()

    second = run_cli(["buildtasks", "push"], cwd=project)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"importing cache manifest from {address}/small:buildcache-web" in second.stderr
    # BuildKit reports a step taken from the imported cache as CACHED, or, when it needs the
    # layer's blobs, as their download; either way the step did not run, which the layers
    # prove: the image is the one the first push made, timestamps and all.
    assert platform_digests(f"{address}/small:web") == first_image, second.stderr[-3000:]
