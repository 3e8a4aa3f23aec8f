"""Modules imported at their first use instead of where they are named.

``cartridge warp run``'s start-up is timed (launch → first snapshot read): a module the first
read does not need, such as the warehouse driver, is named with :func:`lazy_module` at the top
of the module using it and runs its import when one of its attributes is first read (after the
first read is under way). This is the standard library's :class:`importlib.util.LazyLoader`.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

__all__ = ["lazy_module"]


def lazy_module(name: str) -> ModuleType:
    """Module ``name``, imported when one of its attributes is first read (at once when it is
    imported already, or when it cannot be found: its ImportError is raised here)."""
    found = sys.modules.get(name)
    if found is not None:
        return found
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module
