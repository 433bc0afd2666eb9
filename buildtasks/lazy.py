"""Modules a module declares at its top but loads when first used.

`inv --list` and `inv --help` build every task of the collection; loading the domain
modules (and the SDKs they use) for that would cost more than invoke itself. A module
named here is imported on its first attribute access, so the dependency stays visible where
imports are read, and is paid for only by the code that uses it.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class _Deferred(ModuleType):
    """Stands for a module until an attribute is asked of it, then imports it (once: the
    import system keeps it) and answers from it."""

    def __getattr__(self, attribute: str):
        if attribute.startswith("__"):  # copy, pickle and inspect probe these: not a use
            raise AttributeError(attribute)
        return getattr(importlib.import_module(self.__name__), attribute)


def module(name: str) -> ModuleType:
    """The module `name`, imported when first used."""
    return _Deferred(name)
