from __future__ import annotations

from invoke import Collection, Context, task
from invoke.exceptions import Exit

from buildtasks.config import Settings
from buildtasks.errors import ConfigError
from buildtasks.tasks.common import one_line_errors, settings, shell


def _options(project: Settings):
    from buildtasks.proto import ProtoOptions

    if project.proto is None:
        raise ConfigError(
            "no [tool.buildtasks.proto] table; add one with `src` (specs) and `out` (package dir)"
        )
    config = project.proto
    return ProtoOptions(
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
    from buildtasks import proto

    project = settings(c)
    options = _options(project)
    sh = shell(c, project)
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
    from buildtasks import proto

    project = settings(c)
    options = _options(project)
    removed = proto.clean(shell(c, project), options)
    verb = "would remove" if c.config.run.dry else "removed"
    print(f"proto: {verb} {len(removed)} files from {options.out}")


collection = Collection("proto", generate, clean)
