"""A SQLite snapshot is pinned before it is copied: in WAL mode the copy holds what was
committed when it was pinned, not what writers commit while it is copied; under a
rollback journal it is copied before writers may go on (a held read lock would block
them)."""

from __future__ import annotations

import sqlite3

import pytest

from buildtasks import config
from buildtasks.backup import sets, sqlite_snapshot
from buildtasks.shell import Shell


def database(path, mode: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, timeout=0)  # a held lock fails at once
    db.execute(f"PRAGMA journal_mode={mode}")
    db.execute("CREATE TABLE t (x)")
    db.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(100)])
    return db


def rows(path) -> int:
    return sqlite3.connect(path).execute("SELECT count(*) FROM t").fetchone()[0]


@pytest.mark.parametrize("mode", ["wal", "delete"])
def test_a_write_once_pinned_is_not_in_the_copy_and_is_not_blocked(tmp_path, mode):
    db = database(tmp_path / "src.db", mode)
    done = sqlite_snapshot.snapshot(
        str(tmp_path / "src.db"), str(tmp_path / "copy.db"),
        pinned=lambda: db.execute("INSERT INTO t VALUES (-1)"),
    )  # fmt: skip
    assert done == "ok"
    assert rows(tmp_path / "copy.db") == 100 and rows(tmp_path / "src.db") == 101


@pytest.mark.parametrize("mode", ["wal", "delete"])
def test_a_capture_of_a_database_here_copies_what_was_pinned(tmp_path, mode):
    (tmp_path / "pyproject.toml").write_text(
        '[tool.buildtasks]\nimage = "x"\n[tool.buildtasks.backup]\nsqlite = ["src.db"]\n'
    )
    db = database(tmp_path / "src.db", mode)
    (tmp_path / "set").mkdir()
    collector = sets.Collector(config.load(tmp_path), Shell(echo=False), tmp_path / "set")
    capture = sets.Capture(collector, "sqlite", "src.db", safety=False)
    try:
        db.execute("INSERT INTO t VALUES (-1)")  # the services would run again here
        artifact = capture.finish()
    finally:
        capture.close()
    assert artifact.integrity == "ok"
    assert rows(tmp_path / "set" / artifact.file) == 100 and rows(tmp_path / "src.db") == 101
