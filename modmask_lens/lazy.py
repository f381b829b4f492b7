"""Package namespaces that import their members on first use (PEP 562), so that ``import modmask_lens`` and
``modmask-lens --help`` do not import torch, transformers and TransformerLens before anything needs them."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """A module ``__getattr__`` and ``__dir__`` for ``package`` that import ``exports`` (name -> module) on first
    use and keep each one in the package afterwards.

    Example:
        >>> getattr_, dir_ = lazy_exports("modmask_lens", {"MaskConfig": "modmask_lens.masks.config"})
        >>> getattr_("MaskConfig").__name__
        'MaskConfig'
    """

    def __getattr__(name: str) -> object:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(exports) | set(vars(sys.modules[package])))

    return __getattr__, __dir__
