"""Restore drills: prove a set brings the service back.

The newest full set (local, or off-site when that is newer or asked for) is verified, then
restored into a throwaway copy of the compose stack: its own project name, so its own
containers, network and volumes, and its published ports moved to free loopback ports. Once
it is healthy, what it holds is compared with the set: SQLite integrity and per-table row
counts, the digest of every job file, Redis' key count. The expected values are read from
the set's artifacts after they passed the manifest's checksums. The throwaway stack is
always removed (errors, Ctrl-C, SIGTERM), the live stack and its data are never touched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import secrets
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from buildtasks.backup import manifest, offsite, probe, redis, restore, sets
from buildtasks.config import Settings
from buildtasks.docker import compose
from buildtasks.docker.compose import stack_compose
from buildtasks.errors import BuildtasksError, ConfigError
from buildtasks.runtime import Runtime
from buildtasks.shell import Shell
from buildtasks.stack import (
    StackUnhealthy,
    health,
    interrupts_on_sigterm,
    mirror_images,
    teardown,
)

PROBE_SOURCE = (Path(__file__).parent / "probe.py").read_text
WHERE = ("local", "offsite")  # where a drill takes its set from


@dataclass
class Check:
    name: str  # health, sqlite SOURCE, files SOURCE, redis SOURCE
    ok: bool
    detail: str


@dataclass
class Report:
    set_id: str
    where: str  # local or offsite
    project: str  # the throwaway compose project
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def body(self) -> dict:
        return {
            "set": self.set_id,
            "from": self.where,
            "project": self.project,
            "ok": self.ok,
            "seconds": round(self.seconds, 1),
            "checks": [dataclasses.asdict(c) for c in self.checks],
        }


def drillable(settings: Settings) -> None:
    """A drill restores only into its own stack: a host path or a Redis URL would be the
    live data itself."""
    for kind, source in sets.sources(settings):
        in_service = (
            "service" in settings.backup.redis
            if kind == "redis"
            else bool(sets.parse_location(source).service)
        )
        if not in_service:
            shown = redis.redact(source) if kind == "redis" else source
            raise ConfigError(
                f"backup.drill restores into a throwaway compose stack, but {kind} {shown} is "
                "not inside a compose service (SERVICE:/path, redis = { service = ... }); "
                "drill such a project by restoring onto a spare machine"
            )


def newest(settings: Settings, sh: Shell, where: str) -> tuple[str, str]:
    """(where, set id) of the newest full set: local, off-site, or either ('')."""
    found = []
    if where in ("", "local"):
        valid, _ = sets.listing(settings)
        found += [("local", m.id) for m in valid if not m.partial]
    if where == "offsite" or (where == "" and settings.backup.offsite.repository):
        found += [("offsite", set_id) for set_id in offsite.full_sets(settings, sh)]
    if not found:
        raise BuildtasksError(
            f"no full backup set {'off-site' if where == 'offsite' else 'to drill'}; "
            "take one with inv backup"
        )
    return max(found, key=lambda pair: (pair[1], pair[0] == "local"))


@contextlib.contextmanager
def the_set(settings: Settings, sh: Shell, where: str, set_id: str) -> Iterator[Path]:
    """The verified set's directory for the drill: the local one under the directory's lock
    (retention waits), or an off-site one downloaded into a scratch directory."""
    if where == "local":
        with sets.locked(sets.backup_dir(settings)):
            problems = sets.verify(settings, sh, set_id)
            if problems:
                raise restore.RestoreRefused(
                    f"backup {set_id} failed verification: {'; '.join(problems)}"
                )
            yield sets.backup_dir(settings) / set_id
        return
    repo = offsite.Repository(settings, sh)
    with tempfile.TemporaryDirectory(prefix="buildtasks-drill-") as scratch:
        sh.note(f"drill: downloading backup {set_id} from {repo.shown}")
        repo.fetch(repo.find(set_id), Path(scratch) / set_id)
        yield Path(scratch) / set_id


def throwaway(settings: Settings, sh: Shell, scratch: Path) -> Settings:
    """The settings of a copy of the stack: a project name of its own, every published
    port moved to a free port on 127.0.0.1 (the live stack holds the configured ones), and
    base images from the mirror, as `inv up` takes them."""
    live = stack_compose(settings)
    name = f"{live.project}-drill-{secrets.token_hex(3)}"
    config = compose.resolved_config(sh, live)
    mirrored = mirror_images(settings, config)
    lines = ["services:"]
    for service, definition in sorted(config.get("services", {}).items()):
        entry = [f"    image: {json.dumps(mirrored[service])}"] if service in mirrored else []
        targets = [f"127.0.0.1::{int(p['target'])}" for p in definition.get("ports") or ()]
        if targets:
            entry += ["    ports: !override", *(f"      - {json.dumps(t)}" for t in targets)]
        if entry:
            lines += [f"  {json.dumps(service)}:", *entry]
    override = scratch / "buildtasks-drill.yml"
    override.write_text("\n".join(lines if len(lines) > 1 else ["services: {}"]) + "\n")
    stack = msgspec.structs.replace(
        settings.stack, project=name, compose=(*settings.stack.compose, str(override))
    )
    return msgspec.structs.replace(settings, stack=stack)


def run(settings: Settings, sh: Runtime, where: str = "") -> Report:
    """Drill the newest set (where: local, offsite, or '' for the newer of both)."""
    drillable(settings)
    where, set_id = newest(settings, sh, where)
    started = time.monotonic()
    report = Report(set_id, where, "")
    try:
        with the_set(settings, sh, where, set_id) as directory:
            report.checks.append(Check("verify", True, "manifest, checksums, integrity"))
            _restore_and_inspect(settings, sh, directory, report)
    except restore.RestoreRefused as exc:
        report.checks.append(Check("verify", False, str(exc)))
    report.seconds = time.monotonic() - started
    return report


def _restore_and_inspect(settings: Settings, sh: Runtime, directory: Path, report: Report) -> None:
    chosen = restore.steps(settings, manifest.load(directory))
    with tempfile.TemporaryDirectory(prefix="buildtasks-drill-") as scratch:
        drill = throwaway(settings, sh, Path(scratch))
        stack = stack_compose(drill)
        report.project = stack.project
        sh.note(f"drill: restoring backup {report.set_id} ({report.where}) into {stack.project}")
        with interrupts_on_sigterm():
            try:
                restore.prepare_stack(drill, sh, stack)
                try:
                    restore.swap_in(drill, sh, directory, chosen, stack)
                except StackUnhealthy as exc:
                    report.checks.append(Check("health", False, str(exc)))
                    return
                report.checks += inspect(drill, sh, stack, directory, chosen)
            finally:
                teardown(sh, sh.engine, stack, volumes=True)


def inspect(
    settings: Settings, sh: Shell, stack: compose.Compose, directory: Path, chosen
) -> list[Check]:
    """Compare the healthy throwaway stack with the set, artifact by artifact."""
    state = health(sh, settings, stack)
    checks = [
        Check(
            "health",
            state.healthy,
            f"services {state.services}, {settings.stack.app_service} "
            f"{settings.stack.health_path}: HTTP {state.app_status}",
        )
    ]
    access = sets.ServiceAccess(settings, sh, directory)
    for step in chosen:
        artifact, location = step.artifact, step.location
        path = directory / artifact.file
        name = f"{artifact.kind} {redis.redact(artifact.source)}"
        try:
            if artifact.kind == "redis":
                container = access.container(settings.backup.redis["service"])
                checks.append(_redis(sh, access, container, name, path))
                continue
            container = access.container(location.service)
            live = json.loads(
                access.engine.exec(
                    container,
                    ["python3", "-c", PROBE_SOURCE(), artifact.kind, location.path],
                    query=True,
                )
            )
        except (BuildtasksError, ValueError) as exc:
            checks.append(Check(name, False, f"could not read it in the drill stack: {exc}"))
            continue
        if artifact.kind == "sqlite":
            checks.append(_sqlite(name, probe.sqlite_state(str(path)), live))
        else:
            left_out = sets.overlapping(settings, artifact.source)
            checks.append(_files(name, _tar_digests(path), live, left_out))
    return checks


def _sqlite(name: str, expected: dict, live: dict) -> Check:
    if live.get("integrity") != "ok":
        return Check(name, False, f"integrity_check: {str(live.get('integrity'))[:200]}")
    if live.get("tables") != expected["tables"]:
        differ = sorted(
            t
            for t in set(expected["tables"]) | set(live.get("tables") or {})
            if expected["tables"].get(t) != (live.get("tables") or {}).get(t)
        )
        shown = ", ".join(
            f"{t}: {(live.get('tables') or {}).get(t)} rows, the set {expected['tables'].get(t)}"
            for t in differ[:5]
        )
        return Check(name, False, f"row counts differ: {shown}")
    counts = ", ".join(f"{t}={n}" for t, n in sorted(expected["tables"].items()))
    return Check(name, True, f"integrity ok, rows {counts or 'none'}")


def _tar_digests(path: Path) -> dict[str, str]:
    with tarfile.open(path) as tar:
        return {
            member.name: probe.file_digest(tar.extractfile(member))
            for member in tar.getmembers()
            if member.isfile()
        }


def _files(name: str, expected: dict, live: dict, left_out: frozenset[str]) -> Check:
    live = {k: v for k, v in live.items() if k not in left_out}
    missing = sorted(set(expected) - set(live))
    extra = sorted(set(live) - set(expected))
    changed = sorted(k for k in set(expected) & set(live) if expected[k] != live[k])
    if missing or extra or changed:
        parts = [
            f"{label} {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}"
            for label, items in (("missing", missing), ("extra", extra), ("changed", changed))
            if items
        ]
        return Check(name, False, "files differ: " + "; ".join(parts))
    return Check(name, True, f"{len(expected)} files, every digest equal")


def _redis(sh: Shell, access: sets.ServiceAccess, container, name: str, rdb: Path) -> Check:
    keys, expiring = redis.rdb_keys(sh, rdb)
    info = access.engine.exec(container, ["redis-cli", "INFO", "keyspace"], query=True)
    live = sum(int(n) for n in re.findall(r"^db\d+:keys=(\d+)", info, re.MULTILINE))
    ok = keys - expiring <= live <= keys  # only keys with an expiry may have gone since
    return Check(name, ok, f"DBSIZE {live}, the set holds {keys} keys ({expiring} expiring)")
