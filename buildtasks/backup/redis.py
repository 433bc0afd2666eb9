"""Redis snapshots: BGSAVE in a compose service copied out through the engine, or
`redis-cli --rdb` from a URL; both checked with redis-check-rdb."""

from __future__ import annotations

import contextlib
import shlex
import shutil
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

from buildtasks.errors import BuildtasksError
from buildtasks.platforms import free_port
from buildtasks.shell import Shell


class RedisBackupError(BuildtasksError):
    """Redis did not produce a sound snapshot."""


def parse_info(text: str) -> dict[str, str]:
    return dict(
        line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#")
    )


def check(sh: Shell, rdb: Path) -> str:
    if not shutil.which("redis-check-rdb"):
        return "redis-check-rdb not installed (scripts/install-docker installs it)"
    result = sh.run(["redis-check-rdb", str(rdb)], query=True, check=False)
    return "ok" if result.returncode == 0 else f"redis-check-rdb: {result.stdout.strip()[-200:]}"


def snapshot_service(engine, container, dest: Path, timeout: float = 300) -> dict:
    """BGSAVE and wait until the save counter advanced with status ok (a save within the
    same second is still seen: the counter, not LASTSAVE's seconds, is compared)."""

    def cli(*args: str) -> str:
        return engine.exec(container, ["redis-cli", *args])

    deadline = time.monotonic() + timeout
    info = parse_info(cli("INFO", "persistence"))
    while info.get("rdb_bgsave_in_progress") == "1":  # someone else's save: let it finish
        _wait(deadline, "a running BGSAVE")
        info = parse_info(cli("INFO", "persistence"))
    if "rdb_saves" not in info:
        raise RedisBackupError("this Redis has no rdb_saves counter (needs Redis 7 or newer)")
    before = int(info["rdb_saves"])
    reply = cli("BGSAVE")
    if "started" not in reply and "scheduled" not in reply:
        raise RedisBackupError(f"BGSAVE refused: {reply}")
    while True:
        info = parse_info(cli("INFO", "persistence"))
        if int(info["rdb_saves"]) > before and info["rdb_bgsave_in_progress"] == "0":
            break
        _wait(deadline, "BGSAVE")
    if info["rdb_last_bgsave_status"] != "ok":
        raise RedisBackupError(
            f"BGSAVE failed (rdb_last_bgsave_status={info['rdb_last_bgsave_status']}); "
            "see the Redis log (inv logs redis)"
        )
    directory = cli("CONFIG", "GET", "dir").splitlines()[-1]
    filename = cli("CONFIG", "GET", "dbfilename").splitlines()[-1]
    appendonly = cli("CONFIG", "GET", "appendonly").splitlines()[-1]
    stream = dest.with_name(dest.name + ".tar")
    engine.copy_out(container, f"{directory}/{filename}", stream)
    with tarfile.open(stream) as tar:
        member = tar.getmembers()[0]
        with tar.extractfile(member) as source, open(dest, "wb") as out:
            shutil.copyfileobj(source, out)
    stream.unlink()
    return {"saves": int(info["rdb_saves"]), "dir": directory, "dbfilename": filename,
            "appendonly": appendonly}  # fmt: skip


def _wait(deadline: float, what: str) -> None:
    if time.monotonic() > deadline:
        raise RedisBackupError(f"timed out waiting for {what}; the backup is incomplete")
    time.sleep(0.05)


def snapshot_url(sh: Shell, url: str, dest: Path) -> dict:
    result = sh.run(["redis-cli", "-u", url, "--rdb", str(dest)], capture=True, check=False)
    if result.returncode != 0 or not dest.is_file() or dest.stat().st_size == 0:
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no RDB written"]
        raise RedisBackupError(f"redis-cli --rdb from {redact(url)} failed: {detail[0]}")
    return {"url": redact(url)}


def redact(url: str) -> str:
    """A URL without its password, for manifests and messages."""
    scheme, sep, rest = url.partition("://")
    _credentials, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{'***@' if at else ''}{host}" if sep else url


# Loads the RDB into a scratch Redis and rewrites the AOF from it, so a server with
# `appendonly yes` starts with the restored keys (it would otherwise replay its old AOF
# and ignore the RDB). Runs in a helper container with the Redis service's volumes.
RESTORE_SCRIPT = """set -e
cd "$DIR"
rm -rf appendonlydir "$AOF"
cp /restore/redis.rdb "$DB.restore-tmp"
mv "$DB.restore-tmp" "$DB"
if [ "$APPENDONLY" = yes ]; then
  redis-server --dir "$DIR" --dbfilename "$DB" --appendonly no --save '' --port 6399 \
    --bind 127.0.0.1 --daemonize yes
  tries=0
  until redis-cli -p 6399 ping >/dev/null 2>&1; do
    tries=$((tries + 1)); [ $tries -lt 600 ] || { echo "scratch redis did not start"; exit 1; }
    sleep 0.1
  done
  redis-cli -p 6399 CONFIG SET appendonly yes >/dev/null
  tries=0
  until redis-cli -p 6399 INFO persistence | grep -q '^aof_rewrite_in_progress:0' \
    && redis-cli -p 6399 INFO persistence | grep -q '^aof_rewrite_scheduled:0' \
    && redis-cli -p 6399 INFO persistence | grep -q '^aof_enabled:1'; do
    tries=$((tries + 1)); [ $tries -lt 3000 ] || { echo "AOF rewrite did not finish"; exit 1; }
    sleep 0.1
  done
  redis-cli -p 6399 INFO persistence | grep -q '^aof_last_bgrewrite_status:ok'
  redis-cli -p 6399 SHUTDOWN NOSAVE >/dev/null 2>&1 || true
fi
chown -R "$(stat -c %u:%g .)" .
echo restored "$(ls)"
"""


def restore_script(details: dict) -> str:
    variables = {
        "DIR": details["dir"],
        "DB": details["dbfilename"],
        "AOF": "appendonly.aof",
        "APPENDONLY": details.get("appendonly", "no"),
    }
    exports = "".join(f"{k}={shlex.quote(str(v))}\n" for k, v in variables.items())
    return exports + RESTORE_SCRIPT


@contextlib.contextmanager
def scratch_server(sh: Shell, directory: Path) -> Iterator[list[str]]:
    """A throwaway redis-server on 127.0.0.1 loading directory/dump.rdb if there is one;
    yields the redis-cli argv that reaches it, and shuts it down without saving."""
    port = str(free_port())
    sh.run(
        ["redis-server", "--port", port, "--bind", "127.0.0.1", "--dir", str(directory),
         "--dbfilename", "dump.rdb", "--save", "", "--appendonly", "no", "--daemonize", "yes",
         "--logfile", str(directory / "redis.log")],
    )  # fmt: skip
    cli = ["redis-cli", "-p", port]
    try:
        for _ in range(200):
            if sh.run([*cli, "ping"], query=True, check=False).stdout.strip() == "PONG":
                break
            time.sleep(0.05)
        else:
            raise RedisBackupError(
                f"a scratch redis-server did not start: see {directory}/redis.log"
            )
        yield cli
    finally:
        sh.run([*cli, "shutdown", "nosave"], query=True, check=False)


def restore_url(sh: Shell, rdb: Path, url: str, scratch: Path) -> int:
    """Load the RDB into a scratch redis-server and MIGRATE every key into the target
    (REPLACE); returns the number of keys moved."""
    shutil.copy(rdb, scratch / "dump.rdb")
    with scratch_server(sh, scratch) as local:
        keys = sh.output([*local, "--scan"]).split("\n")
        keys = [k for k in keys if k]
        target = _target(url)
        for start in range(0, len(keys), 1000):
            batch = keys[start : start + 1000]
            sh.run(
                [*local, "MIGRATE", target["host"], target["port"], "", target["db"], "10000",
                 "COPY", "REPLACE", *target["auth"], "KEYS", *batch],
                query=True,
            )  # fmt: skip
        return len(keys)


def _target(url: str) -> dict:
    from urllib.parse import urlparse

    parsed = urlparse(url)
    auth = []
    if parsed.password:
        auth = ["AUTH2", parsed.username or "default", parsed.password]
    return {
        "host": parsed.hostname or "127.0.0.1",
        "port": str(parsed.port or 6379),
        "db": (parsed.path or "/0").lstrip("/") or "0",
        "auth": auth,
    }
