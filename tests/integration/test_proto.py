"""`inv proto`: generation, imports, drift check, atomicity, and gRPC end to end."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli
from tests.unit.test_proto import write_specs

pytestmark = pytest.mark.integration


def proto_project(tmp_path: Path) -> Path:
    write_specs(tmp_path / "specs")
    (tmp_path / "app").mkdir()
    (tmp_path / "app/__init__.py").write_text("")
    (tmp_path / "pyproject.toml").write_text(
        '[tool.buildtasks]\nimage = "x"\n[tool.buildtasks.proto]\nsrc = "specs"\nout = "app/gen"\n'
    )
    return tmp_path


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_generated_tree_imports_in_a_fresh_interpreter(tmp_path):
    project = proto_project(tmp_path)
    result = run_cli(["buildtasks", "proto"], cwd=project)
    assert result.returncode == 0, result.stderr
    assert "proto: generated 20 files in" in result.stdout
    modules = sorted(
        "app.gen." + ".".join(p.relative_to(project / "app/gen").with_suffix("").parts)
        for p in (project / "app/gen").rglob("*_pb2*.py")
    )
    assert len(modules) == 8
    code = "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)\nprint('ok')"
    imported = subprocess.run(
        [sys.executable, "-c", code, *modules], cwd=project, capture_output=True, text=True
    )
    assert imported.stdout.strip() == "ok", imported.stderr
    again = run_cli(["buildtasks", "proto"], cwd=project)
    assert again.stdout.strip() == f"proto: up to date (20 files in {project / 'app/gen'})"


def test_check_passes_on_fresh_output_and_fails_after_a_spec_edit(tmp_path):
    project = proto_project(tmp_path)
    assert run_cli(["buildtasks", "proto"], cwd=project).returncode == 0
    ok = run_cli(["buildtasks", "proto", "--check"], cwd=project)
    assert ok.returncode == 0, ok.stderr
    spec = project / "specs/money/amount.proto"
    spec.write_text(
        spec.read_text().replace("int64 cents = 1;", "int64 cents = 1; string cur = 2;")
    )
    drift = run_cli(["buildtasks", "proto", "--check"], cwd=project)
    assert drift.returncode == 1
    assert "differs from the specs (2 files):\n  money/amount_pb2.py\n  money/amount_pb2.pyi\n" in (
        drift.stderr
    )


def test_syntax_error_reports_file_and_line_and_keeps_previous_output(tmp_path):
    project = proto_project(tmp_path)
    assert run_cli(["buildtasks", "proto"], cwd=project).returncode == 0
    before = tree_digest(project / "app/gen")
    (project / "specs/money/amount.proto").write_text(
        'syntax = "proto3";\nmessage Amount {\n  int64\n'
    )
    broken = run_cli(["buildtasks", "proto"], cwd=project)
    assert broken.returncode == 1
    assert "money/amount.proto:4:1:" in broken.stderr
    assert "error: protoc rejected the specs" in broken.stderr
    assert tree_digest(project / "app/gen") == before
    assert sorted(p.name for p in (project / "app").iterdir()) == ["__init__.py", "gen"]


def test_clean_removes_only_generated_files(tmp_path):
    project = proto_project(tmp_path)
    assert run_cli(["buildtasks", "proto"], cwd=project).returncode == 0
    result = run_cli(["buildtasks", "proto.clean"], cwd=project)
    assert result.stdout.strip() == f"proto: removed 21 files from {project / 'app/gen'}"
    assert not (project / "app/gen").exists()
    assert (project / "app/__init__.py").exists()


def test_foreign_file_in_out_is_never_deleted(tmp_path):
    project = proto_project(tmp_path)
    (project / "app/gen").mkdir()
    (project / "app/gen/handwritten.py").write_text("x = 1\n")
    result = run_cli(["buildtasks", "proto"], cwd=project)
    assert result.returncode == 2
    assert "holds files buildtasks did not generate (handwritten.py)" in result.stderr
    assert (project / "app/gen/handwritten.py").read_text() == "x = 1\n"


@pytest.fixture
def example_gen(tmp_path):
    """The example's generated code importable as jobsvc.gen (generated into a copy)."""
    shutil.copytree(
        REPO / "example/src/jobsvc", tmp_path / "jobsvc", ignore=shutil.ignore_patterns("gen")
    )
    from buildtasks import proto

    proto.generate(
        proto.Shell(echo=False),
        proto.ProtoOptions(src=REPO / "example/specs", out=tmp_path / "jobsvc/gen"),
    )
    sys.path.insert(0, str(tmp_path))
    for name in [m for m in sys.modules if m == "jobsvc" or m.startswith("jobsvc.")]:
        del sys.modules[name]
    yield tmp_path
    sys.path.remove(str(tmp_path))


def test_grpc_round_trip_unary_and_streaming(example_gen, tmp_path):
    import grpc
    from jobsvc.gen.common.v1 import status_pb2
    from jobsvc.gen.jobs.v1 import jobs_pb2, jobs_pb2_grpc
    from jobsvc.grpc_service import start
    from jobsvc.queue import StoreQueue
    from jobsvc.store import Store
    from jobsvc.worker import work

    store = Store(tmp_path / "data/jobs.db")
    queue = StoreQueue(store)
    server, port = start(store, queue, "127.0.0.1:0")
    stop = threading.Event()
    worker = threading.Thread(target=work, args=(store, queue, tmp_path / "data/jobs", stop.is_set))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = jobs_pb2_grpc.JobServiceStub(channel)
            job = stub.Submit(jobs_pb2.SubmitRequest(text="three small words"), timeout=5)
            assert job.status == status_pb2.JOB_STATUS_QUEUED
            assert stub.Get(jobs_pb2.GetRequest(id=job.id), timeout=5).text == "three small words"
            worker.start()
            states = [m.status for m in stub.Watch(jobs_pb2.WatchRequest(id=job.id), timeout=10)]
            assert states[-1] == status_pb2.JOB_STATUS_DONE
            done = stub.Get(jobs_pb2.GetRequest(id=job.id), timeout=5)
            assert done.words == 3 and done.updated.ToNanoseconds() >= done.created.ToNanoseconds()
            with pytest.raises(grpc.RpcError) as missing:
                stub.Get(jobs_pb2.GetRequest(id="nope"), timeout=5)
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        stop.set()
        server.stop(0)
        if worker.is_alive():
            worker.join(5)


def test_prod_image_answers_grpc_on_loopback(engine, registry_prefix, example_gen):
    import grpc
    from jobsvc.gen.jobs.v1 import jobs_pb2, jobs_pb2_grpc

    result = run_cli(["invoke", "build-prod"], env={"REGISTRY": registry_prefix})
    assert result.returncode == 0, result.stderr[-2000:]
    container = engine.containers.run(
        f"{registry_prefix}/buildtasks/jobsvc:prod",
        detach=True,
        ports={"50051/tcp": ("127.0.0.1", None)},
    )
    try:
        container.reload()
        binding = container.ports["50051/tcp"][0]
        assert binding["HostIp"] == "127.0.0.1"
        with grpc.insecure_channel(f"127.0.0.1:{binding['HostPort']}") as channel:
            stub = jobs_pb2_grpc.JobServiceStub(channel)
            request = jobs_pb2.SubmitRequest(text="hello from the test")
            # wait_for_ready: docker-proxy accepts connections before the server listens.
            job = stub.Submit(request, timeout=30, wait_for_ready=True)
            deadline = time.monotonic() + 20
            while (got := stub.Get(jobs_pb2.GetRequest(id=job.id), timeout=5)).words != 4:
                assert time.monotonic() < deadline, got
                time.sleep(0.2)
    finally:
        container.remove(force=True, v=True)
