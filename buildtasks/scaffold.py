"""`buildtasks init`: the files a project needs to use buildtasks, from what it already has.

Dockerfiles found become targets (their directory is the build context), a compose file
found becomes the stack (its first service publishing a port is the app), a directory of
.proto files becomes the proto table. What is missing is written: tasks.py, noxfile.py,
the ``[tool.buildtasks]`` table (added to an existing pyproject.toml), and, in a project
without a Dockerfile, a small HTTP service with its Dockerfile, .dockerignore, compose file
and an integration test. A file that exists is never overwritten.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from buildtasks import lazy
from buildtasks.errors import ConfigError
from buildtasks.runtime import Runtime
from buildtasks.stack import image_variable

tomlkit = lazy.module("tomlkit")
yaml = lazy.module("yaml")

SKIPPED_DIRS = {".git", ".venv", "venv", ".nox", ".tox", "node_modules", "__pycache__"}
COMPOSE_FILES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")
APP_PORT = 8000

TASKS_PY = (
    "from buildtasks import namespace\n\nns = namespace()  # [tool.buildtasks] in pyproject.toml\n"
)
NOXFILE_PY = (
    "from buildtasks.sessions import integration_session\n\n"
    "integration_session()  # nox -s integration: [tool.buildtasks.integration]\n"
)
DOCKERFILE = """\
# Built by `inv build-app`. Dependencies go into a virtualenv in the first stage, with
# pip's cache kept between builds; the final stage runs as a non-root user.
FROM python:3.11-slim AS deps
RUN python3 -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=secret,id=ca \\
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \\
    if [ -s /tmp/requirements.txt ]; then \\
      /opt/venv/bin/pip install --disable-pip-version-check -r /tmp/requirements.txt; fi

FROM python:3.11-slim
RUN useradd --uid 1000 --user-group --no-create-home app
COPY --from=deps /opt/venv /opt/venv
COPY app/ /app/
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PORT=8000
USER 1000:1000
EXPOSE 8000
HEALTHCHECK --interval=2s --timeout=3s --retries=15 CMD ["python3", "/app/health.py"]
CMD ["python3", "/app/main.py"]
"""
DOCKERIGNORE = ".git\n.venv\n.nox\n**/__pycache__\n*.pyc\nartifacts\nbackups\ntests\n"
MAIN_PY = '''\
"""The service: GET /health answers {"ok": true}."""

import http.server
import json
import os


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        found = self.path == "/health"
        body = json.dumps({"ok": True} if found else {"error": "not found"}).encode()
        self.send_response(200 if found else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)


http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler).serve_forever()
'''
HEALTH_PY = """\
import os
import urllib.request

urllib.request.urlopen(f"http://127.0.0.1:{os.environ['PORT']}/health", timeout=2)
"""
TEST_PY = '''\
"""Run by `nox -s integration` against the started stack."""

import json
import os
import urllib.request


def test_the_service_is_healthy():
    url = "http://" + os.environ["BUILDTASKS_APP_8000"] + "/health"
    assert json.load(urllib.request.urlopen(url, timeout=5)) == {"ok": True}
'''


@dataclass(frozen=True)
class Found:
    """What the project already has."""

    name: str
    targets: dict[str, dict] = field(default_factory=dict)  # name -> context/dockerfile
    compose: str = ""
    app_service: str = ""
    app_port: int = APP_PORT
    protos: str = ""


def _walk(root: Path):
    """The project's files, outside VCS, virtualenv and cache directories; sorted."""
    for path in sorted(root.rglob("*")):
        parts = path.relative_to(root).parts
        if path.is_file() and not SKIPPED_DIRS.intersection(parts[:-1]):
            yield path


def _target_name(path: Path, root: Path) -> str:
    """api for services/api/Dockerfile, prod for Dockerfile.prod, web for web.Dockerfile,
    app for the project's top Dockerfile."""
    if path.name.startswith("Dockerfile."):
        raw = path.name.removeprefix("Dockerfile.")
    elif path.name.endswith(".Dockerfile"):
        raw = path.name.removesuffix(".Dockerfile")
    else:
        raw = path.parent.name if path.parent != root else "app"
    return re.sub(r"[^a-z0-9_-]+", "-", raw.lower()).strip("-_") or "app"


def _compose_app(path: Path) -> tuple[str, int]:
    """The first service publishing a port, and its container port ('', 0 when none)."""
    try:
        services = (yaml.safe_load(path.read_text()) or {}).get("services") or {}
    except (OSError, yaml.YAMLError, AttributeError) as exc:
        raise ConfigError(f"{path.name}: cannot read it as a compose file ({exc})") from None
    for service, spec in services.items():
        for port in (spec or {}).get("ports") or []:
            text = str(port.get("target", "") if isinstance(port, dict) else port)
            container = text.rpartition(":")[2].split("/")[0]
            if container.isdigit():
                return str(service), int(container)
    return "", 0


def detect(root: Path) -> Found:
    """The project's name, Dockerfiles, compose file and proto directory."""
    name = _project_name(root)
    targets: dict[str, dict] = {}
    protos = ""
    for path in _walk(root):
        relative = path.relative_to(root)
        if (
            path.name == "Dockerfile"
            or path.name.startswith("Dockerfile.")
            or path.name.endswith(".Dockerfile")
        ):
            target = _target_name(path, root)
            while target in targets:
                target += "-2"
            targets[target] = {"context": relative.parent.as_posix(), "dockerfile": path.name}
        elif path.suffix == ".proto" and not protos:
            protos = relative.parent.as_posix()
    compose = next((f for f in COMPOSE_FILES if (root / f).is_file()), "")
    service, port = _compose_app(root / compose) if compose else ("", 0)
    return Found(name, targets, compose, service, port or APP_PORT, protos)


def _project_name(root: Path) -> str:
    """[project] name of pyproject.toml, else the directory's name, as an image name."""
    pyproject = root / "pyproject.toml"
    name = ""
    if pyproject.is_file():
        try:
            name = str(tomllib.loads(pyproject.read_text()).get("project", {}).get("name", ""))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"pyproject.toml: not valid TOML ({exc}); fix it first") from None
    name = re.sub(r"[^a-z0-9]+", "-", (name or root.name).lower()).strip("-")
    return name or "app"


def table(found: Found) -> dict:
    """The [tool.buildtasks] table for what was found (or for the service init writes)."""
    targets = found.targets or {"app": {"context": ".", "dockerfile": "Dockerfile"}}
    names = list(targets)
    image = f"${{REGISTRY:-localhost:5000}}/{found.name}"
    section: dict = {
        "image": image,
        "mirror": "${BASE_IMAGE_MIRROR:-}",
        "targets": {
            name: {
                **{k: v for k, v in spec.items() if (k, v) != ("dockerfile", "Dockerfile")},
                # an image repository per target: each gets plain X.Y.Z release tags
                **({"image": f"{image}-{name}"} if len(names) > 1 else {}),
                "secrets": ["ca=ca-bundle"],  # the host's CA bundle, for pip behind a proxy
            }
            for name, spec in targets.items()
        },
        "stack": {
            "compose": [found.compose or "compose.yaml"],
            "project": found.name,
            "targets": names,
            "app_service": found.app_service or names[0],
            "app_port": found.app_port,
            "health_path": "/health",
        },
        "release": {"targets": names},
    }
    if found.protos:
        section["proto"] = {"src": found.protos, "out": f"{found.protos}/gen"}
    return section


def compose_for(found: Found) -> str:
    """A compose file running each target's image; the first publishes the app port."""
    names = list(found.targets) or ["app"]
    lines = ["services:"]
    for index, name in enumerate(names):
        variable = image_variable(name)
        lines += [f"  {name}:", f"    image: ${{{variable}}}", "    stop_grace_period: 2s"]
        if index == 0:
            lines.append(f'    ports: ["127.0.0.1::{found.app_port}"]')
    return "\n".join(lines) + "\n"


def files(root: Path, found: Found) -> dict[str, str]:
    """Every file init would write, by path relative to root."""
    wanted = {"tasks.py": TASKS_PY, "noxfile.py": NOXFILE_PY}
    if not found.targets:
        wanted.update(
            {
                "Dockerfile": DOCKERFILE,
                ".dockerignore": DOCKERIGNORE,
                "requirements.txt": "",
                "app/main.py": MAIN_PY,
                "app/health.py": HEALTH_PY,
                "tests/test_health.py": TEST_PY,
            }
        )
    if not found.compose:
        wanted["compose.yaml"] = compose_for(found)
    return wanted


def pyproject_text(root: Path, found: Found) -> str | None:
    """pyproject.toml with the [tool.buildtasks] table added; None when it has one."""
    path = root / "pyproject.toml"
    document = tomlkit.parse(path.read_text()) if path.is_file() else tomlkit.document()
    if "tool" in document and "buildtasks" in document["tool"]:
        return None
    if "project" not in document:
        document["project"] = {"name": found.name, "version": "0.1.0"}
    tool = document.setdefault("tool", tomlkit.table(is_super_table=True))
    tool["buildtasks"] = table(found)
    return tomlkit.dumps(document)


def init(rt: Runtime, root: Path) -> list[str]:
    """Write what is missing; one line per file: wrote, or kept (it was there)."""
    found = detect(root)
    verb = "would write" if rt.dry else "wrote"
    lines = []
    for relative, text in files(root, found).items():
        path = root / relative
        if path.exists():
            lines.append(f"kept {relative} (it exists)")
            continue
        if not rt.dry:
            path.parent.mkdir(parents=True, exist_ok=True)
        rt.write_text(path, text)
        lines.append(f"{verb} {relative}")
    pyproject = pyproject_text(root, found)
    if pyproject is None:
        lines.append("kept pyproject.toml (it has a [tool.buildtasks] table)")
    else:
        rt.write_text(root / "pyproject.toml", pyproject)
        lines.append(f"{verb} pyproject.toml [tool.buildtasks]")
    return lines
