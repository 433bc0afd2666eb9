"""Running builds: plans from settings, buildx or bake through the shell, then image checks."""

from __future__ import annotations

import json
import os
import shlex
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

from buildtasks import git
from buildtasks.config import Settings
from buildtasks.docker import builds, retry
from buildtasks.docker.build import (
    OCI,
    BuildPlan,
    BuildRequest,
    bake_definition,
    buildx_argv,
    plan,
    secret_variable,
)
from buildtasks.docker.checks import has_dockerignore, human_size, violations
from buildtasks.docker.engine import Engine
from buildtasks.errors import CheckError, CommandError, ConfigError
from buildtasks.shell import Shell

CA_BUNDLE_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT")
DEBIAN_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


@dataclass(frozen=True)
class Built:
    target: str
    ref: str
    digest: str
    size: int | None  # None for a push: the image is in the registry, not the engine

    def summary(self) -> str:
        size = "pushed" if self.size is None else human_size(self.size)
        return f"{self.target}: {self.ref}  {self.digest or 'no digest'}  {size}"


def host_ca_bundle(env: dict[str, str]) -> str:
    """The CA bundle this host trusts (a TLS-intercepting proxy's CA lives there), or ''."""
    candidates = [env.get(name, "") for name in CA_BUNDLE_VARIABLES] + [DEBIAN_CA_BUNDLE]
    return next((path for path in candidates if path and os.path.isfile(path)), "")


def shell(settings: Settings, dry: bool) -> Shell:
    """A shell whose commands see .env values and never echo a configured secret's value."""
    environment = settings.environment
    secret_values = {
        environment.get(secret_variable(entry), "")
        for target in settings.targets.values()
        for entry in target.secrets
        if secret_variable(entry)
    }
    secret_values.add(environment.get("COSIGN_PASSWORD", ""))
    redis_url = settings.backup.redis.get("url", "")
    secret_values.add(urlparse(redis_url).password or "" if redis_url else "")
    return Shell(dry=dry, secrets=frozenset(secret_values - {""}), env=environment)


def plans(
    settings: Settings, names: list[str], request: BuildRequest, sh: Shell
) -> list[BuildPlan]:
    state = git.state(sh, settings.root)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    ca_bundle = host_ca_bundle(settings.environment)
    result = []
    for name in names:
        target = settings.targets[name]
        dockerfile = settings.context_dir / target.dockerfile
        try:
            text = dockerfile.read_text()
        except OSError as exc:
            raise ConfigError(
                f"target {name}: cannot read {dockerfile} ({exc.strerror}); "
                "fix `dockerfile` or `context`"
            ) from None
        build = plan(settings, target, state, text, request, ca_bundle=ca_bundle, now=now)
        _require_env_secrets(build, settings.environment)
        result.append(build)
    return result


def _require_env_secrets(build: BuildPlan, environment: dict[str, str]) -> None:
    for spec in build.secrets:
        fields = dict(part.split("=", 1) for part in spec.split(","))
        if "env" in fields and not environment.get(fields["env"]):
            raise ConfigError(
                f"target {build.target}: secret `{fields['id']}` reads ${fields['env']}, which is "
                "not set; set it in the environment or an env file"
            )


def build(sh: Shell, settings: Settings, build_plan: BuildPlan, check: bool) -> Built | None:
    """One `docker buildx build`; the image checks run unless check is False."""
    with tempfile.TemporaryDirectory(prefix="buildtasks-") as tmp:
        metadata_file = Path(tmp, "metadata.json")
        argv = buildx_argv(build_plan, str(metadata_file))
        # A push is rerun on a transient registry error: the layers come from the cache.
        policy = retry.Policy.of(settings) if build_plan.push else None
        engine = _run_with_engine(sh, argv, policy)
        if sh.dry:
            return None
        metadata = json.loads(metadata_file.read_text())
    return _finish(engine, settings, build_plan, metadata, check)


def bake(sh: Shell, settings: Settings, build_plans: list[BuildPlan], check: bool) -> list[Built]:
    """Every plan at once through `docker buildx bake`, fed the generated JSON on stdin."""
    definition = json.dumps(bake_definition(build_plans), indent=2)
    with tempfile.TemporaryDirectory(prefix="buildtasks-") as tmp:
        metadata_file = Path(tmp, "metadata.json")
        argv = ["docker", "buildx", "bake", "--file", "-", "--metadata-file", str(metadata_file)]
        engine = _run_with_engine(sh, argv, None, input=definition, cwd=str(settings.root))
        if sh.dry:
            return []
        metadata = json.loads(metadata_file.read_text())
    return [_finish(engine, settings, p, metadata.get(p.target, {}), check) for p in build_plans]


def _run_with_engine(sh: Shell, argv: list[str], policy: retry.Policy | None, **kwargs) -> Engine:
    """Run a build command (retried as policy allows, if given) while connecting to the
    engine in the background; when the command fails because the engine is unreachable,
    say that instead."""
    engine = Engine(sh)
    if not sh.dry:
        engine.warm_up()
    try:
        if policy:
            retry.run(sh, policy, f"`{shlex.join(argv[:3])}`", argv, **kwargs)
        else:
            sh.run(argv, **kwargs)
    except CommandError:
        engine.require()
        raise
    return engine


def _finish(
    engine: Engine, settings: Settings, build_plan: BuildPlan, metadata: dict, check: bool
) -> Built:
    ref = build_plan.tags[0]
    digest = metadata.get("containerimage.digest", "")
    revision = build_plan.labels.get(f"{OCI}.revision", "")
    # What prune may remove; pushes too, as the containerd store keeps the pushed image
    # (an id the engine does not list is never a candidate).
    builds.record(settings.root, build_plan.target, revision, metadata)
    if build_plan.push:
        return Built(build_plan.target, ref, digest, None)
    facts = engine.image(ref)
    target = settings.targets[build_plan.target]
    if check:
        found = violations(
            facts,
            target.enabled_checks,
            target.size_budget,
            has_dockerignore(build_plan.context, build_plan.dockerfile),
        )
        if found:
            listing = "".join(f"\n  - {line}" for line in found)
            raise CheckError(
                f"build-{target.name}: {ref} failed {len(found)} check(s){listing}\n"
                "fix the image or skip the checks with --no-check"
            )
    return Built(build_plan.target, ref, digest, facts.size)
