import json
import os
from types import SimpleNamespace

import pytest

from buildtasks.docker import builder, builds
from buildtasks.docker.build import OCI, BuildPlan
from buildtasks.docker.builds import BuildRecord
from buildtasks.docker.checks import ImageFacts
from buildtasks.docker.prune import (
    CacheLayoutError,
    Guards,
    ImageInfo,
    Item,
    align_sizes,
    chain_ids,
    image_items,
    orphan_blobs,
    plan_images,
    repository_of,
)

REPO = "reg:5000/app"
BASE = ("sha256:base",)


def img(id_: str, *tags: str) -> ImageInfo:
    return ImageInfo(f"sha256:{id_}", tuple(tags), (*BASE, f"sha256:own-{id_}"))


def rec(id_: str, built: int, target="prod", revision="") -> BuildRecord:
    return BuildRecord((f"sha256:{id_}",), target, revision or f"commit-{id_}", built)


def removed(plan) -> list[str]:
    return [i.id.removeprefix("sha256:") for i in plan.remove]


def test_every_build_sharing_one_created_time_still_keeps_the_newest_build():
    # The old code ordered by the `created` label (the commit time, equal for every build of
    # a commit) and let images in use take keep_images slots: it untagged the newest :prod.
    images = [img("c", f"{REPO}:prod-3"), img("a", f"{REPO}:prod-1"), img("b", f"{REPO}:prod-2")]
    records = [rec("a", 1), rec("b", 2), rec("c", 3)]
    assert removed(plan_images(images, records, Guards(REPO), keep=1)) == ["b", "a"]
    used = Guards(REPO, in_use={"sha256:c": "db"})
    plan = plan_images(images, records, used, keep=1)
    assert removed(plan) == ["a"]
    assert [k.reason for k in plan.kept] == [
        "used by container db",
        "one of the 1 newest builds of prod",
    ]


def test_plan_is_the_same_whatever_order_the_engine_lists_images_in():
    images = [img(x, f"{REPO}:t-{x}") for x in "abcdef"]
    records = [rec(x, 5) for x in "abcdef"]  # a tie on build time breaks on the id
    plans = {
        tuple(removed(plan_images(list(p), records, Guards(REPO), 2)))
        for p in (images, images[::-1], images[2:] + images[:2])
    }
    assert plans == {("c", "d", "e", "f")}


def test_head_release_tag_floating_and_foreign_tags_protect():
    images = [
        img("h", f"{REPO}:prod-h"),
        img("r", f"{REPO}:prod-r"),
        img("f", f"{REPO}:prod"),
        img("o", f"{REPO}:prod-o", "other/tool:1"),
        img("s", f"{REPO}:prod-s"),
    ]
    records = [
        rec("h", 1, revision="HEAD1"),
        rec("r", 2, revision="REL"),
        rec("f", 3),
        rec("o", 4),
        rec("s", 5),
    ]
    guards = Guards(
        REPO, head="HEAD1", release_commits={"REL": "v0.2.0"}, floating=frozenset({f"{REPO}:prod"})
    )
    plan = plan_images(images, records, guards, keep=0)
    assert removed(plan) == ["s"]
    assert sorted(k.reason for k in plan.kept) == [
        "also tagged other/tool:1",
        "built from HEAD",
        "built from git tag v0.2.0",
        f"carries the floating tag {REPO}:prod",
    ]


def test_an_image_built_from_ours_protects_it_and_is_never_ours():
    ours = img("a", f"{REPO}:prod-a")
    # FROM ours + LABEL only: same layers, other id, inherits every io.buildtasks label.
    label_only = ImageInfo("sha256:d1", ("derived:1",), ours.layers)
    plan = plan_images([ours, label_only], [rec("a", 1)], Guards(REPO), keep=0)
    assert removed(plan) == [] and plan.kept[0].reason == "image derived:1 is built from it"
    child = ImageInfo("sha256:d2", (), (*ours.layers, "sha256:more"))
    assert (
        plan_images([ours, child], [rec("a", 1)], Guards(REPO), 0)
        .kept[0]
        .reason.startswith("image sha256:d2")
    )
    # Two of the project's builds with the same content are siblings, not parent and child.
    twin = ImageInfo("sha256:t", (f"{REPO}:prod-t",), ours.layers)
    assert removed(plan_images([ours, twin], [rec("a", 1), rec("t", 2)], Guards(REPO), 1)) == ["a"]


def test_unrecorded_images_are_not_candidates_and_untagged_builds_go():
    images = [img("x", f"{REPO}:prod-x"), img("u")]
    plan = plan_images(images, [rec("u", 1)], Guards(REPO), keep=3)
    assert removed(plan) == ["u"]
    assert [(k.image, k.reason) for k in plan.kept] == [
        (f"{REPO}:prod-x", "not built by this checkout (no build record)")
    ]


def test_estimate_counts_only_layers_no_remaining_image_holds():
    a = ImageInfo("sha256:a", (f"{REPO}:x", f"{REPO}:y"), ("l0", "l1", "l2"))
    b = ImageInfo("sha256:b", (), ("l0", "l1", "l3"))
    kept = ImageInfo("sha256:k", (), ("l0", "l4"))
    sizes = {"sha256:a": [100, 10, 1], "sha256:b": [100, 10, 5]}
    items = image_items([a, b], [a, b, kept], sizes.__getitem__)
    assert items == [
        Item("image-tag", f"{REPO}:x", 0, "sha256:a"),
        Item("image-tag", f"{REPO}:y", 10 + 1, "sha256:a"),
        Item("image", "sha256:b", 5, "sha256:b"),
    ]


def test_chain_ids_and_history_alignment():
    assert chain_ids(["sha256:a"]) == ["sha256:a"]
    assert chain_ids(["a", "b"])[1] != chain_ids(["c", "b"])[1]
    assert align_sizes([7, 0, 3], 3) == [7, 0, 3]
    assert align_sizes([7, 0, 3, 0], 2) == [7, 3]  # a LABEL entry makes no layer
    assert align_sizes([0, 3], 2) == [0, 3]
    assert repository_of("reg:5000/app:v1") == "reg:5000/app"
    assert repository_of("reg:5000/app") == "reg:5000/app"


def test_build_records_round_trip_and_a_rebuild_moves_to_now(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    root = tmp_path / "project"
    meta = {"containerimage.digest": "sha256:m", "containerimage.config.digest": "sha256:c"}
    builds.record(root, "prod", "abc", meta)
    builds.record(root, "dev", "abc", {"containerimage.digest": "sha256:other"})
    builds.record(root, "prod", "def", meta)
    records = builds.load(root)
    assert [(r.ids, r.target, r.revision) for r in records] == [
        (("sha256:other",), "dev", "abc"),
        (("sha256:m", "sha256:c"), "prod", "def"),
    ]
    builds.forget(root, ["sha256:c"])
    assert [r.target for r in builds.load(root)] == ["dev"]
    assert builds.state_file(root).is_relative_to(tmp_path / "state")  # not into the tree


def digest_of(name: str) -> str:
    return "sha256:" + name * 64


def cache_export(tmp_path, index: object, *, age: float = 3600) -> dict[str, str]:
    """An OCI layout as `--cache-to type=local` writes it; every blob is age seconds old."""
    blobs = tmp_path / "blobs/sha256"
    blobs.mkdir(parents=True)
    (tmp_path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    names = {}

    def blob(name: str, body: bytes) -> str:
        (blobs / (name * 64)).write_bytes(body)
        names[name] = digest_of(name)
        return names[name]

    layer = blob("a", b"layer")
    config = blob("c", b"{}")
    blob("e", json.dumps({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"digest": config, "mediaType": "application/vnd.buildkit.cacheconfig.v0"},
        "layers": [{"digest": layer, "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip"}],
    }).encode())  # fmt: skip
    blob("1", b"stale layer")
    blob("2", b"stale manifest")
    for path in blobs.iterdir():
        os.utime(path, (path.stat().st_atime, path.stat().st_mtime - age))
    (tmp_path / "index.json").write_text(index if isinstance(index, str) else json.dumps(index))
    return names


GOOD_INDEX = {
    "manifests": [
        {"digest": digest_of("e"), "mediaType": "application/vnd.oci.image.index.v1+json"}
    ]
}


def test_orphan_blobs_are_the_unreferenced_ones(tmp_path):
    cache_export(tmp_path, GOOD_INDEX)
    assert [(i.name, i.size) for i in orphan_blobs(tmp_path)] == [
        (digest_of("1"), 11),
        (digest_of("2"), 14),
    ]


def test_fresh_blobs_stay_since_an_export_writes_them_before_its_index(tmp_path):
    cache_export(tmp_path, GOOD_INDEX, age=10)  # an export still running
    assert orphan_blobs(tmp_path) == []
    assert len(orphan_blobs(tmp_path, settle=0)) == 2


@pytest.mark.parametrize(
    "index",
    [
        "{not json",
        {},
        [1],
        {"manifests": "x"},
        {"manifests": []},
        {"manifests": [1]},
        {"manifests": [{"digest": "sha256:../../../../etc/passwd", "mediaType": "x+json"}]},
        {"manifests": [{"digest": "sha256:" + "A" * 64}]},
    ],
    ids=["invalid", "empty", "list", "string", "none", "int", "traversal", "uppercase"],
)
def test_a_malformed_index_removes_nothing_and_says_so_in_one_line(tmp_path, index):
    cache_export(tmp_path, index)
    with pytest.raises(CacheLayoutError) as error:
        orphan_blobs(tmp_path)
    assert "\n" not in str(error.value) and "nothing pruned" in str(error.value)


def test_a_digest_deeper_in_the_export_is_never_read_as_a_path(tmp_path):
    names = cache_export(tmp_path, GOOD_INDEX)
    manifest = tmp_path / "blobs/sha256" / names["e"].removeprefix("sha256:")
    manifest.write_text(json.dumps({"layers": [{"digest": "sha256:../../../etc/passwd"}]}))
    with pytest.raises(CacheLayoutError, match="malformed digest"):
        orphan_blobs(tmp_path)


def test_a_directory_without_oci_layout_is_not_a_cache_export(tmp_path):
    cache_export(tmp_path, GOOD_INDEX)
    (tmp_path / "oci-layout").unlink()
    with pytest.raises(CacheLayoutError, match="no oci-layout file"):
        orphan_blobs(tmp_path)


def test_an_unwritable_state_directory_does_not_fail_the_build(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "file"))
    assert builds.record(tmp_path, "prod", "", {"containerimage.digest": "sha256:m"}) is False
    assert builds.load(tmp_path) == []


def test_a_pushed_build_is_recorded_for_prune(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    plan = BuildPlan(
        target="prod", context=tmp_path, dockerfile=tmp_path / "Dockerfile", stage="",
        tags=("reg:5000/app:prod",), labels={f"{OCI}.revision": "abc"}, build_args={},
        secrets=(), contexts={}, platforms=("linux/amd64",), cache_from=(), cache_to=(),
        push=True, no_cache=False,
    )  # fmt: skip
    rt = SimpleNamespace(settings=SimpleNamespace(root=tmp_path))  # a push asks no engine
    builder._finish(rt, plan, {"containerimage.digest": "sha256:idx"}, check=True)
    assert [(r.ids, r.target, r.revision) for r in builds.load(tmp_path)] == [
        (("sha256:idx",), "prod", "abc")
    ]


def test_a_rebuilt_image_reuses_the_facts_recorded_for_its_id(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    facts = ImageFacts("reg/app:prod", "1000", ("CMD", "true"), 10, 30)
    metadata = {"containerimage.digest": "sha256:m", "containerimage.config.digest": "sha256:c"}
    assert builds.known_facts(tmp_path, metadata) is None  # never built: inspect
    assert builds.record(tmp_path, "prod", "abc", metadata, facts)
    assert builds.known_facts(tmp_path, metadata) == facts
    assert builds.known_facts(tmp_path, {"containerimage.digest": "sha256:other"}) is None


def test_facts_of_another_shape_are_inspected_again(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    builds.record(tmp_path, "prod", "abc", {"containerimage.digest": "sha256:m"})
    path = builds.state_file(tmp_path)
    entries = json.loads(path.read_text())
    entries[0]["facts"] = {"ref": "x", "owner": "root"}  # not what this version writes
    path.write_text(json.dumps(entries))
    assert builds.known_facts(tmp_path, {"containerimage.digest": "sha256:m"}) is None
    whole = {"ref": "x", "user": "1000", "healthcheck": ["CMD", "true"], "size": 1}
    for damaged in ({**whole, "uncompressed_size": "2"}, whole):  # a wrong type, a field short
        entries[0]["facts"] = damaged
        path.write_text(json.dumps(entries))
        assert builds.known_facts(tmp_path, {"containerimage.digest": "sha256:m"}) is None
