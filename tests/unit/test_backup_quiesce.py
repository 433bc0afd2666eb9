"""Quiesce settings: what is refused before any container is touched."""

from __future__ import annotations

import pytest

from buildtasks import config
from buildtasks.backup import quiesce
from buildtasks.errors import ConfigError


class NoEngine:
    """Settings only: touching the engine fails the test."""

    def __init__(self, settings):
        self.settings = settings

    @property
    def engine(self):
        raise AssertionError("the engine was used")


def project(tmp_path, backup: str):
    (tmp_path / "pyproject.toml").write_text(
        f'[tool.buildtasks]\nimage = "x"\n[tool.buildtasks.backup]\n{backup}\n'
    )
    return config.load(tmp_path)


def test_quiesce_is_read_from_the_backup_table(tmp_path):
    settings = project(tmp_path, 'quiesce = ["api", "worker"]')
    assert settings.backup.quiesce == ("api", "worker")


def test_pausing_the_redis_service_itself_is_refused(tmp_path):
    settings = project(tmp_path, 'redis = { service = "cache" }\nquiesce = ["api", "cache"]')
    refusal = pytest.raises(ConfigError, match="leave out the Redis service 'cache'")
    with refusal, quiesce.paused(NoEngine(settings), settings.backup.quiesce):
        pass


def test_nothing_to_pause_records_nothing(tmp_path):
    settings = project(tmp_path, "")
    with quiesce.paused(NoEngine(settings), ()) as pause:
        pass
    assert pause.record() == {}
