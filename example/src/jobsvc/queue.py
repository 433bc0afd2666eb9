"""The job queue: Redis lists when REDIS_URL is set, else the SQLite store itself."""

from __future__ import annotations

import time

from jobsvc.store import Store

QUEUE_KEY = "jobsvc:queue"


class StoreQueue:
    """Jobs are taken from the database in creation order; nothing else to run."""

    def __init__(self, store: Store):
        self.store = store

    def put(self, job_id: str) -> None:
        pass  # the row created as 'queued' is the queue entry

    def take(self, timeout: float) -> str | None:
        job_id = self.store.claim_next()
        if job_id is None:
            time.sleep(min(timeout, 0.2))
        return job_id

    def check(self) -> dict:
        return {"ok": True, "kind": "sqlite"}


class RedisQueue:
    def __init__(self, url: str):
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=5)

    def put(self, job_id: str) -> None:
        self.client.lpush(QUEUE_KEY, job_id)

    def take(self, timeout: float) -> str | None:
        item = self.client.brpop([QUEUE_KEY], timeout=max(1, int(timeout)))
        return item[1].decode() if item else None

    def check(self) -> dict:
        try:
            self.client.ping()
            return {"ok": True, "kind": "redis", "pending": self.client.llen(QUEUE_KEY)}
        except Exception as exc:  # any client error means the queue is unusable
            return {"ok": False, "kind": "redis", "error": str(exc)}
