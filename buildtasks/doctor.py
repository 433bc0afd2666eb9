"""`inv doctor`: can this machine build, run and push the configured targets?"""

from __future__ import annotations

from dataclasses import dataclass

from buildtasks.config import Settings
from buildtasks.docker.engine import ENGINE_FIX, Engine
from buildtasks.docker.registry import logged_in, probe, registry_host
from buildtasks.errors import EngineError
from buildtasks.platforms import can_build, native
from buildtasks.shell import Shell

INSTALL = "run scripts/install-docker"
_QEMU_ARCH = {
    "arm64": "aarch64",
    "amd64": "x86_64",
    "arm": "arm",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "386": "i386",
}


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


def diagnose(settings: Settings, sh: Shell) -> list[Finding]:
    findings = []
    try:
        version = Engine().client.version().get("Version", "?")
        findings.append(Finding("engine", True, f"Docker Engine {version}"))
    except EngineError as exc:
        findings.append(Finding("engine", False, str(exc).split(";")[0], ENGINE_FIX))
    buildx = sh.run(["docker", "buildx", "version"], query=True, check=False)
    findings.append(
        Finding("buildx", buildx.returncode == 0, buildx.stdout.strip() or "not installed", INSTALL)
    )
    compose = sh.run(["docker", "compose", "version", "--short"], query=True, check=False)
    findings.append(
        Finding(
            "compose",
            compose.returncode == 0,
            compose.stdout.strip() or "not installed",
            INSTALL,
            blocking=False,
        )
    )
    platforms = sorted({p for t in settings.targets.values() for p in t.platforms})
    multi = len(platforms) > 1
    info = sh.run(["docker", "info", "--format", "{{json .DriverStatus}}"], query=True, check=False)
    store = "io.containerd.snapshotter" in info.stdout
    findings.append(
        Finding(
            "multi-platform",
            store,
            "containerd image store" if store else "classic image store",
            'set {"features": {"containerd-snapshotter": true}} in /etc/docker/daemon.json '
            "and restart dockerd",
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
                f"{INSTALL} (installs qemu-user-static and registers binfmt)",
            )
        )
    for role, reference, blocking in (
        ("registry", settings.image, False),
        ("mirror", settings.mirror, True),
    ):
        if not reference:
            continue
        host = registry_host(reference)
        ok, needs_login, detail = probe(host)
        findings.append(Finding(role, ok, detail, f"{INSTALL} or check {reference}", blocking))
        if ok and needs_login and role == "registry":
            login = logged_in(host)
            state = "logged in" if login else "not logged in"
            findings.append(
                Finding("registry login", login, state, f"docker login {host}", blocking=False)
            )
    return findings
