"""Off-site sets in restic repositories served on loopback (rest-server, sshd's SFTP),
restore drills and staleness, with real restic, sqlite3, redis and the engine."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from buildtasks import config, stack
from buildtasks.backup import drill, offsite, sets
from buildtasks.docker import compose
from buildtasks.docker.compose import stack_compose
from buildtasks.runtime import Runtime
from buildtasks.shell import Shell
from tests.conftest import REPO, run_cli
from tests.integration.test_backup import (  # noqa: F401 (example_stack is a fixture)
    POPULATE,
    example_stack,
    example_state,
    make_db,
    one_line_error,
    rows,
    stack_compose_argv,
    stack_exec,
    tree_digest,
)
from tests.integration.test_backup_redis import CmdlineWatch
from tests.servers import rest_server, sftp_server

pytestmark = pytest.mark.integration

PASSWORD = "pw-Offsite-7f3c1e"  # the repository password: never in any output or argv
URL_SECRET = "urlcred-9a8b7c"  # a credential inside the repository URL


def stranger(root: Path, repository: str, extra: str = "") -> Path:
    """A project unlike example/: data under srv/, its own table and file names."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "srv/state/blobs/a").mkdir(parents=True)
    (root / "srv/state/blobs/a/one.bin").write_bytes(os.urandom(3000))
    (root / "srv/state/blobs/two.txt").write_text("two")
    make_db(root / "srv/state/ledger.sqlite", 250)
    (root / "pyproject.toml").write_text(
        '[tool.buildtasks]\nimage = "reg.example/ledger"\n[tool.buildtasks.backup]\n'
        'dir = "var/sets"\nkeep_last = 2\nsqlite = ["srv/state/ledger.sqlite"]\n'
        'files = ["srv/state/blobs"]\n[tool.buildtasks.backup.offsite]\n'
        f'repository = "{repository}"\npassword_env = "LEDGER_RESTIC_PW"\n{extra}'
    )
    return root


def state(project: Path) -> tuple[int, str]:
    return rows(project / "srv/state/ledger.sqlite"), tree_digest(project / "srv/state/blobs")


def cli(project: Path, *args: str, password: str = PASSWORD):
    return run_cli(["buildtasks", *args], cwd=project, env={"LEDGER_RESTIC_PW": password})


def ok(result) -> str:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert PASSWORD not in result.stdout + result.stderr
    assert URL_SECRET not in result.stdout + result.stderr
    return result.stdout


def offsite_ids(project: Path) -> list[str]:
    return [row["id"] for row in json.loads(ok(cli(project, "backup.offsite.list", "--json")))]


def test_rest_round_trip_retention_and_no_secret_anywhere(tmp_path):
    with rest_server(tmp_path / "server") as server:
        repository = server.url.replace("http://", f"http://user:{URL_SECRET}@") + "/ledger"
        project = stranger(tmp_path / "ledger", repository)
        with CmdlineWatch((PASSWORD, URL_SECRET)) as watch:
            first = json.loads(ok(cli(project, "backup", "--offsite", "--json")))
        assert watch.samples > 5 and watch.hits == []
        assert first["offsite"]["snapshot"] and first["offsite"]["bytes_added"] > 0
        settings = config.load(project)
        set_dir = sets.backup_dir(settings) / first["id"]
        assert not [p for p in set_dir.rglob("*") if PASSWORD.encode() in p.read_bytes()]
        for _ in range(2):  # keep_last = 2 holds off-site too
            ok(cli(project, "backup", "--offsite"))
        ids = offsite_ids(project)
        assert len(ids) == 2 and first["id"] not in ids
        newest = ids[0]
        before = (
            rows(project / "srv/state/ledger.sqlite"),
            tree_digest(project / "srv/state/blobs"),
        )

        # Disaster: the local sets are gone, the live data damaged.
        shutil.rmtree(project / "var/sets")
        make_db(project / "srv/state/ledger.sqlite", 7)
        (project / "srv/state/blobs/two.txt").write_text("damaged")
        assert ok(cli(project, "backup.verify", "--max-age", "26h")).startswith("fresh")
        plan = cli(project, "restore", "--from", "offsite", "--id", newest)
        assert plan.returncode == 1 and f"would download backup {newest}" in plan.stdout
        assert not (project / "var/sets" / newest).exists()
        ok(cli(project, "restore", "--from", "offsite", "--id", newest, "--yes"))
        after = (
            rows(project / "srv/state/ledger.sqlite"),
            tree_digest(project / "srv/state/blobs"),
        )
        assert after == before
        assert sets.verify(settings, _quiet(), newest) == []


def _quiet():
    from buildtasks.shell import Shell

    return Shell(echo=False)


def test_wrong_password_is_one_line_and_changes_nothing(tmp_path):
    with rest_server(tmp_path / "server") as server:
        project = stranger(tmp_path / "ledger", server.url + "/ledger")
        ok(cli(project, "backup", "--offsite"))
        local = sorted(p.name for p in (project / "var/sets").iterdir())
        remote = offsite_ids(project)
        repo_files = tree_digest(server.data)
        live = tree_digest(project / "srv")
        for args in (
            ["backup", "--offsite"],
            ["restore", "--from", "offsite", "--yes"],
            ["backup.offsite.list"],
            ["backup.verify", "--offsite"],
        ):
            line = one_line_error(cli(project, *args, password="not-the-password"))
            assert "wrong password" in line and "not-the-password" not in line, (args, line)
        assert sorted(p.name for p in (project / "var/sets").iterdir()) == local
        assert offsite_ids(project) == remote
        assert tree_digest(project / "srv") == live
        assert tree_digest(server.data) == repo_files
        # no password at all: one line naming where to put it
        result = run_cli(["buildtasks", "backup", "--offsite"], cwd=project,
                         env={"LEDGER_RESTIC_PW": ""})  # fmt: skip
        assert "set LEDGER_RESTIC_PW" in one_line_error(result)


def test_a_corrupted_pack_is_caught_by_verify_offsite(tmp_path):
    with rest_server(tmp_path / "server") as server:
        project = stranger(tmp_path / "ledger", server.url + "/ledger", 'check_subset = "100%"\n')
        ok(cli(project, "backup", "--offsite"))
        assert "checked" in ok(cli(project, "backup.verify", "--offsite"))
        packs = sorted((server.data / "ledger/data").rglob("*"), key=lambda p: -p.stat().st_size)
        pack = packs[0]  # the largest pack holds the set's data
        data = bytearray(pack.read_bytes())
        data[len(data) // 2] ^= 0xFF
        pack.chmod(0o644)
        pack.write_bytes(bytes(data))
        line = one_line_error(cli(project, "backup.verify", "--offsite"))
        assert "restic check" in line


def test_sftp_round_trip_and_a_tampered_download_is_refused(tmp_path, monkeypatch):
    with sftp_server(tmp_path / "sshd") as server:
        options = json.dumps(server.options())
        project = stranger(
            tmp_path / "ledger", server.repository("ledger"), f"options = {options}\n"
        )
        made = json.loads(ok(cli(project, "backup", "--offsite", "--json")))["id"]
        assert offsite_ids(project) == [made]
        live = state(project)
        shutil.rmtree(project / "var/sets")
        (project / "srv/state/blobs/two.txt").write_text("changed since")
        ok(cli(project, "restore", "--from", "offsite", "--yes"))
        assert state(project) == live

        # The repository is not trusted either: a set whose artifact no longer matches its
        # manifest (sent around the tool) is refused after the download, nothing touched.
        settings = config.load(project)
        bad = json.loads(ok(cli(project, "backup", "--json")))["id"]
        tar = next((sets.backup_dir(settings) / bad).glob("files-*.tar"))
        tar.write_bytes(tar.read_bytes().replace(b"two", b"TWO"))
        monkeypatch.setenv("LEDGER_RESTIC_PW", PASSWORD)
        repo = offsite.Repository(settings, _quiet())
        repo.push(sets.backup_dir(settings) / bad, sets.find(settings, bad))
        shutil.rmtree(project / "var/sets")
        (project / "srv/state/blobs/two.txt").write_text("live")
        live = tree_digest(project / "srv")
        line = one_line_error(cli(project, "restore", "--from", "offsite", "--id", bad, "--yes"))
        assert "failed verification after the download" in line and "checksum mismatch" in line
        assert tree_digest(project / "srv") == live
        assert not [
            p.name for p in (project / "var/sets").iterdir() if p.name != ".buildtasks.lock"
        ]


def test_staleness_local_and_offsite(tmp_path):
    with rest_server(tmp_path / "server") as server:
        project = stranger(tmp_path / "ledger", server.url + "/ledger")
        line = one_line_error(cli(project, "backup.verify", "--max-age", "26h"))
        assert "no intact full backup set" in line
        ok(cli(project, "backup"))  # local only
        assert "local" in ok(cli(project, "backup.verify", "--max-age", "26h"))
        time.sleep(2)
        line = one_line_error(cli(project, "backup.verify", "--max-age", "1s"))
        assert "older than --max-age 1s" in line
        ok(cli(project, "backup", "--offsite"))
        shutil.rmtree(project / "var/sets")  # off-site alone still answers
        assert "offsite" in ok(cli(project, "backup.verify", "--max-age", "26h"))
        assert "--max-age" in one_line_error(cli(project, "backup.verify", "--max-age", "1d"))


# --- the example stack: drill, and the full disaster round trip ----------------------


def leftovers_of(engine, prefix: str) -> list[str]:
    label = "com.docker.compose.project"
    found = []
    for kind in (engine.containers, engine.networks, engine.volumes):
        listed = kind.list(all=True) if kind is engine.containers else kind.list()
        for item in listed:
            project = (item.attrs.get("Labels") or item.attrs.get("Config", {}).get("Labels")
                       or {}).get(label, "")  # fmt: skip
            if project.startswith(prefix):
                found.append(f"{type(item).__name__} {item.name}")
    return found


def test_drill_and_disaster_recovery_from_offsite_on_the_example(
    example_stack,  # noqa: F811 (the fixture imported above)
    engine,
    tmp_path,
):
    with rest_server(tmp_path / "server") as server:
        env = {
            **example_stack,
            "BUILDTASKS_BACKUP_DIR": str(tmp_path / "sets"),
            "BUILDTASKS_OFFSITE_REPOSITORY": server.url + "/jobsvc",
            "RESTIC_PASSWORD": PASSWORD,
        }
        api = f"http://127.0.0.1:{env['API_PORT']}"
        for text in ("one", "two words", "three more words"):
            request = urllib.request.Request(
                f"{api}/jobs", data=json.dumps({"text": text}).encode()
            )
            urllib.request.urlopen(request).read()
        stack_exec(env, "redis", "redis-cli", "EVAL", POPULATE, "0", "500")
        time.sleep(2)  # the worker finishes the jobs
        made = json.loads(ok(run_cli(["invoke", "backup", "--offsite", "--json"], env=env)))
        before = example_state(env)
        prefix = f"{env['STACK_PROJECT']}-drill-"

        drill = run_cli(["invoke", "backup.drill", "--from", "offsite", "--json"], env=env)
        report = json.loads(ok(drill))
        assert report["ok"] and report["set"] == made["id"] and report["from"] == "offsite"
        names = [c["name"] for c in report["checks"]]
        assert names[:2] == ["verify", "health"] and len(names) == 5, report
        assert leftovers_of(engine, prefix) == []

        # Ctrl-C (SIGINT to the whole process group, as a terminal sends it) once the
        # throwaway stack exists: it is still removed.
        drilling = subprocess.Popen(
            [sys.executable, "-m", "invoke", "backup.drill", "--from", "local"],
            cwd=REPO, env={**os.environ, **env}, start_new_session=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while not leftovers_of(engine, prefix) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert leftovers_of(engine, prefix), "the drill stack never appeared"
        os.killpg(drilling.pid, signal.SIGINT)
        _, stderr = drilling.communicate(timeout=180)
        assert drilling.returncode != 0, stderr[-2000:]
        assert leftovers_of(engine, prefix) == [], stderr[-2000:]

        # A tampered local set: the drill fails (one JSON document), and leaves nothing.
        tar = next((tmp_path / "sets" / made["id"]).glob("files-*.tar"))
        data = bytearray(tar.read_bytes())
        data[len(data) // 2] ^= 0x01
        tar.write_bytes(bytes(data))
        failed = run_cli(["invoke", "backup.drill", "--from", "local", "--json"], env=env)
        assert failed.returncode == 1, failed.stderr[-2000:]
        report = json.loads(failed.stdout)
        assert not report["ok"] and "checksum mismatch" in report["checks"][0]["detail"]
        assert leftovers_of(engine, prefix) == []

        # Disaster: local sets gone, the stack emptied with down -v, restore from off-site.
        shutil.rmtree(tmp_path / "sets")
        subprocess.run(
            stack_compose_argv(env, "down", "--volumes"), check=True, capture_output=True
        )
        restore = run_cli(["invoke", "restore", "--from", "offsite", "--yes"], env=env)
        ok(restore)
        assert example_state(env) == before
        health = json.loads(urllib.request.urlopen(f"{api}/health").read())
        assert health["status"] == "ok" and health["database"]["jobs"] == 3


def test_an_unreachable_repository_is_one_line_within_open_timeout(tmp_path):
    """restic retries a backend that refuses connections for 15 minutes; we do not wait."""
    from buildtasks.platforms import free_port

    url = f"rest:http://127.0.0.1:{free_port()}/ledger"
    project = stranger(tmp_path / "ledger", url, "open_timeout = 2\n")
    started = time.monotonic()
    line = one_line_error(cli(project, "backup", "--offsite"))
    assert "did not answer within 2s" in line and time.monotonic() - started < 30
    assert not (project / "var/sets").exists() or not list((project / "var/sets").iterdir())
    result = cli(project, "backup.verify", "--max-age", "26h")  # a warning, then no set at all
    assert "off-site not read" in result.stderr and "no intact full backup set" in result.stderr


def test_the_drill_stack_takes_base_images_from_the_mirror_as_up_does(tmp_path, monkeypatch):
    """The throwaway stack's compose files, resolved by compose: the mirror's base images and
    loopback ports, the project's own image untouched (no engine needed)."""
    (tmp_path / "compose.yml").write_text(
        "services:\n"
        "  app: {image: 'registry.example.com/shop/app:1', ports: ['8080:8080']}\n"
        "  redis: {image: 'redis:7', ports: ['6379:6379']}\n"
        "  cron: {image: 'busybox:1'}\n"
    )
    (tmp_path / "pyproject.toml").write_text(
        '[tool.buildtasks]\nimage = "registry.example.com/shop/app"\n'
        'mirror = "127.0.0.1:5000/mirror"\n[tool.buildtasks.targets.app]\n'
        '[tool.buildtasks.stack]\ncompose = ["compose.yml"]\nproject = "shopdrill"\n'
    )
    settings = config.load(tmp_path)
    sh = Shell(echo=False)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    drill_stack = stack_compose(drill.throwaway(settings, sh, scratch))
    services = compose.resolved_config(sh, drill_stack)["services"]
    images = {name: s["image"] for name, s in services.items()}
    assert images == {
        "app": "registry.example.com/shop/app:1",
        "redis": "127.0.0.1:5000/mirror/redis:7",
        "cron": "127.0.0.1:5000/mirror/busybox:1",
    }
    assert {p["host_ip"] for s in services.values() for p in s.get("ports", ())} == {"127.0.0.1"}
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))  # where up keeps its file
    live = stack.with_mirror(Runtime(settings), settings, stack_compose(settings))
    live_images = {n: s["image"] for n, s in compose.resolved_config(sh, live)["services"].items()}
    assert live_images == images
