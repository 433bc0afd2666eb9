"""Versioned SQLite schema migrations: `migrations/NNNN_name.sql`, applied in order.

The database's ``PRAGMA user_version`` is the number of the last file applied. Each file
runs in its own transaction together with the new user_version, so a failing file leaves
the database exactly at the previous version. A backup set of the database is taken
before anything is applied.

The same small program (RUNNER) reads and migrates the database on this machine or, for
``SERVICE:/path``, inside the service's container (with the container's own python3), so
the database is only ever opened by SQLite where it lives.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import msgspec

from buildtasks.backup import sets
from buildtasks.backup.sets import parse_location
from buildtasks.config import Settings
from buildtasks.docker.compose import stack_compose
from buildtasks.errors import BuildtasksError, ConfigError
from buildtasks.runtime import Runtime
from buildtasks.shell import Shell

FILE_NAME = re.compile(r"(\d{4})_[A-Za-z0-9_.-]+\.sql")

# Read by `python3 - PATH` after a first line setting PAYLOAD: [[version, name, sql], ...]
# (empty: only read the version). Prints one JSON document.
RUNNER = """\
import json, os, sqlite3, sys
if not PAYLOAD and not os.path.exists(sys.argv[1]):
    print(json.dumps({"before": 0, "after": 0, "applied": [], "exists": False}))
    sys.exit(0)
db = sqlite3.connect(sys.argv[1], isolation_level=None)
before = db.execute("PRAGMA user_version").fetchone()[0]
result = {"before": before, "applied": [], "skipped": [], "exists": True}
meanwhile = []  # files another run applied since the pending ones were read

def once(number, version):
    # first in each file's write transaction: a file whose number the version already
    # reached was applied by another run meanwhile; abort it, untouched
    if number <= version:
        meanwhile.append(number)
        raise ValueError("applied meanwhile")
    return 0
db.create_function("buildtasks_once", 2, once)
for number, name, sql in PAYLOAD:
    try:
        db.executescript(f"BEGIN IMMEDIATE;SELECT buildtasks_once({number}, user_version) "
                         f"FROM pragma_user_version;\\n{sql}\\n;"
                         f"PRAGMA user_version = {number};COMMIT;")
    except sqlite3.Error as exc:
        if db.in_transaction:
            db.execute("ROLLBACK")
        if meanwhile[-1:] == [number]:
            result["skipped"].append(name)
            continue
        result["error"] = f"{name}: {exc}"
        break
    result["applied"].append(name)
result["after"] = db.execute("PRAGMA user_version").fetchone()[0]
print(json.dumps(result))
"""


class MigrationFailed(BuildtasksError):
    """A migration file failed; the database stays at the version before it."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path


@dataclass(frozen=True)
class Outcome:
    database: str
    before: int
    after: int
    applied: tuple[str, ...] = ()
    pending: tuple[str, ...] = ()
    exists: bool = True  # False: the first migration creates the database


def _db(settings: Settings):
    if settings.db is None:
        raise ConfigError(
            'no [tool.buildtasks.db] table; add one with sqlite = "PATH" or "SERVICE:/PATH"'
        )
    return settings.db


def migrations(settings: Settings) -> list[Migration]:
    """The migration files in version order; a misnamed or repeated version is an error."""
    directory = settings.root / _db(settings).migrations
    if not directory.is_dir():
        raise ConfigError(f"{directory} is not a directory; fix [tool.buildtasks.db] migrations")
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = FILE_NAME.fullmatch(path.name)
        if not match or int(match.group(1)) == 0:
            raise ConfigError(f"{path}: name migration files NNNN_name.sql, from 0001")
        version = int(match.group(1))
        if version in found:
            raise ConfigError(f"{path}: version {version} is also {found[version].path.name}")
        found[version] = Migration(version, path.name, path)
    return [found[v] for v in sorted(found)]


def _runner(settings: Settings) -> list[str]:
    """The argv that runs RUNNER where the database lives."""
    location = parse_location(_db(settings).sqlite)
    if location.service:
        stack = stack_compose(settings)
        return stack.argv("exec", "-T", location.service, "python3", "-", location.path)
    return [sys.executable, "-", str(settings.root / location.path)]


def _run(sh: Shell, argv: list[str], payload: list, query: bool) -> dict:
    program = f"PAYLOAD = {json.dumps(payload)!r}\n"
    program += "import json\nPAYLOAD = json.loads(PAYLOAD)\n" + RUNNER
    result = sh.run(argv, query=query, capture=True, input=program, check=False)
    if result.returncode != 0 or not (result.stdout or "").strip():
        detail = (result.stderr or "").strip().splitlines()[-1:] or ["no output"]
        raise MigrationFailed(f"cannot open the database ({detail[0]}); is the service running?")
    return json.loads(result.stdout.strip().splitlines()[-1])


def status(settings: Settings, sh: Shell) -> Outcome:
    """The database's version and the files not applied yet."""
    files = migrations(settings)
    found = _run(sh, _runner(settings), [], query=True)
    return _outcome(settings, files, found["before"], exists=found["exists"])


def _outcome(settings: Settings, files: list[Migration], version: int, **extra) -> Outcome:
    latest = files[-1].version if files else 0
    if version > latest:
        raise MigrationFailed(
            f"{_db(settings).sqlite} is at version {version}, beyond the last migration "
            f"({latest}); is [tool.buildtasks.db] migrations the right directory?"
        )
    pending = tuple(m.name for m in files if m.version > version)
    return Outcome(_db(settings).sqlite, version, version, pending=pending, **extra)


def migrate(settings: Settings, sh: Runtime) -> Outcome:
    """Take a backup set of the database, then apply the pending files in order, each in
    its own transaction. Under --dry: the pending files, nothing applied."""
    if sh.dry:
        return status(settings, sh)
    # one run at a time, none beside a backup or restore: another run's status would name
    # as pending the files this one applies
    with sets.locked(sets.backup_dir(settings)):
        return _migrate(settings, sh, status(settings, sh))


def _migrate(settings: Settings, sh: Runtime, current: Outcome) -> Outcome:
    if not current.pending:
        return current
    backup_id = "none (a new database)"
    if current.exists:
        backup_id = _backup(settings, sh)
        sh.note(f"backup set {backup_id} taken before migrating")
    files = [m for m in migrations(settings) if m.name in current.pending]
    payload = [[m.version, m.name, m.path.read_text()] for m in files]
    found = _run(sh, _runner(settings), payload, query=False)
    outcome = dataclasses.replace(
        current,
        after=found["after"],
        applied=tuple(found["applied"]),
        pending=tuple(
            m.name for m in files if m.name not in (*found["applied"], *found["skipped"])
        ),
        exists=True,
    )
    if found.get("error"):
        raise MigrationFailed(
            f"migration {found['error']}; the database stays at version {found['after']} "
            f"(backup set {backup_id}); fix the file and run inv db.migrate again"
        )
    return outcome


def _backup(settings: Settings, sh: Runtime) -> str:
    """A set of the database alone (partial: restored with `inv restore --id`)."""
    only_db = msgspec.structs.replace(
        settings.backup, sqlite=(_db(settings).sqlite,), files=(), redis={}, quiesce=()
    )
    made = sets.create(msgspec.structs.replace(settings, backup=only_db), sh, only=("sqlite",))
    return made.id
