"""Modules a task layer declares at its top but loads when first used.

`inv --list` and `inv --help` build every task of the collection; loading the domain
modules (and the SDKs they use) for that would cost more than invoke itself. A module
named here is loaded on its first attribute access, so the dependency stays visible where
imports are read, and is paid for only by the task that uses it.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def module(name: str) -> ModuleType:
    """The module `name`: the loaded one, or one that loads itself on first use."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"no module named {name!r}", name=name)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[name] = loaded
    spec.loader.exec_module(loaded)
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, loaded)  # as an import would
    return loaded
