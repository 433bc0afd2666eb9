"""Which backup sets to keep: the newest N, the newest of each of the last D days and of
each of the last W ISO weeks. The newest set is always kept."""

from __future__ import annotations

from datetime import datetime

from buildtasks.backup.manifest import ID_FORMAT


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
