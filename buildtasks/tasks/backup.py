from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

from invoke import Collection, Context, task
from invoke.exceptions import Exit

from buildtasks import lazy
from buildtasks.errors import ConfigError
from buildtasks.tasks.common import one_line_errors, runtime

if TYPE_CHECKING:
    from buildtasks.runtime import Runtime

checks = lazy.module("buildtasks.docker.checks")
config = lazy.module("buildtasks.config")
drilling = lazy.module("buildtasks.backup.drill")
freshness = lazy.module("buildtasks.backup.freshness")
manifest = lazy.module("buildtasks.backup.manifest")
offsite = lazy.module("buildtasks.backup.offsite")
redis = lazy.module("buildtasks.backup.redis")
restoring = lazy.module("buildtasks.backup.restore")
sets = lazy.module("buildtasks.backup.sets")
stack = lazy.module("buildtasks.stack")


def _short(digest: str) -> str:
    return f"sha256:{digest[:12]}"


def _kinds(only: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in only.split(",") if k.strip())


def _report_retention(deleted: list[str], dry: bool, where: str = "") -> None:
    """Retention lines go to stderr: stdout may carry --json."""
    for set_id in deleted:
        print(f"{where}retention: {'would delete' if dry else 'deleted'} {set_id}", file=sys.stderr)


def _offsite_repository(project, sh, wanted: bool):
    """The off-site repository when this backup sends to it (--offsite, or send = "always")."""
    if wanted or project.backup.offsite.send == "always":
        return offsite.Repository(project, sh)
    return None


def _show_plan(
    rt: Runtime, kinds: tuple[str, ...], services: tuple[str, ...], as_json: bool, repo
) -> None:
    """What `inv --dry backup` would do: pause, capture, retention, send off-site."""
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
        "send_offsite": repo.shown if repo else "",
    }
    if as_json:
        rt.document(plan)
        return
    if services:
        print(f"would pause {', '.join(services)} while capturing")
    for item in plan["back_up"]:
        print(f"would back up {item['kind']} {item['source']} into {plan['into']}")
    _report_retention(plan["retention_would_delete"], dry=True)
    if repo:
        print(f"would send the set to the off-site repository {repo.shown}")


@task(
    default=True,
    help={
        "only": "comma-separated kinds to back up: sqlite, files, redis (default: all)",
        "json": "print the manifest (and the sets retention deleted) as one JSON document",
        "quiesce": "pause the services of [tool.buildtasks.backup] quiesce during the capture "
        "(the default when configured; --no-quiesce captures without pausing)",
        "offsite": "also send the verified set to the off-site repository "
        '(always when [tool.buildtasks.backup.offsite] send = "always")',
    },
)
@one_line_errors
def create(c: Context, only="", json_=False, quiesce=True, offsite=False):
    """Back up SQLite, job files and Redis into a new verified set; then apply retention;
    with --offsite, send it to the restic repository and apply retention there too."""
    sh = runtime(c)
    project = sh.settings
    kinds = _kinds(only)
    services = project.backup.quiesce if quiesce else ()
    repo = _offsite_repository(project, sh, offsite)
    if sh.dry:
        _show_plan(sh, kinds, services, json_, repo)
        return
    if repo:
        repo.open(create=True)  # a wrong password stops here, before anything changed
    with sets.locked(sets.backup_dir(project)):  # no other run's retention in between
        made = sets.create(project, sh, kinds, quiesce_services=services)
        problems = sets.verify(project, sh, made.id)
        if problems:
            listing = "; ".join(problems)
            raise Exit(f"error: backup {made.id} failed verification: {listing}", code=1)
        deleted = sets.apply_retention(project, dry=False)
        sent = repo.push(sets.backup_dir(project) / made.id, made) if repo else {}
    offsite_deleted = repo.apply_retention(dry=False) if repo else []
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
    if repo:
        added = checks.human_size(sent.get("bytes_added", 0))
        sh.note(
            f"off-site: backup {made.id} already in {repo.shown}"
            if sent.get("already_offsite")
            else f"off-site: sent backup {made.id} to {repo.shown} ({added} new after "
            f"deduplication, snapshot {sent['snapshot'][:8]})"
        )
        _report_retention(offsite_deleted, dry=False, where="off-site ")
    if json_:
        document = {**json.loads(manifest.dumps(made)), "retention_deleted": deleted}
        if repo:
            document |= {"offsite": sent, "offsite_retention_deleted": offsite_deleted}
        sh.document(document)


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
@task(
    help={
        "id": "the set to verify: an id, its prefix or a copy's name (default: newest)",
        "offsite": "check the off-site repository instead: `restic check` reading a data "
        "subset (see --subset)",
        "subset": "with --offsite: the part of the data read back, e.g. 10% or 1/7 "
        "(default: [tool.buildtasks.backup.offsite] check_subset)",
        "max_age": "check freshness instead: fail when the newest intact full set, local or "
        "off-site, is older than this (e.g. 26h)",
    }
)
@one_line_errors
def verify(c: Context, id="", offsite=False, subset="", max_age=""):
    """Verify a set: manifest, checksums, SQLite integrity, redis-check-rdb; or the off-site
    repository (--offsite); or that a recent enough set exists (--max-age)."""
    sh = runtime(c)
    project = sh.settings
    if max_age:
        _verify_fresh(project, sh, max_age)
        return
    if offsite:
        _verify_offsite(project, sh, subset)
        return
    named = id and (sets.backup_dir(project) / id).is_dir()  # a set, or a copy (keep-ID)
    set_id = id if named else sets.find(project, id).id
    problems = sets.verify(project, sh, set_id)
    if problems:
        listing = "".join(f"\n  - {p}" for p in problems)
        raise Exit(f"error: backup {set_id} failed verification:{listing}", code=1)
    print(f"backup {set_id}: verified")


def _verify_offsite(project, sh, subset: str) -> None:

    if subset:
        config.read_data_subset(subset)
    repo = offsite.Repository(project, sh)
    repo.open()
    repo.check(subset)
    chosen = subset or project.backup.offsite.check_subset
    print(f"off-site repository {repo.shown}: checked, {chosen} of the data read back")


def _verify_fresh(project, sh, max_age: str) -> None:

    try:
        limit = config.parse_duration(max_age)
    except config.ConfigError as exc:
        raise Exit(f"error: --max-age: {exc}", code=1) from None
    found, unread = freshness.newest(project, sh)
    for line in unread:
        print(f"warning: {line}", file=sys.stderr)
    if not found:
        raise Exit("error: no intact full backup set, local or off-site; take one with inv backup")
    where, set_id = max(found.items(), key=lambda pair: pair[1])
    age = freshness.age_seconds(set_id)
    places = ", ".join(f"{w} {i}" for w, i in sorted(found.items()))
    if age > limit:
        raise Exit(
            f"error: the newest intact backup set ({where}, {set_id}) is "
            f"{freshness.human_age(age)} old, older than --max-age {max_age}; newest: {places}",
            code=1,
        )
    print(f"fresh: newest intact backup set is {freshness.human_age(age)} old ({places})")


@task(
    help={
        "id": "the set to restore (default: the newest full set)",
        "only": "comma-separated kinds to restore: sqlite, files, redis (default: all)",
        "yes": "act; without it only the plan is shown",
        "from": "where the set is: local (the backup directory) or offsite (downloaded and "
        "verified into the backup directory first)",
    },
)
@one_line_errors
def restore(c: Context, id="", only="", yes=False, from_="local"):
    """Restore a backup set (verify, safety backup, stop, stage, swap, start, health).
    Works with the stack down or never started: its volumes are created first."""
    rt = runtime(c)
    project = rt.settings
    kinds = _kinds(only)
    sets.sources(project, kinds)  # an unknown kind is refused before anything else
    if from_ not in ("local", "offsite"):
        raise ConfigError(f"--from {from_!r}: write local or offsite")
    if from_ == "offsite":
        sh = rt
        if sh.dry or not yes:  # nothing is downloaded before the restore is wanted
            repo = offsite.Repository(project, sh)
            repo.open()
            snapshot = repo.find(id)
            print(
                f"would download backup {snapshot.set_id} from {repo.shown}, verify it, restore it"
            )
            if not sh.dry:
                raise Exit("error: nothing restored; rerun with --yes to restore this set", code=1)
            return
        found = offsite.download(project, sh, id)
    else:
        found = sets.find(project, id)
    for line in restoring.plan_lines(project, found, kinds):
        print(line)
    if rt.dry:
        return
    if not yes:
        raise Exit("error: nothing restored; rerun with --yes to restore this set", code=1)
    safety = restoring.run(project, stack.use_stack_images(rt), found, kinds)
    print(f"restored {found.id}; the state before is in backup {safety.id}")


@task(name="list", help={"json": "print the off-site sets as JSON"})
@one_line_errors
def offsite_list(c: Context, json_=False):
    """List the sets in the off-site repository, newest first."""
    rt = runtime(c)
    repo = offsite.Repository(rt.settings, rt)
    repo.open()
    snapshots = repo.snapshots()
    if json_:
        rt.document([{"id": s.set_id, "group": s.group, "snapshot": s.id} for s in snapshots])
        return
    for s in snapshots:
        partial = f" ({s.group})" if s.group != "full" else ""
        print(f"{s.set_id}  snapshot {s.id[:8]}{partial}")
    print(f"({len(snapshots)} sets in {repo.shown})", file=sys.stderr)


@task(
    help={
        "from": "drill the newest set of: local, offsite (default: the newer of both)",
        "json": "print the report as one JSON document",
    }
)
@one_line_errors
def drill(c: Context, from_="", json_=False):
    """Restore the newest set into a throwaway stack, wait for health, compare its data with
    the set (SQLite integrity and row counts, file digests, Redis keys), remove the stack.
    Exits non-zero on any mismatch."""
    rt = runtime(c)
    project = rt.settings
    if from_ not in ("", *drilling.WHERE):
        raise ConfigError(f"--from {from_!r}: write local or offsite")
    if rt.dry:
        drilling.drillable(project)
        print("would restore the newest set into a throwaway stack, check it, remove the stack")
        return
    sh = stack.use_stack_images(rt)
    report = drilling.run(project, sh, from_)
    if json_:
        rt.document(report.body())
    else:
        for check in report.checks:
            print(f"  {'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}")
        verdict = "passed" if report.ok else "FAILED"
        print(
            f"drill of backup {report.set_id} ({report.where}) {verdict} in {report.seconds:.0f} s"
        )
    if not report.ok:
        raise Exit(code=1)


collection = Collection("backup", create, list_, verify, drill)
collection.add_collection(Collection("offsite", offsite_list))
