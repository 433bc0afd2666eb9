"""nox helpers: `integration_session()` registers `integration` and `integration-clean`.

# noxfile.py
from buildtasks.sessions import integration_session
integration_session()
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from pathlib import Path

import nox

from buildtasks import lazy
from buildtasks.errors import BuildtasksError, ConfigError

# Loaded when a session runs: every nox command loads the noxfile, listing sessions included.
config = lazy.module("buildtasks.config")
stack = lazy.module("buildtasks.stack")
docker_engine = lazy.module("buildtasks.docker.engine")
runtime = lazy.module("buildtasks.runtime")


def integration_session(
    name: str = "integration",
    compose: Sequence[str] | None = None,
    targets: Sequence[str] | None = None,
    pytest_args: Sequence[str] | None = None,
    wait_timeout: int | None = None,
    artifacts: str = "artifacts",
    install: Sequence[str] | None = None,
    python: str | bool | None = None,
    venv_backend: str | None = None,
    root: str = ".",
    runner_target: str | None = None,
    lease_ttl: float = 30.0,
) -> None:
    """Register `nox -s NAME` (build, start a uniquely named stack, wait for health, run
    pytest with the endpoints as BUILDTASKS_<SERVICE>_<PORT>, save logs, always tear down)
    and `nox -s NAME-clean` (remove this project's stacks whose run was killed).

    `nox -s NAME -- --in-container` runs pytest in the image of runner_target (which must
    have pytest) on the stack's network, with BUILDTASKS_<SERVICE>_<PORT>=service:port.

    A running session renews a lease in the engine every lease_ttl/4 seconds; `NAME-clean`,
    from any host sharing the engine, removes only stacks whose lease is older than that.

    Every argument left out comes from [tool.buildtasks.integration], then from
    [tool.buildtasks.stack]: compose files, targets, pytest arguments, wait timeout, what
    to install (default: the project's test requirements, see test_requirements)."""

    def run(session: nox.Session) -> None:
        docker_engine.quiet_sdk_loggers()

        in_container = "--in-container" in session.posargs
        posargs = [arg for arg in session.posargs if arg != "--in-container"]
        try:
            rt = runtime.Runtime(config.load(root))
            settings = rt.settings
            chosen = settings.integration
            packages = test_requirements(settings) if install is None else list(install)
            if packages and venv_backend != "none" and python is not False and not in_container:
                session.install(*packages)
            build = list(
                (chosen.targets if chosen.targets is not None else settings.stack.targets)
                if targets is None
                else targets
            )
            runner = chosen.runner_target if runner_target is None else runner_target
            args = tuple(chosen.pytest_args if pytest_args is None else pytest_args)
            runner_image = ""
            if in_container:
                if runner not in settings.targets:
                    session.error(
                        f"--in-container needs integration_session(runner_target=...) naming a "
                        f"target with pytest; targets: {', '.join(settings.targets)}"
                    )
                build.append(runner)
                runner_image = stack.image_variables(rt)[stack.image_variable(runner)]
            options = stack.IntegrationOptions(
                session=name,
                files=tuple(compose or chosen.compose or settings.stack.compose),
                targets=tuple(dict.fromkeys(build)),
                wait_timeout=wait_timeout or chosen.wait_timeout,
                artifacts=artifacts,
                runner_image=runner_image,
                pytest_args=(*args, *posargs),
                lease_ttl=lease_ttl,
            )

            def run_tests(env: dict[str, str], artifact_dir: Path) -> None:
                junit = f"--junitxml={artifact_dir / 'junit.xml'}"
                session.run("pytest", *args, junit, *posargs, env=env)

            stack.integration(rt, options, run_tests, session.log)
        except BuildtasksError as exc:
            session.error(str(exc))

    def clean(session: nox.Session) -> None:
        docker_engine.quiet_sdk_loggers()
        try:
            settings = config.load(root)
            prefix = f"{stack.stack_compose(settings).project}-{name}"
            engine = runtime.Runtime(settings).engine
            orphans = stack.orphaned_projects(engine, prefix, name)
            for project in orphans:
                for item in docker_engine.remove_project(engine, project):
                    session.log(f"removed {item}")
            session.log(f"{len(orphans)} orphaned {name} stack(s) removed")
        except BuildtasksError as exc:
            session.error(str(exc))

    run.__doc__ = "Build, start the stack, wait for health, run pytest, always tear down."
    clean.__doc__ = f"Remove {name} stacks left behind by killed runs (this project's only)."
    nox.session(name=name, python=python, venv_backend=venv_backend)(run)
    nox.session(name=f"{name}-clean", python=python, venv_backend=venv_backend)(clean)


REQUIREMENT_FILES = ("requirements-test.txt", "requirements-dev.txt", "tests/requirements.txt")


def test_requirements(settings) -> list[str]:
    """What the session installs by default: [tool.buildtasks.integration] install, else
    the project's `test` (or `dev`) dependency group, else its first requirements file
    (requirements-test.txt, requirements-dev.txt, tests/requirements.txt), else pytest."""
    if settings.integration.install is not None:
        return list(settings.integration.install)
    with open(settings.root / "pyproject.toml", "rb") as handle:
        groups = tomllib.load(handle).get("dependency-groups", {})
    for group in ("test", "dev"):
        if group in groups:
            return _group(groups, group, ())
    for name in REQUIREMENT_FILES:
        if (settings.root / name).is_file():
            return ["-r", str(settings.root / name)]
    return ["pytest"]


def _group(groups: dict, name: str, seen: tuple[str, ...]) -> list[str]:
    """A PEP 735 dependency group's requirements, with its include-group entries expanded."""
    if name in seen or not isinstance(groups.get(name), list):
        raise ConfigError(f"pyproject.toml: dependency-groups.{name} is missing or cyclic")
    result = []
    for item in groups[name]:
        if isinstance(item, dict) and "include-group" in item:
            result += _group(groups, item["include-group"], (*seen, name))
        elif isinstance(item, str):
            result.append(item)
    return result
