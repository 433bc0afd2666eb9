"""The Docker engine through the docker SDK (imported on first use, never at import time)."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, TypeVar
from urllib.parse import quote

from buildtasks import lazy
from buildtasks.docker.checks import ImageFacts
from buildtasks.engines import EngineProfile
from buildtasks.errors import EngineError
from buildtasks.shell import Shell

T = TypeVar("T")
docker = lazy.module("docker")  # the SDK: loaded when the engine is first asked

ENGINE_FIX = (
    "install Docker Engine (https://docs.docker.com/engine/install/) and start it, "
    "or point DOCKER_HOST at a running engine"
)
PODMAN_FIX = "start Podman's API: podman system service --time=0 {host} &"


class Engine:
    """Connects on first use; ``warm_up`` connects in the background (importing the SDK
    takes a noticeable fraction of a second) while a long command runs. Changes made through
    the SDK are announced through the shell first, as the docker command they stand for, and
    skipped under --dry, like every other side effect."""

    def __init__(self, sh: Shell, profile: EngineProfile | None = None):
        self.sh = sh
        self.profile = profile or EngineProfile("docker")
        self._client = None
        self._error: EngineError | None = None
        self._thread: threading.Thread | None = None
        # threads share the engine (attestations are read in parallel): one connection
        self._lock = threading.Lock()

    def warm_up(self) -> None:
        with self._lock:
            if self._client is not None or self._error is not None or self._thread is not None:
                return  # connected, failed, or connecting already
            self._thread = threading.Thread(target=self._connect, daemon=True)
            self._thread.start()

    def _connect(self) -> None:
        quiet_sdk_loggers()
        try:
            host = self.profile.host
            client = (
                docker.DockerClient(base_url=host, use_ssh_client=host.startswith("ssh://"))
                if host
                else docker.from_env()
            )
            client.ping()
            self._client = client
        except docker.errors.DockerException as exc:
            self._error = EngineError(f"cannot reach {self.what()} ({_reason(exc)}); {self.fix()}")

    def what(self) -> str:
        if self.profile.name == "podman":
            return f"Podman's API at {self.profile.host}"
        host = self.profile.host
        return f"the Docker engine at {host}" if host else "the Docker engine"

    def fix(self) -> str:
        if self.profile.name == "podman":
            return PODMAN_FIX.format(host=self.profile.host)
        return ENGINE_FIX

    @property
    def client(self):
        with self._lock:
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
        try:
            attrs = self.client.images.get(ref).attrs
        except docker.errors.ImageNotFound:
            raise EngineError(f"image {ref} is not in the engine's image store") from None
        config = attrs.get("Config") or {}
        healthcheck = config.get("Healthcheck") or self._libpod_healthcheck(ref)
        return ImageFacts(
            ref=ref,
            user=config.get("User") or "",
            healthcheck=tuple((healthcheck or {}).get("Test") or ()),
            size=attrs.get("Size") or 0,
            # The layers' own sizes are uncompressed in both image stores (inspect's Size is
            # the compressed blobs under the containerd store).
            uncompressed_size=sum(layer.get("Size") or 0 for layer in self.client.api.history(ref)),
        )

    def _libpod_healthcheck(self, ref: str) -> dict | None:
        """Podman's Docker-compatible image inspect leaves the HEALTHCHECK out; its own API
        has it."""
        if self.profile.name != "podman":
            return None
        api = self.client.api
        reply = api.get(f"{api.base_url}/v4.0.0/libpod/images/{quote(ref, safe='')}/json")
        return reply.json().get("Healthcheck") if reply.ok else None

    def podman_info(self) -> dict:
        """Podman's own `info` (version, storage, rootless) through its API."""
        api = self.client.api
        reply = api.get(f"{api.base_url}/v4.0.0/libpod/info")
        if not reply.ok:
            raise EngineError(
                f"{self.what()} is not Podman's (libpod info: HTTP {reply.status_code})"
            )
        return reply.json()

    def run_healthchecks(self, project: str) -> None:
        """Run once the HEALTHCHECK of each container of a compose project that is not yet
        healthy (Podman schedules them with systemd timers, which a machine without
        systemd lacks: no container would ever turn healthy)."""
        api = self.client.api
        selector = {"label": f"{COMPOSE_PROJECT_LABEL}={project}", "status": "running"}
        for container in _containers(self.client, selector):
            if "(healthy)" not in (container.attrs.get("Status") or ""):
                api.get(f"{api.base_url}/v4.0.0/libpod/containers/{container.id}/healthcheck")

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

    def change(self, argv: list[str]) -> bool:
        """Announce an SDK change as its docker command; False under --dry (skip it)."""
        return self.sh.change(argv)

    def exec(self, container, argv: list[str], user: str = "", query: bool = False) -> str:
        """Run argv in a running container; its output, or EngineError on a non-zero exit.
        Like a command: announced and skipped under --dry ("" then) unless it is a query."""
        if not query and not self.change(["docker", "exec", container.name, *argv]):
            return ""
        code, text = run_in(container, argv, user)
        if code != 0:
            raise EngineError(
                f"`{' '.join(argv[:3])}` in {container.name} failed (exit {code}): "
                f"{text.splitlines()[-1] if text else 'no output'}"
            )
        return text

    def copy_out(self, container, path: str, dest: Path) -> None:
        """Write the engine's tar stream of a container path to dest."""
        try:
            stream, _ = container.get_archive(path)
        except docker.errors.NotFound:
            raise FileNotFoundError(f"{path} does not exist in {container.name}") from None
        with open(dest, "wb") as handle:
            for chunk in stream:
                handle.write(chunk)

    def read_export(self, image: str, platform: str, consume: Callable[[BinaryIO], T]) -> T | None:
        """consume(stream) over the tar of image's filesystem (its platform's), exported from
        a container that is created, never started, then removed; None under --dry. The
        image is pulled when the engine does not hold it."""
        announced = ["docker", "create", "--platform", platform, image, "&&", "docker", "export"]
        if not self.change(announced):
            return None
        create = {"image": image, "command": ["/buildtasks-export"], "platform": platform,
                  "network_disabled": True}  # fmt: skip
        try:
            self.client.api.inspect_image(image)
            known = True
        except docker.errors.ImageNotFound:
            known = False  # the reference this makes is removed afterwards
        try:
            container = self.client.containers.create(**create)
        except docker.errors.ImageNotFound:
            self.client.images.pull(image, platform=platform)
            container = self.client.containers.create(**create)
        try:
            return consume(io.BufferedReader(_Chunks(container.export()), 1 << 20))
        finally:
            container.remove(force=True, v=True)
            if not known:  # only the reference goes; the content stays with its tags
                with contextlib.suppress(docker.errors.APIError):
                    self.client.api.remove_image(image, noprune=True)

    def run_helper(
        self, image: str, volumes_from: str, script: str, inputs: Path, timeout: int = 600
    ) -> str:
        """Run `sh -c script` as root in a throwaway container sharing volumes_from's volumes,
        with the files of the inputs directory under /restore; its output, or EngineError."""
        announced = ["docker", "run", "--rm", "--user", "0:0", "--volumes-from", volumes_from,
                     "--network", "none", "--volume", f"{inputs}:/restore", image, "sh", "-c",
                     f"<{len(script.splitlines())}-line restore script>"]  # fmt: skip
        if not self.change(announced):
            return ""
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
            container.remove(force=True, v=True)
        if code != 0:
            raise EngineError(f"restore helper failed (exit {code}): {output[-500:]}")
        return output


class _Chunks(io.RawIOBase):
    """A readable stream over an iterator of byte chunks (the SDK's export)."""

    def __init__(self, chunks):
        self._chunks = iter(chunks)
        self._rest = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._rest:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._rest = chunk
        size = min(len(buffer), len(self._rest))
        buffer[:size], self._rest = self._rest[:size], self._rest[size:]
        return size


def run_in(container, argv: list[str], user: str = "") -> tuple[int, str]:
    """Run argv in a running container: its exit code and output. When the container
    runtime fails before it starts the process ("OCI runtime exec failed: ... unable to
    start container process: read init-p: connection reset by peer", seen under load),
    argv never ran, so it is run again."""
    for attempt in range(1, _EXEC_ATTEMPTS + 1):
        code, output = container.exec_run(argv, user=user, demux=False)
        text = (output or b"").decode(errors="replace").strip()
        if code == 0 or attempt == _EXEC_ATTEMPTS or not _RUNTIME_FAILURE.match(text):
            return code, text
        time.sleep(0.2 * attempt)


_EXEC_ATTEMPTS = 3
# runc's failures before it execs the command ("unable to start container process: ...");
# one after (writing its pid file) reads "OCI runtime exec failed" too, with the command run
_RUNTIME_FAILURE = re.compile(
    r"(Error: )?OCI runtime (exec failed|error): .*unable to start container process"
)


def quiet_sdk_loggers() -> None:
    """The SDK and urllib3 log every config lookup and request at DEBUG; nox makes the root
    logger DEBUG, which would print them all in every session."""
    for name in ("docker", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


# --- compose projects and the leases of integration runs -----------------------------------

COMPOSE_PROJECT_LABEL = "com.docker.compose.project"
LEASE_LABEL = "io.buildtasks.lease"  # value: the compose project whose run renews the lease
LEASE_FILE = "buildtasks-lease.json"
_ISO_TIME = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d)?")


@dataclass(frozen=True)
class Resource:
    kind: str  # container, network or volume
    name: str
    labels: dict
    created: float  # seconds since the epoch on the engine's clock; 0.0 when unknown

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"


def _created(text: str) -> float:
    match = _ISO_TIME.fullmatch(text or "")
    if not match:
        return 0.0
    zone = match.group(2) or "Z"
    moment = datetime.fromisoformat(match.group(1) + ("+00:00" if zone == "Z" else zone))
    return moment.timestamp()


def _containers(client, filters: dict) -> list:
    """Sparse: listing without inspecting each container, which fails when another user of
    the engine removes one meanwhile. Their attrs hold Names, Labels, Image, ImageID, Created
    (epoch seconds)."""
    return client.containers.list(all=True, filters=filters, sparse=True)


def _name(container) -> str:
    return (container.attrs.get("Names") or ["/" + container.id[:12]])[0].lstrip("/")


def _resources(client, filters: dict, volumes: bool = True) -> list[Resource]:
    found = [
        Resource(
            "container",
            _name(c),
            c.attrs.get("Labels") or {},
            float(c.attrs.get("Created") or 0),
        )
        for c in _containers(client, filters)
    ]
    for network in client.networks.list(filters=filters):
        attrs = network.attrs
        found.append(
            Resource("network", network.name, attrs.get("Labels") or {}, _created(attrs["Created"]))
        )
    for volume in client.volumes.list(filters=filters) if volumes else ():
        attrs = volume.attrs
        found.append(
            Resource("volume", volume.name, attrs.get("Labels") or {}, _created(attrs["CreatedAt"]))
        )
    return found


def project_resources(engine: Engine, project: str, volumes: bool = True) -> list[Resource]:
    """The containers, networks and (with volumes) volumes of exactly this compose project."""
    return _resources(engine.client, {"label": f"{COMPOSE_PROJECT_LABEL}={project}"}, volumes)


def compose_resources(engine: Engine) -> list[Resource]:
    """Every container, network and volume that belongs to some compose project."""
    return _resources(engine.client, {"label": COMPOSE_PROJECT_LABEL})


def _lease_container(client, project: str):
    found = _containers(client, {"label": f"{LEASE_LABEL}={project}"})
    return found[0] if found else None


def write_lease(engine: Engine, project: str, body: bytes) -> bool:
    """Write body into the project's lease: a container that is never started, created from
    the image of one of the project's containers (an image the engine surely holds), so any
    host that shares the engine can read it. False while the project has no container yet."""
    client = engine.client
    lease = _lease_container(client, project)
    if lease is None:
        selector = {"label": f"{COMPOSE_PROJECT_LABEL}={project}"}
        members = _containers(client, selector)
        if not members:
            return False
        name = f"{project}-buildtasks-lease"
        if not engine.change(
            [
                "docker",
                "create",
                "--name",
                name,
                "--label",
                f"{LEASE_LABEL}={project}",
                members[0].attrs["ImageID"],
                "lease",
            ]
        ):
            return False  # fmt: skip
        try:
            lease = client.containers.create(
                members[0].attrs["ImageID"], ["lease"], name=name,
                labels={LEASE_LABEL: project}, network_mode="none",
            )  # fmt: skip
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: created meanwhile by the previous attempt
                raise
            lease = _lease_container(client, project)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        member = tarfile.TarInfo(LEASE_FILE)
        member.size = len(body)
        member.mtime = int(time.time())
        tar.addfile(member, io.BytesIO(body))
    return lease.put_archive("/", buffer.getvalue())


def read_leases(engine: Engine) -> dict[str, bytes]:
    """{project: lease body} for every lease on the engine (bodies are untrusted input)."""
    leases = {}
    for container in _containers(engine.client, {"label": LEASE_LABEL}):
        try:
            stream, _ = container.get_archive("/" + LEASE_FILE)
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                member = tar.next()
                handle = tar.extractfile(member) if member and member.isfile() else None
                body = handle.read(4096) if handle else b""
        except (docker.errors.NotFound, tarfile.TarError):
            body = b""  # removed meanwhile, or never written: no lease
        leases[container.attrs["Labels"][LEASE_LABEL]] = body
    return leases


def remove_project(engine: Engine, project: str) -> list[str]:
    """Remove a compose project's containers, networks and volumes, and its lease."""
    client = engine.client
    removed = []
    selector = {"label": f"{COMPOSE_PROJECT_LABEL}={project}"}
    lease = _lease_container(client, project)
    containers = [c for c in [*_containers(client, selector), lease] if c]
    networks = client.networks.list(filters=selector)
    volumes = client.volumes.list(filters=selector)
    parts = [  # containers first: networks and volumes are in use until they are gone
        *(("container", _name(c), c, {"force": True, "v": True}) for c in containers),
        *(("network", n.name, n, {}) for n in networks),
        *(("volume", v.name, v, {"force": True}) for v in volumes),
    ]
    removal = {"container": ["rm", "-f", "-v"], "network": ["network", "rm"],
               "volume": ["volume", "rm", "-f"]}  # fmt: skip
    for kind, name, part, options in parts:
        label = f"{kind} {name}"
        if not engine.change(["docker", *removal[kind], name]):
            continue
        try:
            part.remove(**options)
        except docker.errors.NotFound:
            continue  # removed meanwhile
        except docker.errors.APIError as exc:
            raise EngineError(f"cannot remove {label} of {project}: {_reason(exc)}") from None
        removed.append(label)
    return removed


def remove_lease(engine: Engine, project: str) -> None:
    lease = _lease_container(engine.client, project)
    if lease is not None and engine.change(["docker", "rm", "-f", "-v", _name(lease)]):
        lease.remove(force=True, v=True)
