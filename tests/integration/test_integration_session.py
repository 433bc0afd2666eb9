"""`integration_session()` on small real stacks: teardown on every way a run can end."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration

COMPOSE = """\
services:
  web:
    image: ${WEB_IMAGE}
    command: ["python3", "-m", "http.server", "8000"]
    volumes: [web-data:/data]
    ports: ["127.0.0.1::8000"]
    stop_grace_period: 2s
    healthcheck:
      test: HEALTH_COMMAND
      interval: 1s
      timeout: 2s
      retries: 30
volumes:
  web-data:
"""
HEALTHY = (
    """["CMD", "python3", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000')"]"""
)
TESTS = {
    "pass": "def test_web():\n    import os, urllib.request\n"
    "    url = 'http://' + os.environ['BUILDTASKS_WEB_8000']\n"
    "    assert urllib.request.urlopen(url).status == 200\n",
    "fail": "def test_web():\n    assert False, 'this test fails on purpose'\n",
    "slow": "def test_web():\n    import pathlib, time\n"
    "    pathlib.Path('running').write_text('yes')\n    time.sleep(120)\n",
}


LEASE_TTL = 2


def project_dir(tmp_path: Path, mirror: str, test: str = "pass", healthy: bool = True) -> Path:
    name = f"btfix{uuid.uuid4().hex[:6]}"
    (tmp_path / "compose").mkdir()
    health = HEALTHY if healthy else '["CMD", "false"]'
    (tmp_path / "compose/integration.yml").write_text(COMPOSE.replace("HEALTH_COMMAND", health))
    (tmp_path / "pyproject.toml").write_text(
        f'[tool.buildtasks]\nimage = "fixture/{name}"\n'
        f'[tool.buildtasks.stack]\nproject = "{name}"\nwait_timeout = 60\n'
        '[tool.buildtasks.integration]\ncompose = ["compose/integration.yml"]\n'
    )
    (tmp_path / "noxfile.py").write_text(
        "from buildtasks.sessions import integration_session\n"
        "integration_session(venv_backend='none', install=(), "
        "pytest_args=('-p', 'no:cacheprovider', 'checks'), "
        f"wait_timeout={60 if healthy else 8}, lease_ttl={LEASE_TTL})\n"
    )
    (tmp_path / "checks").mkdir()
    (tmp_path / "checks/test_web.py").write_text(TESTS[test])
    (tmp_path / ".env").write_text(f"WEB_IMAGE={mirror + '/' if mirror else ''}python:3.11-slim\n")
    return tmp_path


def nox_argv(project: Path, session: str = "integration") -> list[str]:
    return [sys.executable, "-m", "nox", "-f", str(project / "noxfile.py"), "-s", session]


def nox_env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def run_nox(project: Path, session: str = "integration") -> subprocess.CompletedProcess:
    return subprocess.run(
        nox_argv(project, session), cwd=project, env=nox_env(), capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip


def leftovers(engine, prefix: str) -> list[str]:
    """Containers, networks and volumes of compose projects named PREFIX…"""
    label = "com.docker.compose.project"
    found = [  # sparse: other tests remove their containers meanwhile
        c.attrs["Names"][0].lstrip("/")
        for c in engine.containers.list(all=True, sparse=True)
        if (c.attrs.get("Labels") or {}).get(label, "").startswith(prefix)
    ]
    for resource in (*engine.networks.list(), *engine.volumes.list()):
        if (resource.attrs.get("Labels") or {}).get(label, "").startswith(prefix):
            found.append(resource.name)
    return found


def prefix_of(project: Path) -> str:
    return project.joinpath("pyproject.toml").read_text().split('project = "')[1].split('"')[0]


def artifact_logs(project: Path) -> list[Path]:
    return sorted(project.glob("artifacts/*/logs.txt"))


def test_passing_run_leaves_nothing_behind(engine, mirror, tmp_path):
    project = project_dir(tmp_path, mirror)
    result = run_nox(project)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "1 passed" in result.stdout + result.stderr
    (logs,) = artifact_logs(project)
    assert "web-1" in logs.read_text()
    assert (logs.parent / "junit.xml").is_file()
    assert leftovers(engine, prefix_of(project)) == []


def test_failing_test_still_tears_down_and_keeps_logs(engine, mirror, tmp_path):
    project = project_dir(tmp_path, mirror, test="fail")
    result = run_nox(project)
    assert result.returncode != 0
    assert "this test fails on purpose" in result.stdout + result.stderr
    assert artifact_logs(project)
    assert leftovers(engine, prefix_of(project)) == []


def test_unhealthy_service_is_reported_and_torn_down(engine, mirror, tmp_path):
    project = project_dir(tmp_path, mirror, healthy=False)
    result = run_nox(project)
    assert result.returncode != 0
    assert "did not become healthy within 8s: web (" in result.stdout + result.stderr
    (logs,) = artifact_logs(project)
    assert '"FailingStreak"' in (logs.parent / "health.json").read_text()
    assert leftovers(engine, prefix_of(project)) == []


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the test never started"
        time.sleep(0.2)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_run_tears_down(engine, mirror, tmp_path, signum):
    project = project_dir(tmp_path, mirror, test="slow")
    process = subprocess.Popen(
        nox_argv(project), cwd=project, env=nox_env(), start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    wait_for(project / "running", process)
    if signum == signal.SIGINT:
        os.killpg(process.pid, signum)  # Ctrl-C reaches the whole foreground group
    else:
        process.send_signal(signum)  # a cancelled CI job signals the runner
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0, output
    assert artifact_logs(project), output
    assert leftovers(engine, prefix_of(project)) == [], output


def test_two_runs_at_once_both_pass(engine, mirror, tmp_path):
    project = project_dir(tmp_path, mirror)
    runs = [
        subprocess.Popen(
            nox_argv(project),
            cwd=project,
            env=nox_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert len(artifact_logs(project)) == 2
    assert leftovers(engine, prefix_of(project)) == []


def test_clean_removes_a_killed_runs_stack_and_nothing_else(engine, mirror, tmp_path):
    project = project_dir(tmp_path, mirror, test="slow")
    foreign = f"foreign{uuid.uuid4().hex[:6]}"
    compose = ["docker", "compose", "-p", foreign, "-f", str(project / "compose/integration.yml")]
    env = {**os.environ, "WEB_IMAGE": f"{mirror + '/' if mirror else ''}python:3.11-slim"}
    subprocess.run([*compose, "up", "-d", "--wait"], env=env, check=True, capture_output=True)
    try:
        process = subprocess.Popen(
            nox_argv(project), cwd=project, env=nox_env(), start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(project / "running", process)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        assert leftovers(engine, prefix_of(project)), "the killed run left no stack to clean"
        time.sleep(LEASE_TTL + 1)  # its lease goes stale
        result = run_nox(project, "integration-clean")
        assert result.returncode == 0, result.stderr
        assert "1 orphaned integration stack(s) removed" in result.stdout + result.stderr
        assert leftovers(engine, prefix_of(project)) == []
        assert leftovers(engine, foreign), "the foreign project must survive"
    finally:
        subprocess.run([*compose, "down", "-v"], env=env, capture_output=True)


def test_in_container_run_of_the_example_leaves_nothing(engine):
    """`nox -s integration -- --in-container`: pytest inside the dev image on the stack's
    network passes the example's end-to-end tests and the stack and runner are gone."""
    argv = [sys.executable, "-m", "nox", "-f", str(REPO / "noxfile.py"), "-R",
            "-s", "integration", "--", "--in-container"]  # fmt: skip
    result = subprocess.run(argv, cwd=REPO, env=nox_env(), capture_output=True, text=True,
                            timeout=900)  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "/buildtasks/jobsvc:dev -m pytest" in output  # the runner is the dev image
    assert "3 passed" in output
    project = re.search(r"stack (\S+) is healthy", output).group(1)
    assert (REPO / "artifacts" / project / "junit.xml").is_file()
    assert leftovers(engine, project) == []
