"""The Docker engine through the docker SDK (imported on first use, never at import time)."""

from __future__ import annotations

import threading
from pathlib import Path

from buildtasks.docker.checks import ImageFacts
from buildtasks.errors import EngineError

ENGINE_FIX = (
    "install Docker Engine (https://docs.docker.com/engine/install/) and start it, "
    "or point DOCKER_HOST at a running engine"
)


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
            user=config.get("User") or "",
            healthcheck=tuple((config.get("Healthcheck") or {}).get("Test") or ()),
            size=attrs.get("Size") or 0,
            # The layers' own sizes are uncompressed in both image stores (inspect's Size is
            # the compressed blobs under the containerd store).
            uncompressed_size=sum(layer.get("Size") or 0 for layer in self.client.api.history(ref)),
        )

    def service_container(self, project: str, service: str):
        """The container of a compose service (running or not)."""
        labels = [f"com.docker.compose.project={project}", f"com.docker.compose.service={service}"]
        found = self.client.containers.list(all=True, filters={"label": labels})
        if not found:
            raise EngineError(
                f"no container for service {service!r} of compose project {project!r}; "
                "start the stack (inv up) or fix the service name"
            )
        return found[0]

    def exec(self, container, argv: list[str], user: str = "") -> str:
        """Run argv in a running container; its output, or EngineError on a non-zero exit."""
        code, output = container.exec_run(argv, user=user, demux=False)
        text = (output or b"").decode(errors="replace").strip()
        if code != 0:
            raise EngineError(
                f"`{' '.join(argv[:3])}` in {container.name} failed (exit {code}): "
                f"{text.splitlines()[-1] if text else 'no output'}"
            )
        return text

    def copy_out(self, container, path: str, dest: Path) -> None:
        """Write the engine's tar stream of a container path to dest."""
        import docker

        try:
            stream, _ = container.get_archive(path)
        except docker.errors.NotFound:
            raise FileNotFoundError(f"{path} does not exist in {container.name}") from None
        with open(dest, "wb") as handle:
            for chunk in stream:
                handle.write(chunk)

    def run_helper(
        self, image: str, volumes_from: str, script: str, inputs: Path, timeout: int = 600
    ) -> str:
        """Run `sh -c script` as root in a throwaway container sharing volumes_from's volumes,
        with the files of the inputs directory under /restore; its output, or EngineError."""
        import io
        import tarfile

        container = self.client.containers.create(
            image, ["sh", "-c", script], user="0:0", entrypoint=[],
            volumes_from=[volumes_from], network_mode="none",
        )  # fmt: skip
        try:
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w") as tar:
                tar.add(inputs, arcname="restore")
            container.put_archive("/", buffer.getvalue())
            container.start()
            try:
                code = container.wait(timeout=timeout)["StatusCode"]
            except Exception as exc:  # requests' timeout: the helper hangs
                raise EngineError(
                    f"restore helper did not finish within {timeout}s ({exc})"
                ) from None
            output = container.logs().decode(errors="replace").strip()
        finally:
            container.remove(force=True)
        if code != 0:
            raise EngineError(f"restore helper failed (exit {code}): {output[-500:]}")
        return output


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
