"""probing: load CLIP models, hook their text encoder, capture activations and measure negation per layer.

Heavy imports (torch, open_clip, transformer_lens) happen on first use of a name, so that command-line
`--help` stays instant.
"""
from __future__ import annotations

from probing.lazy import lazy_exports

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


__getattr__, __dir__ = lazy_exports("probing", _EXPORTS, globals())

__all__ = list(_EXPORTS)
