"""`buildtasks init` on new projects, then the tasks and the session it set up: real
builds, a real stack, a real pytest run."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path

import pytest

from tests.conftest import remove_images, run_cli

pytestmark = pytest.mark.integration


@pytest.fixture
def env(engine, mirror):
    prefix = f"127.0.0.1:5000/init-{uuid.uuid4().hex[:8]}"
    yield {
        "REGISTRY": prefix,
        "BASE_IMAGE_MIRROR": mirror,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    remove_images(engine, prefix)


def files_of(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and ".git" not in p.parts
    }


def commit(project: Path) -> None:
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "init"]):
        subprocess.run(
            ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
            cwd=project, check=True, capture_output=True,
        )  # fmt: skip


def test_init_in_an_empty_directory_then_build_and_nox_integration(env, tmp_path):
    project = tmp_path / "fresh"
    project.mkdir()
    dry = run_cli(["buildtasks", "--dry", "init"], cwd=project, env=env)
    assert dry.returncode == 0, dry.stderr
    assert "would write Dockerfile" in dry.stdout and not any(project.iterdir())

    wrote = run_cli(["buildtasks", "init"], cwd=project, env=env)
    assert wrote.returncode == 0, wrote.stderr
    for name in ("tasks.py", "noxfile.py", "Dockerfile", ".dockerignore", "compose.yaml"):
        assert f"wrote {name}\n" in wrote.stdout
    dockerfile = (project / "Dockerfile").read_text()
    assert dockerfile.count("\nFROM ") + dockerfile.startswith("FROM ") == 2  # multi-stage
    assert "# syntax" not in dockerfile and "--mount=type=cache" in dockerfile
    assert "\nUSER 1000:1000\n" in dockerfile and "\nHEALTHCHECK " in dockerfile
    commit(project)
    before = files_of(project)

    built = run_cli(["invoke", "build-app"], cwd=project, env=env)
    assert built.returncode == 0, built.stderr[-3000:]
    assert built.stdout.startswith(f"app: {env['REGISTRY']}/fresh:app ")

    session = subprocess.run(
        [sys.executable, "-m", "nox", "-s", "integration"],
        cwd=project, env={**os.environ, **env}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert session.returncode == 0, (session.stdout + session.stderr)[-3000:]
    assert "1 passed" in session.stdout + session.stderr

    again = run_cli(["buildtasks", "init"], cwd=project, env=env)
    assert again.returncode == 0, again.stderr
    assert "wrote" not in again.stdout and "kept tasks.py (it exists)" in again.stdout
    assert {k: v for k, v in files_of(project).items() if k in before} == before


FOREIGN_DOCKERFILE = """\
FROM python:3.11-slim
RUN useradd --uid 1000 app
COPY serve.py /serve.py
USER 1000
HEALTHCHECK --interval=1s CMD ["python3", "-c", "print()"]
CMD ["python3", "/serve.py"]
"""


def test_init_on_a_foreign_project_finds_its_targets_compose_and_protos(env, tmp_path):
    project = tmp_path / "foreign"
    for service in ("web", "jobs"):
        (project / "services" / service).mkdir(parents=True)
        (project / "services" / service / "Dockerfile").write_text(FOREIGN_DOCKERFILE)
        (project / "services" / service / "serve.py").write_text("print('up')\n")
    (project / "specs").mkdir()
    (project / "specs/shop.proto").write_text('syntax = "proto3";\npackage shop;\n')
    compose = (
        "services:\n  jobs:\n    image: ${BUILDTASKS_IMAGE_JOBS}\n"
        '  web:\n    image: ${BUILDTASKS_IMAGE_WEB}\n    ports: ["127.0.0.1::8080"]\n'
    )
    (project / "docker-compose.yml").write_text(compose)
    (project / "tasks.py").write_text("# the project's own tasks\n")
    (project / "pyproject.toml").write_text(
        '[project]\nname = "Foreign Shop"\nversion = "1.4.0"\n\n[tool.ruff]\nline-length = 88\n'
    )
    wrote = run_cli(["buildtasks", "init"], cwd=project, env=env)
    assert wrote.returncode == 0, wrote.stderr
    assert "kept tasks.py (it exists)" in wrote.stdout
    assert (project / "tasks.py").read_text() == "# the project's own tasks\n"
    assert (project / "docker-compose.yml").read_text() == compose
    assert not (project / "compose.yaml").exists() and not (project / "Dockerfile").exists()

    document = tomllib.loads((project / "pyproject.toml").read_text())
    assert document["tool"]["ruff"] == {"line-length": 88}
    table = document["tool"]["buildtasks"]
    assert table["image"] == "${REGISTRY:-localhost:5000}/foreign-shop"
    assert table["targets"]["web"]["context"] == "services/web"
    assert table["targets"]["jobs"]["image"] == "${REGISTRY:-localhost:5000}/foreign-shop-jobs"
    assert table["stack"]["compose"] == ["docker-compose.yml"]
    assert (table["stack"]["app_service"], table["stack"]["app_port"]) == ("web", 8080)
    assert table["proto"]["src"] == "specs"

    (project / "tasks.py").write_text("from buildtasks import namespace\n\nns = namespace()\n")
    commit(project)
    built = run_cli(["invoke", "build-web"], cwd=project, env=env)
    assert built.returncode == 0, built.stderr[-3000:]
    assert built.stdout.startswith(f"web: {env['REGISTRY']}/foreign-shop-web:web ")
