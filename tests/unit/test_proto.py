"""The import rewriter on real protoc output (grpcio-tools, no engine)."""

import shutil
import subprocess
import sys
from pathlib import Path

from buildtasks import proto
from buildtasks.proto import ProtoOptions, generated_modules, rewrite_imports, specs
from buildtasks.shell import Shell

SPECS = {
    "shop/v1/order.proto": """syntax = "proto3";
package shop.v1;
import "shop/v1/item.proto";
import "money/amount.proto";
import "google/protobuf/timestamp.proto";
message Order { repeated Item items = 1; money.Amount total = 2; google.protobuf.Timestamp at = 3; }
service Orders { rpc Place(Order) returns (Order); }
""",
    "shop/v1/item.proto": """syntax = "proto3";
package shop.v1;
import "money/amount.proto";
message Item { string sku = 1; money.Amount price = 2; }
""",
    "money/amount.proto": """syntax = "proto3";
package money;
message Amount { int64 cents = 1; }
""",
    "top.proto": """syntax = "proto3";
import "shop/v1/order.proto";
message Receipt { shop.v1.Order order = 1; }
""",
}


def write_specs(root: Path) -> Path:
    for name, text in SPECS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def import_lines(path: Path) -> list[str]:
    return [
        line
        for line in path.read_text().splitlines()
        if line.startswith(("from ", "import ")) and "google.protobuf" not in line
    ]


def test_generated_modules():
    paths = [Path("money/amount.proto"), Path("top.proto")]
    assert generated_modules(paths, grpc=True) == {
        "money.amount_pb2",
        "money.amount_pb2_grpc",
        "top_pb2",
        "top_pb2_grpc",
    }
    assert generated_modules(paths, grpc=False) == {"money.amount_pb2", "top_pb2"}


def test_rewrite_imports_of_every_depth():
    local = {"shop.v1.item_pb2", "money.amount_pb2", "top_pb2", "shop.v1.order_pb2"}
    text = (
        "from shop.v1 import item_pb2 as shop_dot_v1_dot_item__pb2\n"
        "from money import amount_pb2 as money_dot_amount__pb2\n"
        "from google.protobuf import timestamp_pb2 as ts\n"
        "import top_pb2 as top__pb2\n"
        "import grpc\n"
    )
    assert rewrite_imports(text, "shop.v1.order_pb2", local) == (
        "from . import item_pb2 as shop_dot_v1_dot_item__pb2\n"
        "from ...money import amount_pb2 as money_dot_amount__pb2\n"
        "from google.protobuf import timestamp_pb2 as ts\n"
        "from ... import top_pb2 as top__pb2\n"
        "import grpc\n"
    )
    assert rewrite_imports(text, "top_pb2", local).splitlines()[:2] == [
        "from .shop.v1 import item_pb2 as shop_dot_v1_dot_item__pb2",
        "from .money import amount_pb2 as money_dot_amount__pb2",
    ]


def test_real_protoc_output_is_rewritten_in_every_file(tmp_path):
    src = write_specs(tmp_path / "specs")
    out = tmp_path / "pkg" / "gen"
    options = ProtoOptions(src=src, out=out)
    assert [str(p) for p in specs(src)] == [
        "money/amount.proto",
        "shop/v1/item.proto",
        "shop/v1/order.proto",
        "top.proto",
    ]
    proto.generate(Shell(echo=False), options)
    assert import_lines(out / "shop/v1/order_pb2.py") == [
        "from . import item_pb2 as shop_dot_v1_dot_item__pb2",
        "from ...money import amount_pb2 as money_dot_amount__pb2",
    ]
    assert (
        "from google.protobuf import timestamp_pb2 as google_dot_protobuf_dot_timestamp__pb2"
        in (out / "shop/v1/order_pb2.py").read_text()
    )
    assert import_lines(out / "shop/v1/order_pb2_grpc.py") == [
        "import grpc",
        "import warnings",
        "from . import order_pb2 as shop_dot_v1_dot_order__pb2",
    ]
    assert import_lines(out / "shop/v1/order_pb2.pyi")[1:3] == [
        "from ...money import amount_pb2 as _amount_pb2",
        "from . import item_pb2 as _item_pb2",
    ]
    assert "from . import order_pb2 as _order_pb2" in import_lines(
        out / "shop/v1/order_pb2_grpc.pyi"
    )
    assert import_lines(out / "top_pb2.py") == [
        "from .shop.v1 import order_pb2 as shop_dot_v1_dot_order__pb2"
    ]
    assert sorted(str(p.relative_to(out)) for p in out.rglob("__init__.py")) == [
        "__init__.py",
        "money/__init__.py",
        "shop/__init__.py",
        "shop/v1/__init__.py",
    ]


def test_the_generator_imports_from_the_files_an_image_build_copies_alone(tmp_path):
    """example/Dockerfile runs `python -m buildtasks.proto` with a few modules copied in."""
    repo = Path(__file__).resolve().parents[2]
    copy = next(
        line for line in (repo / "example/Dockerfile").read_text().splitlines()
        if line.startswith("COPY --from=buildtasks ")
    )  # fmt: skip
    package = tmp_path / "buildtasks"
    package.mkdir()
    for name in copy.split()[2:-1]:
        shutil.copy(repo / "buildtasks" / name, package / name)
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
         "import buildtasks.proto; print(buildtasks.proto.__file__)", str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(package / "proto.py")  # not the installed package
