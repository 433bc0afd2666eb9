"""Real off-site backends on loopback for the tests: restic's rest-server and an OpenSSH
server (SFTP), each with throwaway directories and keys, stopped afterwards."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from buildtasks.platforms import free_port


def _missing(tool: str) -> None:
    """Installed by scripts/install-backup-servers: its absence is a failure, never a skip."""
    if not shutil.which(tool) and not Path(tool).exists():
        pytest.fail(f"{tool} is missing; run scripts/install-backup-servers")


def _wait_for_port(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited ({process.returncode}): {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    pytest.fail(f"nothing listens on 127.0.0.1:{port}: {log.read_text()[-2000:]}")


@contextlib.contextmanager
def _serving(argv: list[str], port: int, log: Path) -> Iterator[subprocess.Popen]:
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(port, process, log)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass(frozen=True)
class RestServer:
    url: str  # rest:http://127.0.0.1:PORT
    data: Path  # where it keeps the repositories


@contextlib.contextmanager
def rest_server(directory: Path) -> Iterator[RestServer]:
    _missing("restic-rest-server")
    _missing("restic")
    data = directory / "rest-data"
    data.mkdir(parents=True)
    port = free_port()
    argv = ["restic-rest-server", "--listen", f"127.0.0.1:{port}", "--path", str(data),
            "--no-auth"]  # fmt: skip
    with _serving(argv, port, directory / "rest-server.log"):
        yield RestServer(f"rest:http://127.0.0.1:{port}", data)


@dataclass(frozen=True)
class SftpServer:
    port: int
    key: Path  # the client's private key
    root: Path  # a directory to keep repositories in

    def repository(self, name: str) -> str:
        return f"sftp://root@127.0.0.1:{self.port}/{self.root / name}"

    def options(self) -> list[str]:
        """restic -o: this key, this throwaway host key accepted, no known_hosts written."""
        args = (
            f"-i {self.key} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
            "-o BatchMode=yes -o LogLevel=ERROR"
        )
        return [f"sftp.args={args}"]


@contextlib.contextmanager
def sftp_server(directory: Path) -> Iterator[SftpServer]:
    """sshd on a loopback port: its own host key, one authorized client key, SFTP only."""
    sshd = "/usr/sbin/sshd"
    _missing(sshd)
    _missing("ssh-keygen")
    directory.mkdir(parents=True, exist_ok=True)
    keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", ""]
    subprocess.run([*keygen, "-f", str(directory / "host_key")], check=True)
    subprocess.run([*keygen, "-f", str(directory / "client_key")], check=True)
    shutil.copy(directory / "client_key.pub", directory / "authorized_keys")
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation directory
    port = free_port()
    config = directory / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {directory / 'host_key'}\n"
        f"AuthorizedKeysFile {directory / 'authorized_keys'}\nPidFile {directory / 'sshd.pid'}\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUsePAM no\n"
        "StrictModes no\nSubsystem sftp internal-sftp\nForceCommand internal-sftp\n"
    )
    root = directory / "repos"
    root.mkdir()
    argv = [sshd, "-D", "-e", "-f", str(config)]
    with _serving(argv, port, directory / "sshd.log"):
        yield SftpServer(port, directory / "client_key", root)
