import json

from buildtasks.docker.prune import ImageInfo, Item, orphan_blobs, parse_duration, stale_tags

REPO = "reg/app"


def image(id_: str, created: str, tags=(), target="prod", repo=REPO) -> ImageInfo:
    labels = {"io.buildtasks.image": repo, "io.buildtasks.target": target} if repo else {}
    return ImageInfo(id_, tuple(tags), labels, created, 100)


def test_stale_tags_keep_newest_per_target_in_use_and_foreign():
    images = [
        image("new", "2026-11-23T10:00:00Z", ["reg/app:prod", "reg/app:prod-abc"]),
        image("old", "2026-11-22T10:00:00Z", ["reg/app:prod-old"]),
        image("used", "2026-11-21T10:00:00Z", ["reg/app:prod-used"]),
        image("dev", "2026-11-20T10:00:00Z", ["reg/app:dev"], target="dev"),
        image("foreign", "2026-11-01T10:00:00Z", ["other/app:1"], repo=""),
    ]
    assert stale_tags(images, REPO, keep=1, in_use={"used"}) == [
        Item("image-tag", "reg/app:prod-old", 100, "old")
    ]
    assert stale_tags(images, REPO, keep=0, in_use=set())[:2] == [
        Item("image-tag", "reg/app:prod", 0, "new"),
        Item("image-tag", "reg/app:prod-abc", 100, "new"),
    ]


def test_orphan_blobs_are_the_unreferenced_ones(tmp_path):
    blobs = tmp_path / "blobs/sha256"
    blobs.mkdir(parents=True)

    def blob(name: str, body: bytes) -> str:
        (blobs / name).write_bytes(body)
        return f"sha256:{name}"

    layer = blob("aa", b"layer")
    config = blob("cc", b"{}")
    manifest = blob("mm", json.dumps({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"digest": config, "mediaType": "application/vnd.buildkit.cacheconfig.v0"},
        "layers": [{"digest": layer, "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip"}],
    }).encode())  # fmt: skip
    blob("old1", b"stale layer")
    blob("old2", b"stale manifest")
    (tmp_path / "index.json").write_text(json.dumps({
        "manifests": [{"digest": manifest, "mediaType": "application/vnd.oci.image.index.v1+json"}]
    }))  # fmt: skip
    assert [(i.name, i.size) for i in orphan_blobs(tmp_path)] == [
        ("sha256:old1", 11),
        ("sha256:old2", 14),
    ]


def test_parse_duration():
    assert parse_duration("168h").total_seconds() == 168 * 3600
    assert parse_duration("7d").days == 7
