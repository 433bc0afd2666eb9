from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

from invoke import Collection, Context, task
from invoke.exceptions import Exit

from buildtasks import lazy
from buildtasks.tasks.common import one_line_errors, runtime

if TYPE_CHECKING:
    from buildtasks.runtime import Runtime

checks = lazy.module("buildtasks.docker.checks")
manifest = lazy.module("buildtasks.backup.manifest")
redis = lazy.module("buildtasks.backup.redis")
restoring = lazy.module("buildtasks.backup.restore")
sets = lazy.module("buildtasks.backup.sets")
stack = lazy.module("buildtasks.stack")


def _short(digest: str) -> str:
    return f"sha256:{digest[:12]}"


def _kinds(only: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in only.split(",") if k.strip())


def _report_retention(deleted: list[str], dry: bool) -> None:
    """Retention lines go to stderr: stdout may carry --json."""
    for set_id in deleted:
        print(f"retention: {'would delete' if dry else 'deleted'} {set_id}", file=sys.stderr)


def _show_plan(rt: Runtime, kinds: tuple[str, ...], services: tuple[str, ...], as_json: bool):
    """What `inv --dry backup` would do: pause, capture, retention."""
    project = rt.settings
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
        rt.document(plan)
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
    sh = runtime(c)
    project = sh.settings
    kinds = _kinds(only)
    services = project.backup.quiesce if quiesce else ()
    if sh.dry:
        _show_plan(sh, kinds, services, json_)
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
            size = checks.human_size(a.size)
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
            f"backup {made.id}: {len(made.artifacts)} artifacts, {checks.human_size(total)}, "
            f"verified{partial if made.partial else ''}"
        )
    _report_retention(deleted, dry=False)
    if json_:
        sh.document({**json.loads(manifest.dumps(made)), "retention_deleted": deleted})


@task(name="list", help={"json": "print the sets as JSON"})
@one_line_errors
def list_(c: Context, json_=False):
    """List the valid backup sets, newest first."""
    rt = runtime(c)
    valid, invalid = sets.listing(rt.settings)
    if json_:
        rt.document([m.body() for m in valid])
        return
    for m in valid:
        kinds = ",".join(a.kind for a in m.artifacts) + (" (partial)" if m.partial else "")
        print(f"{m.id}  {checks.human_size(sum(a.size for a in m.artifacts)):>9}  {kinds}")
    if invalid:
        print(
            f"({len(invalid)} directories without a valid manifest ignored: {', '.join(invalid)})"
        )


# IDs are flags (--id), not positionals: invoke has no optional positional arguments.
@task(help={"id": "the set to verify: an id, its prefix or a copy's name (default: newest)"})
@one_line_errors
def verify(c: Context, id=""):
    """Verify a set: manifest, checksums, SQLite integrity, redis-check-rdb."""
    rt = runtime(c)
    project = rt.settings
    named = id and (sets.backup_dir(project) / id).is_dir()  # a set, or a copy (keep-ID)
    set_id = id if named else sets.find(project, id).id
    problems = sets.verify(project, rt, set_id)
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
    rt = runtime(c)
    project = rt.settings
    kinds = _kinds(only)
    sets.sources(project, kinds)  # an unknown kind is refused before anything else
    found = sets.find(project, id)
    for line in restoring.plan_lines(project, found, kinds):
        print(line)
    if rt.dry:
        return
    if not yes:
        raise Exit("error: nothing restored; rerun with --yes to restore this set", code=1)
    safety = restoring.run(project, stack.use_stack_images(rt), found, kinds)
    print(f"restored {found.id}; the state before is in backup {safety.id}")


collection = Collection("backup", create, list_, verify)
