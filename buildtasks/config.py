"""Project settings from ``[tool.buildtasks]`` in pyproject.toml.

Values may use ``${VAR}`` and ``${VAR:-default}``, resolved from the process environment over
the ``.env`` files named in ``env_files`` (later files override earlier ones; the real
environment wins). Settings are frozen dataclasses; unknown keys, wrong types and unset
variables are ConfigErrors that name the file and the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from buildtasks.errors import ConfigError

CHECKS = ("non-root", "healthcheck", "size", "dockerignore")
DEFAULT_TAGS = ("{target}", "{target}-{short_sha}")
_TARGET_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}")


@dataclass(frozen=True)
class Target:
    """One image the project builds: ``[tool.buildtasks.targets.<name>]``."""

    name: str
    dockerfile: str = "Dockerfile"
    stage: str = ""
    tags: tuple[str, ...] = DEFAULT_TAGS
    build_args: Mapping[str, str] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()
    platforms: tuple[str, ...] = ()  # push/release platforms; local builds use the native one
    size_budget: str = ""
    checks: tuple[str, ...] | None = None  # None: every check for "prod", none otherwise
    cache_from: tuple[str, ...] = ()
    cache_to: tuple[str, ...] = ()
    # Extra named build contexts: a path (relative to the project), a URL such as
    # docker-image://..., or "@buildtasks" for this package's source (`inv proto` in a build).
    contexts: Mapping[str, str] = field(default_factory=dict)
    attest: tuple[str, ...] = ()  # "provenance" and/or "sbom"; none by default
    cache: str = ""  # "registry": share BuildKit cache as {image}:buildcache-{target}

    @property
    def enabled_checks(self) -> tuple[str, ...]:
        if self.checks is not None:
            return self.checks
        return CHECKS if self.name == "prod" else ()


@dataclass(frozen=True)
class ProtoSettings:
    """``[tool.buildtasks.proto]``: where specs live and where generated code goes."""

    src: str
    out: str
    include: tuple[str, ...] = ()
    grpc: bool = True
    pyi: bool = True


@dataclass(frozen=True)
class StackSettings:
    """``[tool.buildtasks.stack]``: the compose stack `inv up/down/deploy/health` drive."""

    compose: tuple[str, ...] = ("compose/prod.yml",)  # relative to the project root
    project: str = ""  # compose project name; default: the image's repository name
    app_service: str = "api"  # the service whose HTTP health endpoint `inv health` reads
    app_port: int = 8000
    health_path: str = "/health"
    targets: tuple[str, ...] = ()  # built by `inv deploy` and `inv up --build`
    wait_timeout: int = 120  # seconds `up --wait` may take
    data_dirs: tuple[str, ...] = ()  # created in the app container by `inv deploy`
    data_owner: str = "1000:1000"  # ... and chowned to the image's user


@dataclass(frozen=True)
class BackupSettings:
    """``[tool.buildtasks.backup]``: what `inv backup` saves and how long sets are kept."""

    dir: str = "backups"
    keep_last: int = 7
    keep_daily: int = 0
    keep_weekly: int = 0
    sqlite: tuple[str, ...] = ()  # host paths, or SERVICE:/path inside a compose service
    files: tuple[str, ...] = ()  # directories, same forms
    redis: Mapping[str, str] = field(default_factory=dict)  # {service = "..."} or {url = "..."}
    redis_timeout: int = 300  # seconds a BGSAVE may take
    # compose services paused (docker pause) while SQLite, Redis and files are captured, so
    # the stores of a set come from one instant; `inv backup --no-quiesce` skips it
    quiesce: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReleaseSettings:
    """``[tool.buildtasks.release]``: what `inv release` bumps, records, builds and pushes."""

    version_file: str = "pyproject.toml"  # [project] version, or a file with __version__
    changelog: str = "CHANGELOG.md"  # Keep a Changelog format
    branch: str = "main"
    remote: str = "origin"
    targets: tuple[str, ...] = ()  # default: every target with platforms
    platforms: tuple[str, ...] = ()  # default: each target's own
    latest: bool = False  # also move `latest` on stable releases
    tag_prefix: str = "v"


@dataclass(frozen=True)
class CacheSettings:
    """``[tool.buildtasks.cache]``: what `inv prune` keeps."""

    until: str = "168h"  # build cache unused for longer goes
    keep_storage: str = "10GB"  # ... down to this much
    keep_images: int = 3  # newest tagged images kept per target
    dirs: tuple[str, ...] = ()  # local (type=local) cache export directories


@dataclass(frozen=True)
class Settings:
    """Everything buildtasks knows about one project."""

    root: Path
    image: str
    context: str = "."
    env_files: tuple[str, ...] = (".env",)
    mirror: str = ""
    version: str = ""
    source: str = ""
    targets: Mapping[str, Target] = field(default_factory=dict)
    proto: ProtoSettings | None = None
    stack: StackSettings = StackSettings()
    backup: BackupSettings = BackupSettings()
    release: ReleaseSettings = ReleaseSettings()
    cache: CacheSettings = CacheSettings()
    dotenv: Mapping[str, str] = field(default_factory=dict)  # merged .env values

    @property
    def context_dir(self) -> Path:
        return self.root / self.context

    @property
    def environment(self) -> dict[str, str]:
        """What commands see: .env values under the real environment."""
        return {**self.dotenv, **os.environ}


def interpolate(value: str, env: Mapping[str, str], where: str) -> str:
    """Resolve ``${VAR}``, ``${VAR:-default}`` and ``$$`` in value."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, has_default, default = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if has_default is not None:
            return default
        raise ConfigError(
            f"{where} uses ${{{name}}}, which is not set; set {name} in the environment or "
            f"an env file, or write ${{{name}:-default}}"
        )

    return _VARIABLE.sub(substitute, value)


def read_env_files(root: Path, names: tuple[str, ...]) -> dict[str, str]:
    """Merge the .env files that exist (a missing one is not an error), later over earlier."""
    from dotenv import dotenv_values

    merged: dict[str, str] = {}
    for name in names:
        path = root / name
        if path.is_file():
            merged.update({k: v for k, v in dotenv_values(path).items() if v is not None})
    return merged


def load(root: str | os.PathLike[str] = ".") -> Settings:
    """Read the settings of the project whose pyproject.toml is in root."""
    root = Path(root).resolve()
    pyproject = root / "pyproject.toml"
    try:
        document = tomllib.loads(pyproject.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"no pyproject.toml in {root}; run from the project's root directory"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{pyproject}: not valid TOML: {exc}") from None
    table = document.get("tool", {}).get("buildtasks")
    if not isinstance(table, dict):
        raise ConfigError(
            f"{pyproject}: no [tool.buildtasks] table; add one with at least `image = ...`"
        )
    return parse(table, root=root, project=document.get("project", {}), file=pyproject.name)


def parse(
    table: dict,
    *,
    root: Path,
    project: Mapping | None = None,
    file: str = "pyproject.toml",
) -> Settings:
    """Validate and interpolate a ``[tool.buildtasks]`` table."""
    project = project or {}
    where = f"{file}: tool.buildtasks"
    raw = dict(table)
    targets_table = raw.pop("targets", {})
    proto_table = raw.pop("proto", None)
    stack_table = raw.pop("stack", {})
    backup_table = raw.pop("backup", {})
    release_table = raw.pop("release", {})
    cache_table = raw.pop("cache", {})
    env_files = _convert(raw.get("env_files", [".env"]), tuple[str, ...], f"{where}.env_files")
    dotenv = read_env_files(root, env_files)
    env = {**dotenv, **os.environ}

    release = _section(ReleaseSettings, release_table, f"{where}.release", env)
    raw.setdefault("image", project.get("name", ""))
    raw.setdefault("version", _release_version(root, release) or project.get("version", ""))
    sections = {"root", "targets", "proto", "stack", "backup", "release", "cache", "dotenv"}
    values = _build(Settings, raw, where, env, skip=sections)
    if not values["image"]:
        raise ConfigError(f"{where}.image is not set; set it to the image repository to build")
    if not isinstance(targets_table, dict):
        raise ConfigError(f"{where}.targets must be a table of [tool.buildtasks.targets.NAME]")
    targets = {}
    for name, target_table in targets_table.items():
        target_where = f"{where}.targets.{name}"
        if not _TARGET_NAME.match(name):
            raise ConfigError(
                f"{target_where}: target names are lowercase letters, digits, - and _"
            )
        if not isinstance(target_table, dict):
            raise ConfigError(f"{target_where} must be a table")
        target = Target(name=name, **_build(Target, target_table, target_where, env, {"name"}))
        if set(target.attest) - {"provenance", "sbom"} or target.cache not in ("", "registry"):
            raise ConfigError(
                f'{target_where}: attest takes "provenance" and "sbom"; cache takes "registry"'
            )
        unknown = set(target.enabled_checks) - set(CHECKS)
        if unknown:
            raise ConfigError(
                f"{target_where}.checks: unknown check {min(unknown)!r}; "
                f"known checks: {', '.join(CHECKS)}"
            )
        targets[name] = target
    proto = _section(ProtoSettings, proto_table, f"{where}.proto", env)
    stack = _section(StackSettings, stack_table, f"{where}.stack", env)
    unknown_targets = [t for t in stack.targets if t not in targets]
    if unknown_targets:
        raise ConfigError(
            f"{where}.stack.targets: no target {unknown_targets[0]!r}; "
            f"targets: {', '.join(targets) or 'none configured'}"
        )
    backup = _section(BackupSettings, backup_table, f"{where}.backup", env)
    if set(backup.redis) - {"service", "url"} or len(backup.redis) > 1:
        raise ConfigError(
            f'{where}.backup.redis: write {{ service = "NAME" }} or {{ url = "redis://..." }}'
        )
    return Settings(
        root=root,
        targets=targets,
        proto=proto,
        stack=stack,
        backup=backup,
        release=release,
        cache=_section(CacheSettings, cache_table, f"{where}.cache", env),
        dotenv=dotenv,
        **values,
    )


def _release_version(root: Path, release: ReleaseSettings) -> str:
    """The version in the release's version file when it is not pyproject.toml."""
    path = root / release.version_file
    if path.name == "pyproject.toml" or not path.is_file():
        return ""
    match = re.search(r"""^__version__\s*=\s*["']([^"']*)["']""", path.read_text(), re.MULTILINE)
    return match.group(1) if match else ""


def _section(cls: type, table: object, where: str, env: Mapping[str, str]):
    """An optional sub-table as dataclass cls, None when absent; required keys enforced."""
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [key for key in required if key not in table]
    if missing:
        raise ConfigError(f"{where}: `{missing[0]}` is required")
    return cls(**_build(cls, table, where, env, set()))


@functools.cache
def _hints(cls: type) -> dict:
    return typing.get_type_hints(cls)  # evaluates every annotation: once per class


def _build(cls: type, table: Mapping, where: str, env: Mapping[str, str], skip: set[str]) -> dict:
    """Check table against the fields of dataclass cls; return converted values."""
    hints = _hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)} - skip
    values = {}
    for key, value in table.items():
        if key not in fields:
            close = difflib.get_close_matches(key, sorted(fields), n=1)
            hint = (
                f" (did you mean `{close[0]}`?)"
                if close
                else f"; known keys: {', '.join(sorted(fields))}"
            )
            raise ConfigError(f"{where}: unknown key `{key}`{hint}")
        values[key] = _convert(value, hints[key], f"{where}.{key}", env)
    return values


def _convert(value: object, hint: object, where: str, env: Mapping[str, str] | None = None):
    """Type-check one value against its annotation and interpolate its strings."""
    env = os.environ if env is None else env
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (
        types.UnionType,
        typing.Union,
    ):  # `X | None`: None only as the default
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {_kind(value)}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {_kind(value)}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {_kind(value)}")
        return interpolate(value, env, where)
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} must be a list of strings, got {_kind(value)}")
        return tuple(interpolate(v, env, where) for v in value)
    if origin is Mapping:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(f"{where} must be a table of strings, got {_kind(value)}")
        return {k: interpolate(v, env, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"no conversion for {hint}")  # a field type this module does not handle


def _kind(value: object) -> str:
    return {str: "a string", list: "a list", dict: "a table", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )
