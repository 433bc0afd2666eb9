"""Staleness: how old the newest intact full set is, local or off-site (for cron and
monitoring: `inv backup.verify --max-age 26h`)."""

from __future__ import annotations

from datetime import UTC, datetime

from buildtasks.backup import offsite, sets
from buildtasks.backup.manifest import ID_FORMAT
from buildtasks.config import Settings
from buildtasks.errors import BuildtasksError
from buildtasks.shell import Shell


def newest(settings: Settings, sh: Shell) -> tuple[dict[str, str], list[str]]:
    """({"local": id, "offsite": id} of the newest intact full set in each place that has
    one, [why a place could not be read]). An off-site repository that cannot be read is
    reported, not fatal: a fresh local set still answers."""
    found, unread = {}, []
    valid, _ = sets.listing(settings)
    local = [m.id for m in valid if not m.partial and sets.intact(settings, m)]
    if local:
        found["local"] = local[0]
    if settings.backup.offsite.repository:
        try:
            remote = offsite.full_sets(settings, sh)
        except BuildtasksError as exc:
            unread.append(f"off-site not read: {exc}")
        else:
            if remote:
                found["offsite"] = remote[0]
    return found, unread


def age_seconds(set_id: str, now: datetime | None = None) -> float:
    created = datetime.strptime(set_id, ID_FORMAT).replace(tzinfo=UTC)
    return ((now or datetime.now(UTC)) - created).total_seconds()


def human_age(seconds: float) -> str:
    """In Go's duration units, as --max-age is written: 26h03m, 4m10s, 7s."""
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s" if whole >= 60 else f"{whole}s"
    return f"{whole // 3600}h{whole // 60 % 60:02d}m"
