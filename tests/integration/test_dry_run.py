"""`inv --dry TASK` changes nothing, and `--json` prints one JSON document, on a project
whose layout is unlike example/: compose file under deploy/, data under var/, a context in
services/web, a host SQLite database and a Redis service called `cache`.

Each state-changing task runs with --dry against a live project (images built, stack up,
a backup set taken, an image pushed, generated code present, a git remote) and the whole
observable world is compared before and after: the project tree, git refs (local and
remote), the engine's images, containers, volumes and networks of the project, the
registry's tags, and Redis's DBSIZE and save counters.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from buildtasks.docker.engine import run_in
from tests.conftest import remove_images

pytestmark = pytest.mark.integration

DOCKERFILE = """\
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE} AS runtime
RUN useradd --uid 1000 --no-create-home web
COPY app.py /srv/app.py
USER 1000
HEALTHCHECK --interval=1s --timeout=2s --retries=30 \\
    CMD ["python3", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8080/healthz')"]
CMD ["python3", "/srv/app.py"]

FROM runtime AS tools
CMD ["python3", "-c", "print('tools')"]
"""
APP = """\
import http.server, json

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"status": "ok"}).encode()
        self.send_response(200 if self.path == "/healthz" else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
"""
STACK = """\
services:
  cache:
    image: ${REDIS_IMAGE}
    command: ["redis-server", "--dir", "/data", "--bind", "0.0.0.0", "--protected-mode", "no"]
    volumes: [cache-data:/data]
    stop_grace_period: 2s
    healthcheck: {test: ["CMD", "redis-cli", "ping"], interval: 1s, retries: 30}
  web:
    image: ${BUILDTASKS_IMAGE_WEB}
    ports: ["127.0.0.1::8080"]
    stop_grace_period: 2s
    depends_on: {cache: {condition: service_healthy}}
volumes:
  cache-data:
"""
PROTO = """\
syntax = "proto3";
package shop.v1;
message Order { string id = 1; int32 quantity = 2; }
service Orders { rpc Get(Order) returns (Order); }
"""
PYPROJECT = """\
[project]
name = "shop"
version = "1.4.0"

[tool.buildtasks]
image = "{prefix}/shop"
context = "services/web"
mirror = "${{BASE_IMAGE_MIRROR:-}}"

[tool.buildtasks.targets.web]
stage = "runtime"
platforms = ["linux/amd64"]
checks = ["non-root", "healthcheck"]
build_args = {{ PYTHON_IMAGE = "python:3.11-slim" }}

[tool.buildtasks.targets.tools]
stage = "tools"
build_args = {{ PYTHON_IMAGE = "python:3.11-slim" }}

[tool.buildtasks.stack]
compose = ["deploy/stack.yml"]
project = "{project}"
app_service = "web"
app_port = 8080
health_path = "/healthz"
targets = ["web"]
wait_timeout = 90

[tool.buildtasks.backup]
dir = "snapshots"
sqlite = ["var/db/shop.sqlite"]
files = ["var/uploads"]
redis = {{ service = "cache" }}

[tool.buildtasks.release]
version_file = "services/web/web_version.py"
changelog = "CHANGES.md"
targets = ["web"]

[tool.buildtasks.proto]
src = "api/protos"
out = "services/web/gen"
"""


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "Shop Dev", "GIT_AUTHOR_EMAIL": "dev@shop.test",
           "GIT_COMMITTER_NAME": "Shop Dev", "GIT_COMMITTER_EMAIL": "dev@shop.test"}  # fmt: skip
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout


def inv(
    project: Path, *args: str, timeout: int = 900, env: dict | None = None
) -> subprocess.CompletedProcess:
    """`python -m buildtasks ARGS` in the fixture project, as its user would run it."""
    return subprocess.run(
        [sys.executable, "-m", "buildtasks", *args],
        cwd=project,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def make_project(root: Path, prefix: str, project: str, mirror: str) -> Path:
    (root / "services/web").mkdir(parents=True)
    (root / "services/web/Dockerfile").write_text(DOCKERFILE)
    (root / "services/web/app.py").write_text(APP)
    (root / "services/web/.dockerignore").write_text("gen/\n")
    (root / "services/web/web_version.py").write_text('__version__ = "1.4.0"\n')
    (root / "deploy").mkdir()
    (root / "deploy/stack.yml").write_text(STACK)
    (root / "api/protos").mkdir(parents=True)
    (root / "api/protos/orders.proto").write_text(PROTO)
    (root / "var/uploads/2026").mkdir(parents=True)
    (root / "var/uploads/2026/invoice.txt").write_text("invoice 1\n")
    (root / "var/db").mkdir()
    db = sqlite3.connect(root / "var/db/shop.sqlite")
    db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, qty INTEGER)")
    db.executemany("INSERT INTO orders (qty) VALUES (?)", [(n,) for n in range(50)])
    db.commit()
    db.close()
    (root / "CHANGES.md").write_text(
        "# Changelog\n\n## [Unreleased]\n\n### Fixed\n- orders keep their quantity\n"
    )
    (root / "pyproject.toml").write_text(PYPROJECT.format(prefix=prefix, project=project))
    redis_image = f"{mirror}/redis:7" if mirror else "redis:7"
    (root / ".env").write_text(f"BASE_IMAGE_MIRROR={mirror}\nREDIS_IMAGE={redis_image}\n")
    (root / ".gitignore").write_text(".env\nsnapshots/\nvar/\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "shop 1.4.0")
    remote = root.parent / "remote.git"
    git(root.parent, "init", "-q", "--bare", str(remote))
    git(root, "remote", "add", "origin", str(remote))
    git(root, "push", "-q", "origin", "main")
    return remote


def tree(root: Path) -> dict[str, tuple]:
    """Every path under root (but .git, compared through its refs) with its content."""
    entries = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if relative == ".git" or relative.startswith(".git/"):
            continue
        stat = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        entries[relative] = (stat.st_mode, stat.st_size, stat.st_mtime_ns, digest)
    return entries


MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)


def registry_tags(repository: str) -> dict[str, str]:
    """tag -> digest of every tag of repository (host/name) in the registry."""
    host, _, name = repository.partition("/")
    try:
        with urllib.request.urlopen(f"http://{host}/v2/{name}/tags/list", timeout=10) as reply:
            tags = json.load(reply).get("tags") or []
    except urllib.error.HTTPError as exc:
        if exc.code == 404:  # nothing pushed yet
            return {}
        raise
    digests = {}
    for tag in tags:
        # One Accept header per type: the registry ignores a comma-joined list and falls
        # back to schema 1, which it cannot produce for an index.
        connection = http.client.HTTPConnection(host, timeout=10)
        connection.putrequest("HEAD", f"/v2/{name}/manifests/{tag}")
        for media_type in MANIFEST_TYPES:
            connection.putheader("Accept", media_type)
        connection.endheaders()
        digests[tag] = connection.getresponse().getheader("Docker-Content-Digest")
        connection.close()
    return digests


def service_container(engine, project: str, service: str):
    labels = [f"com.docker.compose.project={project}", f"com.docker.compose.service={service}"]
    found = engine.containers.list(all=True, filters={"label": labels})
    return found[0] if found else None


def redis_state(engine, project: str) -> tuple:
    cache = service_container(engine, project, "cache")
    if cache is None or cache.status != "running":
        return ("not running",)

    def cli(*args: str) -> str:
        return run_in(cache, ["redis-cli", *args])[1]

    info = dict(
        line.split(":", 1) for line in cli("INFO", "persistence").splitlines() if ":" in line
    )
    return (
        cli("DBSIZE"),
        cli("LASTSAVE"),
        info.get("rdb_saves"),
        info.get("rdb_changes_since_last_save"),
    )


def image_list(engine) -> list[dict]:
    """The engine's images, low-level (no per-image inspect). Another user removing an
    image while the engine lists them makes it answer 404 once: ask again."""
    import docker

    for _ in range(5):
        try:
            return engine.api.images(all=True)
        except docker.errors.NotFound:
            time.sleep(0.5)
    return engine.api.images(all=True)


def world(engine, root: Path, remote: Path, prefix: str, project: str) -> dict:
    label = {"label": f"com.docker.compose.project={project}"}
    images = sorted(
        (image["Id"], tuple(sorted(image["RepoTags"] or ())))
        for image in image_list(engine)
        if any(tag.startswith(prefix) for tag in image["RepoTags"] or ())
    )
    return {
        "tree": tree(root),
        "refs": git(root, "for-each-ref", "--format=%(refname) %(objectname)"),
        "head": git(root, "rev-parse", "HEAD"),
        "index": git(root, "status", "--porcelain", "--ignored"),
        "remote": git(remote, "for-each-ref", "--format=%(refname) %(objectname)"),
        "images": images,
        "containers": sorted(
            (c.id, c.status) for c in engine.containers.list(all=True, filters=label)
        ),
        "volumes": sorted(v.name for v in engine.volumes.list(filters=label)),
        "networks": sorted(n.name for n in engine.networks.list(filters=label)),
        "registry": registry_tags(f"{prefix}/shop"),
        "redis": redis_state(engine, project),
    }


def differences(before: dict, after: dict) -> dict:
    changed = {}
    for key in before:
        if before[key] == after[key]:
            continue
        if key == "tree":
            paths = set(before[key]) | set(after[key])
            changed[key] = sorted(p for p in paths if before[key].get(p) != after[key].get(p))
        else:
            changed[key] = (before[key], after[key])
    return changed


@pytest.fixture(scope="module")
def live_project(engine, mirror, tmp_path_factory):
    """The foreign project, live: built, pushed, its stack up with data in Redis, a backup
    set taken and its gRPC code generated."""
    base = tmp_path_factory.mktemp("dry")
    root = base / "shop"
    root.mkdir()
    prefix = f"127.0.0.1:5000/dry-{uuid.uuid4().hex[:8]}"
    project = f"shopdry{uuid.uuid4().hex[:6]}"
    remote = make_project(root, prefix, project, mirror)
    try:
        ok(inv(root, "proto"))
        git(root, "add", "-A")
        git(root, "commit", "-qm", "generated code")
        git(root, "push", "-q", "origin", "main")
        ok(inv(root, "deploy"))
        ok(inv(root, "build-tools", "--no-check"))
        ok(inv(root, "push"))
        cache = service_container(engine, project, "cache")
        for n in range(20):
            cache.exec_run(["redis-cli", "SET", f"order:{n}", str(n)])
        ok(inv(root, "backup"))
        yield root, remote, prefix, project
    finally:
        inv(root, "down", "--volumes")
        remove_images(engine, prefix)


STATE_CHANGING = [
    ["build-web"],
    ["build-tools"],
    ["build"],
    ["push"],
    ["push", "--target", "web"],
    ["release", "--bump", "patch"],
    ["up"],
    ["down"],
    ["down", "--volumes"],
    ["deploy"],
    ["backup"],
    ["restore", "--yes"],
    ["prune"],
    ["prune", "--all", "--yes"],
    ["proto", "--force"],
    ["proto.clean"],
]


@pytest.mark.parametrize("task", STATE_CHANGING, ids=" ".join)
def test_dry_run_changes_nothing(engine, live_project, task):
    root, remote, prefix, project = live_project
    before = world(engine, root, remote, prefix, project)
    # The whole-engine prune plans without the engine: run it against none, so a dry run
    # that were not honest could not prune the engine every user of this machine shares.
    env = {"DOCKER_HOST": f"unix://{root}/no-engine.sock"} if "--all" in task else None
    result = inv(root, "--dry", *task, env=env)
    after = world(engine, root, remote, prefix, project)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert differences(before, after) == {}
    assert "Traceback" not in result.stderr


JSON_TASKS = [
    ["backup", "--json"],
    ["backup.list", "--json"],
    ["cache.usage", "--json"],
    ["health", "--json"],
    ["deploy", "--json"],
]


@pytest.mark.parametrize("dry", [(), ("--dry",)], ids=["run", "dry"])
@pytest.mark.parametrize("task", JSON_TASKS, ids=" ".join)
def test_json_output_is_one_document(live_project, task, dry):
    root, _remote, _prefix, _project = live_project
    result = ok(inv(root, *dry, *task))
    json.loads(result.stdout)  # exactly one document: anything else on stdout fails here


def test_a_task_sees_the_tree_an_earlier_task_of_the_same_invocation_left(live_project):
    """`inv proto.clean push`: the clean leaves the tree dirty, so the push must refuse,
    not publish clean-looking tags read before the clean."""
    root, _remote, prefix, _project = live_project
    before = registry_tags(f"{prefix}/shop")
    try:
        result = inv(root, "proto.clean", "push", "--target", "web")
        assert result.returncode != 0
        assert "the working tree has uncommitted changes" in result.stderr
        assert registry_tags(f"{prefix}/shop") == before
    finally:
        git(root, "checkout", "--", ".")


@pytest.mark.parametrize("task", [["up"], ["deploy"], ["down"], ["logs"], ["health"]], ids=" ".join)
def test_a_dry_stack_command_writes_no_mirror_state(engine, tmp_path, task):
    """The mirror's compose file is buildtasks' state: only a real up or deploy writes it."""
    (tmp_path / "compose.yml").write_text("services:\n  cache: {image: 'redis:7'}\n")
    (tmp_path / "pyproject.toml").write_text(
        '[tool.buildtasks]\nimage = "127.0.0.1:5000/drystate/app"\n'
        'mirror = "127.0.0.1:5000/mirror"\n[tool.buildtasks.stack]\n'
        f'compose = ["compose.yml"]\nproject = "drystate{uuid.uuid4().hex[:6]}"\n'
    )
    state = tmp_path / "state"
    result = inv(tmp_path, "--dry", *task, env={"XDG_STATE_HOME": str(state)})
    assert "Traceback" not in result.stderr
    assert result.returncode == (1 if task == ["health"] else 0), result.stderr[-3000:]
    assert not state.exists() or list(state.rglob("*")) == []
    planned = [
        line
        for line in result.stderr.splitlines()
        if line.startswith("[dry] write ") and "compose-mirror-" in line
    ]
    assert len(planned) == (1 if task in (["up"], ["deploy"]) else 0), result.stderr[-3000:]
