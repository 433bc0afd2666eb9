import io
import tarfile

import pytest

from buildtasks.backup import archive, manifest, redis, retention
from buildtasks.backup.manifest import Artifact, InvalidManifest, Manifest
from buildtasks.backup.sets import Location, artifact_file, parse_location

MANIFEST = Manifest(
    id="20261123T101500.000001Z",
    created="2026-11-23T10:15:00.000001+00:00",
    tool="buildtasks 0.1.0",
    artifacts=(
        Artifact("sqlite", "api:/app/data/jobs.db", "sqlite-api-app-data-jobs-db.db", 12288,
                 "ab" * 32, "ok"),
        Artifact("redis", "redis", "redis.rdb", 103, "cd" * 32, "ok", {"saves": 4}),
    ),
)  # fmt: skip


def test_manifest_round_trip():
    assert manifest.loads(manifest.dumps(MANIFEST)) == MANIFEST


def test_every_flipped_byte_invalidates_the_manifest(tmp_path):
    data = manifest.dumps(MANIFEST).encode()
    for index in range(len(data)):
        flipped = bytearray(data)
        flipped[index] ^= 0x01
        (tmp_path / "manifest.json").write_bytes(bytes(flipped))
        with pytest.raises(InvalidManifest):
            manifest.load(tmp_path)


def test_locations_and_artifact_names():
    assert parse_location("api:/app/data/jobs.db") == Location("api", "/app/data/jobs.db")
    assert parse_location("data/jobs.db") == Location("", "data/jobs.db")
    assert parse_location("C:relative") == Location("", "C:relative")
    assert parse_location("redis://db:6379/0") == Location("", "redis://db:6379/0")
    assert artifact_file("files", "api:/app/data/jobs", ".tar") == "files-api-app-data-jobs.tar"


def test_retention_keeps_newest_and_per_day_and_week():
    ids = [
        "20261120T100000.000000Z",
        "20261121T090000.000000Z",
        "20261121T180000.000000Z",
        "20261122T120000.000000Z",
        "20261123T080000.000000Z",
    ]
    assert retention.plan(ids, keep_last=3, keep_daily=0, keep_weekly=0) == (
        ["20261123T080000.000000Z", "20261122T120000.000000Z", "20261121T180000.000000Z"],
        ["20261121T090000.000000Z", "20261120T100000.000000Z"],
    )
    keep, delete = retention.plan(ids, keep_last=1, keep_daily=3, keep_weekly=0)
    assert keep == ids[::-1][:3] and delete == [
        "20261121T090000.000000Z",
        "20261120T100000.000000Z",
    ]
    keep, _ = retention.plan(ids, keep_last=0, keep_daily=0, keep_weekly=2)
    assert keep == ["20261123T080000.000000Z", "20261122T120000.000000Z"]  # weeks 47 and 48


def hostile(kind: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        member = tarfile.TarInfo({"dotdot": "../evil", "absolute": "/tmp/evil"}.get(kind, "x"))
        if kind == "symlink":
            member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif kind == "device":
            member.type, member.devmajor, member.devminor = tarfile.CHRTYPE, 1, 3
        tar.addfile(member, io.BytesIO(b"") if member.isfile() else None)
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "device"])
def test_hostile_archives_are_refused_before_anything_is_written(tmp_path, kind):
    path = tmp_path / "hostile.tar"
    path.write_bytes(hostile(kind))
    assert archive.check(path) != "ok"
    with pytest.raises(archive.UnsafeArchive):
        archive.extract(path, tmp_path / "target")
    assert not (tmp_path / "target").exists()
    assert not (tmp_path.parent / "evil").exists()


def test_archive_create_sorts_members_and_refuses_links(tmp_path):
    source = tmp_path / "jobs"
    (source / "b").mkdir(parents=True)
    (source / "b/2.txt").write_text("2")
    (source / "a.txt").write_text("1")
    assert archive.create(source, tmp_path / "out.tar") == (3, [])
    with tarfile.open(tmp_path / "out.tar") as tar:
        assert tar.getnames() == ["a.txt", "b", "b/2.txt"]
    (source / "link").symlink_to("/etc/passwd")
    with pytest.raises(archive.UnsafeArchive, match="symlinks and special files"):
        archive.create(source, tmp_path / "again.tar")


def test_redis_helpers():
    info = "# Persistence\r\nrdb_saves:3\r\nrdb_last_bgsave_status:ok\r\n"
    assert redis.parse_info(info.replace("\r", "")) == {
        "rdb_saves": "3",
        "rdb_last_bgsave_status": "ok",
    }
    assert redis.redact("redis://user:secret@db:6379/0") == "redis://***@db:6379/0"
    assert redis.redact("redis://db:6379") == "redis://db:6379"
    details = {"dir": "/data/my dir", "dbfilename": "dump.rdb", "appendonly": "yes"}
    script = redis.restore_script(details)
    assert script.startswith(
        "DIR='/data/my dir'\nDB=dump.rdb\nAOF=appendonly.aof\nAPPENDONLY=yes\n"
    )
