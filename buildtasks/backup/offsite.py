"""Off-site copies of backup sets in a restic repository (rest:, sftp:, s3:, b2:).

restic encrypts and deduplicates; buildtasks sends each verified set as one snapshot of
its directory, tagged with the set's id, and reads sets back into a hidden directory that
must pass the same verification as a local set before it is used. The repository URL and
the password reach restic only through its environment (RESTIC_REPOSITORY,
RESTIC_PASSWORD or RESTIC_PASSWORD_FILE): never an argv, and redacted from all output.
Retention on the repository is the local policy, computed by the same code on the set
ids, applied with `restic forget --prune`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from buildtasks.atomic import fsync_dir, fsync_file
from buildtasks.backup import manifest, retention, sets
from buildtasks.backup.manifest import ID_PATTERN, Manifest
from buildtasks.backup.restore import RestoreRefused
from buildtasks.config import Settings
from buildtasks.errors import BuildtasksError, ConfigError
from buildtasks.shell import REDACTED, Shell, redact

TAG = "buildtasks"
SET_TAG = "buildtasks-set:"  # + the set's id
GROUP_TAG = "buildtasks-group:"  # + full, or partial-KIND+KIND: retention counts them apart
_GROUP = re.compile(r"full|partial-[a-z]+(?:\+[a-z]+)*")
_SNAPSHOT_ID = re.compile(r"[0-9a-f]{64}")
# Backend credentials restic reads from its environment: never shown.
CREDENTIALS = (
    "RESTIC_REST_PASSWORD",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "B2_ACCOUNT_KEY",
)
INSTALL = "run scripts/install-backup-servers or install restic 0.17 or later"


class OffsiteError(BuildtasksError):
    """The off-site repository could not be reached, opened or read."""


@dataclass(frozen=True)
class Snapshot:
    id: str  # restic's snapshot id
    set_id: str
    group: str  # full, or partial-KINDS


def redact_url(repository: str) -> str:
    """The repository as shown: a password in its URL (rest:http://user:PASSWORD@...,
    sftp://user:PASSWORD@...) replaced by ***."""
    password = urlsplit(repository.partition(":")[2]).password
    return repository.replace(f":{password}@", f":{REDACTED}@") if password else repository


def group_of(found: Manifest) -> str:
    if not found.partial:
        return "full"
    return "partial-" + "+".join(sorted({a.kind for a in found.artifacts}))


def parse_snapshots(output: str, shown: str) -> list[Snapshot]:
    """`restic snapshots --json` as this tool's sets: one per set id (its newest snapshot),
    newest set first. Read back, so input: only well-formed ids, tags and groups count."""
    try:
        rows = json.loads(output or "[]")
        if not isinstance(rows, list):
            raise ValueError("not a list")
    except ValueError:
        raise OffsiteError(f"off-site repository {shown}: unreadable snapshot list") from None
    found: dict[str, tuple[str, Snapshot]] = {}
    for row in rows:
        if not isinstance(row, dict) or not _SNAPSHOT_ID.fullmatch(str(row.get("id", ""))):
            continue
        tags = row.get("tags") if isinstance(row.get("tags"), list) else []
        tags = [t for t in tags if isinstance(t, str)]
        ids = [t[len(SET_TAG) :] for t in tags if t.startswith(SET_TAG)]
        groups = [t[len(GROUP_TAG) :] for t in tags if t.startswith(GROUP_TAG)]
        if len(ids) != 1 or not re.fullmatch(ID_PATTERN, ids[0]):
            continue
        if len(groups) != 1 or not _GROUP.fullmatch(groups[0]):
            continue
        when = str(row.get("time", ""))
        if ids[0] not in found or when > found[ids[0]][0]:
            found[ids[0]] = (when, Snapshot(row["id"], ids[0], groups[0]))
    return sorted((s for _, s in found.values()), key=lambda s: s.set_id, reverse=True)


class Repository:
    """The configured repository, with a shell whose restic commands see the URL and the
    password in their environment and never show either."""

    def __init__(self, settings: Settings, sh: Shell):
        config = settings.backup.offsite
        if not config.repository:
            raise ConfigError(
                "no off-site repository: set [tool.buildtasks.backup.offsite] repository "
                "(rest:, sftp:, s3: or b2:)"
            )
        self.settings = settings
        self.shown = redact_url(config.repository)
        self.options = [word for option in config.options for word in ("-o", option)]
        environment = settings.environment
        env = {
            "RESTIC_REPOSITORY": config.repository,
            "RESTIC_REPOSITORY_FILE": "",
            "RESTIC_PASSWORD": "",
            "RESTIC_PASSWORD_FILE": "",
            "RESTIC_PASSWORD_COMMAND": "",
        }
        secrets = {urlsplit(config.repository.partition(":")[2]).password or ""}
        secrets |= {environment.get(name, "") for name in CREDENTIALS}
        if config.password_file:
            path = settings.root / config.password_file
            try:
                secrets.add(path.read_text().strip())  # shown as *** should restic echo it
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(
                    f"[tool.buildtasks.backup.offsite] password_file: cannot read {path} "
                    f"({getattr(exc, 'strerror', None) or exc}); create it (mode 600) holding "
                    "the repository password"
                ) from None
            env["RESTIC_PASSWORD_FILE"] = str(path)
        else:
            password = environment.get(config.password_env, "")
            if not password:
                raise ConfigError(
                    f"off-site repository {self.shown}: no password; set {config.password_env} "
                    "in the environment or .env, or [tool.buildtasks.backup.offsite] password_file"
                )
            env["RESTIC_PASSWORD"] = password
            secrets.add(password)
        self.sh = sh.variant(secrets=sh.secrets | frozenset(secrets - {""}), env={**sh.env, **env})

    def restic(
        self, *args: str, query: bool = False, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run restic; its known failures become one line naming the repository."""
        argv = ["restic", *self.options, *args]
        result = self.sh.run(argv, query=query, capture=True, check=False, cwd=cwd and str(cwd))
        if result.returncode != 0:
            raise self._failure(args[0], result)
        return result

    def _failure(self, command: str, result: subprocess.CompletedProcess[str]) -> OffsiteError:
        known = {
            127: f"restic: command not found; {INSTALL}",
            124: f"off-site repository {self.shown} did not answer within "
            f"{self.settings.backup.offsite.open_timeout}s (restic retries an unreachable "
            "backend for 15 minutes); check that it is up and reachable; nothing was changed",
            12: f"off-site repository {self.shown}: wrong password (restic could not open it "
            "with the configured password); nothing was changed",
            10: f"off-site repository {self.shown} does not exist; `inv backup --offsite` "
            "creates it with the first set it sends",
            11: f"off-site repository {self.shown} is locked by another restic; try again "
            "later, or `restic unlock` if that run is gone",
        }
        if result.returncode in known:
            return OffsiteError(known[result.returncode])
        lines = redact(result.stderr or "", self.sh.secrets).strip().splitlines()
        detail = next((line for line in reversed(lines) if line.strip()), "no message")
        return OffsiteError(
            f"`restic {command}` on {self.shown} failed with exit {result.returncode}: {detail}"
        )

    def open(self, create: bool = False) -> None:
        """Check the repository opens with the password, before anything changes, within
        open_timeout (restic itself retries an unreachable backend for 15 minutes); create
        it when it does not exist and create is set."""
        limit = str(self.settings.backup.offsite.open_timeout)
        argv = ["timeout", "--kill-after=5", limit, "restic", *self.options, "cat", "config"]
        probe = self.sh.run(argv, query=True, capture=True, check=False)
        if probe.returncode == 10 and create:
            self.sh.note(f"off-site: creating the repository {self.shown}")
            self.restic("init")
        elif probe.returncode == 137:  # killed by timeout --kill-after: it did not answer
            raise self._failure("cat", subprocess.CompletedProcess(argv, 124))
        elif probe.returncode != 0:
            raise self._failure("cat", probe)

    def snapshots(self) -> list[Snapshot]:
        """This tool's snapshots, one per set (the newest snapshot of a set id), newest set
        first. Tags are read back: only well-formed ids and groups are taken."""
        output = self.restic("snapshots", "--json", "--no-lock", "--tag", TAG, query=True).stdout
        return parse_snapshots(output, self.shown)

    def push(self, directory: Path, found: Manifest) -> dict:
        """Send a verified set (its directory) as one snapshot; a set already there is not
        sent again. Returns what restic reported (bytes added, snapshot id)."""
        if any(s.set_id == found.id for s in self.snapshots()):
            return {"set": found.id, "already_offsite": True}
        tags = f"{TAG},{SET_TAG}{found.id},{GROUP_TAG}{group_of(found)}"
        result = self.restic("backup", "--json", "--quiet", "--tag", tags, ".", cwd=directory)
        summary = {}
        for line in (result.stdout or "").splitlines():
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict) and message.get("message_type") == "summary":
                summary = message
        return {
            "set": found.id,
            "snapshot": str(summary.get("snapshot_id", ""))[:64],
            "bytes_added": int(summary.get("data_added_packed", 0) or 0),
            "bytes_processed": int(summary.get("total_bytes_processed", 0) or 0),
        }

    def find(self, set_id: str = "") -> Snapshot:
        """A set off-site by id or prefix; the newest full set when set_id is empty."""
        snapshots = self.snapshots()
        full = {s.set_id for s in snapshots if s.group == "full"}
        chosen = sets.named([s.set_id for s in snapshots], set_id, full, " off-site")
        if chosen is None:
            what = f"no backup set {set_id!r}" if set_id else "no full backup set"
            raise OffsiteError(
                f"{what} in the off-site repository {self.shown}; see inv backup.offsite.list"
            )
        return next(s for s in snapshots if s.set_id == chosen)

    def fetch(self, snapshot: Snapshot, directory: Path) -> Manifest:
        """Download a set into directory (made here, empty) and verify it exactly like a
        local set; anything its manifest does not name is removed. Raises on any problem."""
        directory.mkdir(parents=True)
        (directory / sets.MARKER).write_text("buildtasks download\n")
        self.restic("restore", "--json", "--quiet", snapshot.id, "--target", str(directory))
        problems = sets.verify_directory(self.sh, directory, snapshot.set_id)
        if problems:
            raise RestoreRefused(
                f"backup {snapshot.set_id} from {self.shown} failed verification after the "
                f"download, nothing used: {'; '.join(problems)}"
            )
        found = manifest.load(directory)
        keep = {manifest.NAME, sets.MARKER, *(a.file for a in found.artifacts)}
        for path in directory.iterdir():
            if path.name not in keep:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        for name in keep:
            fsync_file(directory / name)
        fsync_dir(directory)
        return found

    def apply_retention(self, dry: bool) -> list[str]:
        """Forget (and prune) the snapshots the local keep_* policy does not keep, each
        group counted apart like local sets; returns the set ids."""
        snapshots = self.snapshots()
        groups: dict[str, list[str]] = {}
        for snapshot in snapshots:
            groups.setdefault(snapshot.group, []).append(snapshot.set_id)
        expired = set(retention.expired(groups.values(), self.settings.backup))
        forget = [s for s in snapshots if s.set_id in expired]
        if forget and not dry:
            self.restic("forget", "--prune", *(s.id for s in forget))
        return sorted((s.set_id for s in forget), reverse=True)

    def check(self, subset: str = "") -> None:
        """`restic check --read-data-subset`: the repository's structure, and that part of
        its data read back and compared with its hashes."""
        subset = subset or self.settings.backup.offsite.check_subset
        self.restic("check", f"--read-data-subset={subset}", query=True)


def full_sets(settings: Settings, sh: Shell) -> list[str]:
    """The ids of the full sets in the repository, as its snapshot list orders them."""
    repo = Repository(settings, sh)
    repo.open()
    return [s.set_id for s in repo.snapshots() if s.group == "full"]


def download(settings: Settings, sh: Shell, set_id: str) -> Manifest:
    """Bring a set from the repository into the backup directory (verified before it gets
    its name). A set that is already there stays as it is and is used instead."""
    repo = Repository(settings, sh)
    repo.open()
    snapshot = repo.find(set_id)
    root = sets.backup_dir(settings)
    with sets.locked(root):
        if (root / snapshot.set_id).exists():
            sh.note(f"off-site: backup {snapshot.set_id} is also local; the local copy is used")
            return sets.find(settings, snapshot.set_id)
        sets.sweep(root)
        building = root / f"{sets.TMP_PREFIX}{snapshot.set_id}-{os.getpid()}"
        try:
            sh.note(f"off-site: downloading backup {snapshot.set_id} from {repo.shown}")
            found = repo.fetch(snapshot, building)
            os.rename(building, root / snapshot.set_id)
        finally:
            shutil.rmtree(building, ignore_errors=True)
    return found
