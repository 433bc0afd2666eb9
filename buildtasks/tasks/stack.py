from __future__ import annotations

import json
import sys

from invoke import Context, task
from invoke.exceptions import Exit

from buildtasks.tasks.common import one_line_errors, settings

STACK_HELP = {
    "file": "compose file (repeatable; default: [tool.buildtasks.stack] compose)",
    "project": "compose project name (default: [tool.buildtasks.stack] project)",
}


def _stack(c: Context, file, project):
    from buildtasks import stack

    config = settings(c)
    sh = stack.stack_shell(config, dry=bool(c.config.run.dry))
    compose = stack.stack_compose(config, tuple(file or ()), project)
    return config, sh, stack.with_mirror(sh, config, compose)


@task(help={**STACK_HELP, "build": "build the stack's targets first"}, iterable=["file"])
@one_line_errors
def up(c: Context, build=False, file=None, project=""):
    """Start the compose stack and wait until every service is healthy."""
    from buildtasks import stack

    config, sh, compose = _stack(c, file, project)
    if build:
        _show_builds(stack.build_targets(sh, config, config.stack.targets))
    stack.up(sh, compose, config.stack.wait_timeout)


def _show_builds(summaries: list[str]) -> None:
    for summary in summaries:  # stderr: stdout is for --json
        print(summary, file=sys.stderr)


@task(
    help={**STACK_HELP, "volumes": "also remove the stack's volumes (its data!)"}, iterable=["file"]
)
@one_line_errors
def down(c: Context, volumes=False, file=None, project=""):
    """Stop and remove the compose stack (volumes kept unless --volumes); Ctrl-C waits until
    it is done. Fails naming what is left when the engine still holds part of it."""
    from buildtasks import stack
    from buildtasks.docker.engine import Engine

    _, sh, compose = _stack(c, file, project)
    stack.teardown(sh, Engine(sh), compose, volumes=volumes)


@task(
    help={**STACK_HELP, "service": "one service (default: all)", "follow": "keep streaming"},
    iterable=["file"],
)
@one_line_errors
def logs(c: Context, service="", follow=False, file=None, project=""):
    """Show the stack's logs with timestamps."""
    _, sh, compose = _stack(c, file, project)
    sh.run(compose.logs(service, follow))


def _report(report, as_json: bool) -> None:
    if as_json:
        body = {
            "services": report.services,
            "app": {"status": report.app_status, **report.app_body},
        }
        sys.stdout.write(json.dumps(body, indent=2) + "\n")
    else:
        for service, state in sorted(report.services.items()):
            print(f"{service:<16} {state}")
        print(f"app health       HTTP {report.app_status} {json.dumps(report.app_body)}")
    if not report.healthy:
        raise Exit("error: the stack is degraded; see above (inv logs for details)", code=1)


@task(help={**STACK_HELP, "json": "print the report as JSON"}, iterable=["file"])
@one_line_errors
def health(c: Context, json_=False, file=None, project=""):
    """Each service's health and the app's /health JSON; non-zero when degraded."""
    from buildtasks import stack

    config, sh, compose = _stack(c, file, project)
    _report(stack.health(sh, config, compose), json_)


@task(help={**STACK_HELP, "json": "print the health report as JSON"}, iterable=["file"])
@one_line_errors
def deploy(c: Context, json_=False, file=None, project=""):
    """Build the stack's targets, prepare data directories, start the stack, check health."""
    from buildtasks import stack

    config, sh, compose = _stack(c, file, project)
    _show_builds(stack.build_targets(sh, config, config.stack.targets))
    report = stack.deploy(sh, config, compose)
    if not sh.dry:
        _report(report, json_)
    elif json_:  # the plan is the commands echoed on stderr; stdout stays one document
        sys.stdout.write(json.dumps({"dry_run": True, "stack": compose.project}) + "\n")
