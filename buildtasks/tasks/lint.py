from __future__ import annotations

import json as json_module

from invoke import Context, task
from invoke.exceptions import Exit

from buildtasks.tasks.common import one_line_errors, settings, shell


@task(help={"json": "print the result as one JSON document"})
@one_line_errors
def lint(c: Context, json=False):
    """Lint every target's Dockerfile (hadolint + offline checks) before any build."""
    from buildtasks.docker import lint as dockerfile_lint

    project = settings(c)
    report = dockerfile_lint.lint(shell(c, project), project)
    if json:
        print(json_module.dumps(report.to_json(), indent=2))
    else:
        for finding in report.findings:
            print(f"{finding}  [{', '.join(finding.targets)}]")
    files = len({t.dockerfile for t in project.targets.values()})
    summary = f"{len(report.findings)} findings in {files} Dockerfiles"
    if report.failing:
        raise Exit(
            f"error: lint: {summary}, {len(report.failing)} at or above "
            f"{report.threshold}; fix them or configure .hadolint.yaml",
            code=1,
        )
    if not json:
        print(f"lint: {summary}, none at or above {report.threshold}")
