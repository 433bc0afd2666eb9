from __future__ import annotations

from invoke import Context, task

from buildtasks.tasks.common import one_line_errors, settings, shell


@task(
    positional=["provider"],
    help={
        "provider": "github (.github/workflows/buildtasks.yml) or gitlab (.gitlab-ci.yml)",
        "out": "write the workflow here instead (relative to the project root)",
        "check": "fail when the file differs from what the configuration generates",
        "force": "overwrite a workflow that was edited by hand",
    },
)
@one_line_errors
def ci(c: Context, provider, out="", check=False, force=False):
    """Write the CI workflow (lint, tests, target matrix, push, release) from the config."""
    from buildtasks import ci as workflow

    project = settings(c)
    if check:
        print(f"ci: {workflow.check(project, provider, out)} matches the configuration")
        return
    path, changed = workflow.write(shell(c, project), project, provider, out, force)
    print(f"ci: {'wrote' if changed else 'unchanged'} {path}")
