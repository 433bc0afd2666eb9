"""Breaking-change and lint checks of the protobuf specs with buf (`buf-bin` on PyPI).

The module buf checks is the project's own buf.yaml when one sits in the spec directory
or above it (inside the project), else one derived from ``[tool.buildtasks.proto]``: the
spec and include directories as modules of a v2 configuration passed on the command line.
The other side of a breaking check is read from git (``git archive`` of REF into a
temporary directory): the working tree and the index are never touched.
"""

from __future__ import annotations

import json
import tarfile
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from packaging.version import InvalidVersion, Version

from buildtasks import git
from buildtasks.config import Settings, read_yaml_mapping
from buildtasks.errors import BuildtasksError, CommandError, ConfigError
from buildtasks.proto import configured
from buildtasks.shell import Shell, tool

FINDINGS_EXIT = 100  # buf's exit code when it found something (0: clean; others: failure)


@dataclass(frozen=True)
class Finding:
    path: str  # relative to the project root; REF:path for a file of the other side
    line: int
    column: int
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.message} ({self.rule})"


@dataclass(frozen=True)
class Report:
    findings: tuple[Finding, ...]
    config: str  # where the rules came from
    against: str = ""  # the git ref a breaking check compared with
    note: str = ""  # why nothing was compared, when nothing was

    def to_json(self) -> dict:
        return {**asdict(self), "ok": not self.findings}


@dataclass(frozen=True)
class Module:
    """What buf runs on: an input directory (relative to the root), the configuration
    (None: the buf.yaml buf finds there) and the paths a breaking check reads at REF."""

    input: str
    config: str | None
    paths: tuple[str, ...]
    source: str


def binary() -> str:
    return tool("buf", "install it with: pip install 'buildtasks[proto]'")


def own_config(settings: Settings) -> Path | None:
    """The project's buf.yaml: in the spec directory or the nearest one above it."""
    root = settings.root.resolve()
    directory = (root / configured(settings).src).resolve()
    while True:
        if (directory / "buf.yaml").is_file():
            return directory / "buf.yaml"
        if directory == root:
            return None
        directory = directory.parent


def module(settings: Settings) -> Module:
    proto = configured(settings)
    found = own_config(settings)
    if found is None:
        config = {
            "version": "v2",
            "modules": [{"path": path} for path in (proto.src, *proto.include)],
            "breaking": {"use": [proto.breaking]},
            "lint": {"use": list(proto.lint), "except": list(proto.lint_except)},
        }
        paths = (proto.src, *proto.include)
        return Module(".", json.dumps(config), paths, "[tool.buildtasks.proto]")
    directory = found.parent.relative_to(settings.root.resolve())
    data = read_yaml_mapping(found)
    modules = data.get("modules")
    if data.get("version") == "v2" and isinstance(modules, list) and modules:
        paths = tuple(
            str(directory / str(m.get("path", ".") if isinstance(m, dict) else m)) for m in modules
        )
    else:
        paths = (str(directory),)
    return Module(str(directory), None, paths, str(directory / "buf.yaml"))


def release_tag(sh: Shell, settings: Settings) -> str:
    """The newest release tag (by version) reachable from HEAD; '' when there is none."""
    prefix = settings.release.tag_prefix
    listed = git.query(sh, settings.root, "tag", "--list", f"{prefix}*", "--merged", "HEAD")
    versions = {}
    for tag in listed.split():
        try:
            versions[tag] = Version(tag[len(prefix) :])
        except InvalidVersion:
            continue
    return max(versions, key=versions.__getitem__) if versions else ""


def default_against(sh: Shell, settings: Settings) -> str:
    return release_tag(sh, settings) or settings.release.branch


def _read_ref(sh: Shell, settings: Settings, ref: str, paths: tuple[str, ...], into: Path):
    """Extract paths as they are at ref into `into`; the paths that exist there."""
    root = settings.root
    # a ref starting with - would be read by git as an option (git archive -o FILE ...)
    if ref.startswith("-") or not git.query(
        sh, root, "rev-parse", "--verify", "-q", "--end-of-options", f"{ref}^{{commit}}"
    ):
        raise BuildtasksError(
            f"proto.breaking: {ref!r} is not a commit, tag or branch of {root}; pass --against REF"
        )
    # The project may sit in a subdirectory of its repository: archive from the top, the
    # project's tree at ref, so the paths come out relative to the project.
    where = git.query(sh, root, "rev-parse", "--show-toplevel", "--show-prefix")
    top, _, prefix = where.partition("\n")  # the prefix is '' at the top
    present = [p for p in paths if git.succeeds(sh, root, "cat-file", "-e", f"{ref}:{prefix}{p}")]
    if present:
        archive = into.parent / "ref.tar"
        sh.run(
            ["git", "-C", top, "archive", "--format=tar", "-o", str(archive),
             f"{ref}:{prefix}", "--", *present],
            query=True,
        )  # fmt: skip
        with tarfile.open(archive) as tar:
            tar.extractall(into, filter="data")
    return present


def _run(sh: Shell, settings: Settings, argv: list[str], sides: dict[str, str]) -> list[Finding]:
    """Run buf with JSON errors in the project root (so its paths are relative to it); its
    findings. sides maps a directory prefix of reported paths to the label it stands for
    (the other side of a breaking check: REF:)."""
    result = sh.run([binary(), *argv, "--error-format", "json"], query=True, check=False,
                    cwd=str(settings.root))  # fmt: skip
    if result.returncode not in (0, FINDINGS_EXIT):
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise CommandError(f"buf {argv[0]} failed (exit {result.returncode}): {detail}", 1)
    findings = []
    for line in result.stdout.splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        path = str(item.get("path", ""))
        for prefix, label in sides.items():
            if path.startswith(prefix):
                path = label + path[len(prefix) :].lstrip("/")
                break
        findings.append(
            Finding(path, int(item.get("start_line", 0)), int(item.get("start_column", 0)),
                    str(item.get("type", "")), str(item.get("message", "")))
        )  # fmt: skip
    return findings


def _config_args(flag: str, mod: Module, settings: Settings) -> list[str]:
    if mod.config is not None:
        return [flag, mod.config]
    return [flag, str(settings.root / mod.input / "buf.yaml")]


def breaking(sh: Shell, settings: Settings, against: str = "", category: str = "") -> Report:
    """buf breaking of the specs in the working tree against the specs at a git ref."""
    mod = module(settings)
    if category and mod.config is not None:
        config = json.loads(mod.config)
        config["breaking"]["use"] = [category]
        mod = Module(mod.input, json.dumps(config), mod.paths, mod.source)
    elif category:
        raise ConfigError(f"--category cannot override the rules of {mod.source}; edit it there")
    ref = against or default_against(sh, settings)
    with tempfile.TemporaryDirectory(prefix="buildtasks-buf-") as tmp:
        tree = Path(tmp) / "tree"
        tree.mkdir()
        present = _read_ref(sh, settings, ref, mod.paths, tree)
        if mod.paths[0] not in present:
            note = f"{mod.paths[0]} did not exist at {ref}: nothing to compare"
            return Report((), mod.source, ref, note)
        argv = ["breaking", mod.input, "--against", str(tree / mod.input)]
        argv += _config_args("--config", mod, settings)
        argv += _config_args("--against-config", mod, settings)
        findings = _run(sh, settings, argv, {str(tree) + "/": f"{ref}:"})
    return Report(tuple(findings), mod.source, ref)


def lint(sh: Shell, settings: Settings) -> Report:
    """buf lint of the specs in the working tree."""
    mod = module(settings)
    argv = ["lint", mod.input, *_config_args("--config", mod, settings)]
    return Report(tuple(_run(sh, settings, argv, {})), mod.source)


def release_problems(
    sh: Shell, settings: Settings, current: str, new: str, allow_breaking: bool
) -> list[str]:
    """Why a release of `new` cannot ship the specs: the first breaking change since the
    previous release tag, unless the major version moves or it is allowed."""
    if settings.proto is None or allow_breaking or Version(new).major > Version(current).major:
        return []
    tag = release_tag(sh, settings)
    findings = breaking(sh, settings, tag).findings if tag else ()
    if not findings:
        return []
    return [
        f"proto: breaking change since {tag}: {findings[0]}; "
        "release it with --bump major or pass --allow-breaking"
    ]
