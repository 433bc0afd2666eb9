"""The command line as users meet it: listing, help, config errors, a missing engine."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from buildtasks.platforms import free_port
from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.integration


def options(task: str, cwd: Path = REPO, env: dict | None = None) -> dict[str, tuple[str, str]]:
    """--long flag -> (its short flag or '', its help text), read from `--help TASK`."""
    result = run_cli(["invoke", "--help", task], cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr
    body = result.stdout.split("Options:\n", 1)[1]
    found, flag = {}, ""
    for line in body.splitlines():
        entry = re.match(r"^  (-(\w)(?: \w+)?, )?(--[\w-]+)(?:=\w+)?(?:\s{2,}(.*))?$", line)
        if entry:
            flag = entry.group(3)
            found[flag] = (entry.group(2) or "", entry.group(4) or "")
        elif line.strip() and flag:  # help text wrapped onto the next line
            short, text = found[flag]
            found[flag] = (short, f"{text} {line.strip()}".strip())
    return found


BUILD_FLAGS = {"--build-arg", "--no-cache", "--no-check", "--push"}


def test_each_task_help_names_its_flags_with_their_help():
    from buildtasks.tasks.build import FLAG_HELP

    listing = run_cli(["invoke", "--list"])
    assert listing.returncode == 0
    for task in ("build", "build-dev", "build-prod", "build-apify", "push", "release", "doctor"):
        assert re.search(rf"^  {task} +\S", listing.stdout, re.MULTILINE), task
    expected = {
        "build-prod": BUILD_FLAGS | {"--tag", "--platform"},
        "build": BUILD_FLAGS | {"--only", "--print"},
        "push": {"--target", "--platform", "--digests-file", "--allow-dirty"},
        "release": {
            "--bump",
            "--version",
            "--allow-empty-changelog",
            "--resume",
            "--allow-breaking",
        },
    }
    for task, flags in expected.items():
        found = options(task)
        assert set(found) == flags, task
        for flag, (_, text) in found.items():
            assert len(text.split()) >= 4, f"{task} {flag}: {text!r}"
        for name, text in FLAG_HELP.items() if task.startswith("build") else ():
            if f"--{name.replace('_', '-')}" in found:
                assert found[f"--{name.replace('_', '-')}"][1] == text, (task, name)
    assert options("build")["--no-check"][1] == FLAG_HELP["no_check"]  # once `--, --no-check`


def test_a_short_flag_means_one_option_on_every_build_and_release_task():
    meanings: dict[str, set[str]] = {}
    for task in ("build", "build-dev", "build-prod", "build-apify", "push", "release"):
        for flag, (short, _) in options(task).items():
            if short:
                meanings.setdefault(short, set()).add(flag)
    assert meanings == {"t": {"--tag"}, "p": {"--platform"}}
    for task in ("build", "build-prod"):  # -o once meant --only on one and --no-check on the other
        result = run_cli(["invoke", task, "-o", "prod"])
        assert result.returncode != 0 and "No idea what '-o' is!" in result.stderr


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
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot reach the Docker engine")
    assert last.endswith(
        "; install Docker Engine (https://docs.docker.com/engine/install/) and start it, "
        "or point DOCKER_HOST at a running engine"
    )


def doctor_lines(result) -> dict[str, str]:
    return {line[5:].split()[0]: line for line in result.stdout.splitlines()}


def test_doctor_passes_on_a_ready_machine(engine):
    result = run_cli(["invoke", "doctor"])
    assert result.returncode == 0, result.stdout + result.stderr
    lines = doctor_lines(result)
    assert {"engine", "buildx", "compose", "registry", "mirror"} <= set(lines)
    assert all(line.startswith("ok ") for line in lines.values()), result.stdout


def test_doctor_fails_on_an_unreachable_registry_and_says_what_to_do(engine):
    address = f"127.0.0.1:{free_port()}"
    result = run_cli(["invoke", "doctor"], env={"REGISTRY": address})
    assert result.returncode == 1
    assert doctor_lines(result)["registry"].startswith(
        f"FAIL registry        {address} unreachable"
    )
    assert doctor_lines(result)["registry"].endswith(
        f"-> start the registry at {address}, or change `image` in [tool.buildtasks]"
    )
    assert result.stderr.strip().splitlines()[-1] == (
        "error: registry not ready; apply the fixes above"
    )


def test_doctor_without_an_engine_points_a_pip_user_at_the_install_docs(tmp_path):
    result = run_cli(["invoke", "doctor"], env={"DOCKER_HOST": f"unix://{tmp_path}/none.sock"})
    assert result.returncode == 1
    assert doctor_lines(result)["engine"].endswith(
        "-> install Docker Engine (https://docs.docker.com/engine/install/) and start it, "
        "or point DOCKER_HOST at a running engine"
    )
    assert "scripts/" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_docker_cli_points_at_the_install_docs(tmp_path):
    # PATH without docker: the build's first `docker` command is not found.
    result = run_cli(["invoke", "build-prod"], env={"PATH": str(tmp_path)})
    assert result.returncode == 127
    assert result.stderr.strip().splitlines()[-1] == (
        "error: docker: command not found; install it (https://docs.docker.com/engine/install/, "
        "with the buildx and compose plugins) or add it to PATH"
    )
