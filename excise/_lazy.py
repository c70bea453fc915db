"""Lazy package exports: names resolve to their defining module on first use (PEP 562).

Keeps ``import excise`` (and its subpackages) free of torch/transformers imports until a name
that needs them is touched, so the CLI's ``--help`` and fact validation stay fast.
"""

from __future__ import annotations

from importlib import import_module


def lazy_exports(package: str, exports: dict[str, str]):
    """A module-level ``__getattr__`` serving ``exports`` (name -> module defining it)."""
    def __getattr__(name: str):
        if name in exports:
            return getattr(import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return __getattr__
