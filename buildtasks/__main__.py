"""`python -m buildtasks` and the `buildtasks` console script: invoke on namespace(), with
`--engine docker|podman` choosing the engine for this invocation (as BUILDTASKS_ENGINE does)."""

import os

from invoke import Argument, Program

from buildtasks import __version__, namespace
from buildtasks.engines import ENGINE_VARIABLE


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
        namespace=namespace(), version=__version__, name="buildtasks", binary="buildtasks"
    ).run()


if __name__ == "__main__":
    main()
