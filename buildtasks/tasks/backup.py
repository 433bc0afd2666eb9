from __future__ import annotations

import json
import sys

from invoke import Collection, Context, task
from invoke.exceptions import Exit

from buildtasks.tasks.common import one_line_errors, settings, shell


def _short(digest: str) -> str:
    return f"sha256:{digest[:12]}"


def _apply_retention(project, dry: bool, out=sys.stdout) -> None:
    from buildtasks.backup import sets

    for set_id in sets.apply_retention(project, dry):
        print(f"retention: {'would delete' if dry else 'deleted'} {set_id}", file=out)


@task(
    default=True,
    help={
        "only": "comma-separated kinds to back up: sqlite, files, redis (default: all)",
        "json": "print the manifest as JSON",
        "quiesce": "pause the services of [tool.buildtasks.backup] quiesce during the capture "
        "(the default when configured; --no-quiesce captures without pausing)",
    },
)
@one_line_errors
def create(c: Context, only="", json_=False, quiesce=True):
    """Back up SQLite, job files and Redis into a new verified set; then apply retention."""
    from buildtasks.backup import manifest, redis, sets
    from buildtasks.docker.checks import human_size

    project = settings(c)
    sh = shell(c, project)
    kinds = tuple(k.strip() for k in only.split(",") if k.strip())
    services = project.backup.quiesce if quiesce else ()
    if sh.dry:
        if services:
            print(f"would pause {', '.join(services)} while capturing")
        for kind, source in sets.sources(project, kinds):
            shown = redis.redact(source) if kind == "redis" else source
            print(f"would back up {kind} {shown} into {sets.backup_dir(project)}")
        _apply_retention(project, dry=True)
        return
    made = sets.create(project, sh, kinds, quiesce_services=services)
    problems = sets.verify(project, sh, made.id)
    if problems:
        raise Exit(f"error: backup {made.id} failed verification: {'; '.join(problems)}", code=1)
    if json_:
        sys.stdout.write(manifest.dumps(made) + "\n")
    else:
        for a in made.artifacts:
            size = human_size(a.size)
            print(f"  {a.kind:<7} {a.source:<28} {size:>9}  {_short(a.sha256)}  {a.integrity}")
        if made.quiesce:
            paused = ", ".join(made.quiesce["services"])
            print(f"  paused {paused} for {made.quiesce['paused_seconds']:.2f} s")
        total = sum(a.size for a in made.artifacts)
        print(f"backup {made.id}: {len(made.artifacts)} artifacts, {human_size(total)}, verified")
    _apply_retention(project, dry=False, out=sys.stderr if json_ else sys.stdout)  # one JSON doc


@task(name="list", help={"json": "print the sets as JSON"})
@one_line_errors
def list_(c: Context, json_=False):
    """List the valid backup sets, newest first."""
    from buildtasks.backup import sets
    from buildtasks.docker.checks import human_size

    project = settings(c)
    valid, invalid = sets.listing(project)
    if json_:
        rows = [m.body() for m in valid]
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    for m in valid:
        kinds = ",".join(a.kind for a in m.artifacts)
        print(f"{m.id}  {human_size(sum(a.size for a in m.artifacts)):>9}  {kinds}")
    if invalid:
        print(
            f"({len(invalid)} directories without a valid manifest ignored: {', '.join(invalid)})"
        )


# IDs are flags (--id), not positionals: invoke has no optional positional arguments.
@task(help={"id": "the set to verify (default: the newest)"})
@one_line_errors
def verify(c: Context, id=""):
    """Verify a set: manifest, checksums, SQLite integrity, redis-check-rdb."""
    from buildtasks.backup import sets

    project = settings(c)
    set_id = id or sets.find(project).id
    problems = sets.verify(project, shell(c, project), set_id)
    if problems:
        listing = "".join(f"\n  - {p}" for p in problems)
        raise Exit(f"error: backup {set_id} failed verification:{listing}", code=1)
    print(f"backup {set_id}: verified")


@task(
    help={
        "id": "the set to restore (default: the newest)",
        "yes": "act; without it only the plan is shown",
    },
)
@one_line_errors
def restore(c: Context, id="", yes=False):
    """Restore a backup set (verify, safety backup, stop, swap, start, health)."""
    from buildtasks.backup import restore as restoring
    from buildtasks.backup import sets

    project = settings(c)
    found = sets.find(project, id)
    for line in restoring.plan_lines(project, found):
        print(line)
    if c.config.run.dry:
        return
    if not yes:
        raise Exit("error: nothing restored; rerun with --yes to restore this set", code=1)
    from buildtasks.stack import stack_shell

    safety = restoring.run(project, stack_shell(project, dry=False), found)
    print(f"restored {found.id}; the state before is in backup {safety.id}")


collection = Collection("backup", create, list_, verify)
