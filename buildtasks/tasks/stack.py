from __future__ import annotations

import json
import sys

from invoke import Context, task
from invoke.exceptions import Exit

from buildtasks import lazy
from buildtasks.tasks.common import one_line_errors, runtime

stack = lazy.module("buildtasks.stack")

STACK_HELP = {
    "file": "compose file (repeatable; default: [tool.buildtasks.stack] compose)",
    "project": "compose project name (default: [tool.buildtasks.stack] project)",
}


def _stack(c: Context, file, project, starts: bool = False):
    """The runtime, with the targets' images for compose, and the stack to act on (its
    base images from the mirror when the command starts containers)."""
    rt = stack.use_stack_images(runtime(c))
    compose = stack.stack_compose(rt.settings, tuple(file or ()), project)
    return rt, stack.with_mirror(rt, rt.settings, compose) if starts else compose


@task(help={**STACK_HELP, "build": "build the stack's targets first"}, iterable=["file"])
@one_line_errors
def up(c: Context, build=False, file=None, project=""):
    """Start the compose stack and wait until every service is healthy."""
    rt, compose = _stack(c, file, project, starts=True)
    if build:
        _show_builds(stack.build_targets(rt, rt.settings.stack.targets))
    stack.up(rt, compose, rt.settings.stack.wait_timeout)


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
    rt, compose = _stack(c, file, project)
    stack.teardown(rt, rt.engine, compose, volumes=volumes)


@task(
    help={**STACK_HELP, "service": "one service (default: all)", "follow": "keep streaming"},
    iterable=["file"],
)
@one_line_errors
def logs(c: Context, service="", follow=False, file=None, project=""):
    """Show the stack's logs with timestamps."""
    rt, compose = _stack(c, file, project)
    rt.run(compose.logs(service, follow))


def _report(rt, report, as_json: bool) -> None:
    if as_json:
        rt.document(
            {"services": report.services, "app": {"status": report.app_status, **report.app_body}}
        )
    else:
        for service, state in sorted(report.services.items()):
            rt.result(f"{service:<16} {state}")
        rt.result(f"app health       HTTP {report.app_status} {json.dumps(report.app_body)}")
    if not report.healthy:
        raise Exit("error: the stack is degraded; see above (inv logs for details)", code=1)


@task(help={**STACK_HELP, "json": "print the report as JSON"}, iterable=["file"])
@one_line_errors
def health(c: Context, json_=False, file=None, project=""):
    """Each service's health and the app's /health JSON; non-zero when degraded."""
    rt, compose = _stack(c, file, project)
    _report(rt, stack.health(rt, rt.settings, compose), json_)


@task(help={**STACK_HELP, "json": "print the health report as JSON"}, iterable=["file"])
@one_line_errors
def deploy(c: Context, json_=False, file=None, project=""):
    """Build the stack's targets, prepare data directories, start the stack, check health."""
    rt, compose = _stack(c, file, project, starts=True)
    _show_builds(stack.build_targets(rt, rt.settings.stack.targets))
    report = stack.deploy(rt, rt.settings, compose)
    if not rt.dry:
        _report(rt, report, json_)
    elif json_:  # the plan is the commands echoed on stderr; stdout stays one document
        rt.document({"dry_run": True, "stack": compose.project})
