"""Bounded retries of transient registry errors: a 5xx answer, a reset connection, 429 Too
Many Requests (after its Retry-After). Auth errors (401, 403) are never retried."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import msgspec

from buildtasks import lazy
from buildtasks.config import Settings
from buildtasks.errors import BuildtasksError
from buildtasks.shell import Shell

# Only a failed request is classified with these: a run where nothing fails never loads them.
http_client = lazy.module("http.client")
urllib_error = lazy.module("urllib.error")

T = TypeVar("T")

# What buildx, dockerd and cosign print for them: an HTTP status with its reason, a
# distribution error code (UNAUTHORIZED, DENIED, TOOMANYREQUESTS, UNAVAILABLE), or the
# network error.
# Compiled on first use (re keeps them): only a failure is classified, and compiling both
# costs every build about 1 ms.
AUTH = (
    r"\b40[13]\b|unauthori[sz]ed|authentication required|access denied|\bDENIED\b|"
    r"requested access to the resource is denied|forbidden"
)
TRANSIENT = (
    r"\b5\d\d [A-Z]|\b429\b|too ?many ?requests|connection reset|broken pipe|unexpected EOF|"
    r"i/o timeout|TLS handshake timeout|service unavailable|\bUNAVAILABLE\b|bad gateway|"
    r"gateway time-?out"
)


class Policy(msgspec.Struct, frozen=True):
    retries: int = 4  # attempts after the first
    delay: float = 2.0  # seconds before the first retry, doubled for each next one

    @classmethod
    def of(cls, settings: Settings) -> Policy:
        return cls(settings.publish.retries, settings.publish.retry_delay)


class Transient(BuildtasksError):
    """A failure worth another attempt; retry_after is the wait the registry asked for."""

    def __init__(self, reason: str, retry_after: float = 0.0):
        super().__init__(reason)
        self.retry_after = retry_after


def kind(text: str) -> str:
    """ "auth", "transient" or "" for the error text a registry client printed."""
    if re.search(AUTH, text, re.IGNORECASE):
        return "auth"
    return "transient" if re.search(TRANSIENT, text, re.IGNORECASE) else ""


def attempt(sh: Shell, policy: Policy, what: str, action: Callable[[], T]) -> T:
    """action(), again while it raises Transient, at most policy.retries more times."""
    for number in range(policy.retries + 1):
        try:
            return action()
        except Transient as exc:
            if number == policy.retries:
                tries = f"{number + 1} attempt{'s' if number else ''}"
                raise BuildtasksError(
                    f"{what} failed after {tries}: {exc}; the registry kept failing "
                    "(raise [tool.buildtasks.publish] retries, or try again later)"
                ) from None
            wait = max(exc.retry_after, policy.delay * 2**number)
            sh.note(f"{what}: {exc}; retry {number + 1} of {policy.retries} in {wait:g}s")
            time.sleep(wait)
    raise AssertionError("unreachable")


def run(sh: Shell, policy: Policy, what: str, argv: Sequence[str], **kwargs):
    """argv through the shell (stderr streamed), rerun while it fails with a transient
    registry error; an auth error or any other failure raises at once."""

    def once():
        result = sh.run(argv, check=False, tee=True, **kwargs)
        if result.returncode == 0:
            return result
        lines = sh.redacted(result.stderr).strip().splitlines()
        reason = lines[-1] if lines else f"exit {result.returncode}"
        found = kind(reason)
        if found == "transient":
            raise Transient(reason)
        hint = "; the registry refused the credentials: `docker login` to it" if found else ""
        raise sh.failure(argv, result, hint)

    return attempt(sh, policy, what, once)


def http_transient(exc: Exception) -> Transient | None:
    """The Transient a urllib failure stands for, or None when it is not one."""
    if isinstance(exc, urllib_error.HTTPError):
        if exc.code == 429 or exc.code >= 500:
            after = exc.headers.get("Retry-After", "") if exc.headers else ""
            return Transient(f"HTTP {exc.code}", float(after) if after.isdigit() else 0.0)
        return None
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, ConnectionResetError | BrokenPipeError | TimeoutError) or isinstance(
        exc, http_client.RemoteDisconnected | http_client.IncompleteRead | ConnectionResetError
    ):
        return Transient(f"connection failed ({reason})")
    return None
