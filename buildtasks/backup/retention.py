"""Which backup sets to keep: the newest N, the newest of each of the last D days and of
each of the last W ISO weeks. The newest set is always kept."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from buildtasks.backup.manifest import ID_FORMAT
from buildtasks.config import BackupSettings


def plan(ids: list[str], keep_last: int, keep_daily: int, keep_weekly: int) -> tuple[list, list]:
    """(keep, delete) among ids of verified sets, both newest first."""
    ordered = sorted(ids, reverse=True)
    keep = set(ordered[: max(keep_last, 1)])
    for period, count in (("%Y-%m-%d", keep_daily), ("%G-W%V", keep_weekly)):
        seen: list[str] = []
        for set_id in ordered:
            bucket = datetime.strptime(set_id, ID_FORMAT).strftime(period)
            if bucket not in seen:
                seen.append(bucket)
                if len(seen) > count:
                    break
                keep.add(set_id)
    return [i for i in ordered if i in keep], [i for i in ordered if i not in keep]


def expired(groups: Iterable[list[str]], config: BackupSettings) -> list[str]:
    """The ids the configured policy deletes, each group (full sets, each kind of partial
    set) counted apart, so that one never displaces another."""
    keep = (config.keep_last, config.keep_daily, config.keep_weekly)
    return [set_id for ids in groups for set_id in plan(ids, *keep)[1]]
