"""The Docker engine through the docker SDK (imported on first use, never at import time)."""

from __future__ import annotations

import threading

from buildtasks.docker.checks import ImageFacts
from buildtasks.errors import EngineError

ENGINE_FIX = "start it (scripts/install-docker) or point DOCKER_HOST at a running engine"


class Engine:
    """Connects on first use; ``warm_up`` connects in the background (importing the SDK
    takes a noticeable fraction of a second) while a long command runs."""

    def __init__(self):
        self._client = None
        self._error: EngineError | None = None
        self._thread: threading.Thread | None = None

    def warm_up(self) -> None:
        self._thread = threading.Thread(target=self._connect, daemon=True)
        self._thread.start()

    def _connect(self) -> None:
        import docker

        try:
            client = docker.from_env()
            client.ping()
            self._client = client
        except docker.errors.DockerException as exc:
            self._error = EngineError(
                f"cannot reach the Docker engine ({_reason(exc)}); {ENGINE_FIX}"
            )

    @property
    def client(self):
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._client is None and self._error is None:
            self._connect()
        if self._error is not None:
            raise self._error
        return self._client

    def require(self) -> None:
        """Raise EngineError when the engine is unreachable."""
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
