"""The Docker engine through the docker SDK (imported on first use, never at import time)."""

from __future__ import annotations

from functools import cached_property

from buildtasks.docker.checks import ImageFacts
from buildtasks.errors import EngineError

ENGINE_FIX = "start it (scripts/install-docker) or point DOCKER_HOST at a running engine"


class Engine:
    @cached_property
    def client(self):
        import docker

        try:
            client = docker.from_env()
            client.ping()
        except docker.errors.DockerException as exc:
            raise EngineError(
                f"cannot reach the Docker engine ({_reason(exc)}); {ENGINE_FIX}"
            ) from None
        return client

    def require(self) -> None:
        """Fail with EngineError now, before a command that needs the engine starts."""
        _ = self.client

    def image(self, ref: str) -> ImageFacts:
        import docker

        try:
            attrs = self.client.images.get(ref).attrs
        except docker.errors.ImageNotFound:
            raise EngineError(f"image {ref} is not in the engine's image store") from None
        config = attrs.get("Config") or {}
        return ImageFacts(
            ref=ref,
            id=attrs["Id"],
            user=config.get("User") or "",
            healthcheck=tuple((config.get("Healthcheck") or {}).get("Test") or ()),
            size=attrs.get("Size") or 0,
            labels=config.get("Labels") or {},
        )

    def image_ids(self) -> set[str]:
        return {image.id for image in self.client.images.list(all=True)}


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
