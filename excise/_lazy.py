"""Lazy package exports: names resolve to their defining module on first use (PEP 562).

Keeps ``import excise`` (and its subpackages) free of torch/transformers imports until a name
that needs them is touched, so the CLI's ``--help`` and fact validation stay fast. The exported
names are listed by ``dir()`` (tab completion in Jupyter), and each package ships a ``.pyi`` stub
with the same names for type checkers and editors.
"""

from __future__ import annotations

import sys
import types
from importlib import import_module


def lazy_exports(package: str, exports: dict[str, str], submodules=()):
    """``(__getattr__, __dir__)`` for a package: ``exports`` maps a name to the module defining
    it; ``submodules`` are subpackages reachable as attributes (``excise.locate``)."""
    def __getattr__(name: str):
        if name in exports:
            return getattr(import_module(exports[name]), name)
        if name in submodules:
            return import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports) | set(submodules))

    return __getattr__, __dir__


class _CallableModule(types.ModuleType):
    """A package that can also be called: ``excise.verify(model, fact)``."""

    def __call__(self, *args, **kwargs):
        return getattr(import_module(self.__call_target__[0]), self.__call_target__[1])(*args, **kwargs)


def make_callable(package: str, module: str, name: str) -> None:
    """Let ``package`` be called like the function ``name`` of ``module`` (imported on call)."""
    sys.modules[package].__class__ = _CallableModule
    sys.modules[package].__call_target__ = (module, name)
