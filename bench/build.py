"""Build benchmarks. Run: .venv/bin/python bench/build.py [--startup]

Every figure is measured in this run against its anchor: bare invoke, the raw buildx command
buildtasks prints, three sequential builds as a Makefile runs them, and a cold build.
`--startup` measures only the first two (start-up and the warm no-op build), which run
interleaved with their anchors.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    INV,
    REPO,
    compile_package,
    example_copy,
    interleaved,
    planned_command,
    report,
    run,
    timed,
)

TARGETS = ("dev", "prod", "apify")


def main() -> None:
    compile_package()
    empty = Path(tempfile.mkdtemp(prefix="buildtasks-bench-empty-"))
    # invoke refuses to list a collection without tasks: the anchor holds one no-op task.
    (empty / "tasks.py").write_text("from invoke import task\n\n\n@task\ndef noop(c):\n    pass\n")
    listing, bare = interleaved([([*INV, "--list"], REPO), ([*INV, "--list"], empty)], runs=21)
    report("inv --list vs bare invoke on a one-task tasks.py", listing.wall, bare.wall, 1.2)
    report("  the same in CPU time", listing.cpu, bare.cpu, 1.2)

    root = example_copy()
    env = {"REGISTRY": "127.0.0.1:5000/bench"}
    run([*INV, "build-prod"], root, env)
    raw = planned_command(root, "build-prod", env)
    commands = [([*INV, "build-prod"], root), (raw, root), ([*INV, "noop"], empty)]
    warm, buildx, noop = interleaved(commands, runs=15, env=env)
    report("warm no-op inv build-prod vs the raw buildx command", warm.wall, buildx.wall, 1.15)
    for name, kind in (("", "wall"), ("  the same in CPU time", "cpu")):
        overhead = getattr(warm, kind) - getattr(buildx, kind) - getattr(noop, kind)
        print(
            f"{name or 'warm no-op inv build-prod - raw buildx - a no-op task':<58} "
            f"{overhead * 1000:+.0f} ms (no-op task {getattr(noop, kind):.2f}s)  "
            f"target <= +50 ms  {'meets' if overhead <= 0.05 else 'MISSES'}",
            flush=True,
        )
    if "--startup" in sys.argv:
        return

    sequential = [[*planned_command(root, f"build-{t}", env), "--no-cache"] for t in TARGETS]
    makefile = Path(tempfile.mkdtemp(prefix="buildtasks-bench-make-")) / "Makefile"
    makefile.write_text(
        "all:\n" + "".join("\t" + " ".join(f"'{a}'" for a in argv) + "\n" for argv in sequential)
    )
    report(
        "cold inv build (bake, 3 targets) vs 3 sequential builds (make)",
        timed([*INV, "build", "--no-cache"], root, env=env),
        timed(["make", "-f", str(makefile)], root, env=env),
        0.7,
    )

    cold = timed([*INV, "build-prod", "--no-cache"], root, env=env)
    source = root / "example/src/jobsvc/__init__.py"
    source.write_text(source.read_text() + "# bench: a source-only change\n")
    report(
        "prod rebuild after a source-only change vs cold build",
        timed([*INV, "build-prod"], root, env=env),
        cold,
        0.25,
    )


if __name__ == "__main__":
    main()
