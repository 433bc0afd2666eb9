"""The command line as users meet it: listing, help, config errors, a missing engine."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.integration


def test_list_and_help_cover_every_target_and_flag():
    listing = run_cli(["invoke", "--list"])
    assert listing.returncode == 0
    for task in ("build", "build-dev", "build-prod", "build-apify", "doctor"):
        assert f"  {task} " in listing.stdout
    help_text = run_cli(["invoke", "--help", "build-prod"]).stdout
    for flag in ("--tag", "--platform", "--push", "--no-cache", "--build-arg", "--no-check"):
        line = next(line for line in help_text.splitlines() if re.match(rf"\s+-\w.*, {flag}", line))
        assert len(re.split(r"\s{2,}", line.strip())[1]) > 10, line


def test_console_script_lists_the_same_tasks():
    script = Path(sys.executable).parent / "buildtasks"  # installed beside this interpreter
    listing = subprocess.run([str(script), "--list"], cwd=REPO, capture_output=True, text=True)
    module = run_cli(["buildtasks", "--list"])
    assert listing.returncode == 0 and "build-prod" in listing.stdout
    inv = run_cli(["invoke", "--list"]).stdout
    # the same tasks; a bundled-namespace program heads them "Subcommands:"
    assert listing.stdout.splitlines()[1:] == module.stdout.splitlines()[1:] == inv.splitlines()[1:]


def test_importing_buildtasks_loads_no_docker_sdk_or_yaml():
    # invoke itself imports yaml; buildtasks must add neither it nor the docker SDK.
    code = (
        "import sys, invoke; before = set(sys.modules); "
        "import buildtasks; buildtasks.namespace(); "
        "new = set(sys.modules) - before; "
        "print(sorted(m for m in new if m.split('.')[0] in ('docker', 'yaml')))"
    )
    probe = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert probe.stdout.strip() == "[]", probe.stderr


def test_broken_config_is_one_line_without_traceback(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.buildtasks]\nimgae = "x"\n')
    result = run_cli(["buildtasks", "--list"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        "error: pyproject.toml: tool.buildtasks: unknown key `imgae` (did you mean `image`?)\n"
    )


def test_missing_engine_is_one_clear_line(tmp_path):
    result = run_cli(
        ["invoke", "build-prod"], env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert (
        result.stderr.strip().splitlines()[-1].startswith("error: cannot reach the Docker engine")
    )
