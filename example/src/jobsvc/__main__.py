"""`python -m jobsvc [serve|worker|health]`; serve (the default) runs API and worker together
when there is no Redis queue to hand jobs to a separate worker process."""

from __future__ import annotations

import os
import sys
import threading
import urllib.request
from pathlib import Path

from jobsvc.api import serve
from jobsvc.queue import RedisQueue, StoreQueue
from jobsvc.store import Store
from jobsvc.worker import work


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "serve"
    port = int(os.environ.get("PORT", "8000"))
    if command == "health":
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=3) as reply:
                return 0 if reply.status == 200 else 1
        except OSError:
            return 1
    data_dir = Path(os.environ.get("DATA_DIR", "data"))
    store = Store(data_dir / "jobs.db")
    redis_url = os.environ.get("REDIS_URL", "")
    queue = RedisQueue(redis_url) if redis_url else StoreQueue(store)
    if command == "worker":
        work(store, queue, data_dir / "jobs")
        return 0
    if command != "serve":
        print(f"usage: python -m jobsvc [serve|worker|health], not {command!r}", file=sys.stderr)
        return 2
    if not redis_url:
        threading.Thread(target=work, args=(store, queue, data_dir / "jobs"), daemon=True).start()
    serve(store, queue, data_dir, os.environ.get("HOST", "0.0.0.0"), port)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
