"""An integration run's lease is a never-started container made from the image of one of
the stack's containers; removing it must not leave that image's VOLUME behind."""

from __future__ import annotations

import io
import uuid

import pytest

from buildtasks.docker.engine import Engine, read_leases, remove_lease, write_lease
from buildtasks.shell import Shell

pytestmark = pytest.mark.integration


def test_a_lease_from_an_image_with_a_volume_leaves_no_volume(engine, mirror, tmp_path):
    base = f"{mirror}/python:3.11-slim" if mirror else "python:3.11-slim"
    tag = f"buildtasks-test/lease-{uuid.uuid4().hex[:8]}:volume"
    project = f"leasetest{uuid.uuid4().hex[:6]}"
    engine.images.build(
        fileobj=io.BytesIO(f"FROM {base}\nVOLUME /data\n".encode()), tag=tag, rm=True, forcerm=True
    )  # no intermediate container left behind
    member = engine.containers.create(
        tag, ["true"], labels={"com.docker.compose.project": project}, network_mode="none"
    )
    volumes_before = {v.name for v in engine.volumes.list()} - {
        m["Name"] for m in member.attrs["Mounts"]
    }
    wrapper = Engine(Shell(echo=False))
    try:
        assert write_lease(wrapper, project, b'{"renewed": 1, "ttl": 30}')
        assert read_leases(wrapper)[project] == b'{"renewed": 1, "ttl": 30}'
        remove_lease(wrapper, project)
        assert project not in read_leases(wrapper)
        left = {v.name for v in engine.volumes.list()} - volumes_before
        member_volumes = {m["Name"] for m in member.attrs["Mounts"]}
        assert left <= member_volumes, f"the lease left volumes behind: {left - member_volumes}"
    finally:
        member.remove(force=True, v=True)
        engine.images.remove(tag, force=True)
