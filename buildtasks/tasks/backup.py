from __future__ import annotations

import json
import sys

from invoke import Collection, Context, task
from invoke.exceptions import Exit

from buildtasks.tasks.common import one_line_errors, settings, shell


def _short(digest: str) -> str:
    return f"sha256:{digest[:12]}"


def _kinds(only: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in only.split(",") if k.strip())


def _report_retention(deleted: list[str], dry: bool) -> None:
    """Retention lines go to stderr: stdout may carry --json."""
    for set_id in deleted:
        print(f"retention: {'would delete' if dry else 'deleted'} {set_id}", file=sys.stderr)


def _show_plan(project, kinds: tuple[str, ...], services: tuple[str, ...], as_json: bool):
    """What `inv --dry backup` would do: pause, capture, retention."""
    from buildtasks.backup import redis, sets

    plan = {
        "dry_run": True,
        "pause": list(services),
        "back_up": [
            {"kind": kind, "source": redis.redact(source) if kind == "redis" else source}
            for kind, source in sets.sources(project, kinds)
        ],
        "into": str(sets.backup_dir(project)),
        "retention_would_delete": sets.apply_retention(project, dry=True),
    }
    if as_json:
        sys.stdout.write(json.dumps(plan, indent=2) + "\n")
        return
    if services:
        print(f"would pause {', '.join(services)} while capturing")
    for item in plan["back_up"]:
        print(f"would back up {item['kind']} {item['source']} into {plan['into']}")
    _report_retention(plan["retention_would_delete"], dry=True)


@task(
    default=True,
    help={
        "only": "comma-separated kinds to back up: sqlite, files, redis (default: all)",
        "json": "print the manifest (and the sets retention deleted) as one JSON document",
        "quiesce": "pause the services of [tool.buildtasks.backup] quiesce during the capture "
        "(the default when configured; --no-quiesce captures without pausing)",
    },
)
@one_line_errors
def create(c: Context, only="", json_=False, quiesce=True):
    """Back up SQLite, job files and Redis into a new verified set; then apply retention."""
    from buildtasks.backup import manifest, sets
    from buildtasks.docker.checks import human_size

    project = settings(c)
    sh = shell(c, project)
    kinds = _kinds(only)
    services = project.backup.quiesce if quiesce else ()
    if sh.dry:
        _show_plan(project, kinds, services, json_)
        return
    with sets.locked(sets.backup_dir(project)):  # no other run's retention in between
        made = sets.create(project, sh, kinds, quiesce_services=services)
        problems = sets.verify(project, sh, made.id)
        if problems:
            listing = "; ".join(problems)
            raise Exit(f"error: backup {made.id} failed verification: {listing}", code=1)
        deleted = sets.apply_retention(project, dry=False)
    if not json_:
        for a in made.artifacts:
            size = human_size(a.size)
            print(f"  {a.kind:<7} {a.source:<28} {size:>9}  {_short(a.sha256)}  {a.integrity}")
            if a.details.get("left_out"):
                names = ", ".join(a.details["left_out"])
                print(f"          left out (captured by the sqlite backup API): {names}")
        if made.quiesce:
            paused = ", ".join(made.quiesce["services"])
            print(f"  paused {paused} for {made.quiesce['paused_seconds']:.2f} s")
        total = sum(a.size for a in made.artifacts)
        partial = " (partial: not counted by retention, restored only with --id)"
        print(
            f"backup {made.id}: {len(made.artifacts)} artifacts, {human_size(total)}, "
            f"verified{partial if made.partial else ''}"
        )
    _report_retention(deleted, dry=False)
    if json_:
        document = {**json.loads(manifest.dumps(made)), "retention_deleted": deleted}
        sys.stdout.write(json.dumps(document, indent=2) + "\n")


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
        kinds = ",".join(a.kind for a in m.artifacts) + (" (partial)" if m.partial else "")
        print(f"{m.id}  {human_size(sum(a.size for a in m.artifacts)):>9}  {kinds}")
    if invalid:
        print(
            f"({len(invalid)} directories without a valid manifest ignored: {', '.join(invalid)})"
        )


# IDs are flags (--id), not positionals: invoke has no optional positional arguments.
@task(help={"id": "the set to verify: an id, its prefix or a copy's name (default: newest)"})
@one_line_errors
def verify(c: Context, id=""):
    """Verify a set: manifest, checksums, SQLite integrity, redis-check-rdb."""
    from buildtasks.backup import sets

    project = settings(c)
    named = id and (sets.backup_dir(project) / id).is_dir()  # a set, or a copy (keep-ID)
    set_id = id if named else sets.find(project, id).id
    problems = sets.verify(project, shell(c, project), set_id)
    if problems:
        listing = "".join(f"\n  - {p}" for p in problems)
        raise Exit(f"error: backup {set_id} failed verification:{listing}", code=1)
    print(f"backup {set_id}: verified")


@task(
    help={
        "id": "the set to restore (default: the newest full set)",
        "only": "comma-separated kinds to restore: sqlite, files, redis (default: all)",
        "yes": "act; without it only the plan is shown",
    },
)
@one_line_errors
def restore(c: Context, id="", only="", yes=False):
    """Restore a backup set (verify, safety backup, stop, stage, swap, start, health).
    Works with the stack down or never started: its volumes are created first."""
    from buildtasks.backup import restore as restoring
    from buildtasks.backup import sets

    project = settings(c)
    kinds = _kinds(only)
    sets.sources(project, kinds)  # an unknown kind is refused before anything else
    found = sets.find(project, id)
    for line in restoring.plan_lines(project, found, kinds):
        print(line)
    if c.config.run.dry:
        return
    if not yes:
        raise Exit("error: nothing restored; rerun with --yes to restore this set", code=1)
    from buildtasks.stack import stack_shell

    safety = restoring.run(project, stack_shell(project, dry=False), found, kinds)
    print(f"restored {found.id}; the state before is in backup {safety.id}")


collection = Collection("backup", create, list_, verify)
