"""Project settings from ``[tool.buildtasks]`` in pyproject.toml.

The schema is declared once, as the annotated fields of frozen ``msgspec.Struct`` classes
(made in C: no per-class code generation at import, which `inv --list` pays for): msgspec checks
each value's type and bounds (``Annotated[int, Meta(ge=1)]``), and the ``Rule`` markers in
the annotations check what a type cannot say (a size, a duration, an image reference, a tag
template, a path that stays inside its root). Every value is checked at load, so a task never
meets a bad value halfway through a build.

Values may use ``${VAR}`` and ``${VAR:-default}``, resolved from the process environment over
the ``.env`` files named in ``env_files`` (later files override earlier ones; the real
environment wins). Every problem is one ConfigError line that names the file and the key.

The annotations are objects, evaluated once at import (no ``from __future__ import
annotations``): the loader reads them at every load, and strings would be evaluated there.
"""

import difflib
import inspect
import io
import os
import re
import string
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import NODEFAULT, Meta, Struct, field

from buildtasks import atomic, lazy
from buildtasks.errors import ConfigError

dotenv = lazy.module("dotenv")
yaml = lazy.module("yaml")

CHECKS = ("non-root", "healthcheck", "size", "dockerignore")
DEFAULT_TAGS = ("{target}", "{target}-{short_sha}")
TEMPLATE_FIELDS = ("target", "version", "sha", "short_sha", "branch")
_TARGET_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}|\$\{")
_MAX_SECONDS = 7 * 24 * 3600  # timeouts beyond a week are typos, and overflow socket APIs

# The docker reference grammar (github.com/distribution/reference, regexp.go).
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REPOSITORY = re.compile(_NAME)
# The patterns below are compiled on first use (re keeps them): a listing whose
# configuration sets no tags, build arguments or off-site repository never needs them.
# _REFERENCE: only a wrong image or a tag template that names a repository needs it, and
# compiling it costs more than the rest of a load's patterns.
_REFERENCE = rf"(?P<name>{_NAME})(?::{_TAG})?(?:@{_DIGEST})?"
_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"  # build argument and variable names
_RESTIC_REPOSITORY = r"(?:rest:https?://|sftp:|s3:|b2:)\S+"


def is_tag(text: str) -> bool:
    """Whether text is a valid image tag (letters, digits, _ . -, not first; <= 128)."""
    return bool(re.fullmatch(_TAG, text))


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
}
_MAX_BYTES = 10**15  # 1 PB: beyond is a typo (and overflows the engine's int64 fields)
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}  # Go durations, as `buildx prune --filter until=`
_MAX_DURATION = 87_600 * 3600  # ten years, well inside Go's and timedelta's range


def parse_size(text: str) -> int:
    """Bytes in '250MB', '1.5 GiB', '900kb', '1024'. Decimal units are powers of 10.
    Exact (no float): '<320 nines>MB' is too large, not infinity."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _SIZE_UNITS:
        raise ConfigError(f"size {text[:40]!r}: write a number with B, KB, MB, GB, KiB, MiB or GiB")
    size = Decimal(match.group(1)) * _SIZE_UNITS[unit]
    if size > _MAX_BYTES:
        raise ConfigError(f"size {text[:40]!r}: too large; at most 1000000GB")
    return int(size)


def parse_duration(text: str) -> int:
    """Seconds in '168h', '30m', '90s', '1h30m' (Go's duration units s, m and h), at
    most ten years."""
    parts = re.findall(r"([0-9]+)([smh])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ConfigError(
            f"duration {text[:40]!r}: write a number with s, m or h (e.g. 168h for a week)"
        )
    # Decimal, since int() refuses strings over 4300 digits
    seconds = sum(Decimal(number) * _DURATION_UNITS[unit] for number, unit in parts)
    if seconds > _MAX_DURATION:
        raise ConfigError(f"duration {text[:40]!r}: too long; at most 87600h (ten years)")
    return int(seconds)


class _Context(Struct, frozen=True):
    """What rules need to know: where the project and its build context are."""

    root: Path
    context: Path


class Rule(Struct, frozen=True):
    """A check on a string the type alone cannot express; ``check`` returns the reason
    the value is wrong, or None."""

    check: Callable[[str, _Context], str | None]
    shows_value: bool = True  # False where a wrong value may be a secret pasted in


class Filled(Struct, frozen=True):
    """Marks a field the loader fills in (the project root, a target's name, the merged .env
    values): no key of the table."""


def _inside(base: Path, value: str, name: str) -> str | None:
    """Why value, a path relative to base, is not a path inside base (None when it is)."""
    if not value or "\x00" in value:
        return "is not a path"
    if Path(value).is_absolute():
        return f"must be relative to {name}, not absolute"
    try:
        (base / value).resolve().relative_to(base)
    except (ValueError, OSError, RuntimeError):  # outside; unreadable; a symlink loop
        return f"points outside {name}"
    return None


def _project_path(value: str, ctx: _Context) -> str | None:
    return _inside(ctx.root, value, "the project root")


def _context_path(value: str, ctx: _Context) -> str | None:
    # The build sends only its context: a Dockerfile elsewhere is a mistake.
    return _inside(ctx.context, value, "the build context")


def _data_path(value: str, ctx: _Context) -> str | None:
    """Data may live anywhere the user names absolutely; relative paths stay in the project."""
    if value.startswith("~"):  # no shell expands it: it would be a directory named ~
        return "starts with ~, which is not expanded; write the absolute path"
    if value.startswith("/") and "\x00" not in value:
        return None
    return _project_path(value, ctx)


def _optional_data_path(value: str, ctx: _Context) -> str | None:
    return _data_path(value, ctx) if value else None


def _env_name(value: str, _: _Context) -> str | None:
    if re.fullmatch(_IDENTIFIER, value):
        return None
    return "is not an environment variable name"


def _container_path(value: str, _: _Context) -> str | None:
    parts = value.split("/")
    if not value.startswith("/") or ".." in parts or "\x00" in value or value.strip() != value:
        return "must be an absolute path inside the container, without .."
    return None


def _source(value: str, ctx: _Context) -> str | None:
    """SERVICE:/path inside a compose service (as backup.sets reads it), else a host path."""
    service, sep, path = value.partition(":")
    if sep and path.startswith("/") and not _service(service, ctx):
        return _container_path(path, ctx)
    return _data_path(value, ctx)


def _size(value: str, _: _Context) -> str | None:
    try:
        parse_size(value)
    except ConfigError as exc:
        if "too large" in str(exc):
            return "is too large; at most 1000000GB"
        return "is not a size; write a number with B, KB, MB, GB, KiB, MiB or GiB (e.g. 250MB)"
    return None


def _budget(value: str, ctx: _Context) -> str | None:
    if not value:
        return None  # no budget
    return _size(value, ctx) or (None if parse_size(value) > 0 else "must be above zero")


def _duration(value: str, _: _Context) -> str | None:
    try:
        seconds = parse_duration(value)
    except ConfigError as exc:
        if "too long" in str(exc):
            return "is too long; at most 87600h (ten years)"
        return "is not a duration; write a number with s, m or h (e.g. 168h for a week)"
    return None if seconds > 0 else "must be above zero"


def _repository(value: str, _: _Context) -> str | None:
    if not value:
        return "is empty; set image to the repository to build (e.g. reg:5000/team/app)"
    if len(value) <= 255 and _REPOSITORY.fullmatch(value):
        return None
    if re.fullmatch(_REFERENCE, value):
        return "must be a repository without a tag or digest; put tags in the targets' tags"
    return (
        "is not an image repository: lowercase path components ([a-z0-9] joined by . _ -), "
        "optionally after a registry host[:port]/"
    )


def _mirror(value: str, ctx: _Context) -> str | None:
    return None if not value else _repository(value, ctx)


def _engine_host(value: str, _: _Context) -> str | None:
    if not value or re.fullmatch(r"(unix://|npipe://)/\S+|(tcp|ssh)://[^\s/]+/?", value):
        return None
    return "is not an engine address; write ssh://USER@HOST, tcp://HOST:PORT or unix:///PATH"


def _tag_template(value: str, _: _Context) -> str | None:
    try:
        parsed = list(string.Formatter().parse(value))
    except ValueError:
        return "is not a tag template: unbalanced { or }; write {{ and }} for literal braces"
    known = ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS)
    for _, name, spec, conversion in parsed:
        if name is not None and (name not in TEMPLATE_FIELDS or spec or conversion):
            return f"uses {{{name}}}; known fields: {known}"
    rendered = value.format_map(dict.fromkeys(TEMPLATE_FIELDS, "x"))
    if "/" in rendered or ":" in rendered:
        match = re.fullmatch(_REFERENCE, rendered)
        tag = rendered[match.end("name") :] if match else ""
        if not match or len(match.group("name")) > 255:
            return "is not an image reference (REPOSITORY:TAG) nor a tag"
        # A tag cannot hold / or :, so the value names a repository: it must say its tag,
        # and a bare HOST:PORT (localhost:5000) is a registry, not an image.
        if not tag.startswith(":"):
            return "names a repository without a tag (a tag cannot contain /); write REPO:TAG"
        if "/" not in match.group("name") and tag[1:].isdigit():
            return "looks like a registry HOST:PORT, not a tag; write HOST:PORT/REPO:TAG"
        return None
    if re.fullmatch(_TAG, rendered):
        return None
    return "is not a tag: letters, digits, _ . - (not first), at most 128 characters"


# The Linux platforms BuildKit builds for (with QEMU for the foreign ones).
PLATFORMS = (
    "linux/amd64",
    "linux/arm64",
    "linux/arm/v7",
    "linux/arm/v6",
    "linux/386",
    "linux/ppc64le",
    "linux/s390x",
    "linux/riscv64",
)


def _platform(value: str, _: _Context) -> str | None:
    if value in PLATFORMS:
        return None
    return f"is not a platform buildtasks builds; known: {', '.join(PLATFORMS)}"


def _distinct(values: tuple[str, ...], _: _Context) -> str | None:
    repeated = sorted({v for v in values if values.count(v) > 1})
    return f"lists {repeated[0]!r} twice" if repeated else None


def _secret(value: str, ctx: _Context) -> str | None:
    secret_id, sep, source = value.partition("=")
    forms = "write ID, ID=env:VAR, ID=file:PATH or ID=ca-bundle"
    kind, _, detail = source.partition(":")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", secret_id):
        return f"is not a secret; {forms}"
    if not sep or source == "ca-bundle":
        return None
    if kind == "env" and re.fullmatch(_IDENTIFIER, detail):
        return None
    if kind == "file":
        return _project_path(detail, ctx)
    return f"is not a secret; {forms}"


def _named_context(value: str, ctx: _Context) -> str | None:
    if value == "@buildtasks" or re.fullmatch(r"[a-z][a-z0-9+.-]*://\S+", value):
        return None
    if value.startswith("target:"):  # another target's build: bake builds it first
        name = value.removeprefix("target:")
        return None if _TARGET_NAME.fullmatch(name) else "names no target; write target:NAME"
    return _project_path(value, ctx)


def _service(value: str, _: _Context) -> str | None:
    if re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", value):
        return None
    return "is not a compose service name"


def _compose_project(value: str, _: _Context) -> str | None:
    if not value or re.fullmatch(r"[a-z0-9][a-z0-9_-]*", value):
        return None
    return "is not a compose project name: lowercase letters, digits, - and _"


def _owner(value: str, _: _Context) -> str | None:
    if re.fullmatch(r"[a-z0-9_][a-z0-9_.-]*(?::[a-z0-9_][a-z0-9_.-]*)?", value, re.IGNORECASE):
        return None
    return "is not an owner; write UID:GID (e.g. 1000:1000) or USER[:GROUP]"


def _url_path(value: str, _: _Context) -> str | None:
    if re.fullmatch(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*", value):
        return None
    return "is not a URL path starting with /"


def _word(value: str, _: _Context) -> str | None:
    """Git refs, remotes, prefixes, stage names: no blanks, nothing an argv could misread."""
    if value and re.fullmatch(r"[A-Za-z0-9_./+@-]+", value) and not value.startswith("-"):
        return None
    return "must be a single word of letters, digits and _ . / + @ - (not starting with -)"


def _optional_word(value: str, ctx: _Context) -> str | None:
    return None if not value else _word(value, ctx)


def _arg_name(value: str, _: _Context) -> str | None:
    if re.fullmatch(_IDENTIFIER, value):
        return None
    return "is not a build argument name"


def _context_name(value: str, _: _Context) -> str | None:
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_./:@-]*", value):
        return None
    return "is not a build context name"


def _cache_spec(value: str, _: _Context) -> str | None:
    if value and not re.search(r"\s", value):
        return None
    return "is not a cache spec (type=...,key=value or an image reference)"


def _buf_rule(value: str, _: _Context) -> str | None:
    if re.fullmatch(r"[A-Z][A-Z0-9_]*", value):
        return None
    return "is not a buf rule or category (e.g. STANDARD, FIELD_LOWER_SNAKE_CASE)"


def _python_version(value: str, _: _Context) -> str | None:
    return None if re.fullmatch(r"3\.[0-9]{1,2}", value) else "is not a Python version (e.g. 3.12)"


Count = Annotated[int, Meta(ge=0)]
Positive = Annotated[int, Meta(ge=1)]
Seconds = Annotated[int, Meta(ge=1, le=_MAX_SECONDS)]
Port = Annotated[int, Meta(ge=1, le=65535)]
ProjectPath = Annotated[str, Rule(_project_path)]
Platforms = Annotated[tuple[Annotated[str, Rule(_platform)], ...], Rule(_distinct)]


class Target(Struct, frozen=True):
    """One image the project builds: ``[tool.buildtasks.targets.<name>]``."""

    name: Annotated[str, Filled()]  # the key under [tool.buildtasks.targets]
    context: ProjectPath = ""  # default: the project's `context`
    image: Annotated[str, Rule(_mirror)] = ""  # default: the project's `image`
    # relative to the target's context
    dockerfile: Annotated[str, Rule(_context_path)] = "Dockerfile"
    # the Dockerfile stage to build (--target); default: the last
    stage: Annotated[str, Rule(_optional_word)] = ""
    # tags or REPO:TAG templates with {target} {version} {sha} {short_sha} {branch}
    tags: Annotated[tuple[Annotated[str, Rule(_tag_template)], ...], Meta(min_length=1)] = (
        DEFAULT_TAGS
    )
    # build arguments (never secrets: they stay in the image)
    build_args: Mapping[Annotated[str, Rule(_arg_name)], str] = field(default_factory=dict)
    # BuildKit secrets: ID, ID=env:VAR, ID=file:PATH or ID=ca-bundle
    secrets: tuple[Annotated[str, Rule(_secret)], ...] = ()
    platforms: Platforms = ()  # push/release platforms; local builds use the native one
    size_budget: Annotated[str, Rule(_budget)] = ""  # held against the uncompressed size
    checks: tuple[str, ...] | None = None  # None: every check for "prod", none otherwise
    # extra buildx --cache-from specs
    cache_from: tuple[Annotated[str, Rule(_cache_spec)], ...] = ()
    # extra buildx --cache-to specs (used on pushes)
    cache_to: tuple[Annotated[str, Rule(_cache_spec)], ...] = ()
    # Extra named build contexts: a path (relative to the project), a URL such as
    # docker-image://..., "@buildtasks" for this package's source (`inv proto` in a build),
    # or "target:NAME" for another target's image (a shared base), built first.
    contexts: Mapping[Annotated[str, Rule(_context_name)], Annotated[str, Rule(_named_context)]] = (
        field(default_factory=dict)
    )
    attest: tuple[typing.Literal["provenance", "sbom"], ...] = ()  # none by default
    # "registry": share BuildKit cache as {image}:buildcache-{target}
    cache: typing.Literal["", "registry"] = ""

    @property
    def depends_on(self) -> tuple[str, ...]:
        """The targets this one builds FROM (its target:NAME contexts)."""
        return tuple(
            v.removeprefix("target:") for v in self.contexts.values() if v.startswith("target:")
        )

    @property
    def enabled_checks(self) -> tuple[str, ...]:
        if self.checks is not None:
            return self.checks
        return CHECKS if self.name == "prod" else ()

    @property
    def size_budget_bytes(self) -> int | None:
        """The budget in bytes, None when there is none."""
        return parse_size(self.size_budget) if self.size_budget else None


class ProtoSettings(Struct, frozen=True):
    """``[tool.buildtasks.proto]``: where specs live and where generated code goes."""

    # the directory of .proto files
    src: ProjectPath
    # where generated modules go (imports made relative)
    out: ProjectPath
    # extra proto include directories
    include: tuple[ProjectPath, ...] = ()
    # also generate gRPC stubs
    grpc: bool = True
    # .pyi type stubs for the message and the gRPC modules (mypy-protobuf)
    pyi: bool = True
    # `inv proto.breaking`: buf's breaking-change category (a project's buf.yaml wins)
    breaking: typing.Literal["FILE", "PACKAGE", "WIRE_JSON", "WIRE"] = "WIRE_JSON"
    # `inv proto.lint`: buf lint rules or categories used
    lint: tuple[Annotated[str, Rule(_buf_rule)], ...] = ("STANDARD",)
    # `inv proto.lint`: rules left out (these two the example's RPC names break)
    lint_except: tuple[Annotated[str, Rule(_buf_rule)], ...] = (
        "RPC_REQUEST_RESPONSE_UNIQUE",
        "RPC_RESPONSE_STANDARD_NAME",
    )


class CiSettings(Struct, frozen=True):
    """``[tool.buildtasks.ci]``: what `buildtasks ci github|gitlab` puts in the workflow.
    Each step list is shell commands run in the project root."""

    python: Annotated[str, Rule(_python_version)] = "3.11"  # the runner's Python
    install: tuple[str, ...] = ("python -m pip install -e .[dev]",)  # before every job
    lint: tuple[str, ...] = ("nox -s lint",)  # the lint job
    unit: tuple[str, ...] = ("nox -s tests",)  # the unit-test job
    integration: tuple[str, ...] = ("nox -s integration",)  # the job on an engine


class StackSettings(Struct, frozen=True):
    """``[tool.buildtasks.stack]``: the compose stack `inv up/down/deploy/health` drive."""

    # compose files of the stack, in order
    compose: Annotated[tuple[ProjectPath, ...], Meta(min_length=1)] = ("compose/prod.yml",)
    project: Annotated[str, Rule(_compose_project)] = ""  # default: the image's repository name
    app_service: Annotated[str, Rule(_service)] = "api"  # whose HTTP health `inv health` reads
    # the app's container port serving health_path
    app_port: Port = 8000
    # the HTTP path `inv health` and deploy read
    health_path: Annotated[str, Rule(_url_path)] = "/health"
    targets: tuple[str, ...] = ()  # built by `inv deploy` and `inv up --build`
    wait_timeout: Seconds = 120  # seconds `up --wait` may take
    data_dirs: tuple[Annotated[str, Rule(_container_path)], ...] = ()  # made by `inv deploy`
    data_owner: Annotated[str, Rule(_owner)] = "1000:1000"  # ... and chowned to the image's user


def _repository_url(value: str, _: _Context) -> str | None:
    if not value or re.fullmatch(_RESTIC_REPOSITORY, value):
        return None
    return (
        "is not an off-site restic repository; write rest:http(s)://..., sftp:..., s3:... or b2:..."
    )


def read_data_subset(text: str) -> str:
    """text if restic check --read-data-subset takes it: N% (above 0, at most 100) or n/t."""
    if (match := re.fullmatch(r"(\d{1,3}(?:\.\d+)?)%", text)) and 0 < float(match[1]) <= 100:
        return text
    if (match := re.fullmatch(r"(\d{1,6})/(\d{1,6})", text)) and 1 <= int(match[1]) <= int(
        match[2]
    ):
        return text
    raise ConfigError(
        f"data subset {text[:40]!r}: write a percentage such as 5% or a part n/t such as 1/7"
    )


def _restic_option(value: str, _: _Context) -> str | None:
    if re.fullmatch(r"[a-z0-9]+\.[a-z0-9.-]+=.*", value, re.DOTALL) and "\x00" not in value:
        return None
    return "is not a restic option; write KEY=VALUE such as sftp.args=-p 2222"


def _subset(value: str, _: _Context) -> str | None:
    try:
        read_data_subset(value)
    except ConfigError:
        return "is not a data subset; write a percentage such as 5% or a part n/t such as 1/7"
    return None


class OffsiteSettings(Struct, frozen=True):
    """``[tool.buildtasks.backup.offsite]``: the restic repository sets are sent to."""

    repository: Annotated[str, Rule(_repository_url)] = ""  # empty: no off-site copies
    password_env: Annotated[str, Rule(_env_name)] = "RESTIC_PASSWORD"  # env or .env variable
    password_file: Annotated[str, Rule(_optional_data_path)] = ""  # ... or a file holding it
    send: typing.Literal["manual", "always"] = "manual"  # always: every `inv backup` sends
    check_subset: Annotated[str, Rule(_subset)] = "5%"  # what `backup.verify --offsite` reads
    open_timeout: Seconds = 60  # seconds the repository gets to answer when it is opened
    # restic -o KEY=VALUE for every command (sftp.args, s3.region, ...); shown, so no secrets
    options: tuple[Annotated[str, Rule(_restic_option)], ...] = ()


class IntegrationSettings(Struct, frozen=True):
    """``[tool.buildtasks.integration]``: what `nox -s integration` installs, builds, runs."""

    compose: tuple[ProjectPath, ...] = ()  # default: the stack's compose files
    targets: tuple[str, ...] | None = None  # built first; default: the stack's targets
    # pip arguments for the session's virtualenv; default: the project's test requirements
    # (a `test` or `dev` dependency group, else requirements-test.txt or
    # requirements-dev.txt, else just pytest)
    install: tuple[str, ...] | None = None
    # arguments to pytest (test paths first)
    pytest_args: tuple[str, ...] = ("tests",)
    wait_timeout: Seconds | None = None  # default: the stack's wait_timeout
    runner_target: str = ""  # the target whose image runs pytest with --in-container


class DbSettings(Struct, frozen=True):
    """``[tool.buildtasks.db]``: the SQLite database `inv db.migrate` and `inv db.status` use."""

    sqlite: Annotated[str, Rule(_source)]  # a host path, or SERVICE:/path in a compose service
    migrations: ProjectPath = "migrations"  # NNNN_name.sql files, applied in order


class BackupSettings(Struct, frozen=True):
    """``[tool.buildtasks.backup]``: what `inv backup` saves and how long sets are kept."""

    # where sets are written (a path of its own, outside the sources)
    dir: Annotated[str, Rule(_data_path)] = "backups"
    keep_last: Positive = 7  # at least the set just taken
    # also keep the newest set of each of this many days
    keep_daily: Count = 0
    # also keep the newest set of each of this many weeks
    keep_weekly: Count = 0
    # host paths, or SERVICE:/path inside a compose service
    sqlite: tuple[Annotated[str, Rule(_source)], ...] = ()
    files: tuple[Annotated[str, Rule(_source)], ...] = ()  # directories, same forms
    redis: Mapping[str, str] = field(default_factory=dict)  # {service = "..."} or {url = "..."}
    redis_timeout: Seconds = 300  # seconds a BGSAVE may take
    # compose services paused (docker pause) while SQLite, Redis and files are captured, so
    # the stores of a set come from one instant; `inv backup --no-quiesce` skips it
    quiesce: tuple[Annotated[str, Rule(_service)], ...] = ()
    offsite: OffsiteSettings = OffsiteSettings()  # [tool.buildtasks.backup.offsite]


class ReleaseSettings(Struct, frozen=True):
    """``[tool.buildtasks.release]``: what `inv release` bumps, records, builds and pushes."""

    version_file: ProjectPath = "pyproject.toml"  # [project] version, or a file with __version__
    changelog: ProjectPath = "CHANGELOG.md"  # Keep a Changelog format
    # the branch releases are made from
    branch: Annotated[str, Rule(_word)] = "main"
    # the git remote commits and tags are pushed to
    remote: Annotated[str, Rule(_word)] = "origin"
    targets: tuple[str, ...] = ()  # default: every target with platforms
    platforms: Platforms = ()  # default: each target's own
    latest: bool = False  # also move `latest` on stable releases
    # git tag = prefix + version (v1.2.3)
    tag_prefix: Annotated[str, Rule(_optional_word)] = "v"


def _signing_key(value: str, ctx: _Context) -> str | None:
    """A key file in the project, an absolute path, or env://VAR (cosign reads the key PEM
    from that variable); never the key itself."""
    if value.startswith("env://"):
        return None if re.fullmatch(_IDENTIFIER, value[6:]) else "names no variable after env://"
    if "PRIVATE KEY" in value:
        return "holds a key, not where to find one; write its path or env://VAR"
    return _data_path(value, ctx)


KeyPath = Annotated[str, Rule(_signing_key, shows_value=False)]


class PublishSettings(Struct, frozen=True):
    """``[tool.buildtasks.publish]``: what every push (`inv push`, `inv release`) attaches,
    signs and retries."""

    provenance: typing.Literal["min", "max", "off"] = "min"  # buildx provenance on pushes
    sign: typing.Literal["", "cosign"] = ""  # "cosign": sign every pushed digest, attest SBOMs
    key: KeyPath = "cosign.key"  # private key; its password comes from COSIGN_PASSWORD
    public_key: KeyPath = "cosign.pub"  # what `inv verify` checks signatures against
    sbom: bool = True  # with sign: a signed CycloneDX SBOM attestation per platform image
    retries: Annotated[int, Meta(ge=0, le=20)] = 4  # transient registry errors, per step
    retry_delay: Annotated[float, Meta(ge=0, le=300)] = 2.0  # seconds, doubled each retry


class CacheSettings(Struct, frozen=True):
    """``[tool.buildtasks.cache]``: what `inv prune` keeps."""

    until: Annotated[str, Rule(_duration)] = "168h"  # build cache unused for longer goes
    keep_storage: Annotated[str, Rule(_size)] = "10GB"  # ... down to this much
    keep_images: Count = 3  # newest tagged images kept per target
    dirs: tuple[ProjectPath, ...] = ()  # local (type=local) cache export directories

    @property
    def until_seconds(self) -> int:
        return parse_duration(self.until)

    @property
    def keep_storage_bytes(self) -> int:
        return parse_size(self.keep_storage)


class Settings(Struct, frozen=True):
    """Everything buildtasks knows about one project."""

    root: Annotated[Path, Filled()]
    # the image repository targets are tagged under (default: [project] name)
    image: Annotated[str, Rule(_repository)]
    # the build context of every target without its own
    context: ProjectPath = "."
    # .env files read for ${VAR} (later over earlier; the environment wins)
    env_files: tuple[ProjectPath, ...] = (".env",)
    # a registry prefix every FROM and compose base image is taken from
    mirror: Annotated[str, Rule(_mirror)] = ""
    # the engine's CLI: "docker" or "podman" (default: what is installed, docker first);
    # $BUILDTASKS_ENGINE overrides it for one invocation
    engine: typing.Literal["", "docker", "podman"] = ""
    # the engine's API: ssh://USER@HOST, tcp://HOST:PORT or unix:///PATH (default: the CLI's)
    docker_host: Annotated[str, Rule(_engine_host)] = ""
    # a docker context (`docker context ls`) to drive instead of docker_host
    docker_context: Annotated[str, Rule(_optional_word)] = ""
    # default: release.version_file's version, else [project] version
    version: str = ""
    # the org.opencontainers.image.source label (default: git remote URL)
    source: str = ""
    targets: Mapping[str, Target] = field(default_factory=dict)
    proto: ProtoSettings | None = None
    stack: StackSettings = StackSettings()
    integration: IntegrationSettings = IntegrationSettings()
    db: DbSettings | None = None
    backup: BackupSettings = BackupSettings()
    release: ReleaseSettings = ReleaseSettings()
    publish: PublishSettings = PublishSettings()
    cache: CacheSettings = CacheSettings()
    ci: CiSettings = CiSettings()
    dotenv: Annotated[Mapping[str, str], Filled()] = field(default_factory=dict)  # merged .env

    def context_of(self, target: Target) -> Path:
        """The build context of target: its own, else the project's."""
        return self.root / (target.context or self.context)

    def image_of(self, target: Target) -> str:
        """The repository target is tagged and pushed under: its own, else the project's."""
        return target.image or self.image

    @property
    def environment(self) -> dict[str, str]:
        """What commands see: .env values under the real environment."""
        return {**self.dotenv, **os.environ}


def read_yaml_mapping(path: Path) -> dict:
    """A tool's YAML configuration (buf.yaml, .hadolint.yaml) as a mapping; anything else,
    or unreadable YAML, is one ConfigError line."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"{path}: cannot read it as YAML ({reason}); fix it") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a YAML mapping of settings; fix it")
    return data


def interpolate(value: str, env: Mapping[str, str], where: str) -> str:
    """Resolve ``${VAR}``, ``${VAR:-default}`` and ``$$`` in value."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        if match.group(0) == "${":
            raise ConfigError(
                f"{where}: unterminated or malformed ${{...}}; write ${{VAR}}, "
                "${VAR:-default} or $$ for a literal $"
            )
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


def read_env_files(root: Path, names: tuple[str, ...], where: str) -> dict[str, str]:
    """Merge the .env files that exist (a missing one is not an error), later over earlier."""
    merged: dict[str, str] = {}
    for name in names:
        path = root / name
        if _is_file(path, where):
            values = dotenv.dotenv_values(stream=io.StringIO(_read_text(path, where)))
            merged.update({k: v for k, v in values.items() if v is not None})
    return merged


def _read_text(path: Path, where: str) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: {_key(path.name)} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {_key(str(path))}: {exc.strerror}") from None


def _is_file(path: Path, where: str) -> bool:
    """Path.is_file() that reports a name the system refuses (too long) as one line."""
    try:
        return path.is_file()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {_key(path.name)[:80]}: {exc.strerror}") from None


class _Loaded(Struct, frozen=True):
    """A cached load: valid while the file, the environment and the files it read match."""

    data: bytes
    environ: tuple[tuple[str, str], ...]
    reads: tuple[tuple[Path, tuple[int, int, int, int] | None], ...]
    settings: Settings


_loaded: dict[Path, _Loaded] = {}


def load(root: str | os.PathLike[str] = ".") -> Settings:
    """The settings of the project whose pyproject.toml is in root.

    Loaded once per process: later calls return the same object until pyproject.toml, the
    environment, an env file or the version file changes (tasks, the namespace and nox
    sessions all call this, and a release reloads after bumping the version)."""
    root = Path(root).resolve()
    pyproject = root / "pyproject.toml"
    try:
        data = pyproject.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"no pyproject.toml in {root}; run from the project's root directory"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {pyproject}: {exc.strerror}") from None
    environ = tuple(sorted(os.environ.items()))
    cached = _loaded.get(root)
    if (
        cached
        and cached.data == data
        and cached.environ == environ
        and all(atomic.stamp(path) == stamp for path, stamp in cached.reads)
    ):
        return cached.settings
    settings = _load(root, data, pyproject.name)
    reads = [root / name for name in settings.env_files] + [root / settings.release.version_file]
    _loaded[root] = _Loaded(data, environ, tuple((p, atomic.stamp(p)) for p in reads), settings)
    return settings


def load_bytes(root: str | os.PathLike[str], data: bytes) -> Settings:
    """The settings data (pyproject.toml's bytes) give the project in root, loaded afresh:
    the caller knows exactly which bytes the settings come from."""
    return _load(Path(root).resolve(), data, "pyproject.toml")


def _load(root: Path, data: bytes, file: str) -> Settings:
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: not UTF-8 text; save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    except ValueError:  # Python refuses to read an integer of more than 4300 digits
        raise ConfigError(f"{file}: holds a number too long to read (over 4300 digits)") from None
    tool = document.get("tool", {})
    table = tool.get("buildtasks") if isinstance(tool, dict) else None
    if not isinstance(table, dict):
        raise ConfigError(
            f"{file}: no [tool.buildtasks] table; add one with at least `image = ...`"
        )
    project = document.get("project", {})
    if not isinstance(project, dict):
        raise ConfigError(f"{file}: [project] must be a table")
    return parse(table, root=root, project=project, file=file)


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
    _known(Settings, table, where)
    raw = dict(table)
    sections = {name: raw.pop(name, None) for name in tables(Settings)}
    root = root.resolve()
    ctx = _Context(root, root)
    env_files = _value(Settings, "env_files", raw.get("env_files", [".env"]), where, os.environ)
    env_files = _check(Settings, "env_files", env_files, where, ctx)
    dotenv = read_env_files(root, env_files, f"{where}.env_files")
    env = {**dotenv, **os.environ}

    release = _section(ReleaseSettings, sections["release"], f"{where}.release", env, ctx)
    for key in ("name", "version"):
        if not isinstance(project.get(key, ""), str):
            raise ConfigError(f"{file}: project.{key} must be a string")
    raw.setdefault("image", project.get("name", ""))
    raw.setdefault("version", _release_version(root, release, where) or project.get("version", ""))
    values = _fields(Settings, raw, where, env, ctx)
    if values.get("docker_host") and values.get("docker_context"):
        raise ConfigError(f"{where}: set docker_host or docker_context, not both")
    ctx = _Context(root, (root / values.get("context", ".")).resolve())

    targets_table = sections["targets"] or {}
    if not isinstance(targets_table, dict):
        raise ConfigError(f"{where}.targets must be a table of [tool.buildtasks.targets.NAME]")
    targets = {}
    for name, target_table in targets_table.items():
        target_where = f"{where}.targets.{_key(name)}"
        if not _TARGET_NAME.fullmatch(name):
            raise ConfigError(
                f"{target_where}: target names are lowercase letters, digits, - and _"
            )
        # invoke names the task build-a-b for both a_b and a-b: one would be unreachable
        twin = next((t for t in targets if t.replace("_", "-") == name.replace("_", "-")), "")
        if twin:
            raise ConfigError(
                f"{target_where}: names the same task as target {twin!r} "
                f"(build-{name.replace('_', '-')}); rename one of them"
            )
        target_table = _table(target_table, target_where)
        target_ctx = ctx
        if "context" in target_table:
            own = _value(Target, "context", target_table["context"], target_where, env)
            _check(Target, "context", own, target_where, ctx)
            target_ctx = _Context(root, (root / own).resolve())
        target = Target(name=name, **_fields(Target, target_table, target_where, env, target_ctx))
        unknown = set(target.enabled_checks) - set(CHECKS)
        if unknown:
            raise ConfigError(
                f"{target_where}.checks: unknown check {min(unknown)!r}; "
                f"known checks: {', '.join(CHECKS)}"
            )
        targets[name] = target

    _require_order(targets, where)
    stack = _section(StackSettings, sections["stack"], f"{where}.stack", env, ctx)
    integration = _section(
        IntegrationSettings, sections["integration"], f"{where}.integration", env, ctx
    )
    backup = _section(BackupSettings, sections["backup"], f"{where}.backup", env, ctx)
    for section, chosen in (
        ("stack", stack.targets),
        ("release", release.targets),
        ("integration", integration.targets or ()),
        ("integration", (integration.runner_target,) if integration.runner_target else ()),
    ):
        unknown_targets = [t for t in chosen if t not in targets]
        if unknown_targets:
            raise ConfigError(
                f"{where}.{section}.targets: no target {unknown_targets[0]!r}; "
                f"targets: {', '.join(targets) or 'none configured'}"
            )
    if set(backup.redis) - {"service", "url"} or len(backup.redis) > 1:
        raise ConfigError(
            f'{where}.backup.redis: write {{ service = "NAME" }} or {{ url = "redis://..." }}'
        )
    for kind, value in backup.redis.items():
        reason = (
            _service(value, ctx)
            if kind == "service"
            else None
            if re.fullmatch(r"(rediss?|unix)://\S+", value)
            else "is not a redis:// URL"
        )
        if reason:
            raise ConfigError(f"{where}.backup.redis.{kind}: {value!r} {reason}")
    return Settings(
        root=root,
        targets=types.MappingProxyType(targets),
        proto=_section(ProtoSettings, sections["proto"], f"{where}.proto", env, ctx, None),
        stack=stack,
        integration=integration,
        db=_section(DbSettings, sections["db"], f"{where}.db", env, ctx, None),
        backup=backup,
        release=release,
        publish=_section(PublishSettings, sections["publish"], f"{where}.publish", env, ctx),
        cache=_section(CacheSettings, sections["cache"], f"{where}.cache", env, ctx),
        ci=_section(CiSettings, sections["ci"], f"{where}.ci", env, ctx),
        dotenv=types.MappingProxyType(dotenv),
        **values,
    )


def build_order(targets: Mapping[str, Target], names: typing.Iterable[str]) -> list[str]:
    """names and the targets they build FROM, each after the ones it depends on."""
    ordered: list[str] = []

    def visit(name: str) -> None:
        if name not in ordered:
            for dependency in targets[name].depends_on:
                visit(dependency)
            ordered.append(name)

    for name in names:
        visit(name)
    return ordered


def _require_order(targets: Mapping[str, Target], where: str) -> None:
    """Every target:NAME context names a target, and no target builds FROM itself."""

    def walk(name: str, path: tuple[str, ...]) -> None:
        for dependency in targets[name].depends_on:
            if dependency not in targets:
                raise ConfigError(
                    f"{where}.targets.{name}.contexts: no target {dependency!r}; "
                    f"targets: {', '.join(targets)}"
                )
            if dependency in path:
                cycle = " -> ".join((*path[path.index(dependency) :], dependency))
                raise ConfigError(f"{where}.targets: targets build FROM each other: {cycle}")
            walk(dependency, (*path, dependency))

    for name in targets:
        walk(name, (name,))


def _release_version(root: Path, release: ReleaseSettings, where: str) -> str:
    """The version in the release's version file when it is not pyproject.toml."""
    path = root / release.version_file
    if path.name == "pyproject.toml" or not _is_file(path, f"{where}.release.version_file"):
        return ""
    text = _read_text(path, f"{where}.release.version_file")
    match = re.search(r"""^__version__\s*=\s*["']([^"']*)["']""", text, re.MULTILINE)
    return match.group(1) if match else ""


def replaced(section, root: Path, **changes):
    """section (a settings table) with changes from command-line flags, each checked
    by the rules its field declares, so `--until 7d` fails as the same key in pyproject
    would."""
    ctx = _Context(root, root)
    for key, value in changes.items():
        for item, rule in _ruled(_hints(type(section))[key], value):
            reason = rule.check(item, ctx)
            if reason:
                raise ConfigError(f"--{key.replace('_', '-')}: {item!r} {reason}")
    return msgspec.structs.replace(section, **changes)


def _table(value: object, where: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a table")
    return value


def _section(cls: type, table: object, where: str, env, ctx: _Context, absent=NODEFAULT):
    """A sub-table as cls, with the tables nested in it; when it is absent, cls's defaults
    (or ``absent``)."""
    if table is None:
        return cls() if absent is NODEFAULT else absent
    table = _table(table, where)
    nested = tables(cls)
    required = [f.name for f in msgspec.structs.fields(cls) if f.required and f.name not in table]
    if required:
        raise ConfigError(f"{where}: `{required[0]}` is required")
    values = _fields(cls, {k: v for k, v in table.items() if k not in nested}, where, env, ctx)
    for key, (sub, _) in nested.items():
        if key in table:
            values[key] = _section(sub, table[key], f"{where}.{key}", env, ctx)
    return cls(**values)


def _fields(cls: type, table: Mapping, where: str, env, ctx: _Context) -> dict:
    """Check table against the declared fields of cls; return the converted values."""
    _known(cls, table, where)
    values = {}
    for key, value in table.items():
        values[key] = _check(cls, key, _value(cls, key, value, where, env), where, ctx)
    return values


def keys(cls: type) -> tuple[str, ...]:
    """The keys the table of cls may hold: its fields but those the loader fills in."""
    return tuple(
        name
        for name, hint in _hints(cls).items()
        if not any(isinstance(m, Filled) for m in getattr(hint, "__metadata__", ()))
    )


def tables(cls: type) -> dict[str, tuple[type, bool]]:
    """The keys of cls that hold tables of their own: {key: (the table's class, whether the
    key holds a table of named ones, as targets.NAME)}."""
    found = {}
    for name, hint in _hints(cls).items():
        named = typing.get_origin(hint) is Mapping
        options = typing.get_args(hint) if named or isinstance(hint, types.UnionType) else (hint,)
        table = next((o for o in options if isinstance(o, type) and issubclass(o, Struct)), None)
        if table is not None:
            found[name] = (table, named)
    return found


def _known(cls: type, table: Mapping, where: str) -> None:
    """Every key first: a typo explains the errors it causes elsewhere."""
    known = set(keys(cls))
    for key in table:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = (
                f" (did you mean `{close[0]}`?)"
                if close
                else f"; known keys: {', '.join(sorted(known))}"
            )
            raise ConfigError(f"{where}: unknown key `{_key(key)}`{hint}")


def _value(cls: type, key: str, value: object, where: str, env: Mapping[str, str]):
    """Interpolate value's strings, then convert it to the field's declared type."""
    hint = _hints(cls)[key]
    value = _interpolated(value, env, f"{where}.{key}")
    try:
        converted = msgspec.convert(value, hint, strict=True)
    except msgspec.ValidationError:
        raise ConfigError(f"{where}.{key} must be {_describe(hint)}, got {_kind(value)}") from None
    if isinstance(converted, dict):
        return types.MappingProxyType(converted)  # settings are shared: nothing in them may change
    return converted


def _interpolated(value: object, env: Mapping[str, str], where: str):
    if isinstance(value, str):
        return interpolate(value, env, where)
    if isinstance(value, list):
        return [_interpolated(v, env, where) for v in value]
    if isinstance(value, dict):
        return {k: _interpolated(v, env, f"{where}.{_key(k)}") for k, v in value.items()}
    return value


def _check(cls: type, key: str, value, where: str, ctx: _Context):
    """Apply the Rules declared in the field's annotation to value (and its items)."""
    for item, rule in _ruled(_hints(cls)[key], value):
        reason = rule.check(item, ctx)
        if reason:
            shown = f"{item!r} " if rule.shows_value else "the value "
            raise ConfigError(f"{where}.{key}: {shown}{reason}")
    return value


def _ruled(hint: object, value: object):
    """(string, Rule) pairs for every rule that applies to value or the items in it."""
    for extra in getattr(hint, "__metadata__", ()):
        if isinstance(extra, Rule):
            yield value, extra
    hint = getattr(hint, "__origin__", hint) if hasattr(hint, "__metadata__") else hint
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple and isinstance(value, tuple):
        for item in value:
            yield from _ruled(args[0], item)
    elif origin is Mapping and isinstance(value, Mapping):
        for name, item in value.items():
            yield from _ruled(args[0], name)
            yield from _ruled(args[1], item)


def _hints(cls: type) -> dict:
    """The declared type of each field of cls (objects already: see the module's doc)."""
    return inspect.get_annotations(cls)


def _describe(hint: object) -> str:
    """How a declared type reads in an error: 'an integer from 1 to 65535', 'a list of ...'."""
    meta = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Meta)]
    hint = getattr(hint, "__origin__", hint) if hasattr(hint, "__metadata__") else hint
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is types.UnionType:
        return _describe(next(a for a in args if a is not type(None)))
    if hint is int:
        low = next((m.ge for m in meta if m.ge is not None), None)
        high = next((m.le for m in meta if m.le is not None), None)
        if low is not None and high is not None:
            return f"an integer from {low} to {high}"
        return f"an integer >= {low}" if low is not None else "an integer"
    if hint is bool:
        return "true or false"
    if hint is str:
        return "a string"
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in args)
    if origin is tuple:
        item = _describe(args[0])
        noun = "strings" if item == "a string" else f"values, each {item}"
        return f"a non-empty list of {noun}" if meta else f"a list of {noun}"
    if origin is Mapping:
        return "a table of strings"
    return "a table"


def _key(text: str) -> str:
    """A key or name as an error shows it: quoted when it holds a newline or the like."""
    return text if text.isprintable() else repr(text)


def _kind(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, list):
        odd = next((v for v in value if not isinstance(v, str)), None)
        if not value:
            return "an empty list"
        return "a list" if odd is None else f"a list holding {_kind(odd)}"
    return {str: "a string", dict: "a table", bool: "a boolean", int: "an integer"}.get(
        type(value), type(value).__name__
    )
