"""`inv release`: pre-flight, bump, changelog, commit and tag, push by digest, verify,
promote tags, and only then push git. Progress is recorded in .git so `--resume` skips
finished steps; a failure before the git push rolls the local commit and tag back."""

from __future__ import annotations

import difflib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from buildtasks import buf, config, git
from buildtasks.config import Settings
from buildtasks.docker import registry, retry
from buildtasks.errors import BuildtasksError
from buildtasks.platforms import can_build
from buildtasks.release import attest, changelog, publish, version
from buildtasks.release.signing import Signer
from buildtasks.runtime import Runtime
from buildtasks.shell import Shell

STEPS = ("commit", "images", "sign", "promote", "git-push")


class PreflightFailed(BuildtasksError):
    """The release cannot start; nothing was changed."""


class HeadMoved(BuildtasksError):
    """A resumed release would build from something other than its release commit."""


@dataclass
class Progress:
    version: str
    tag: str
    previous: str  # the commit before the release commit, for rollback
    image_tags: dict[str, list[str]] = field(default_factory=dict)  # target -> references
    files: dict[str, str] = field(default_factory=dict)  # path -> released text
    commit: str = ""
    done: list[str] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)  # target -> repository@digest


def progress_path(settings: Settings) -> Path:
    return settings.root / ".git" / "buildtasks-release.json"


def _git(sh: Shell, settings: Settings, *args: str, query: bool = False, check: bool = True):
    return sh.run(["git", "-C", str(settings.root), *args], query=query, check=check, capture=True)


def _out(sh: Shell, settings: Settings, *args: str) -> str:
    result = _git(sh, settings, *args, query=True, check=False)
    return result.stdout.strip() if result.returncode == 0 else ""


def release_targets(settings: Settings) -> list[str]:
    names = list(settings.release.targets) or [
        n for n, t in settings.targets.items() if t.platforms
    ]
    if not names:
        raise PreflightFailed("no release targets: set [tool.buildtasks.release] targets")
    return names


def platforms_of(settings: Settings, name: str) -> tuple[str, ...]:
    return settings.release.platforms or settings.targets[name].platforms


@dataclass(frozen=True)
class Plan:
    current: str
    new: str
    tag: str
    version_file: Path
    version_text: str
    changelog_file: Path
    changelog_text: str
    image_tags: dict[str, list[str]]  # target -> full references to promote

    def diff(self) -> str:
        lines = []
        for path, old, new in (
            (self.version_file, _read(self.version_file), self.version_text),
            (self.changelog_file, _read(self.changelog_file), self.changelog_text),
        ):
            lines += difflib.unified_diff(
                old.splitlines(keepends=True), new.splitlines(keepends=True),
                f"a/{path.name}", f"b/{path.name}",
            )  # fmt: skip
        return "".join(lines)


def _read(path: Path) -> str:
    """The file's text with its line endings as they are (CRLF stays CRLF)."""
    return path.read_bytes().decode("utf-8")


def _edit(path: Path, change) -> str:
    """change applied to the file's text as LF, the result in the file's own line endings."""
    text = _read(path)
    crlf = "\r\n" in text
    edited = change(text.replace("\r\n", "\n") if crlf else text)
    return edited.replace("\n", "\r\n") if crlf else edited


# What stands for the release commit in a dry run's staging tag: it does not exist yet.
PENDING_COMMIT = "RELEASE-COMMIT"


def staging_tag(name: str, commit: str) -> str:
    """The tag a release pushes a target under before promoting its digest (the docker
    driver cannot push by digest alone). `-release-` and the full sha keep it apart from
    every tag a normal build pushes (`{target}-{short_sha}`), so removing it on rollback
    can never hit one of those."""
    return f"{name}-release-{commit}"


def _require_tags(settings: Settings, new: str, image_tags: dict[str, list[str]]) -> None:
    """Every image tag the release will write is one the registry accepts (a PEP 440 local
    version such as 0.3.3+local is not), checked before anything changes."""
    staging = [
        f"{settings.image_of(settings.targets[n])}:{staging_tag(n, 'f' * 40)}" for n in image_tags
    ]
    for ref in [*staging, *(r for refs in image_tags.values() for r in refs)]:
        tag = ref.rpartition(":")[2]
        if not config.is_tag(tag):
            raise PreflightFailed(
                f"release {new} cannot start: image tag {tag!r} is not a valid tag (letters, "
                "digits, _ . -, not starting with . or -, at most 128 characters); "
                "nothing was changed"
            )


def release_image_tags(
    settings: Settings, names: list[str], tags: list[str]
) -> dict[str, list[str]]:
    """{target: references}: plain version tags (1.2.3, 1.2) on a repository only one
    released target uses; targets sharing a repository tell theirs apart as 1.2.3-NAME."""
    images = {n: settings.image_of(settings.targets[n]) for n in names}
    shared = {i for i in images.values() if list(images.values()).count(i) > 1}
    return {
        n: [f"{images[n]}:{t}{f'-{n}' if images[n] in shared else ''}" for t in tags] for n in names
    }


def make_plan(settings: Settings, bump: str = "", explicit: str = "") -> Plan:
    release = settings.release
    version_file = settings.root / release.version_file
    changelog_file = settings.root / release.changelog
    for path in (version_file, changelog_file):
        if not path.is_file():
            raise PreflightFailed(f"{path} does not exist; fix [tool.buildtasks.release]")
    current = version.read(version_file)
    new = version.next_version(current, bump, explicit)
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    tags = version.image_tags(new, release.latest)
    names = release_targets(settings)
    image_tags = release_image_tags(settings, names, tags)
    _require_tags(settings, new, image_tags)
    return Plan(
        current=current,
        new=new,
        tag=f"{release.tag_prefix}{new}",
        version_file=version_file,
        version_text=_edit(version_file, lambda text: version.rewrite(version_file, text, new)),
        changelog_file=changelog_file,
        changelog_text=_edit(changelog_file, lambda text: changelog.release(text, new, today)),
        image_tags=image_tags,
    )


def preflight(
    settings: Settings, sh: Shell, plan: Plan, allow_empty_changelog: bool,
    allow_breaking: bool = False,
) -> Signer | None:  # fmt: skip
    """Every reason the release cannot start, reported together; the key that will sign
    (None when signing is off)."""
    # the key is decrypted (scrypt, outside the GIL) beside the other checks
    with ThreadPoolExecutor(1) as pool:
        signing = pool.submit(attest.signing_key, settings)
        problems = _start_problems(settings, sh, plan, allow_empty_changelog, allow_breaking)
        signer, key_problems = signing.result()
    _refuse(f"release {plan.new} cannot start", problems + key_problems)
    return signer


def _start_problems(
    settings: Settings, sh: Shell, plan: Plan, allow_empty_changelog: bool, allow_breaking: bool
) -> list[str]:
    release = settings.release
    problems = []
    branch = _out(sh, settings, "rev-parse", "--abbrev-ref", "HEAD")
    if branch != release.branch:
        problems.append(f"on branch {branch or '?'}, releases are made from {release.branch}")
    if _out(sh, settings, "status", "--porcelain"):
        problems.append("the working tree has uncommitted changes; commit or stash them")
    # ls-remote reads the remote without touching local refs (safe under --dry).
    remote = _git(sh, settings, "ls-remote", release.remote, f"refs/heads/{release.branch}",
                  query=True, check=False)  # fmt: skip
    remote_head = remote.stdout.split()[0] if remote.returncode == 0 and remote.stdout else ""
    if remote.returncode != 0:
        reason = (remote.stderr.strip().splitlines() or ["no output"])[0]
        problems.append(f"cannot read {release.remote}: {reason}")
    elif remote_head != _out(sh, settings, "rev-parse", "HEAD"):
        problems.append(
            f"{release.branch} differs from {release.remote}/{release.branch}; pull or push first"
        )
    if _git(sh, settings, "check-ref-format", f"refs/tags/{plan.tag}", query=True,
            check=False).returncode != 0:  # fmt: skip
        problems.append(f"{plan.tag} is not a valid git tag name; fix release.tag_prefix")
    elif _out(sh, settings, "rev-parse", "-q", "--verify", f"refs/tags/{plan.tag}"):
        problems.append(f"tag {plan.tag} already exists locally")
    if _out(sh, settings, "ls-remote", "--tags", release.remote, f"refs/tags/{plan.tag}"):
        problems.append(f"tag {plan.tag} already exists on {release.remote}")
    if not allow_empty_changelog and not changelog.unreleased_notes(
        plan.changelog_file.read_text()
    ):
        problems.append(
            f"{plan.changelog_file.name}: the Unreleased section is empty; "
            "describe the release or pass --allow-empty-changelog"
        )
    problems += buf.release_problems(sh, settings, plan.current, plan.new, allow_breaking)
    for name in plan.image_tags:
        try:
            registry.require_push_access(sh, retry.Policy.of(settings), plan.image_tags[name][0])
        except registry.RegistryError as exc:
            problems.append(str(exc))
        for wanted in platforms_of(settings, name):
            problems += _platform_problem(wanted)
    return problems


def _refuse(what: str, problems: list[str]) -> None:
    if problems:
        listing = "".join(f"\n  - {p}" for p in dict.fromkeys(problems))
        raise PreflightFailed(f"{what}:{listing}\nnothing was changed")


def resume(settings: Settings, sh: Runtime) -> Progress:
    """Finish the release that stopped, once what its remaining steps need holds: the
    release commit checked out, unchanged, and the engine able to build every platform
    while images remain to build; push access to its images until they are promoted; a
    key that signs until they are signed."""
    progress = load_progress(settings)
    problems, signer = [], None
    if "commit" in progress.done and "images" not in progress.done:
        require_release_commit(settings, sh, progress)
        problems += [p for name in progress.image_tags if name not in progress.digests
                     for wanted in platforms_of(settings, name)
                     for p in _platform_problem(wanted)]  # fmt: skip
    if "promote" not in progress.done:
        for references in progress.image_tags.values():
            try:
                registry.require_push_access(sh, retry.Policy.of(settings), references[0])
            except registry.RegistryError as exc:
                problems.append(str(exc))
    if "sign" not in progress.done:
        signer, key_problems = attest.signing_key(settings)
        problems += key_problems
    _refuse(f"release {progress.version} cannot resume", problems)
    return run(settings, sh, progress, signer)


def _platform_problem(wanted: str) -> list[str]:
    if can_build(wanted):
        return []
    return [f"this engine cannot build {wanted}: no QEMU binfmt handler; `inv doctor` says how"]


def save(settings: Settings, rt: Runtime, progress: Progress) -> None:
    rt.write_text(progress_path(settings), json.dumps(progress.__dict__, indent=2))


def load_progress(settings: Settings) -> Progress:
    try:
        recorded = json.loads(progress_path(settings).read_text())
        recorded.pop("promoted", None)  # kept by earlier versions, never read
        return Progress(**recorded)
    except (OSError, ValueError, TypeError):
        raise BuildtasksError(
            "no release to resume (no progress in .git); start one with --bump"
        ) from None


def push_target(rt: Runtime, name: str, commit: str) -> publish.Pushed | None:
    """Build and push one target under its staging tag, verified (None in a dry run). A
    shared base it builds FROM is pushed first, under its own tags: the target's is the
    last push."""
    tags = (staging_tag(name, commit),)
    pushed = publish.push(rt, [name], platforms_of(rt.settings, name), tags, release=True)
    return next((p for p in pushed if p.target == name), None)


def remove_staging_tags(settings: Settings, sh: Shell, progress: Progress) -> list[str]:
    """Delete what a failed release pushed under its staging tags, each only while it still
    holds the digest this release recorded; one line per tag."""
    lines = []
    for name, ref in progress.digests.items():
        image = settings.image_of(settings.targets[name])
        reference = f"{image}:{staging_tag(name, progress.commit)}"
        try:
            lines.append(registry.remove_tag(sh, reference, ref.rpartition("@")[2]))
        except registry.RegistryError as exc:
            lines.append(str(exc))
    return lines


def require_release_commit(settings: Settings, sh: Shell, progress: Progress) -> None:
    """Images are built from the working tree: it must be the release commit, unchanged."""
    head = _out(sh, settings, "rev-parse", "HEAD")
    if head != progress.commit:
        commit = progress.commit[:12]
        raise HeadMoved(
            f"HEAD moved since release commit {commit}; `git switch --detach {commit}` "
            "(or reset) then `inv release --resume`"
        )
    if _out(sh, settings, "status", "--porcelain"):
        raise HeadMoved(
            f"the working tree has changes since release commit {progress.commit[:12]}; "
            "stash them, then `inv release --resume`"
        )


def start(settings: Settings, sh: Runtime, plan: Plan, signer: Signer | None) -> Progress:
    """Record what the release will do, then do it, signing with signer (None: unsigned)."""
    progress = Progress(
        version=plan.new,
        tag=plan.tag,
        previous=_out(sh, settings, "rev-parse", "HEAD"),
        image_tags=plan.image_tags,
        files={
            str(plan.version_file): plan.version_text,
            str(plan.changelog_file): plan.changelog_text,
        },
    )
    return run(settings, sh, progress, signer)


def run(settings: Settings, sh: Runtime, progress: Progress, signer: Signer | None) -> Progress:
    """Carry out the release from wherever progress says it stopped (a resumed one is
    checked by resume first)."""
    try:
        publish_images(settings, sh, progress, signer)
    except BaseException:
        if "images" not in progress.done:  # nothing is public yet: undo the commit and tag
            rollback(settings, sh, progress)
        else:
            sh.note(
                f"release {progress.version}: the images are published; fix the failure and "
                "run `inv release --resume` to finish (nothing is rebuilt)"
            )
        raise
    release = settings.release
    pushed = _git(sh, settings, "push", "--atomic", release.remote,
                  f"{progress.commit}:refs/heads/{release.branch}", f"refs/tags/{progress.tag}",
                  check=False)  # fmt: skip
    if pushed.returncode != 0:
        reason = (pushed.stderr.strip().splitlines() or ["no output"])[-1]
        raise BuildtasksError(
            f"git push to {release.remote} failed ({reason}); the images of "
            f"{progress.version} are published and verified; fix the remote and run "
            "`inv release --resume` (nothing is rebuilt)"
        )
    progress.done.append("git-push")
    sh.remove_file(progress_path(settings))
    return progress


def publish_images(
    settings: Settings, sh: Runtime, progress: Progress, signer: Signer | None
) -> None:
    """Commit and tag, push every target by its release-commit tag and verify it, then
    promote the digests to the release tags; each step recorded as it finishes."""
    if "commit" not in progress.done:
        for path, text in progress.files.items():
            sh.write_text(Path(path), text)
        _git(sh, settings, "add", *progress.files)
        _git(sh, settings, "commit", "--quiet", "-m", f"Release {progress.version}")
        _git(sh, settings, "tag", "-a", progress.tag, "-m", f"Release {progress.version}")
        progress.commit = _out(sh, settings, "rev-parse", "HEAD")
        git.forget()  # the images are labelled with the release commit
        progress.done.append("commit")
        save(settings, sh, progress)
    if "images" not in progress.done:
        # The tree is the release commit (checked above or just made), so the configuration
        # is read as of it, and the labels carry the new version and that commit.
        released = sh.derive(config.load(settings.root))
        for name in progress.image_tags:
            if name in progress.digests:  # pushed and verified before an interruption
                continue
            pushed = push_target(released, name, progress.commit)
            progress.digests[name] = pushed.ref
            save(settings, sh, progress)  # a rollback after a kill deletes only what it recorded
        progress.done.append("images")
        save(settings, sh, progress)
    if "sign" not in progress.done:  # signing again adds nothing: safe to redo
        released = sh.derive(config.load(settings.root))
        for ref in progress.digests.values():
            attest.sign_pushed(released, ref, signer)
        progress.done.append("sign")
        save(settings, sh, progress)
    if "promote" not in progress.done:  # tagging a digest is idempotent: safe to redo
        for name, refs in progress.image_tags.items():
            registry.tag_digest(sh, retry.Policy.of(settings), progress.digests[name], refs)
            verified = progress.digests[name].rpartition("@")[2]
            for ref in refs:
                registry.require_promoted(sh, ref, verified)
        progress.done.append("promote")
        save(settings, sh, progress)


def rollback(settings: Settings, sh: Runtime, progress: Progress) -> None:
    """Undo the local commit and tag, and delete the staging tags from the registry. Only
    the files the release edited are restored, so changes made since (on a resumed release)
    survive."""
    if _out(sh, settings, "rev-parse", "-q", "--verify", f"refs/tags/{progress.tag}"):
        _git(sh, settings, "tag", "-d", progress.tag, check=False)
    if _out(sh, settings, "rev-parse", "HEAD") != progress.previous:
        _git(sh, settings, "reset", "--quiet", "--soft", progress.previous, check=False)
    _git(sh, settings, "checkout", progress.previous, "--", *progress.files, check=False)
    git.forget()
    registry_lines = remove_staging_tags(settings, sh, progress)
    sh.remove_file(progress_path(settings))
    sh.note(f"release {progress.version} rolled back: no local commit or tag remains")
    for line in registry_lines:
        sh.note(f"  {line}")
