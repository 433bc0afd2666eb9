"""What the registry answers, read as untrusted input; messages that name real fixes."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import urllib.parse
import urllib.request

import pytest

from buildtasks.docker import retry
from buildtasks.docker.registry import (
    RegistryError,
    _api_base,
    _SameOriginCredentials,
    index_platforms,
    is_loopback,
    platform_name,
    read_blob,
    remove_tag,
    split_reference,
)
from buildtasks.errors import CommandError
from buildtasks.release.attest import _http
from buildtasks.shell import Shell


def entry(os: str, arch: str, variant: str = "", attestation: bool = False) -> dict:
    platform = {"os": os, "architecture": arch, **({"variant": variant} if variant else {})}
    annotations = {"vnd.docker.reference.type": "attestation-manifest"} if attestation else {}
    return {"digest": "sha256:" + "a" * 64, "platform": platform, "annotations": annotations}


def test_index_platforms_leave_out_attestations_and_unknown_entries():
    index = {
        "manifests": [
            entry("linux", "arm64"),
            entry("linux", "arm", "v7"),
            entry("unknown", "unknown", attestation=True),
            entry("linux", "amd64"),
        ]
    }
    assert index_platforms(index) == ["linux/amd64", "linux/arm/v7", "linux/arm64"]
    assert index_platforms({"manifests": None}) == []


def test_an_image_config_names_its_platform():
    assert platform_name({"os": "linux", "architecture": "amd64"}, "x") == "linux/amd64"
    config = {"os": "linux", "architecture": "arm64", "variant": "v8"}
    assert platform_name(config, "x") == "linux/arm64/v8"


@pytest.mark.parametrize(
    "fields",
    [
        {"os": "linux"},
        {"os": "linux", "architecture": 5},
        {"os": "linux", "architecture": "../../etc"},
        {"os": "linux", "architecture": "amd64", "variant": "v8\nFAKE"},
    ],
)
def test_a_platform_the_registry_made_up_is_refused(fields):
    with pytest.raises(RegistryError, match="names no valid platform"):
        platform_name(fields, "127.0.0.1:5000/app@sha256:1")
    with pytest.raises(RegistryError):
        index_platforms({"manifests": [{"platform": fields}]})


@pytest.mark.parametrize(
    ("reference", "parts"),
    [
        ("127.0.0.1:5000/team/app:web-1a2b3c4", ("127.0.0.1:5000", "team/app", "web-1a2b3c4")),
        ("localhost:5000/app:1.2", ("localhost:5000", "app", "1.2")),
        ("registry.example.com/a/b/c:x", ("registry.example.com", "a/b/c", "x")),
        ("app:1", ("docker.io", "library/app", "1")),
        ("me/app:1", ("docker.io", "me/app", "1")),
    ],
)
def test_split_reference(reference, parts):
    assert split_reference(reference) == parts


@pytest.mark.parametrize("reference", ["127.0.0.1:5000/app", "127.0.0.1:5000/app@sha256:1"])
def test_a_reference_without_a_tag_is_refused(reference):
    with pytest.raises(RegistryError, match="names no tag"):
        split_reference(reference)


def test_a_missing_docker_cli_points_at_the_engine_install_docs(tmp_path):
    shell = Shell(echo=False, env={"PATH": str(tmp_path)})
    with pytest.raises(CommandError) as raised:
        shell.run(["docker", "version"])
    assert str(raised.value) == (
        "docker: command not found; install it (https://docs.docker.com/engine/install/, "
        "with the buildx and compose plugins) or add it to PATH"
    )
    with pytest.raises(CommandError, match=r"^sqlite3: command not found; install it or add"):
        shell.run(["sqlite3", "x.db"])


# Deleting a staging tag, against a small registry speaking the distribution API over
# loopback http: it serves tags page by page and can demand a token from a realm.
D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


class Answering(http.server.BaseHTTPRequestHandler):
    """A quiet handler with one way to answer: code, body and headers (_ for -)."""

    def log_message(self, *args):
        pass

    def answer(self, code: int, body: bytes = b"", **headers: str) -> None:
        self.send_response(code)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class FakeRegistry:
    def __init__(self, tags: dict[str, str], realm_host: str = ""):
        self.tags, self.realm_host = tags, realm_host
        self.deleted: list[str] = []
        self.token_requests: list[str | None] = []  # the Authorization each token request sent
        fake = self

        class Handler(Answering):
            def allowed(self) -> bool:
                if not fake.realm_host or self.headers.get("Authorization") == "Bearer tok":
                    return True
                realm = f"http://{fake.realm_host}:{fake.port}/token"
                challenge = f'Bearer realm="{realm}",service="fake",scope="repository:app:*"'
                self.answer(401, WWW_Authenticate=challenge)
                return False

            def do_HEAD(self):
                if not self.allowed():
                    return
                digest = fake.tags.get(self.path.rpartition("/")[2])
                self.answer(200, Docker_Content_Digest=digest) if digest else self.answer(404)

            def do_GET(self):
                if self.path.startswith("/token"):
                    fake.token_requests.append(self.headers.get("Authorization"))
                    return self.answer(200, json.dumps({"token": "tok"}).encode())
                if not self.allowed():
                    return
                url = urllib.parse.urlsplit(self.path)
                names = sorted(fake.tags)
                last = urllib.parse.parse_qs(url.query).get("last", [""])[0]
                page = [n for n in names if n > last][:1]  # one tag a page
                headers = {}
                if page and page[0] != names[-1]:
                    headers["Link"] = f'<{url.path}?n=1&last={page[0]}>; rel="next"'
                self.answer(200, json.dumps({"name": "app", "tags": page}).encode(), **headers)

            def do_DELETE(self):
                if self.allowed():
                    fake.deleted.append(self.path.rpartition("/")[2])
                    self.answer(202)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def ref(self, tag: str) -> str:
        return f"127.0.0.1:{self.port}/app:{tag}"


@pytest.fixture
def fake_registry():
    servers = []

    def start(tags: dict[str, str], realm_host: str = "") -> FakeRegistry:
        servers.append(FakeRegistry(tags, realm_host))
        return servers[-1]

    yield start
    for fake in servers:
        fake.server.shutdown()
        fake.server.server_close()


def test_a_staging_tag_is_deleted_only_while_it_holds_the_recorded_digest(fake_registry):
    fake = fake_registry({"web-release-abc": D2})  # pushed over since the release recorded D1
    line = remove_tag(Shell(), fake.ref("web-release-abc"), D1)
    assert (
        line
        == f"{fake.ref('web-release-abc')} kept: it now holds {D2}, not {D1} the release pushed"
    )
    assert fake.deleted == []
    assert remove_tag(Shell(), fake.ref("web-release-abc"), D2).startswith("deleted ")
    assert fake.deleted == [D2]


def test_a_tag_sharing_the_digest_on_a_later_page_keeps_it(fake_registry):
    # Listed one a page: web-release-abc first, the sharing zz-other only on page 2.
    fake = fake_registry({"web-release-abc": D1, "x": D2, "zz-other": D1})
    line = remove_tag(Shell(), fake.ref("web-release-abc"), D1)
    assert line == f"{fake.ref('web-release-abc')} kept: tags zz-other share its digest {D1}"
    assert fake.deleted == []


@pytest.mark.parametrize(("realm_host", "sent"), [("localhost", None), ("127.0.0.1", "Basic dTpw")])
def test_the_login_goes_to_a_plain_http_realm_only_on_the_registry_host(
    fake_registry, tmp_path, monkeypatch, realm_host, sent
):
    fake = fake_registry({"web-release-abc": D1}, realm_host=realm_host)
    auths = {"auths": {f"127.0.0.1:{fake.port}": {"auth": "dTpw"}}}
    (tmp_path / "config.json").write_text(json.dumps(auths))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert remove_tag(Shell(), fake.ref("web-release-abc"), D1).startswith("deleted ")
    assert fake.token_requests and set(fake.token_requests) == {sent}


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("localhost:5000", True),
        ("127.0.0.1", True),
        ("127.0.0.1:5000", True),
        ("127.3.4.5:443", True),
        ("[::1]:5000", True),
        ("::1", True),
        ("localhost.corp.com", False),
        ("localhost.corp.com:5000", False),
        ("127.example.com", False),
        ("128.0.0.1:5000", False),
        ("[::2]:5000", False),
        ("registry.example.com", False),
        ("docker.io", False),
    ],
)
def test_loopback_is_exactly_localhost_127_slash_8_or_v6_one(host, loopback):
    assert is_loopback(host) is loopback


def test_only_a_loopback_registry_is_spoken_to_over_http():
    assert _http("localhost.corp.com/app@sha256:" + "a" * 64) == []
    assert _http("127.0.0.1:5000/app@sha256:" + "a" * 64) == ["--allow-http-registry"]
    assert _http("[::1]:5000/app:1") == ["--allow-http-registry"]
    assert _api_base("localhost.corp.com:5000") == "https://localhost.corp.com:5000/v2"
    assert _api_base("127.0.0.1:5000") == "http://127.0.0.1:5000/v2"


class Redirecting(http.server.ThreadingHTTPServer):
    """A server on address recording the Authorization of each request. With a location it
    is a registry demanding a Basic login whose blob reads answer a redirect there (a path:
    to itself, under /moved); without one, or under /moved, it serves the blob."""

    def __init__(self, address: str, location: str = ""):
        self.authorizations: list[str | None] = []
        server = self

        class Handler(Answering):
            def do_GET(self):
                server.authorizations.append(self.headers.get("Authorization"))
                if not location or self.path.startswith("/moved"):
                    return self.answer(200, BLOB)
                if not self.headers.get("Authorization"):
                    return self.answer(401, WWW_Authenticate='Basic realm="r"')
                target = location if "://" in location else f"{location}{self.path}"
                self.answer(307, Location=f"{target}?signed=1")

        super().__init__((address, 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def host(self) -> str:
        return f"{self.server_address[0]}:{self.server_address[1]}"


@pytest.fixture
def redirecting(tmp_path, monkeypatch):
    """start(address, location): a Redirecting server; one with a location is the registry
    the docker CLI holds a login for."""
    servers: list[Redirecting] = []

    def start(address: str, location: str = "") -> Redirecting:
        servers.append(Redirecting(address, location))
        if location:
            auths = {"auths": {servers[-1].host: {"auth": "dTpw"}}}
            (tmp_path / "config.json").write_text(json.dumps(auths))
            monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
        return servers[-1]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


BLOB = b"layer bytes"
BLOB_DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()


def read(registry: Redirecting) -> bytes:
    source = f"{registry.host}/app@{BLOB_DIGEST}"
    return read_blob(Shell(), retry.Policy(retries=0, delay=0), source, lambda s: s.read())


@pytest.mark.parametrize("cdn_address", ["127.0.0.2", "127.0.0.1"])  # another host; port
def test_a_blob_redirected_to_another_origin_is_read_without_our_login(redirecting, cdn_address):
    cdn = redirecting(cdn_address)
    registry = redirecting("127.0.0.1", location=f"http://{cdn.host}/blob")
    assert read(registry) == BLOB
    assert registry.authorizations == [None, "Basic dTpw"]
    assert cdn.authorizations == [None]


def test_a_redirect_within_the_registry_keeps_the_login(redirecting):
    registry = redirecting("127.0.0.1", location="/moved")
    assert read(registry) == BLOB
    assert registry.authorizations == [None, "Basic dTpw", "Basic dTpw"]


@pytest.mark.parametrize(
    ("target", "kept"),
    [
        ("https://registry.example.com/v2/b", True),
        ("https://REGISTRY.example.com:443/v2/b", True),  # the same origin, spelled otherwise
        ("http://registry.example.com/v2/b", False),  # from TLS to the clear
        ("https://registry.example.com:8443/v2/b", False),
        ("https://cdn.example.com/b", False),
    ],
)
def test_credentials_follow_a_redirect_only_to_the_same_origin(target, kept):
    sent = urllib.request.Request(
        "https://registry.example.com/v2/a", headers={"Authorization": "Bearer t", "Accept": "x"}
    )
    redirected = _SameOriginCredentials().redirect_request(sent, None, 307, "", {}, target)
    assert redirected.get_header("Authorization") == ("Bearer t" if kept else None)
    assert redirected.get_header("Accept") == "x"
