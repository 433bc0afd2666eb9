"""`inv build-<target>` and `inv build` on the real engine, with the example service."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
import urllib.request
import uuid

import pytest

from buildtasks.docker.build import IMAGE_LABEL
from buildtasks.docker.engine import run_in
from tests.conftest import REPO, run_cli, run_once

pytestmark = pytest.mark.integration


def git_head() -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()


def wait_for_health(port: int, timeout: float = 30) -> tuple[int, dict]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
                return reply.status, json.loads(reply.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


@pytest.mark.podman
def test_each_target_builds_and_prod_serves_health_as_uid_1000(engine, registry_prefix):
    env = {"REGISTRY": registry_prefix}
    for target in ("dev", "apify", "prod"):
        result = run_cli(["invoke", f"build-{target}"], env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        summary = result.stdout.strip().splitlines()[-1]
        assert summary.startswith(
            f"{target}: {registry_prefix}/buildtasks/jobsvc:{target}  sha256:"
        )
    image = engine.images.get(f"{registry_prefix}/buildtasks/jobsvc:prod")
    labels = image.attrs["Config"]["Labels"]
    assert labels["org.opencontainers.image.revision"] == git_head()
    assert labels["org.opencontainers.image.title"] == "jobsvc"
    assert labels["org.opencontainers.image.version"] == "0.1.0"
    assert "org.opencontainers.image.created" in labels
    container = engine.containers.run(
        image.id, detach=True, ports={"8000/tcp": ("127.0.0.1", None)}, remove=False
    )
    try:
        container.reload()
        port = int(container.ports["8000/tcp"][0]["HostPort"])
        assert container.ports["8000/tcp"][0]["HostIp"] == "127.0.0.1"
        status, body = wait_for_health(port)
        assert status == 200 and body["status"] == "ok"
        assert run_in(container, ["id", "-u"]) == (0, "1000")
    finally:
        container.remove(force=True, v=True)


def test_build_bakes_all_three_images(engine, registry_prefix):
    result = run_cli(["invoke", "build"], env={"REGISTRY": registry_prefix})
    assert result.returncode == 0, result.stderr[-2000:]
    for target in ("dev", "prod", "apify"):
        engine.images.get(f"{registry_prefix}/buildtasks/jobsvc:{target}")
    assert "docker buildx bake --file -" in result.stderr


def test_dry_build_prints_the_command_and_builds_nothing(engine, registry_prefix):
    result = run_cli(["invoke", "--dry", "build-prod"], env={"REGISTRY": registry_prefix})
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("[dry] docker buildx build --file ")
    assert f"--tag {registry_prefix}/buildtasks/jobsvc:prod " in result.stderr
    # no image of this build, tagged or not (others may build on the engine meanwhile)
    image = f"{registry_prefix}/buildtasks/jobsvc"
    assert not engine.images.list(all=True, filters={"label": f"{IMAGE_LABEL}={image}"})
    assert not engine.images.list(name=image)


def write_fixture_project(tmp_path, image: str, dockerfile: str, extra: str = "", env: str = ""):
    (tmp_path / "pyproject.toml").write_text(
        f'[tool.buildtasks]\nimage = "{image}"\nmirror = "${{BASE_IMAGE_MIRROR:-}}"\n'
        f"[tool.buildtasks.targets.app]\n{extra}\n"
    )
    (tmp_path / "Dockerfile").write_text(dockerfile)
    (tmp_path / ".env").write_text(env)
    return tmp_path


def test_root_image_fails_naming_every_violated_check(engine, registry_prefix, tmp_path):
    (tmp_path / "hello.txt").write_text("hi\n")
    project = write_fixture_project(
        tmp_path,
        f"{registry_prefix}/rooted",
        "FROM scratch\nCOPY hello.txt /\n",
        'checks = ["non-root", "healthcheck", "dockerignore"]',
    )
    result = run_cli(["buildtasks", "build-app"], cwd=project)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "failed 3 check(s)" in result.stderr
    assert "- non-root: runs as root (no USER)" in result.stderr
    assert "- healthcheck: the image has no HEALTHCHECK" in result.stderr
    assert "- dockerignore: the build context has no .dockerignore" in result.stderr
    skipped = run_cli(["buildtasks", "build-app", "--no-check"], cwd=project)
    assert skipped.returncode == 0, skipped.stderr


def test_secret_from_env_file_reaches_the_build_and_nowhere_else(
    engine, registry_prefix, mirror, tmp_path
):
    secret = f"tok-{uuid.uuid4().hex}"
    project = write_fixture_project(
        tmp_path,
        f"{registry_prefix}/secretive",
        "FROM python:3.11-slim\n"
        "RUN --mount=type=secret,id=token,required=true "
        "python3 -c \"import hashlib; print(hashlib.sha256(open('/run/secrets/token', 'rb')"
        '.read()).hexdigest())" > /token.sha256\n',
        'secrets = ["token=env:API_TOKEN"]\nchecks = []',
        env=f"API_TOKEN={secret}\nBASE_IMAGE_MIRROR={mirror}\n",
    )
    result = run_cli(["buildtasks", "build-app", "--no-cache"], cwd=project)
    assert result.returncode == 0, result.stderr[-2000:]
    assert secret not in result.stdout + result.stderr
    assert "--secret id=token,env=API_TOKEN" in result.stderr
    ref = f"{registry_prefix}/secretive:app"
    history = subprocess.run(
        ["docker", "history", "--no-trunc", ref], capture_output=True, text=True, check=True
    ).stdout
    assert secret not in history
    assert secret not in json.dumps(engine.images.get(ref).attrs)
    digest = run_once(engine, ref, ["cat", "/token.sha256"])
    assert digest == hashlib.sha256(secret.encode()).hexdigest()
    grep = f"grep -rls {secret} / --exclude-dir=proc --exclude-dir=sys || true"
    assert run_once(engine, ref, ["sh", "-c", grep]) == ""


def test_missing_env_secret_is_one_line_before_building(tmp_path, registry_prefix):
    project = write_fixture_project(
        tmp_path, f"{registry_prefix}/x", "FROM scratch\n", 'secrets = ["token=env:UNSET_TOKEN_X"]'
    )
    result = run_cli(["buildtasks", "build-app"], cwd=project)
    assert result.returncode == 2
    assert result.stderr == (
        "error: target app: secret `token` reads $UNSET_TOKEN_X, which is not set; "
        "set it in the environment or an env file\n"
    )
