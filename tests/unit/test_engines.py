"""The engine profile: which engine, where, and the podman command lines."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from buildtasks import config
from buildtasks.docker.build import podman_argvs, podman_cache
from buildtasks.docker.engine import run_in
from buildtasks.engines import EngineProfile, resolve
from buildtasks.errors import ConfigError, EngineError
from tests.conftest import REPO
from tests.unit.test_build import DOCKERFILE, GIT, ROOT, BuildRequest, plan, settings


def project(**table) -> config.Settings:
    return config.parse({"image": "reg/app", "env_files": [], **table}, root=Path("/p"))


def test_the_variable_wins_over_the_configuration_and_podman_finds_its_socket():
    chosen = project(engine="docker")
    assert resolve(chosen, {"BUILDTASKS_ENGINE": "podman"}) == EngineProfile(
        "podman", "unix:///run/podman/podman.sock"
    )
    assert resolve(chosen, {"DOCKER_HOST": "tcp://h:2376"}) == EngineProfile(
        "docker", "tcp://h:2376"
    )
    remote = project(engine="podman", docker_host="ssh://me@build")
    assert resolve(remote, {"CONTAINER_HOST": "unix:///x"}).host == "ssh://me@build"
    assert resolve(project(engine="podman"), {"CONTAINER_HOST": "unix:///x"}).host == "unix:///x"


def test_a_wrong_engine_or_address_is_one_line():
    with pytest.raises(ConfigError, match=r"\$BUILDTASKS_ENGINE 'dokker': write docker or podman"):
        resolve(project(), {"BUILDTASKS_ENGINE": "dokker"})
    with pytest.raises(ConfigError, match=r"tool\.buildtasks\.engine"):
        project(engine="lxc")
    with pytest.raises(ConfigError, match="is not an engine address; write ssh://USER@HOST"):
        project(docker_host="build-host:2376")
    with pytest.raises(ConfigError, match="set docker_host or docker_context, not both"):
        project(docker_host="tcp://h:1", docker_context="ci")


def test_a_docker_context_is_read_from_the_clis_store(tmp_path):
    meta = tmp_path / "contexts/meta" / hashlib.sha256(b"builder").hexdigest()
    meta.mkdir(parents=True)
    (meta / "meta.json").write_text(
        json.dumps({"Name": "builder", "Endpoints": {"docker": {"Host": "ssh://ci@b"}}})
    )
    found = resolve(project(docker_context="builder"), {"DOCKER_CONFIG": str(tmp_path)})
    assert found == EngineProfile("docker", "ssh://ci@b", "builder")
    assert found.env == {"DOCKER_CONTEXT": "builder"}
    with pytest.raises(ConfigError, match="docker context 'other' does not exist"):
        resolve(project(docker_context="other"), {"DOCKER_CONFIG": str(tmp_path)})


def test_a_remote_engines_ports_are_reached_at_its_address():
    remote = EngineProfile("docker", "ssh://ci@build.example")
    assert remote.reach("127.0.0.1:49153") == "build.example:49153"
    assert remote.reach("0.0.0.0:80") == "build.example:80"
    assert remote.reach("10.1.2.3:80") == "10.1.2.3:80"
    assert EngineProfile("docker", "tcp://10.0.0.5:2376").reach("[::]:81") == "10.0.0.5:81"
    local = EngineProfile("podman", "unix:///run/podman/podman.sock")
    assert local.reach("127.0.0.1:49153") == "127.0.0.1:49153"


def test_podman_cannot_bake_and_says_what_to_run():
    with pytest.raises(EngineError, match=r"podman cannot bake .*\(inv build-NAME"):
        EngineProfile("podman").bake_command()
    assert EngineProfile("docker").bake_command() == ["docker", "buildx", "bake"]


def test_podman_builds_each_platform_with_the_mirror_as_contexts_and_arguments(monkeypatch):
    project = settings(monkeypatch)
    build = plan(project, project.targets["prod"], GIT, DOCKERFILE, BuildRequest(push=True),
                 ca_bundle="/etc/ca.crt", now="unused")  # fmt: skip
    pushed = podman_argvs(build, "/tmp/ids")
    assert [argv[argv.index("--platform") + 1] for argv in pushed] == ["linux/amd64", "linux/arm64"]
    first = pushed[0]
    assert first[:2] == ["podman", "build"] and "--tag" not in first
    assert first[-3:] == ["--iidfile", "/tmp/ids/iid-0", str(ROOT / "app")]
    assert first[first.index("--format") : first.index("--format") + 2] == ["--format", "docker"]
    assert "--build-arg" in first and "BASE=reg:5000/mirror/python:3.11-slim" in first
    assert "python:3.11-slim=docker-image://reg:5000/mirror/python:3.11-slim" in first
    assert "id=token,env=TOKEN_VALUE" in first  # secrets stay BuildKit secrets
    assert first[first.index("--cache-from") + 1] == "reg:5000/team/svc-buildcache-prod"
    (local,) = podman_argvs(msgspec.structs.replace(build, push=False, platforms=()), "/tmp/ids")
    assert local[local.index("--tag") + 1] == "reg:5000/team/svc:prod"
    assert "--platform" not in local


def test_podman_refuses_what_it_cannot_do():
    with pytest.raises(EngineError, match="podman caches layers only in a registry"):
        podman_cache("type=local,dest=/tmp/cache")
    assert podman_cache("reg/app:cache") == "reg/app:cache"


def test_the_engine_flag_of_the_buildtasks_program_is_checked_like_the_variable():
    result = subprocess.run(
        [sys.executable, "-m", "buildtasks", "--engine", "lxc", "doctor"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert (
        result.stderr.strip() == "error: --engine/$BUILDTASKS_ENGINE 'lxc': write docker or podman"
    )


class ScriptedContainer:
    """A container whose exec answers are given in order (what the SDK returns)."""

    def __init__(self, *answers: tuple[int, bytes]):
        self.answers = list(answers)
        self.calls = 0

    def exec_run(self, argv, user="", demux=False):
        self.calls += 1
        return self.answers.pop(0)


INIT_RESET = (
    b"OCI runtime exec failed: exec failed: unable to start container process: "
    b"read init-p: connection reset by peer: unknown"
)


def test_exec_runs_again_when_the_runtime_could_not_start_it():
    container = ScriptedContainer((126, INIT_RESET), (0, b"PONG\n"))
    assert run_in(container, ["redis-cli", "PING"]) == (0, "PONG")
    assert container.calls == 2


def test_exec_gives_up_after_three_runtime_failures():
    container = ScriptedContainer(*[(126, INIT_RESET)] * 3)
    code, text = run_in(container, ["true"])
    assert (code, container.calls) == (126, 3)
    assert text.startswith("OCI runtime exec failed")


def test_a_runtime_failure_after_the_command_started_is_not_run_again():
    after_exec = b"OCI runtime exec failed: exec failed: write pid file: no space left on device"
    container = ScriptedContainer((126, after_exec))
    assert run_in(container, ["redis-cli", "BGSAVE"])[0] == 126
    assert container.calls == 1


def test_a_command_that_ran_and_failed_is_not_run_again():
    container = ScriptedContainer((1, b"ERR wrong number of arguments"))
    assert run_in(container, ["redis-cli", "SET"]) == (1, "ERR wrong number of arguments")
    assert container.calls == 1
