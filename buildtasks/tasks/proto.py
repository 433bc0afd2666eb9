from __future__ import annotations

from typing import TYPE_CHECKING

from invoke import Collection, Context, task
from invoke.exceptions import Exit

from buildtasks import lazy
from buildtasks.tasks.common import one_line_errors, runtime

if TYPE_CHECKING:
    from buildtasks.config import Settings
    from buildtasks.proto import ProtoOptions
    from buildtasks.runtime import Runtime

proto = lazy.module("buildtasks.proto")
buf = lazy.module("buildtasks.buf")


def _options(project: Settings) -> ProtoOptions:
    config = proto.configured(project)
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


def _render(rt: Runtime, report: buf.Report, as_json: bool, what: str) -> None:
    """The findings as file:line lines (or one JSON document); exit 1 when there are any."""
    if as_json:
        rt.document(report.to_json())
    else:
        for finding in report.findings:
            rt.result(str(finding))
        if report.note:
            rt.result(f"proto: {report.note}")
    if report.findings:
        raise Exit(f"error: proto: {len(report.findings)} {what} ({report.config})", code=1)
    if not as_json:
        rt.result(f"proto: no {what} ({report.config})")


@task(
    help={
        "against": "git ref to compare with (default: the newest release tag, else the "
        "release branch)",
        "category": "buf breaking category over the configured one: FILE, PACKAGE, "
        "WIRE_JSON or WIRE",
        "json": "print the result as one JSON document",
    }
)
@one_line_errors
def breaking(c: Context, against="", category="", json=False):
    """Fail on breaking changes of the specs since a git ref (buf breaking; no checkout)."""
    rt = runtime(c)
    report = buf.breaking(rt, rt.settings, against, category)
    _render(rt, report, json, f"breaking changes against {report.against}")


@task(name="lint", help={"json": "print the result as one JSON document"})
@one_line_errors
def lint_specs(c: Context, json=False):
    """Lint the specs with buf lint (rules from buf.yaml or [tool.buildtasks.proto])."""
    rt = runtime(c)
    _render(rt, buf.lint(rt, rt.settings), json, "lint findings")


collection = Collection("proto", generate, clean, breaking, lint_specs)
