"""The runtime of an invocation: one path for side effects, and the layering it sits in."""

from __future__ import annotations

import ast
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from invoke import Config, Context

from buildtasks import config, listing
from buildtasks.docker import engine as engine_module
from buildtasks.docker.engine import Engine
from buildtasks.runtime import Runtime
from buildtasks.shell import Shell
from buildtasks.tasks import collection
from buildtasks.tasks.common import runtime

PACKAGE = Path(__file__).resolve().parents[2] / "buildtasks"
# Where invoke may be imported: the task layer and the program that runs it.
INVOKE_LAYER = ("tasks/", "__main__.py")


def project(tmp_path: Path, body: str = "") -> Path:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.buildtasks]\nimage = "example.test/app"\n'
        '[tool.buildtasks.targets.web]\nsecrets = ["token=env:APP_TOKEN"]\n' + body
    )
    return tmp_path


def test_a_dry_runtime_announces_file_changes_and_makes_none(tmp_path, capsys):
    rt = Runtime(config.load(project(tmp_path)), dry=True)
    target = tmp_path / "out.json"
    victim = tmp_path / "keep.txt"
    victim.write_text("kept\n")
    assert rt.write_text(target, "{}") is False
    assert rt.remove_file(victim) is False
    assert not target.exists() and victim.read_text() == "kept\n"
    assert capsys.readouterr().err.splitlines() == [
        f"[dry] write {target}",
        f"[dry] rm -f {victim}",
    ]


def test_a_runtime_writes_atomically_and_says_so(tmp_path, capsys):
    rt = Runtime(config.load(project(tmp_path)))
    target = tmp_path / "out.json"
    assert rt.write_text(target, "{}\n") is True
    assert target.read_text() == "{}\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert rt.remove_file(target) is True and not target.exists()
    assert capsys.readouterr().err.splitlines() == [f"write {target}", f"rm -f {target}"]


def test_secret_values_never_show_in_what_the_runtime_echoes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("APP_TOKEN", "s3cr3t-value")
    rt = Runtime(config.load(project(tmp_path)), dry=True)
    rt.run(["curl", "-H", "Authorization: s3cr3t-value", "https://example.test"])
    rt.note("sent s3cr3t-value")
    err = capsys.readouterr().err
    assert "s3cr3t-value" not in err and err.count("***") == 2


def test_a_derived_runtime_shares_the_engine_and_the_dry_flag(tmp_path):
    rt = Runtime(config.load(project(tmp_path)), dry=True)
    other = rt.derive(config.load(project(tmp_path)))
    assert other.engine is rt.engine and other.dry


class _SlowEngine(Engine):
    """An engine whose connection takes a while and is counted, made slowly too: threads
    that ask at once all meet the window a check-then-set leaves open."""

    made = 0

    def __init__(self, *args):
        time.sleep(0.05)
        type(self).made += 1
        super().__init__(*args)
        self.connections = 0

    def _connect(self):
        self.connections += 1
        time.sleep(0.05)
        self._client = object()


def _at_once(ask, count: int = 8) -> list:
    barrier = threading.Barrier(count)

    def one(_):
        barrier.wait()
        return ask()

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def test_threads_asking_at_once_share_one_engine_connected_once(tmp_path, monkeypatch):
    monkeypatch.setattr(engine_module, "Engine", _SlowEngine)
    _SlowEngine.made = 0
    rt = Runtime(config.load(project(tmp_path)))
    engines = _at_once(lambda: rt.engine)
    assert _SlowEngine.made == 1 and all(e is engines[0] for e in engines)
    clients = _at_once(lambda: rt.engine.client)
    assert rt.engine.connections == 1 and all(c is clients[0] for c in clients)


def test_clients_asked_for_while_the_engine_warms_up_wait_for_that_one_connection():
    engine = _SlowEngine(Shell())
    engine.warm_up()
    clients = _at_once(lambda: engine.client)  # no thread joins a connector another cleared
    assert engine.connections == 1 and all(c is clients[0] for c in clients)


def test_tasks_of_one_invocation_share_one_runtime_until_the_settings_change(tmp_path):
    root = project(tmp_path)
    context = Context(Config(overrides=collection(listing.of(config.load(root))).configuration()))
    first = runtime(context)
    assert runtime(context) is first
    (root / "pyproject.toml").write_text(
        (root / "pyproject.toml").read_text().replace("example.test/app", "example.test/other")
    )
    second = runtime(context)
    assert second is not first and second.settings.image == "example.test/other"


def test_listing_the_tasks_loads_no_domain_module_and_no_sdk(tmp_path):
    """`inv --list` pays for invoke (which loads yaml itself) and the settings, not for what
    the tasks use."""
    root = project(tmp_path)
    probe = (
        "import sys, buildtasks\n"
        f"buildtasks.namespace({str(root)!r})\n"
        "print('\\n'.join(sys.modules))"
    )
    loaded = set(subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True,
                                text=True).stdout.split())  # fmt: skip
    assert "buildtasks.tasks" in loaded  # the probe did build the collection
    heavy = {"docker", "redis", "tomlkit", "urllib.request", "tarfile", "sqlite3",
             "buildtasks.stack", "buildtasks.runtime", "buildtasks.docker.engine",
             "buildtasks.backup.sets", "buildtasks.release.flow", "buildtasks.proto",
             "buildtasks.git", "buildtasks.shell"}  # fmt: skip
    assert heavy & loaded == set()


def _modules() -> dict[str, ast.Module]:
    return {
        path.relative_to(PACKAGE).as_posix(): ast.parse(path.read_text())
        for path in sorted(PACKAGE.rglob("*.py"))
    }


def test_dependencies_are_declared_at_the_top_of_each_module():
    """No import hides inside a function; the one exception is the optional proto extra."""
    hidden = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Import | ast.ImportFrom):
                        target = getattr(inner, "module", None) or inner.names[0].name
                        hidden.append(f"{name}:{inner.lineno} {target}")
    assert hidden == [next(h for h in hidden if h.endswith(" grpc_tools"))]


def test_only_the_task_layer_knows_invoke():
    offenders = []
    for name, tree in _modules().items():
        if name.startswith(INVOKE_LAYER):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [
                    alias.name for alias in node.names]  # fmt: skip
                offenders += [f"{name}: {n}" for n in names if n.split(".")[0] == "invoke"]
    assert offenders == []


def test_modules_import_no_cycle():
    def dotted(name: str) -> str:
        return "buildtasks." + name.removesuffix(".py").replace("/", ".").removesuffix("__init__")

    modules = _modules()
    known = {dotted(name).rstrip(".") for name in modules}
    graph: dict[str, set[str]] = {}
    for name, tree in modules.items():
        module = dotted(name).rstrip(".")
        edges = graph.setdefault(module, set())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("buildtasks"):
                # `from buildtasks import config` depends on buildtasks.config
                submodules = {f"{node.module}.{a.name}" for a in node.names} & known
                edges.update(submodules or {node.module})
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "module":
                argument = node.args[0] if node.args else None
                if isinstance(argument, ast.Constant) and str(argument.value).startswith(
                    "buildtasks"
                ):
                    edges.add(argument.value)  # lazy.module("buildtasks...")
    graph = {m: {e for e in edges if e in graph and e != m} for m, edges in graph.items()}
    state: dict[str, int] = {}

    def cycle_from(module: str, path: list[str]) -> list[str]:
        state[module] = 1
        for nxt in sorted(graph[module]):
            if state.get(nxt) == 1:
                return [*path, module, nxt]
            if nxt not in state and (found := cycle_from(nxt, [*path, module])):
                return found
        state[module] = 2
        return []

    cycles = [c for m in sorted(graph) if m not in state and (c := cycle_from(m, []))]
    assert cycles == []
