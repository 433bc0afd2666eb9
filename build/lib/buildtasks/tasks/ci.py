from __future__ import annotations

from invoke import Context, task

from buildtasks import lazy
from buildtasks.tasks.common import one_line_errors, runtime

workflow = lazy.module("buildtasks.ci")


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
    rt = runtime(c)
    if check:
        rt.result(f"ci: {workflow.check(rt.settings, provider, out)} matches the configuration")
        return
    path, changed = workflow.write(rt, provider, out, force)
    rt.result(f"ci: {'wrote' if changed else 'unchanged'} {path}")
