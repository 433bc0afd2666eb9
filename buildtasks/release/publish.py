"""Pushes that are read back from the registry before they count."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import msgspec

from buildtasks.docker import builder, registry, retry
from buildtasks.docker.build import BuildPlan, BuildRequest
from buildtasks.docker.registry import RegistryError
from buildtasks.errors import BuildtasksError
from buildtasks.platforms import native
from buildtasks.release import attest
from buildtasks.runtime import Runtime


@dataclass(frozen=True)
class Pushed:
    target: str
    repository: str
    digest: str
    platforms: tuple[str, ...]
    tags: tuple[str, ...]  # the references the push wrote
    dirty: bool = False  # built from a tree with uncommitted changes

    @property
    def ref(self) -> str:
        return f"{self.repository}@{self.digest}"


def push(
    rt: Runtime,
    names: list[str],
    platforms: tuple[str, ...] = (),
    tags: tuple[str, ...] = (),
    allow_dirty: bool = False,
    release: bool = False,
) -> list[Pushed]:
    """Build and push each target for its platforms (with tags instead of the configured
    ones), check the registry holds every platform, then sign it when configured. A dirty
    tree, access to every registry and the signing key are checked once, before any build;
    a release checked them in its preflight and signs in a step of its own."""
    request = BuildRequest(tags=tags, platforms=platforms, push=True)
    plans = _with_base_platforms(builder.plans(rt, names, request))
    dirty = rt.git().dirty
    if dirty and not allow_dirty:
        published = ", ".join(tag for plan in plans for tag in plan.tags)
        raise BuildtasksError(
            f"the working tree has uncommitted changes; pushing would publish {published} "
            "from them; commit or stash them first (`inv push --allow-dirty` publishes them)"
        )
    if not release:
        hosts = {registry.registry_host(p.tags[0]): p.tags[0] for p in plans}
        for tag in hosts.values():
            registry.require_push_access(rt, retry.Policy.of(rt.settings), tag)
        signer = attest.require_signing(rt)
    pushed: list[Pushed] = []
    for build_plan in plans:
        build_plan = _from_pushed(build_plan, pushed)
        built = builder.build(rt, build_plan, check=False)
        if built is None:  # dry run
            continue
        repository = build_plan.tags[0].rsplit(":", 1)[0]
        wanted = set(build_plan.platforms or (native(),))
        reference = f"{repository}@{built.digest}"
        manifest = registry.raw_manifest(rt, reference)  # read once: platforms and signing
        found = registry.platforms(rt, reference, manifest)
        missing = sorted(wanted - set(found))
        if missing:
            raise RegistryError(
                f"{reference} lacks {', '.join(missing)} in the registry "
                f"(it holds {', '.join(found) or 'nothing'}); the push is incomplete"
            )
        if not release:
            attest.sign_pushed(rt, reference, signer, manifest)
        pushed.append(
            Pushed(
                build_plan.target,
                repository,
                built.digest,
                tuple(sorted(found)),
                build_plan.tags,
                dirty,
            )
        )
    return pushed


def _with_base_platforms(plans: list[BuildPlan]) -> list[BuildPlan]:
    """A shared base without platforms of its own is pushed for every platform of the
    targets built FROM it (plans come dependencies first, so walk them backwards)."""
    needed: dict[str, set[str]] = {}
    result = []
    for build_plan in reversed(plans):
        platforms = build_plan.platforms or tuple(sorted(needed.get(build_plan.target, ())))
        for source in build_plan.contexts.values():
            if source.startswith("target:"):
                needed.setdefault(source.removeprefix("target:"), set()).update(platforms)
        result.append(msgspec.structs.replace(build_plan, platforms=platforms))
    return result[::-1]


def _from_pushed(build_plan: BuildPlan, pushed: list[Pushed]) -> BuildPlan:
    """The plan with each target:NAME context replaced by the image just pushed for NAME,
    by digest: what the registry holds is what the image is built FROM."""
    refs = {f"target:{p.target}": f"docker-image://{p.ref}" for p in pushed}
    contexts = {name: refs.get(source, source) for name, source in build_plan.contexts.items()}
    return msgspec.structs.replace(build_plan, contexts=contexts)


def write_digests(rt: Runtime, path: Path, pushed: list[Pushed]) -> bool:
    """{target: {repository, digest, ref, platforms}} for signing or promotion."""
    body = {p.target: {**asdict(p), "ref": p.ref} for p in pushed}
    return rt.write_text(path, json.dumps(body, indent=2) + "\n")
