"""Quiesce on the example's prod stack: a set taken while jobs are written to SQLite,
Redis and files holds the same number of each, and a SIGTERM to the backup's process
group during the paused capture leaves every service running."""

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
while time.time() < end:
    job, now = uuid.uuid4().hex, time.time()
    db.execute("INSERT INTO jobs VALUES (?, 'done', '{}', '{}', ?, ?)", (job, now, now))
    queue.set("job:" + job, "done")
    (jobs / job).mkdir(parents=True)
    (jobs / job / "result.json").write_text("{}")
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
