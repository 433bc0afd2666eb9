from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from invoke import Collection, Context, task
from invoke.exceptions import Exit

from buildtasks import lazy
from buildtasks.errors import EngineError
from buildtasks.tasks.common import one_line_errors, runtime

if TYPE_CHECKING:
    from buildtasks.runtime import Runtime

checks = lazy.module("buildtasks.docker.checks")
config = lazy.module("buildtasks.config")
msgspec = lazy.module("msgspec")
pruning = lazy.module("buildtasks.docker.prune")


def _engine(rt: Runtime) -> pruning.Engine:
    return pruning.Engine(rt.engine.client, layer_cache=rt.profile.name == "podman")


@task(help={"json": "print the report as JSON"})
@one_line_errors
def usage(c: Context, json_=False):
    """The engine-wide build cache, and what prune keeps and would remove of this project."""
    rt = runtime(c)
    project = rt.settings
    report = pruning.usage_report(rt, project, _engine(rt))
    if json_:
        rt.document(report)
        return
    cache, mine = report["engine_build_cache"], report["project"]
    total, reclaimable = checks.human_size(cache["total"]), checks.human_size(cache["reclaimable"])
    old = checks.human_size(cache["older_than_until"])
    until = project.cache.until
    print(f"build cache (engine-wide, every project's)  {total} total, {reclaimable} reclaimable, "
          f"{old} unused for {until}+")  # fmt: skip
    for kept in mine["kept"]:
        print(f"keep    {kept['image']}  ({kept['reason']})")
    for item in mine["prune_would_remove"]:
        print(f"stale   {item['kind']:<10} {item['name']}  {checks.human_size(item['size'])}")
    print(f"inv prune would reclaim about {checks.human_size(mine['prune_would_reclaim'])}")
    for directory, size in report["cache_dirs"].items():
        print(f"cache dir  {directory}  {checks.human_size(size)}")


@task(
    help={
        "build_cache": "also let BuildKit prune the engine's build cache (every project's) "
        "unused for --until, down to --keep-storage",
        "until": "with --build-cache: unused for longer than this (e.g. 168h; default: config)",
        "keep_storage": "with --build-cache: keep this much (e.g. 5GB; default: config)",
        "all": "prune the whole engine, not only this project (needs --yes)",
        "yes": "confirm --all",
    }
)
@one_line_errors
def prune(c: Context, build_cache=False, until="", keep_storage="", all_=False, yes=False):
    """Remove this project's stale images, stopped stack containers and orphaned local
    cache blobs (exactly what --dry lists); report the bytes reclaimed."""
    sh = runtime(c)
    project = sh.settings
    overrides = {k: v for k, v in (("until", until), ("keep_storage", keep_storage)) if v}
    cache = config.replaced(project.cache, project.root, **overrides)
    project = msgspec.structs.replace(project, cache=cache)
    if (build_cache or all_) and sh.profile.name != "docker":
        raise EngineError(
            f"{sh.profile.name} has no BuildKit cache to prune; drop --build-cache/--all "
            "(`inv prune` alone removes this project's images), or use `podman image prune`"
        )
    if all_:
        if not sh.dry and not (yes or _confirmed()):
            raise Exit(
                "error: --all prunes every unused image, container, network and the build cache "
                "of the whole engine, other projects' too; nothing removed. Add --yes to confirm",
                code=1,
            )
        for argv in pruning.WHOLE_ENGINE:
            sh.run(argv)
        return
    engine = _engine(sh)
    found = pruning.plan(sh, project, engine)
    for kept in found.kept:
        print(f"keep {kept.image}  ({kept.reason})")
    if sh.dry:
        for item in found.items:
            print(f"would remove {item.kind:<10} {item.name}  {checks.human_size(item.size)}")
        estimate, count = found.estimate, len(found.items)
        size = checks.human_size(estimate)
        print(f"would reclaim about {size} ({estimate} bytes, {count} items)")
    else:
        result = pruning.run(sh, engine, project, found)
        for item in result.removed:
            print(f"removed {item.kind:<10} {item.name}  {checks.human_size(item.size)}")
        for item in result.skipped:
            print(f"skipped {item.kind:<10} {item.name}  (changed since the plan: left alone)")
        reclaimed, count = result.reclaimed, len(result.removed)
        size = checks.human_size(reclaimed)
        estimate = found.estimate
        print(f"reclaimed {size} ({reclaimed} bytes, {count} items; estimated {estimate} bytes)")
    if build_cache:
        sh.run(pruning.build_cache_argv(project))
        if not sh.dry:
            print("engine-wide build cache pruned by BuildKit (not counted above)")


def _confirmed() -> bool:
    if not sys.stdin.isatty():
        return False
    return input("prune the WHOLE engine, other projects included? [y/N] ").strip().lower() == "y"


collection = Collection("cache", usage)
