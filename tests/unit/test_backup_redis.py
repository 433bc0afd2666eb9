"""Redis URLs: every auth form read as redis-cli reads it; the password never shown."""

from __future__ import annotations

import pytest

from buildtasks.backup import redis
from buildtasks.backup.redis import Endpoint, RedisBackupError


@pytest.mark.parametrize(
    ("url", "environ", "expected"),
    [
        ("redis://u:p%40w@db:6380/2", {}, Endpoint("db", 6380, 2, "u", "p@w", tls=False)),
        ("redis://:pw@db", {}, Endpoint("db", 6379, 0, "", "pw", tls=False)),
        ("redis://pw@db/0", {}, Endpoint("db", 6379, 0, "", "pw", tls=False)),
        ("redis://db:1/3", {"REDISCLI_AUTH": "env"}, Endpoint("db", 1, 3, "", "env", tls=False)),
        ("redis://:pw@db", {"REDISCLI_AUTH": "env"}, Endpoint("db", 6379, 0, "", "pw", tls=False)),
        ("rediss://u:pw@[::1]:7000", {}, Endpoint("::1", 7000, 0, "u", "pw", tls=True)),
        ("redis://:p@ss@db", {}, Endpoint("db", 6379, 0, "", "p@ss", tls=False)),
    ],
)
def test_auth_forms(url, environ, expected):
    assert redis.parse_url(url, environ) == expected


@pytest.mark.parametrize(
    "url",
    ["http://:Secr3t@db", "Secr3t@db:6379", "redis://:Secr3t@db:port", "redis://:Secr3t@db/x",
     "redis://:Secr3t@db/0?ssl=1", "redis://:Secr3t@"],
)  # fmt: skip
def test_bad_urls_are_one_line_without_the_password(url):
    with pytest.raises(RedisBackupError) as raised:
        redis.parse_url(url, {})
    assert "Secr3t" not in str(raised.value) and "\n" not in str(raised.value)


def test_redact_hides_every_credential_form():
    assert redis.redact("redis://user:secret@db:6379/0") == "redis://***@db:6379/0"
    assert redis.redact("redis://secret@db") == "redis://***@db"
    assert redis.redact("redis://:se@cret@db") == "redis://***@db"
    assert redis.redact("secret@db:6379") == "***@db:6379"
    assert redis.redact("redis://db:6379") == "redis://db:6379"
