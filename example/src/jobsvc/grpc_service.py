"""The gRPC JobService (specs/jobs/v1/jobs.proto) over the same store and queue as the API."""

from __future__ import annotations

import time
from concurrent import futures

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from jobsvc.gen.common.v1 import status_pb2
from jobsvc.gen.jobs.v1 import jobs_pb2, jobs_pb2_grpc

STATUS = {
    "queued": status_pb2.JOB_STATUS_QUEUED,
    "running": status_pb2.JOB_STATUS_RUNNING,
    "done": status_pb2.JOB_STATUS_DONE,
}


def to_message(job: dict) -> jobs_pb2.Job:
    created, updated = Timestamp(), Timestamp()
    created.FromNanoseconds(int(job["created"] * 1e9))
    updated.FromNanoseconds(int(job["updated"] * 1e9))
    return jobs_pb2.Job(
        id=job["id"],
        status=STATUS[job["status"]],
        text=str(job["payload"].get("text", "")),
        words=(job["result"] or {}).get("words", 0),
        created=created,
        updated=updated,
    )


class JobService(jobs_pb2_grpc.JobServiceServicer):
    def __init__(self, store, queue, poll_interval: float = 0.1):
        self.store, self.queue, self.poll_interval = store, queue, poll_interval

    def Submit(self, request, context):
        job_id = self.store.create({"text": request.text})
        self.queue.put(job_id)
        return to_message(self.store.get(job_id))

    def Get(self, request, context):
        job = self.store.get(request.id)
        if job is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no job {request.id}")
        return to_message(job)

    def Watch(self, request, context):
        last = None
        while context.is_active():
            job = self.store.get(request.id)
            if job is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"no job {request.id}")
            if job["status"] != last:
                last = job["status"]
                yield to_message(job)
            if last == "done":
                return
            time.sleep(self.poll_interval)


def start(store, queue, address: str) -> tuple[grpc.Server, int]:
    """Serve JobService on address (port 0 picks a free one); returns the server and port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    jobs_pb2_grpc.add_JobServiceServicer_to_server(JobService(store, queue), server)
    port = server.add_insecure_port(address)
    server.start()
    print(f"jobsvc gRPC listening on port {port}", flush=True)
    return server, port
