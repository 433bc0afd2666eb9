"""Proto benchmarks (issue: inv proto). Run: .venv/bin/python bench/proto.py

No-op `inv proto` against a full regeneration, and a full `inv proto` against the raw
`python -m grpc_tools.protoc` call over the same specs (with the same stub plugins): on the
example's two specs, where process start-up dominates, and on a 200-spec tree, where
generation does. Then `inv proto.breaking` on the 202-spec tree against `buf breaking` run
directly with the same configuration, reading the tag through buf's own git input.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import INV, example_copy, report, run, timed

RUNS = 5


def synthetic_tree(specs: Path, packages: int = 40, per_package: int = 5) -> None:
    """Nested packages, each spec importing its neighbour and a well-known type."""
    for p in range(packages):
        for n in range(per_package):
            path = specs / f"pkg{p}/v1/m{n}.proto"
            path.parent.mkdir(parents=True, exist_ok=True)
            imports = f'import "pkg{p}/v1/m{n - 1}.proto";\n' if n else ""
            field = f"  M{n - 1} prev = 3;\n" if n else ""
            path.write_text(
                f'syntax = "proto3";\npackage pkg{p}.v1;\n{imports}'
                'import "google/protobuf/timestamp.proto";\n'
                f"message M{n} {{\n  string id = 1;\n"
                f"  google.protobuf.Timestamp at = 2;\n{field}}}\n"
                f"service S{n} {{ rpc Get(M{n}) returns (M{n}); }}\n"
            )


def compare(label: str, root: Path, specs: Path) -> None:
    run([*INV, "proto"], root)
    full = timed([*INV, "proto", "--force"], root, runs=RUNS)
    noop = timed([*INV, "proto"], root, runs=RUNS)
    report(f"{label}: no-op inv proto vs full regeneration", noop, full, 0.2)
    out = Path(tempfile.mkdtemp(prefix="buildtasks-bench-protoc-"))
    raw = raw_protoc(specs, out)
    report(f"{label}: full inv proto vs raw protoc", full, timed(raw, root, runs=RUNS), 1.2)


def raw_protoc(specs: Path, out: Path) -> list[str]:
    """The protoc command `inv proto` stands for, with the same outputs and plugins."""
    from buildtasks import proto

    options = proto.ProtoOptions(src=specs, out=out)
    return proto.protoc_argv(options, out, proto.specs(specs))


def breaking(label: str, root: Path) -> None:
    """inv proto.breaking against the tag vs buf breaking reading the tag itself."""
    import json

    from buildtasks import buf, config

    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    run([*git, "add", "-A"], root)
    run([*git, "commit", "-qm", "specs"], root)
    run([*git, "tag", "-f", "v9.0.0"], root)
    spec = root / "example/specs/pkg0/v1/m0.proto"  # a change buf has to compare
    spec.write_text(
        spec.read_text().replace("  string id = 1;", "  string id = 1;\n  int64 n = 9;")
    )
    ours = timed([*INV, "proto.breaking"], root, runs=RUNS)
    module = buf.module(config.load(root))
    direct = [buf.binary(), "breaking", ".", "--against", ".git#tag=v9.0.0",
              "--config", module.config, "--against-config", module.config]  # fmt: skip
    assert json.loads(module.config)["breaking"]["use"] == ["WIRE_JSON"]
    report(
        f"{label}: inv proto.breaking vs buf breaking", ours, timed(direct, root, runs=RUNS), 1.2
    )


def in_process(label: str, root: Path) -> None:
    """The same comparisons without process start-up (invoke and Python): the generator's
    own cost, which start-up hides on small trees."""
    import statistics
    import time

    from buildtasks import proto
    from buildtasks.shell import Shell

    specs = root / "example/specs"
    options = proto.ProtoOptions(src=specs, out=root / "example/src/jobsvc/gen")
    sh = Shell(echo=False)

    def median(call) -> float:
        times = []
        for _ in range(RUNS):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    full = median(lambda: proto.generate(sh, options, force=True))
    report(f"{label}, in-process: no-op vs full", median(lambda: proto.generate(sh, options)), full)
    out = Path(tempfile.mkdtemp(prefix="buildtasks-bench-protoc-"))
    argv = raw_protoc(specs, out)
    raw = median(lambda: proto.run_protoc(sh, argv))  # protoc's main() alone, in this process
    report(f"{label}, in-process: full vs protoc main()", full, raw)


def main() -> None:
    root = example_copy()
    compare("example, 2 specs", root, root / "example/specs")
    synthetic_tree(root / "example/specs")
    compare("202 specs", root, root / "example/specs")
    in_process("202 specs", root)
    breaking("202 specs", root)


if __name__ == "__main__":
    main()
