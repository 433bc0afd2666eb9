"""`docker compose` command lines and the few queries buildtasks makes of a stack."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from buildtasks.config import Settings
from buildtasks.docker.dockerfile import registry_of
from buildtasks.docker.registry import repository_of
from buildtasks.shell import Shell

PROJECT_LABEL = "com.docker.compose.project"


@dataclass(frozen=True)
class Compose:
    project: str
    files: tuple[Path, ...]

    def argv(self, *args: str) -> list[str]:
        argv = ["docker", "compose", "--project-name", self.project]
        for path in self.files:
            argv += ["--file", str(path)]
        return [*argv, *args]

    def up(self, wait_timeout: int) -> list[str]:
        # --wait and --wait-timeout exist since compose 2.17; install-docker brings 2.26.
        return self.argv("up", "--detach", "--wait", "--wait-timeout", str(wait_timeout))

    def down(self, volumes: bool) -> list[str]:
        return self.argv("down", "--remove-orphans", *(["--volumes"] if volumes else []))

    def logs(self, service: str = "", follow: bool = False) -> list[str]:
        flags = ["--timestamps", "--no-color", *(["--follow"] if follow else [])]
        return self.argv("logs", *flags, *([service] if service else []))


def stack_compose(settings: Settings, files: tuple[str, ...] = (), project: str = "") -> Compose:
    paths = tuple(settings.root / f for f in (files or settings.stack.compose))
    name = project or settings.stack.project or settings.image.rsplit("/", 1)[-1].split(":")[0]
    return Compose(project=name, files=paths)


def parse_ps(output: str) -> list[dict]:
    """`compose ps --format json`: a JSON array in some versions, one object a line in others."""
    text = output.strip()
    if not text:
        return []
    if text.startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def containers(sh: Shell, compose: Compose) -> list[dict]:
    return parse_ps(sh.output(compose.argv("ps", "--all", "--format", "json")))


def resolved_config(sh: Shell, compose: Compose) -> dict:
    """The stack's resolved configuration."""
    return json.loads(sh.output(compose.argv("config", "--format", "json")))


def published_ports(
    sh: Shell, compose: Compose, config: dict, reach: Callable[[str], str] = str
) -> dict[tuple[str, int], str]:
    """{(service, container port): "host:port"} for every port the stack's resolved config
    publishes, as the engine bound it, seen from here through reach."""
    endpoints = {}
    for service, definition in config.get("services", {}).items():
        for port in definition.get("ports", []):  # every `ports` entry is published
            target = int(port["target"])
            address = sh.output(compose.argv("port", service, str(target)), check=False)
            if address:
                endpoints[(service, target)] = reach(address.splitlines()[0])
    return endpoints


def internal_ports(config: dict) -> dict[tuple[str, int], str]:
    """{(service, container port): "service:port"}: the addresses on the stack's network."""
    return {
        (service, int(port["target"])): f"{service}:{port['target']}"
        for service, definition in config.get("services", {}).items()
        for port in definition.get("ports", [])
    }


def endpoint_variables(endpoints: dict[tuple[str, int], str], prefix: str) -> dict[str, str]:
    """Environment for tests: PREFIX_<SERVICE>_<PORT>=host:port."""
    return {
        f"{prefix}_{service.upper().replace('-', '_')}_{port}": address
        for (service, port), address in sorted(endpoints.items())
    }


def restart_policies(sh: Shell, container_ids: list[str]) -> dict[str, str]:
    """{container id as given: restart policy name ('' or 'no' when none)}."""
    if not container_ids:
        return {}
    fmt = "{{.Id}} {{.HostConfig.RestartPolicy.Name}}"
    lines = sh.output(["docker", "inspect", "--format", fmt, *container_ids], check=False)
    found = dict(line.partition(" ")[::2] for line in lines.splitlines())
    return {  # a container removed meanwhile has no line, and no policy
        given: policy
        for given in container_ids
        for full, policy in found.items()
        if full.startswith(given)
    }


def missing_images(sh: Shell, config: dict) -> dict[str, str]:
    """{service: image} for every service whose image the engine does not hold."""
    missing = {}
    for service, definition in sorted(config.get("services", {}).items()):
        image = definition.get("image")
        if image:
            probe = ["docker", "image", "inspect", "--format", "{{.Id}}", image]
            if sh.run(probe, query=True, check=False).returncode != 0:
                missing[service] = image
    return missing


def mirrored_images(config: dict, mirror: str, own: set[str]) -> dict[str, str]:
    """{service: MIRROR/image} for every service that runs a base image of the default
    registry (not one of the project's own repositories, not built by compose, not naming
    a registry of its own): compose images come through the mirror as FROM lines do."""
    if not mirror:
        return {}
    prefix = mirror.rstrip("/") + "/"
    result = {}
    for service, definition in sorted(config.get("services", {}).items()):
        image = definition.get("image") or ""
        base = image and "build" not in definition and not registry_of(image)
        if base and repository_of(image) not in own:
            result[service] = prefix + image
    return result
