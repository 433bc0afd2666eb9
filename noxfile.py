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


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Unit and integration tests; the integration tests need scripts/setup to have run."""
    session.install("-e", ".[dev]")
    session.run("pytest", *(session.posargs or ["tests"]))


# `nox -s integration -- --in-container` runs the same tests inside the dev image.
integration_session(python=PYTHON)  # everything else from [tool.buildtasks.integration]
