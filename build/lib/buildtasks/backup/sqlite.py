"""SQLite: snapshots (see sqlite_snapshot), checks, and the files a restore must clear."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from buildtasks.backup.sqlite_snapshot import integrity, snapshot

SNAPSHOT_SOURCE = (Path(__file__).parent / "sqlite_snapshot.py").read_text
__all__ = ["SNAPSHOT_SOURCE", "check", "snapshot", "stale_companions"]


def check(path: Path) -> str:
    """integrity_check of a database file, opened read-only."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return integrity(db)
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        return f"not a sound database: {exc}"


def stale_companions(path: Path) -> list[Path]:
    """-wal, -shm and -journal files that would be replayed over a restored database."""
    return [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal")]
