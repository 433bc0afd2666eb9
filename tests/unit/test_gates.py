"""The offline Dockerfile checks and the workflow generator, as pure functions."""

from __future__ import annotations

import subprocess
from pathlib import Path

import msgspec
import pytest
import yaml

from buildtasks import ci, config
from buildtasks.config import Target
from buildtasks.docker.lint import _about_named_context, lint, offline_checks
from buildtasks.shell import Shell

REPO = Path(__file__).resolve().parents[2]
STRICT = Target(name="web", checks=("non-root", "healthcheck"))


def codes(text: str, target: Target = STRICT) -> list[tuple[int, str]]:
    return [(f.line, f.code) for f in offline_checks(text, target, "Dockerfile")]


@pytest.mark.parametrize(
    ("directive", "flagged"),
    [
        ("# syntax=docker/dockerfile:1", True),
        ("# syntax = docker/dockerfile:1.7", True),
        ("#syntax=dockerfile:1", True),
        ("# syntax=127.0.0.1:5000/mirror/docker/dockerfile:1", False),
        ("# syntax=registry.example.com/dockerfile:1", False),
        ("# syntax=localhost/dockerfile:1", False),
    ],
)
def test_syntax_directive_without_a_registry_is_flagged(directive, flagged):
    text = f"{directive}\nFROM a\nUSER 1000\nHEALTHCHECK CMD true\n"
    assert codes(text) == ([(1, "buildtasks/syntax")] if flagged else [])


def test_a_syntax_comment_after_the_first_instruction_is_no_directive():
    assert codes("FROM a\n# syntax=docker/dockerfile:1\nUSER 1\nHEALTHCHECK CMD x\n") == []


def test_user_and_healthcheck_are_read_through_the_stages_the_final_one_builds_on():
    base = "FROM python AS base\nUSER app\nHEALTHCHECK CMD x\n"
    assert codes(base + "FROM base AS final\nCOPY a /\n") == []
    assert codes(base + "FROM base\nUSER root\n") == [(4, "buildtasks/non-root")]
    assert codes(base + "FROM base\nUSER 0:0\nHEALTHCHECK NONE\n") == [
        (4, "buildtasks/non-root"),
        (4, "buildtasks/healthcheck"),
    ]
    # a fresh FROM inherits nothing from earlier stages
    assert codes(base + "FROM python\n") == [
        (4, "buildtasks/non-root"),
        (4, "buildtasks/healthcheck"),
    ]


def test_the_targets_stage_is_the_final_one_and_its_checks_decide():
    text = "FROM a AS runtime\nUSER 1000\nHEALTHCHECK CMD x\nFROM a AS debug\n"
    assert codes(text) == [(4, "buildtasks/non-root"), (4, "buildtasks/healthcheck")]
    assert codes(text, msgspec.structs.replace(STRICT, stage="runtime")) == []
    assert codes(text, Target(name="dev")) == []  # dev asks for no checks
    assert codes("FROM a AS x\nFROM x AS y\nFROM y AS x\n", STRICT)  # a loop ends


def test_workflow_matrix_is_the_configured_targets_and_the_digest_detects_edits():
    settings = config.load(REPO)
    text = ci.render(settings, "github")
    assert yaml.safe_load(text)["jobs"]["build"]["strategy"]["matrix"]["target"] == list(
        settings.targets
    )
    assert not ci.hand_edited(text)
    assert ci.hand_edited(text.replace("ubuntu-latest", "self-hosted", 1))
    assert ci.hand_edited(text.split("\n", 3)[3])  # no header
    gitlab = yaml.safe_load(ci.render(settings, "gitlab"))
    assert gitlab["build"]["parallel"]["matrix"] == [{"TARGET": list(settings.targets)}]


class _Hadolint(Shell):
    """A shell whose hadolint finds nothing and whose runs are counted by file."""

    def __init__(self):
        super().__init__(echo=False)
        self.linted: list[str] = []

    def run(self, argv, **options):
        self.linted.append(argv[-1])
        return subprocess.CompletedProcess(argv, 0, "[]", "")


def test_lint_reads_each_targets_own_context_and_lints_a_shared_file_once(tmp_path):
    for where in ("a", "b", "shared"):
        (tmp_path / where).mkdir()
        (tmp_path / where / "Dockerfile").write_text("FROM x:1\n")
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "p"\n[tool.buildtasks]\nimage = "r/p"\ncontext = "shared"\n'
        '[tool.buildtasks.targets.a]\ncontext = "a"\n'
        '[tool.buildtasks.targets.b]\ncontext = "b"\n'
        "[tool.buildtasks.targets.c]\n[tool.buildtasks.targets.d]\n"
    )
    sh = _Hadolint()
    report = lint(sh, config.load(tmp_path))
    assert sorted(sh.linted) == [str(tmp_path / w / "Dockerfile") for w in ("a", "b", "shared")]
    assert report.files == 3 and report.failing == ()


def test_lint_takes_a_named_context_for_neither_an_untagged_image_nor_a_stage():
    text = "FROM base\nCOPY --from=protos a /a\nFROM other\nCOPY --from=gone b /b\n"
    target = Target(name="api", contexts={"base": "target:base", "protos": "protos"})
    found = [{"line": n, "code": c} for n, c in [(1, "DL3006"), (2, "DL3022"), (3, "DL3006"),
                                                 (4, "DL3022")]]  # fmt: skip
    kept = [item["line"] for item in found if not _about_named_context(text, item, target)]
    assert kept == [3, 4]
