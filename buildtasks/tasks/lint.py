from __future__ import annotations

from invoke import Context, task
from invoke.exceptions import Exit

from buildtasks import lazy
from buildtasks.tasks.common import one_line_errors, runtime

dockerfile_lint = lazy.module("buildtasks.docker.lint")


@task(help={"json": "print the result as one JSON document"})
@one_line_errors
def lint(c: Context, json=False):
    """Lint every target's Dockerfile (hadolint + offline checks) before any build."""
    rt = runtime(c)
    report = dockerfile_lint.lint(rt, rt.settings)
    if json:
        rt.document(report.to_json())
    else:
        for finding in report.findings:
            rt.result(f"{finding}  [{', '.join(finding.targets)}]")
    summary = f"{len(report.findings)} findings in {report.files} Dockerfiles"
    if report.failing:
        raise Exit(
            f"error: lint: {summary}, {len(report.failing)} at or above "
            f"{report.threshold}; fix them or configure .hadolint.yaml",
            code=1,
        )
    if not json:
        rt.result(f"lint: {summary}, none at or above {report.threshold}")
