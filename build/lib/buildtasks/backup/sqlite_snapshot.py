"""A consistent SQLite snapshot. Standard library only: inside a container this file's
source runs as ``python3 -c SOURCE SRC DEST [GO]`` (with GO it prints READY and waits
until that file exists; then it prints PINNED and the integrity result), on the host it
is imported.

The snapshot is pinned first: a read transaction (BEGIN and a read) on the source. In WAL
mode that transaction's view stays fixed while writers go on committing, so the copy may
follow after the writers run again. Under a rollback journal the read lock would block
every commit instead, so there the copy is made before the snapshot counts as pinned.

The backup API in one step (``pages=-1``) on the pinned connection copies exactly that
view (unlike page-stepping, which restarts whenever the source changes). The copy is
switched out of WAL mode and must pass ``PRAGMA integrity_check``.
"""

import os
import sqlite3
import sys
import time

READY = "ready"  # the line saying the helper waits for GO
PINNED = "pinned"  # the line saying the copy no longer needs the writers paused
WAIT = 600  # seconds a helper waits for GO before it gives up


def integrity(db: sqlite3.Connection) -> str:
    rows = db.execute("PRAGMA integrity_check").fetchall()
    return rows[0][0] if len(rows) == 1 else "; ".join(r[0] for r in rows[:5])


def pin(source: str) -> tuple[sqlite3.Connection, bool]:
    """A read transaction on source, and whether it is in WAL mode (its view then holds
    while writers commit). The caller closes the connection."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=60, isolation_level=None)
    try:
        src.execute("BEGIN")
        src.execute("SELECT count(*) FROM sqlite_master").fetchone()  # takes the snapshot
        return src, src.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    except BaseException:
        src.close()
        raise


def copy(src: sqlite3.Connection, dest: str) -> str:
    """Copy the view of src's transaction into dest; returns the integrity_check result."""
    out = sqlite3.connect(dest)
    try:
        src.backup(out, pages=-1)
        out.execute("PRAGMA journal_mode=DELETE")
        return integrity(out)
    finally:
        out.close()


def snapshot(source: str, dest: str, pinned=lambda: None) -> str:
    """Snapshot source into dest, calling pinned() once the writers may go on; returns the
    integrity_check result ("ok" when sound)."""
    src, wal = pin(source)
    try:
        if wal:
            pinned()
        result = copy(src, dest)
    finally:
        src.close()
    if not wal:  # the read lock is gone only now
        pinned()
    return result


def _await_go(path: str) -> None:
    print(READY, flush=True)
    deadline = time.monotonic() + WAIT
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            sys.exit(f"not told to start within {WAIT}s")
        time.sleep(0.005)


if __name__ == "__main__":
    if len(sys.argv) > 3:
        _await_go(sys.argv[3])
    print(snapshot(sys.argv[1], sys.argv[2], lambda: print(PINNED, flush=True)))
