import fcntl
import io
import json
import subprocess
import sys
import tarfile
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buildtasks.backup import archive, manifest, redis, retention, sets
from buildtasks.backup.manifest import Artifact, InvalidManifest, Manifest
from buildtasks.backup.sets import Location, artifact_file, parse_location
from buildtasks.errors import BuildtasksError

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


def tar_of(members: list[tuple[str, str]]) -> bytes:
    """A tar of (name, type) members: "file", "dir", "symlink" or "device"."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind in members:
            member = tarfile.TarInfo(name)
            if kind == "dir":
                member.type = tarfile.DIRTYPE
            elif kind == "symlink":
                member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
            elif kind == "device":
                member.type, member.devmajor, member.devminor = tarfile.CHRTYPE, 1, 3
            else:
                member.size = 4
            tar.addfile(member, io.BytesIO(b"data") if member.isfile() else None)
    return buffer.getvalue()


EVIL = f"evil-{uuid.uuid4().hex[:8]}"
HOSTILE = {
    "dotdot": [(f"../{EVIL}", "file")],
    "absolute": [(f"/tmp/{EVIL}", "file")],
    "symlink": [("x", "symlink")],
    "device": [("x", "device")],
    # issue 10, item 4: restore crashed on these after the database was already swapped
    "deep": [("/".join(["d"] * 10_000), "file")],
    "file-then-under-it": [("x", "file"), ("x/y", "file")],
    "under-it-then-file": [("x/y", "file"), ("x", "file")],
    "twice": [("x", "file"), ("x", "file")],
    "dot-component": [("a/.", "file")],  # found by the fuzzer: checked ok, failed to extract
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_archives_are_refused_before_anything_is_written(tmp_path, kind):
    path = tmp_path / "hostile.tar"
    path.write_bytes(tar_of(HOSTILE[kind]))
    target = tmp_path / "stage" / "target"
    assert archive.check(path) != "ok"
    with pytest.raises(archive.UnsafeArchive):
        archive.extract(path, target)
    assert not target.exists()
    # where the hostile members would have landed: next to the target, and /tmp
    assert not (target / ".." / EVIL).exists() and not (tmp_path / "stage" / EVIL).exists()
    assert not (tmp_path / "/tmp" / EVIL).exists()


def test_sound_nested_archive_is_accepted(tmp_path):
    path = tmp_path / "ok.tar"
    path.write_bytes(tar_of([("a", "dir"), ("a/b", "file"), ("c/d", "file")]))
    assert archive.check(path) == "ok"
    archive.extract(path, tmp_path / "t")
    assert (tmp_path / "t/a/b").read_bytes() == b"data" and (tmp_path / "t/c/d").is_file()


MEMBER = st.tuples(
    st.text(alphabet="ab./\x00", min_size=0, max_size=12),
    st.sampled_from(["file", "dir", "symlink", "device"]),
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(members=st.lists(MEMBER, max_size=6))
def test_fuzzed_archives_give_ok_or_one_line_never_an_exception(tmp_path_factory, members):
    directory = tmp_path_factory.mktemp("fuzz")
    path = directory / "f.tar"
    try:
        path.write_bytes(tar_of(members))
    except (ValueError, tarfile.TarError):
        return  # tarfile itself refuses to write such a member
    result = archive.check(path)
    try:
        archive.extract(path, directory / "out")
    except archive.UnsafeArchive:
        assert result != "ok"
        return
    assert result == "ok"
    for extracted in (directory / "out").rglob("*"):  # nothing outside the target
        assert extracted.resolve().is_relative_to((directory / "out").resolve())


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=3000))
def test_fuzzed_bytes_as_archive(tmp_path_factory, data):
    directory = tmp_path_factory.mktemp("bytes")
    (directory / "f.tar").write_bytes(tar_of([("a", "file")])[:512] + data)
    assert isinstance(archive.check(directory / "f.tar"), str)
    try:  # extracts or refuses with one line; nothing else comes out
        archive.extract(directory / "f.tar", directory / "out")
    except archive.UnsafeArchive as exc:
        assert "\n" not in str(exc)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
FIELDS = ["id", "created", "tool", "artifacts", "schema", "partial"]
ARTIFACT_FIELDS = ["kind", "source", "file", "size", "sha256", "integrity", "details"]


def resealed(body) -> str:
    """A body with a correct checksum: what anyone who can write the manifest can make."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    import hashlib

    return json.dumps({**body, "checksum": hashlib.sha256(canonical).hexdigest()})


@settings(max_examples=500, deadline=None)
@given(
    body=st.fixed_dictionaries(
        {},
        optional={
            **dict.fromkeys(FIELDS, JSON),
            "artifacts": st.lists(
                st.fixed_dictionaries({}, optional=dict.fromkeys(ARTIFACT_FIELDS, JSON)) | JSON,
                max_size=3,
            ),
            "schema": st.sampled_from([1, 1, 2, "1", True]),
        },
    )
)
def test_fuzzed_resealed_manifests_load_or_fail_with_invalid_manifest(body):
    try:
        loaded = manifest.loads(resealed(body))
    except InvalidManifest as exc:
        assert "\n" not in str(exc)
        return
    for artifact in loaded.artifacts:  # what loads is typed as the code expects
        assert all(isinstance(getattr(artifact, f), str) for f in ("kind", "source", "file"))
        assert type(artifact.size) is int and isinstance(artifact.details, dict)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=300) | st.just("[" * 100_000))
def test_fuzzed_manifest_text(text):
    with pytest.raises(InvalidManifest):
        manifest.loads(text)


def test_a_number_where_a_file_name_belongs_is_refused():
    body = json.loads(manifest.dumps(MANIFEST))
    del body["checksum"]
    body["artifacts"][0]["file"] = 7
    with pytest.raises(InvalidManifest, match="file is int"):
        manifest.loads(resealed(body))


def test_the_directory_lock_waits_then_fails_with_one_line(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
         str(tmp_path / sets.LOCK)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        busy = pytest.raises(sets.DirectoryBusy, match="held by another backup")
        with busy, sets.locked(tmp_path, wait=0.3):
            pass
    finally:
        holder.kill()
        holder.wait()
    with (
        sets.locked(tmp_path, wait=0.3),
        sets.locked(tmp_path, wait=0),  # re-entrant within one process
        open(tmp_path / sets.LOCK) as other,
        pytest.raises(BlockingIOError),
    ):
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)


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


def test_a_set_is_named_by_its_id_or_a_prefix_of_one_id_and_the_newest_full_by_default():
    ids = ["20260102T000000Z-b", "20260102T000000Z-a", "20260101T000000Z-c"]  # newest first
    full = {"20260102T000000Z-a", "20260101T000000Z-c"}
    assert sets.named(ids, "", full) == "20260102T000000Z-a"  # the newest is partial
    assert sets.named(ids, "20260101", full) == "20260101T000000Z-c"
    assert sets.named(ids, "20260102T000000Z-b", full) == "20260102T000000Z-b"
    assert sets.named(ids, "2025", full) is None
    with pytest.raises(BuildtasksError, match=r"^backup id '20260102' is ambiguous off-site; "):
        sets.named(ids, "20260102", full, " off-site")
