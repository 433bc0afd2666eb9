import pytest

from buildtasks.docker.checks import ImageFacts, parse_size, runs_as_root, violations
from buildtasks.errors import CommandError, ConfigError
from buildtasks.shell import Shell, redact


def test_redact_hides_every_secret_longest_first():
    assert redact("token=abc123 and abc", ["abc", "abc123", ""]) == "token=*** and ***"


def test_echoed_command_hides_secret_values(capfd):
    sh = Shell(dry=True, secrets=frozenset({"hunter2"}))
    sh.run(["docker", "login", "--password", "hunter2"])
    assert capfd.readouterr().err == "[dry] docker login --password ***\n"


def test_failed_command_error_is_one_redacted_line():
    sh = Shell(echo=False, secrets=frozenset({"hunter2"}))
    with pytest.raises(CommandError) as error:
        sh.run(["sh", "-c", "echo bad hunter2 >&2; exit 3"], capture=True)
    assert str(error.value) == "`sh -c 'echo bad *** >&2; exit 3'` failed with exit 3: bad ***"
    assert error.value.returncode == 3
    with pytest.raises(CommandError, match="no-such-tool: command not found"):
        sh.run(["no-such-tool"])


def test_parse_size():
    assert parse_size("250MB") == 250_000_000
    assert parse_size("1.5 GiB") == 1_610_612_736
    assert parse_size("900kb") == 900_000
    assert parse_size("1024") == 1024
    with pytest.raises(ConfigError, match="write a number with B, KB"):
        parse_size("lots")


def test_root_users():
    assert [runs_as_root(u) for u in ("", "root", "0", "0:0", "1000", "app:app")] == [
        True, True, True, True, False, False,
    ]  # fmt: skip


def test_violations_list_every_failed_check_in_order():
    facts = ImageFacts(
        ref="x", user="", healthcheck=("NONE",), size=90_000_000, uncompressed_size=300_000_000
    )
    assert violations(
        facts, ("non-root", "healthcheck", "size", "dockerignore"), "250MB", False
    ) == [
        "non-root: runs as root (no USER); add `USER 1000` or another non-root user",
        "healthcheck: the image has no HEALTHCHECK; add one",
        "size: 300.0 MB uncompressed is over the budget of 250MB; "
        "slim the image or raise size_budget",
        "dockerignore: the build context has no .dockerignore; add one",
    ]
    good = ImageFacts(ref="x", user="1000:1000", healthcheck=("CMD", "true"), uncompressed_size=10)
    assert violations(good, ("non-root", "healthcheck", "size", "dockerignore"), "1MB", True) == []
