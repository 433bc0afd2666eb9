"""Redis by URL: `inv backup` / `inv restore` against a real password-protected
redis-server. The target ends with exactly the set's keys in every logical database, every
auth form works, and the password is never in argv, output or the backup directory."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis as redis_client

from buildtasks.backup import redis
from buildtasks.shell import Shell
from tests.conftest import run_cli

pytestmark = pytest.mark.integration

PASSWORD = "s3cret-Pw-7c1e9a"  # distinctive: any occurrence anywhere is a leak
USER_PASSWORD = "u5er-Pw-42ab0d"


class CmdlineWatch:
    """Samples every process's /proc/PID/cmdline in a thread; collects any holding needle."""

    def __init__(self, needles: tuple[str, ...]):
        self.needles = [n.encode() for n in needles]
        self.hits: list[str] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry.name}/cmdline", "rb") as handle:
                        cmdline = handle.read()
                except OSError:
                    continue
                if any(n in cmdline for n in self.needles):
                    self.hits.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
            self.samples += 1

    def __enter__(self) -> CmdlineWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def server(tmp_path):
    """A redis-server requiring PASSWORD (and an ACL user `backup` with USER_PASSWORD),
    plus a read-only user `reader` that may replicate (back up) but not write."""
    data = tmp_path / "server"
    data.mkdir()
    with redis.scratch_server(Shell(echo=False), data, PASSWORD) as cli:
        admin = redis_client.Redis(port=int(cli[2]), password=PASSWORD)
        admin.acl_setuser("backup", enabled=True, passwords=[f"+{USER_PASSWORD}"],
                          keys=["*"], channels=["*"], commands=["+@all"])  # fmt: skip
        admin.acl_setuser("reader", enabled=True, passwords=[f"+{USER_PASSWORD}"], keys=["*"],
                          commands=["+@read", "+sync", "+psync", "+replconf", "+ping", "+info",
                                    "+auth", "+hello"])  # fmt: skip
        yield int(cli[2])


def db(port: int, number: int = 0) -> redis_client.Redis:
    return redis_client.Redis(port=port, db=number, password=PASSWORD)


def populate(port: int) -> dict[int, dict[bytes, bytes]]:
    """Keys in three logical databases (one with TTLs); returns what each holds."""
    for number, count in ((0, 300), (2, 40), (5, 7)):
        pipe = db(port, number).pipeline()
        for i in range(count):
            pipe.set(f"key:{number}:{i}", f"value {i}", ex=3600 if number == 5 else None)
        pipe.execute()
    return contents(port)


def contents(port: int) -> dict[int, dict[bytes, bytes]]:
    found = {}
    for number in range(16):
        client = db(port, number)
        keys = list(client.scan_iter())
        if keys:
            found[number] = dict(zip(keys, client.mget(keys), strict=True))
    return found


def project(root: Path, url: str) -> Path:
    root.mkdir(exist_ok=True)
    (root / "pyproject.toml").write_text(
        f'[tool.buildtasks]\nimage = "x"\n[tool.buildtasks.backup]\nredis = {{ url = "{url}" }}\n'
    )
    return root


def files_containing(directory: Path, needle: str) -> list[str]:
    return [
        str(p) for p in directory.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()
    ]


AUTH_FORMS = {
    "user-and-password": ("redis://backup:{upw}@127.0.0.1:{port}/0", {}, USER_PASSWORD),
    "colon-password": ("redis://:{pw}@127.0.0.1:{port}", {}, PASSWORD),
    "password-only": ("redis://{pw}@127.0.0.1:{port}/0", {}, PASSWORD),
    "REDISCLI_AUTH": ("redis://127.0.0.1:{port}/0", {"REDISCLI_AUTH": PASSWORD}, PASSWORD),
}


@pytest.mark.parametrize("form", list(AUTH_FORMS))
def test_backup_and_restore_by_url_are_exact_and_never_show_the_password(server, tmp_path, form):
    template, env, secret = AUTH_FORMS[form]
    url = template.format(pw=PASSWORD, upw=USER_PASSWORD, port=server)
    root = project(tmp_path / "project", url)
    before = populate(server)
    with CmdlineWatch((PASSWORD, USER_PASSWORD)) as watch:
        backup = run_cli(["buildtasks", "backup"], cwd=root, env=env)
        assert backup.returncode == 0, backup.stderr
        db(server, 0).set("created-after-the-backup", "x")  # must not survive the restore
        db(server, 9).set("in-a-database-the-set-does-not-hold", "x")
        db(server, 2).delete("key:2:0")  # must come back
        db(server, 5).set("key:5:0", "changed")  # must be the set's value again
        restore = run_cli(["buildtasks", "restore", "--yes"], cwd=root, env=env)
        assert restore.returncode == 0, restore.stdout + restore.stderr
    assert contents(server) == before
    assert 0 < db(server, 5).ttl("key:5:1") <= 3600, "TTLs are restored"
    assert watch.samples > 20 and watch.hits == []
    for output in (backup.stdout, backup.stderr, restore.stdout, restore.stderr):
        assert secret not in output
    assert files_containing(root / "backups", secret) == []
    assert "restored" in restore.stdout


def test_dry_backup_and_a_bad_password_never_show_it(server, tmp_path):
    root = project(tmp_path / "project", f"redis://{PASSWORD}@127.0.0.1:{server}/0")
    dry = run_cli(["buildtasks", "--dry", "backup"], cwd=root)
    assert dry.returncode == 0, dry.stderr
    assert "redis://***@127.0.0.1" in dry.stdout
    wrong = "Wrong-" + PASSWORD
    project(root, f"redis://:{wrong}@127.0.0.1:{server}/0")
    failed = run_cli(["buildtasks", "backup"], cwd=root)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert (
        failed.stderr.strip()
        .splitlines()[-1]
        .startswith("error: redis-cli --rdb from redis://***@")
    )
    for text in (dry.stdout, dry.stderr, failed.stdout, failed.stderr):
        assert PASSWORD not in text


def test_a_refused_write_fails_the_restore_and_changes_nothing(server, tmp_path):
    """`reader` may back up (replicate) but not write: the old MIGRATE path printed
    'restored' and exited 0 here, as redis-cli exits 0 on an error reply."""
    root = project(tmp_path / "project", f"redis://reader:{USER_PASSWORD}@127.0.0.1:{server}")
    populate(server)
    assert run_cli(["buildtasks", "backup"], cwd=root).returncode == 0
    db(server, 0).set("created-after-the-backup", "x")
    now = contents(server)
    restore = run_cli(["buildtasks", "restore", "--yes"], cwd=root)
    assert restore.returncode == 1
    assert "restored" not in restore.stdout.split("safety backup")[-1]
    error = restore.stderr.strip().splitlines()[-1]
    assert (
        error.startswith("error: redis restore into redis://***@127.0.0.1")
        and "no permissions" in error
    )
    assert "Traceback" not in restore.stderr
    assert contents(server) == now


def test_a_target_that_keeps_fewer_keys_than_the_set_fails(server, tmp_path):
    """An evicting target (maxmemory + allkeys-random) accepts every RESTORE and drops keys."""
    root = project(tmp_path / "project", f"redis://:{PASSWORD}@127.0.0.1:{server}")
    admin = db(server)
    pipe = admin.pipeline()
    for i in range(20_000):
        pipe.set(f"big:{i}", "x" * 200)
    pipe.execute()
    assert run_cli(["buildtasks", "backup"], cwd=root).returncode == 0
    admin.config_set("maxmemory-policy", "allkeys-random")
    admin.config_set("maxmemory", admin.info("memory")["used_memory"] // 2)
    restore = run_cli(["buildtasks", "restore", "--yes"], cwd=root)
    admin.config_set("maxmemory", 0)
    assert restore.returncode == 1, restore.stdout
    assert "keys after the restore, the set 20000" in restore.stderr.strip().splitlines()[-1]
    assert "Traceback" not in restore.stderr


def test_rediss_backup_and_restore(tmp_path):
    """TLS: redis-cli --tls for the backup, the redis client over TLS for the restore; the
    server's CA is trusted through SSL_CERT_FILE as both honour it."""
    certs = tmp_path / "certs"
    certs.mkdir()
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", certs / "key.pem", "-out", certs / "cert.pem", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    from buildtasks.platforms import free_port

    port = free_port()
    data = tmp_path / "data"
    data.mkdir()
    conf = data / "tls.conf"
    conf.write_text(
        f"port 0\ntls-port {port}\ntls-cert-file {certs / 'cert.pem'}\n"
        f"tls-key-file {certs / 'key.pem'}\ntls-auth-clients no\nrequirepass {PASSWORD}\n"
        f'dir {data}\nsave ""\ndaemonize yes\nlogfile {data / "log"}\n'
    )
    subprocess.run(["redis-server", str(conf)], check=True)
    env = {"SSL_CERT_FILE": str(certs / "cert.pem")}
    client = redis_client.Redis(
        host="127.0.0.1",
        port=port,
        password=PASSWORD,
        ssl=True,
        ssl_ca_certs=str(certs / "cert.pem"),
    )
    try:
        for _ in range(100):
            try:
                client.ping()
                break
            except redis_client.ConnectionError:
                time.sleep(0.05)
        client.mset({f"k{i}": i for i in range(100)})
        root = project(tmp_path / "project", f"rediss://:{PASSWORD}@127.0.0.1:{port}/0")
        backup = run_cli(["buildtasks", "backup"], cwd=root, env=env)
        assert backup.returncode == 0, backup.stderr
        client.set("after", "x")
        client.delete("k1")
        restore = run_cli(["buildtasks", "restore", "--yes"], cwd=root, env=env)
        assert restore.returncode == 0, restore.stdout + restore.stderr
        assert client.dbsize() == 100 and client.get("k1") == b"1"
    finally:
        client.shutdown(nosave=True)


def test_json_stays_one_document_when_retention_deletes(server, tmp_path):
    root = project(tmp_path / "project", f"redis://:{PASSWORD}@127.0.0.1:{server}")
    (root / "pyproject.toml").write_text((root / "pyproject.toml").read_text() + "keep_last = 1\n")
    first = run_cli(["buildtasks", "backup", "--json"], cwd=root)
    second = run_cli(["buildtasks", "backup", "--json"], cwd=root)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["id"] > json.loads(first.stdout)["id"]
    assert "retention: deleted" in second.stderr
