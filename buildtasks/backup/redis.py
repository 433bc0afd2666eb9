"""Redis snapshots: BGSAVE in a compose service copied out through the engine, or
`redis-cli --rdb` from a URL; both checked with redis-check-rdb."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shlex
import shutil
import tarfile
import time
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from buildtasks import lazy, shell
from buildtasks.errors import BuildtasksError
from buildtasks.platforms import free_port
from buildtasks.shell import Shell

redis_client = lazy.module("redis")


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


def snapshot_service(
    engine, container, dest: Path, timeout: float = 300
) -> Generator[None, None, dict]:
    """BGSAVE; yields once the save's child has forked (its snapshot is fixed: writers may
    go on), then waits until the save counter advanced with status ok (a save within the
    same second is still seen: the counter, not LASTSAVE's seconds, is compared) and
    copies the RDB out."""

    def cli(*args: str) -> str:
        """A read (INFO, CONFIG GET); the one write, BGSAVE, is announced below."""
        return engine.exec(container, ["redis-cli", *args], query=True)

    deadline = time.monotonic() + timeout
    info = parse_info(cli("INFO", "persistence"))
    while info.get("rdb_bgsave_in_progress") == "1":  # someone else's save: let it finish
        _wait(deadline, "a running BGSAVE")
        info = parse_info(cli("INFO", "persistence"))
    if "rdb_saves" not in info:
        raise RedisBackupError("this Redis has no rdb_saves counter (needs Redis 7 or newer)")
    before = int(info["rdb_saves"])
    reply = engine.exec(container, ["redis-cli", "BGSAVE"])
    if "started" not in reply and "scheduled" not in reply:
        raise RedisBackupError(f"BGSAVE refused: {reply}")
    # "started" is replied after the fork; a save "scheduled" behind an AOF rewrite forks
    # later: wait until a child runs or the save is already done.
    while "started" not in reply and info["rdb_bgsave_in_progress"] == "0":
        if int(info["rdb_saves"]) > before:
            break
        _wait(deadline, "BGSAVE to start")
        info = parse_info(cli("INFO", "persistence"))
    yield
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


@dataclass(frozen=True)
class Endpoint:
    """A Redis server given by URL. The password is held here only: it reaches redis-cli
    through REDISCLI_AUTH and the redis client in memory, never an argv."""

    host: str
    port: int
    db: int
    username: str
    password: str
    tls: bool


def parse_url(url: str, environ: Mapping[str, str]) -> Endpoint:
    """redis[s]://[[USER]:PASSWORD@]HOST[:PORT][/DB], read as redis-cli reads it: a user
    part without a colon is the password; without a password, REDISCLI_AUTH is used."""
    shown = redact(url)
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise RedisBackupError(
            f"redis url {shown}: write redis[s]://[[USER]:PASSWORD@]HOST[:PORT][/DB]"
        )
    userinfo, _, _ = parts.netloc.rpartition("@")
    username, colon, password = userinfo.partition(":")
    if not colon:
        username, password = "", username
    db = parts.path.strip("/") or "0"
    try:
        port = parts.port or 6379
    except ValueError:
        port = 0
    if not db.isdigit() or not port or parts.query or parts.fragment:
        raise RedisBackupError(f"redis url {shown}: bad port, database number or extra parts")
    return Endpoint(
        host=parts.hostname,
        port=port,
        db=int(db),
        username=unquote(username),
        password=unquote(password) or environ.get("REDISCLI_AUTH", ""),
        tls=parts.scheme == "rediss",
    )


def cli_shell(sh: Shell, password: str) -> Shell:
    """sh whose redis-cli authenticates with password (REDISCLI_AUTH: the environment of a
    process is readable by its user only, its argv by everyone)."""
    if not password:
        return sh
    env = {**sh.env, "REDISCLI_AUTH": password}
    return sh.variant(env=env, secrets=sh.secrets | {password})


def snapshot_url(sh: Shell, url: str, dest: Path) -> dict:
    """`redis-cli --rdb` of the server at url: every logical database, as a replica sees it."""
    endpoint = parse_url(url, {**os.environ, **sh.env})
    argv = ["redis-cli", "-h", endpoint.host, "-p", str(endpoint.port)]
    argv += ["--user", endpoint.username] if endpoint.username else []
    argv += ["--tls"] if endpoint.tls else []
    result = cli_shell(sh, endpoint.password).run(
        [*argv, "--rdb", str(dest)], capture=True, check=False
    )
    if result.returncode != 0 or not dest.is_file() or dest.stat().st_size == 0:
        output = shell.redact((result.stderr or "") + (result.stdout or ""), {endpoint.password})
        detail = output.strip().splitlines()[-1:] or ["no RDB written"]
        raise RedisBackupError(f"redis-cli --rdb from {redact(url)} failed: {detail[0]}")
    return {"url": redact(url)}


def redact(url: str) -> str:
    """A URL without its credentials, for manifests and messages (also when it is malformed:
    everything before the last @ that is not the scheme goes)."""
    head, at, host = url.rpartition("@")
    if not at:
        return url
    scheme, sep, _credentials = head.partition("://")
    return f"{scheme}{sep}***@{host}" if sep else f"***@{host}"


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
def scratch_server(sh: Shell, directory: Path, password: str = "") -> Iterator[list[str]]:
    """A throwaway redis-server on 127.0.0.1 loading directory/dump.rdb if there is one;
    yields the redis-cli argv that reaches it, and shuts it down without saving. With a
    password, other users of the machine cannot read it: the password is in a 0600
    config file and reaches redis-cli through REDISCLI_AUTH, never an argv."""
    port = str(free_port())
    conf = directory / "scratch-redis.conf"
    settings = {
        "port": port, "bind": "127.0.0.1", "dir": str(directory), "dbfilename": "dump.rdb",
        "save": "", "appendonly": "no", "daemonize": "yes",
        "logfile": str(directory / "redis.log"), "requirepass": password,
    }  # fmt: skip
    conf.unlink(missing_ok=True)  # a leftover keeps its mode: start from 0600
    conf.touch(mode=0o600)
    conf.write_text("".join(f"{k} {_quoted(v)}\n" for k, v in settings.items() if v or k == "save"))
    scratch = cli_shell(sh, password)
    scratch.run(["redis-server", str(conf)])
    cli = ["redis-cli", "-p", port]
    try:
        for _ in range(200):
            if scratch.run([*cli, "ping"], query=True, check=False).stdout.strip() == "PONG":
                break
            time.sleep(0.05)
        else:
            raise RedisBackupError(
                f"a scratch redis-server did not start: see {directory}/redis.log"
            )
        yield cli
    finally:
        scratch.run([*cli, "shutdown", "nosave"], capture=True, check=False)
        conf.unlink(missing_ok=True)


def _quoted(value: str) -> str:
    """A redis.conf string (double quotes, backslash escapes)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rdb_keys(sh: Shell, rdb: Path) -> tuple[int, int]:
    """(keys, keys with an expiry) in an RDB file, as redis-check-rdb counts them."""
    output = sh.run(["redis-check-rdb", str(rdb)], query=True, check=False).stdout
    found = {
        label: int(n) for n, label in re.findall(r"\[info\] (\d+) (keys read|expires)", output)
    }
    if "keys read" not in found:
        raise RedisBackupError(f"redis-check-rdb could not read {rdb.name}; nothing restored")
    return found["keys read"], found.get("expires", 0)


def restore_url(sh: Shell, rdb: Path, url: str, scratch: Path) -> int:
    """Make the server at url hold exactly the RDB's keys, in every logical database: load
    the RDB into a scratch redis-server, FLUSHALL the target, then DUMP/RESTORE each key
    with its TTL. Every reply is checked; a target left with fewer keys than the set
    holds fails. Returns the number of keys restored."""
    endpoint = parse_url(url, {**os.environ, **sh.env})
    where = redact(url)
    keys, expiring = rdb_keys(sh, rdb)
    shutil.copy(rdb, scratch / "dump.rdb")
    token = secrets.token_hex(16)
    with scratch_server(sh, scratch, token) as cli, _errors(where):
        local = Endpoint("127.0.0.1", int(cli[2]), 0, "", token, tls=False)
        loaded = _keyspace(_client(local))
        if sum(loaded.values()) < keys - expiring:  # only keys that expired since may go
            raise RedisBackupError(
                f"the scratch server loaded {sum(loaded.values())} of the set's {keys} keys; "
                "nothing restored"
            )
        target = _client(endpoint)
        target.ping()  # a refused password fails here, before anything changed
        target.flushall()
        restored = with_ttl = 0
        for db in sorted(loaded):
            moved, expiring_moved = _copy_db(_client(local, db), _client(endpoint, db))
            restored, with_ttl = restored + moved, with_ttl + expiring_moved
        now = sum(_keyspace(target).values())
    if now < restored - with_ttl:
        raise RedisBackupError(
            f"{where} holds {now} keys after the restore, the set {restored}; "
            "restore the safety backup"
        )
    return restored


def _copy_db(source, target) -> tuple[int, int]:
    """DUMP + PTTL from the scratch server, RESTORE ... REPLACE into the target, 1000 keys a
    round trip; returns (keys restored, of which with an expiry)."""
    restored = with_ttl = 0
    batch: list[bytes] = []

    def flush() -> None:
        nonlocal restored, with_ttl
        reading = source.pipeline(transaction=False)
        for key in batch:
            reading.dump(key)
            reading.pttl(key)
        replies = reading.execute()
        writing = target.pipeline(transaction=False)
        for key, payload, ttl in zip(batch, replies[::2], replies[1::2], strict=True):
            if payload is None:  # expired on the scratch server meanwhile
                continue
            writing.restore(key, max(ttl, 0), payload, replace=True)
            restored, with_ttl = restored + 1, with_ttl + (ttl > 0)
        writing.execute()  # raises on the first error reply
        batch.clear()

    for key in source.scan_iter(count=1000):
        batch.append(key)
        if len(batch) == 1000:
            flush()
    if batch:
        flush()
    return restored, with_ttl


def _client(endpoint: Endpoint, db: int | None = None):
    return redis_client.Redis(
        host=endpoint.host, port=endpoint.port, db=endpoint.db if db is None else db,
        username=endpoint.username or None, password=endpoint.password or None,
        ssl=endpoint.tls, socket_timeout=60, socket_connect_timeout=10,
    )  # fmt: skip


def _keyspace(client) -> dict[int, int]:
    """{database number: keys} of the databases that hold keys."""
    return {int(name[2:]): entry["keys"] for name, entry in client.info("keyspace").items()}


@contextlib.contextmanager
def _errors(where: str) -> Iterator[None]:
    """The redis client's errors (a refused password, an error reply, a lost connection)
    as one line naming the server."""
    try:
        yield
    except redis_client.exceptions.RedisError as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RedisBackupError(f"redis restore into {where} failed: {message}") from None
