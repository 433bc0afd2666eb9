"""Engine benchmarks (issue: engines). Run: .venv/bin/python bench/engines.py [podman|remote]

Needs scripts/setup (Docker, Podman and the second engine on tcp://127.0.0.1:2376).
1. Each example target built from scratch (--no-cache) on Podman vs the same build on Docker.
2. prod on the second engine: a rebuild whose dependency layers come from the registry cache
   the first engine pushed, vs its cold build. Both start from an empty build cache on the
   second engine (it exists for the tests alone; this prunes only that engine).
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import INV, example_copy, report, run, timed

TARGETS = ("dev", "prod", "apify")
FIRST = "unix:///var/run/docker.sock"
SECOND = "tcp://127.0.0.1:2376"


def with_registry_cache(root: Path) -> None:
    pyproject = root / "pyproject.toml"
    text = pyproject.read_text().replace(
        'dockerfile = "Dockerfile.prod"\n', 'dockerfile = "Dockerfile.prod"\ncache = "registry"\n'
    )
    pyproject.write_text(text)


def empty_second_engine(prefix: str) -> None:
    listing = ["docker", "--host", SECOND, "image", "ls", "--quiet", "--filter",
               f"reference={prefix}/buildtasks/jobsvc"]  # fmt: skip
    ids = subprocess.run(listing, capture_output=True, text=True).stdout.split()
    if ids:
        subprocess.run(["docker", "--host", SECOND, "rmi", "--force", *ids], capture_output=True)
    subprocess.run(["docker", "--host", SECOND, "builder", "prune", "--all", "--force"],
                   capture_output=True, check=True)  # fmt: skip


def main(parts: list[str]) -> None:
    root = example_copy()
    prefix = f"127.0.0.1:5000/bench-{uuid.uuid4().hex[:6]}"
    env = {"REGISTRY": prefix}
    if "podman" in parts:
        podman_vs_docker(root, env)
    if "remote" in parts:
        second_engine_from_registry_cache(root, env, prefix)


def podman_vs_docker(root: Path, env: dict) -> None:
    for target in TARGETS:
        build = [*INV, f"build-{target}", "--no-cache", "--no-check"]
        docker = timed(
            build, root, env={**env, "BUILDTASKS_ENGINE": "docker", "DOCKER_HOST": FIRST}
        )
        podman = timed(build, root, env={**env, "BUILDTASKS_ENGINE": "podman"})
        report(f"cold build-{target}: Podman vs Docker", podman, docker)


def second_engine_from_registry_cache(root: Path, env: dict, prefix: str) -> None:
    with_registry_cache(root)
    run([*INV, "push", "--target", "prod", "--platform", "linux/amd64", "--allow-dirty"], root,
        {**env, "DOCKER_HOST": FIRST})  # fmt: skip
    second = {**env, "DOCKER_HOST": SECOND}
    empty_second_engine(prefix)
    cold = timed([*INV, "build-prod", "--no-cache", "--no-check"], root, env=second)
    empty_second_engine(prefix)
    cached = timed([*INV, "build-prod", "--no-check"], root, env=second)
    report("second engine: prod from the registry cache vs cold", cached, cold, 0.3)
    empty_second_engine(prefix)


if __name__ == "__main__":
    main(sys.argv[1:] or ["podman", "remote"])
