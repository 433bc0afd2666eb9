"""A consistent SQLite snapshot. Standard library only: inside a container this file's
source runs as ``python3 -c SOURCE SRC DEST``, on the host it is imported.

The backup API in one step (``pages=-1``) copies a single read snapshot: it always finishes
under a busy writer, unlike page-stepping, which restarts whenever the source changes. The
copy is switched out of WAL mode and must pass ``PRAGMA integrity_check``.
"""

import sqlite3
import sys


def integrity(db: sqlite3.Connection) -> str:
    rows = db.execute("PRAGMA integrity_check").fetchall()
    return rows[0][0] if len(rows) == 1 else "; ".join(r[0] for r in rows[:5])


def snapshot(source: str, dest: str) -> str:
    """Snapshot source into dest; returns the integrity_check result ("ok" when sound)."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=60)
    out = sqlite3.connect(dest)
    try:
        src.backup(out, pages=-1)
        out.execute("PRAGMA journal_mode=DELETE")
        return integrity(out)
    finally:
        src.close()
        out.close()


if __name__ == "__main__":
    print(snapshot(sys.argv[1], sys.argv[2]))
