"""The SBOM's packages from an image's layers: whiteouts, opaque directories, later layers
over earlier ones, and the per-layer cache keyed by digest, against layer tars made here
and a small registry on loopback serving them."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import re
import tarfile
import threading

import pytest

from buildtasks import config
from buildtasks.docker import registry, retry
from buildtasks.release import inventory, sbom
from buildtasks.runtime import Runtime

SITE = "opt/venv/lib/python3.11/site-packages"


def metadata(name: str, version: str) -> bytes:
    return f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\nA description.\n".encode()


def status(*packages: tuple[str, str]) -> bytes:
    stanzas = [f"Package: {n}\nStatus: install ok installed\nArchitecture: amd64\nVersion: {v}\n"
               for n, v in packages]  # fmt: skip
    return "\n".join(stanzas).encode()


def dist(name: str, version: str) -> tuple[str, bytes]:
    return f"{SITE}/{name}-{version}.dist-info/METADATA", metadata(name, version)


def layer_tar(*entries, compress: bool = True) -> bytes:
    """A layer: (path, bytes) a file, (path, None) a directory, (path, "->target") a
    symbolic link, (path, "=>target") a hard link."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path, body in entries:
            info = tarfile.TarInfo(path)
            if body is None:
                info.type = tarfile.DIRTYPE
            elif isinstance(body, str):
                info.type = tarfile.SYMTYPE if body.startswith("->") else tarfile.LNKTYPE
                info.linkname = body[2:]
            else:
                info.size = len(body)
            tar.addfile(info, io.BytesIO(body) if isinstance(body, bytes) else None)
    return gzip.compress(buffer.getvalue()) if compress else buffer.getvalue()


def image(*layers: bytes) -> sbom.Found:
    return sbom.merge(sbom.layer(io.BytesIO(blob)) for blob in layers)


def python(found: sbom.Found) -> list[tuple[str, str]]:
    return [(p["name"], p["version"]) for p in sbom.python_packages(found)]


def test_a_whiteout_deletes_a_distribution_from_the_layers_below():
    base = layer_tar((SITE, None), dist("grpcio", "1.60.0"), dist("redis", "5.2.1"))
    upgrade = layer_tar((f"{SITE}/.wh.grpcio-1.60.0.dist-info", b""), dist("grpcio", "1.85.1"))
    assert python(image(base, upgrade)) == [("grpcio", "1.85.1"), ("redis", "5.2.1")]
    # a whiteout only reaches the layers below it: what its own layer writes stays
    same = layer_tar(dist("grpcio", "1.60.0"), (f"{SITE}/.wh.grpcio-1.60.0.dist-info", b""))
    assert python(image(same)) == [("grpcio", "1.60.0")]


def test_a_whiteout_of_a_whole_environment_removes_every_distribution_in_it():
    base = layer_tar(dist("grpcio", "1.60.0"), dist("redis", "5.2.1"))
    removed = layer_tar(("opt/.wh.venv", b""))
    assert python(image(base, removed)) == []


def test_an_opaque_directory_hides_the_layers_below_but_keeps_its_own_files():
    base = layer_tar(dist("grpcio", "1.60.0"), dist("redis", "5.2.1"))
    rebuilt = layer_tar((f"{SITE}/.wh..wh..opq", b""), dist("protobuf", "7.36.2"))
    assert python(image(base, rebuilt)) == [("protobuf", "7.36.2")]
    # opaque elsewhere leaves the packages directory alone
    elsewhere = layer_tar(("opt/other/.wh..wh..opq", b""))
    assert python(image(base, elsewhere)) == [("grpcio", "1.60.0"), ("redis", "5.2.1")]


def test_a_later_dpkg_status_replaces_the_earlier_one():
    base = layer_tar(("var/lib/dpkg/status", status(("bash", "5.2"), ("curl", "7.88"))))
    later = layer_tar(("var/lib/dpkg/status", status(("bash", "5.2.15"), ("tzdata", "2024a"))))
    found = image(base, later, layer_tar(("app/main.py", b"print()\n")))
    assert [(p["name"], p["version"]) for p in sbom.dpkg_packages(found)] == [
        ("bash", "5.2.15"),
        ("tzdata", "2024a"),
    ]


def test_a_link_in_place_of_the_packages_directory_takes_its_distributions_with_it():
    base = layer_tar(dist("grpcio", "1.60.0"))
    replaced = layer_tar((SITE, "->/usr/lib/python3/dist-packages"))
    assert python(image(base, replaced)) == []
    # a link at a wanted path hides the file below; a hard link to a file of its own layer
    # records what that file does
    shadowed = layer_tar((f"{SITE}/grpcio-1.60.0.dist-info/METADATA", "->/dev/null"))
    assert python(image(base, shadowed)) == []
    linked = layer_tar(
        dist("grpcio", "1.85.1"), (f"{SITE}/grpcio-1.60.0.dist-info/METADATA",
                                   f"=>{SITE}/grpcio-1.85.1.dist-info/METADATA"),
    )  # fmt: skip
    assert python(image(base, linked)) == [("grpcio", "1.85.1"), ("grpcio", "1.85.1")]


@pytest.mark.parametrize("above", ["opt/venv/lib", "opt/venv", "opt", SITE])
@pytest.mark.parametrize("replacement", ["->/usr/lib/python3", b"not a directory"])
def test_a_file_or_link_in_place_of_a_directory_above_takes_what_it_held(above, replacement):
    base = layer_tar(dist("grpcio", "1.60.0"), ("opt/other/keep.txt", b"x"))
    assert python(image(base, layer_tar((above, replacement)))) == []
    # its own layer's files under it are not taken, nor what a later layer puts back
    again = layer_tar((above, None), dist("redis", "5.2.1"))
    assert python(image(base, layer_tar((above, replacement)), again)) == [("redis", "5.2.1")]


def test_a_file_or_link_in_place_of_a_directory_above_dpkg_takes_its_status():
    base = layer_tar(("var/lib/dpkg/status", status(("bash", "5.2"))))
    for above in ("var", "var/lib", "var/lib/dpkg"):
        assert sbom.dpkg_packages(image(base, layer_tar((above, "->/usr/var")))) == []
    # a file beside it, a directory over it, a file named like it elsewhere take nothing
    for kept in [("var/lib/other", b"x"), ("var/lib", None), ("usr/var/lib", b"x")]:
        assert [p["name"] for p in sbom.dpkg_packages(image(base, layer_tar(kept)))] == ["bash"]


def test_a_metadata_hard_linked_to_a_file_outside_site_packages_is_listed():
    # uv installs from its cache by hard links: the file first, the installed link after it
    cached = "root/.cache/uv/archive-v0/abc/grpcio-1.85.1.dist-info/METADATA"
    installed = f"{SITE}/grpcio-1.85.1.dist-info/METADATA"
    read = sbom.layer(io.BytesIO(layer_tar((cached, metadata("grpcio", "1.85.1")),
                                           (installed, f"=>{cached}"))))  # fmt: skip
    assert read["files"] == {
        installed: [{"name": "grpcio", "version": "1.85.1", "location": f"/{SITE}"}]
    }  # the cache's own file is no wanted path: it is not recorded
    # a link to a file the layer did not hold (or one too big to read) records nothing
    dangling = layer_tar((installed, f"=>{cached}"))
    assert python(image(layer_tar(dist("grpcio", "1.85.1")), dangling)) == []


def test_layers_are_read_compressed_or_not_and_anything_else_is_refused():
    plain = layer_tar(("./" + dist("redis", "5.2.1")[0], metadata("redis", "5.2.1")),
                      compress=False)  # fmt: skip
    assert python(image(plain)) == [("redis", "5.2.1")]
    with pytest.raises(ValueError, match="not a readable layer"):
        sbom.layer(io.BytesIO(b"\x28\xb5\x2f\xfd" + b"zstd frames" * 100))


# The cache and the registry reads, against a registry on loopback serving blobs and
# manifests by digest (and counting what it is asked for).


def digest_of(body: bytes) -> str:
    return f"sha256:{hashlib.sha256(body).hexdigest()}"


class Blobs:
    def __init__(self):
        self.content: dict[str, bytes] = {}
        self.asked: list[str] = []
        served = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                digest = self.path.rpartition("/")[2]
                served.asked.append(digest)
                body = served.content.get(digest)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.repository = f"127.0.0.1:{self.server.server_address[1]}/app"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, body: bytes, served_as: bytes | None = None) -> str:
        digest = digest_of(body)
        self.content[digest] = body if served_as is None else served_as
        return digest

    def image(self, *layers: str) -> str:
        kind = "application/vnd.oci.image.layer.v1.tar+gzip"
        manifest = {
            "schemaVersion": 2,
            "mediaType": registry.IMAGE_TYPES[0],
            "config": {"digest": digest_of(b"{}"), "size": 2},
            "layers": [{"mediaType": kind, "digest": d, "size": 1} for d in layers],
        }
        return self.add(json.dumps(manifest).encode())


@pytest.fixture
def blobs(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    served = Blobs()
    yield served
    served.server.shutdown()
    served.server.server_close()


@pytest.fixture
def rt(tmp_path):
    return Runtime(config.parse({"image": "x"}, root=tmp_path))


POLICY = retry.Policy(retries=0, delay=0)


def test_each_distinct_layer_is_read_once_and_then_from_the_cache(blobs, rt):
    shared = blobs.add(layer_tar(dist("grpcio", "1.85.1")))
    amd64 = blobs.add(layer_tar(("var/lib/dpkg/status", status(("bash", "5.2")))))
    arm64 = blobs.add(layer_tar(("var/lib/dpkg/status", status(("zsh", "5.9")))))
    images = {"linux/amd64": blobs.image(amd64, shared), "linux/arm64": blobs.image(arm64, shared)}
    found = inventory.packages(rt, POLICY, blobs.repository, images)
    assert python(found["linux/arm64"]) == [("grpcio", "1.85.1")]
    assert [p["name"] for p in sbom.dpkg_packages(found["linux/arm64"])] == ["zsh"]
    assert sorted(d for d in blobs.asked if d in (shared, amd64, arm64)) == sorted(
        [shared, amd64, arm64]
    )
    blobs.asked.clear()
    assert inventory.packages(rt, POLICY, blobs.repository, images) == found
    assert set(blobs.asked) == set(images.values())  # the manifests only


@pytest.mark.parametrize("damage", [
    lambda text: text[: len(text) // 2],  # cut short
    lambda text: "not json",
    lambda text: text.replace(inventory.FORMAT, "0"),  # recorded another way
    lambda text: text.replace('"format": "', '"format": 1, "was": "'),  # before FORMAT was one
    lambda text: text.replace('"removed": []', '"removed": [7]'),
    lambda text: text.replace('"files": {', '"files": {"etc/passwd": [], '),  # not read
    lambda text: text.replace('"location"', '"where"'),
    # each file's own shape: a dpkg package where a distribution is, and the other way
    lambda text: re.sub(r'"location": "[^"]*"', '"arch": "amd64"', text),
    lambda text: text.replace('"arch"', '"location"'),
])  # fmt: skip
def test_a_damaged_cache_entry_is_ignored_and_read_again(blobs, rt, damage):
    digest = blobs.add(
        layer_tar(dist("grpcio", "1.85.1"), ("var/lib/dpkg/status", status(("bash", "5.2"))))
    )
    entry = inventory.cache_dir() / f"{digest.removeprefix('sha256:')}.json"
    first = inventory.layer(rt, POLICY, blobs.repository, digest)
    assert json.loads(entry.read_text())["layer"] == first
    entry.write_text(damage(entry.read_text()))
    assert inventory.cached(entry, digest) is None
    assert inventory.layer(rt, POLICY, blobs.repository, digest) == first
    assert blobs.asked == [digest, digest]
    assert inventory.cached(entry, digest) == first  # rewritten whole


def test_an_entry_filed_under_another_digest_is_not_believed(blobs, rt):
    digest = blobs.add(layer_tar(dist("grpcio", "1.85.1")))
    other = blobs.add(layer_tar(dist("redis", "5.2.1")))
    inventory.layer(rt, POLICY, blobs.repository, other)
    moved = inventory.cache_dir() / f"{digest.removeprefix('sha256:')}.json"
    moved.write_text((inventory.cache_dir() / f"{other.removeprefix('sha256:')}.json").read_text())
    assert inventory.cached(moved, digest) is None
    assert python(sbom.merge([inventory.layer(rt, POLICY, blobs.repository, digest)])) == [
        ("grpcio", "1.85.1")
    ]


def test_a_blob_that_does_not_match_its_digest_is_refused_and_not_cached(blobs, rt):
    digest = blobs.add(layer_tar(dist("grpcio", "1.85.1")),
                       served_as=layer_tar(dist("grpcio", "0.0.1-evil")))  # fmt: skip
    with pytest.raises(registry.RegistryError, match="does not match its digest"):
        inventory.layer(rt, POLICY, blobs.repository, digest)
    assert not inventory.cache_dir().exists()


def test_a_dry_run_reads_the_layers_but_writes_no_cache(blobs, tmp_path):
    dry = Runtime(config.parse({"image": "x"}, root=tmp_path), dry=True)
    digest = blobs.add(layer_tar(dist("grpcio", "1.85.1")))
    assert python(sbom.merge([inventory.layer(dry, POLICY, blobs.repository, digest)])) == [
        ("grpcio", "1.85.1")
    ]
    assert not inventory.cache_dir().exists()
