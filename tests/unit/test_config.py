from pathlib import Path

import pytest

from buildtasks import config
from buildtasks.config import CHECKS, DEFAULT_TAGS, Target
from buildtasks.errors import ConfigError


def write_project(tmp_path: Path, body: str, env: str | None = None) -> Path:
    (tmp_path / "pyproject.toml").write_text(body)
    if env is not None:
        (tmp_path / ".env").write_text(env)
    return tmp_path


def test_defaults_and_targets(tmp_path):
    root = write_project(
        tmp_path,
        """
[project]
name = "svc"
version = "1.2.3"
[tool.buildtasks]
context = "app"
[tool.buildtasks.targets.prod]
dockerfile = "Dockerfile.prod"
platforms = ["linux/amd64", "linux/arm64"]
build_args = { PYTHON = "3.11" }
[tool.buildtasks.targets.dev]
""",
    )
    settings = config.load(root)
    assert settings.image == "svc"
    assert settings.version == "1.2.3"
    assert settings.context_dir == root / "app"
    assert settings.targets["prod"] == Target(
        name="prod",
        dockerfile="Dockerfile.prod",
        platforms=("linux/amd64", "linux/arm64"),
        build_args={"PYTHON": "3.11"},
    )
    assert settings.targets["prod"].enabled_checks == CHECKS
    assert settings.targets["dev"].enabled_checks == ()
    assert settings.targets["dev"].tags == DEFAULT_TAGS


def test_interpolation_environment_wins_over_env_file(tmp_path, monkeypatch):
    root = write_project(
        tmp_path,
        """
[tool.buildtasks]
image = "${REGISTRY}/svc"
mirror = "${MIRROR:-mirror.local/m}"
version = "${VERSION:-0.0.0}"
source = "cost: $$5"
""",
        env="REGISTRY=from-file:5000\nVERSION=9.9\n",
    )
    monkeypatch.delenv("MIRROR", raising=False)
    monkeypatch.setenv("VERSION", "2.0")
    monkeypatch.delenv("REGISTRY", raising=False)
    settings = config.load(root)
    assert settings.image == "from-file:5000/svc"
    assert settings.mirror == "mirror.local/m"
    assert settings.version == "2.0"
    assert settings.source == "cost: $5"
    monkeypatch.setenv("REGISTRY", "from-env")
    assert config.load(root).image == "from-env/svc"


def test_later_env_files_override_earlier(tmp_path, monkeypatch):
    monkeypatch.delenv("TAG_BASE", raising=False)
    root = write_project(
        tmp_path,
        '[tool.buildtasks]\nimage = "x/${TAG_BASE}"\nenv_files = [".env", ".env.local"]\n',
        env="TAG_BASE=a\n",
    )
    (root / ".env.local").write_text("TAG_BASE=b\n")
    assert config.load(root).image == "x/b"


def test_unknown_key_suggests_the_intended_one(tmp_path):
    root = write_project(
        tmp_path, '[tool.buildtasks]\nimage = "x"\n[tool.buildtasks.targets.prod]\nplatfroms = []\n'
    )
    with pytest.raises(ConfigError) as error:
        config.load(root)
    assert str(error.value) == (
        "pyproject.toml: tool.buildtasks.targets.prod: unknown key `platfroms` "
        "(did you mean `platforms`?)"
    )


def test_wrong_type_names_key_and_type(tmp_path):
    root = write_project(
        tmp_path,
        '[tool.buildtasks]\nimage = "x"\n'
        '[tool.buildtasks.targets.prod]\nplatforms = "linux/amd64"\n',
    )
    with pytest.raises(ConfigError) as error:
        config.load(root)
    assert str(error.value) == (
        "pyproject.toml: tool.buildtasks.targets.prod.platforms must be a list of strings, "
        "got a string"
    )


def test_unset_variable_without_default(tmp_path, monkeypatch):
    monkeypatch.delenv("NOPE_REGISTRY", raising=False)
    root = write_project(tmp_path, '[tool.buildtasks]\nimage = "${NOPE_REGISTRY}/x"\n')
    with pytest.raises(ConfigError) as error:
        config.load(root)
    assert str(error.value) == (
        "pyproject.toml: tool.buildtasks.image uses ${NOPE_REGISTRY}, which is not set; "
        "set NOPE_REGISTRY in the environment or an env file, or write ${NOPE_REGISTRY:-default}"
    )


def test_unknown_check_and_missing_table(tmp_path):
    root = write_project(
        tmp_path, '[tool.buildtasks]\nimage = "x"\n[tool.buildtasks.targets.a]\nchecks = ["sise"]\n'
    )
    with pytest.raises(ConfigError, match=r"unknown check 'sise'; known checks: non-root"):
        config.load(root)
    write_project(tmp_path, '[project]\nname = "x"\n')
    with pytest.raises(ConfigError, match=r"no \[tool.buildtasks\] table"):
        config.load(root)
    with pytest.raises(ConfigError, match=r"no pyproject\.toml in"):
        config.load(tmp_path / "missing")
