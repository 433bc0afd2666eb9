"""The one place that runs external commands.

Every command is printed as run (``shlex.join``, secrets replaced by ``***``) to stderr, so
stdout stays clean for ``--json`` and ``--print`` output. Under dry-run, commands that change
things are printed and skipped; read-only queries still run so the plan is accurate.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from buildtasks.errors import CommandError

REDACTED = "***"
DOCKER_INSTALL = " (https://docs.docker.com/engine/install/, with the buildx and compose plugins)"


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret value in text, longest first so overlapping values stay hidden."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def tool(name: str, install: str) -> str:
    """The path of a program a Python package installs: beside this interpreter (the
    package's own environment, active or not), else on PATH; install says how to get it."""
    beside = os.path.join(os.path.dirname(sys.executable), name)
    found = beside if os.path.isfile(beside) else shutil.which(name)
    if not found:
        raise CommandError(f"{name} is not installed in this environment; {install}", 127)
    return found


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


def _line(text: str) -> None:
    """One line to stderr in one write: threads that echo at once (parallel signing) must
    not run their lines together, as print's separate write of the newline lets them."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


@dataclass
class Shell:
    dry: bool = False
    echo: bool = True
    secrets: frozenset[str] = frozenset()
    env: Mapping[str, str] = field(default_factory=dict)  # added to the process environment

    def variant(self, **changes) -> Shell:
        """A command runner like this one with some fields changed (a runtime's too)."""
        fields = {"dry": self.dry, "echo": self.echo, "secrets": self.secrets, "env": self.env}
        return Shell(**{**fields, **changes})

    def show(self, argv: Sequence[str]) -> str:
        return redact(shlex.join(argv), self.secrets)

    def redacted(self, text: str) -> str:
        return redact(text, self.secrets)

    def note(self, message: str) -> None:
        """Progress from domain code: to stderr, redacted, so stdout stays for results."""
        _line(redact(message, self.secrets))

    def change(self, argv: Sequence[str]) -> bool:
        """Announce a change to the world as the command that makes it (echoed, redacted);
        False under dry-run, where the caller must skip it. Commands run here use it, and
        so does work done in-process that stands for a command (protoc)."""
        if self.echo:
            _line(("[dry] " if self.dry else "") + self.show(argv))
        return not self.dry

    def run(
        self,
        argv: Sequence[str],
        *,
        query: bool = False,
        capture: bool = False,
        check: bool = True,
        cwd: str | None = None,
        input: str | None = None,
        shielded: bool = False,
        tee: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv. ``query=True`` marks a read-only command that also runs under dry-run
        (and is not echoed); ``capture=True`` returns stdout instead of streaming it;
        ``shielded=True`` runs it in its own session, out of reach of the terminal's Ctrl-C
        and of signals sent to our process group; ``tee=True`` streams stderr as it comes
        and also returns it (so a failure can be told apart)."""
        if not query and not self.change(argv):
            return subprocess.CompletedProcess(list(argv), 0, "", "")
        options = {"cwd": cwd, "env": {**os.environ, **self.env}, "text": True,
                   "start_new_session": shielded}  # fmt: skip
        try:
            if tee:
                result = _tee(argv, input, capture, options)
            else:
                result = subprocess.run(
                    list(argv), check=False, input=input, capture_output=capture or query,
                    **options,
                )  # fmt: skip
        except FileNotFoundError:
            if not check:  # the caller inspects the result: report "not found" as exit 127
                return subprocess.CompletedProcess(list(argv), 127, "", f"{argv[0]}: not found")
            where = DOCKER_INSTALL if argv[0] == "docker" else ""
            raise CommandError(
                f"{argv[0]}: command not found; install it{where} or add it to PATH", 127
            ) from None
        if check and result.returncode != 0:
            raise self.failure(argv, result)
        return result

    def failure(
        self, argv: Sequence[str], result: subprocess.CompletedProcess[str], hint: str = ""
    ) -> CommandError:
        """The one-line error of a command that failed: its first words, its exit status
        and the last line of its stderr (redacted), then hint."""
        detail = redact(_last_line(result.stderr or ""), self.secrets) or "see the output above"
        return CommandError(
            f"`{self.show(argv[:3])}` failed with exit {result.returncode}: {detail}{hint}",
            result.returncode,
        )

    def queries(self, *argvs: Sequence[str]) -> list[subprocess.CompletedProcess[str]]:
        """Run read-only commands side by side, each as ``run(argv, query=True,
        check=False)`` would: for reads that do not wait for each other's answer."""
        options = {"env": {**os.environ, **self.env}, "text": True,
                   "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}  # fmt: skip
        started = []
        for argv in argvs:
            try:
                started.append(subprocess.Popen(list(argv), **options))
            except FileNotFoundError:
                started.append(None)
        results = []
        for argv, process in zip(argvs, started, strict=True):
            if process is None:
                results.append(
                    subprocess.CompletedProcess(list(argv), 127, "", f"{argv[0]}: not found")
                )
                continue
            stdout, stderr = process.communicate()
            results.append(
                subprocess.CompletedProcess(list(argv), process.returncode, stdout, stderr)
            )
        return results

    def output(self, argv: Sequence[str], *, check: bool = True) -> str:
        """stdout of a read-only query, stripped."""
        return self.run(argv, query=True, check=check).stdout.strip()


def _tee(argv, input, capture, options) -> subprocess.CompletedProcess[str]:
    """Run argv with its stderr copied to ours line by line and kept."""
    with subprocess.Popen(
        list(argv), stdin=subprocess.PIPE if input is not None else None,
        stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE, **options,
    ) as process:  # fmt: skip
        if input is not None:
            process.stdin.write(input)
            process.stdin.close()
        kept = []
        for line in process.stderr:
            sys.stderr.write(line)
            kept.append(line)
        stdout = process.stdout.read() if capture else ""
        process.wait()
    return subprocess.CompletedProcess(list(argv), process.returncode, stdout, "".join(kept))
