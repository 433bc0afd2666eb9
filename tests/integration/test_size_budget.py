"""`size_budget` is held against the image's uncompressed size, not its compressed blobs."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli
from tests.integration.test_build import write_fixture_project

pytestmark = pytest.mark.integration


def test_size_budget_uses_the_uncompressed_size(engine, registry_prefix, mirror, tmp_path):
    def project(budget: str):
        return write_fixture_project(
            tmp_path,
            f"{registry_prefix}/sized",
            "FROM python:3.11-slim\nUSER 1000\n",
            f'checks = ["size"]\nsize_budget = "{budget}"',
            env=f"BASE_IMAGE_MIRROR={mirror}\n",
        )

    first = run_cli(["buildtasks", "build-app"], cwd=project("100GB"))
    assert first.returncode == 0, first.stderr
    ref = f"{registry_prefix}/sized:app"
    uncompressed = sum(layer["Size"] for layer in engine.api.history(ref))
    compressed = engine.images.get(ref).attrs["Size"]  # the blobs, under the containerd store
    # Between the two figures: the check that read inspect's Size let this image pass.
    budget = (uncompressed + compressed) // 2 if compressed < uncompressed else uncompressed - 1
    over = run_cli(["buildtasks", "build-app"], cwd=project(f"{budget}B"))
    assert over.returncode == 1, over.stderr
    assert "Traceback" not in over.stderr
    assert (
        f"- size: {uncompressed / 10**6:.1f} MB uncompressed is over the budget of {budget}B"
        in over.stderr
    )
