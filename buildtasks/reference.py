"""docs/configuration.md, generated from the config schema: every key of every table,
its type, its default and what it does (the comments beside the fields in config.py).

    python -m buildtasks.reference > docs/configuration.md
"""

from __future__ import annotations

import ast
import inspect
import sys

import msgspec

from buildtasks import config


def tables(name: str, cls: type) -> list[tuple[str, type]]:
    """(table, class) for the table of cls and every table nested in it, as the schema
    declares them."""
    found = [(name, cls)]
    for key, (table, named) in config.tables(cls).items():
        found += tables(f"{name}.{key}.NAME" if named else f"{name}.{key}", table)
    return found


TABLES = tables("tool.buildtasks", config.Settings)

EXAMPLE = """\
## A multi-service layout

`services/api`, `services/worker` and a one-shot `services/migrate`, all built `FROM` a
shared `base` image; protos and `compose.yaml` at the root (the fixture project
`tests/fixtures/shop` is exactly this):

```toml
[tool.buildtasks]
image = "registry.example.com/shop/api"
mirror = "${BASE_IMAGE_MIRROR:-}"

[tool.buildtasks.targets.base]
context = "services/base"
image = "registry.example.com/shop/base"

[tool.buildtasks.targets.api]
context = "services/api"
contexts = { base = "target:base", protos = "protos" }  # FROM base; COPY --from=protos
platforms = ["linux/amd64", "linux/arm64"]

[tool.buildtasks.targets.worker]
context = "services/worker"
image = "registry.example.com/shop/worker"
contexts = { base = "target:base" }
platforms = ["linux/amd64", "linux/arm64"]

[tool.buildtasks.targets.migrate]
context = "."
dockerfile = "services/migrate/Dockerfile"
image = "registry.example.com/shop/migrate"
contexts = { base = "target:base" }

[tool.buildtasks.stack]
compose = ["compose.yaml"]
targets = ["api", "worker", "migrate"]
app_service = "api"
app_port = 8080
health_path = "/healthz"

[tool.buildtasks.integration]
pytest_args = ["itests"]

[tool.buildtasks.db]
sqlite = "api:/data/shop.db"

[tool.buildtasks.release]
targets = ["api", "worker"]   # tagged registry.example.com/shop/api:1.2.0, .../worker:1.2.0
```
"""


def comments(cls: type) -> dict[str, str]:
    """{field: the comment on its line and the comment lines just above it}."""
    lines, _ = inspect.getsourcelines(cls)
    source = "".join(lines).strip()
    body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
    text = source.splitlines()
    found = {}
    for node in body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            above = []
            row = node.lineno - 2
            while row >= 0 and text[row].strip().startswith("#"):
                above.insert(0, text[row].strip().lstrip("# "))
                row -= 1
            end = text[node.end_lineno - 1]
            inline = end.split("  # ", 1)[1] if "  # " in end else ""
            found[node.target.id] = " ".join(p for p in (*above, inline) if p)
    return found


def _default(item: msgspec.structs.FieldInfo) -> str:
    if item.default is not msgspec.NODEFAULT:
        value = item.default
    elif item.default_factory is not msgspec.NODEFAULT:
        value = item.default_factory()
    else:
        return "required"
    if value is None:
        return "see description"
    if isinstance(value, tuple):
        return "`[" + ", ".join(f'"{v}"' for v in value) + "]`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, int):
        return f"`{value}`"
    return "`{}`"


def documented_keys() -> list[tuple[str, str, str, str, str]]:
    """(table, key, type, default, description) for every documented key."""
    rows = []
    for table, cls in TABLES:
        notes = comments(cls)
        hints = config._hints(cls)
        keys = set(config.keys(cls)) - set(config.tables(cls))
        for item in msgspec.structs.fields(cls):
            if item.name not in keys:
                continue
            kind = config._describe(hints[item.name])
            rows.append((table, item.name, kind, _default(item), notes.get(item.name, "")))
    return rows


def render() -> str:
    out = [
        "# Configuration reference",
        "",
        "Generated from the config schema by `python -m buildtasks.reference`; do not edit.",
        "Every key lives in `pyproject.toml` under `[tool.buildtasks]`; values may use",
        "`${VAR}` and `${VAR:-default}` (the environment over the `env_files`).",
    ]
    current = ""
    for table, key, kind, default, note in documented_keys():
        if table != current:
            current = table
            doc = inspect.getdoc(dict(TABLES)[table]) or ""
            out += ["", f"## `[{table}]`", "", doc, "", "| key | type | default | meaning |"]
            out.append("|---|---|---|---|")
        escaped = note.replace("|", r"\|")
        out.append(f"| `{key}` | {kind} | {default} | {escaped} |")
    return "\n".join(out) + "\n\n" + EXAMPLE


if __name__ == "__main__":
    sys.stdout.write(render())
