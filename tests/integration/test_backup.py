"""`inv backup` / `inv restore` with real sqlite3, redis-server and the engine."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from buildtasks import config
from buildtasks.backup import redis, sets
from buildtasks.platforms import free_port
from buildtasks.runtime import Runtime
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
            made = sets.create(settings, Runtime(settings), ("sqlite",))
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
    mid_backup = 0  # kills that left a half-built set (the next run's sweep removes it)
    for _ in range(10):
        process = subprocess.Popen(
            [sys.executable, "-m", "buildtasks", "backup"], cwd=project,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(rng.uniform(0.15, 0.9 * duration))
        process.send_signal(signal.SIGKILL)
        process.wait()
        mid_backup += bool(list(sets.backup_dir(settings).glob(".tmp-*")))
        valid, _ = sets.listing(settings)
        assert kept.id in [m.id for m in valid]
        for m in valid:  # a run killed after its rename left a complete set, nothing less
            assert sets.verify(settings, Shell(echo=False), m.id) == []
    assert mid_backup, "no kill landed mid-backup"
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
    from dotenv import dotenv_values

    project = f"jobsvc-backuptest-{uuid.uuid4().hex[:6]}"
    env = {
        "REGISTRY": registry_prefix,
        "STACK_PROJECT": project,
        "API_PORT": str(free_port()),
        "GRPC_PORT": str(free_port()),
    }
    redis_image = os.environ.get("REDIS_IMAGE") or dotenv_values(REPO / ".env").get("REDIS_IMAGE")
    if redis_image:  # compose reads .env next to the compose files, not the project's
        env["REDIS_IMAGE"] = redis_image
    try:
        deployed = run_cli(["invoke", "deploy"], env=env)
        assert deployed.returncode == 0, deployed.stderr[-3000:]
        yield env
    finally:
        run_cli(["invoke", "down", "--volumes"], env=env)


def stack_compose_argv(env: dict, *args: str) -> list[str]:
    return ["docker", "compose", "-p", env["STACK_PROJECT"], "-f", str(REPO / "compose/prod.yml"),
            *args]  # fmt: skip


def stack_exec(env: dict, service: str, *argv: str) -> str:
    return subprocess.run(
        stack_compose_argv(env, "exec", "-T", service, *argv),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@pytest.mark.podman
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

    # Disaster recovery (item 10): volumes gone, nothing running, restore the newest set.
    assert run_cli(["invoke", "backup"], env=env).returncode == 0
    before = example_state(env)
    subprocess.run(stack_compose_argv(env, "down", "--volumes"), check=True, capture_output=True)
    restore = run_cli(["invoke", "restore", "--yes"], env=env)
    assert restore.returncode == 0, restore.stdout[-2000:] + restore.stderr[-2000:]
    assert example_state(env) == before
    health = json.loads(urllib.request.urlopen(f"{api}/health").read())
    assert health["status"] == "ok" and health["database"]["jobs"] == 3


EXAMPLE_STATE = """
import hashlib, os, sqlite3
db = sqlite3.connect("file:/app/data/jobs.db?mode=ro", uri=True)
tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
print(*sorted(f"{t}={db.execute(f'SELECT count(*) FROM {t}').fetchone()[0]}" for t in tables))
digest = hashlib.sha256()
for top, dirs, files in sorted(os.walk("/app/data/jobs")):
    dirs.sort()
    for name in sorted(files):
        path = os.path.join(top, name)
        digest.update(path.encode() + open(path, "rb").read())
print(digest.hexdigest())
"""


def example_state(env: dict) -> dict:
    rows, files = stack_exec(env, "api", "python", "-c", EXAMPLE_STATE).splitlines()
    return {
        "rows": rows,
        "files": files,
        "dbsize": stack_exec(env, "redis", "redis-cli", "DBSIZE"),
        "sample": stack_exec(env, "redis", "redis-cli", "GET", "key:777"),
        "owner": stack_exec(env, "api", "stat", "-c", "%u:%g", "/app/data/jobs.db"),
    }


# --- issue 10: backups you can trust -------------------------------------------------


def make_db(path: Path, rows: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE IF NOT EXISTS t (x)")
    db.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(rows)])
    db.commit()
    db.close()


def rows(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return db.execute("SELECT count(*) FROM t").fetchone()[0]
    finally:
        db.close()


def tree_digest(path: Path) -> str:
    """Names, kinds and contents of every entry under path."""
    digest = hashlib.sha256()
    for entry in sorted(path.rglob("*")):
        digest.update(entry.relative_to(path).as_posix().encode() + b"\0")
        digest.update(entry.read_bytes() if entry.is_file() else b"<dir>")
    return digest.hexdigest()


def reseal(directory: Path, change) -> None:
    """Alter a set's manifest and recompute its checksum, as anyone who can write it can."""
    body = json.loads((directory / "manifest.json").read_text())
    del body["checksum"]
    change(body)
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    body["checksum"] = hashlib.sha256(canonical).hexdigest()
    (directory / "manifest.json").write_text(json.dumps(body))


def one_line_error(result) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    # Progress (a safety backup's id) may precede it on stderr; the error is the last line
    # and the only one: a message that runs over several lines fails here.
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == lines[-1:] and errors, result.stderr
    return errors[0]


def backup(project: Path, *args: str) -> str:
    """Run `buildtasks backup`; the id of the set it made."""
    result = run_cli(["buildtasks", "backup", "--json", *args], cwd=project)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["id"]


def restore_cli(project: Path, *args: str):
    return run_cli(["buildtasks", "restore", "--yes", *args], cwd=project)


def leftovers(*directories: Path) -> list[str]:
    return [p.name for d in directories for p in d.iterdir() if ".restore-" in p.name]


def test_overlapping_sources_capture_the_database_only_through_the_backup_api(tmp_path):
    """Item 1: files = ["data"] holding sqlite data/jobs.db under a writer."""
    project = host_project(tmp_path)
    (project / "pyproject.toml").write_text(
        '[tool.buildtasks]\nimage = "x"\n[tool.buildtasks.backup]\n'
        'sqlite = ["data/jobs.db"]\nfiles = ["data"]\n'
    )
    db_path = project / "data/jobs.db"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db_path), "wal"])
    try:
        while committed(db_path) < 50:
            time.sleep(0.05)
        before = committed(db_path)
        result = run_cli(["buildtasks", "backup"], cwd=project)
        assert result.returncode == 0, result.stderr
    finally:
        writer.kill()
        writer.wait()
    assert "left out (captured by the sqlite backup API): jobs.db" in result.stdout
    settings = config.load(project)
    (made,) = sets.listing(settings)[0]
    files = next(a for a in made.artifacts if a.kind == "files")
    assert {"jobs.db", "jobs.db-wal", "jobs.db-shm"} & set(files.details["left_out"])
    with tarfile.open(sets.backup_dir(settings) / made.id / files.file) as tar:
        names = tar.getnames()
    assert "jobs/1/result.json" in names and not [n for n in names if "jobs.db" in n]
    restored = run_cli(["buildtasks", "restore", "--id", made.id, "--yes"], cwd=project)
    assert restored.returncode == 0, restored.stderr
    assert assert_whole(db_path) >= before
    assert (project / "data/jobs/1/result.json").read_text() == '{"words": 3}'
    assert leftovers(project / "data") == []


def test_a_resealed_manifest_cannot_steer_restore(tmp_path):
    """Item 2: paths come from the configuration; a manifest entry it does not account
    for refuses the whole restore before anything changes."""
    project = host_project(tmp_path / "project")
    make_db(project / "data/jobs.db", 10)
    outside = tmp_path / "outside"
    (outside / "precious").mkdir(parents=True)
    (outside / "precious/keep.txt").write_text("mine")
    make_db(outside / "victim.db", 3)
    set_id = backup(project)
    make_db(project / "data/jobs.db", 5)  # the live state restore must leave alone
    directory = sets.backup_dir(config.load(project)) / set_id
    original = (directory / "manifest.json").read_text()
    live = (rows(project / "data/jobs.db"), tree_digest(project / "data/jobs"))
    outside_before = tree_digest(tmp_path / "outside")

    def artifact(body, kind):
        return next(a for a in body["artifacts"] if a["kind"] == kind)

    changes = {
        "file outside the set": lambda b: artifact(b, "sqlite").update(file="../../../x.db"),
        "unconfigured source": lambda b: artifact(b, "sqlite").update(source="../victim.db"),
        "files source outside": lambda b: artifact(b, "files").update(
            source=str(outside / "precious")
        ),
        "another configured name": lambda b: artifact(b, "files").update(
            file=artifact(b, "sqlite")["file"]
        ),
        "unknown kind": lambda b: artifact(b, "files").update(kind="evil"),
        "twice": lambda b: b["artifacts"].append(dict(artifact(b, "sqlite"))),
    }
    for name, change in changes.items():
        (directory / "manifest.json").write_text(original)
        reseal(directory, change)
        line = one_line_error(restore_cli(project, "--id", set_id))
        assert "nothing restored" in line, (name, line)
        assert len(sets.listing(config.load(project))[0]) == 1, "no safety backup was taken"
        live_now = (rows(project / "data/jobs.db"), tree_digest(project / "data/jobs"))
        assert live_now == live, name
        assert tree_digest(tmp_path / "outside") == outside_before, name
        assert not list(tmp_path.rglob("x.db")), name
    (directory / "manifest.json").write_text(original)
    reseal(directory, lambda b: artifact(b, "sqlite").update(file="../../../x.db"))
    verify = run_cli(["buildtasks", "backup.verify", "--id", set_id], cwd=project)
    assert verify.returncode == 1 and "not a plain file name" in verify.stderr


@pytest.mark.parametrize("members", ["deep", "file-then-under-it"])
def test_a_hostile_files_tar_refuses_the_restore_before_the_database_is_swapped(tmp_path, members):
    """Item 4: verify says no, restore refuses, the database keeps its rows, no leftovers."""
    from tests.unit.test_backup import HOSTILE, tar_of

    project = host_project(tmp_path)
    make_db(project / "data/jobs.db", 10_848)
    set_id = backup(project)
    db = sqlite3.connect(project / "data/jobs.db")
    db.execute("DELETE FROM t WHERE rowid > 5000")
    db.commit()
    db.close()
    directory = sets.backup_dir(config.load(project)) / set_id
    (tar_path,) = directory.glob("files-*.tar")
    tar_path.write_bytes(tar_of(HOSTILE[members]))
    size, digest = tar_path.stat().st_size, hashlib.sha256(tar_path.read_bytes()).hexdigest()

    def rechecksum(body):
        files = next(a for a in body["artifacts"] if a["kind"] == "files")
        files.update(size=size, sha256=digest)

    reseal(directory, rechecksum)
    verify = run_cli(["buildtasks", "backup.verify", "--id", set_id], cwd=project)
    assert verify.returncode == 1 and "Traceback" not in verify.stderr
    one_line_error(restore_cli(project, "--id", set_id))
    assert rows(project / "data/jobs.db") == 5000
    assert leftovers(project / "data") == []


def test_a_failing_swap_puts_every_live_store_back(tmp_path):
    """Item 4: files are already swapped in when the database swap fails (its -wal is a
    mount point, which cannot be moved): both are put back, one line, no leftovers."""
    project = host_project(tmp_path)
    make_db(project / "data/jobs.db", 100)
    set_id = backup(project)
    make_db(project / "data/jobs.db", 1)
    (project / "data/jobs/2").mkdir()
    (project / "data/jobs/2/result.json").write_text("new")
    wal = project / "data/jobs.db-wal"
    wal.touch()
    live = (tree_digest(project / "data/jobs"), (project / "data/jobs.db").read_bytes())
    subprocess.run(["mount", "--bind", "/dev/null", str(wal)], check=True)
    try:
        line = one_line_error(restore_cli(project, "--id", set_id))
    finally:
        subprocess.run(["umount", str(wal)], check=True)
    assert "the live data is as it was" in line
    assert (tree_digest(project / "data/jobs"), (project / "data/jobs.db").read_bytes()) == live
    assert leftovers(project / "data") == []
    wal.unlink()
    assert restore_cli(project, "--id", set_id).returncode == 0
    assert rows(project / "data/jobs.db") == 100
    assert not (project / "data/jobs/2").exists()


def test_two_backups_at_once_wait_for_each_other(tmp_path):
    """Item 5: concurrent backups with retention on one directory (keep_last = 1: the
    other run's retention would delete a set before its own run verified it)."""
    project = host_project(tmp_path, "keep_last = 1\n")
    make_db(project / "data/jobs.db", 1000)
    for _ in range(15):  # the crash in retention took a few rounds to show
        runs = [
            subprocess.Popen(
                [sys.executable, "-m", "buildtasks", "backup"],
                cwd=project,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        for process in runs:
            out, err = process.communicate(timeout=300)
            assert process.returncode == 0, err
            assert "Traceback" not in err and "verified" in out
    settings = config.load(project)
    valid, invalid = sets.listing(settings)
    assert len(valid) == 1 and invalid == []
    assert all(sets.verify(settings, Shell(echo=False), m.id) == [] for m in valid)


def test_the_backup_directory_is_shared_with_people(tmp_path):
    """Item 6: only the tool's own names with its marker are swept; a kept copy of a set
    does not break the next backups; the directory may not be /, the root or a source."""
    project = host_project(tmp_path, "keep_last = 1\n")
    make_db(project / "data/jobs.db", 10)
    root = project / "backups"
    first = backup(project)
    shutil.copytree(root / first, root / f"keep-{first}")
    users = [root / ".tmp-userdata", root / ".tmp-20260101T000000.000000Z-999999"]
    for path in users:  # the user's, even the one named like ours: no marker inside
        path.mkdir()
        (path / "notes.txt").write_text("mine")
    killed = root / ".del-20260101T000000.000000Z"  # a retention killed mid-delete
    shutil.copytree(root / first, killed)
    for _ in range(3):
        backup(project)
    assert all((p / "notes.txt").read_text() == "mine" for p in users)
    assert not killed.exists()
    assert (root / f"keep-{first}/manifest.json").is_file()
    assert not (root / first).exists(), "retention pruned the original"
    kept = run_cli(["buildtasks", "backup.verify", "--id", f"keep-{first}"], cwd=project)
    assert kept.returncode == 0 and "verified" in kept.stdout, kept.stderr
    listed = run_cli(["buildtasks", "backup.list"], cwd=project)
    assert listed.returncode == 0 and "keep-" not in listed.stdout + listed.stderr
    assert len(listed.stdout.strip().splitlines()) == 1
    for directory in ("/", ".", "data/jobs/backups", str(project / "data/jobs"), str(project)):
        (project / "pyproject.toml").write_text(
            '[tool.buildtasks]\nimage = "x"\n[tool.buildtasks.backup]\n'
            f'sqlite = ["data/jobs.db"]\nfiles = ["data/jobs"]\ndir = "{directory}"\n'
        )
        for command in (["backup"], ["restore", "--yes"]):
            result = run_cli(["buildtasks", *command], cwd=project)
            assert "[tool.buildtasks.backup] dir" in one_line_error(result), directory
            assert result.returncode == 2
    assert not (project / "data/jobs/backups").exists()


def test_failures_end_in_one_line(tmp_path):
    """Item 7: an unknown artifact kind, a full disk, a read-only backup directory."""
    project = host_project(tmp_path / "project")
    make_db(project / "data/jobs.db", 10)
    set_id = backup(project)
    directory = project / "backups" / set_id
    reseal(directory, lambda b: b["artifacts"][0].update(kind="tape"))
    verify = run_cli(["buildtasks", "backup.verify", "--id", set_id], cwd=project)
    assert verify.returncode == 1 and "Traceback" not in verify.stderr
    assert "unknown artifact kind 'tape'" in verify.stderr  # one line per problem
    assert "unknown artifact kind 'tape'" in one_line_error(restore_cli(project, "--id", set_id))
    mount = tmp_path / "small"
    mount.mkdir()
    (project / "pyproject.toml").write_text(
        (project / "pyproject.toml").read_text() + f'dir = "{mount}"\n'
    )
    outcomes = set()
    try:
        for inodes in range(3, 9):  # every step of a set, the manifest too, runs out
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"nr_inodes={inodes}", "tmpfs",
                            str(mount)], check=True)  # fmt: skip
            try:
                result = run_cli(["buildtasks", "backup"], cwd=project)
                if result.returncode != 0:
                    outcomes.add(one_line_error(result).split(": ", 2)[-1])
                else:
                    outcomes.add("ok")
            finally:
                subprocess.run(["umount", str(mount)], check=True)
        assert "No space left on device" in outcomes and "ok" in outcomes, outcomes
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(mount)], check=True)
        try:
            line = one_line_error(run_cli(["buildtasks", "backup"], cwd=project))
            assert "Read-only file system" in line
        finally:
            subprocess.run(["umount", str(mount)], check=True)
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_partial_sets_are_apart_from_full_ones(tmp_path):
    """Item 9: a `backup --only` set is marked partial, never counted by keep_last, never
    the default restore target; `restore --only` restores a subset."""
    project = host_project(tmp_path, "keep_last = 1\n")
    make_db(project / "data/jobs.db", 7)
    full = backup(project)
    make_db(project / "data/jobs.db", 3)
    partial = backup(project, "--only", "sqlite")
    valid, _ = sets.listing(config.load(project))
    assert {m.id: m.partial for m in valid} == {full: False, partial: True}
    listed = run_cli(["buildtasks", "backup.list"], cwd=project).stdout
    assert "sqlite (partial)" in listed
    (project / "data/jobs/1/result.json").write_text("changed")
    make_db(project / "data/jobs.db", 100)
    plan = run_cli(["buildtasks", "restore"], cwd=project)
    assert f"restore backup {full}" in plan.stdout
    restored = restore_cli(project, "--only", "files")
    assert restored.returncode == 0, restored.stderr
    assert (project / "data/jobs/1/result.json").read_text() == '{"words": 3}'
    assert rows(project / "data/jobs.db") == 110, "--only files left the database alone"
    line = one_line_error(restore_cli(project, "--id", partial, "--only", "files"))
    assert "holds no files" in line
    assert restore_cli(project, "--id", partial).returncode == 0
    assert rows(project / "data/jobs.db") == 10


def test_backup_json_is_one_document_with_retention(tmp_path):
    """`inv backup --json`: one JSON document on stdout even when retention deletes."""
    project = host_project(tmp_path, "keep_last = 1\n")
    make_db(project / "data/jobs.db", 1)
    first = backup(project)
    result = run_cli(["buildtasks", "backup", "--json"], cwd=project)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["retention_deleted"] == [first]
    assert f"retention: deleted {first}" in result.stderr


# A project unlike example/: its compose file at its root, other service names, data
# under /srv/state and /var/lib/cache, a data owner of its own; stock mirror images only.
FIXTURE_COMPOSE = """
services:
  cache:
    image: ${REDIS_IMAGE:-127.0.0.1:5000/mirror/redis:7}
    command: ["redis-server", "--dir", "/var/lib/cache", "--dbfilename", "cache.rdb",
              "--bind", "0.0.0.0", "--protected-mode", "no"]
    volumes: [cache-data:/var/lib/cache]
    stop_grace_period: 2s
    healthcheck: {test: ["CMD", "redis-cli", "ping"], interval: 1s, retries: 30}
  web:
    image: ${FIXTURE_PYTHON:-127.0.0.1:5000/mirror/python:3.11-slim}
    command: ["python3", "-c", "import time; time.sleep(10**9)"]
    volumes: [state:/srv/state]
    stop_grace_period: 1s
    healthcheck: {test: ["CMD", "python3", "-c", "pass"], interval: 1s, retries: 30}
    depends_on: {cache: {condition: service_healthy}}
volumes:
  cache-data:
  state:
"""
FIXTURE_CONFIG = """[tool.buildtasks]
image = "127.0.0.1:5000/fixture/none"
[tool.buildtasks.stack]
compose = ["docker-compose.yml"]
project = "${STACK_PROJECT}"
app_service = "web"
data_owner = "1234:1234"
[tool.buildtasks.backup]
dir = "saved"
sqlite = ["web:/srv/state/app.sqlite", "web:/srv/state/blobs/index.sqlite"]
files = ["web:/srv/state/blobs"]  # holds index.sqlite: captured by the backup API only
redis = { service = "cache" }
"""
FIXTURE_DATA = """
import os, sqlite3
db = sqlite3.connect("/srv/state/app.sqlite")
db.execute("PRAGMA journal_mode=WAL")
db.execute("CREATE TABLE items (k INTEGER PRIMARY KEY, v TEXT)")
db.execute("CREATE TABLE tags (k INTEGER, t TEXT)")
db.executemany("INSERT INTO items (v) VALUES (?)", [(str(i) * 50,) for i in range(3000)])
db.executemany("INSERT INTO tags VALUES (?, 't')", [(i,) for i in range(120)])
db.commit()
for n in range(40):
    os.makedirs(f"/srv/state/blobs/{n % 7}", exist_ok=True)
    with open(f"/srv/state/blobs/{n % 7}/{n}.bin", "wb") as f:
        f.write(os.urandom(3000))
index = sqlite3.connect("/srv/state/blobs/index.sqlite")
index.execute("PRAGMA journal_mode=WAL")
index.execute("CREATE TABLE blobs (name TEXT)")
index.executemany("INSERT INTO blobs VALUES (?)", [(str(n),) for n in range(40)])
index.commit()
"""
FIXTURE_STATE = """
import hashlib, os, sqlite3
db = sqlite3.connect("file:/srv/state/app.sqlite?mode=ro", uri=True)
index = sqlite3.connect("file:/srv/state/blobs/index.sqlite?mode=ro", uri=True)
print(*[db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("items", "tags")],
      index.execute("SELECT count(*) FROM blobs").fetchone()[0])
digest = hashlib.sha256()
for top, dirs, files in sorted(os.walk("/srv/state/blobs")):
    dirs.sort()
    for name in sorted(f for f in files if not f.startswith("index.sqlite")):
        path = os.path.join(top, name)
        digest.update(path.encode() + open(path, "rb").read())
print(digest.hexdigest())
st = [os.stat(p) for p in ("/srv/state/app.sqlite", "/srv/state/blobs")]
print(*[f"{s.st_uid}:{s.st_gid}" for s in st])
"""


def compose_exec(project: Path, name: str, service: str, *argv: str) -> str:
    return subprocess.run(
        ["docker", "compose", "-p", name, "-f", str(project / "docker-compose.yml"),
         "exec", "-T", service, *argv],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


def fixture_state(project: Path, name: str) -> dict:
    counts, digest, owners = compose_exec(
        project, name, "web", "python3", "-c", FIXTURE_STATE
    ).splitlines()
    return {
        "rows": counts,
        "files": digest,
        "owners": owners,
        "dbsize": compose_exec(project, name, "cache", "redis-cli", "DBSIZE"),
        "sample": compose_exec(project, name, "cache", "redis-cli", "GET", "key:4321"),
    }


def test_disaster_recovery_on_a_project_laid_out_otherwise(engine, tmp_path):
    """Item 10: `down -v` (volumes gone), then `restore --yes` with nothing running: the
    volumes are created, the data written through helpers of the services' images, the
    stack started and healthy, and every store holds what the set holds."""
    project = tmp_path / "fixture"
    project.mkdir()
    (project / "docker-compose.yml").write_text(FIXTURE_COMPOSE)
    (project / "pyproject.toml").write_text(FIXTURE_CONFIG)
    name = f"fixture-backup-{uuid.uuid4().hex[:6]}"
    env = {"STACK_PROJECT": name}
    compose = ["docker", "compose", "-p", name, "-f", str(project / "docker-compose.yml")]
    try:
        up = run_cli(["buildtasks", "up"], cwd=project, env=env)
        assert up.returncode == 0, up.stderr[-2000:]
        compose_exec(project, name, "web", "python3", "-c", FIXTURE_DATA)
        compose_exec(project, name, "web", "chown", "-R", "1234:1234", "/srv/state")
        compose_exec(project, name, "cache", "redis-cli", "EVAL", POPULATE, "0", "5000")
        before = fixture_state(project, name)
        assert before["dbsize"] == "5000" and before["owners"] == "1234:1234 1234:1234"
        made = run_cli(["buildtasks", "backup"], cwd=project, env=env)
        assert made.returncode == 0, made.stderr[-2000:]
        assert "left out (captured by the sqlite backup API): index.sqlite" in made.stdout
        subprocess.run([*compose, "down", "--volumes"], check=True, capture_output=True)
        restored = run_cli(["buildtasks", "restore", "--yes"], cwd=project, env=env)
        assert restored.returncode == 0, restored.stdout[-2000:] + restored.stderr[-2000:]
        assert "no container" not in restored.stderr
        assert fixture_state(project, name) == before
        states = subprocess.run(
            [*compose, "ps", "--format", "{{.Service}} {{.Health}}"],
            capture_output=True, text=True, check=True,
        ).stdout.split("\n")  # fmt: skip
        assert sorted(s for s in states if s) == ["cache healthy", "web healthy"]

        # Redis goes last; when it fails, the services' files already swapped go back.
        compose_exec(project, name, "web", "sh", "-c", "rm -rf /srv/state/blobs/0")
        compose_exec(project, name, "web", "python3", "-c", FIXTURE_MORE)
        changed = fixture_state(project, name)
        compose_exec(project, name, "cache", "mkdir", "/var/lib/cache/cache.rdb.restore-tmp")
        failed = run_cli(["buildtasks", "restore", "--yes"], cwd=project, env=env)
        assert failed.returncode == 1 and "Traceback" not in failed.stderr
        assert failed.stderr.strip().splitlines()[-1].startswith("error: restore helper failed")
        assert fixture_state(project, name) == changed
        listing = compose_exec(project, name, "web", "ls", "-a", "/srv/state", "/srv/state/blobs")
        assert ".restore-" not in listing
    finally:
        subprocess.run([*compose, "down", "--volumes"], capture_output=True)


FIXTURE_MORE = """
import sqlite3
db = sqlite3.connect("/srv/state/app.sqlite")
db.execute("INSERT INTO tags VALUES (1, 'later')")
db.commit()
"""


def test_sigterm_during_restore_leaves_old_or_new_never_a_mix(tmp_path):
    """A restore stopped by SIGTERM at random points: the live database and files are
    wholly the state before or wholly the set's, and nothing of the restore is left."""
    project = host_project(tmp_path / "project", "keep_last = 100\n")
    make_db(project / "data/jobs.db", 1)
    db = sqlite3.connect(project / "data/jobs.db")
    db.executemany("INSERT INTO t VALUES (randomblob(100000))", [()] * 300)  # ~30 MB
    db.commit()
    db.close()
    for n in range(300):
        (project / f"data/jobs/{n}.bin").write_bytes(os.urandom(30_000))
    set_id = backup(project)
    new = state(project)
    make_db(project / "data/jobs.db", 5)
    shutil.rmtree(project / "data/jobs/1")
    old = state(project)
    saved = tmp_path / "old"
    shutil.copytree(project / "data", saved)
    started = time.monotonic()
    assert restore_cli(project, "--id", set_id).returncode == 0
    duration = time.monotonic() - started
    rng = random.Random(11)
    outcomes = []
    for _ in range(8):
        shutil.rmtree(project / "data")
        shutil.copytree(saved, project / "data")
        process = subprocess.Popen(
            [sys.executable, "-m", "buildtasks", "restore", "--yes", "--id", set_id],
            cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(rng.uniform(0.1, duration))
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
        assert "Traceback" not in err
        now = state(project)
        assert now in (old, new)
        outcomes.append(now == new)
        assert leftovers(project / "data") == []
    assert False in outcomes, "no SIGTERM landed before the swap was done"


def state(project: Path) -> tuple:
    return rows(project / "data/jobs.db"), tree_digest(project / "data/jobs")


@pytest.mark.parametrize("damage", ["pages", "header"])
def test_a_damaged_live_database_is_restored_and_kept_in_the_safety_set(tmp_path, damage):
    """A malformed database is the usual reason to restore: its safety backup keeps it as
    it is (marked partial, never the default target) instead of refusing the restore."""
    project = host_project(tmp_path)
    make_db(project / "data/jobs.db", 1)
    db = sqlite3.connect(project / "data/jobs.db")
    db.executemany("INSERT INTO t VALUES (randomblob(3000))", [()] * 400)
    db.commit()
    db.close()
    set_id = backup(project)
    live = project / "data/jobs.db"
    data = bytearray(live.read_bytes())
    start = 0 if damage == "header" else len(data) // 2
    data[start : start + 8192] = os.urandom(8192)
    live.write_bytes(bytes(data))
    restored = restore_cli(project)
    assert restored.returncode == 0, restored.stderr
    assert rows(live) == 401
    safety = sets.find(config.load(project), restored.stdout.split("backup ")[-1].strip())
    assert safety.partial and safety.artifacts[0].integrity != "ok"
    kept = sets.backup_dir(config.load(project)) / safety.id / safety.artifacts[0].file
    assert kept.read_bytes() == bytes(data), "the damaged file is kept as it was"
    assert sets.find(config.load(project)).id == set_id, "the default target stays the good set"


SLOW = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000000) "


def test_concurrent_migrations_apply_each_file_exactly_once(tmp_path):
    project = host_project(tmp_path, '[tool.buildtasks.db]\nsqlite = "data/jobs.db"\n')
    (project / "migrations").mkdir()
    for number in ("0001", "0002"):  # each logs itself once per run and takes a while
        (project / f"migrations/{number}_log.sql").write_text(
            "CREATE TABLE IF NOT EXISTS log (name TEXT);\n"
            f"INSERT INTO log VALUES ('{number}');\n{SLOW}SELECT count(*) FROM c;\n"
        )
    sqlite3.connect(project / "data/jobs.db").close()  # a database: each run backs it up first
    command = [sys.executable, "-m", "buildtasks", "db.migrate", "--json"]
    runs = [
        subprocess.Popen(command, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        for _ in range(2)
    ]  # fmt: skip
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    applied = sorted(name for out, _ in outputs for name in json.loads(out)["applied"])
    assert applied == ["0001_log.sql", "0002_log.sql"]
    db = sqlite3.connect(project / "data/jobs.db")
    assert db.execute("SELECT name FROM log").fetchall() == [("0001",), ("0002",)]
    assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    db.close()
