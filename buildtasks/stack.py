"""The project's compose stack: deploy, health, and integration runs that always clean up."""

from __future__ import annotations

import contextlib
import json
import math
import secrets
import shlex
import signal
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from buildtasks.config import Settings
from buildtasks.docker import builder, compose
from buildtasks.docker.build import AS_CONFIGURED, render_tags, template_values
from buildtasks.docker.builds import state_file
from buildtasks.docker.compose import PROJECT_LABEL, Compose, stack_compose
from buildtasks.docker.engine import (
    Engine,
    compose_resources,
    project_resources,
    read_leases,
    remove_lease,
    write_lease,
)
from buildtasks.errors import BuildtasksError, CommandError
from buildtasks.runtime import Runtime
from buildtasks.shell import Shell

ENDPOINT_PREFIX = "BUILDTASKS"


class BuildFailed(BuildtasksError):
    """An image the stack needs did not build."""


class StackUnhealthy(BuildtasksError):
    """The stack did not become healthy in time."""


def image_variable(target: str) -> str:
    """The variable compose files use for a target's image: BUILDTASKS_IMAGE_<TARGET>."""
    return f"BUILDTASKS_IMAGE_{target.upper().replace('-', '_')}"


def image_variables(rt: Runtime) -> dict[str, str]:
    """BUILDTASKS_IMAGE_<TARGET> = the target's first tag, for the compose files to use."""
    settings, state = rt.settings, rt.git()
    variables = {}
    for target in settings.targets.values():
        values = template_values(target.name, settings.version, state)
        tags = render_tags(target.tags, settings.image_of(target), values)
        if tags:
            variables[image_variable(target.name)] = tags[0]
    return variables


def use_stack_images(rt: Runtime) -> Runtime:
    """Give compose, through the runtime's commands, the images the targets build."""
    rt.env = {**rt.env, **image_variables(rt)}
    return rt


def build_targets(rt: Runtime, targets: tuple[str, ...]) -> list[str]:
    """Build the targets; the summary of each image built, for the caller to show."""
    if not targets:
        return []
    try:
        build_plans = builder.plans(rt, list(targets), AS_CONFIGURED)
        summaries = [built.summary() for built in builder.run(rt, build_plans, False)]
    except CommandError as exc:
        raise BuildFailed(f"image build failed, the stack was not started: {exc}") from None
    return summaries


class PullFailed(BuildtasksError):
    """An image of the stack could not be pulled."""


GOOD_STATES = ("healthy", "running", "completed")


def service_states(sh: Shell, stack: Compose) -> dict[str, str]:
    """{service: its health when running, "completed" for a one-shot service (exited 0 and
    not restarted by the engine), else its state}."""
    containers = compose.containers(sh, stack)
    finished = [
        c["ID"] for c in containers if c.get("State") == "exited" and c.get("ExitCode") == 0
    ]
    policies = compose.restart_policies(sh, finished)

    def state(container: dict) -> str:
        if container.get("State") == "running":
            return container.get("Health") or "running"
        if policies.get(container["ID"]) in ("", "no", "on-failure"):
            return "completed"
        return container.get("State") or "unknown"

    return {c["Service"]: state(c) for c in containers}


def up(sh: Runtime, stack: Compose, wait_timeout: int) -> None:
    """`up --wait`, then the containers' own state is checked too: compose's exit status
    alone has been seen to report success for a service whose healthcheck never passed."""
    try:
        with healthchecks_driven(sh, stack.project):
            sh.run(stack.up(wait_timeout))
        failed = False
    except CommandError:
        failed = True
    if sh.dry:
        return
    if failed:
        missing = compose.missing_images(sh, compose.resolved_config(sh, stack))
        if missing:
            names = ", ".join(f"{image} (service {svc})" for svc, image in missing.items())
            raise PullFailed(
                f"stack {stack.project}: cannot pull {names}; check the image name, "
                "the registry and `docker login`"
            )
    unhealthy = [
        f"{service} ({state})"
        for service, state in service_states(sh, stack).items()
        if state not in GOOD_STATES
    ]
    if failed or unhealthy:
        raise StackUnhealthy(
            f"stack {stack.project} did not become healthy within {wait_timeout}s: "
            f"{', '.join(unhealthy) or 'see the compose output above'}"
        )


@contextlib.contextmanager
def healthchecks_driven(rt: Runtime, project: str, every: float = 2.0) -> Iterator[None]:
    """On Podman without systemd, run the stack's healthchecks while it starts, as the
    systemd timers Podman relies on would."""
    if rt.profile.name != "podman" or rt.dry or Path("/run/systemd/system").is_dir():
        yield
        return
    stop = threading.Event()

    def drive() -> None:
        while not stop.wait(every):
            with contextlib.suppress(Exception):  # a container removed meanwhile
                rt.engine.run_healthchecks(project)

    thread = threading.Thread(target=drive, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def app_health(sh: Runtime, settings: Settings, stack: Compose) -> tuple[int, dict]:
    """(HTTP status, JSON body) of the app's health endpoint through its published port, at
    the address the engine reports (a remote engine's host, not this one's loopback)."""
    address = sh.output(
        stack.argv("port", settings.stack.app_service, str(settings.stack.app_port)), check=False
    )
    if not address:
        return 0, {
            "error": f"{settings.stack.app_service} publishes no port {settings.stack.app_port}"
        }
    url = f"http://{sh.profile.reach(address.splitlines()[0])}{settings.stack.health_path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, _json_body(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, _json_body(exc.read())
    except OSError as exc:
        return 0, {"error": f"{url}: {exc}"}


def _json_body(data: bytes) -> dict:
    try:
        body = json.loads(data or b"{}")
    except ValueError:
        return {"body": data.decode(errors="replace")[:500]}
    return body if isinstance(body, dict) else {"body": body}


@dataclass(frozen=True)
class HealthReport:
    services: dict[str, str]  # service -> health or state
    app_status: int
    app_body: dict

    @property
    def healthy(self) -> bool:
        return (
            bool(self.services)
            and all(state in GOOD_STATES for state in self.services.values())
            and self.app_status == 200
        )


def health(sh: Runtime, settings: Settings, stack: Compose) -> HealthReport:
    status, body = app_health(sh, settings, stack)
    return HealthReport(service_states(sh, stack), status, body)


def deploy(sh: Runtime, settings: Settings, stack: Compose) -> HealthReport:
    """Prepare data directories, start the stack, and check health (the caller builds)."""
    if settings.stack.data_dirs:
        dirs = shlex.join(settings.stack.data_dirs)
        sh.run(
            stack.argv(
                "run", "--rm", "--no-deps", "--user", "0:0", "--entrypoint", "sh",
                settings.stack.app_service, "-c",
                f"mkdir -p {dirs} && chown -R {shlex.quote(settings.stack.data_owner)} {dirs}",
            )
        )  # fmt: skip
    up(sh, stack, settings.stack.wait_timeout)
    return health(sh, settings, stack)


# --- teardown ---------------------------------------------------------------------------


class TeardownIncomplete(BuildtasksError):
    """compose down left some of the stack behind."""


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Teardown must finish: Ctrl-C and SIGTERM received meanwhile are acted on once it has
    (re-raised, so the run still ends as interrupted), not lost and not cancelling it."""
    received: list[int] = []
    previous = {
        signum: signal.signal(signum, lambda signum, frame: received.append(signum))
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    completed = False
    try:
        yield
        completed = True
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if received and completed:  # an error raised inside already ends the run
            signal.raise_signal(received[0])


def teardown(sh: Shell, engine: Engine, stack: Compose, volumes: bool) -> None:
    """`compose down`, shielded from signals and retried once; then the engine is asked what
    is left of the project (by its exact label), and anything left is an error naming it."""
    with signals_deferred():
        for _attempt in range(2):
            sh.run(stack.down(volumes=volumes), check=False, shielded=True)
            if sh.dry:
                return
            left = project_resources(engine, stack.project, volumes=volumes)
            if not left:
                return
    raise TeardownIncomplete(
        f"stack {stack.project} was not fully removed, left: {', '.join(map(str, left))}; "
        f"remove them with `docker compose --project-name {stack.project} down"
        f"{' --volumes' if volumes else ''}`"
    )


# --- integration runs -------------------------------------------------------------------

SESSION_LABEL = "io.buildtasks.session"
LEASE_TTL = 30.0  # seconds a run's lease stays fresh without renewal
MAX_LEASE_TTL = 3600.0


def run_project_name(prefix: str, short_sha: str) -> str:
    """Unique per run, so two runs on one machine never share a stack."""
    return f"{prefix}-{short_sha or 'nogit'}-{secrets.token_hex(3)}"


@contextlib.contextmanager
def interrupts_on_sigterm() -> Iterator[None]:
    """SIGTERM (a cancelled CI job) unwinds like Ctrl-C, so teardown runs."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Lease:
    """Marks a run's stack as alive to any host sharing the engine: a background thread
    renews a timestamp (and the ttl it promises) in the engine every ttl/4 seconds.
    `integration-clean` leaves a stack alone while its lease is fresh; a run killed with
    SIGKILL stops renewing, and its stack is cleanable ttl seconds later."""

    def __init__(self, sh: Shell, project: str, ttl: float = LEASE_TTL):
        self.project = project
        self.ttl = ttl
        # Its own connection, not the runtime's: the renewing thread shares no client.
        self.engine = Engine(sh)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, daemon=True, name="lease")

    def _renew(self) -> None:
        while True:
            body = json.dumps({"renewed": time.time(), "ttl": self.ttl}).encode()
            with contextlib.suppress(Exception):  # an engine hiccup: the next renewal retries
                write_lease(self.engine, self.project, body)
            if self._stop.wait(max(self.ttl / 4, 0.2)):
                return

    def start(self) -> None:
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        remove_lease(self.engine, self.project)


def lease_fresh(body: bytes, now: float) -> bool | None:
    """Whether a lease body read from the engine is fresh; None when it is not a lease."""
    try:
        lease = json.loads(body)
        renewed, ttl = float(lease["renewed"]), float(lease["ttl"])
    except (ValueError, TypeError, KeyError):
        return None
    if not (math.isfinite(renewed) and math.isfinite(ttl)):
        return None
    return now - renewed <= min(max(ttl, 0.0), MAX_LEASE_TTL)


def _owner_override(settings: Settings, config: dict, directory: Path, session: str) -> Path:
    """A compose file that labels every container, network and volume with the session, so
    `integration-clean` finds this session's stacks and no other project's, and takes base
    images from the mirror."""
    labels = {SESSION_LABEL: session}
    override = {
        kind: {name: {"labels": labels} for name in config.get(kind) or {}}
        for kind in ("services", "networks", "volumes")
    }
    for service, image in mirror_images(settings, config).items():
        override["services"][service]["image"] = image
    path = directory / "buildtasks-owner.json"
    path.write_text(json.dumps(override))
    return path


def mirror_images(settings: Settings, config: dict) -> dict[str, str]:
    """{service: mirrored image} for the stack's base images (see compose.mirrored_images)."""
    own = {settings.image_of(t) for t in settings.targets.values()}
    return compose.mirrored_images(config, settings.mirror, own)


def with_mirror(rt: Runtime, settings: Settings, stack: Compose) -> Compose:
    """stack plus a compose file that takes its base images from the mirror (none without
    a mirror or base images), for the commands that start containers. The file is
    buildtasks' own state, out of the checkout; under --dry it is not written, and the
    plan's queries read the stack without it unless an earlier run left it."""
    if not settings.mirror:
        return stack
    images = mirror_images(settings, compose.resolved_config(rt, stack))
    if not images:
        return stack
    path = state_file(settings.root).parent / f"compose-mirror-{stack.project}.json"
    if not rt.dry:
        path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"services": {s: {"image": i} for s, i in images.items()}})
    if not rt.write_text(path, text) and not path.exists():
        return stack
    return Compose(stack.project, (*stack.files, path))


def live_stack(rt: Runtime, settings: Settings) -> Compose:
    """The configured stack as `inv up` starts it: base images from the mirror."""
    return with_mirror(rt, settings, stack_compose(settings))


def collect_artifacts(sh: Shell, stack: Compose, directory: Path) -> None:
    """Logs with timestamps, ps and health details of every container."""
    directory.mkdir(parents=True, exist_ok=True)
    logs = sh.run(stack.logs(), query=True, check=False)
    (directory / "logs.txt").write_text(logs.stdout + logs.stderr)
    ps = compose.containers(sh, stack)
    (directory / "ps.json").write_text(json.dumps(ps, indent=2))
    details = {}
    for container in ps:
        inspect = sh.run(["docker", "inspect", container["ID"]], query=True, check=False)
        if inspect.returncode == 0:
            state = json.loads(inspect.stdout)[0]["State"]
            details[container["Service"]] = {
                "state": state.get("Status"),
                "health": state.get("Health"),
            }
    (directory / "health.json").write_text(json.dumps(details, indent=2))


@dataclass(frozen=True)
class IntegrationOptions:
    session: str = "integration"
    files: tuple[str, ...] = ("compose/integration.yml",)
    targets: tuple[str, ...] | None = None  # None: the stack's configured targets
    wait_timeout: int | None = None
    artifacts: str = "artifacts"
    runner_image: str = ""  # run pytest in this image on the stack's network instead
    pytest_args: tuple[str, ...] = ()  # for the runner container
    lease_ttl: float = LEASE_TTL


def integration(
    rt: Runtime,
    options: IntegrationOptions,
    run_tests: Callable[[dict[str, str], Path], None],
    log: Callable[[str], None],
) -> str:
    """Build, start a uniquely named stack, wait for health, run the tests with the
    endpoints in the environment; then always save artifacts and tear the stack down.
    Returns the project name."""
    sh, engine, settings = use_stack_images(rt), rt.engine, rt.settings
    targets = settings.stack.targets if options.targets is None else options.targets
    for summary in build_targets(rt, targets):
        log(summary)
    prefix = f"{stack_compose(settings).project}-{options.session}"
    name = run_project_name(prefix, rt.git().short_sha)
    base = stack_compose(settings, options.files, name)
    artifacts = settings.root / options.artifacts / name
    with tempfile.TemporaryDirectory(prefix="buildtasks-stack-") as tmp, interrupts_on_sigterm():
        config = compose.resolved_config(sh, base)
        owner = _owner_override(settings, config, Path(tmp), options.session)
        stack = Compose(name, (*base.files, owner))
        lease = Lease(sh, name, options.lease_ttl)
        lease.start()
        try:
            up(sh, stack, options.wait_timeout or settings.stack.wait_timeout)
            inside = bool(options.runner_image)
            endpoints = (
                compose.internal_ports(config)
                if inside
                else compose.published_ports(sh, stack, config, rt.profile.reach)
            )
            env = {
                **compose.endpoint_variables(endpoints, ENDPOINT_PREFIX),
                f"{ENDPOINT_PREFIX}_PROJECT": name,
            }
            log(f"stack {name} is healthy; endpoints: {env}")
            if inside:
                artifacts.mkdir(parents=True, exist_ok=True)
                network = config["networks"]["default"]["name"]
                sh.run(runner_argv(settings.root, name, network, options, env, artifacts))
            else:
                run_tests(env, artifacts)
        finally:
            with signals_deferred():
                try:
                    collect_artifacts(sh, stack, artifacts)
                except Exception as exc:  # the stack must go even if its logs cannot be kept
                    log(f"warning: artifacts of {name} incomplete: {exc}")
                try:
                    teardown(sh, engine, stack, volumes=True)
                finally:
                    lease.release()
                log(f"stack {name} removed; artifacts in {artifacts}")
    return name


def runner_argv(
    root: Path, project: str, network: str, options: IntegrationOptions, env: dict, artifacts: Path
) -> list[str]:
    """pytest in a test-runner container on the stack's network: the project read-only at
    /work, JUnit XML to the artifacts directory. Labelled as part of the stack, so the
    stack's `down --remove-orphans` removes it whatever happens."""
    argv = ["docker", "run", "--rm", "--name", f"{project}-tests", "--network", network,
            "--label", f"{PROJECT_LABEL}={project}", "--user", "0:0",
            "--volume", f"{root}:/work:ro", "--volume", f"{artifacts}:/artifacts",
            "--workdir", "/work", "--env", "PYTHONDONTWRITEBYTECODE=1"]  # fmt: skip
    for key, value in env.items():
        argv += ["--env", f"{key}={value}"]
    pytest = ["-m", "pytest", "-p", "no:cacheprovider", *options.pytest_args]
    return [*argv, "--entrypoint", "python", options.runner_image, *pytest,
            "--junitxml=/artifacts/junit.xml"]  # fmt: skip


def orphaned_projects(engine: Engine, prefix: str, session: str) -> list[str]:
    """The stacks of SESSION runs of this project (compose projects named PREFIX-… that carry
    the session's label) whose run is gone: their lease is stale, or, for a run killed
    before it wrote its first lease, every part is older than LEASE_TTL."""
    now = time.time()
    projects: dict[str, list] = {}
    for resource in compose_resources(engine):
        project = resource.labels[PROJECT_LABEL]
        if project.startswith(prefix + "-"):
            projects.setdefault(project, []).append(resource)
    leases = {
        project: lease_fresh(body, now)
        for project, body in read_leases(engine).items()
        if project.startswith(prefix + "-")
    }
    orphans = []
    for project in sorted(projects.keys() | leases.keys()):
        parts = projects.get(project, [])
        if parts and not any(r.labels.get(SESSION_LABEL) == session for r in parts):
            continue  # another session's stack, or not a buildtasks run at all
        fresh = leases.get(project)
        if fresh is None:
            fresh = any(now - r.created < LEASE_TTL for r in parts)
        if not fresh:
            orphans.append(project)
    return orphans
