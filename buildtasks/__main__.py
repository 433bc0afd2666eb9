"""`python -m buildtasks` and the `buildtasks` console script: invoke on namespace(), with
`--engine docker|podman` choosing the engine for this invocation (as BUILDTASKS_ENGINE does).

Where no configuration loads yet (a new project), `buildtasks init` still runs: it writes
one."""

import os
import sys

from invoke import Argument, Collection, Program

from buildtasks import __version__, lazy, namespace
from buildtasks.engines import ENGINE_VARIABLE
from buildtasks.errors import ConfigError
from buildtasks.tasks import init

config = lazy.module("buildtasks.config")


class BuildtasksProgram(Program):
    def core_args(self) -> list[Argument]:
        engine = Argument(
            name="engine", help="the engine of this invocation: docker or podman (over config)"
        )
        return [*super().core_args(), engine]

    def parse_core(self, argv) -> None:
        super().parse_core(argv)
        if self.args.engine.value:  # the runtime reads it, as it reads the variable
            os.environ[ENGINE_VARIABLE] = self.args.engine.value


def main() -> None:
    BuildtasksProgram(
        namespace=_namespace(sys.argv[1:]),
        version=__version__,
        name="buildtasks",
        binary="buildtasks",
    ).run()


def _namespace(args: list[str]) -> Collection:
    """The project's tasks; `init` alone when it is asked for and the project has no
    loadable configuration."""
    if "init" in args:
        try:
            config.load(".")
        except ConfigError:
            return Collection(init.init)
    return namespace()


if __name__ == "__main__":
    main()
