"""`python -m jobsvc [serve|worker|health [--worker]]`.

serve (the default) runs the HTTP API, the gRPC JobService (GRPC_PORT, 0 turns it off) and,
when there is no Redis queue to hand jobs to a separate worker process, the worker too."""

from __future__ import annotations

import os
import signal
import sys
import threading
import urllib.request
from pathlib import Path

from jobsvc.api import serve
from jobsvc.queue import RedisQueue, StoreQueue
from jobsvc.store import Store
from jobsvc.worker import work


def main(argv: list[str]) -> int:
    # `docker stop` sends SIGTERM to PID 1: exit at once instead of waiting to be killed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    command = argv[0] if argv else "serve"
    port = int(os.environ.get("PORT", "8000"))
    if command == "health" and argv[1:] == ["--worker"]:
        from jobsvc.worker import alive

        return 0 if alive() else 1
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
    grpc_port = os.environ.get("GRPC_PORT", "50051")
    grpc_server = None  # held here: a collected grpc.Server stops serving
    if grpc_port != "0":
        from jobsvc.grpc_service import start

        grpc_server, _ = start(store, queue, f"{os.environ.get('HOST', '0.0.0.0')}:{grpc_port}")
    try:
        serve(store, queue, data_dir, os.environ.get("HOST", "0.0.0.0"), port)
    finally:
        if grpc_server is not None:
            grpc_server.stop(grace=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
