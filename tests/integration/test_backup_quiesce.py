"""Quiesce on the example's prod stack: a set taken while jobs are written to SQLite,
Redis and files holds the same number of each, a SIGTERM to the backup's process group
during the pause leaves every service running, and the pause lasts only while the stores
are pinned: the database copy follows unpaused, from the snapshot pinned in the pause."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
import uuid

import pytest

from buildtasks.backup import redis
from buildtasks.platforms import free_port
from buildtasks.shell import Shell
from tests.conftest import REPO, remove_images, run_cli

pytestmark = pytest.mark.integration

# Runs inside the api container (so `docker pause api` freezes it too): per job one row
# in the API's jobs table, one Redis entry, one result file, as the API and worker do.
WRITER = """
import os, pathlib, sqlite3, time, uuid
import redis
db = sqlite3.connect("/app/data/jobs.db", timeout=30, isolation_level=None)
queue = redis.Redis.from_url(os.environ["REDIS_URL"])
jobs = pathlib.Path("/app/data/jobs")
end = time.time() + float(os.environ["SECONDS_TO_RUN"])
while time.time() < end and not os.path.exists("/tmp/stop-writer"):
    job, now = uuid.uuid4().hex, time.time()
    db.execute("INSERT INTO jobs VALUES (?, 'done', '{}', '{}', ?, ?)", (job, now, now))
    queue.set("job:" + job, "done")
    (jobs / job).mkdir(parents=True)
    (jobs / job / "result.json").write_text("{}")
    time.sleep(float(os.environ.get("JOB_INTERVAL", "0")))
"""


@pytest.fixture(scope="module")
def stack(engine):
    prefix = f"127.0.0.1:5000/test-{uuid.uuid4().hex[:8]}"
    env = {
        "REGISTRY": prefix,
        "STACK_PROJECT": f"jobsvc-quiesce-{uuid.uuid4().hex[:6]}",
        "API_PORT": str(free_port()),
        "GRPC_PORT": str(free_port()),
    }
    deployed = run_cli(["invoke", "deploy"], env=env)
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    yield env
    run_cli(["invoke", "down", "--volumes"], env=env)
    remove_images(engine, prefix)


def compose(env: dict, *args: str, **options) -> subprocess.Popen:
    argv = ["docker", "compose", "-p", env["STACK_PROJECT"], "-f", str(REPO / "compose/prod.yml")]
    return subprocess.Popen([*argv, *args], stdout=subprocess.PIPE, text=True, **options)


def states(engine, env: dict) -> dict[str, str]:
    found = engine.containers.list(
        all=True, filters={"label": f"com.docker.compose.project={env['STACK_PROJECT']}"}
    )
    return {c.labels["com.docker.compose.service"]: c.status for c in found}


def counts(directory, body: dict) -> dict[str, int]:
    """Jobs in each store of a set (its manifest as JSON): rows, Redis entries, files."""
    by_kind = {a["kind"]: directory / a["file"] for a in body["artifacts"]}
    db = sqlite3.connect(by_kind["sqlite"])
    rows = db.execute("SELECT count(*) FROM jobs").fetchone()[0]
    db.close()
    with tarfile.open(by_kind["files"]) as tar:
        files = sum(m.name.endswith("/result.json") for m in tar.getmembers())
    keys, _ = redis.rdb_keys(Shell(echo=False), by_kind["redis"])
    return {"sqlite": rows, "redis": keys, "files": files}


def test_a_quiesced_set_holds_as_many_rows_entries_and_files(stack, tmp_path):
    env = {**stack, "BUILDTASKS_BACKUP_DIR": str(tmp_path)}
    # Killing `compose exec` would not stop the process in the container: it ends itself.
    writer = compose(env, "exec", "-T", "-e", "SECONDS_TO_RUN=25", "api", "python", "-c", WRITER)
    try:
        time.sleep(3)  # the writer is in full swing
        taken = {}
        for flag in ("--quiesce", "--no-quiesce"):
            result = run_cli(["invoke", "backup", flag, "--json"], env=env)
            assert result.returncode == 0, result.stderr[-2000:]
            taken[flag] = json.loads(result.stdout)
        assert writer.poll() is None, "the writer ran during both backups"
    finally:
        writer.wait()
    quiesced = counts(tmp_path / taken["--quiesce"]["id"], taken["--quiesce"])
    loose = counts(tmp_path / taken["--no-quiesce"]["id"], taken["--no-quiesce"])
    assert quiesced["sqlite"] > 10, quiesced
    # The writer is frozen between two of its three writes at worst: one job in flight.
    assert max(quiesced.values()) - min(quiesced.values()) <= 1, quiesced
    assert max(loose.values()) - min(loose.values()) > 1, loose  # the test can tell
    print("quiesced:", quiesced, "not quiesced:", loose)
    record = taken["--quiesce"]["quiesce"]
    assert record["services"] == ["api", "worker"] and 0 < record["paused_seconds"] < 30
    assert taken["--no-quiesce"]["quiesce"] == {}


def test_sigterm_to_the_process_group_during_the_pause_unpauses(stack, engine, tmp_path):
    env = {**stack, "BUILDTASKS_BACKUP_DIR": str(tmp_path)}
    # ~400 MB of job files: the paused capture lasts long enough to be signalled.
    fill = "head -c 400000000 /dev/urandom > /app/data/jobs/big.bin"
    assert compose(env, "exec", "-T", "api", "sh", "-c", fill).wait() == 0
    try:
        backup = subprocess.Popen(
            [sys.executable, "-m", "invoke", "backup"], cwd=REPO, env={**os.environ, **env},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while states(engine, env).get("api") != "paused":
            assert backup.poll() is None, backup.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "never paused"
            time.sleep(0.02)
        os.killpg(backup.pid, signal.SIGTERM)
        _, err = backup.communicate(timeout=120)
        assert set(states(engine, env).values()) == {"running"}, states(engine, env)
        assert backup.returncode == 128 + signal.SIGTERM, err[-2000:]
        assert err.strip().splitlines()[-1].startswith("error: interrupted by SIGTERM")
        assert "Traceback" not in err
        assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")], "no set made"
    finally:
        compose(env, "exec", "-T", "api", "rm", "-f", "/app/data/jobs/big.bin").wait()


# ~200 MB more in the API's database: its copy takes seconds, the old pause as long.
BALLAST = """
import sqlite3
db = sqlite3.connect("/app/data/jobs.db", timeout=30)
db.execute("CREATE TABLE IF NOT EXISTS ballast (x BLOB)")
for _ in range(8):
    db.executemany("INSERT INTO ballast VALUES (randomblob(5000))", [()] * 5000)
    db.commit()
"""
JOBS = """
import sqlite3
for row in sqlite3.connect("/app/data/jobs.db").execute("SELECT id, created FROM jobs"):
    print(*row)
"""


def jobs(rows) -> dict[str, float]:
    return {job: float(created) for job, created in rows}


@pytest.fixture(scope="module")
def watched(stack, engine, tmp_path_factory):
    """A quiesced backup of a 200 MB database taken while the writer runs, the api
    container watched from here: the set's manifest and directory, the jobs in the
    copy and in the live database afterwards, and when (host clock) api was seen paused,
    running again, and the backup ended."""
    directory = tmp_path_factory.mktemp("watched")
    env = {**stack, "BUILDTASKS_BACKUP_DIR": str(directory)}
    assert compose(env, "exec", "-T", "api", "python", "-c", BALLAST).wait() == 0
    # The job files are read during the pause (~1 s per 30,000 through the engine): the
    # earlier tests' are cleared and the writer slowed so that the database is measured.
    clear = ["find", "/app/data/jobs", "-mindepth", "1", "-delete"]
    assert compose(env, "exec", "-T", "api", *clear).wait() == 0
    slowly = ["-e", "SECONDS_TO_RUN=120", "-e", "JOB_INTERVAL=0.005"]
    writer = compose(env, "exec", "-T", *slowly, "api", "python", "-c", WRITER)
    try:
        time.sleep(3)  # the writer is in full swing
        backup = subprocess.Popen(
            [sys.executable, "-m", "invoke", "backup", "--quiesce", "--json"], cwd=REPO,
            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        seen: dict[str, float] = {}
        while backup.poll() is None:
            state = states(engine, env).get("api")
            if state == "paused" or "paused" in seen:
                seen.setdefault(state, time.time())
            time.sleep(0.01)
        ended = time.time()
        out, err = backup.communicate()
        assert backup.returncode == 0, err[-2000:]
        time.sleep(1)  # rows after the backup too: the writer outlived it
        assert writer.poll() is None, "the writer ran during the whole backup"
    finally:
        compose(env, "exec", "-T", "api", "touch", "/tmp/stop-writer").wait()
        writer.wait()
        compose(env, "exec", "-T", "api", "rm", "-f", "/tmp/stop-writer").wait()
    taken = json.loads(out)
    copy = sqlite3.connect(directory / taken["id"] / next(
        a["file"] for a in taken["artifacts"] if a["kind"] == "sqlite"
    ))  # fmt: skip
    live = compose(env, "exec", "-T", "api", "python", "-c", JOBS).communicate()[0]
    return {
        "set": taken,
        "copy": jobs(copy.execute("SELECT id, created FROM jobs")),
        "live": jobs(line.split() for line in live.splitlines()),
        "paused": seen["paused"],
        "running": seen["running"],
        "ended": ended,
    }


def test_the_copy_holds_the_snapshot_pinned_during_the_pause(watched):
    copy, live = watched["copy"], watched["live"]
    before = {job for job, created in live.items() if created < watched["paused"] - 1}
    after = {job for job, created in live.items() if created > watched["running"]}
    assert before and after, "the writer ran before the pause and after it"
    assert before <= copy.keys(), "a job committed before the pause is missing"
    late = len(after & copy.keys())
    assert not late, f"{late} jobs committed after the unpause are in the copy"
    assert copy.keys() <= live.keys()
    # The copy ran while the writer did: jobs were committed between the unpause and the
    # end of the backup, none of them is in the copy.
    during = {j for j, created in live.items() if watched["running"] < created < watched["ended"]}
    assert len(during) > 10, len(during)
    print(f"{len(copy)} jobs in the copy, {len(during)} committed while it was taken")


def test_the_pause_is_short_and_the_copy_follows_it(watched):
    paused = watched["set"]["quiesce"]["paused_seconds"]
    after = watched["ended"] - watched["running"]
    print(f"paused {paused:.2f} s; the backup went on {after:.2f} s after the unpause")
    assert paused < 2, paused
    assert paused * 3 < after, (paused, after)
