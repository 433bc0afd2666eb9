"""The HTTP API: POST /jobs, GET /jobs/<id>, GET /health."""

from __future__ import annotations

import json
import shutil
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def health(store, queue, data_dir: Path) -> dict:
    try:
        database = store.check()
    except Exception as exc:  # a broken database is exactly what health reports
        database = {"ok": False, "error": str(exc)}
    usage = shutil.disk_usage(data_dir)
    storage = {
        "ok": data_dir.is_dir() and usage.free > 10 * 2**20,
        "path": str(data_dir),
        "free_bytes": usage.free,
    }
    checks = {"database": database, "queue": queue.check(), "storage": storage}
    status = "ok" if all(c["ok"] for c in checks.values()) else "degraded"
    return {"status": status, **checks}


def make_handler(store, queue, data_dir: Path):
    class Handler(BaseHTTPRequestHandler):
        def send_json(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/health":
                report = health(store, queue, data_dir)
                ok = report["status"] == "ok"
                self.send_json(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, report)
            elif self.path.startswith("/jobs/") and self.path.endswith("/result"):
                self.send_result(self.path.removeprefix("/jobs/").removesuffix("/result"))
            elif self.path.startswith("/jobs/"):
                job = store.get(self.path.removeprefix("/jobs/"))
                if job is None:
                    self.send_json(HTTPStatus.NOT_FOUND, {"error": "no such job"})
                else:
                    self.send_json(HTTPStatus.OK, job)
            else:
                self.send_json(HTTPStatus.NOT_FOUND, {"error": "not found"})

        def send_result(self, job_id: str) -> None:
            """The job's result file as the worker wrote it under data/jobs/<id>/."""
            path = data_dir / "jobs" / job_id / "result.json"
            if "/" in job_id or not path.is_file():
                self.send_json(HTTPStatus.NOT_FOUND, {"error": "no result for this job"})
                return
            self.send_json(HTTPStatus.OK, json.loads(path.read_text()))

        def do_POST(self) -> None:
            if self.path != "/jobs":
                self.send_json(HTTPStatus.NOT_FOUND, {"error": "not found"})
                return
            try:
                length = int(self.headers.get("Content-Length", 0))
                payload = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                self.send_json(HTTPStatus.BAD_REQUEST, {"error": "body must be JSON"})
                return
            job_id = store.create(payload)
            queue.put(job_id)
            self.send_json(HTTPStatus.CREATED, {"id": job_id, "status": "queued"})

        def log_message(self, format: str, *args) -> None:
            print(f"{self.address_string()} {format % args}", flush=True)

    return Handler


def serve(store, queue, data_dir: Path, host: str, port: int) -> None:
    server = ThreadingHTTPServer((host, port), make_handler(store, queue, data_dir))
    print(f"jobsvc listening on {host}:{port}", flush=True)
    server.serve_forever()
