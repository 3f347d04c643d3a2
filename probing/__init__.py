"""probing: load CLIP models, hook their text encoder, capture activations and measure negation per layer.

    probing.models     loading (names, tags, checkpoint files, configs), the text tower, the hooked module
    probing.data       real negation data: records, benchmark loaders, the rule-based negation generator
    probing.synthetic  the synthetic negation world: scenes, captions, its evaluation suite
    probing.measure    per-layer measurements: capture, probes and tasks, sensitivity, gradient norms,
                       causal checks, and the metrics they are scored with

Heavy imports (torch, open_clip, transformer_lens) happen on first use of a name, so that command-line
`--help` stays instant.
"""
from __future__ import annotations

from probing.lazy import lazy_exports

# public name -> module that defines it
_EXPORTS = {
    "load_clip": "probing.models.loading",
    "ModelLoadError": "probing.models.loading",
    "TextTower": "probing.models.text_tower",
    "HookedCLIPText": "probing.models.hooked",
    "capture_pooled": "probing.measure.capture",
    "encode_captions": "probing.measure.encode",
    "encode_images": "probing.measure.encode",
}


__getattr__, __dir__ = lazy_exports("probing", _EXPORTS, globals())

__all__ = list(_EXPORTS)
