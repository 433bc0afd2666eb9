from __future__ import annotations

import dataclasses
import json
import sys

from invoke import Collection, Context, task
from invoke.exceptions import Exit

from buildtasks.tasks.common import one_line_errors, settings, shell


def _engine():
    from buildtasks.docker.engine import Engine
    from buildtasks.docker.prune import Engine as PruneEngine

    return PruneEngine(Engine().client)


@task(help={"json": "print the report as JSON"})
@one_line_errors
def usage(c: Context, json_=False):
    """Build cache, this project's images, dangling images, stopped containers, cache dirs."""
    from buildtasks.docker import prune
    from buildtasks.docker.checks import human_size

    project = settings(c)
    report = prune.usage_report(project, _engine())
    if json_:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return
    cache, images = report["build_cache"], report["images"]
    total, reclaimable = human_size(cache["total"]), human_size(cache["reclaimable"])
    old = human_size(cache["older_than_until"])
    until = project.cache.until
    print(f"build cache      {total} total, {reclaimable} reclaimable, {old} unused for {until}+")
    images_size = human_size(sum(i["size"] for i in images))
    print(f"project images   {len(images)} of {project.image}, {images_size}")
    for image in images:
        tags = ", ".join(image["tags"]) or "<none>"
        print(f"  {image['id']}  {human_size(image['size']):>9}  {tags}")
    print(f"dangling images  {len(report['dangling'])}")
    print(f"stopped containers of the stacks  {len(report['stopped_containers'])}")
    for directory, size in report["cache_dirs"].items():
        print(f"cache dir        {directory}  {human_size(size)}")


@task(
    help={
        "until": "build cache unused for longer than this goes (e.g. 168h; default: config)",
        "keep_storage": "keep this much build cache (e.g. 5GB; default: config)",
        "all": "prune the whole engine, not only this project (needs --yes)",
        "yes": "confirm --all",
    }
)
@one_line_errors
def prune(c: Context, until="", keep_storage="", all_=False, yes=False):
    """Remove this project's stale image tags, dangling images, stopped stack containers,
    orphaned local cache blobs and old build cache; report the bytes reclaimed."""
    from buildtasks.docker import prune as pruning
    from buildtasks.docker.checks import human_size

    project = settings(c)
    overrides = {k: v for k, v in (("until", until), ("keep_storage", keep_storage)) if v}
    project = dataclasses.replace(project, cache=dataclasses.replace(project.cache, **overrides))
    sh = shell(c, project)
    engine = _engine()
    items = [] if all_ else pruning.plan(project, engine)
    if all_ and not sh.dry and not (yes or _confirmed()):
        raise Exit(
            "error: --all prunes every unused image, container, network and the build cache of "
            "the whole engine, other projects' too; nothing removed. Add --yes to confirm",
            code=1,
        )
    if sh.dry:
        for argv in pruning.WHOLE_ENGINE if all_ else ():
            sh.run(argv)
        for item in items:
            print(f"would remove {item.kind:<15} {item.name}  {human_size(item.size)}")
        print(f"would reclaim about {human_size(sum(i.size for i in items))} ({len(items)} items)")
        return
    reclaimed = pruning.run(sh, engine, project, items, whole_engine=all_)
    print(f"reclaimed {human_size(reclaimed)} ({reclaimed} bytes, {len(items)} items)")


def _confirmed() -> bool:
    if not sys.stdin.isatty():
        return False
    return input("prune the WHOLE engine, other projects included? [y/N] ").strip().lower() == "y"


collection = Collection("cache", usage)
