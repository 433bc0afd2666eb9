"""Off-site settings, the redaction of the repository and password, and the snapshot list
read back from restic (input: only well-formed tags count)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from buildtasks import config
from buildtasks.backup import drill, freshness, offsite
from buildtasks.errors import ConfigError
from buildtasks.shell import Shell

SET_A = "20261101T120000.000000Z"
SET_B = "20261102T120000.000000Z"


def project(tmp_path, offsite_table: str, backup: str = 'sqlite = ["a.db"]'):
    (tmp_path / "pyproject.toml").write_text(
        f'[tool.buildtasks]\nimage = "x"\n[tool.buildtasks.backup]\n{backup}\n'
        f"[tool.buildtasks.backup.offsite]\n{offsite_table}"
    )
    return config.load(tmp_path)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('repository = "/srv/restic"', "not an off-site restic repository"),
        ('repository = "local:/x"', "not an off-site restic repository"),
        ('check_subset = "0%"', "not a data subset"),
        ('check_subset = "3/2"', "not a data subset"),
        ('send = "daily"', "'manual' or 'always'"),
        ('password_env = "A B"', "not an environment variable name"),
        ('options = ["--password=x"]', "not a restic option"),
        ('pasword_env = "X"', "did you mean `password_env`?"),
    ],
)
def test_bad_offsite_values_are_one_line_naming_the_key(tmp_path, line, reason):
    with pytest.raises(ConfigError) as error:
        project(tmp_path, line + "\n")
    message = str(error.value)
    assert "tool.buildtasks.backup.offsite" in message and reason in message
    assert "\n" not in message


def test_offsite_settings_and_defaults(tmp_path):
    settings = project(tmp_path, 'repository = "sftp:backup@host:/srv/x"\nsend = "always"\n')
    assert settings.backup.offsite.repository == "sftp:backup@host:/srv/x"
    assert settings.backup.offsite.password_env == "RESTIC_PASSWORD"
    assert settings.backup.offsite.check_subset == "5%"
    assert settings.backup.keep_last == 7  # the rest of [backup] is untouched
    assert config.read_data_subset("1/7") == "1/7"


def test_the_password_and_url_credentials_reach_restic_only_through_its_environment(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("MY_PW", "s3cret-pw")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-key-value")
    settings = project(
        tmp_path, 'repository = "rest:https://u:urlpass@h:8000/r"\npassword_env = "MY_PW"\n'
    )
    repo = offsite.Repository(settings, Shell(echo=False))
    assert repo.shown == "rest:https://u:***@h:8000/r"
    assert repo.sh.env["RESTIC_PASSWORD"] == "s3cret-pw"
    assert repo.sh.env["RESTIC_REPOSITORY"] == "rest:https://u:urlpass@h:8000/r"
    assert repo.sh.env["RESTIC_PASSWORD_FILE"] == ""  # nothing inherited competes
    shown = repo.sh.show(["restic", "x", "s3cret-pw", "urlpass", "aws-key-value"])
    assert shown == "restic x *** *** ***"


def test_password_file_and_missing_password(tmp_path, monkeypatch):
    monkeypatch.delenv("RESTIC_PASSWORD", raising=False)
    settings = project(tmp_path, 'repository = "b2:bucket:path"\n')
    with pytest.raises(ConfigError, match="no password; set RESTIC_PASSWORD"):
        offsite.Repository(settings, Shell(echo=False))
    settings = project(tmp_path, 'repository = "b2:bucket:path"\npassword_file = "pw"\n')
    with pytest.raises(ConfigError, match=r"password_file: cannot read .*pw"):
        offsite.Repository(settings, Shell(echo=False))
    (tmp_path / "pw").write_text("from-a-file\n")
    settings = project(tmp_path, 'repository = "b2:bucket:path"\npassword_file = "pw"\n')
    repo = offsite.Repository(settings, Shell(echo=False))
    assert repo.sh.env["RESTIC_PASSWORD_FILE"] == str(tmp_path / "pw")
    assert repo.sh.env["RESTIC_PASSWORD"] == ""
    assert "from-a-file" in repo.sh.secrets


def test_redact_url_leaves_urls_without_a_password_alone():
    assert offsite.redact_url("sftp:user@host:/srv/r") == "sftp:user@host:/srv/r"
    assert (
        offsite.redact_url("s3:https://key:secret@s3.example/b")
        == "s3:https://key:***@s3.example/b"
    )
    assert offsite.redact_url("rest:http://h/r") == "rest:http://h/r"
    assert offsite.redact_url("sftp://u:pw9@h:22//srv/r") == "sftp://u:***@h:22//srv/r"


def row(set_tag: str, group: str = "full", sid: str = "a" * 64, time: str = "t1") -> dict:
    tags = ["buildtasks", f"buildtasks-set:{set_tag}", f"buildtasks-group:{group}"]
    return {"id": sid, "time": time, "tags": tags}


def test_snapshot_list_takes_only_well_formed_tags():
    rows = [
        row(SET_A),
        row(SET_B, "partial-redis", "b" * 64),
        row("../../etc", sid="c" * 64),  # not a set id
        row(SET_A, "full;rm -rf", "d" * 64),  # not a group
        {**row(SET_B), "id": "short"},  # not a snapshot id
        {"id": "e" * 64, "tags": "buildtasks"},  # tags not a list
        row(SET_A, sid="f" * 64, time="t2"),  # the same set sent again: the newer wins
        "garbage",
    ]
    found = offsite.parse_snapshots(json.dumps(rows), "repo")
    assert [(s.set_id, s.group, s.id[0]) for s in found] == [
        (SET_B, "partial-redis", "b"),
        (SET_A, "full", "f"),
    ]
    for bad in ("{", '{"a": 1}'):
        with pytest.raises(offsite.OffsiteError, match="unreadable snapshot list"):
            offsite.parse_snapshots(bad, "repo")


def test_drill_refuses_sources_outside_compose_services(tmp_path):
    settings = project(tmp_path, "", backup='sqlite = ["api:/data/a.db"]\nfiles = ["data"]')
    with pytest.raises(ConfigError, match="files data is not inside a compose service"):
        drill.drillable(settings)
    settings = project(tmp_path, "", backup='redis = { url = "redis://:pw@h:6379/0" }')
    with pytest.raises(ConfigError, match=r"redis redis://\*\*\*@h") as error:
        drill.drillable(settings)
    assert "pw@" not in str(error.value)


def test_drill_file_comparison_names_what_differs():
    expected = {"1/result.json": "aa", "2/result.json": "bb"}
    same = drill._files("files x", expected, {**expected, "jobs.db-wal": "zz"}, {"jobs.db-wal"})
    assert same.ok
    differ = drill._files("files x", expected, {"1/result.json": "ab", "3/x": "cc"}, frozenset())
    assert not differ.ok
    assert differ.detail == "files differ: missing 2/result.json; extra 3/x; changed 1/result.json"


def test_human_age_in_go_units():
    assert [freshness.human_age(s) for s in (7, 250, 93_780)] == ["7s", "4m10s", "26h03m"]


def test_drill_sqlite_comparison_reports_a_broken_or_different_database():
    expected = {"tables": {"jobs": 3, "users": 1}}
    same = drill._sqlite(
        "sqlite x", expected, {"integrity": "ok", "tables": {"users": 1, "jobs": 3}}
    )
    assert same.ok and same.detail == "integrity ok, rows jobs=3, users=1"
    broken = drill._sqlite("sqlite x", expected, {"integrity": "row 3 missing from index"})
    assert not broken.ok and broken.detail == "integrity_check: row 3 missing from index"
    fewer = drill._sqlite("sqlite x", expected, {"integrity": "ok", "tables": {"jobs": 2}})
    assert not fewer.ok
    assert fewer.detail == (
        "row counts differ: jobs: 2 rows, the set 3, users: None rows, the set 1"
    )
    extra = drill._sqlite(
        "sqlite x", expected, {"integrity": "ok", "tables": {**expected["tables"], "x": 0}}
    )
    assert not extra.ok and extra.detail == "row counts differ: x: 0 rows, the set None"


@pytest.mark.parametrize(
    ("keyspace", "ok"),
    [
        ("db0:keys=10,expires=2,avg_ttl=0\n", True),
        ("db0:keys=5,expires=0,avg_ttl=0\ndb3:keys=3,expires=2,avg_ttl=9\n", True),  # 8: expired
        ("db0:keys=7,expires=0,avg_ttl=0\n", False),  # more gone than could expire
        ("db0:keys=11,expires=2,avg_ttl=0\n", False),  # more than the set holds
        ("", False),
    ],
)
def test_drill_redis_comparison_reports_a_key_count_the_set_cannot_explain(
    monkeypatch, keyspace, ok
):
    monkeypatch.setattr(drill.redis, "rdb_keys", lambda sh, rdb: (10, 2))  # 2 with an expiry
    access = SimpleNamespace(engine=SimpleNamespace(exec=lambda container, argv, query: keyspace))
    check = drill._redis(Shell(), access, None, "redis cache", Path("dump.rdb"))
    assert check.ok is ok
    assert check.detail.endswith("the set holds 10 keys (2 expiring)")
