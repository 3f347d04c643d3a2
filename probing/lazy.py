"""Lazy package exports: a name is imported from its module on first use, so that importing a
package (and running a command's `--help`) does not pay for torch, open_clip or transformer_lens."""
from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str], module_globals: dict) -> tuple[Callable, Callable]:
    """(__getattr__, __dir__) for `package`, resolving `exports` (name -> module) on demand."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(list(module_globals) + list(exports))

    return __getattr__, __dir__
