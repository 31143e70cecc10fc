"""Package exports loaded on first use (PEP 562), so importing a package costs only what is used.

A package lists where each public name lives and assigns the returned function to its module-level
``__getattr__``; static type checkers read the same names from an ``if TYPE_CHECKING:`` import.

>>> import sys, types
>>> package = types.ModuleType("demo_package")
>>> sys.modules["demo_package"] = package
>>> package.__getattr__ = lazy_exports("demo_package", {"dumps": "json"})
>>> package.dumps([1])
'[1]'
>>> "dumps" in vars(package)  # looked up once, then an ordinary attribute
True
>>> package.loads
Traceback (most recent call last):
AttributeError: module 'demo_package' has no attribute 'loads'
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``exports[name]`` (a module path) on first use."""

    def __getattr__(name: str) -> Any:  # noqa: N807 - PEP 562's name
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
