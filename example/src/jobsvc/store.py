"""SQLite job persistence (WAL mode, one connection per thread)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    payload TEXT NOT NULL,
    result TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
)
"""


class Store:
    def __init__(self, path: Path):
        self.path = path
        self._local = threading.local()
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(SCHEMA)

    def _db(self) -> sqlite3.Connection:
        if not hasattr(self._local, "db"):
            self._local.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self._local.db.row_factory = sqlite3.Row
        return self._local.db

    def create(self, payload: dict) -> str:
        job_id = uuid.uuid4().hex
        now = time.time()
        self._db().execute(
            "INSERT INTO jobs VALUES (?, 'queued', ?, NULL, ?, ?)",
            (job_id, json.dumps(payload), now, now),
        )
        return job_id

    def get(self, job_id: str) -> dict | None:
        row = self._db().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        job = dict(row)
        job["payload"] = json.loads(job["payload"])
        job["result"] = json.loads(job["result"]) if job["result"] else None
        return job

    def claim_next(self) -> str | None:
        """The oldest queued job, marked running (used when there is no Redis queue)."""
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute(
                "SELECT id FROM jobs WHERE status = 'queued' ORDER BY created LIMIT 1"
            ).fetchone()
            if row:
                db.execute(
                    "UPDATE jobs SET status = 'running', updated = ? WHERE id = ?",
                    (time.time(), row["id"]),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return row["id"] if row else None

    def finish(self, job_id: str, result: dict) -> None:
        self._db().execute(
            "UPDATE jobs SET status = 'done', result = ?, updated = ? WHERE id = ?",
            (json.dumps(result), time.time(), job_id),
        )

    def check(self) -> dict:
        ok = self._db().execute("PRAGMA quick_check").fetchone()[0] == "ok"
        count = self._db().execute("SELECT count(*) FROM jobs").fetchone()[0]
        return {"ok": ok, "path": str(self.path), "jobs": count}
