"""Backup benchmarks (issue: inv backup). Run: .venv/bin/python bench/backup.py

A 1 GB SQLite database against `sqlite3 .backup` and `cp` (the floor), and its restore
against `cp`; Redis with 1M keys
against `redis-cli --rdb`; a backup under a writer committing >= 200 times a second
against the idle case; the quiesce pause of a compose service holding a 1 GB database
(target: <= 2 s; only the pinning of the snapshot is paused, its copy follows); the
off-site push of a 1 GB set against `restic backup` of the same directory (target 1.1x), and
what a second push of the unchanged database adds (target < 5% of the first).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, report, run, timed

from buildtasks import config
from buildtasks.backup import offsite, redis, sets
from buildtasks.platforms import free_port
from buildtasks.shell import Shell

BT = [sys.executable, "-m", "buildtasks"]
WRITER = """
import os, sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
n, start = 0, time.monotonic()
while True:
    db.execute("INSERT INTO small VALUES (randomblob(200))")
    n += 1
    if n % 200 == 0:  # written aside and renamed: the reader never sees a half-written file
        open(sys.argv[2] + ".tmp", "w").write(str(n / (time.monotonic() - start)))
        os.replace(sys.argv[2] + ".tmp", sys.argv[2])
"""


def project(root: Path, backup: str) -> Path:
    (root / "pyproject.toml").write_text(
        f'[tool.buildtasks]\nimage = "x"\n[tool.buildtasks.backup]\nkeep_last = 1\n{backup}\n'
    )
    return root


def sqlite_bench(root: Path) -> None:
    db_path = root / "big.db"
    fill_sqlite(db_path)
    sqlite3.connect(db_path).execute("CREATE TABLE small (x BLOB)").connection.commit()
    print(f"sqlite database: {db_path.stat().st_size / 1e9:.2f} GB", flush=True)
    proj = project(root, 'sqlite = ["big.db"]')
    ours = timed([*BT, "backup"], proj, runs=3)
    cli = timed(["sqlite3", str(db_path), f".backup {root / 'cli.db'}"], root, runs=3)
    floor = timed(["cp", str(db_path), str(root / "cp.db")], root, runs=3)
    report("sqlite 1 GB: inv backup vs sqlite3 .backup", ours, cli, 1.0)
    report("sqlite 1 GB: inv backup vs cp of the idle file (floor)", ours, floor)
    # Restore verifies the set, takes a safety backup of the live database, stages, swaps.
    restored = timed([*BT, "restore", "--yes"], proj, runs=3)
    report("sqlite 1 GB: inv restore vs cp of the file it restores", restored, floor, 1.5)
    rate_file = root / "rate"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db_path), str(rate_file)])
    try:
        while not rate_file.exists():
            time.sleep(0.1)
        busy = timed([*BT, "backup"], proj, runs=3)
        rate = float(rate_file.read_text())
    finally:
        writer.kill()
        writer.wait()
    print(f"writer committed {rate:.0f} commits/s during the busy backups", flush=True)
    report("sqlite 1 GB: backup under the writer vs idle", busy, ours)


def redis_bench(root: Path) -> None:
    data = root / "redis"
    data.mkdir()
    with redis.scratch_server(Shell(echo=False), data) as cli:
        fill = "for i = 1, 1000000 do redis.call('SET', 'key:' .. i, 'value:' .. i) end"
        subprocess.run([*cli, "EVAL", fill, "0"], check=True, capture_output=True)
        url = f"redis://127.0.0.1:{cli[-1]}/0"
        proj = project(root / "redisproj", f'redis = {{ url = "{url}" }}')
        ours = timed([*BT, "backup"], proj, runs=3)
        raw = timed([*cli, "--rdb", str(root / "raw.rdb")], root, runs=3)
        report("redis 1M keys: inv backup vs redis-cli --rdb", ours, raw, 1.3)


# A compose service holding a 1 GB SQLite database in a volume, paused during the backup.
QUIESCE_COMPOSE = """services:
  app:
    image: ${IMAGE}
    command: ["sleep", "infinity"]
    volumes: [data:/data]
volumes:
  data:
"""
FILL = """import sqlite3
db = sqlite3.connect("/data/big.db")
db.execute("PRAGMA journal_mode=WAL")
db.execute("CREATE TABLE big (x BLOB)")
for _ in range(10):
    db.executemany("INSERT INTO big VALUES (randomblob(4000))", [()] * 25_000)
    db.commit()
"""


def quiesce_bench(root: Path) -> None:
    """inv backup with quiesce = ["app"]: how long app stays paused for a 1 GB database."""
    proj = root / "quiesceproj"
    proj.mkdir()
    name = f"bench-quiesce-{uuid.uuid4().hex[:6]}"
    (proj / "compose.yml").write_text(QUIESCE_COMPOSE)
    env = {"IMAGE": f"{config.load(REPO).mirror or 'docker.io/library'}/python:3.11-slim"}
    (proj / "pyproject.toml").write_text(
        '[tool.buildtasks]\nimage = "x"\n[tool.buildtasks.stack]\ncompose = ["compose.yml"]\n'
        f'project = "{name}"\n[tool.buildtasks.backup]\nkeep_last = 1\n'
        'sqlite = ["app:/data/big.db"]\nquiesce = ["app"]\n'
    )
    compose = ["docker", "compose", "-p", name, "-f", str(proj / "compose.yml")]
    run([*compose, "up", "-d"], proj, env)
    try:
        run([*compose, "exec", "-T", "app", "python3", "-c", FILL], proj, env)
        runs = []
        for _ in range(3):
            started = time.monotonic()
            result = subprocess.run(
                [*BT, "backup", "--json"], cwd=proj, capture_output=True, text=True, check=True
            )
            whole = time.monotonic() - started
            runs.append((json.loads(result.stdout)["quiesce"]["paused_seconds"], whole))
        pause, whole = sorted(runs)[1]
        verdict = "meets" if pause <= 2 else "MISSES"
        print(
            f"{'quiesce: pause of a service with a 1 GB SQLite database':<58} "
            f"ours {pause:7.2f}s  target <= 2 s  {verdict}  (backup {whole:.2f}s)",
            flush=True,
        )
    finally:
        run([*compose, "down", "--volumes"], proj, env)


def fill_sqlite(db_path: Path) -> None:
    """A 1 GB database of random blobs."""
    db = sqlite3.connect(db_path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE big (x BLOB)")
    for _ in range(10):
        db.executemany("INSERT INTO big VALUES (randomblob(4000))", [()] * 25_000)
        db.commit()
    db.close()


@contextlib.contextmanager
def rest_server(data: Path):
    """restic's rest-server on a free loopback port, for the off-site benchmark."""
    port = free_port()
    server = subprocess.Popen(
        ["restic-rest-server", "--listen", f"127.0.0.1:{port}", "--path", str(data), "--no-auth"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(1)
        yield f"rest:http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait()


def with_repository(settings, repository: str):
    backup = settings.backup
    offsite_settings = msgspec.structs.replace(backup.offsite, repository=repository)
    return msgspec.structs.replace(
        settings, backup=msgspec.structs.replace(backup, offsite=offsite_settings)
    )


def offsite_bench(root: Path) -> None:
    """The push `inv backup --offsite` adds to a backup, against `restic backup` of the same
    set directory run directly, each into a fresh repository on a loopback rest-server; then
    a second push of an unchanged database (a new set with the same data)."""
    proj = root / "offsiteproj"
    proj.mkdir()
    fill_sqlite(proj / "big.db")
    password = "bench-password"
    os.environ["BENCH_RESTIC_PASSWORD"] = password
    with rest_server(root / "rest") as url:
        (proj / "pyproject.toml").write_text(
            '[tool.buildtasks]\nimage = "x"\n[tool.buildtasks.backup]\nkeep_last = 2\n'
            'sqlite = ["big.db"]\n[tool.buildtasks.backup.offsite]\n'
            f'repository = "{url}/ours"\npassword_env = "BENCH_RESTIC_PASSWORD"\n'
        )
        run([*BT, "backup"], proj)
        settings = config.load(proj)
        made = sets.listing(settings)[0][0]
        directory = sets.backup_dir(settings) / made.id
        print(f"set: {sum(a.size for a in made.artifacts) / 1e9:.2f} GB", flush=True)
        env = {"RESTIC_PASSWORD": password}
        ours, anchor, sent = [], [], {}
        for attempt in range(2):  # alternating, each into a fresh repository
            repository = f"{url}/direct{attempt}"
            run(["restic", "init", "--repo", repository], root, env)
            anchor.append(
                timed(
                    ["restic", "backup", "--repo", repository, "--quiet", "."], directory, env=env
                )
            )
            if attempt:
                run(["restic", "init", "--repo", f"{url}/ours{attempt}"], root, env)
            repo = offsite.Repository(with_repository(settings, f"{url}/ours{attempt or ''}"),
                                      Shell(echo=False))  # fmt: skip
            repo.open(create=True)
            started = time.perf_counter()
            sent = repo.push(directory, made)
            ours.append(time.perf_counter() - started)
        report("off-site push of a 1 GB set vs restic backup", statistics.median(ours),
               statistics.median(anchor), 1.1)  # fmt: skip
        run([*BT, "backup"], proj)  # the same database, a new set
        second_set = sets.listing(settings)[0][0]
        again = repo.push(sets.backup_dir(settings) / second_set.id, second_set)
        share = again["bytes_added"] / sent["bytes_added"]
        verdict = "meets" if share < 0.05 else "MISSES"
        print(
            f"{'off-site: second push of the unchanged 1 GB database':<58} "
            f"{again['bytes_added'] / 1e6:.1f} MB of {sent['bytes_added'] / 1e6:.1f} MB "
            f"({share:.1%})  target < 5%  {verdict}",
            flush=True,
        )


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="buildtasks-bench-backup-"))
    (root / "redisproj").mkdir()
    try:
        only = sys.argv[1:] or ["sqlite", "redis", "quiesce", "offsite"]
        benches = {
            "sqlite": sqlite_bench,
            "redis": redis_bench,
            "quiesce": quiesce_bench,
            "offsite": offsite_bench,
        }
        for name in only:
            benches[name](root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
