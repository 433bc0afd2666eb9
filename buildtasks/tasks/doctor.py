from __future__ import annotations

from invoke import Context, task
from invoke.exceptions import Exit

from buildtasks.tasks.common import one_line_errors, settings, shell


@task
@one_line_errors
def doctor(c: Context) -> None:
    """Check engine, buildx, compose, multi-platform, binfmt and registries; print fixes."""
    from buildtasks.doctor import diagnose

    project = settings(c)
    findings = diagnose(project, shell(c, project))
    for finding in findings:
        print(finding.line())
    blocking = [f.name for f in findings if not f.ok and f.blocking]
    if blocking:
        raise Exit(f"error: {', '.join(blocking)} not ready; apply the fixes above", code=1)
