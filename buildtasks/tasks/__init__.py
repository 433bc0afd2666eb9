"""Thin invoke tasks: flags in, domain calls out, errors as one line."""

from __future__ import annotations

from pathlib import Path

from invoke import Collection

from buildtasks.listing import Shape
from buildtasks.tasks import (
    backup,
    build,
    cache,
    ci,
    db,
    doctor,
    init,
    lint,
    proto,
    release,
    stack,
)


def collection(shape: Shape) -> Collection:
    ns = Collection()
    for target in shape.targets:
        ns.add_task(build.target_task(target), name=f"build-{target.name}")
    ns.add_task(build.build_all, name="build")
    ns.add_task(doctor.doctor, name="doctor")
    ns.add_task(lint.lint)
    ns.add_task(ci.ci)
    ns.add_task(init.init)
    ns.add_task(release.push)
    ns.add_task(release.release)
    ns.add_task(release.verify)
    for stack_task in (stack.up, stack.down, stack.logs, stack.health, stack.deploy):
        ns.add_task(stack_task)
    ns.add_collection(backup.collection)
    ns.add_collection(cache.collection)
    ns.add_task(cache.prune)
    ns.add_task(backup.restore)
    ns.add_task(db.clean_storage)
    if shape.db:
        ns.add_collection(db.collection)
    if shape.proto:
        ns.add_collection(proto.collection)
    ns.configure({"buildtasks": {"root": str(Path(shape.root))}})
    return ns
