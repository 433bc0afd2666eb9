"""One runtime per invocation: the project's settings, the one path for side effects (the
shell: echoed, redacted, skipped under --dry), the engine (connected on first use and then
shared), the checkout's git state, and where results go.

Domain functions take the runtime where they need more than a command runner: a Runtime is
a Shell, so code that only runs commands keeps taking a Shell.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, TextIO
from urllib.parse import urlparse

from buildtasks import atomic, engines, git, lazy
from buildtasks.config import Settings
from buildtasks.docker.build import secret_variable
from buildtasks.shell import Shell

if TYPE_CHECKING:
    from buildtasks.docker.engine import Engine

# Loaded with the engine itself: a rebuild that finds its image in the build record never
# asks the engine.
docker_engine = lazy.module("buildtasks.docker.engine")


def secret_values(settings: Settings) -> frozenset[str]:
    """The values no output may show: the targets' env secrets, the signing key's password
    and the Redis URL's password."""
    environment = settings.environment
    values = {
        environment.get(secret_variable(entry), "")
        for target in settings.targets.values()
        for entry in target.secrets
        if secret_variable(entry)
    }
    values.add(environment.get("COSIGN_PASSWORD", ""))  # the signing key's password
    redis_url = settings.backup.redis.get("url", "")
    values.add(urlparse(redis_url).password or "" if redis_url else "")
    return frozenset(values - {""})


class Runtime(Shell):
    """The settings, the shell and the engine of one invocation."""

    def __init__(self, settings: Settings, dry: bool = False, out: TextIO | None = None):
        self.profile = engines.resolve(settings)  # docker or podman, local or remote
        env = {**settings.environment, **self.profile.env}
        super().__init__(dry=dry, secrets=secret_values(settings), env=env)
        self.settings = settings
        self.out = out or sys.stdout  # results; progress and echoed commands go to stderr
        self._engine: Engine | None = None
        self._engine_lock = threading.Lock()  # threads ask for the engine at once

    @property
    def engine(self) -> Engine:
        """The one engine connection of this invocation, opened on first use."""
        with self._engine_lock:
            if self._engine is None:
                self._engine = docker_engine.Engine(self, self.profile)
            return self._engine

    def derive(self, settings: Settings) -> Runtime:
        """This invocation seen through other settings (a release's, read at its commit): the
        same dry flag, output and engine connection."""
        other = Runtime(settings, dry=self.dry, out=self.out)
        other._engine = self.engine
        return other

    def git(self) -> git.GitState:
        return git.state(self, self.settings.root)

    def write_text(self, path: Path, text: str) -> bool:
        """Write a file atomically, announced like a command; False (nothing written) under
        --dry."""
        if not self.change(["write", str(path)]):
            return False
        atomic.write_text(Path(path), text)
        return True

    def remove_file(self, path: Path) -> bool:
        """Remove a file if it is there, announced like `rm -f`; False under --dry."""
        if not self.change(["rm", "-f", str(path)]):
            return False
        Path(path).unlink(missing_ok=True)
        return True

    def result(self, line: str = "") -> None:
        self.out.write(line + "\n")

    def document(self, body: object) -> None:
        """The one JSON document a --json task prints."""
        self.out.write(json.dumps(body, indent=2) + "\n")
