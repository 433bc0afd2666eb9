"""The migration runner, run as `db.migrate` runs it for a database on this machine."""

from __future__ import annotations

import sqlite3
import sys

from buildtasks import migrate
from buildtasks.shell import Shell

FILES = [
    [1, "0001_log.sql", "CREATE TABLE log (name TEXT); INSERT INTO log VALUES ('0001');"],
    [2, "0002_log.sql", "INSERT INTO log VALUES ('0002');"],
]


def test_a_file_another_run_applied_meanwhile_is_not_applied_again(tmp_path):
    """Two runs that read the same pending files (checkouts with their own backup
    directories, so no shared lock): the second finds file 1 applied inside its
    transaction and leaves it."""
    path = tmp_path / "jobs.db"
    runner = [sys.executable, "-", str(path)]
    first = migrate._run(Shell(echo=False), runner, FILES[:1], query=False)
    assert first["applied"] == ["0001_log.sql"]
    second = migrate._run(Shell(echo=False), runner, FILES, query=False)
    assert (second["applied"], second["skipped"], second["after"]) == (
        ["0002_log.sql"], ["0001_log.sql"], 2,
    )  # fmt: skip
    db = sqlite3.connect(path)
    assert db.execute("SELECT name FROM log").fetchall() == [("0001",), ("0002",)]
    db.close()


def test_a_failing_file_stops_the_run_and_is_rolled_back(tmp_path):
    path = tmp_path / "jobs.db"
    sql = "INSERT INTO log VALUES ('0002');\nINSERT INTO nowhere VALUES (1);"
    found = migrate._run(Shell(echo=False), [sys.executable, "-", str(path)],
                         [FILES[0], [2, "0002_broken.sql", sql]], query=False)  # fmt: skip
    assert found["applied"] == ["0001_log.sql"] and found["after"] == 1
    assert found["error"].startswith("0002_broken.sql: no such table: nowhere")
    db = sqlite3.connect(path)
    assert db.execute("SELECT name FROM log").fetchall() == [("0001",)]
    db.close()


def test_a_file_that_sets_temporary_storage_applies(tmp_path):
    """The guard opens no temporary database, where SQLite refuses temp_store changes
    inside a transaction."""
    sql = "PRAGMA temp_store = MEMORY;\nCREATE TABLE big (x);"
    found = migrate._run(Shell(echo=False), [sys.executable, "-", str(tmp_path / "jobs.db")],
                         [[1, "0001_big.sql", sql]], query=False)  # fmt: skip
    assert (found["applied"], found.get("error")) == (["0001_big.sql"], None)
