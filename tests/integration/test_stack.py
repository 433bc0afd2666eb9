"""`inv deploy` and `inv health` on the example's production stack."""

from __future__ import annotations

import subprocess
import uuid

import pytest

from buildtasks.platforms import free_port
from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.integration


def test_deploy_is_healthy_and_health_fails_after_redis_stops(engine, registry_prefix):
    project = f"jobsvc-deploytest-{uuid.uuid4().hex[:6]}"
    env = {"REGISTRY": registry_prefix, "API_PORT": str(free_port()), "GRPC_PORT": str(free_port())}
    try:
        deployed = run_cli(["invoke", "deploy", "--project", project], env=env)
        assert deployed.returncode == 0, deployed.stderr[-3000:]
        assert "app health       HTTP 200" in deployed.stdout
        healthy = run_cli(["invoke", "health", "--project", project, "--json"], env=env)
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        assert '"status": "ok"' in healthy.stdout
        stop_redis = ["stop", "redis"]
        subprocess.run(
            ["docker", "compose", "-p", project, "-f", str(REPO / "compose/prod.yml"), *stop_redis],
            check=True,
            capture_output=True,
        )
        degraded = run_cli(["invoke", "health", "--project", project], env=env)
        assert degraded.returncode == 1
        assert "redis            exited" in degraded.stdout
        assert "HTTP 503" in degraded.stdout
        assert degraded.stderr.strip().endswith(
            "error: the stack is degraded; see above (inv logs for details)"
        )
    finally:
        run_cli(["invoke", "down", "--volumes", "--project", project], env=env)
    label = f"com.docker.compose.project={project}"
    assert engine.containers.list(all=True, filters={"label": label}) == []
