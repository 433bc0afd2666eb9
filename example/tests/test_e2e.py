"""End-to-end tests of the example stack, run by `nox -s integration` (on the host, or with
`-- --in-container` inside the dev image on the stack's network), with the endpoints of the
freshly started stack in BUILDTASKS_<SERVICE>_<PORT>. They speak only HTTP and gRPC."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

API = os.environ.get("BUILDTASKS_API_8000", "")
GRPC = os.environ.get("BUILDTASKS_API_50051", "")

pytestmark = pytest.mark.skipif(not API, reason="run through `nox -s integration`")


def call(method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://{API}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_done(job_id: str, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, job = call("GET", f"/jobs/{job_id}")
        assert status == 200
        if job["status"] == "done":
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.2)


def test_health_reports_database_redis_and_storage():
    status, body = call("GET", "/health")
    assert status == 200
    assert body["status"] == "ok"
    assert body["queue"]["kind"] == "redis" and body["queue"]["ok"]
    assert body["database"]["ok"] and body["storage"]["ok"]


def test_worker_completes_a_job_into_sqlite_and_files():
    status, created = call("POST", "/jobs", {"text": "the worker counts these five"})
    assert status == 201
    job = wait_done(created["id"])  # the status comes from the SQLite row
    assert job["result"] == {"words": 5, "characters": 28}
    status, on_disk = call("GET", f"/jobs/{created['id']}/result")  # the worker's result file
    assert status == 200 and on_disk == {"words": 5, "characters": 28}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """The example's gRPC code: the image's own (in the dev image) or generated here by
    buildtasks' generator (on the host, where generated code is never committed)."""
    try:
        import jobsvc.gen.jobs.v1.jobs_pb2  # noqa: F401

        return
    except ImportError:
        pass
    from buildtasks import proto
    from buildtasks.shell import Shell

    package = tmp_path_factory.mktemp("gen") / "jobsvc"
    package.mkdir()
    (package / "__init__.py").write_text("")
    specs = Path(__file__).resolve().parent.parent / "specs"
    proto.generate(Shell(echo=False), proto.ProtoOptions(src=specs, out=package / "gen"))
    sys.path.insert(0, str(package.parent))


def test_grpc_get_returns_the_job(generated):
    import grpc
    from jobsvc.gen.common.v1 import status_pb2
    from jobsvc.gen.jobs.v1 import jobs_pb2, jobs_pb2_grpc

    _, created = call("POST", "/jobs", {"text": "grpc sees this"})
    wait_done(created["id"])
    with grpc.insecure_channel(GRPC) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        job = stub.Get(jobs_pb2.GetRequest(id=created["id"]), timeout=10, wait_for_ready=True)
    assert job.status == status_pb2.JOB_STATUS_DONE
    assert job.words == 3
