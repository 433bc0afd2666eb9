"""The fixture project tests/fixtures/shop, laid out unlike example/: a shared base image
that api, worker and a one-shot migrate image build FROM, protos/ and compose.yaml at the
root, an LFS-tracked asset, data under var/. Real builds, compose, git LFS and SQLite."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from buildtasks import lfs
from buildtasks.docker.engine import run_in
from buildtasks.shell import Shell
from tests.conftest import REPO, remove_images, run_cli
from tests.integration.test_release import IDENTITY, labels_at, tags_of

pytestmark = pytest.mark.integration

FIXTURE = REPO / "tests/fixtures/shop"
ASSET = "services/api/assets/banner.bin"


def git(cwd: Path, *args: str, env: dict | None = None) -> str:
    result = subprocess.run(
        ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


@pytest.fixture(scope="module")
def shop(tmp_path_factory, engine, mirror):
    """The fixture as a git checkout whose LFS objects live in a local bare remote."""
    top = tmp_path_factory.mktemp("shop")
    work, remote = top / "work", top / "remote.git"
    shutil.copytree(FIXTURE, work)
    (work / "gitattributes.lfs").rename(work / ".gitattributes")
    git(top, "init", "-q", "--bare", "-b", "main", str(remote))
    git(work, "init", "-q", "-b", "main")
    git(work, "lfs", "install", "--local")
    git(work, "add", "-A")
    git(work, "commit", "-qm", "shop")
    git(work, "remote", "add", "origin", remote.as_uri())
    git(work, "push", "-q", "origin", "main")  # LFS objects go to remote.git/lfs over file://
    prefix = f"127.0.0.1:5000/shop-{uuid.uuid4().hex[:8]}"
    env = {
        "SHOP_REGISTRY": prefix,
        "SHOP_PROJECT": f"shop{uuid.uuid4().hex[:8]}",
        "BASE_IMAGE_MIRROR": mirror,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    yield work, remote, env, prefix
    remove_images(engine, prefix)


def inv(cwd: Path, env: dict, *args: str):
    return run_cli(["invoke", *args], cwd=cwd, env=env)


def image_id(engine, ref: str) -> str:
    return engine.images.get(ref).id


def test_lint_reads_every_targets_dockerfile_from_its_own_context(tmp_path):
    work = tmp_path / "shop"
    shutil.copytree(FIXTURE, work)
    linted = inv(work, {}, "lint")
    # base, api and worker each have a Dockerfile in their context, migrate one under services/
    assert linted.returncode == 0, linted.stdout + linted.stderr
    assert linted.stdout == "lint: 0 findings in 4 Dockerfiles, none at or above info\n"


def test_a_clone_without_lfs_content_is_pulled_before_the_build(shop, tmp_path):
    _, remote, env, prefix = shop
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", remote.as_uri(), str(clone), env={"GIT_LFS_SKIP_SMUDGE": "1"})
    assert (clone / ASSET).read_bytes().startswith(b"version https://git-lfs")
    built = inv(clone, env, "build-api", "--tag", f"{prefix}/api:lfs-clone")
    assert built.returncode == 0, built.stderr[-2000:]
    assert (clone / ASSET).read_bytes() == b"SHOP-ASSET-v1\n"


def test_a_pointer_whose_object_is_missing_is_refused_naming_the_file(shop, tmp_path):
    _, remote, env, _ = shop
    bare = tmp_path / "no-objects.git"
    shutil.copytree(remote, bare, ignore=shutil.ignore_patterns("lfs"))
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", bare.as_uri(), str(clone), env={"GIT_LFS_SKIP_SMUDGE": "1"})
    refused = inv(clone, env, "build-api")
    assert refused.returncode != 0
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and ASSET in last and "pointer" in last, last
    assert "Traceback" not in refused.stderr


def pointer_left_in(top: Path, asset: str, attributes: str) -> Path:
    """A repository at top whose LFS file asset (routed through LFS by the .gitattributes
    in directory attributes) is a pointer whose object is nowhere: a pull cannot help."""
    path = top / asset
    path.parent.mkdir(parents=True)
    path.write_bytes(b"SHOP-ASSET-v1\n")
    (top / attributes / ".gitattributes").write_text("*.bin filter=lfs diff=lfs merge=lfs -text\n")
    git(top, "init", "-q", "-b", "main")
    git(top, "lfs", "install", "--local")
    git(top, "add", "-A")
    git(top, "commit", "-qm", "assets")
    shutil.rmtree(top / ".git/lfs/objects")
    path.write_text(git(top, "show", f"HEAD:{asset}") + "\n")
    assert lfs.is_pointer(path)
    return path


def test_a_pointer_is_refused_in_a_project_below_its_repositorys_top(tmp_path):
    """A monorepo: .gitattributes at the top, the project in a subdirectory; `git lfs
    ls-files` names files from the top."""
    top = tmp_path / "mono"
    asset = pointer_left_in(top, "shop/services/api/assets/banner.bin", ".")
    with pytest.raises(lfs.PointerFile, match=r"^services/api/assets/banner.bin is a Git LFS"):
        lfs.require_content(Shell(echo=False), top / "shop", [asset.parent.parent])


def test_a_pointer_is_refused_where_only_a_nested_gitattributes_routes_it_through_lfs(tmp_path):
    """No .gitattributes at the top: the directory of assets carries its own."""
    top = tmp_path / "shop"
    asset = pointer_left_in(top, "services/api/assets/banner.bin", "services/api/assets")
    with pytest.raises(lfs.PointerFile, match=r"^services/api/assets/banner.bin is a Git LFS"):
        lfs.require_content(Shell(echo=False), top, [asset.parent.parent])


def test_build_orders_targets_and_rebuilds_the_base_only_when_it_changed(shop, engine):
    work, _, env, prefix = shop
    built = inv(work, env, "build")
    assert built.returncode == 0, built.stderr[-2000:]
    lines = built.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["base", "api", "worker", "migrate"]
    base = image_id(engine, f"{prefix}/base:latest-build")

    again = inv(work, env, "build-api")
    assert again.returncode == 0, again.stderr[-2000:]
    assert image_id(engine, f"{prefix}/base:latest-build") == base  # unchanged: not rebuilt

    common = work / "services/base/common.py"
    common.write_text(common.read_text().replace('"1"', '"2"'))
    git(work, "commit", "-qam", "base: version 2")
    changed = inv(work, env, "build-api")
    assert changed.returncode == 0, changed.stderr[-2000:]
    assert changed.stdout.splitlines()[0].startswith("base:")  # base first
    new_base = engine.images.get(f"{prefix}/base:latest-build")
    assert new_base.id != base
    api = engine.images.get(f"{prefix}/api:latest-build")
    base_layers = new_base.attrs["RootFS"]["Layers"]
    assert api.attrs["RootFS"]["Layers"][: len(base_layers)] == base_layers  # FROM the new base


def test_nox_integration_runs_the_stack_from_config_alone(shop):
    work, _, env, _ = shop
    result = subprocess.run(
        [sys.executable, "-m", "nox", "-f", str(work / "noxfile.py"), "-s", "integration"],
        cwd=work,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "1 passed" in result.stdout + result.stderr


def test_db_migrate_stops_at_a_failing_file_and_clean_storage_needs_a_set(shop):
    work, _, env, _ = shop
    (work / "var/uploads").mkdir(parents=True, exist_ok=True)
    (work / "var/uploads/receipt.txt").write_text("paid")

    dry = inv(work, env, "--dry", "db.migrate")
    assert dry.returncode == 0 and "would apply 0003_broken.sql" in dry.stdout
    assert not (work / "var/shop.db").exists()

    failed = inv(work, env, "db.migrate")
    assert failed.returncode == 1
    assert "0003_broken.sql" in failed.stderr and "stays at version 2" in failed.stderr
    db = sqlite3.connect(work / "var/shop.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"orders"}  # the failing file's CREATE TABLE audit was rolled back
    db.close()

    again = inv(work, env, "db.migrate")  # with a database: a backup set first
    assert again.returncode == 1 and "backup set" in again.stderr
    status = json.loads(inv(work, env, "db.status", "--json").stdout)
    assert status["after"] == 2 and status["pending"] == ["0003_broken.sql"]

    refused = inv(work, env, "clean-storage", "--yes")  # the migrate sets hold no uploads
    assert refused.returncode == 1 and "no backup set" in refused.stderr
    assert inv(work, env, "backup").returncode == 0
    no_yes = inv(work, env, "clean-storage")
    assert no_yes.returncode == 1 and "--yes" in no_yes.stderr
    dry_clean = inv(work, env, "--dry", "clean-storage")
    assert dry_clean.returncode == 0 and (work / "var/uploads/receipt.txt").exists()
    cleaned = inv(work, env, "clean-storage", "--yes")
    assert cleaned.returncode == 0, cleaned.stderr
    assert not (work / "var/shop.db").exists() and not any((work / "var/uploads").iterdir())
    set_id = cleaned.stdout.split("--id ")[1].split("`")[0]
    restored = inv(work, env, "restore", "--yes", "--id", set_id)
    assert restored.returncode == 0, restored.stderr
    assert (work / "var/uploads/receipt.txt").read_text() == "paid"
    db = sqlite3.connect(work / "var/shop.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    db.close()


def test_push_builds_the_api_from_the_pushed_base_by_digest(shop):
    work, _, env, prefix = shop
    pushed = inv(work, env, "push", "--target", "api")
    assert pushed.returncode == 0, pushed.stderr[-2000:]
    lines = [line for line in pushed.stdout.splitlines() if ": pushed " in line]
    assert [line.split(":")[0] for line in lines] == ["base", "api"]
    base_ref = lines[0].split(": pushed ")[1].split()[0]
    assert base_ref.startswith(f"{prefix}/base@sha256:")
    assert f"base=docker-image://{base_ref}" in pushed.stderr  # the api's build command


@pytest.fixture
def shop_clone(shop, engine, tmp_path):
    """A clone of the shop with a bare remote of its own (LFS objects too), its own image
    prefix and compose project, so it can be released or run beside the module's checkout."""
    _, remote, env, _ = shop
    own = tmp_path / "remote.git"
    shutil.copytree(remote, own)
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", own.as_uri(), str(clone))
    prefix = f"127.0.0.1:5000/shop-{uuid.uuid4().hex[:8]}"
    env = {**env, "SHOP_REGISTRY": prefix, "SHOP_PROJECT": f"shop{uuid.uuid4().hex[:8]}"}
    yield clone, own, env
    remove_images(engine, prefix)


def test_release_tags_each_image_with_plain_versions_at_its_staged_digest(shop_clone, registry):
    clone, remote, env = shop_clone
    address, _ = registry
    env = {**env, **IDENTITY, "SHOP_REGISTRY": f"{address}/shop"}
    released = inv(clone, env, "release", "--bump", "minor")
    assert released.returncode == 0, released.stdout[-2000:] + released.stderr[-3000:]
    assert git(remote, "tag", "--list") == "v0.2.0"
    commit = git(clone, "rev-parse", "HEAD")
    assert git(remote, "rev-parse", "main") == commit
    for name in ("api", "worker"):
        repository = f"{address}/shop/{name}"
        tags = tags_of(address, f"shop/{name}")
        staging = f"{name}-release-{commit}"
        assert set(tags) == {"0.2.0", "0.2", "0", staging}, tags
        (held,) = {tags["0.2.0"], tags["0.2"], tags["0"]}
        assert held == tags[staging]  # promotion checks each tag holds the verified digest
        promoted = ", ".join(f"{repository}:{t}" for t in ("0.2.0", "0.2", "0"))
        assert f"{name}: {repository}@{tags[staging]} tagged {promoted}" in released.stdout
        labels = labels_at(f"{repository}:0.2.0")
        assert labels["org.opencontainers.image.version"] == "0.2.0"
        assert labels["org.opencontainers.image.revision"] == commit
    assert tags_of(address, "shop/migrate") == {}  # not a release target


def compose_container(engine, project: str, service: str):
    (container,) = engine.containers.list(
        filters={"label": [f"com.docker.compose.project={project}",
                           f"com.docker.compose.service={service}"]}
    )  # fmt: skip
    return container


def in_api(engine, project: str, code: str) -> str:
    code, output = run_in(compose_container(engine, project, "api"), ["python3", "-c", code])
    assert code == 0, output
    return output


SCHEMA = (
    "import sqlite3; db = sqlite3.connect('/data/orders.db'); "
    "print(db.execute('PRAGMA user_version').fetchone()[0], sorted(r[0] for r in "
    "db.execute(\"SELECT name FROM sqlite_master WHERE type='table'\")), "
    "db.execute('SELECT note FROM keep').fetchall())"
)


def test_db_migrate_in_a_service_backs_up_first_and_stops_at_the_failing_file(shop_clone, engine):
    clone, _, env = shop_clone
    pyproject = clone / "pyproject.toml"
    text = pyproject.read_text().replace('sqlite = "var/shop.db"', 'sqlite = "api:/data/orders.db"')
    text = text.replace('sqlite = ["var/shop.db"]', 'sqlite = ["api:/data/orders.db"]')
    pyproject.write_text(text.replace('files = ["var/uploads"]', "files = []"))
    project = env["SHOP_PROJECT"]
    up = inv(clone, env, "up", "--build")
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        in_api(engine, project, "import sqlite3; db = sqlite3.connect('/data/orders.db'); "
               "db.execute('CREATE TABLE keep (note TEXT)'); "
               "db.execute(\"INSERT INTO keep VALUES ('before')\"); db.commit()")  # fmt: skip

        failed = inv(clone, env, "db.migrate")
        assert failed.returncode == 1, failed.stderr[-2000:]
        assert "0003_broken.sql" in failed.stderr and "stays at version 2" in failed.stderr
        taken = failed.stderr.split("backup set ")[1].split()[0]
        assert failed.stderr.index(f"backup set {taken} taken") < failed.stderr.index("0003")
        assert in_api(engine, project, SCHEMA) == "2 ['keep', 'orders'] [('before',)]"
        status = json.loads(inv(clone, env, "db.status", "--json").stdout)
        assert (status["after"], status["pending"]) == (2, ["0003_broken.sql"])

        restored = inv(clone, env, "restore", "--yes", "--id", taken)  # the set taken first
        assert restored.returncode == 0, restored.stderr[-2000:]
        assert in_api(engine, project, SCHEMA) == "0 ['keep'] [('before',)]"
    finally:
        inv(clone, env, "down", "--volumes")
