"""The worker: takes a job, counts the words of its text, writes the result file and row."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


def process(payload: dict) -> dict:
    text = str(payload.get("text", ""))
    return {"words": len(text.split()), "characters": len(text)}


def run_job(store, jobs_dir: Path, job_id: str) -> None:
    job = store.get(job_id)
    if job is None:
        return
    result = process(job["payload"])
    job_dir = jobs_dir / job_id
    job_dir.mkdir(parents=True, exist_ok=True)
    tmp = job_dir / "result.json.tmp"
    tmp.write_text(json.dumps(result))
    os.replace(tmp, job_dir / "result.json")
    store.finish(job_id, result)


HEARTBEAT = Path("/tmp/jobsvc-worker.heartbeat")
HEARTBEAT_MAX_AGE = 15.0  # seconds without a loop turn before the worker counts as stuck


def alive() -> bool:
    """The worker's health: its loop turned recently."""
    try:
        return time.time() - HEARTBEAT.stat().st_mtime < HEARTBEAT_MAX_AGE
    except OSError:
        return False


def work(store, queue, jobs_dir: Path, stop=lambda: False) -> None:
    while not stop():
        HEARTBEAT.touch()
        try:
            job_id = queue.take(timeout=1.0)
        except Exception as exc:  # queue unreachable: keep trying, health shows it
            print(f"worker: queue unavailable: {exc}", flush=True)
            time.sleep(1.0)
            continue
        if job_id:
            run_job(store, jobs_dir, job_id)
