"""buildtasks init: what it finds in a project and what it would write."""

from __future__ import annotations

import tomllib

import pytest

from buildtasks import config, scaffold
from buildtasks.errors import ConfigError
from buildtasks.runtime import Runtime


def test_targets_are_named_after_their_dockerfiles(tmp_path):
    for relative in ("Dockerfile", "Dockerfile.prod", "ops/web.Dockerfile", "svc/API/Dockerfile"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text("FROM scratch\n")
    (tmp_path / ".venv/lib").mkdir(parents=True)
    (tmp_path / ".venv/lib/Dockerfile").write_text("FROM scratch\n")  # not the project's
    found = scaffold.detect(tmp_path)
    assert found.targets == {
        "app": {"context": ".", "dockerfile": "Dockerfile"},
        "prod": {"context": ".", "dockerfile": "Dockerfile.prod"},
        "web": {"context": "ops", "dockerfile": "web.Dockerfile"},
        "api": {"context": "svc/API", "dockerfile": "Dockerfile"},
    }


@pytest.mark.parametrize(
    ("ports", "expected"),
    [
        ('["127.0.0.1::8080"]', ("web", 8080)),
        ('["9000:80/tcp"]', ("web", 80)),
        ("[{target: 5000, published: 5001}]", ("web", 5000)),
        ("[]", ("", 0)),
    ],
)
def test_the_app_is_the_first_service_publishing_a_port(tmp_path, ports, expected):
    path = tmp_path / "compose.yaml"
    path.write_text(f"services:\n  db: {{image: x}}\n  web:\n    image: y\n    ports: {ports}\n")
    assert scaffold._compose_app(path) == expected


def test_an_unreadable_compose_file_is_one_line(tmp_path):
    (tmp_path / "compose.yaml").write_text("services: [\n")
    with pytest.raises(ConfigError, match=r"^compose.yaml: cannot read it as a compose file"):
        scaffold.detect(tmp_path)


def test_the_written_table_loads_and_keeps_the_other_tables(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "My Shop"\nversion = "2.0.0"\n\n[tool.ruff]\nline-length = 90\n'
    )
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs/a.proto").write_text('syntax = "proto3";\n')
    text = scaffold.pyproject_text(tmp_path, scaffold.detect(tmp_path))
    assert text is not None
    assert tomllib.loads(text)["tool"]["ruff"] == {"line-length": 90}
    (tmp_path / "pyproject.toml").write_text(text)
    settings = config.load(tmp_path)
    assert settings.image == "localhost:5000/my-shop" and list(settings.targets) == ["app"]
    assert settings.proto is not None and settings.proto.src == "specs"
    assert scaffold.pyproject_text(tmp_path, scaffold.detect(tmp_path)) is None  # has a table


def test_init_keeps_every_file_that_exists(tmp_path, capsys):
    (tmp_path / "noxfile.py").write_text("# mine\n")
    rt = Runtime(config.parse({"image": "x"}, root=tmp_path))
    lines = scaffold.init(rt, tmp_path)
    assert "kept noxfile.py (it exists)" in lines and "wrote Dockerfile" in lines
    assert (tmp_path / "noxfile.py").read_text() == "# mine\n"
    assert (tmp_path / "app/main.py").is_file()
