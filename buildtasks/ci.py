"""`buildtasks ci github|gitlab`: a CI workflow generated from the configuration, so its
build matrix never drifts from the targets.

The workflow lints (Dockerfiles, specs, the project's own lint commands), runs the unit
tests and the integration session on an engine, builds every target as a matrix (with the
registry cache of the targets that set ``cache = "registry"``), pushes on the release
branch and publishes on a version tag. The file carries a digest of what was generated:
a rewrite refuses to replace a hand-edited file without --force, and --check fails when
the file and the configuration have drifted apart.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING

from buildtasks import lazy
from buildtasks.config import Settings
from buildtasks.docker.dockerfile import registry_of
from buildtasks.errors import BuildtasksError

if TYPE_CHECKING:
    from buildtasks.runtime import Runtime

yaml = lazy.module("yaml")

PROVIDERS = {"github": ".github/workflows/buildtasks.yml", "gitlab": ".gitlab-ci.yml"}
_DIGEST = re.compile(r"^# buildtasks-digest: sha256:([0-9a-f]{64})\n", re.MULTILINE)


class Drift(BuildtasksError):
    """The workflow file is not what the configuration generates."""


def _gate_commands(settings: Settings) -> list[str]:
    commands = ["inv lint"]
    if settings.proto is not None:
        commands += ["inv proto --check", "inv proto.lint", "inv proto.breaking"]
    return [*commands, *settings.ci.lint]


def _pushed(settings: Settings) -> list[str]:
    """The targets CI pushes: those with platforms of their own."""
    return [name for name, target in settings.targets.items() if target.platforms]


def _tag_glob(settings: Settings) -> str:
    return f"{settings.release.tag_prefix}*" if settings.release.tag_prefix else "[0-9]*"


def github(settings: Settings) -> dict:
    ci = settings.ci
    branch = settings.release.branch
    checkout = {"uses": "actions/checkout@v4", "with": {"fetch-depth": 0}}  # tags: breaking
    python = {"uses": "actions/setup-python@v5", "with": {"python-version": ci.python}}
    install = [{"run": command} for command in ci.install]
    setup = [checkout, python, *install]
    engine = [{"uses": "docker/setup-qemu-action@v3"}, {"uses": "docker/setup-buildx-action@v3"}]
    login = {
        "uses": "docker/login-action@v3",
        "with": {
            "registry": registry_of(settings.image) or None,
            "username": "${{ secrets.REGISTRY_USERNAME }}",
            "password": "${{ secrets.REGISTRY_PASSWORD }}",
        },
    }
    login["with"] = {k: v for k, v in login["with"].items() if v}
    on_push = "github.event_name == 'push'"

    def job(steps: list[dict], **extra) -> dict:
        return {"runs-on": "ubuntu-latest", **extra, "steps": steps}

    def runs(commands) -> list[dict]:
        return [{"run": command} for command in commands]

    targets = list(settings.targets)
    pushed = _pushed(settings)
    jobs = {
        "lint": job([*setup, *runs(_gate_commands(settings))]),
        "unit": job([*setup, *runs(ci.unit)]),
        "integration": job([*setup, *engine, *runs(ci.integration)], needs=["lint", "unit"]),
        "build": job(
            [*setup, *engine, {**login, "if": on_push}, {"run": "inv build-${{ matrix.target }}"}],
            needs=["lint", "unit"],
            strategy={"fail-fast": False, "matrix": {"target": targets}},
        ),
    }
    if pushed:
        jobs["push"] = job(
            [*setup, *engine, login, *runs(f"inv push --target {n}" for n in pushed)],
            needs=["build", "integration"],
            **{"if": f"github.ref == 'refs/heads/{branch}'"},
        )
        jobs["release"] = job(
            [*setup, *engine, login,
             *runs(["inv push " + " ".join(f"--target {n}" for n in pushed)
                    + " --digests-file digests.json"]),
             {"uses": "actions/upload-artifact@v4",
              "with": {"name": "digests", "path": "digests.json"}}],
            needs=["build", "integration"],
            **{"if": "startsWith(github.ref, 'refs/tags/')"},
        )  # fmt: skip
    return {
        "name": "buildtasks",
        "on": {
            "push": {"branches": [branch], "tags": [_tag_glob(settings)]},
            "pull_request": {"branches": [branch]},
        },
        "permissions": {"contents": "read"},
        "jobs": jobs,
    }


def gitlab(settings: Settings) -> dict:
    ci = settings.ci
    branch = settings.release.branch
    prefix = re.escape(settings.release.tag_prefix).replace("/", "\\/")
    python = {"image": f"python:{ci.python}", "before_script": list(ci.install)}
    # Jobs that build run the docker CLI against a docker-in-docker service.
    engine = {
        "image": "docker:27",
        "services": ["docker:27-dind"],
        "variables": {"DOCKER_TLS_CERTDIR": "/certs"},
        "before_script": [
            "apk add --no-cache python3 py3-pip git",
            "python3 -m venv /opt/ci && . /opt/ci/bin/activate",
            *ci.install,
            'echo "$REGISTRY_PASSWORD" | docker login -u "$REGISTRY_USERNAME" '
            f"--password-stdin {registry_of(settings.image)}".rstrip(),
        ],
    }
    on_branch = [{"if": f'$CI_COMMIT_BRANCH == "{branch}"'}]
    on_tag = [{"if": f"$CI_COMMIT_TAG =~ /^{prefix}[0-9]/"}]
    pushed = _pushed(settings)
    jobs = {
        "stages": ["lint", "test", "build", "publish"],
        "lint": {"stage": "lint", **python, "script": _gate_commands(settings)},
        "unit": {"stage": "test", **python, "script": list(ci.unit)},
        "integration": {"stage": "test", **engine, "script": list(ci.integration)},
        "build": {
            "stage": "build",
            **engine,
            "parallel": {"matrix": [{"TARGET": list(settings.targets)}]},
            "script": ["inv build-$TARGET"],
        },
    }
    if pushed:
        targets = " ".join(f"--target {n}" for n in pushed)
        jobs["push"] = {"stage": "publish", **engine, "rules": on_branch,
                        "script": [f"inv push {targets}"]}  # fmt: skip
        jobs["release"] = {
            "stage": "publish",
            **engine,
            "rules": on_tag,
            "script": [f"inv push {targets} --digests-file digests.json"],
            "artifacts": {"paths": ["digests.json"]},
        }
    return jobs


def render(settings: Settings, provider: str) -> str:
    """The workflow text: a header with the digest of the YAML below it."""

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data) -> bool:
            return True  # a shared step is written out in full, not as &id001 / *id001

    build = {"github": github, "gitlab": gitlab}[provider]
    body = yaml.dump(build(settings), Dumper=Dumper, sort_keys=False, width=1000)
    digest = hashlib.sha256(body.encode()).hexdigest()
    return (
        f"# Generated by `buildtasks ci {provider}` from [tool.buildtasks]: edit the\n"
        f"# configuration and regenerate; `buildtasks ci {provider} --check` fails on drift.\n"
        f"# buildtasks-digest: sha256:{digest}\n{body}"
    )


def hand_edited(text: str) -> bool:
    """Whether a workflow file differs from what its own digest says was generated."""
    match = _DIGEST.search(text)
    body = text[match.end() :] if match else ""
    return not match or hashlib.sha256(body.encode()).hexdigest() != match.group(1)


def path_of(settings: Settings, provider: str, out: str = "") -> Path:
    if provider not in PROVIDERS:
        raise BuildtasksError(f"ci: unknown provider {provider!r}; use github or gitlab")
    return settings.root / (out or PROVIDERS[provider])


def check(settings: Settings, provider: str, out: str = "") -> Path:
    """Fail with Drift unless the file is exactly what the configuration generates."""
    path = path_of(settings, provider, out)
    if not path.is_file():
        raise Drift(f"ci: {path} does not exist; run `buildtasks ci {provider}`")
    current = path.read_text()
    if current != render(settings, provider):
        why = (
            "was edited by hand"
            if hand_edited(current)
            else "is out of date with the configuration"
        )
        raise Drift(f"ci: {path} {why}; run `buildtasks ci {provider}` (--force over hand edits)")
    return path


def write(rt: Runtime, provider: str, out: str = "", force: bool = False) -> tuple[Path, bool]:
    """Write the workflow; (path, changed). Never over a hand-edited file without force."""
    path = path_of(rt.settings, provider, out)
    text = render(rt.settings, provider)
    current = path.read_text() if path.is_file() else None
    if current == text:
        return path, False
    if current is not None and hand_edited(current) and not force:
        raise Drift(
            f"ci: {path} was edited by hand since it was generated; keep your edits in "
            f"[tool.buildtasks] and pass --force to overwrite it"
        )
    if not path.parent.is_dir() and rt.change(["mkdir", "-p", str(path.parent)]):
        path.parent.mkdir(parents=True)
    rt.write_text(path, text)
    return path, True
