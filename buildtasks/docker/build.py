"""Pure builders: from settings, git state and flags to a build plan, buildx argv and bake JSON."""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from pathlib import Path

import msgspec

from buildtasks.config import TEMPLATE_FIELDS, Settings, Target
from buildtasks.docker.dockerfile import base_images, mirror_args, mirror_contexts
from buildtasks.errors import ConfigError, EngineError
from buildtasks.git import GitState

OCI = "org.opencontainers.image"
# Informational: a FROM-derived image inherits it, so prune goes by docker/builds.py instead.
IMAGE_LABEL = "io.buildtasks.image"
TARGET_LABEL = "io.buildtasks.target"


class BuildRequest(msgspec.Struct, frozen=True):
    """What the user asked for on the command line; empty values mean "as configured"."""

    tags: tuple[str, ...] = ()
    platforms: tuple[str, ...] = ()
    build_args: Mapping[str, str] = msgspec.field(default_factory=dict)
    push: bool = False
    no_cache: bool = False


AS_CONFIGURED = BuildRequest()  # nothing asked on the command line


class BuildPlan(msgspec.Struct, frozen=True):
    """Everything one image build needs, ready to become argv or a bake target."""

    target: str
    context: Path
    dockerfile: Path
    stage: str
    tags: tuple[str, ...]
    labels: Mapping[str, str]
    build_args: Mapping[str, str]
    secrets: tuple[str, ...]  # BuildKit --secret specs: id=...,env=... or id=...,src=...
    contexts: Mapping[str, str]
    platforms: tuple[str, ...]
    cache_from: tuple[str, ...]
    cache_to: tuple[str, ...]
    push: bool
    no_cache: bool
    attest: tuple[str, ...] = ()
    provenance: str = "off"  # the provenance mode: min, max or off
    # the mirrored images of FROM ${ARG} lines, as build arguments (see podman_argvs)
    mirror_args: Mapping[str, str] = msgspec.field(default_factory=dict)

    @property
    def needs_bake(self) -> bool:
        """Builds FROM another target (a target:NAME context), which only bake resolves."""
        return any(source.startswith("target:") for source in self.contexts.values())


def sanitize_tag(tag: str) -> str:
    """A valid image tag: [A-Za-z0-9_.-], not starting with . or -, at most 128 characters."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", tag).lstrip(".-")
    return cleaned[:128]


def render_tags(
    templates: tuple[str, ...], image: str, values: Mapping[str, str]
) -> tuple[str, ...]:
    """Full image references from tag templates. A template is a tag name on ``image`` or,
    when it contains ``/`` or ``:``, a full reference. Templates that use an empty value
    (no git checkout) are dropped."""
    refs: list[str] = []
    for template in templates:
        used = {name for _, name, _, _ in string.Formatter().parse(template) if name}
        unknown = used - set(TEMPLATE_FIELDS)
        if unknown:
            raise ConfigError(
                f"tag template {template!r} uses {{{min(unknown)}}}; "
                f"known fields: {', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)}"
            )
        if any(not values.get(name) for name in used):
            continue
        rendered = template.format_map(values)
        ref = (
            rendered
            if ("/" in rendered or ":" in rendered)
            else f"{image}:{sanitize_tag(rendered)}"
        )
        if ref not in refs:
            refs.append(ref)
    return tuple(refs)


def template_values(target: str, version: str, git: GitState) -> dict[str, str]:
    dirty = "-dirty" if git.dirty else ""
    return {
        "target": target,
        "version": version,
        "sha": git.sha + dirty if git.sha else "",
        "short_sha": git.short_sha + dirty if git.sha else "",
        "branch": sanitize_tag(git.branch) if git.branch not in ("", "HEAD") else "",
    }


def oci_labels(settings: Settings, git: GitState, now: str) -> dict[str, str]:
    """OCI annotations; ``created`` is the commit time so unchanged sources rebuild identically."""
    repository = settings.image.rsplit("/", 1)[-1].split(":", 1)[0]
    labels = {
        f"{OCI}.title": repository,
        f"{OCI}.version": settings.version,
        f"{OCI}.revision": git.sha,
        f"{OCI}.created": git.commit_time or now,
        f"{OCI}.source": settings.source or git.remote_url,
    }
    return {key: value for key, value in labels.items() if value}


def secret_variable(entry: str) -> str:
    """The environment variable a configured secret reads, or '' for file secrets."""
    secret_id, _, source = entry.partition("=")
    if not source:
        return secret_id
    kind, _, value = source.partition(":")
    return value if kind == "env" else ""


def secret_spec(entry: str, root: Path, ca_bundle: str) -> str | None:
    """BuildKit --secret spec for one configured secret.

    ``ID`` (env var ID), ``ID=env:VAR``, ``ID=file:PATH`` (relative to the project), or
    ``ID=ca-bundle`` (the host's CA bundle, for builds behind a TLS-intercepting proxy;
    None when the host has none, so the optional mount stays empty).
    """
    secret_id, _, source = entry.partition("=")
    if variable := secret_variable(entry):
        return f"id={secret_id},env={variable}"
    kind, _, value = source.partition(":")
    if kind == "file" and value:
        return f"id={secret_id},src={(root / value).resolve()}"
    if source == "ca-bundle":
        return f"id={secret_id},src={ca_bundle}" if ca_bundle else None
    raise ConfigError(f"secret {entry!r}: write ID, ID=env:VAR, ID=file:PATH or ID=ca-bundle")


def named_contexts(contexts: Mapping[str, str], root: Path) -> dict[str, str]:
    """Configured build contexts: URLs as they are, paths made absolute, and
    ``@buildtasks`` as the directory of this package (so a build can run its generator: an
    installed package's own directory in site-packages, or a checkout's ``buildtasks/``).
    ``target:NAME`` stays for bake, which builds that target first."""
    resolved = {}
    for name, value in contexts.items():
        if value == "@buildtasks":
            resolved[name] = str(Path(__file__).resolve().parent.parent)
        elif "://" in value or value.startswith("target:"):
            resolved[name] = value
        else:
            resolved[name] = str((root / value).resolve())
    return resolved


def plan(
    settings: Settings,
    target: Target,
    git: GitState,
    dockerfile_text: str,
    request: BuildRequest = AS_CONFIGURED,
    *,
    ca_bundle: str = "",
    now: str = "",
) -> BuildPlan:
    """The build of one target: configuration, then the request's overrides."""
    build_args = {**target.build_args, **request.build_args}
    values = template_values(target.name, settings.version, git)
    image = settings.image_of(target)
    tags = render_tags(request.tags or target.tags, image, values)
    if not tags:
        raise ConfigError(f"target {target.name}: no tag left after rendering; add a tag")
    secrets = tuple(
        spec for entry in target.secrets if (spec := secret_spec(entry, settings.root, ca_bundle))
    )
    registry_cache, registry_cache_to = (), ()
    if target.cache == "registry":
        ref = f"{image}:buildcache-{target.name}"
        registry_cache = (f"type=registry,ref={ref}",)
        registry_cache_to = (f"type=registry,ref={ref},mode=max",)
    context = settings.context_of(target)
    return BuildPlan(
        target=target.name,
        context=context,
        dockerfile=context / target.dockerfile,
        stage=target.stage,
        tags=tags,
        labels={
            **oci_labels(settings, git, now),
            IMAGE_LABEL: image,
            TARGET_LABEL: target.name,
        },
        build_args=build_args,
        secrets=secrets,
        contexts={
            **mirror_contexts(base_images(dockerfile_text, build_args), settings.mirror),
            **named_contexts(target.contexts, settings.root),
        },
        # Local builds are native; configured platforms apply to pushes.
        platforms=request.platforms or (target.platforms if request.push else ()),
        cache_from=target.cache_from + registry_cache,
        cache_to=target.cache_to + (registry_cache_to if request.push else ()),
        push=request.push,
        no_cache=request.no_cache,
        attest=target.attest,
        provenance=provenance_mode(settings, target, request.push),
        mirror_args=mirror_args(dockerfile_text, build_args, settings.mirror),
    )


def provenance_mode(settings: Settings, target: Target, push: bool) -> str:
    """A target's `attest = ["provenance"]` asks for max everywhere; otherwise pushes carry
    `[tool.buildtasks.publish] provenance` and local builds none."""
    if "provenance" in target.attest:
        return "max"
    return settings.publish.provenance if push else "off"


def _common_flags(build: BuildPlan, names: list[str]) -> list[str]:
    """The flags `docker buildx build` and `podman build` share: Dockerfile, stage, the
    image's names, labels, build arguments, BuildKit secrets, named contexts (the mirror's
    too), platforms."""
    argv = ["--file", str(build.dockerfile)]
    if build.stage:
        argv += ["--target", build.stage]
    argv += names
    for key, value in build.labels.items():
        argv += ["--label", f"{key}={value}"]
    for key, value in build.build_args.items():
        argv += ["--build-arg", f"{key}={value}"]
    for spec in build.secrets:
        argv += ["--secret", spec]
    for name, source in build.contexts.items():
        argv += ["--build-context", f"{name}={source}"]
    if build.platforms:
        argv += ["--platform", ",".join(build.platforms)]
    return argv


def buildx_argv(build: BuildPlan, metadata_file: str) -> list[str]:
    """The `docker buildx build` command line of one plan."""
    argv = ["docker", "buildx", "build", *_common_flags(build, _tag_flags(build))]
    for cache in build.cache_from:
        argv += ["--cache-from", cache]
    for cache in build.cache_to:
        argv += ["--cache-to", cache]
    if build.no_cache:
        argv.append("--no-cache")
    argv += attest_flags(build)
    argv += ["--metadata-file", metadata_file, "--push" if build.push else "--load"]
    argv.append(str(build.context))
    return argv


def podman_argvs(build: BuildPlan, iid_dir: str) -> list[list[str]]:
    """The `podman build` command lines of one plan: one per platform, the Nth writing its
    image id to IID_DIR/iid-N. A push tags nothing: the images go into a manifest list.
    Podman 4.3 applies named contexts only to literal FROM images, so FROM ${ARG} lines get
    their mirrored image as that build argument."""
    if build.needs_bake:
        raise EngineError(
            f"podman cannot build {build.target} FROM another target in one command (a "
            "target:NAME context needs bake); build that target first with docker, or push it"
        )
    if build.attest:
        raise EngineError(f"podman build cannot attest ({', '.join(build.attest)}); drop `attest`")
    names = [] if build.push else _tag_flags(build)
    build = msgspec.structs.replace(build, build_args={**build.build_args, **build.mirror_args})
    # docker format: the OCI image config has no HEALTHCHECK, podman would drop it.
    # --pull=always: podman 4.3 keeps one image per name, so after a build for another
    # platform it would build FROM that platform's base (warning only); the pull picks ours.
    flags = ["--format", "docker", "--layers", "--pull=always"]
    for flag, specs in (("--cache-from", build.cache_from), ("--cache-to", build.cache_to)):
        for spec in specs:
            flags += [flag, podman_cache(spec)]
    if build.no_cache:
        flags.append("--no-cache")
    return [
        [
            "podman",
            "build",
            *_common_flags(msgspec.structs.replace(build, platforms=one), names),
            *flags,
            "--iidfile",
            f"{iid_dir}/iid-{number}",
            str(build.context),
        ]
        for number, one in enumerate([(p,) for p in build.platforms] or [()])
    ]


def _tag_flags(build: BuildPlan) -> list[str]:
    return [flag for tag in build.tags for flag in ("--tag", tag)]


def podman_cache(spec: str) -> str:
    """The repository podman caches layers in, from a buildx registry cache spec."""
    fields = dict(part.partition("=")[::2] for part in spec.split(","))
    if "=" not in spec:
        return spec  # an image reference
    if fields.get("type") == "registry" and fields.get("ref"):
        # podman keeps one image per cached step there, tagged by its cache key
        name, sep, tag = fields["ref"].rpartition(":")
        return f"{name}-{tag}" if sep and "/" not in tag else fields["ref"]
    raise EngineError(f"podman caches layers only in a registry; cache spec {spec!r} is not one")


def attest_flags(build: BuildPlan) -> list[str]:
    """Provenance as planned; buildx's own SBOM only when configured (it pulls a scanner)."""
    mode = build.provenance
    flags = ["--provenance=false" if mode == "off" else f"--provenance=mode={mode}"]
    if "sbom" in build.attest:
        flags.append("--sbom=true")
    return flags


def bake_definition(builds: list[BuildPlan]) -> dict:
    """The bake file (JSON) that builds every plan at once."""
    targets = {}
    for build in builds:
        definition: dict = {
            "context": str(build.context),
            "dockerfile": str(build.dockerfile.relative_to(build.context)),
            "tags": list(build.tags),
            "labels": dict(build.labels),
        }
        optional = {
            "target": build.stage,
            "args": dict(build.build_args),
            "secret": list(build.secrets),
            "contexts": dict(build.contexts),
            "platforms": list(build.platforms),
            "cache-from": list(build.cache_from),
            "cache-to": list(build.cache_to),
        }
        definition.update({key: value for key, value in optional.items() if value})
        if build.no_cache:
            definition["no-cache"] = True
        definition["attest"] = [
            "type=provenance,disabled=true"
            if build.provenance == "off"
            else f"type=provenance,mode={build.provenance}",
            *(["type=sbom"] if "sbom" in build.attest else []),
        ]
        definition["output"] = ["type=registry" if build.push else "type=docker"]
        targets[build.target] = definition
    return {"group": {"default": {"targets": list(targets)}}, "target": targets}
