"""Signing benchmark (issue 14). Run: .venv/bin/python bench/signing.py

A two-platform release of the example with provenance, signatures and SBOM attestations
against the same release with all of them off, measured in this run (target: at most 1.2x).
Every release ships a source change, so its source layer is rebuilt (arm64 under QEMU) and
pushed, on an otherwise warm build cache (one unmeasured release of each first):
dependencies are not reinstalled, and the SBOM's layer cache (a directory of this run's own)
holds the layers an earlier release read. Releases alternate and the median is kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, report, run

IDENTITY = {"GIT_AUTHOR_NAME": "Bench", "GIT_AUTHOR_EMAIL": "b@localhost",
            "GIT_COMMITTER_NAME": "Bench", "GIT_COMMITTER_EMAIL": "b@localhost"}  # fmt: skip
PASSWORD = "bench password"
REGISTRY = "127.0.0.1:5000"


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env={**os.environ, **IDENTITY})  # fmt: skip


def project(root: Path, publish: str) -> Path:
    """A clone of the example with a bare remote, releasing prod for amd64 and arm64."""
    work = root / "project"
    shutil.copytree(REPO / "example", work / "example",
                    ignore=shutil.ignore_patterns("gen", "data", "__pycache__"))  # fmt: skip
    text = (REPO / "pyproject.toml").read_text()
    (work / "pyproject.toml").write_text(text + publish)
    shutil.copy(REPO / ".env", work / ".env")
    (work / ".gitignore").write_text(".env\n")
    git(root, "init", "-q", "--bare", "-b", "main", str(root / "remote.git"))
    git(work, "init", "-q", "-b", "main")
    git(work, "add", "-A")
    git(work, "commit", "-qm", "bench")
    git(work, "remote", "add", "origin", str(root / "remote.git"))
    git(work, "push", "-q", "origin", "main")
    return work


def release(work: Path, prefix: str, cache: Path) -> float:
    """One patch release of new code (a changed source file, as releases ship, so the
    source layer is rebuilt and pushed for both platforms) with its changelog entry; its
    wall time."""
    change = uuid.uuid4().hex
    changelog = work / "example/CHANGELOG.md"
    entry = f"## [Unreleased]\n\n### Changed\n- {change}\n"
    changelog.write_text(changelog.read_text().replace("## [Unreleased]\n", entry, 1))
    source = work / "example/src/jobsvc/worker.py"
    source.write_text(source.read_text() + f"# {change}\n")
    git(work, "commit", "-qam", "notes")
    git(work, "push", "-q", "origin", "main")
    env = {"REGISTRY": prefix, "COSIGN_PASSWORD": PASSWORD, "XDG_CACHE_HOME": str(cache),
           **IDENTITY}  # fmt: skip
    start = time.perf_counter()
    run([sys.executable, "-m", "buildtasks", "release", "--bump", "patch"], work, env)
    return time.perf_counter() - start


def cleanup(prefix: str) -> None:
    """Delete the manifests the benchmark pushed (the machine's registry allows deletes)."""
    path = f"{prefix.split('/', 1)[1]}/buildtasks/jobsvc"
    base = f"http://{REGISTRY}/v2/{path}"
    try:
        listing = json.loads(urllib.request.urlopen(f"{base}/tags/list").read())
    except OSError:
        return  # nothing was pushed
    accept = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json"
    digests = set()
    for tag in listing.get("tags") or []:
        request = urllib.request.Request(f"{base}/manifests/{tag}", method="HEAD",
                                         headers={"Accept": accept})  # fmt: skip
        digests.add(urllib.request.urlopen(request).headers["Docker-Content-Digest"])
    for digest in digests:
        with contextlib.suppress(urllib.error.HTTPError):  # gone with another digest
            request = urllib.request.Request(f"{base}/manifests/{digest}", method="DELETE")
            urllib.request.urlopen(request).close()


def remove_local_images(prefix: str) -> None:
    """Remove the engine's images named under prefix (what the releases built)."""
    listing = subprocess.run(["docker", "image", "ls", "--no-trunc", "--format",
                              "{{.ID}} {{.Repository}}"], capture_output=True, text=True,
                             check=True).stdout  # fmt: skip
    ours = {line.split()[0] for line in listing.splitlines() if f" {prefix}/" in line}
    if ours:
        subprocess.run(["docker", "image", "rm", "--force", *ours], capture_output=True)


def main(rounds: int = 5) -> None:
    root = Path(tempfile.mkdtemp(prefix="buildtasks-bench-sign-"))
    keys = root / "keys"
    keys.mkdir()
    subprocess.run(["cosign", "generate-key-pair"], cwd=keys, check=True, capture_output=True,
                   env={**os.environ, "COSIGN_PASSWORD": PASSWORD})  # fmt: skip
    signed_table = (f'\n[tool.buildtasks.publish]\nsign = "cosign"\nkey = "{keys}/cosign.key"\n'
                    f'public_key = "{keys}/cosign.pub"\n')  # fmt: skip
    plain_table = '\n[tool.buildtasks.publish]\nprovenance = "off"\n'
    prefix = f"{REGISTRY}/bench-{uuid.uuid4().hex[:8]}"
    signed = project(root / "signed", signed_table)
    plain = project(root / "plain", plain_table)
    prefixes = {"signed": f"{prefix}/signed", "plain": f"{prefix}/plain"}
    try:
        cache = root / "cache"
        # warm the build cache for both (same Dockerfile and context), and the SBOM's layers
        release(plain, prefixes["plain"], cache)
        release(signed, prefixes["signed"], cache)
        times: dict[str, list[float]] = {"signed": [], "plain": []}
        for _ in range(rounds):
            times["plain"].append(release(plain, prefixes["plain"], cache))
            times["signed"].append(release(signed, prefixes["signed"], cache))
        print(f"releases (s): plain {times['plain']}  signed {times['signed']}")
        report(
            "two-platform release: signed+provenance+SBOM vs none",
            statistics.median(times["signed"]),
            statistics.median(times["plain"]),
            1.2,
        )
    finally:
        for used in prefixes.values():
            cleanup(used)
        remove_local_images(prefix)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
