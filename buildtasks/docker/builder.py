"""Running builds: plans from settings, buildx or bake through the shell, then image checks."""

from __future__ import annotations

import json
import os
import shlex
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from buildtasks import lfs
from buildtasks.config import build_order
from buildtasks.docker import builds, retry
from buildtasks.docker.build import (
    OCI,
    BuildPlan,
    BuildRequest,
    bake_definition,
    buildx_argv,
    plan,
    podman_argvs,
)
from buildtasks.docker.checks import has_dockerignore, human_size, violations
from buildtasks.docker.dockerfile import read_dockerfile
from buildtasks.errors import CheckError, CommandError, ConfigError
from buildtasks.runtime import Runtime

CA_BUNDLE_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT")
DEBIAN_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


class Built(msgspec.Struct, frozen=True):
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


def plans(rt: Runtime, names: list[str], request: BuildRequest) -> list[BuildPlan]:
    """The plans of names and of the targets they build FROM, each after what it needs.
    The request's tags name the images asked for, so a dependency keeps its own tags."""
    settings = rt.settings
    state = rt.git()
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    ca_bundle = host_ca_bundle(settings.environment)
    result = []
    for name in build_order(settings.targets, names):
        target = settings.targets[name]
        wanted = request if name in names else msgspec.structs.replace(request, tags=())
        _, text = read_dockerfile(settings, target)
        build = plan(settings, target, state, text, wanted, ca_bundle=ca_bundle, now=now)
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


def run(rt: Runtime, build_plans: list[BuildPlan], check: bool) -> list[Built]:
    """Build the plans: one plan alone through `buildx build`, several, or one that builds
    FROM another target, through bake (which builds a shared base first, and only when its
    inputs changed)."""
    if len(build_plans) == 1 and not build_plans[0].needs_bake:
        built = build(rt, build_plans[0], check)
        return [built] if built else []
    return bake(rt, build_plans, check)


def build(rt: Runtime, build_plan: BuildPlan, check: bool) -> Built | None:
    """One `docker buildx build` (or `podman build` per platform); the image checks run
    unless check is False."""
    lfs.require_content(rt, rt.settings.root, [build_plan.context])
    with tempfile.TemporaryDirectory(prefix="buildtasks-") as tmp:
        if rt.profile.name == "podman":
            argvs = podman_argvs(build_plan, tmp)
            for argv in argvs:
                _run_with_engine(rt, argv, {build_plan.target}, None)
            ids = (
                []
                if rt.dry
                else [Path(tmp, f"iid-{n}").read_text().strip() for n in range(len(argvs))]
            )
            metadata = _podman_metadata(rt, build_plan, ids, Path(tmp, "digest"))
        else:
            output = Path(tmp, "metadata.json")
            argv = buildx_argv(build_plan, str(output))
            # A push is rerun on a transient registry error: the layers come from the cache.
            policy = retry.Policy.of(rt.settings) if build_plan.push else None
            _run_with_engine(rt, argv, {build_plan.target}, policy)
            metadata = {} if rt.dry else json.loads(output.read_text())
    return None if rt.dry else _finish(rt, build_plan, metadata, check)


def _podman_metadata(rt: Runtime, build_plan: BuildPlan, ids: list[str], digest: Path) -> dict:
    """What buildx's metadata file says, from podman: the image id of a local build (the
    digest of its config); for a push, the digest of the manifest list of the platforms'
    images, sent to every tag (the list and the images are then dropped locally)."""
    if not build_plan.push:  # a local image's digest on podman is its id
        return {"containerimage.digest": ids[0], "containerimage.config.digest": ids[0]}
    manifest = f"localhost/buildtasks-push-{build_plan.target}-{os.getpid()}"
    rt.run(["podman", "manifest", "create", manifest])
    try:
        for image_id in ids or ["IMAGE_ID"]:
            local = f"containers-storage:{image_id.removeprefix('sha256:')}"
            rt.run(["podman", "manifest", "add", manifest, local])
        for tag in build_plan.tags:
            rt.run(["podman", "manifest", "push", "--all", "--digestfile", str(digest),
                    manifest, f"docker://{tag}"])  # fmt: skip
    finally:
        rt.run(["podman", "manifest", "rm", manifest], check=False)
        rt.run(["podman", "rmi", *ids], check=False)
    return {} if rt.dry else {"containerimage.digest": digest.read_text().strip()}


def bake(rt: Runtime, build_plans: list[BuildPlan], check: bool) -> list[Built]:
    """Every plan at once through `docker buildx bake`, fed the generated JSON on stdin."""
    command = rt.profile.bake_command()
    lfs.require_content(rt, rt.settings.root, [p.context for p in build_plans])
    definition = json.dumps(bake_definition(build_plans), indent=2)
    with tempfile.TemporaryDirectory(prefix="buildtasks-") as tmp:
        metadata_file = Path(tmp, "metadata.json")
        argv = [*command, "--file", "-", "--metadata-file", str(metadata_file)]
        targets = {p.target for p in build_plans}
        _run_with_engine(rt, argv, targets, None, input=definition, cwd=str(rt.settings.root))
        if rt.dry:
            return []
        metadata = json.loads(metadata_file.read_text())
    return [_finish(rt, p, metadata.get(p.target, {}), check) for p in build_plans]


def _run_with_engine(
    rt: Runtime, argv: list[str], targets: set[str], policy: retry.Policy | None, **kwargs
) -> None:
    """Run a build command (retried as policy allows, if given); when it fails because the
    engine is unreachable, say that instead. A target never built here connects to the
    engine in the background meanwhile (its image will be inspected); a rebuild usually
    yields an image already inspected."""
    if not rt.dry and not targets <= {r.target for r in builds.load(rt.settings.root)}:
        rt.engine.warm_up()
    try:
        if policy:
            retry.run(rt, policy, f"`{shlex.join(argv[:3])}`", argv, **kwargs)
        else:
            rt.run(argv, **kwargs)
    except CommandError:
        rt.engine.require()
        raise


def _finish(rt: Runtime, build_plan: BuildPlan, metadata: dict, check: bool) -> Built:
    settings = rt.settings
    ref = build_plan.tags[0]
    digest = metadata.get("containerimage.digest", "")
    revision = build_plan.labels.get(f"{OCI}.revision", "")
    facts = None
    if not build_plan.push:
        facts = builds.known_facts(settings.root, metadata) or rt.engine.image(ref)
        facts = msgspec.structs.replace(facts, ref=ref)
    # What prune may remove; pushes too, as the containerd store keeps the pushed image
    # (an id the engine does not list is never a candidate).
    builds.record(settings.root, build_plan.target, revision, metadata, facts)
    if facts is None:
        return Built(build_plan.target, ref, digest, None)
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
