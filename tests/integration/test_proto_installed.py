"""A pip user's `@buildtasks` build context: buildtasks installed from its wheel (no
source tree), and a small project that generates its protobuf code inside the image with
the installed generator."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO, remove_images, run_once

pytestmark = pytest.mark.integration

DOCKERFILE = """\
FROM python:3.11-slim
RUN python3 -m venv /opt/protoc
COPY requirements-proto.txt /tmp/requirements-proto.txt
# pip's cache survives between builds: a changed requirement downloads only what changed
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=secret,id=ca \\
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \\
    /opt/protoc/bin/pip install --disable-pip-version-check -r /tmp/requirements-proto.txt
COPY --from=buildtasks __init__.py lazy.py version.py errors.py shell.py proto.py \\
    /opt/buildtasks/buildtasks/
COPY protos/ /build/protos/
WORKDIR /build
RUN PYTHONPATH=/opt/buildtasks /opt/protoc/bin/python -m buildtasks.proto \\
    --src protos --out gen --no-pyi
"""
PROTO = """\
syntax = "proto3";
package cart;
message Item { string sku = 1; int32 qty = 2; }
service Cart { rpc Add (Item) returns (Item); }
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A virtualenv with buildtasks installed from its wheel (the dependencies are this
    environment's, through a .pth file: they are not what is under test)."""
    top = tmp_path_factory.mktemp("installed")
    source = top / "source"  # a copy: building writes build/ next to the sources
    shutil.copytree(
        REPO / "buildtasks", source / "buildtasks", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # no build isolation: the test environment has setuptools (grpcio-tools needs it)
    wheel = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(top), str(source)]
    subprocess.run(wheel, check=True, capture_output=True)
    venv = top / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin/python"
    (built,) = top.glob("buildtasks-*.whl")
    install = [*pip, "--python", str(python), "install", "--no-deps", str(built)]
    subprocess.run(install, check=True, capture_output=True)
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    (Path(site) / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return python


def test_protos_are_generated_in_the_image_from_an_installed_buildtasks(
    engine, mirror, installed, tmp_path
):
    where = subprocess.run(
        [str(installed), "-c", "import buildtasks; print(buildtasks.__file__)"],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    ).stdout.strip()  # fmt: skip
    package = Path(where).parent
    assert package.parent.name == "site-packages" and REPO not in package.parents
    project = tmp_path / "cart"
    (project / "protos").mkdir(parents=True)
    (project / "protos/cart.proto").write_text(PROTO)
    (project / "Dockerfile").write_text(DOCKERFILE)
    (project / "requirements-proto.txt").write_text(
        (REPO / "example/requirements-proto.txt").read_text()
    )
    prefix = f"127.0.0.1:5000/proto-{uuid.uuid4().hex[:8]}"
    (project / "pyproject.toml").write_text(
        '[project]\nname = "cart"\nversion = "0.1.0"\n\n'
        f'[tool.buildtasks]\nimage = "{prefix}/cart"\nmirror = "{mirror}"\n\n'
        '[tool.buildtasks.targets.gen]\nsecrets = ["ca=ca-bundle"]\n'
        'contexts = { buildtasks = "@buildtasks" }\n'
    )
    (project / "tasks.py").write_text("from buildtasks import namespace\n\nns = namespace()\n")
    try:
        started = time.monotonic()
        built = subprocess.run(
            [str(installed), "-m", "invoke", "build-gen"],
            cwd=project, env={**os.environ, "PATH": f"{installed.parent}:{os.environ['PATH']}"},
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        seconds = time.monotonic() - started
        assert built.returncode == 0, built.stderr[-3000:]
        assert f"--build-context buildtasks={package} " in built.stderr
        print(f"build-gen from the installed package: {seconds:.1f} s")
        check = (
            "import sys; sys.path.insert(0, '/build'); "
            "from gen import cart_pb2, cart_pb2_grpc; "
            "print(cart_pb2.Item(sku='a', qty=2).qty, hasattr(cart_pb2_grpc, 'CartStub'))"
        )
        assert run_once(engine, f"{prefix}/cart:gen", ["/opt/protoc/bin/python", "-c", check]) == (
            "2 True"
        )
    finally:
        remove_images(engine, prefix)
