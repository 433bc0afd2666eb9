"""Facts about this machine: its platform, emulation for others, its processes."""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path

_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
_QEMU = {"arm64": "aarch64", "amd64": "x86_64", "arm": "arm", "ppc64le": "ppc64le",
         "s390x": "s390x", "riscv64": "riscv64", "386": "i386"}  # fmt: skip


def native() -> str:
    """This machine's platform as buildx names it, e.g. linux/amd64."""
    return f"linux/{_ARCH.get(platform.machine(), platform.machine())}"


def can_build(wanted: str) -> bool:
    """Whether the engine can run RUN steps for wanted: native, or a QEMU binfmt handler."""
    if wanted == native():
        return True
    arch = wanted.split("/")[1] if "/" in wanted else wanted
    handler = Path("/proc/sys/fs/binfmt_misc") / f"qemu-{_QEMU.get(arch, arch)}"
    return handler.is_file() and handler.read_text().startswith("enabled")


def free_port() -> int:
    """A TCP port nothing listens on at 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
