from __future__ import annotations

from typing import TYPE_CHECKING

from invoke import Collection, Context, task
from invoke.exceptions import Exit

from buildtasks import lazy
from buildtasks.config import Settings
from buildtasks.errors import ConfigError
from buildtasks.tasks.common import one_line_errors, runtime

if TYPE_CHECKING:
    from buildtasks.proto import ProtoOptions

proto = lazy.module("buildtasks.proto")


def _options(project: Settings) -> ProtoOptions:
    if project.proto is None:
        raise ConfigError(
            "no [tool.buildtasks.proto] table; add one with `src` (specs) and `out` (package dir)"
        )
    config = project.proto
    return proto.ProtoOptions(
        src=project.root / config.src,
        out=project.root / config.out,
        include=tuple(project.root / path for path in config.include),
        grpc=config.grpc,
        pyi=config.pyi,
    )


@task(
    default=True,
    help={
        "check": "regenerate aside and fail with the list of files that differ from `out`",
        "force": "regenerate even when the stamp says nothing changed",
    },
)
@one_line_errors
def generate(c: Context, check=False, force=False):
    """Generate protobuf + gRPC Python code from the specs (incremental; --check for CI)."""
    sh = runtime(c)
    project = sh.settings
    options = _options(project)
    if check:
        differing = proto.check(sh, options)
        if differing:
            listing = "".join(f"\n  {name}" for name in differing)
            raise Exit(
                f"error: generated code in {options.out} differs from the specs "
                f"({len(differing)} files):{listing}\nrun `inv proto` to regenerate",
                code=1,
            )
        print(f"proto: {options.out} matches the specs")
        return
    outcome = proto.generate(sh, options, force=force)
    if not outcome.changed:
        print(f"proto: up to date ({len(outcome.files)} files in {options.out})")
    elif not sh.dry:
        for name in outcome.files:
            print(f"  {options.out.relative_to(project.root) / name}")
        print(f"proto: generated {len(outcome.files)} files in {options.out}")


@task
@one_line_errors
def clean(c: Context):
    """Remove the generated code (only files the generator wrote)."""
    sh = runtime(c)
    options = _options(sh.settings)
    removed = proto.clean(sh, options)
    verb = "would remove" if sh.dry else "removed"
    print(f"proto: {verb} {len(removed)} files from {options.out}")


collection = Collection("proto", generate, clean)
