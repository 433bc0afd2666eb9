"""What a restore drill reads of restored data: SQLite integrity with per-table row counts,
and the sha256 of every file under a tree. Standard library only: the drill runs this file
inside the service's container (python3 -c SOURCE KIND PATH) and imports it here to read
the set's own artifacts the same way."""

import hashlib
import json
import os
import sqlite3
import sys


def sqlite_state(path: str) -> dict:
    """{"integrity": "ok" or what the check said, "tables": {name: rows}}, read-only."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        integrity = "; ".join(r[0] for r in db.execute("PRAGMA integrity_check"))
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        tables = {}
        for name in names:
            quoted = name.replace('"', '""')
            tables[name] = db.execute(f'SELECT count(*) FROM "{quoted}"').fetchone()[0]
        return {"integrity": integrity, "tables": tables}
    finally:
        db.close()


def file_digest(stream) -> str:
    digest = hashlib.sha256()
    for chunk in iter(lambda: stream.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest()


def tree_digests(path: str) -> dict:
    """{path relative to the tree: sha256} of every regular file under path."""
    digests = {}
    for top, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(top, name)
            if os.path.isfile(full) and not os.path.islink(full):
                with open(full, "rb") as stream:
                    digests[os.path.relpath(full, path)] = file_digest(stream)
    return digests


if __name__ == "__main__":
    kind, target = sys.argv[1], sys.argv[2]
    print(json.dumps(sqlite_state(target) if kind == "sqlite" else tree_digests(target)))
