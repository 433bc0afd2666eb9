"""`buildtasks init`: scaffold a project's tasks.py, noxfile.py and [tool.buildtasks]."""

from __future__ import annotations

from pathlib import Path

from invoke import Context, task

from buildtasks import lazy
from buildtasks.tasks.common import one_line_errors

config = lazy.module("buildtasks.config")
scaffold = lazy.module("buildtasks.scaffold")
runtimes = lazy.module("buildtasks.runtime")


@task
@one_line_errors
def init(c: Context):
    """Write tasks.py, noxfile.py and the [tool.buildtasks] table from the Dockerfiles,
    compose file and .proto files found here (in an empty project also a small service,
    its Dockerfile, .dockerignore, compose file and test); existing files are kept."""
    root = Path(c.config.get("buildtasks", {}).get("root", ".")).resolve()
    # No configuration exists yet: the runtime only writes files (echoed, --dry honoured).
    rt = runtimes.Runtime(config.parse({"image": "init"}, root=root), dry=bool(c.config.run.dry))
    for line in scaffold.init(rt, root):
        rt.result(line)
    rt.result("next: inv --list, inv build, nox -s integration")
