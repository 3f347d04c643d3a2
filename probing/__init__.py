"""probing: load CLIP models, hook their text encoder, capture activations and measure negation per layer.

Heavy imports (torch, open_clip, transformer_lens) happen on first use of a name, so that command-line
`--help` stays instant.
"""
from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it
_EXPORTS = {
    "load_clip": "probing.models",
    "ModelLoadError": "probing.models",
    "TextTower": "probing.text_tower",
    "HookedCLIPText": "probing.hooked",
    "capture_pooled": "probing.capture",
    "encode_captions": "probing.encode",
    "encode_images": "probing.encode",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'probing' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = list(_EXPORTS)
