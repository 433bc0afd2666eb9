"""Reading Dockerfiles: which base images a build pulls."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from pathlib import Path

from buildtasks.config import Settings, Target
from buildtasks.errors import ConfigError

_ARG_REF = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


def read_dockerfile(settings: Settings, target: Target) -> tuple[Path, str]:
    """The path and text of target's Dockerfile, which lies in the target's own context
    (else the project's)."""
    dockerfile = settings.context_of(target) / target.dockerfile
    try:
        return dockerfile, dockerfile.read_text()
    except OSError as exc:
        raise ConfigError(
            f"target {target.name}: cannot read {dockerfile} ({exc.strerror}); "
            "fix `dockerfile` or `context`"
        ) from None


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with comments dropped and continuations joined."""
    return [(keyword, rest) for _, keyword, rest in numbered_instructions(text)]


def numbered_instructions(text: str) -> list[tuple[int, str, str]]:
    """(line where it starts, INSTRUCTION, arguments), as `instructions`."""
    result, pending, start = [], "", 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        start = start or number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        if full:
            keyword, _, rest = full.partition(" ")
            result.append((start, keyword.upper(), rest.strip()))
        start = 0
    return result


def _expand(value: str, args: Mapping[str, str]) -> str:
    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        if args.get(name):
            return args[name]
        return match.group(2) or ""

    return _ARG_REF.sub(substitute, value)


def _global_args(text: str, build_args: Mapping[str, str]) -> dict[str, str]:
    """The ARGs declared before the first FROM: defaults, overridden by build_args."""
    found: dict[str, str] = {}
    for keyword, rest in instructions(text):
        if keyword == "FROM":
            break
        if keyword == "ARG":
            for declaration in shlex.split(rest):
                name, has_default, default = declaration.partition("=")
                found[name] = _expand(build_args.get(name, default if has_default else ""), found)
    return found


def mirror_args(text: str, build_args: Mapping[str, str], mirror: str) -> dict[str, str]:
    """{ARG: MIRROR/image} for each global ARG a FROM line names as its whole image
    (FROM ${ARG}), for engines that apply named contexts only to literal FROM images."""
    if not mirror:
        return {}
    values = _global_args(text, build_args)
    whole = {
        match.group(1) or match.group(3)
        for keyword, rest in instructions(text)
        if keyword == "FROM"
        for word in [next((w for w in rest.split() if not w.startswith("--")), "")]
        if (match := _ARG_REF.fullmatch(word))
    }
    return {
        name: f"{mirror.rstrip('/')}/{values[name]}" for name in sorted(whole) if values.get(name)
    }


def base_images(text: str, build_args: Mapping[str, str] | None = None) -> list[str]:
    """Images named in FROM lines, in order, without duplicates, stage names or ``scratch``.

    ARGs declared before the first FROM are resolved from their defaults, overridden by
    build_args, as BuildKit does.
    """
    build_args = build_args or {}
    global_args: dict[str, str] = {}
    stages: set[str] = set()
    images: list[str] = []
    seen_from = False
    for keyword, rest in instructions(text):
        if keyword == "ARG" and not seen_from:
            for declaration in shlex.split(rest):
                name, has_default, default = declaration.partition("=")
                value = build_args.get(name, default if has_default else "")
                global_args[name] = _expand(value, global_args)
        elif keyword == "FROM":
            seen_from = True
            words = [w for w in rest.split() if not w.startswith("--")]
            image = _expand(words[0], global_args)
            if image.lower() not in stages and image != "scratch" and image not in images:
                images.append(image)
            if len(words) >= 3 and words[1].upper() == "AS":
                stages.add(words[2].lower())
    return images


def registry_of(reference: str) -> str:
    """The registry a reference names (`host.name/...`, `host:port/...`, `localhost/...`),
    '' when it names none: such an image is pulled from there, not through a mirror of the
    default registry (prefixing it would not even be a valid reference)."""
    first, sep, _ = reference.partition("/")
    return first if sep and ("." in first or ":" in first or first == "localhost") else ""


def mirror_contexts(images: list[str], mirror: str) -> dict[str, str]:
    """Named build contexts that take every base image of the default registry from the
    mirror, Dockerfile untouched."""
    if not mirror:
        return {}
    prefix = mirror.rstrip("/")
    return {image: f"docker-image://{prefix}/{image}" for image in images if not registry_of(image)}
