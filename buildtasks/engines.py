"""Which engine an invocation drives, and how: Docker or Podman, local or remote.

An engine profile is the one place that knows the difference. It names the CLI that builds
and pushes (`docker buildx build`, or `podman build` and `podman manifest push`), and the
API address the docker SDK, the docker CLI and compose talk to (Podman serves a
Docker-compatible API, so stacks, backups, restore and prune use the same code on both).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import msgspec

from buildtasks.config import Settings
from buildtasks.errors import ConfigError, EngineError

ENGINE_VARIABLE = "BUILDTASKS_ENGINE"
ENGINES = ("docker", "podman")
ROOTFUL_PODMAN_SOCKET = "unix:///run/podman/podman.sock"
LOOPBACK = ("127.0.0.1", "0.0.0.0", "localhost", "::1", "::", "[::1]", "[::]")


class EngineProfile(msgspec.Struct, frozen=True):
    name: str  # docker or podman: the CLI that builds and pushes
    host: str = ""  # the API address (DOCKER_HOST); "" is the docker CLI's own default
    context: str = ""  # the docker context the CLI uses, when one is configured

    @property
    def env(self) -> dict[str, str]:
        """What the docker CLI and compose need to talk to this engine."""
        if self.context:
            return {"DOCKER_CONTEXT": self.context}
        return {"DOCKER_HOST": self.host} if self.host else {}

    @property
    def remote_address(self) -> str:
        """The engine's host name when it is another machine's (tcp:// or ssh://), else ''."""
        parsed = urlparse(self.host)
        return parsed.hostname or "" if parsed.scheme in ("tcp", "ssh") else ""

    def reach(self, published: str) -> str:
        """HOST:PORT a published port is reached at from here: a port bound on a remote
        engine's loopback or on all its interfaces is reached through the engine's address."""
        address = self.remote_address
        bound, _, port = published.rpartition(":")
        if address and bound in LOOPBACK:
            return f"{address}:{port}"
        return published

    def build_command(self) -> list[str]:
        return ["docker", "buildx", "build"] if self.name == "docker" else ["podman", "build"]

    def bake_command(self) -> list[str]:
        if self.name != "docker":
            raise EngineError(
                f"{self.name} cannot bake several targets at once; build them one by one "
                "(inv build-NAME, shared bases first) or set BUILDTASKS_ENGINE=docker"
            )
        return ["docker", "buildx", "bake"]

    def describe(self) -> str:
        where = f"context {self.context} ({self.host})" if self.context else self.host
        return f"{self.name} at {where or 'the default socket'}"


def resolve(settings: Settings, environ: Mapping[str, str] = os.environ) -> EngineProfile:
    """The engine of one invocation: $BUILDTASKS_ENGINE, else `engine` in [tool.buildtasks],
    else the installed CLI (docker first); its address from docker_host or docker_context,
    else $DOCKER_HOST (Docker) or $CONTAINER_HOST and then the rootful API socket (Podman)."""
    name = environ.get(ENGINE_VARIABLE, "") or settings.engine or _installed()
    if name not in ENGINES:
        raise ConfigError(f"--engine/${ENGINE_VARIABLE} {name[:40]!r}: write docker or podman")
    if settings.docker_context:
        host = context_host(settings.docker_context, environ)
        return EngineProfile(name, host, settings.docker_context)
    host = settings.docker_host
    if not host and name == "podman":
        host = environ.get("CONTAINER_HOST") or ROOTFUL_PODMAN_SOCKET
    elif not host:
        host = environ.get("DOCKER_HOST", "")
    return EngineProfile(name, host)


def _installed() -> str:
    return next((name for name in ENGINES if shutil.which(name)), "docker")


def docker_config_dir(environ: Mapping[str, str]) -> Path:
    """The docker CLI's configuration directory: $DOCKER_CONFIG, unless empty, else ~/.docker."""
    return Path(environ.get("DOCKER_CONFIG") or Path.home() / ".docker")


def context_host(name: str, environ: Mapping[str, str]) -> str:
    """The docker endpoint of a docker context, read from the CLI's context store."""
    meta = (
        docker_config_dir(environ)
        / "contexts/meta"
        / hashlib.sha256(name.encode()).hexdigest()
        / "meta.json"
    )
    fix = f"create it (docker context create {name} --docker host=ssh://USER@HOST) or fix it"
    try:
        host = json.loads(meta.read_text())["Endpoints"]["docker"]["Host"]
    except OSError:
        raise ConfigError(f"docker context {name!r} does not exist; {fix}") from None
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"docker context {name!r} has no docker endpoint; {fix}") from None
    if not isinstance(host, str) or not host:
        raise ConfigError(f"docker context {name!r} has no docker endpoint; {fix}")
    return host
