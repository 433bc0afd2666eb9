"""Integration-run benchmark (issue: nox -s integration). Run: .venv/bin/python bench/integration.py

`nox -s integration` with the images already built against a hand-written shell script that
does the same `compose up --wait`, pytest and `compose down -v`; and the time from start to
the first test running.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, report, run, timed

BIN = Path(sys.executable).parent
SCRIPT = """\
set -e
P=bench-shell-$$
C="docker compose -p $P -f compose/integration.yml"
trap '$C down -v --remove-orphans >/dev/null 2>&1' EXIT
$C up -d --wait --wait-timeout 120
export BUILDTASKS_API_8000=$($C port api 8000) BUILDTASKS_API_50051=$($C port api 50051)
export BUILDTASKS_PROJECT=$P
{bin}/pytest -q example/tests
"""


def first_test_latency() -> float:
    """Seconds from starting nox until pytest reports its first test."""
    start = time.perf_counter()
    process = subprocess.Popen(
        [str(BIN / "nox"), "-R", "-s", "integration"], cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    latency = 0.0
    for line in process.stdout:
        if not latency and "example/tests/test_e2e.py" in line:
            latency = time.perf_counter() - start
    process.wait()
    return latency


def main() -> None:
    env = {**os.environ, **dict(line.split("=", 1) for line in (REPO / ".env").read_text().split())}
    script = Path(tempfile.mkdtemp(prefix="buildtasks-bench-")) / "integration.sh"
    script.write_text(SCRIPT.format(bin=BIN))
    run([str(BIN / "nox"), "-s", "integration"], REPO)  # images built, venv ready
    report(
        "nox -s integration (built) vs hand-written shell script",
        timed([str(BIN / "nox"), "-R", "-s", "integration"], REPO, runs=3),
        timed(["bash", str(script)], REPO, runs=3, env=env),
        1.15,
    )
    print(f"time from start to the first test running: {first_test_latency():.2f}s")


if __name__ == "__main__":
    main()
