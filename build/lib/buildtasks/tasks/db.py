"""`inv db.migrate`, `inv db.status` and `inv clean-storage`: the project's stored data."""

from __future__ import annotations

import dataclasses

from invoke import Collection, Context, task

from buildtasks import lazy
from buildtasks.errors import BuildtasksError
from buildtasks.tasks.common import one_line_errors, runtime

migrations = lazy.module("buildtasks.migrate")
storage = lazy.module("buildtasks.storage")


def _show(rt, outcome, as_json: bool, dry: bool) -> None:
    if as_json:
        rt.document(dataclasses.asdict(outcome))
        return
    print(f"{outcome.database}: version {outcome.after}")
    for name in outcome.applied:
        print(f"  applied {name}")
    for name in outcome.pending:
        print(f"  {'would apply' if dry else 'pending'} {name}")


@task(help={"json": "print the state as one JSON document"})
@one_line_errors
def status(c: Context, json_=False):
    """Show the database's schema version and the migrations not applied yet."""
    rt = runtime(c)
    _show(rt, migrations.status(rt.settings, rt), json_, dry=False)


@task(help={"json": "print the outcome as one JSON document"})
@one_line_errors
def migrate(c: Context, json_=False):
    """Back up the database, then apply the pending migrations/NNNN_*.sql files in order,
    each in its own transaction (a failing one leaves the previous version)."""
    rt = runtime(c)
    _show(rt, migrations.migrate(rt.settings, rt), json_, dry=rt.dry)


collection = Collection("db", migrate, status)


@task(
    name="clean-storage",
    help={"yes": "really remove the data (a backup set holding all of it must exist)"},
)
@one_line_errors
def clean_storage(c: Context, yes=False):
    """Remove the stack's configured data (backup sqlite and files sources), only when a
    backup set holds all of it; `inv restore` brings it back."""
    sh = runtime(c)
    project = sh.settings
    cleaning = storage.plan(project)
    if not yes and not sh.dry:
        raise BuildtasksError(
            f"clean-storage removes {len(cleaning.commands)} data source(s) (held by backup "
            f"set {cleaning.backup_id}); pass --yes to remove them, or --dry to see how"
        )
    storage.clean(project, sh, cleaning)
    verb = "would remove" if sh.dry else "removed"
    print(f"{verb} the configured data; `inv restore --id {cleaning.backup_id}` brings it back")
