"""Quiesce: the application's compose services are paused (`docker pause`: the cgroup
freezer, no signal reaches the processes) while SQLite, Redis and the files are pinned,
so the three stores of a set come from one instant of the application. The pause ends
(Pause.end) as soon as every store is pinned; the copies follow from the pinned
snapshots. They are unpaused whatever happens: an error, SIGINT or SIGTERM (handlers
installed until the capture ends, so an interrupted copy also cleans up; a signal during
the unpause starts it again)."""

from __future__ import annotations

import contextlib
import io
import signal
import tarfile
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from buildtasks.backup import sqlite
from buildtasks.backup.sqlite_snapshot import PINNED, READY
from buildtasks.docker.compose import stack_compose
from buildtasks.errors import BuildtasksError, ConfigError, EngineError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BuildtasksError):
    """A signal ended the backup; the paused services were unpaused first."""

    def __init__(self, signum: int):
        name = signal.Signals(signum).name
        super().__init__(f"interrupted by {name}: no set was made; the paused services run again")
        self.exit_code = 128 + signum


@dataclass
class Pause:
    services: tuple[str, ...]
    seconds: float = 0.0
    containers: list = field(default_factory=list)
    engine: object = None  # the engine wrapper the pause and unpause are announced through
    started: float = 0.0
    ended: bool = False

    def end(self) -> None:
        """Unpause the containers paused here (once; a signal during it unpauses again,
        then ends the run as it asked)."""
        if self.ended:
            return
        self.ended = True
        interrupted = None
        while True:
            try:
                stuck = _unpause(self.engine, self.containers)
                break
            except Interrupted as exc:
                interrupted = exc
        self.seconds = time.monotonic() - self.started if self.containers else 0.0
        if stuck:
            raise EngineError(
                f"quiesce: could not unpause {', '.join(stuck)}; "
                f"run docker unpause {' '.join(stuck)}"
            )
        if interrupted:
            raise interrupted

    def record(self) -> dict:
        """What the manifest keeps: {} when nothing was paused."""
        if not self.services:
            return {}
        return {"services": list(self.services), "paused_seconds": round(self.seconds, 3)}


def containers(engine, project: str, services: Sequence[str]) -> list:
    """The running containers of the services; a service without one is an error (its
    writes would not be held back, so the set would not be consistent)."""
    found = []
    for service in services:
        labels = [f"com.docker.compose.project={project}", f"com.docker.compose.service={service}"]
        running = engine.client.containers.list(filters={"label": labels, "status": "running"})
        if not running:
            raise EngineError(
                f"quiesce: service {service!r} of compose project {project!r} has no running "
                "container; start the stack (inv up), fix [tool.buildtasks.backup] quiesce, "
                "or back up with --no-quiesce"
            )
        found += running
    return found


@contextlib.contextmanager
def paused(
    access, services: Sequence[str], prepare: Callable[[], object] = lambda: None
) -> Iterator[Pause]:
    """Pause the services' containers of the project's stack (access: a sets.ServiceAccess)
    until the body calls pause.end() or ends; always unpause the ones paused here (a
    container the user had paused already is left as it was). prepare() runs just before
    the pause, the signal handlers already installed."""
    pause = Pause(tuple(services))
    if not services:
        prepare()
        yield pause
        return
    redis_service = access.settings.backup.redis.get("service")
    if redis_service in services:  # BGSAVE needs it running; paused writers leave it still
        raise ConfigError(
            f"[tool.buildtasks.backup] quiesce: leave out the Redis service {redis_service!r}; "
            "pausing the services that write to it is enough"
        )
    project = stack_compose(access.settings).project
    pause.containers = containers(access.engine, project, services)
    pause.engine = access.engine
    previous = _install_handlers()
    try:
        prepare()
        pause.started = time.monotonic()
        try:
            for container in pause.containers:
                if access.engine.change(["docker", "pause", container.name]):
                    container.pause()
            yield pause
        finally:
            pause.end()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _raise(signum: int, _frame) -> None:
    raise Interrupted(signum)


def _install_handlers() -> dict:
    """SIGINT and SIGTERM raise Interrupted (so the finally clause unpauses); only the
    main thread may install handlers, elsewhere the caller's handling stays."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.signal(signum, _raise) for signum in SIGNALS}


def _unpause(engine, paused_here: list) -> list[str]:
    """Unpause every container of the list that is paused; names of those that failed.
    The list is walked whole: a pause cut short by a signal paused only some."""
    stuck = []
    for container in paused_here:
        try:
            container.reload()
            if container.status == "paused" and engine.change(
                ["docker", "unpause", container.name]
            ):
                container.unpause()
        except Exception as exc:  # the docker SDK's errors: try the others, report this one
            if not type(exc).__module__.startswith(("docker.", "requests.", "urllib3.")):
                raise
            stuck.append(container.name)
    return stuck


class SnapshotHelper:
    """Snapshots a database of a service's container, which may be paused (exec is refused
    there), from a helper container on its volumes, as its user (a -wal/-shm SQLite
    creates stays the app's). Made before the pause: the helper starts and waits, ready,
    until snapshot() tells it to go, so no container start falls into the pause."""

    GO = "/tmp/buildtasks-go"
    SCRATCH = "/tmp/buildtasks-snapshot.db"

    def __init__(self, engine, container, path: str, timeout: int = 600):
        self.engine, self.container, self.path, self.timeout = engine, container, path, timeout
        source = ["python3", "-c", sqlite.SNAPSHOT_SOURCE(), path, self.SCRATCH, self.GO]
        user = container.attrs["Config"].get("User") or ""
        announced = [
            "docker", "run", "--detach", "--entrypoint", "", "--user", user,
            "--volumes-from", container.name, "--network", "none", container.image.id,
            "python3", "-c", "<sqlite snapshot script>", path, self.SCRATCH, self.GO,
        ]  # fmt: skip
        if not engine.change(announced):  # backups show their plan under --dry instead
            raise EngineError(f"SQLite snapshot of {path}: no helper runs under --dry")
        self.helper = engine.client.containers.create(
            container.image.id, source, entrypoint=[], user=user,
            volumes_from=[container.id], network_mode="none",
        )  # fmt: skip
        try:
            self.helper.start()
            self._printed(READY)  # one that ended early is reported by snapshot()
        except BaseException:
            self.remove()
            raise

    def _printed(self, line: str) -> bool:
        """Wait until the helper printed line (True) or ended (False)."""
        deadline = time.monotonic() + self.timeout
        while line not in self.helper.logs(stderr=False).decode(errors="replace").split():
            self.helper.reload()
            if self.helper.status == "exited":
                return False
            if time.monotonic() > deadline:
                raise EngineError(f"SQLite snapshot of {self.path}: no {line!r} in {self.timeout}s")
            time.sleep(0.01)
        return True

    def snapshot(self, dest: Path, copy_out: Callable) -> Generator[None, None, str]:
        """Pin the snapshot, yield (the container may run again), copy it into dest with
        copy_out(helper, path, dest). Returns the integrity check."""
        go = io.BytesIO()
        with tarfile.open(fileobj=go, mode="w") as tar:
            tar.addfile(tarfile.TarInfo(Path(self.GO).name))
        self.helper.put_archive(str(Path(self.GO).parent), go.getvalue())
        if self._printed(PINNED):
            yield
        code = self.helper.wait(timeout=self.timeout)["StatusCode"]
        output = self.helper.logs().decode(errors="replace").strip()
        if code != 0:
            if "unable to open database file" in output:
                raise FileNotFoundError(f"{self.path} does not exist in {self.container.name}")
            raise EngineError(
                f"SQLite snapshot of {self.path} failed (exit {code}): {output[-300:]}"
            )
        copy_out(self.helper, self.SCRATCH, dest)
        return output.splitlines()[-1]

    def remove(self) -> None:
        if self.engine.change(["docker", "rm", "-f", "-v", self.helper.name]):
            self.helper.remove(force=True, v=True)
