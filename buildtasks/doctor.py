"""`inv doctor`: can this machine build, run and push the configured targets?"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from buildtasks.docker.registry import logged_in, probe, registry_host
from buildtasks.errors import EngineError
from buildtasks.platforms import can_build, native
from buildtasks.release.attest import signing_problems
from buildtasks.runtime import Runtime

# Fixes for someone who installed buildtasks from PyPI: the engine's own install docs.
BUILDX_FIX = "install the buildx plugin (https://docs.docker.com/build/install-buildx/)"
COMPOSE_FIX = "install the compose plugin (https://docs.docker.com/compose/install/linux/)"
PODMAN_CLI_FIX = "install podman (apt-get install podman): it builds and pushes"
BAKE_FIX = "inv build-NAME for each target (shared bases first), or BUILDTASKS_ENGINE=docker"
STORE_FIX = (
    'set {"features": {"containerd-snapshotter": true}} in /etc/docker/daemon.json and '
    "restart dockerd (https://docs.docker.com/engine/storage/containerd/)"
)


def binfmt_fix(arch: str) -> str:
    return (
        f"register QEMU for {arch}: `docker run --privileged --rm tonistiigi/binfmt --install "
        f"{arch}` (https://docs.docker.com/build/building/multi-platform/)"
    )


@dataclass(frozen=True)
class Finding:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    blocking: bool = True  # a gap here stops the configured targets from building

    def line(self) -> str:
        status = "ok  " if self.ok else ("FAIL" if self.blocking else "warn")
        fix = f"  -> {self.fix}" if not self.ok and self.fix else ""
        return f"{status} {self.name:<15} {self.detail}{fix}"


SIGNING_FIX = "`cosign generate-key-pair` makes a pair; set COSIGN_PASSWORD (environment or .env)"


def engine_findings(rt: Runtime) -> list[Finding]:
    """Which engine this invocation drives and where; for Podman also its API socket,
    storage driver and rootful/rootless state, and what it cannot do."""
    profile = rt.profile
    where = profile.describe()
    try:
        if profile.name == "docker":
            info = rt.engine.client.info()
            detail = f"Docker Engine {info.get('ServerVersion', '?')}, {where}"
            return [Finding("engine", True, f"{detail}, storage {info.get('Driver', '?')}")]
        info = rt.engine.podman_info()
    except EngineError as exc:
        return [Finding("engine", False, f"{where}: {str(exc).split(';')[0]}", rt.engine.fix())]
    mode = "rootless" if info["host"]["security"]["rootless"] else "rootful"
    podman = shutil.which("podman")
    return [
        Finding("engine", True, f"Podman {info['version']['Version']} ({mode}), {where}"),
        Finding("storage", True, f"{info['store']['graphDriverName']} driver", blocking=False),
        Finding("podman CLI", bool(podman), podman or "not installed", PODMAN_CLI_FIX),
        Finding("bake", False, "podman cannot bake", BAKE_FIX, blocking=False),
    ]


def diagnose(rt: Runtime) -> list[Finding]:
    settings, sh = rt.settings, rt
    findings = engine_findings(rt)
    if rt.profile.name == "docker":
        buildx = sh.run(["docker", "buildx", "version"], query=True, check=False)
        detail = buildx.stdout.strip() or "not installed"
        findings.append(Finding("buildx", buildx.returncode == 0, detail, BUILDX_FIX))
    compose = sh.run(["docker", "compose", "version", "--short"], query=True, check=False)
    findings.append(
        Finding(
            "compose",
            compose.returncode == 0,
            compose.stdout.strip() or "not installed",
            COMPOSE_FIX,
            blocking=False,
        )
    )
    platforms = sorted({p for t in settings.targets.values() for p in t.platforms})
    multi = len(platforms) > 1
    info = sh.run(["docker", "info", "--format", "{{json .DriverStatus}}"], query=True, check=False)
    store = "io.containerd.snapshotter" in info.stdout
    if info.returncode == 0 and rt.profile.name == "docker":  # podman: manifest lists
        findings.append(
            Finding(
                "multi-platform",
                store,
                "containerd image store" if store else "classic image store",
                STORE_FIX,
                blocking=multi,
            )
        )
    for name in platforms:
        if name == native():
            continue
        ready = can_build(name)
        findings.append(
            Finding(
                f"binfmt {name.split('/')[-1]}",
                ready,
                "QEMU registered" if ready else "no QEMU handler",
                binfmt_fix(name.split("/")[-1]),
            )
        )
    # Pushes need the image's registry, builds the mirror: both are required when configured.
    # An image without a registry part is local-only and has no registry to check.
    for role, reference, key in (
        ("registry", settings.image if "/" in settings.image else "", "image"),
        ("mirror", settings.mirror, "mirror"),
    ):
        if not reference:
            continue
        host = registry_host(reference)
        ok, needs_login, detail = probe(host)
        fix = f"start the registry at {host}, or change `{key}` in [tool.buildtasks]"
        findings.append(Finding(role, ok, detail, fix))
        if ok and needs_login and role == "registry":
            login = logged_in(host)
            state = "logged in" if login else "not logged in"
            findings.append(Finding("registry login", login, state, f"docker login {host}"))
    if settings.publish.sign:  # pushes sign: the key must sign, checked as pre-flight does
        problems = signing_problems(settings)
        opens = f"{settings.publish.key} opens with COSIGN_PASSWORD and matches "
        detail = problems[0] if problems else opens + settings.publish.public_key
        findings.append(Finding("signing", not problems, detail, SIGNING_FIX))
    return findings
