"""Every model the toolkit runs on, by name.

    factory.py   create_model(name, pretrained) -> ModelBundle: the one place every model name is resolved
                 (the embedded models, open_clip names, config files, tags, checkpoint files)
    embedded.py  the embedded models' registry: every `embedded:<name>` and the spec that builds it (no torch)
    build.py     pretraining an embedded model on the synthetic negation world, into the user's cache
    shipped/     the shipped embedded models' weights
"""
from __future__ import annotations

from pathlib import Path

from probing.lazy import lazy_exports

SHIPPED = Path(__file__).parent / "shipped"  # the shipped embedded models' weights (probing.models.embedded)

_EXPORTS = {
    "create_model": "probing.models.factory",
    "ModelBundle": "probing.models.factory",
}

__getattr__, __dir__ = lazy_exports("probing.models", _EXPORTS, globals())

__all__ = list(_EXPORTS)
