"""The same tasks on the other engines: Podman, and a second Docker engine used as a remote
build host. `nox -s "tests(engine='podman')"` and `"tests(engine='remote')"` run these with
the engine's environment (BUILDTASKS_ENGINE, DOCKER_HOST); the tests marked podman or remote
elsewhere run there too."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import docker
import pytest

from tests.conftest import REPO, remove_images, run_cli
from tests.integration.test_integration_session import leftovers

FIRST_ENGINE = "unix:///var/run/docker.sock"
SECOND_ENGINE = "tcp://127.0.0.1:2376"
pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def engine_name() -> str:
    """The engine this session drives; these tests need one of the other engines."""
    name = os.environ.get("TEST_ENGINE", "docker")
    if name == "docker":
        message = (
            "run these through nox -s \"tests(engine='podman')\" or \"tests(engine='remote')\""
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return name


def platforms_of(ref: str) -> list[str]:
    inspect = ["docker", "buildx", "imagetools", "inspect", "--raw", ref]
    index = json.loads(subprocess.run(inspect, capture_output=True, text=True, check=True).stdout)
    return sorted(
        f"{m['platform']['os']}/{m['platform']['architecture']}" for m in index["manifests"]
    )


@pytest.mark.podman
def test_a_multi_arch_push_lands_an_index_and_the_arm64_image_reports_aarch64(
    engine_name, engine, registry_prefix, tmp_path
):
    digests = tmp_path / "digests.json"
    env = {"REGISTRY": registry_prefix}
    pushed = run_cli(
        ["invoke", "push", "--target", "prod", "--allow-dirty", "--digests-file", str(digests)],
        env=env,
    )
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    assert "podman manifest push --all" in pushed.stderr
    ref = json.loads(digests.read_text())["prod"]["ref"]
    assert platforms_of(ref) == ["linux/amd64", "linux/arm64"]
    machine = subprocess.run(
        ["podman", "run", "--rm", "--platform", "linux/arm64", ref, "uname", "-m"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    try:
        assert machine.stdout.strip() == "aarch64", machine.stderr[-2000:]
    finally:
        subprocess.run(["podman", "rmi", "--force", ref], capture_output=True)


@pytest.mark.podman
@pytest.mark.remote
def test_nox_integration_of_the_example_passes_and_leaves_nothing_behind(engine_name, engine):
    session = subprocess.run(
        [sys.executable, "-m", "nox", "-s", "integration"], cwd=REPO, capture_output=True,
        text=True, timeout=900,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )  # fmt: skip
    output = session.stdout + session.stderr
    assert session.returncode == 0, output[-4000:]
    assert re.search(r"\b3 passed\b", output), output[-2000:]
    project = re.search(r"stack (jobsvc-integration-\S+) removed", output).group(1)
    assert leftovers(engine, project) == []


def cached_project(tmp_path: Path, engine_address: str, nonce: str = "") -> Path:
    """The example with a registry cache for prod, driving the engine at engine_address; a
    nonce in its requirements makes dependency layers no engine has built before."""
    project = tmp_path / "cached"
    shutil.copytree(REPO / "example", project / "example", ignore=shutil.ignore_patterns("data"))
    with open(project / "example/requirements.txt", "a") as requirements:
        requirements.write(f"# {nonce}\n" if nonce else "")
    shutil.copy(REPO / ".env", project / ".env")
    text = (REPO / "pyproject.toml").read_text()
    text = text.replace(
        "[tool.buildtasks]\n", f'[tool.buildtasks]\ndocker_host = "{engine_address}"\n', 1
    )
    text = text.replace(
        'dockerfile = "Dockerfile.prod"\n', 'dockerfile = "Dockerfile.prod"\ncache = "registry"\n'
    )
    (project / "pyproject.toml").write_text(text)
    (project / "tasks.py").write_text((REPO / "tasks.py").read_text())
    return project


@pytest.mark.remote
def test_the_second_engine_builds_the_dependency_layers_from_the_first_ones_registry_cache(
    engine_name, engine, registry_prefix, tmp_path
):
    """The first engine pushes prod with its registry cache; prod built on the second engine
    (docker_host in the configuration: the environment points elsewhere) reports CACHED for
    the dependency install, the secret still a BuildKit secret."""
    nonce = uuid.uuid4().hex
    first = cached_project(tmp_path / "one", FIRST_ENGINE, nonce)
    env = {"REGISTRY": registry_prefix, "DOCKER_HOST": FIRST_ENGINE}
    pushed = run_cli(["invoke", "push", "--target", "prod", "--platform", "linux/amd64",
                      "--allow-dirty"], cwd=first, env=env)  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    assert f"type=registry,ref={registry_prefix}/buildtasks/jobsvc:buildcache-prod,mode=max" in (
        pushed.stderr
    )
    second = cached_project(tmp_path / "two", SECOND_ENGINE, nonce)
    try:
        built = run_cli(["invoke", "build-prod", "--no-check"], cwd=second, env=env)
        assert built.returncode == 0, built.stderr[-3000:]
        cache = f"{registry_prefix}/buildtasks/jobsvc:buildcache-prod"
        assert f"importing cache manifest from {cache}" in built.stderr, built.stderr[-3000:]
        steps = dict(re.findall(r"^#(\d+) \[(deps [^\]]+)\] RUN .*pip install", built.stderr, re.M))
        assert steps, built.stderr[-3000:]
        for number, name in steps.items():
            assert re.search(rf"^#{number} CACHED$", built.stderr, re.M), (
                name,
                built.stderr[-3000:],
            )
        assert "--secret id=ca,src=" in built.stderr and "--build-arg ca" not in built.stderr
    finally:
        remove_images(docker.DockerClient(base_url=SECOND_ENGINE), registry_prefix)
        remove_images(docker.DockerClient(base_url=FIRST_ENGINE), registry_prefix)


@pytest.mark.remote
def test_doctor_names_the_engine_and_the_host_it_talks_to(engine_name, tmp_path):
    project = cached_project(tmp_path, SECOND_ENGINE)
    result = run_cli(["invoke", "doctor"], cwd=project, env={"DOCKER_HOST": FIRST_ENGINE})
    assert result.returncode == 0, result.stdout + result.stderr
    engine_line = next(line for line in result.stdout.splitlines() if " engine " in line)
    assert re.fullmatch(
        rf"ok   engine +Docker Engine \S+, docker at {SECOND_ENGINE}, storage \S+", engine_line
    ), engine_line


@pytest.mark.podman
def test_doctor_reports_podmans_version_socket_storage_and_mode_and_bake_as_one_line(engine_name):
    result = run_cli(["invoke", "doctor"])
    lines = {line.split()[1]: line for line in result.stdout.splitlines() if line.strip()}
    assert re.fullmatch(
        r"ok   engine +Podman 4\.\S+ \(rootful\), podman at unix:///run/podman/podman.sock",
        lines["engine"],
    ), result.stdout
    assert lines["storage"].endswith("overlay driver")
    assert lines["bake"] == (
        "warn bake            podman cannot bake  -> inv build-NAME for each target "
        "(shared bases first), or BUILDTASKS_ENGINE=docker"
    )
    bake = run_cli(["invoke", "build"])
    assert bake.returncode == 1
    assert bake.stderr.strip().splitlines() == [
        "error: podman cannot bake several targets at once; build them one by one "
        "(inv build-NAME, shared bases first) or set BUILDTASKS_ENGINE=docker"
    ]
    prune = run_cli(["invoke", "prune", "--build-cache"])
    assert prune.returncode == 1
    assert prune.stderr.strip().splitlines() == [
        "error: podman has no BuildKit cache to prune; drop --build-cache/--all (`inv prune` "
        "alone removes this project's images), or use `podman image prune`"
    ]
