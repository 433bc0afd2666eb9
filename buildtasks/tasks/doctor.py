from __future__ import annotations

from invoke import Context, task
from invoke.exceptions import Exit

from buildtasks import lazy
from buildtasks.tasks.common import one_line_errors, runtime

diagnosis = lazy.module("buildtasks.doctor")


@task
@one_line_errors
def doctor(c: Context) -> None:
    """Check engine, buildx, compose, multi-platform, binfmt and registries; print fixes."""
    findings = diagnosis.diagnose(runtime(c))
    for finding in findings:
        print(finding.line())
    blocking = [f.name for f in findings if not f.ok and f.blocking]
    if blocking:
        raise Exit(f"error: {', '.join(blocking)} not ready; apply the fixes above", code=1)
