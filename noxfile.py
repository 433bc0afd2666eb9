"""This repository's sessions: lint, tests (unit + integration on the real engine), and
`integration`: the example's end-to-end tests against its compose stack."""

import nox

from buildtasks.sessions import integration_session

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests"]

PYTHON = "3.11"


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check, ruff format --check, and the example's gates: hadolint and the offline
    checks on every target's Dockerfile (`inv lint`), buf lint on the specs."""
    session.install("-e", ".[lint]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("inv", "lint")
    session.run("inv", "proto.lint")


# The engines the integration tests run on, and how the tests reach each (scripts/setup
# starts them): Docker, Podman through its Docker-compatible API, and a second Docker engine
# on tcp://127.0.0.1:2376 playing a remote build host. On Docker everything runs; on the
# others, the tests marked for them (the acceptance of each engine).
ENGINES = {
    "docker": ({}, ["tests", "--ignore", "tests/integration/test_engines.py"]),
    "podman": (
        {"BUILDTASKS_ENGINE": "podman", "DOCKER_HOST": "unix:///run/podman/podman.sock"},
        ["tests/integration", "-m", "podman"],
    ),
    "remote": ({"DOCKER_HOST": "tcp://127.0.0.1:2376"}, ["tests/integration", "-m", "remote"]),
}


@nox.session(python=PYTHON)
@nox.parametrize("engine", list(ENGINES))
def tests(session: nox.Session, engine: str) -> None:
    """Unit and integration tests on one engine; they need scripts/setup to have run."""
    env, selection = ENGINES[engine]
    session.install("-e", ".[dev]")
    session.run("pytest", *(session.posargs or selection), env={**env, "TEST_ENGINE": engine})


# `nox -s integration -- --in-container` runs the same tests inside the dev image.
integration_session(python=PYTHON)  # everything else from [tool.buildtasks.integration]
