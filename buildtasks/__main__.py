"""`python -m buildtasks` and the `buildtasks` console script: invoke on namespace()."""

from invoke import Program

from buildtasks import __version__, namespace


def main() -> None:
    Program(
        namespace=namespace(), version=__version__, name="buildtasks", binary="buildtasks"
    ).run()


if __name__ == "__main__":
    main()
