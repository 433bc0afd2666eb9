import os
import subprocess
import sys

import pytest

from buildtasks import git
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


def test_queries_run_side_by_side_and_answer_in_order_even_under_dry_run(capfd):
    sh = Shell(dry=True)
    first, missing, failed = sh.queries(
        ["sh", "-c", "sleep 0.2; echo first"], ["no-such-tool"], ["sh", "-c", "echo no >&2; exit 4"]
    )
    assert (first.returncode, first.stdout) == (0, "first\n")
    assert (missing.returncode, missing.stderr) == (127, "no-such-tool: not found")
    assert (failed.returncode, failed.stderr) == (4, "no\n")
    assert capfd.readouterr().err == ""  # reads are not echoed


def test_git_state_reads_head_branch_dirtiness_time_and_remote(tmp_path):
    def run(*args: str) -> None:
        env = {**os.environ, "GIT_COMMITTER_DATE": "@86400 +0000"}
        subprocess.run(
            ["git", "-C", str(tmp_path), *args], check=True, capture_output=True, env=env
        )

    run("init", "-q", "-b", "main")
    assert git.state(Shell(), tmp_path) == git.GitState()  # no commit yet
    git.forget()
    run("remote", "add", "origin", "https://user:token@example.test/team/app.git")
    (tmp_path / "a.txt").write_text("a\n")
    run("add", "a.txt")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a")
    sha = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True,
                         text=True, check=True).stdout.strip()  # fmt: skip
    (tmp_path / "b.txt").write_text("untracked\n")
    state = git.state(Shell(), tmp_path)
    git.forget()
    assert state == git.GitState(
        sha=sha, branch="main", dirty=True, commit_time="1970-01-02T00:00:00Z",
        remote_url="https://example.test/team/app.git",
    )  # fmt: skip


def test_a_commit_dated_beyond_what_a_timestamp_holds_leaves_the_time_to_the_build(tmp_path):
    env = {**os.environ, "GIT_COMMITTER_DATE": "@300000000000 +0000"}  # year 11476
    for args in (("init", "-q", "-b", "main"), ("-c", "user.name=t", "-c", "user.email=t@t",
                 "commit", "-q", "--allow-empty", "-m", "far")):  # fmt: skip
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True,
                       env=env)  # fmt: skip
    state = git.state(Shell(), tmp_path)
    git.forget()
    assert state.sha and state.commit_time == ""


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


def test_an_echoed_line_is_one_write_so_threads_never_run_lines_together(monkeypatch):
    writes = []

    class Recorder:
        def write(self, text):
            writes.append(text)

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stderr", Recorder())
    Shell().change(["PUT", "http://127.0.0.1:5000/v2/app/manifests/x"])
    Shell().note("progress")
    assert writes == ["PUT http://127.0.0.1:5000/v2/app/manifests/x\n", "progress\n"]
