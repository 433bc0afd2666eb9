"""Teardown that signals cannot cancel, leases that any host can read, and the stack tasks
(`inv up/down/health/deploy`) on a fixture project laid out unlike example/: its compose
file at the root, services `front` and a one-shot `migrate`, tests in e2e/, artifacts in
out/, a session named `e2e`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import remove_images, run_cli
from tests.integration.test_integration_session import nox_env

pytestmark = pytest.mark.integration

STACK = """\
services:
  front:
    image: ${FRONT_IMAGE}
    # python as PID 1 ignores SIGTERM, so every `down` waits out the grace period: a window
    # in which to signal it
    command: ["sh", "-c", "sleep ${START_DELAY:-0}; exec python3 -m http.server 8080"]
    ports: ["127.0.0.1::8080"]
    volumes: [front-state:/state]
    stop_grace_period: 3s
    restart: unless-stopped
    healthcheck:
      test: ["CMD", "python3", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8080')"]
      interval: 1s
      timeout: 2s
      retries: 60
    depends_on:
      migrate: { condition: service_completed_successfully }
  migrate:
    image: ${MIGRATE_IMAGE:-${FRONT_IMAGE}}
    command: ["python3", "-c", "print('migrated')"]
volumes:
  front-state:
"""
TESTS = {
    "pass": "def test_front():\n    import os, urllib.request\n"
    "    url = 'http://' + os.environ['BUILDTASKS_FRONT_8080']\n"
    "    assert urllib.request.urlopen(url).status == 200\n",
    "slow": "def test_front():\n    import pathlib, time\n"
    "    pathlib.Path('running').write_text('yes')\n    time.sleep(120)\n",
}
LEASE_TTL = 2


def fixture_project(tmp_path: Path, mirror: str, test: str = "pass", **env: str) -> Path:
    name = f"btdown{uuid.uuid4().hex[:6]}"
    (tmp_path / "stack.yml").write_text(STACK)
    (tmp_path / "pyproject.toml").write_text(
        f'[tool.buildtasks]\nimage = "fixture/{name}"\nmirror = "{mirror}"\n'
        f'[tool.buildtasks.stack]\ncompose = ["stack.yml"]\nproject = "{name}"\n'
        'app_service = "front"\napp_port = 8080\nhealth_path = "/"\nwait_timeout = 60\n'
    )
    (tmp_path / "tasks.py").write_text("from buildtasks import namespace\n\nns = namespace()\n")
    (tmp_path / "noxfile.py").write_text(
        "from buildtasks.sessions import integration_session\n"
        "integration_session(name='e2e', compose=('stack.yml',), venv_backend='none', "
        "install=(), pytest_args=('-p', 'no:cacheprovider', 'e2e'), artifacts='out', "
        f"lease_ttl={LEASE_TTL})\n"
    )
    (tmp_path / "e2e").mkdir()
    (tmp_path / "e2e/test_front.py").write_text(TESTS[test])
    variables = {"FRONT_IMAGE": f"{mirror + '/' if mirror else ''}python:3.11-slim", **env}
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in variables.items()))
    return tmp_path


@pytest.fixture
def make_project(engine, mirror, tmp_path):
    """fixture_project(...) whose stacks and leases are removed afterwards whatever happened
    (a failing assertion must not leave them on the shared engine)."""
    made = []

    def make(test: str = "pass", **env: str) -> Path:
        project = fixture_project(tmp_path, mirror, test, **env)
        made.append(project_name(project))
        return project

    yield make
    from buildtasks.docker.engine import Engine, compose_resources, read_leases, remove_project
    from buildtasks.shell import Shell

    client = Engine(Shell(echo=False))
    labels = {r.labels["com.docker.compose.project"] for r in compose_resources(client)}
    for project in labels | read_leases(client).keys():
        if project.startswith(tuple(made)):
            remove_project(client, project)


def project_name(project: Path) -> str:
    return project.joinpath("pyproject.toml").read_text().split('project = "')[1].split('"')[0]


def leftovers(engine, prefix: str) -> list[str]:
    """Containers, networks and volumes of compose projects named PREFIX…, and leases."""
    labels = ("com.docker.compose.project", "io.buildtasks.lease")
    found = [  # sparse: other tests remove their containers meanwhile
        f"container {c.attrs['Names'][0].lstrip('/')}"
        for c in engine.containers.list(all=True, sparse=True)
        if any((c.attrs.get("Labels") or {}).get(label, "").startswith(prefix) for label in labels)
    ]
    for kind, resources in (("network", engine.networks.list()), ("volume", engine.volumes.list())):
        found += [
            f"{kind} {r.name}"
            for r in resources
            if (r.attrs.get("Labels") or {}).get(labels[0], "").startswith(prefix)
        ]
    return found


class Run:
    """A process in its own process group whose merged output is read as it comes."""

    def __init__(self, argv: list[str], cwd: Path):
        self.process = subprocess.Popen(
            argv, cwd=cwd, env=nox_env(), start_new_session=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, ready, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.process.poll() is None, self.output[-3000:]
            assert time.monotonic() < deadline, f"timed out; output:\n{self.output[-3000:]}"
            time.sleep(0.1)

    def wait_for_line(self, text: str) -> None:
        self.wait_for(lambda: text in self.output)

    def signal_group(self, signum: int) -> None:
        os.killpg(self.process.pid, signum)  # Ctrl-C, or a CI runner cancelling the job

    def finish(self, timeout: float = 180) -> int:
        code = self.process.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return code


def nox(project: Path, session: str = "e2e") -> list[str]:
    return [sys.executable, "-m", "nox", "-f", str(project / "noxfile.py"), "-s", session]


MOMENTS = {
    # compose up is running (front sleeps 5 s before it listens: up --wait is still waiting)
    "up": ("pass", {"START_DELAY": "5"}, " up --detach --wait", 1.5),
    # pytest is running
    "tests": ("slow", {}, None, 0),
    # compose down is running (front takes its 3 s grace period to stop)
    "down": ("pass", {}, " down --remove-orphans", 1.0),
}


@pytest.mark.parametrize("moment", MOMENTS)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_to_the_process_group_leaves_nothing(engine, make_project, signum, moment):
    test, env, line, delay = MOMENTS[moment]
    project = make_project(test, **env)
    run = Run(nox(project), project)
    try:
        if line:
            run.wait_for_line(line)
        else:
            run.wait_for((project / "running").exists)
        time.sleep(delay)
        run.signal_group(signum)
        code = run.finish()
    finally:
        if run.process.poll() is None:
            run.signal_group(signal.SIGKILL)
    output = run.output
    assert code != 0, output[-3000:]  # an interrupted run never reports success
    assert leftovers(engine, project_name(project)) == [], output[-3000:]
    if moment != "up":
        assert "stack btdown" in output and " removed; artifacts in " in output, output[-3000:]
    if moment == "down":  # the signal did not cancel it: no retry was needed
        assert output.count(" down --remove-orphans") == 1, output[-3000:]


def clean_elsewhere(project: Path) -> subprocess.CompletedProcess:
    """`nox -s e2e-clean` on a host with another name (its own UTS namespace) that shares
    this engine, like a devcontainer or a CI job container."""
    script = f'hostname clean-elsewhere-{uuid.uuid4().hex[:6]} && exec "$@"'
    argv = ["unshare", "--uts", "sh", "-c", script, "sh", *nox(project, "e2e-clean")]
    return subprocess.run(
        argv, cwd=project, env=nox_env(), capture_output=True, text=True, timeout=120
    )


def test_clean_from_another_host_spares_a_live_run_and_removes_a_dead_one(engine, make_project):
    project = make_project("slow")
    prefix = project_name(project)
    run = Run(nox(project), project)
    try:
        run.wait_for((project / "running").exists)
        time.sleep(LEASE_TTL * 2)  # several renewals: a live run's lease stays fresh
        spared = clean_elsewhere(project)
        assert spared.returncode == 0, spared.stderr[-3000:]
        assert "0 orphaned e2e stack(s) removed" in spared.stderr
        for noise in ("docker.utils.config", "urllib3"):  # the SDK's DEBUG loggers stay quiet
            assert noise not in spared.stdout + spared.stderr + run.output
        live = leftovers(engine, prefix)
        assert any(item.startswith("container") and "front" in item for item in live), live
        run.signal_group(signal.SIGKILL)  # the run dies without a chance to tear down
        run.finish()
        assert leftovers(engine, prefix), "the killed run left nothing to clean"
        time.sleep(LEASE_TTL + 1)
        cleaned = clean_elsewhere(project)
        assert cleaned.returncode == 0, cleaned.stderr[-3000:]
        assert "1 orphaned e2e stack(s) removed" in cleaned.stderr
        assert leftovers(engine, prefix) == []
    finally:
        if run.process.poll() is None:
            run.signal_group(signal.SIGKILL)
            run.finish()


# --- inv up / down / health / deploy -------------------------------------------------------


def inv(project: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli(["invoke", *args], cwd=project)


def test_one_shot_service_is_completed_and_deploy_json_is_one_document(engine, make_project):
    project = make_project()
    name = project_name(project)
    built = STACK.replace("${FRONT_IMAGE}", "${BUILDTASKS_IMAGE_FRONT}", 1)  # front only
    (project / "stack.yml").write_text(built)
    with project.joinpath("pyproject.toml").open("a") as config:
        config.write('targets = ["front"]\n[tool.buildtasks.targets.front]\n')
        config.write('dockerfile = "front.Dockerfile"\n')
    (project / "front.Dockerfile").write_text("FROM python:3.11-slim\nLABEL fixture=front\n")
    try:
        deployed = inv(project, "deploy", "--json")
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr[-3000:]
        report = json.loads(deployed.stdout)  # exactly one document: builds went to stderr
        assert report["services"] == {"front": "healthy", "migrate": "completed"}
        assert report["app"]["status"] == 200
        assert f"fixture/{name}" in deployed.stderr  # the build summary, on stderr
        health = inv(project, "health")
        assert health.returncode == 0, health.stdout + health.stderr
        assert "migrate          completed" in health.stdout
    finally:
        down = inv(project, "down", "--volumes")
        remove_images(engine, f"fixture/{name}")
    assert down.returncode == 0, down.stderr
    assert leftovers(engine, name) == []


def test_unpullable_image_is_named(engine, make_project):
    missing = f"127.0.0.1:5000/no-such-image-{uuid.uuid4().hex[:6]}:1"
    project = make_project(MIGRATE_IMAGE=missing)
    try:
        result = inv(project, "up")
    finally:
        inv(project, "down", "--volumes")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        f"error: stack {project_name(project)}: cannot pull {missing} (service migrate); "
        "check the image name, the registry and `docker login`"
    ), result.stderr[-3000:]
    assert "did not become healthy" not in result.stderr


def test_down_names_what_it_could_not_remove(engine, make_project):
    project = make_project()
    name = project_name(project)
    up = inv(project, "up")
    assert up.returncode == 0, up.stderr[-3000:]
    stack = leftovers(engine, name)
    dry = inv(project, "--dry", "down", "--volumes")
    assert dry.returncode == 0, dry.stderr
    assert "[dry] docker compose" in dry.stderr
    assert leftovers(engine, name) == stack  # containers, network and volume all still there
    image = project.joinpath(".env").read_text().split("FRONT_IMAGE=")[1].split()[0]
    # a container that is not the project's holds on to the project's network
    squatter = engine.containers.create(image, ["sleep", "300"], network=f"{name}_default")
    try:
        squatter.start()
        down = inv(project, "down")
        assert down.returncode != 0
        last = down.stderr.strip().splitlines()[-1]
        assert f"stack {name} was not fully removed, left: network {name}_default" in last
        assert down.stderr.count(" down --remove-orphans") == 2  # retried once
    finally:
        squatter.remove(force=True)
        inv(project, "down", "--volumes")
    assert leftovers(engine, name) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_inv_down_does_not_cancel_it(engine, make_project, signum):
    project = make_project()
    name = project_name(project)
    up = inv(project, "up")
    assert up.returncode == 0, up.stderr[-3000:]
    run = Run([sys.executable, "-m", "invoke", "down", "--volumes"], project)
    try:
        run.wait_for_line(" down --remove-orphans")
        time.sleep(1.0)
        run.signal_group(signum)
        code = run.finish()
        left = leftovers(engine, name)
    finally:
        if run.process.poll() is None:
            run.signal_group(signal.SIGKILL)
        inv(project, "down", "--volumes")
    assert code != 0, run.output  # interrupted, after the stack is gone
    assert left == [], run.output
    assert run.output.count(" down --remove-orphans") == 1, run.output  # not even retried
