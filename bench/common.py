"""Helpers for the benchmarks: timing commands and printing ratios against their anchors."""

from __future__ import annotations

import compileall
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent
INV = [sys.executable, "-m", "invoke"]


def compile_package() -> None:
    """Write buildtasks' bytecode, as `pip install` does. Where PYTHONDONTWRITEBYTECODE is set
    (as on CI images), a source checkout would compile every module it imports on every run:
    a cost neither an installed buildtasks nor the anchors (invoke is installed) pay."""
    compileall.compile_dir(REPO / "buildtasks", quiet=1)


def timed(argv: list[str], cwd: Path, runs: int = 1, env: dict | None = None) -> float:
    """Median wall time of argv over runs; a failing command aborts the benchmark."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run(argv, cwd, env)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class Timing(NamedTuple):
    wall: float  # median seconds
    cpu: float  # median seconds of CPU (user + system) of the command and what it ran


def interleaved(
    commands: list[tuple[list[str], Path]], runs: int, env: dict | None = None
) -> list[Timing]:
    """Median wall and CPU time of each command, run in turn (a, b, c, a, b, c, ...): a load
    that comes and goes on a shared machine falls on all of them alike. The CPU time is what
    a steady load leaves alone: waiting for a core counts in wall time only."""
    walls: list[list[float]] = [[] for _ in commands]
    cpus: list[list[float]] = [[] for _ in commands]
    for _ in range(runs):
        for index, (argv, cwd) in enumerate(commands):
            cpu, start = _children_cpu(), time.perf_counter()
            run(argv, cwd, env)
            walls[index].append(time.perf_counter() - start)
            cpus[index].append(_children_cpu() - cpu)
    return [
        Timing(statistics.median(w), statistics.median(c)) for w, c in zip(walls, cpus, strict=True)
    ]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(argv: list[str], cwd: Path, env: dict | None = None) -> None:
    """Run argv quietly; on failure show its output's tail and stop the benchmark."""
    result = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    if result.returncode != 0:
        sys.exit(
            f"benchmark step failed (exit {result.returncode}): {argv}\n{result.stderr[-3000:]}"
        )


def report(name: str, ours: float, anchor: float, target: float | None = None) -> None:
    """One line: both timings, their ratio, and the target when there is one."""
    ratio = ours / anchor
    if target is None:
        verdict = "(reported, no target)"
    else:
        verdict = f"target <= {target}x  {'meets' if ratio <= target else 'MISSES'}"
    print(
        f"{name:<58} ours {ours:7.2f}s  anchor {anchor:7.2f}s  ratio {ratio:5.2f}x  {verdict}",
        flush=True,
    )


def example_copy() -> Path:
    """A throwaway git checkout of the example project, so benchmarks never touch the repo."""
    root = Path(tempfile.mkdtemp(prefix="buildtasks-bench-"))
    shutil.copytree(REPO / "example", root / "example", ignore=shutil.ignore_patterns("data"))
    for name in ("pyproject.toml", ".env", "tasks.py"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, root / name)
    for argv in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "bench"]):
        subprocess.run(
            ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", *argv],
            cwd=root,
            check=True,
        )
    return root


def planned_command(root: Path, task: str, env: dict | None = None) -> list[str]:
    """The command a task would run, read from its --dry output."""
    import shlex

    result = subprocess.run(
        [*INV, "--dry", task],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
    )
    line = next(x for x in result.stderr.splitlines() if x.startswith("[dry] "))
    argv = shlex.split(line.removeprefix("[dry] "))
    # The dry run's metadata file lives in a directory that no longer exists.
    at = argv.index("--metadata-file")
    return argv[:at] + argv[at + 2 :]
