"""nox helpers: `integration_session()` registers `integration` and `integration-clean`.

# noxfile.py
from buildtasks.sessions import integration_session
integration_session()
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nox

from buildtasks import config, stack
from buildtasks.docker.engine import quiet_sdk_loggers, remove_project
from buildtasks.errors import BuildtasksError
from buildtasks.runtime import Runtime


def integration_session(
    name: str = "integration",
    compose: Sequence[str] = ("compose/integration.yml",),
    targets: Sequence[str] | None = None,
    pytest_args: Sequence[str] = ("tests",),
    wait_timeout: int | None = None,
    artifacts: str = "artifacts",
    install: Sequence[str] = ("-e", ".[dev]"),
    python: str | bool | None = None,
    venv_backend: str | None = None,
    root: str = ".",
    runner_target: str = "",
    lease_ttl: float = 30.0,
) -> None:
    """Register `nox -s NAME` (build, start a uniquely named stack, wait for health, run
    pytest with the endpoints as BUILDTASKS_<SERVICE>_<PORT>, save logs, always tear down)
    and `nox -s NAME-clean` (remove this project's stacks whose run was killed).

    `nox -s NAME -- --in-container` runs pytest in the image of runner_target (which must
    have pytest) on the stack's network, with BUILDTASKS_<SERVICE>_<PORT>=service:port.

    A running session renews a lease in the engine every lease_ttl/4 seconds; `NAME-clean`,
    from any host sharing the engine, removes only stacks whose lease is older than that."""

    def run(session: nox.Session) -> None:
        quiet_sdk_loggers()

        in_container = "--in-container" in session.posargs
        posargs = [arg for arg in session.posargs if arg != "--in-container"]
        if install and venv_backend != "none" and python is not False and not in_container:
            session.install(*install)
        try:
            rt = stack.use_stack_images(Runtime(config.load(root)))
            settings = rt.settings
            build = list(settings.stack.targets if targets is None else targets)
            runner_image = ""
            if in_container:
                if runner_target not in settings.targets:
                    session.error(
                        f"--in-container needs integration_session(runner_target=...) naming a "
                        f"target with pytest; targets: {', '.join(settings.targets)}"
                    )
                build.append(runner_target)
                runner_image = rt.env[stack.image_variable(runner_target)]
            options = stack.IntegrationOptions(
                session=name,
                files=tuple(compose),
                targets=tuple(dict.fromkeys(build)),
                wait_timeout=wait_timeout,
                artifacts=artifacts,
                runner_image=runner_image,
                pytest_args=(*pytest_args, *posargs),
                lease_ttl=lease_ttl,
            )

            def run_tests(env: dict[str, str], artifact_dir: Path) -> None:
                junit = f"--junitxml={artifact_dir / 'junit.xml'}"
                session.run("pytest", *pytest_args, junit, *posargs, env=env)

            stack.integration(rt, options, run_tests, session.log)
        except BuildtasksError as exc:
            session.error(str(exc))

    def clean(session: nox.Session) -> None:
        quiet_sdk_loggers()
        try:
            settings = config.load(root)
            prefix = f"{stack.stack_compose(settings).project}-{name}"
            engine = Runtime(settings).engine
            orphans = stack.orphaned_projects(engine, prefix, name)
            for project in orphans:
                for item in remove_project(engine, project):
                    session.log(f"removed {item}")
            session.log(f"{len(orphans)} orphaned {name} stack(s) removed")
        except BuildtasksError as exc:
            session.error(str(exc))

    run.__doc__ = "Build, start the stack, wait for health, run pytest, always tear down."
    clean.__doc__ = f"Remove {name} stacks left behind by killed runs (this project's only)."
    nox.session(name=name, python=python, venv_backend=venv_backend)(run)
    nox.session(name=f"{name}-clean", python=python, venv_backend=venv_backend)(clean)
