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
        timeout=60,  # a listing that hangs (a FIFO opened for reading) fails
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
        lambda entry: json.dumps({**entry, "inputs": {**entry["inputs"], "salt": "zz"}}),
        lambda entry: json.dumps({**entry, "targets": [["web", "Dockerfile", "worker"]]}),
        lambda entry: json.dumps({**entry, "targets": [["web", "Dockerfile", ["nosuch"]]]}),
        lambda entry: json.dumps({**entry, "targets": [["web", "D", []], ["web", "D", []]]}),
        lambda entry: json.dumps({**entry, "targets": [["web", "\x1b]0;x\x07Dockerfile", []]]}),
        lambda entry: json.dumps({k: v for k, v in entry.items() if k != "inputs"}),
    ],
    ids=[
        "text",
        "nested",
        "name",
        "dockerfile",
        "targets",
        "db",
        "salt",
        "inputs",
        "depends-on-text",
        "depends-on-unknown",
        "twice",
        "control",
    ],
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


def test_a_fifo_or_an_oversized_file_at_the_cache_path_is_not_read(tmp_path):
    root, cache = project(tmp_path), tmp_path / "cache"
    good = listed(root, cache)
    (entry,) = (cache / "buildtasks").glob("listing-*.json")
    entry.unlink()
    os.mkfifo(entry)  # opening it for reading would wait for a writer forever
    assert listed(root, cache)[:3] == good[:3]  # loaded again, and the entry replaced
    entry.write_bytes(b" " * (listing.MAX_ENTRY + 1))
    assert listed(root, cache)[:3] == good[:3]


def test_an_edit_while_the_list_is_made_is_never_remembered_as_current(tmp_path, monkeypatch):
    """A .env edited after the configuration was read but before the shape is remembered:
    the shape must come from what the stamps describe."""
    root, cache = project(tmp_path), tmp_path / "cache"
    pyproject = root / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace(
            "[tool.buildtasks.targets.web]\n",
            '[tool.buildtasks.targets.web]\ndockerfile = "${DF}"\n',
        )
    )
    (root / ".env").write_text("DF=Dockerfile.old\n")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("DF", raising=False)
    load = config.load

    def edited_meanwhile(where):
        settings = load(where)
        (root / ".env").write_text("DF=Dockerfile.new\n")  # an editor saves now
        return settings

    monkeypatch.setattr(config, "load", edited_meanwhile)
    listing.shape(root)
    monkeypatch.setattr(config, "load", load)
    (root / "tasks.py").write_text("from buildtasks import namespace\n\nns = namespace()\n")
    status = listed(root, cache)[0]
    help_text = subprocess.run(
        [sys.executable, "-m", "invoke", "--help", "build-web"], cwd=root, capture_output=True,
        text=True, env={**os.environ, "XDG_CACHE_HOME": str(cache)},
    ).stdout  # fmt: skip
    assert status == 0 and "Dockerfile.new" in help_text and "Dockerfile.old" not in help_text


@pytest.mark.parametrize("xdg", ["relative/cache", ""])
def test_the_cache_stays_out_of_the_checkout_and_a_missing_home_costs_only_speed(tmp_path, xdg):
    root = project(tmp_path)
    (root / "tasks.py").write_text("from buildtasks import namespace\n\nns = namespace()\n")
    env = {k: v for k, v in os.environ.items() if k not in ("HOME", "XDG_CACHE_HOME")}
    result = subprocess.run(
        [sys.executable, "-c", "import pwd; pwd.getpwuid = lambda uid: {}[uid]; import runpy, sys; "
         "sys.argv = ['invoke', '--list']; runpy.run_module('invoke', run_name='__main__')"],
        cwd=root, capture_output=True, text=True, env={**env, "XDG_CACHE_HOME": xdg},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "build-web" in result.stdout
    assert sorted(p.name for p in root.iterdir()) == [".env", "pyproject.toml", "tasks.py"]


def test_a_project_directory_named_in_bytes_that_are_not_utf8_lists(tmp_path):
    root = project(tmp_path)
    odd = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9"))
    root.rename(odd)
    status, names, _, stderr = listed(odd, tmp_path / "cache")
    assert status == 0 and "build-web" in names, stderr
