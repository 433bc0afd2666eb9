from __future__ import annotations

import dataclasses
from pathlib import Path

from invoke import Context, task

from buildtasks import lazy
from buildtasks.errors import ConfigError
from buildtasks.tasks.build import ShortFlagTask
from buildtasks.tasks.common import one_line_errors, runtime

flow = lazy.module("buildtasks.release.flow")
msgspec = lazy.module("msgspec")
publish = lazy.module("buildtasks.release.publish")
attest = lazy.module("buildtasks.release.attest")


@task(
    klass=ShortFlagTask,
    iterable=["target"],
    help={
        "target": "target to push (repeatable; default: every target with platforms)",
        "platform": "comma-separated platforms, over the configured ones",
        "digests_file": "write {target: digest, platforms} JSON here",
        "allow_dirty": "push from a tree with uncommitted changes (-dirty tags; floating "
        "tags move to the uncommitted build)",
    },
)
@one_line_errors
def push(c: Context, target=None, platform="", digests_file="", allow_dirty=False):
    """Build and push targets for every platform; verify what the registry holds."""
    rt = runtime(c)
    project = rt.settings
    names = list(target or [n for n, t in project.targets.items() if t.platforms])
    unknown = [n for n in names if n not in project.targets]
    if unknown or not names:
        raise ConfigError(
            f"--target: no target {unknown[0]!r}" if unknown else "no target to push; pass --target"
        )
    platforms = tuple(p.strip() for p in platform.split(",") if p.strip())
    pushed = publish.push(rt, names, platforms, allow_dirty=allow_dirty)
    for item in pushed:
        print(f"{item.target}: pushed {item.ref}  [{', '.join(item.platforms)}]")
        print(f"  tags: {', '.join(item.tags)}")
        if item.dirty:
            dirty = [t for t in item.tags if "-dirty" in t]
            moved = [t for t in item.tags if t not in dirty]
            listing = f": {', '.join(dirty)}" if dirty else ""
            print(f"  built from uncommitted changes (--allow-dirty){listing}")
            if moved:
                print(f"  floating tags moved to this uncommitted build: {', '.join(moved)}")
    if digests_file and publish.write_digests(rt, Path(digests_file), pushed):
        print(f"digests written to {digests_file}")


@task(
    klass=ShortFlagTask,
    help={
        "bump": "major, minor, patch or pre (1.2.0 -> 1.3.0rc1 -> 1.3.0rc2 -> 1.3.0)",
        "version": "the exact new version instead of --bump",
        "allow_empty_changelog": "release even if the Unreleased section is empty",
        "resume": "finish a release that stopped after publishing (does not rebuild)",
        "allow_breaking": "release a breaking proto change without a major version bump",
    },
)
@one_line_errors
def release(
    c: Context, bump="", version="", allow_empty_changelog=False, resume=False,
    allow_breaking=False,
):  # fmt: skip
    """Bump, changelog, commit + tag, push images by digest, verify, promote tags, push git."""
    sh = runtime(c)
    project = sh.settings
    if resume:
        progress = flow.resume(project, sh)
        print(f"released {progress.version} ({progress.tag})")
        return
    plan = flow.make_plan(project, bump, version)
    if sh.dry:
        print(f"release {plan.current} -> {plan.new}, git tag {plan.tag}")
        print(plan.diff(), end="")
        for name, refs in plan.image_tags.items():
            image = project.image_of(project.targets[name])
            staging = f"{image}:{flow.staging_tag(name, flow.PENDING_COMMIT)}"
            print(
                f"{name}: push {staging} (version {plan.new}), verify, then tag {', '.join(refs)}"
            )
        if project.publish.sign:
            print(
                "then each pushed digest (platform images and index) is signed with "
                f"{project.publish.sign}"
                + (", an SBOM attested per image" if project.publish.sbom else "")
            )
        print(
            f"{flow.PENDING_COMMIT} stands for the release commit, which a dry run does not "
            "make; the real build's revision label is that commit too"
        )
    signer = flow.preflight(project, sh, plan, allow_empty_changelog, allow_breaking)
    if sh.dry:
        # The push the release makes: the new version in the labels, the staging tag.
        released = sh.derive(msgspec.structs.replace(project, version=plan.new))
        for name in plan.image_tags:
            flow.push_target(released, name, flow.PENDING_COMMIT)
        print(f"nothing changed (dry run); `inv release --bump ...` makes release {plan.new}")
        return
    progress = flow.start(project, sh, plan, signer)
    for name, ref in progress.digests.items():
        print(f"{name}: {ref} tagged {', '.join(plan.image_tags[name])}")
    print(
        f"released {progress.version}: commit {progress.commit[:12]} and tag {progress.tag} pushed"
    )


@task(
    klass=ShortFlagTask,
    help={
        "ref": "the image to check: repository:tag or repository@digest",
        "target": "whose configured platforms the image must hold (default: the release "
        "target, when there is one)",
        "platform": "comma-separated platforms the image must hold, over the target's",
        "json": "print the checks as one JSON document",
    },
)
@one_line_errors
def verify(c: Context, ref, target="", platform="", json_=False):
    """Check an image's signatures, provenance, SBOM and platforms against the public key."""
    rt = runtime(c)
    project = rt.settings
    platforms = tuple(p.strip() for p in platform.split(",") if p.strip())
    if not platforms:
        names = [target] if target else flow.release_targets(project)
        if len(names) != 1 or names[0] not in project.targets:
            raise ConfigError("--target: name the target whose platforms to expect, or --platform")
        platforms = flow.platforms_of(project, names[0])
    pinned, checks = attest.verify(rt, ref, platforms)
    failed = [check for check in checks if not check.ok]
    if json_:
        body = {"ref": ref, "pinned": pinned, "ok": not failed,
                "checks": [dataclasses.asdict(check) for check in checks]}  # fmt: skip
        rt.document(body)
    else:
        print(f"{ref}: {pinned}")
        for check in checks:
            print(f"  {'ok  ' if check.ok else 'FAIL'} {check.what}  {check.detail}".rstrip())
    if failed:
        raise attest.SigningError(
            f"{ref} failed {len(failed)} of {len(checks)} checks: {failed[0].what} "
            f"({failed[0].detail})"
        )
