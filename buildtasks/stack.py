"""The project's compose stack: deploy, health, and integration runs that always clean up."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import signal
import socket
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from buildtasks import git
from buildtasks.config import Settings
from buildtasks.docker import builder, compose
from buildtasks.docker.build import BuildRequest, render_tags, template_values
from buildtasks.docker.compose import PROJECT_LABEL, Compose, stack_compose
from buildtasks.errors import BuildtasksError, CommandError
from buildtasks.platforms import pid_alive
from buildtasks.shell import Shell

OWNER_LABEL = "io.buildtasks.owner"  # host:pid of the run that started a stack
ENDPOINT_PREFIX = "BUILDTASKS"


class BuildFailed(BuildtasksError):
    """An image the stack needs did not build."""


class StackUnhealthy(BuildtasksError):
    """The stack did not become healthy in time."""


def image_variable(target: str) -> str:
    """The variable compose files use for a target's image: BUILDTASKS_IMAGE_<TARGET>."""
    return f"BUILDTASKS_IMAGE_{target.upper().replace('-', '_')}"


def image_variables(settings: Settings, sh: Shell) -> dict[str, str]:
    """BUILDTASKS_IMAGE_<TARGET> = the target's first tag, for the compose files to use."""
    state = git.state(sh, settings.root)
    variables = {}
    for target in settings.targets.values():
        values = template_values(target.name, settings.version, state)
        tags = render_tags(target.tags, settings.image, values)
        if tags:
            variables[image_variable(target.name)] = tags[0]
    return variables


def stack_shell(settings: Settings, dry: bool) -> Shell:
    sh = builder.shell(settings, dry)
    sh.env = {**sh.env, **image_variables(settings, sh)}
    return sh


def build_targets(sh: Shell, settings: Settings, targets: tuple[str, ...]) -> None:
    if not targets:
        return
    try:
        for build_plan in builder.plans(settings, list(targets), BuildRequest(), sh):
            built = builder.build(sh, settings, build_plan, check=False)
            if built:
                print(built.summary())
    except CommandError as exc:
        raise BuildFailed(f"image build failed, the stack was not started: {exc}") from None


def up(sh: Shell, stack: Compose, wait_timeout: int) -> None:
    """`up --wait`, then the containers' own state is checked too: compose's exit status
    alone has been seen to report success for a service whose healthcheck never passed."""
    try:
        sh.run(stack.up(wait_timeout))
        failed = False
    except CommandError:
        failed = True
    if sh.dry:
        return
    unhealthy = [
        f"{c.get('Service')} ({c.get('Health') or c.get('State')})"
        for c in compose.containers(sh, stack)
        if not (c.get("State") == "exited" and c.get("ExitCode") == 0)  # finished one-shots
        and ((c.get("Health") or "healthy") != "healthy" or c.get("State") != "running")
    ]
    if failed or unhealthy:
        raise StackUnhealthy(
            f"stack {stack.project} did not become healthy within {wait_timeout}s: "
            f"{', '.join(unhealthy) or 'see the compose output above'}"
        )


def app_health(sh: Shell, settings: Settings, stack: Compose) -> tuple[int, dict]:
    """(HTTP status, JSON body) of the app's health endpoint through its published port."""
    address = sh.output(
        stack.argv("port", settings.stack.app_service, str(settings.stack.app_port)), check=False
    )
    if not address:
        return 0, {
            "error": f"{settings.stack.app_service} publishes no port {settings.stack.app_port}"
        }
    url = f"http://{address.splitlines()[0]}{settings.stack.health_path}"
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
            and all(state in ("healthy", "running") for state in self.services.values())
            and self.app_status == 200
        )


def health(sh: Shell, settings: Settings, stack: Compose) -> HealthReport:
    services = {
        c["Service"]: (c.get("Health") or c.get("State") or "unknown")
        if c.get("State") == "running"
        else c.get("State", "unknown")
        for c in compose.containers(sh, stack)
    }
    status, body = app_health(sh, settings, stack)
    return HealthReport(services, status, body)


def deploy(sh: Shell, settings: Settings, stack: Compose) -> HealthReport:
    """Build the stack's targets, prepare data directories, start, and check health."""
    build_targets(sh, settings, settings.stack.targets)
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


# --- integration runs -------------------------------------------------------------------


def run_project_name(prefix: str, short_sha: str) -> str:
    """Unique per run, so two runs on one machine never share a stack."""
    return f"{prefix}-{short_sha or 'nogit'}-{secrets.token_hex(3)}"


def owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_alive(label: str) -> bool:
    host, _, pid = label.rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and pid_alive(int(pid))


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


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Teardown must finish: a second Ctrl-C or SIGTERM waits until it has."""
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _owner_override(config: dict, directory: Path, session: str) -> Path:
    """A compose file that labels every container, network and volume with this run's owner,
    so `integration-clean` can tell a killed run's stack from one still starting."""
    labels = {OWNER_LABEL: owner(), "io.buildtasks.session": session}
    override = {
        kind: {name: {"labels": labels} for name in config.get(kind) or {}}
        for kind in ("services", "networks", "volumes")
    }
    path = directory / "buildtasks-owner.json"
    path.write_text(json.dumps(override))
    return path


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


def integration(
    sh: Shell,
    settings: Settings,
    options: IntegrationOptions,
    run_tests: Callable[[dict[str, str], Path], None],
) -> str:
    """Build, start a uniquely named stack, wait for health, run the tests with the
    endpoints in the environment; then always save artifacts and tear the stack down.
    Returns the project name."""
    targets = settings.stack.targets if options.targets is None else options.targets
    build_targets(sh, settings, targets)
    prefix = f"{stack_compose(settings).project}-{options.session}"
    name = run_project_name(prefix, git.state(sh, settings.root).short_sha)
    base = stack_compose(settings, options.files, name)
    artifacts = settings.root / options.artifacts / name
    with tempfile.TemporaryDirectory(prefix="buildtasks-stack-") as tmp, interrupts_on_sigterm():
        config = compose.resolved_config(sh, base)
        stack = Compose(name, (*base.files, _owner_override(config, Path(tmp), options.session)))
        try:
            up(sh, stack, options.wait_timeout or settings.stack.wait_timeout)
            inside = bool(options.runner_image)
            endpoints = (
                compose.internal_ports(config)
                if inside
                else compose.published_ports(sh, stack, config)
            )
            env = {
                **compose.endpoint_variables(endpoints, ENDPOINT_PREFIX),
                f"{ENDPOINT_PREFIX}_PROJECT": name,
            }
            print(f"stack {name} is healthy; endpoints: {env}", flush=True)
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
                    print(f"warning: artifacts of {name} incomplete: {exc}", flush=True)
                finally:
                    sh.run(stack.down(volumes=True), check=False)
                    print(f"stack {name} removed; artifacts in {artifacts}", flush=True)
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


def orphaned_projects(client, prefix: str) -> list[str]:
    """Compose projects named PREFIX-… whose owning run is gone (killed with SIGKILL)."""
    owners: dict[str, set[str]] = {}
    for container in client.containers.list(all=True, filters={"label": PROJECT_LABEL}):
        project = container.labels[PROJECT_LABEL]
        if project.startswith(prefix + "-"):
            owners.setdefault(project, set()).add(container.labels.get(OWNER_LABEL, ""))
    for resource in (*client.networks.list(), *client.volumes.list()):
        labels = resource.attrs.get("Labels") or {}
        project = labels.get(PROJECT_LABEL, "")
        if project.startswith(prefix + "-"):
            owners.setdefault(project, set()).add(labels.get(OWNER_LABEL, ""))
    return sorted(p for p, labels in owners.items() if not any(map(owner_alive, labels)))


def remove_project(client, project: str) -> list[str]:
    """Remove a compose project's containers, networks and volumes by label."""
    selector = {"label": f"{PROJECT_LABEL}={project}"}
    removed = []
    for container in client.containers.list(all=True, filters=selector):
        removed.append(f"container {container.name}")
        container.remove(force=True, v=True)
    for network in client.networks.list(filters=selector):
        removed.append(f"network {network.name}")
        network.remove()
    for volume in client.volumes.list(filters=selector):
        removed.append(f"volume {volume.name}")
        volume.remove(force=True)
    return removed
