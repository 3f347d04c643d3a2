"""probing: load CLIP models, hook their text encoder, capture activations and measure negation per layer.

    probing.clip       the open_clip model: loading any checkpoint format, the text tower, its hooked view
    probing.features   text and image features (token-budget batches, the image-feature cache)
    probing.data       real negation data: records, benchmark loaders, the rule-based negation generator
    probing.synthetic  the synthetic negation world: scenes, its evaluation suite
    probing.models     every model by name: create_model, the embedded models and their build
    probing.measure    per-layer measurements: capture, probes and tasks, sensitivity, gradient norms,
                       causal checks, patching, heads, lens, steering

Leaf modules every package may use: captions (caption grammar, negation cues), metrics (every score,
the tie rule), contrastive (CE / InfoNCE, the schedule), io (atomic writes), cache, vocabulary.
Inside probing imports point one way: leaves <- data, clip <- features <- synthetic <- models <- measure.

Heavy imports (torch, open_clip, transformer_lens) happen on first use of a name, so that command-line
`--help` stays instant.
"""
from __future__ import annotations

from probing.lazy import lazy_exports

# public name -> module that defines it
_EXPORTS = {
    "create_model": "probing.models.factory",
    "load_clip": "probing.clip.loading",
    "ModelLoadError": "probing.clip.loading",
    "TextTower": "probing.clip.text_tower",
    "HookedCLIPText": "probing.clip.hooked",
    "capture_pooled": "probing.measure.capture",
    "encode_captions": "probing.features.encode",
    "encode_images": "probing.features.encode",
}


__getattr__, __dir__ = lazy_exports("probing", _EXPORTS, globals())

__all__ = list(_EXPORTS)
