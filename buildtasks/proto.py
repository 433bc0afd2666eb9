"""Protobuf and gRPC code generation with grpcio-tools' protoc.

Generated modules import their sibling specs relatively, so the output tree works at any
depth inside the user's package. Generation happens aside and is swapped in; a stamp over
the inputs makes a second run a no-op; ``check`` regenerates aside and compares.

``python -m buildtasks.proto --src SPECS --out DIR`` runs the same generator inside an
image build (it needs only grpcio-tools, not invoke).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from buildtasks import lazy
from buildtasks.errors import BuildtasksError, CommandError, ConfigError
from buildtasks.shell import Shell, tool

if TYPE_CHECKING:  # this module also runs alone in an image build (example/Dockerfile)
    from buildtasks.config import ProtoSettings, Settings

metadata = lazy.module("importlib.metadata")

STAMP = ".buildtasks-proto.json"
REWRITER_VERSION = "2"  # bump when rewrite_imports changes its output
_FROM_IMPORT = re.compile(r"^(\s*)from ([\w.]+) import (\w+)( as \w+)?\s*$")
_PLAIN_IMPORT = re.compile(r"^(\s*)import (\w+)( as \w+)?\s*$")


@dataclass(frozen=True)
class ProtoOptions:
    src: Path
    out: Path
    include: tuple[Path, ...] = ()
    grpc: bool = True
    pyi: bool = True


@dataclass(frozen=True)
class Outcome:
    changed: bool
    files: tuple[str, ...]  # generated files, relative to out


def specs(src: Path) -> list[Path]:
    """Every .proto under src, relative to it, sorted."""
    return sorted(p.relative_to(src) for p in src.rglob("*.proto"))


def generated_modules(spec_paths: list[Path], grpc: bool) -> set[str]:
    """Dotted names (relative to out) of the modules protoc makes for the specs."""
    modules = set()
    for spec in spec_paths:
        base = ".".join(spec.with_suffix("").parts) + "_pb2"
        modules.add(base)
        if grpc:
            modules.add(base + "_grpc")
    return modules


def _relative(current_module: str, target_package: str) -> str:
    """The relative package of target_package as seen from current_module."""
    here = current_module.split(".")[:-1]
    there = target_package.split(".") if target_package else []
    common = 0
    while common < min(len(here), len(there)) and here[common] == there[common]:
        common += 1
    return "." * (len(here) - common + 1) + ".".join(there[common:])


def rewrite_imports(text: str, module: str, local: set[str]) -> str:
    """Turn protoc's absolute imports of sibling generated modules into relative ones.

    module is the dotted name of the file being rewritten, relative to out; local holds the
    dotted names of every generated module. Other imports (google.protobuf, grpc) stay.
    """
    lines = []
    for line in text.splitlines(keepends=True):
        if not line.lstrip().startswith(("from ", "import ")):
            lines.append(line)
            continue
        body = line.rstrip("\r\n")
        ending = line[len(body) :]
        match = _FROM_IMPORT.match(body)
        if match and f"{match.group(2)}.{match.group(3)}" in local:
            indent, package, name, alias = match.groups()
            body = f"{indent}from {_relative(module, package)} import {name}{alias or ''}"
        elif (match := _PLAIN_IMPORT.match(body)) and match.group(2) in local:
            indent, name, alias = match.groups()
            body = f"{indent}from {_relative(module, '')} import {name}{alias or f' as {name}'}"
        lines.append(body + ending)
    return "".join(lines)


def tools_version(options: ProtoOptions | None = None) -> str:
    """The generators' versions: grpcio-tools, and mypy-protobuf where it writes stubs."""
    names = ["grpcio-tools", *(["mypy-protobuf"] if options and options.pyi else [])]
    try:
        return " ".join(metadata.version(name) for name in names)
    except metadata.PackageNotFoundError as exc:
        raise BuildtasksError(
            f"protobuf generation needs {exc.name} in this environment; "
            "install it with: pip install 'buildtasks[proto]'"
        ) from None


def stub_plugin(name: str) -> str:
    """A protoc plugin of mypy-protobuf (protoc-gen-mypy for messages, protoc-gen-mypy_grpc
    for services)."""
    return tool(name, "install it with: pip install 'buildtasks[proto]' (or set pyi = false)")


def inputs_digest(options: ProtoOptions) -> str:
    """sha256 over every spec and include file, the options and the generator versions."""
    digest = hashlib.sha256()
    digest.update(
        json.dumps([tools_version(options), REWRITER_VERSION, options.grpc, options.pyi]).encode()
    )
    for root in (options.src, *options.include):
        for spec in specs(root):
            digest.update(f"\0{root.name}/{spec}\0".encode())
            digest.update((root / spec).read_bytes())
    return digest.hexdigest()


def protoc_argv(options: ProtoOptions, out_dir: Path, spec_paths: list[Path]) -> list[str]:
    argv = [sys.executable, "-m", "grpc_tools.protoc", f"--proto_path={options.src}"]
    argv += [f"--proto_path={path}" for path in options.include]
    argv.append(f"--python_out={out_dir}")
    if options.grpc:
        argv.append(f"--grpc_python_out={out_dir}")
    # mypy-protobuf's stubs, not --pyi_out's: those pass `mypy --strict` and type the
    # gRPC stubs and servicers too
    plugins = ["mypy", "mypy_grpc"] if options.grpc else ["mypy"]
    for plugin in plugins if options.pyi else []:
        argv += [f"--plugin=protoc-gen-{plugin}={stub_plugin(f'protoc-gen-{plugin}')}",
                 f"--{plugin}_out=quiet:{out_dir}"]  # fmt: skip
    return argv + [str(options.src / spec) for spec in spec_paths]


def configured(settings: Settings) -> ProtoSettings:
    """The project's [tool.buildtasks.proto] table; one line naming the fix without one."""
    if settings.proto is None:
        raise ConfigError(
            "no [tool.buildtasks.proto] table; add one with `src` (specs) and `out` (package dir)"
        )
    return settings.proto


def run_protoc(sh: Shell, argv: list[str]) -> int:
    """Run grpcio-tools' protoc in this process: the printed command is what it does, but
    a second interpreter and its grpc_tools import would double a small generation's time."""
    from grpc_tools import protoc  # the optional `proto` extra: checked by tools_version

    if not sh.change(argv):
        return 0
    well_known = Path(protoc.__file__).parent / "_proto"  # as `python -m grpc_tools.protoc` adds
    return protoc.main(["protoc", *argv[3:], f"--proto_path={well_known}"])


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _generate_into(sh: Shell, options: ProtoOptions, out_dir: Path) -> dict[str, str]:
    """Run protoc into out_dir, rewrite imports, add __init__.py files and the stamp.
    Returns {relative file: sha256}."""
    spec_paths = specs(options.src)
    if not spec_paths:
        raise ConfigError(f"proto: no .proto files under {options.src}; check `src`")
    returncode = run_protoc(sh, protoc_argv(options, out_dir, spec_paths))
    if returncode != 0:
        raise CommandError(
            f"protoc rejected the specs (exit {returncode}); fix the error above, "
            "the previous output is untouched",
            returncode,
        )
    local = generated_modules(spec_paths, options.grpc)
    for path in sorted(out_dir.rglob("*.py*")):
        relative = path.relative_to(out_dir)
        module = ".".join(relative.with_suffix("").parts)
        path.write_text(rewrite_imports(path.read_text(), module, local))
    for directory in [out_dir, *(p for p in out_dir.rglob("*") if p.is_dir())]:
        (directory / "__init__.py").touch()
    files = {
        str(p.relative_to(out_dir)): _file_digest(p)
        for p in sorted(out_dir.rglob("*"))
        if p.is_file()
    }
    stamp = {"inputs": inputs_digest(options), "files": files}
    (out_dir / STAMP).write_text(json.dumps(stamp, indent=1, sort_keys=True) + "\n")
    return files


def _read_stamp(out: Path) -> dict:
    try:
        return json.loads((out / STAMP).read_text())
    except (OSError, ValueError):
        return {}


def _foreign_files(out: Path, stamp: dict) -> list[str]:
    """Files in out that the last generation did not write (never deleted by a swap)."""
    known = set(stamp.get("files", {})) | {STAMP}
    return sorted(
        str(p.relative_to(out))
        for p in out.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and str(p.relative_to(out)) not in known
    )


def up_to_date(options: ProtoOptions) -> bool:
    stamp = _read_stamp(options.out)
    if stamp.get("inputs") != inputs_digest(options):
        return False
    return all(
        (options.out / name).is_file() and _file_digest(options.out / name) == digest
        for name, digest in stamp.get("files", {}).items()
    )


def generate(sh: Shell, options: ProtoOptions, force: bool = False) -> Outcome:
    """Generate into a sibling directory and swap it in; a no-op when the stamp matches."""
    tools_version(options)
    if not force and options.out.is_dir() and up_to_date(options):
        return Outcome(False, tuple(_read_stamp(options.out)["files"]))
    if options.out.exists():
        foreign = _foreign_files(options.out, _read_stamp(options.out))
        if foreign:
            raise ConfigError(
                f"proto: {options.out} holds files buildtasks did not generate "
                f"({', '.join(foreign[:3])}); move them or point `out` at a directory of its own"
            )
    if sh.dry:
        run_protoc(sh, protoc_argv(options, options.out, specs(options.src)))
        return Outcome(True, ())
    options.out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{options.out.name}.new-", dir=options.out.parent))
    retired = options.out.parent / f".{options.out.name}.old-{staging.name.rsplit('-', 1)[-1]}"
    try:
        files = _generate_into(sh, options, staging)
        if options.out.exists():
            os.replace(options.out, retired)
        os.replace(staging, options.out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)
    return Outcome(True, tuple(files))


def _tree_digests(out: Path) -> dict[str, str]:
    """{relative file: sha256} of out, without caches and the stamp."""
    if not out.is_dir():
        return {}
    return {
        str(p.relative_to(out)): _file_digest(p)
        for p in out.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.name != STAMP
    }


def check(sh: Shell, options: ProtoOptions) -> list[str]:
    """Files of out that differ from a fresh generation (missing, extra or changed).
    Read-only for the project (it generates into a temporary directory), so it runs under
    dry-run too."""
    tools_version(options)
    with tempfile.TemporaryDirectory(prefix="buildtasks-proto-check-") as tmp:
        fresh = _generate_into(sh.variant(dry=False), options, Path(tmp))
    current = _tree_digests(options.out)
    return sorted(
        name for name in set(fresh) | set(current) if fresh.get(name) != current.get(name)
    )


def clean(sh: Shell, options: ProtoOptions) -> list[str]:
    """Remove the generated files (per the stamp) and directories left empty."""
    stamp = _read_stamp(options.out)
    removed = []
    for name in [*stamp.get("files", {}), STAMP]:
        path = options.out / name
        if path.is_file():
            removed.append(name)
            if not sh.dry:
                path.unlink()
    if not sh.dry and options.out.is_dir():
        for directory in sorted(options.out.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if directory.is_dir() and directory.name == "__pycache__":
                shutil.rmtree(directory)
            if directory.is_dir() and not any(directory.iterdir()):
                directory.rmdir()
        if not any(options.out.iterdir()):
            options.out.rmdir()
    return removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m buildtasks.proto", description="Generate protobuf/gRPC Python code."
    )
    parser.add_argument("--src", required=True, help="spec root, also the import root")
    parser.add_argument("--out", required=True, help="output directory (a Python package)")
    parser.add_argument("--include", action="append", default=[], help="extra import path")
    parser.add_argument("--no-grpc", action="store_true", help="skip *_pb2_grpc.py")
    parser.add_argument("--no-pyi", action="store_true", help="skip .pyi stubs")
    args = parser.parse_args(argv)
    options = ProtoOptions(
        Path(args.src),
        Path(args.out),
        tuple(map(Path, args.include)),
        not args.no_grpc,
        not args.no_pyi,
    )
    try:
        outcome = generate(Shell(), options)
    except BuildtasksError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"proto: {len(outcome.files)} files in {options.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
