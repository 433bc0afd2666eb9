"""The task list's remembered shape: used only while everything it was made from is
unchanged, never trusted beyond what it may hold, and holding no value of the environment
or the .env files. Each listing runs in a process of its own, as `inv --list` does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from buildtasks import config, listing

PROBE = (
    "import sys, buildtasks\n"
    "ns = buildtasks.namespace(sys.argv[1])\n"
    "print(' '.join(sorted(ns.task_names)))\n"
    "print('loaded' if 'buildtasks.config' in sys.modules else 'remembered')\n"
)


def listed(root: Path, cache: Path, **env: str) -> tuple[int, str, str, str]:
    """(exit status, task names, whether the configuration was loaded, stderr)."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(root)],
        capture_output=True,
        text=True,
        env={**os.environ, "XDG_CACHE_HOME": str(cache), **env},
    )
    lines = result.stdout.split("\n")
    return result.returncode, lines[0], lines[1] if len(lines) > 1 else "", result.stderr


def project(tmp_path: Path, table: str = "") -> Path:
    root = tmp_path / "project"
    root.mkdir(exist_ok=True)
    (root / "pyproject.toml").write_text(
        '[tool.buildtasks]\nimage = "${IMAGE:-example.test/app}"\n'
        "[tool.buildtasks.targets.web]\n[tool.buildtasks.targets.worker]\n" + table
    )
    (root / ".env").write_text("TOKEN=s3cr3t-from-dotenv\n")
    return root


def test_an_unchanged_project_lists_without_loading_its_configuration(tmp_path):
    root, cache = project(tmp_path), tmp_path / "cache"
    first = listed(root, cache)
    assert first[0] == 0 and first[2] == "loaded"
    second = listed(root, cache)
    assert second[:2] == first[:2] and "build-web" in second[1] and second[2] == "remembered"


def test_a_changed_pyproject_is_loaded_again_and_a_broken_one_is_one_line(tmp_path):
    root, cache = project(tmp_path), tmp_path / "cache"
    listed(root, cache)
    pyproject = root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + "[tool.buildtasks.targets.extra]\n")
    status, names, how, _ = listed(root, cache)
    assert status == 0 and "build-extra" in names and how == "loaded"
    pyproject.write_text(pyproject.read_text().replace("image", "imgae"))
    status, _, _, stderr = listed(root, cache)
    assert status == 2
    assert stderr == (
        "error: pyproject.toml: tool.buildtasks: unknown key `imgae` (did you mean `image`?)\n"
    )


def test_the_environment_and_the_env_files_are_checked_again_when_they_change(tmp_path):
    root, cache = project(tmp_path), tmp_path / "cache"
    listed(root, cache)
    assert listed(root, cache, IMAGE="Not A Reference")[0] == 2  # the environment changed
    env = root / ".env"
    stat = env.stat()
    env.write_text("IMAGE=Bad Name\n")  # the configuration now takes IMAGE from .env
    os.utime(env, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime: the ctime differs
    status, _, _, stderr = listed(root, cache)
    assert status == 2 and "image" in stderr and "Traceback" not in stderr


def test_the_remembered_shape_holds_no_value_of_the_environment_or_env_files(tmp_path):
    root, cache = project(tmp_path), tmp_path / "cache"
    listed(root, cache, IMAGE="registry.test/s3cr3t-from-env")
    (entry,) = (cache / "buildtasks").glob("listing-*.json")
    text = entry.read_text()
    assert "s3cr3t" not in text and "registry.test" not in text
    assert entry.stat().st_mode & 0o077 == 0  # this user's only


@pytest.mark.parametrize(
    "damage",
    [
        lambda entry: "not json",
        lambda entry: "[" * 100_000,
        lambda entry: json.dumps({**entry, "targets": [["../evil", "Dockerfile", []]]}),
        lambda entry: json.dumps({**entry, "targets": [["web", 5, []]]}),
        lambda entry: json.dumps({**entry, "targets": "web"}),
        lambda entry: json.dumps({**entry, "db": "yes"}),
        lambda entry: json.dumps({**entry, "salt": "zz"}),
        lambda entry: json.dumps({k: v for k, v in entry.items() if k != "inputs"}),
    ],
    ids=["text", "nested", "name", "dockerfile", "targets", "db", "salt", "inputs"],
)
def test_a_damaged_cache_is_ignored_and_the_configuration_loaded(tmp_path, damage):
    root, cache = project(tmp_path), tmp_path / "cache"
    good = listed(root, cache)
    (entry,) = (cache / "buildtasks").glob("listing-*.json")
    entry.write_text(damage(json.loads(entry.read_text())))
    assert listed(root, cache)[:3] == good[:3]  # loaded again, and the same list


def test_a_cache_that_cannot_be_written_costs_only_speed(tmp_path):
    root = project(tmp_path)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache directory would be")
    for _ in range(2):
        status, names, how, stderr = listed(root, blocked)
        assert (status, how, stderr) == (0, "loaded", "") and "build-worker" in names


def test_the_shape_is_what_the_settings_say(tmp_path):
    root = project(tmp_path, '[tool.buildtasks.targets.api.contexts]\nbase = "target:web"\n')
    shape = listing.of(config.load(root))
    assert shape.root == root.resolve() and not shape.db and not shape.proto
    assert ("api", "Dockerfile", ("web",)) in shape.targets
