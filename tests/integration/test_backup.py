"""`inv backup` / `inv restore` with real sqlite3, redis-server and the engine."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from buildtasks import config
from buildtasks.backup import redis, sets
from buildtasks.platforms import free_port
from buildtasks.shell import Shell
from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.integration

WRITER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)
db.execute("PRAGMA journal_mode=" + sys.argv[2])
db.execute("CREATE TABLE IF NOT EXISTS rows (k INTEGER, half TEXT, pad BLOB)")
k = 0
while True:
    k += 1
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO rows VALUES (?, 'a', randomblob(2000))", (k,))
    db.execute("INSERT INTO rows VALUES (?, 'b', randomblob(2000))", (k,))
    db.execute("COMMIT")
"""


def host_project(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "data/jobs/1").mkdir(parents=True)
    (tmp_path / "data/jobs/1/result.json").write_text('{"words": 3}')
    (tmp_path / "pyproject.toml").write_text(
        '[tool.buildtasks]\nimage = "x"\n[tool.buildtasks.backup]\n'
        f'sqlite = ["data/jobs.db"]\nfiles = ["data/jobs"]\n{extra}'
    )
    return tmp_path


def committed(db_path: Path) -> int:
    """The writer's last committed k (0 before it created its table)."""
    if not db_path.exists():
        return 0
    db = sqlite3.connect(db_path, timeout=60)
    try:
        return db.execute("SELECT coalesce(max(k), 0) FROM rows").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        db.close()


def assert_whole(db_path: Path) -> int:
    """Every transaction is there with both halves, none missing: no torn state."""
    db = sqlite3.connect(db_path)
    rows = db.execute("SELECT k, group_concat(half, '') FROM rows GROUP BY k ORDER BY k").fetchall()
    db.close()
    assert [k for k, _ in rows] == list(range(1, len(rows) + 1))
    assert all(sorted(halves) == ["a", "b"] for _, halves in rows)
    return len(rows)


@pytest.mark.parametrize("mode", ["wal", "delete"])
def test_backups_under_a_busy_writer_are_consistent(tmp_path, mode):
    project = host_project(tmp_path)
    db_path = project / "data/jobs.db"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db_path), mode])
    try:
        while committed(db_path) < 50:
            time.sleep(0.05)
        settings = config.load(project)
        taken = []
        for _ in range(20):
            before = committed(db_path)
            made = sets.create(settings, Shell(echo=False), ("sqlite",))
            taken.append((made, before))
        assert committed(db_path) > taken[-1][1], "the writer kept committing"
    finally:
        writer.kill()
        writer.wait()
    for made, before in taken:
        assert sets.verify(settings, Shell(echo=False), made.id) == []
        snapshot = sets.backup_dir(settings) / made.id / made.artifacts[0].file
        assert made.artifacts[0].integrity == "ok"
        assert assert_whole(snapshot) >= before
        header = snapshot.read_bytes()[18:20]
        assert header == b"\x01\x01", "the copy is out of WAL mode"
    first, before = taken[0]
    result = run_cli(["buildtasks", "restore", "--id", first.id, "--yes"], cwd=project)
    assert result.returncode == 0, result.stderr
    assert assert_whole(db_path) >= before
    assert not any(p.exists() for p in (db_path.with_name("jobs.db-wal"),))


def test_sigkill_at_random_points_never_leaves_a_set(tmp_path):
    project = host_project(tmp_path, "keep_last = 100\n")  # retention stays out of the way
    db = sqlite3.connect(project / "data/jobs.db")
    db.execute("CREATE TABLE t (x BLOB)")
    db.executemany("INSERT INTO t VALUES (randomblob(100000))", [()] * 300)  # ~30 MB
    db.commit()
    db.close()
    for n in range(200):
        (project / f"data/jobs/{n}.bin").write_bytes(os.urandom(50_000))
    started = time.monotonic()
    first = run_cli(["buildtasks", "backup"], cwd=project)
    duration = time.monotonic() - started
    assert first.returncode == 0, first.stderr
    settings = config.load(project)
    (kept,) = sets.listing(settings)[0]
    kept_files = {p.name: p.read_bytes() for p in (sets.backup_dir(settings) / kept.id).iterdir()}
    rng = random.Random(7)
    for _ in range(10):
        process = subprocess.Popen(
            [sys.executable, "-m", "buildtasks", "backup"], cwd=project,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(rng.uniform(0.15, 0.9 * duration))
        process.send_signal(signal.SIGKILL)
        process.wait()
        valid, _ = sets.listing(settings)
        assert kept.id in [m.id for m in valid]
        for m in valid:  # a run killed after its rename left a complete set, nothing less
            assert sets.verify(settings, Shell(echo=False), m.id) == []
    assert list(sets.backup_dir(settings).glob(".tmp-*")), "no kill landed mid-backup"
    after = {p.name: p.read_bytes() for p in (sets.backup_dir(settings) / kept.id).iterdir()}
    assert after == kept_files
    final = run_cli(["buildtasks", "backup"], cwd=project)
    assert final.returncode == 0, final.stderr
    assert not list(sets.backup_dir(settings).glob(".tmp-*"))


def test_flipped_bytes_fail_verify_and_restore_refuses(tmp_path):
    project = host_project(tmp_path)
    db = sqlite3.connect(project / "data/jobs.db")
    db.execute("CREATE TABLE t (x)")
    db.execute("INSERT INTO t VALUES ('live')")
    db.commit()
    db.close()
    assert run_cli(["buildtasks", "backup"], cwd=project).returncode == 0
    settings = config.load(project)
    (made,) = sets.listing(settings)[0]
    directory = sets.backup_dir(settings) / made.id
    live = hashlib.sha256((project / "data/jobs.db").read_bytes()).hexdigest()
    for name in [a.file for a in made.artifacts] + ["manifest.json"]:
        path = directory / name
        original = path.read_bytes()
        flipped = bytearray(original)
        flipped[len(flipped) // 2] ^= 0x01
        path.write_bytes(bytes(flipped))
        verify = run_cli(["buildtasks", "backup.verify", "--id", made.id], cwd=project)
        assert verify.returncode == 1, name
        restore = run_cli(["buildtasks", "restore", "--id", made.id, "--yes"], cwd=project)
        assert restore.returncode == 1, name
        assert "Traceback" not in restore.stderr
        assert hashlib.sha256((project / "data/jobs.db").read_bytes()).hexdigest() == live
        path.write_bytes(original)
    assert run_cli(["buildtasks", "backup.verify", "--id", made.id], cwd=project).returncode == 0


def test_retention_keeps_the_three_newest(tmp_path):
    project = host_project(tmp_path, "keep_last = 3\n")
    sqlite3.connect(project / "data/jobs.db").execute("CREATE TABLE t (x)").connection.commit()
    ids = []
    for _ in range(5):
        result = run_cli(["buildtasks", "backup"], cwd=project)
        assert result.returncode == 0, result.stderr
        ids.append(result.stdout.split("backup ")[-1].split(":")[0])
    valid, _ = sets.listing(config.load(project))
    assert [m.id for m in valid] == ids[::-1][:3]


# DEBUG POPULATE is disabled by default since Redis 7.
POPULATE = "for i = 1, tonumber(ARGV[1]) do redis.call('SET', 'key:' .. i, i) end"


def test_redis_at_a_url_round_trip(tmp_path):
    with redis.scratch_server(Shell(echo=False), tmp_path) as cli:
        port = cli[-1]
        subprocess.run([*cli, "EVAL", POPULATE, "0", "5000"], check=True, capture_output=True)
        project = tmp_path / "project"
        project.mkdir()
        (project / "pyproject.toml").write_text(
            '[tool.buildtasks]\nimage = "x"\n[tool.buildtasks.backup]\n'
            f'redis = {{ url = "redis://127.0.0.1:{port}/0" }}\n'
        )
        backup = run_cli(["buildtasks", "backup"], cwd=project)
        assert backup.returncode == 0, backup.stderr
        subprocess.run([*cli, "FLUSHALL"], check=True, capture_output=True)
        restore = run_cli(["buildtasks", "restore", "--yes"], cwd=project)
        assert restore.returncode == 0, restore.stderr
        size = subprocess.run([*cli, "DBSIZE"], capture_output=True, text=True).stdout.strip()
        assert size == "5000"


@pytest.fixture
def example_stack(engine, registry_prefix):
    """The example's prod stack under a unique project name and free ports."""
    project = f"jobsvc-backuptest-{uuid.uuid4().hex[:6]}"
    env = {
        "REGISTRY": registry_prefix,
        "STACK_PROJECT": project,
        "API_PORT": str(free_port()),
        "GRPC_PORT": str(free_port()),
    }
    deployed = run_cli(["invoke", "deploy"], env=env)
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    yield env
    run_cli(["invoke", "down", "--volumes"], env=env)


def stack_exec(env: dict, service: str, *argv: str) -> str:
    compose = [
        "docker",
        "compose",
        "-p",
        env["STACK_PROJECT"],
        "-f",
        str(REPO / "compose/prod.yml"),
    ]
    return subprocess.run(
        [*compose, "exec", "-T", service, *argv], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_restore_into_the_running_example_stack(example_stack, tmp_path):
    import json
    import urllib.request

    env = {**example_stack, "BUILDTASKS_BACKUP_DIR": str(tmp_path)}
    api = f"http://127.0.0.1:{env['API_PORT']}"
    ids = []
    for text in ("one", "two words", "three more words"):
        request = urllib.request.Request(f"{api}/jobs", data=json.dumps({"text": text}).encode())
        ids.append(json.loads(urllib.request.urlopen(request).read())["id"])
    stack_exec(env, "redis", "redis-cli", "EVAL", POPULATE, "0", "1000")
    time.sleep(2)  # the worker finishes the jobs
    backup = run_cli(["invoke", "backup"], env=env)
    assert backup.returncode == 0, backup.stderr[-2000:]
    stack_exec(env, "redis", "redis-cli", "FLUSHALL")
    stack_exec(env, "api", "rm", "-rf", "/app/data/jobs")
    stack_exec(env, "api", "python", "-c",
               "import sqlite3; c = sqlite3.connect('/app/data/jobs.db'); "
               "c.execute('DELETE FROM jobs'); c.commit()")  # fmt: skip
    restore = run_cli(["invoke", "restore", "--yes"], env=env)
    assert restore.returncode == 0, restore.stdout[-2000:] + restore.stderr[-2000:]
    health = json.loads(urllib.request.urlopen(f"{api}/health").read())
    assert health["status"] == "ok" and health["database"]["jobs"] == 3
    for job_id in ids:
        job = json.loads(urllib.request.urlopen(f"{api}/jobs/{job_id}").read())
        assert job["status"] == "done"
        assert stack_exec(env, "api", "cat", f"/app/data/jobs/{job_id}/result.json")
    assert stack_exec(env, "redis", "redis-cli", "DBSIZE") == "1000"
    owner = stack_exec(env, "api", "stat", "-c", "%u:%g", "/app/data/jobs.db", "/app/data/jobs")
    assert owner.split() == ["1000:1000", "1000:1000"]
