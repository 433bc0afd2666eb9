"""`python -m buildtasks` and the `buildtasks` console script: invoke on namespace().

Where no configuration loads yet (a new project), `buildtasks init` still runs: it writes
one."""

import sys

from invoke import Collection, Program

from buildtasks import __version__, config, namespace
from buildtasks.tasks import init


def main() -> None:
    Program(
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
        except config.ConfigError:
            return Collection(init.init)
    return namespace()


if __name__ == "__main__":
    main()
