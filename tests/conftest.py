"""Shared fixtures. Integration tests need a real engine: under CI=true a missing engine
fails them; elsewhere it skips them with the reason."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from buildtasks.platforms import free_port

# The fixture projects' own tests run in their own sessions (nox -s integration there),
# against their stacks; they are not this suite's.
collect_ignore = ["fixtures"]

REPO = Path(__file__).resolve().parent.parent


def run_cli(args: list[str], cwd: Path = REPO, env: dict | None = None, timeout: int = 900):
    """Run `python -m invoke ARGS` (or buildtasks) as a user would; capture everything."""
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def engine():
    """The docker SDK client of the real engine."""
    import docker

    try:
        client = docker.from_env()
        client.ping()
        subprocess.run(["docker", "buildx", "version"], check=True, capture_output=True)
    except Exception as exc:
        message = f"no Docker engine with buildx ({exc}); run scripts/setup"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return client


@pytest.fixture(scope="session")
def mirror(engine) -> str:
    """The base-image mirror this machine uses ('' where base images are pulled)."""
    from buildtasks import config

    return config.load(REPO).mirror


def remove_images(engine, prefix: str) -> None:
    """Remove every local image with a tag under prefix. The low-level listing inspects
    nothing per image, and an image already gone is not an error: the engine is shared."""
    import docker

    for image in engine.api.images():
        if any(tag.startswith(prefix) for tag in image["RepoTags"] or ()):
            with contextlib.suppress(docker.errors.NotFound):
                engine.api.remove_image(image["Id"], force=True)


@pytest.fixture
def registry_prefix(engine):
    """A unique image prefix; the images built under it are removed afterwards."""
    prefix = f"127.0.0.1:5000/test-{uuid.uuid4().hex[:8]}"
    yield prefix
    remove_images(engine, prefix)


def run_once(engine, image: str, command: list[str], **options) -> str:
    """Run a container to completion; its output. Removed with its anonymous volumes."""
    container = engine.containers.run(image, command, detach=True, **options)
    try:
        container.wait(timeout=300)
        return container.logs().decode().strip()
    finally:
        container.remove(force=True, v=True)


@pytest.fixture
def registry(engine, tmp_path):
    """A registry of the test's own on 127.0.0.1, so it can be stopped mid-release."""
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path / 'registry'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    process = subprocess.Popen(
        ["docker-registry", "serve", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    address = f"127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://{address}/v2/", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    yield address, process
    process.kill()
    process.wait()
    remove_images(engine, address)
