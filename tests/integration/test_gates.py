"""CI gates on real tools: buf breaking/lint against real git tags, typed stubs under
mypy --strict, hadolint, and generated workflows through actionlint and the workflow
schemas; on a copy of the example and on a project laid out unlike it."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_cli
from tests.integration.test_release import git, release_project

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent

# The second project: specs under protos/ (not beside the code), generated code five
# packages deep, targets named web and jobs-runner with Dockerfiles under docker/, the
# version in pyproject.toml, release tags release-X on a trunk branch.
INVOICE = """syntax = "proto3";

package acme.billing.v2;

import "google/protobuf/timestamp.proto";

// Invoices of a customer.
service InvoiceService {
  // One invoice by id.
  rpc GetInvoice(GetInvoiceRequest) returns (GetInvoiceResponse);
}

message GetInvoiceRequest {
  string invoice_id = 1;
}

message GetInvoiceResponse {
  Invoice invoice = 1;
}

message Invoice {
  string invoice_id = 1;
  int64 total_cents = 2;
  string customer = 3;
  google.protobuf.Timestamp issued = 4;
}
"""
FOREIGN_PYPROJECT = """[project]
name = "acme-billing"
version = "2.3.0"

[tool.buildtasks]
image = "${REGISTRY:-127.0.0.1:5000}/acme/billing"

[tool.buildtasks.proto]
src = "protos"
out = "src/acme/platform/api/grpc/gen"

[tool.buildtasks.release]
branch = "trunk"
tag_prefix = "release-"
targets = ["web"]

[tool.buildtasks.targets.web]
dockerfile = "docker/web.Dockerfile"
platforms = ["linux/amd64"]
checks = ["non-root", "healthcheck"]

[tool.buildtasks.targets.jobs-runner]
dockerfile = "docker/runner.Dockerfile"
"""
WEB_DOCKERFILE = """FROM scratch AS files
COPY README.md /srv/

FROM files
USER 10001
HEALTHCHECK CMD ["/srv/health"]
"""


@pytest.fixture
def foreign(tmp_path: Path) -> Path:
    """The second project as a repository whose first release, release-2.2.0, predates
    its specs; release-2.3.0 has them. A bare remote as origin."""
    project = tmp_path / "billing"
    (project / "docker").mkdir(parents=True)
    (project / "pyproject.toml").write_text(FOREIGN_PYPROJECT)
    (project / "README.md").write_text("billing\n")
    (project / "CHANGELOG.md").write_text("# Changelog\n\n## [Unreleased]\n\n- Invoices.\n")
    (project / "docker/web.Dockerfile").write_text(WEB_DOCKERFILE)
    (project / "docker/runner.Dockerfile").write_text("FROM scratch\nCOPY README.md /\n")
    for package in ("src/acme", "src/acme/platform", "src/acme/platform/api"):
        (project / package).mkdir(parents=True, exist_ok=True)
        (project / package / "__init__.py").write_text("")
    (project / "src/acme/platform/api/grpc").mkdir()
    (project / "src/acme/platform/api/grpc/__init__.py").write_text("")
    (project / ".gitignore").write_text("src/acme/platform/api/grpc/gen/\n")
    remote = tmp_path / "billing.git"
    git(tmp_path, "init", "--quiet", "--bare", "-b", "trunk", str(remote))
    git(project, "init", "--quiet", "-b", "trunk")
    git(project, "add", "-A")
    git(project, "commit", "--quiet", "-m", "billing without specs")
    git(project, "tag", "release-2.2.0")
    (project / "protos/acme/billing/v2").mkdir(parents=True)
    (project / "protos/acme/billing/v2/invoice.proto").write_text(INVOICE)
    git(project, "add", "-A")
    git(project, "commit", "--quiet", "-m", "invoice specs")
    git(project, "tag", "release-2.3.0")
    git(project, "remote", "add", "origin", str(remote))
    git(project, "push", "--quiet", "--tags", "origin", "trunk")
    return project


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """A copy of the example as its own repository, its current state tagged v0.1.0."""
    project = release_project(tmp_path, platforms='["linux/amd64"]')
    git(project, "tag", "v0.1.0")
    return project


SPEC = {
    "example": "example/specs/jobs/v1/jobs.proto",
    "foreign": "protos/acme/billing/v2/invoice.proto",
}
# (message body line to delete, a field line to add after it, a field to rename in JSON)
EDITS = {
    "example": ("  int64 words = 4;\n", "  string owner = 7;\n", "  string text = 3;"),
    "foreign": ("  string customer = 3;\n", "  string currency = 5;\n", "  int64 total_cents = 2;"),
}


@pytest.fixture(params=["example", "foreign"])
def project(request) -> tuple[str, Path]:
    return request.param, request.getfixturevalue(request.param)


def state(project: Path) -> tuple:
    """What a check must not change: HEAD, the index, the tree's status, the stash."""
    index = hashlib.sha256((project / ".git/index").read_bytes()).hexdigest()
    return (
        git(project, "rev-parse", "HEAD"),
        index,
        git(project, "status", "--porcelain"),
        git(project, "stash", "list"),
        git(project, "branch", "--show-current"),
    )


def edit(project: Path, name: str, old: str, new: str) -> None:
    path = project / SPEC[name]
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def breaking(project: Path, *args: str):
    return run_cli(["buildtasks", "proto.breaking", *args], cwd=project)


def test_deleting_a_field_fails_with_file_and_line(project):
    name, root = project
    edit(root, name, EDITS[name][0], "")
    before = state(root)
    result = breaking(root)
    assert result.returncode == 1, result.stdout + result.stderr
    finding = re.compile(
        rf"{re.escape(SPEC[name])}:\d+:\d+: Previously present field .* was deleted"
    )
    assert any(finding.match(line) for line in result.stdout.splitlines()), result.stdout
    assert result.stderr.strip().splitlines()[-1].startswith("error: proto: ")
    assert state(root) == before


def test_adding_a_field_passes(project):
    name, root = project
    deleted, added, _ = EDITS[name]
    edit(root, name, deleted, deleted + added)
    before = state(root)
    result = breaking(root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("([tool.buildtasks.proto])")
    assert state(root) == before


def test_renaming_a_json_name_fails_under_wire_json_only(project):
    name, root = project
    field = EDITS[name][2]
    edit(root, name, field, field[:-1] + ' [json_name = "renamed"];')
    result = breaking(root, "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)  # exactly one document
    assert report["ok"] is False
    assert [f["rule"] for f in report["findings"]] == ["FIELD_SAME_JSON_NAME"]
    assert report["findings"][0]["path"] == SPEC[name]
    assert report["findings"][0]["line"] > 1
    assert breaking(root, "--category", "WIRE").returncode == 0


def test_default_ref_is_the_newest_release_tag(project):
    name, root = project
    result = breaking(root, "--json")
    assert (
        json.loads(result.stdout)["against"]
        == {"example": "v0.1.0", "foreign": "release-2.3.0"}[name]
    )
    prefix = {"example": "v0.", "foreign": "release-2."}[name]
    for minor in (10, 9):  # newest by version, not by name (9 sorts after 10 as text)
        git(root, "tag", f"{prefix}{minor}.0")
    result = breaking(root, "--json")
    assert json.loads(result.stdout)["against"] == f"{prefix}10.0"


def test_a_spec_tree_absent_at_the_ref_passes_with_a_note(foreign):
    result = breaking(foreign, "--against", "release-2.2.0")
    assert result.returncode == 0, result.stderr
    assert "proto: protos did not exist at release-2.2.0: nothing to compare" in result.stdout


def test_unknown_ref_is_one_line(foreign):
    result = breaking(foreign, "--against", "no-such-tag")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: proto.breaking: 'no-such-tag' is not a commit, tag or branch of {foreign}; "
        "pass --against REF"
    ]


def test_a_projects_own_buf_yaml_is_honoured(foreign):
    (foreign / "protos/buf.yaml").write_text(
        "version: v1\nbreaking:\n  use: [WIRE]\nlint:\n  use: [MINIMAL]\n"
    )
    edit(
        foreign, "foreign", "  int64 total_cents = 2;", '  int64 total_cents = 2 [json_name = "t"];'
    )
    result = breaking(foreign)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "(protos/buf.yaml)" in result.stdout
    edit(foreign, "foreign", "  string customer = 3;\n", "")
    deleted = breaking(foreign)
    assert deleted.returncode == 1
    assert deleted.stdout.startswith("protos/acme/billing/v2/invoice.proto:")
    edit(foreign, "foreign", "  int64 total_cents", "  int64 totalCents")  # MINIMAL allows it
    linted = run_cli(["buildtasks", "proto.lint"], cwd=foreign)
    assert linted.returncode == 0, linted.stdout
    assert "(protos/buf.yaml)" in linted.stdout


def test_proto_lint_passes_then_flags_a_planted_violation(project):
    name, root = project
    ok = run_cli(["buildtasks", "proto.lint"], cwd=root)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    edit(root, name, EDITS[name][0], EDITS[name][0] + "  string ownerName = 9;\n")
    bad = run_cli(["buildtasks", "proto.lint"], cwd=root)
    assert bad.returncode == 1
    assert bad.stdout.startswith(SPEC[name] + ":")
    assert "FIELD_LOWER_SNAKE_CASE" in bad.stdout


def commit_breaking_change(project: Path, name: str) -> None:
    edit(project, name, EDITS[name][0], "")
    git(project, "commit", "--quiet", "-am", "drop a field")
    git(project, "push", "--quiet", "origin", "HEAD")


def test_release_refuses_a_breaking_minor_and_lets_a_major_through(engine, registry, project):
    address, _ = registry
    name, root = project
    commit_breaking_change(root, name)
    env = {"REGISTRY": address}
    head = git(root, "rev-parse", "HEAD")
    refused = run_cli(["buildtasks", "release", "--bump", "minor"], cwd=root, env=env)
    assert refused.returncode == 1
    tag = {"example": "v0.1.0", "foreign": "release-2.3.0"}[name]
    (line,) = [line for line in refused.stderr.splitlines() if "proto:" in line]
    assert line.startswith(f"  - proto: breaking change since {tag}: {SPEC[name]}:")
    assert line.endswith("release it with --bump major or pass --allow-breaking")
    assert "nothing was changed" in refused.stderr
    assert git(root, "rev-parse", "HEAD") == head
    allowed = ["buildtasks", "--dry", "release", "--bump", "minor", "--allow-breaking"]
    assert run_cli(allowed, cwd=root, env=env).returncode == 0
    if name == "example":  # dry: the example's image takes minutes to build
        major = run_cli(["buildtasks", "--dry", "release", "--bump", "major"], cwd=root, env=env)
        assert major.returncode == 0, major.stderr[-2000:]
        assert "release 0.1.0 -> 1.0.0" in major.stdout
    else:
        major = run_cli(["buildtasks", "release", "--bump", "major"], cwd=root, env=env)
        assert major.returncode == 0, major.stderr[-2000:]
        assert "released 3.0.0: commit" in major.stdout
        assert "release-3.0.0" in git(root, "ls-remote", "--tags", "origin")


# package, module, service, method, a good request, source dir, response, a wrong request
CLIENTS = {
    "example": ("jobsvc.gen.jobs.v1", "jobs_pb2", "JobService", "Submit",
                "SubmitRequest(text=text)", "example/src", "Job", "SubmitRequest(text=42)"),
    "foreign": ("acme.platform.api.grpc.gen.acme.billing.v2", "invoice_pb2", "InvoiceService",
                "GetInvoice", "GetInvoiceRequest(invoice_id=text)", "src",
                "GetInvoiceResponse", "GetInvoiceRequest(invoice_id=42)"),
}  # fmt: skip


def mypy(root: Path, source: str, path: str) -> subprocess.CompletedProcess:
    """mypy --strict on a client module, with the project's source directory on MYPYPATH."""
    client = root / "client.py"
    client.write_text(source)
    return subprocess.run(
        [str(BIN / "mypy"), "--strict", "--no-incremental", "--cache-dir=/dev/null", str(client)],
        cwd=root, env={**os.environ, "MYPYPATH": str(root / path)}, capture_output=True, text=True,
    )  # fmt: skip


def test_typed_grpc_stubs_pass_mypy_strict_and_catch_a_wrong_call(project):
    name, root = project
    assert run_cli(["buildtasks", "proto"], cwd=root).returncode == 0
    package, module, service, method, good, path, response, wrong = CLIENTS[name]
    header = (
        f"import grpc\n\nfrom {package} import {module}, {module}_grpc\n\n\n"
        "def call(channel: grpc.Channel, text: str) -> None:\n"
        f"    stub = {module}_grpc.{service}Stub(channel)\n"
    )
    typed_call = f"    reply: {module}.{response} = stub.{method}({module}.{good})\n"
    ok = mypy(root, header + typed_call, path)
    assert ok.returncode == 0, ok.stdout
    bad = mypy(root, header + f"    stub.{method}({module}.{wrong})\n    stub.Cancel(None)\n", path)
    assert bad.returncode == 1
    assert 'incompatible type "int"; expected "str"' in bad.stdout
    assert f'"{service}Stub" has no attribute "Cancel"' in bad.stdout
    assert "Found 2 errors in 1 file" in bad.stdout


def test_dockerfile_lint_passes_the_projects_and_flags_planted_problems(project):
    name, root = project
    ok = run_cli(["buildtasks", "lint"], cwd=root)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    dockerfile = {"example": "example/Dockerfile", "foreign": "docker/web.Dockerfile"}[name]
    target = {"example": "apify", "foreign": "web"}[name]  # both ask for non-root, healthcheck
    (root / dockerfile).write_text(
        "# syntax=docker/dockerfile:1\nFROM x:latest\nUSER root\nCOPY README.md /\n"
    )
    bad = run_cli(["buildtasks", "lint"], cwd=root)
    assert bad.returncode == 1
    # every problem of the file in one report, each naming its line and the target
    codes = {line.split(" ")[1] for line in bad.stdout.splitlines()}
    assert {"buildtasks/syntax", "DL3007", "DL3002", "buildtasks/non-root",
            "buildtasks/healthcheck"} <= codes  # fmt: skip
    assert f"{dockerfile}:2: DL3007 warning: Using latest" in bad.stdout
    assert all(line.endswith(f"[{target}]") for line in bad.stdout.splitlines())
    (root / ".hadolint.yaml").write_text("ignored: [DL3007, DL3002, DL3066]\n")
    configured = run_cli(["buildtasks", "lint", "--json"], cwd=root)
    report = json.loads(configured.stdout)
    assert configured.returncode == 1
    assert report["config"] == ".hadolint.yaml"
    assert sorted(f["code"] for f in report["findings"]) == [
        "buildtasks/healthcheck", "buildtasks/non-root", "buildtasks/syntax"
    ]  # fmt: skip
    # a warning under the configured failure threshold is listed, and passes
    (root / ".hadolint.yaml").write_text("failure-threshold: error\n")
    (root / dockerfile).write_text("FROM x:latest\nUSER 1000\nHEALTHCHECK CMD true\n")
    warned = run_cli(["buildtasks", "lint"], cwd=root)
    assert warned.returncode == 0, warned.stdout + warned.stderr
    assert f"{dockerfile}:1: DL3007 warning:" in warned.stdout


WORKFLOWS = {"github": ".github/workflows/buildtasks.yml", "gitlab": ".gitlab-ci.yml"}


def ci(root: Path, *args: str):
    return run_cli(["buildtasks", "ci", *args], cwd=root)


@pytest.mark.parametrize("provider", ["github", "gitlab"])
def test_generated_workflow_is_valid_and_builds_every_target(project, provider):
    name, root = project
    result = ci(root, provider)
    assert result.returncode == 0, result.stderr
    path = root / WORKFLOWS[provider]
    assert result.stdout.strip() == f"ci: wrote {path}"
    workflow = yaml.safe_load(path.read_text())
    targets = {"example": ["dev", "prod", "apify"], "foreign": ["web", "jobs-runner"]}[name]
    schema = {"github": "vendor.github-workflows", "gitlab": "vendor.gitlab-ci"}[provider]
    validated = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", schema, str(path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert validated.returncode == 0, validated.stdout + validated.stderr
    release = {"example": ("main", "v"), "foreign": ("trunk", "release-")}[name]
    if provider == "github":
        linted = subprocess.run(
            [str(BIN / "actionlint"), str(path)], capture_output=True, text=True
        )
        assert linted.returncode == 0, linted.stdout + linted.stderr
        jobs = workflow["jobs"]
        assert jobs["build"]["strategy"]["matrix"]["target"] == targets
        assert workflow["on"]["push"] == {"branches": [release[0]], "tags": [f"{release[1]}*"]}
        assert jobs["push"]["if"] == f"github.ref == 'refs/heads/{release[0]}'"
        assert jobs["release"]["if"] == "startsWith(github.ref, 'refs/tags/')"
        steps = [step.get("run", "") for job in jobs.values() for step in job["steps"]]
        assert "docker/setup-buildx-action@v3" in {
            step.get("uses") for step in jobs["integration"]["steps"]
        }
    else:
        assert workflow["build"]["parallel"]["matrix"] == [{"TARGET": targets}]
        assert workflow["push"]["rules"] == [{"if": f'$CI_COMMIT_BRANCH == "{release[0]}"'}]
        steps = [command for job in workflow.values() if isinstance(job, dict)
                 for command in job.get("script", [])]  # fmt: skip
    assert {"inv lint", "inv proto.lint", "inv proto.breaking", "nox -s integration"} <= set(steps)
    assert f"inv push --target {'web' if name == 'foreign' else 'prod'}" in steps


@pytest.mark.parametrize("provider", ["github", "gitlab"])
def test_check_passes_after_generation_and_fails_after_a_target_is_added(project, provider):
    _, root = project
    path = root / WORKFLOWS[provider]
    dry = run_cli(["buildtasks", "--dry", "ci", provider], cwd=root)
    assert dry.returncode == 0 and not path.exists()
    assert ci(root, provider, "--check").returncode == 1  # no file yet
    assert ci(root, provider).returncode == 0
    ok = ci(root, provider, "--check")
    assert ok.returncode == 0, ok.stderr
    assert ci(root, provider).stdout.strip() == f"ci: unchanged {path}"
    pyproject = root / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text()
        + '\n[tool.buildtasks.targets.extra]\ndockerfile = "Dockerfile.extra"\n'
    )
    drift = ci(root, provider, "--check")
    assert drift.returncode == 1
    assert drift.stderr.strip() == (
        f"error: ci: {path} is out of date with the configuration; "
        f"run `buildtasks ci {provider}` (--force over hand edits)"
    )
    assert ci(root, provider).returncode == 0  # not hand-edited: regenerated
    assert "extra" in path.read_text()
    assert ci(root, provider, "--check").returncode == 0


def test_hand_edits_are_kept_unless_forced(foreign):
    path = foreign / WORKFLOWS["github"]
    assert ci(foreign, "github").returncode == 0
    edited = path.read_text().replace("runs-on: ubuntu-latest", "runs-on: self-hosted", 1)
    path.write_text(edited)
    assert "was edited by hand" in ci(foreign, "github", "--check").stderr
    refused = ci(foreign, "github")
    assert refused.returncode == 1
    assert "pass --force to overwrite it" in refused.stderr
    assert path.read_text() == edited
    assert ci(foreign, "github", "--force").returncode == 0
    assert ci(foreign, "github", "--check").returncode == 0


def test_a_project_in_a_subdirectory_of_its_repository(tmp_path):
    top = tmp_path / "monorepo"
    project = top / "services/billing"
    (project / "protos/acme/billing/v2").mkdir(parents=True)
    (project / "protos/acme/billing/v2/invoice.proto").write_text(INVOICE)
    (project / "pyproject.toml").write_text(FOREIGN_PYPROJECT)
    (top / "other.txt").write_text("another service\n")
    git(top, "init", "--quiet", "-b", "trunk")
    git(top, "add", "-A")
    git(top, "commit", "--quiet", "-m", "monorepo")
    git(top, "tag", "release-1.0.0")
    edit(project, "foreign", EDITS["foreign"][0], "")
    result = breaking(project)
    assert result.returncode == 1
    assert result.stdout.startswith(f"{SPEC['foreign']}:"), result.stdout + result.stderr
    assert "against release-1.0.0" in result.stderr


@pytest.mark.parametrize("ref", ["-o/tmp/buildtasks-evil.tar", "--output=x", "v9 ; rm -rf /"])
def test_a_ref_that_is_no_ref_is_refused_before_git_reads_it(foreign, ref):
    result = breaking(foreign, f"--against={ref}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: proto.breaking: {ref!r} is not a commit, tag or branch of {foreign}; "
        "pass --against REF"
    ]
    assert not Path("/tmp/buildtasks-evil.tar").exists() and not (foreign / "x").exists()


def test_a_broken_buf_yaml_is_one_line(foreign):
    (foreign / "protos/buf.yaml").write_text("version: [v1\n")
    result = run_cli(["buildtasks", "proto.lint"], cwd=foreign)
    assert result.returncode == 2  # a configuration error
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {foreign / 'protos/buf.yaml'}: cannot read it as YAML (")
