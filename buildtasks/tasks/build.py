from __future__ import annotations

from invoke import Context, Task, task

from buildtasks import lazy
from buildtasks.errors import ConfigError
from buildtasks.listing import TargetShape
from buildtasks.tasks.common import one_line_errors, runtime

builder = lazy.module("buildtasks.docker.builder")
docker_build = lazy.module("buildtasks.docker.build")

FLAG_HELP = {
    "tag": "image tag or full reference, replaces the configured tags (repeatable)",
    "platform": "comma-separated platforms, e.g. linux/amd64,linux/arm64 (default: native, "
    "or the configured platforms with --push)",
    "push": "push to the registry instead of loading into the engine",
    "no_cache": "build without BuildKit's cache",
    "build_arg": "KEY=VALUE build argument, over the configured ones (repeatable)",
    "no_check": "skip the image checks (non-root, healthcheck, size, .dockerignore)",
}
# The only short flags, so a letter means one option on every task that has it. Invoke's
# automatic ones gave `-o` two meanings (--no-check, --only) and rendered `--` for one flag.
SHORT_FLAGS = {"tag": "t", "platform": "p"}


class ShortFlagTask(Task):
    """A task whose short flags come from SHORT_FLAGS and nowhere else."""

    def __init__(self, body, **options):
        super().__init__(body, auto_shortflags=False, **options)

    def arg_opts(self, name, default, taken_names):
        opts = super().arg_opts(name, default, taken_names)
        if name in SHORT_FLAGS:
            opts["names"].append(SHORT_FLAGS[name])
        return opts


def _request(tag, platform, push, no_cache, build_arg):
    build_args = {}
    for item in build_arg or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--build-arg {item!r}: write KEY=VALUE")
        build_args[key] = value
    platforms = tuple(p.strip() for p in (platform or "").split(",") if p.strip())
    return docker_build.BuildRequest(tuple(tag or ()), platforms, build_args, push, no_cache)


def target_task(target: TargetShape) -> Task:
    """The `build-<name>` task of one configured target."""

    @one_line_errors
    def build_target(
        c: Context,
        tag=None,
        platform="",
        push=False,
        no_cache=False,
        build_arg=None,
        no_check=False,
    ):
        rt = runtime(c)
        request = _request(tag, platform, push, no_cache, build_arg)
        build_plans = builder.plans(rt, [target.name], request)
        for built in builder.run(rt, build_plans, check=not no_check):
            rt.result(built.summary())

    build_target.__doc__ = f"Build the {target.name} image from {target.dockerfile}" + (
        f" (and {', '.join(target.depends_on)} first, when changed)." if target.depends_on else "."
    )
    return ShortFlagTask(build_target, help=FLAG_HELP, iterable=["tag", "build_arg"])


@task(
    klass=ShortFlagTask,
    name="build",
    help={
        "print": "print the generated bake JSON and build nothing",
        "only": "comma-separated targets to build (default: all)",
        **{k: v for k, v in FLAG_HELP.items() if k not in ("tag", "platform")},
    },
    iterable=["build_arg"],
)
@one_line_errors
def build_all(
    c: Context, print=False, only="", push=False, no_cache=False, build_arg=None, no_check=False
):
    """Build every target at once with `docker buildx bake` (shared bases first)."""
    rt = runtime(c)
    project = rt.settings
    names = [n.strip() for n in only.split(",") if n.strip()] or list(project.targets)
    unknown = [n for n in names if n not in project.targets]
    if unknown:
        raise ConfigError(
            f"--only: no target {unknown[0]!r}; targets: {', '.join(project.targets)}"
        )
    build_plans = builder.plans(rt, names, _request(None, "", push, no_cache, build_arg))
    if print:
        rt.document(docker_build.bake_definition(build_plans))
        return
    for built in builder.bake(rt, build_plans, check=not no_check):
        rt.result(built.summary())
