"""Models: one loader for every open_clip name, tag, config file and checkpoint; the text tower; its
TransformerLens view.

    loading.py     load_clip, read_checkpoint, save_clip_checkpoint, ModelLoadError, resolve_device
    huggingface.py Hugging Face transformers CLIPModel checkpoints, converted exactly into open_clip's CLIP
    errors.py      ModelLoadError (a leaf, so that loading and huggingface can both raise it)
    weights.py     the portable token-embedding init, compact checkpoints and their SHA-256
    configs/       this package's open_clip configs (negclip-tiny, negclip-micro)
    text_tower.py  TextTower: a uniform view of an open_clip text tower, exact padding trimming
    hooked.py      HookedCLIPText: TransformerLens hook points over that same tower
"""
from __future__ import annotations

from probing.lazy import lazy_exports

_EXPORTS = {
    "load_clip": "probing.models.loading",
    "ModelLoadError": "probing.models.loading",
    "resolve_device": "probing.models.loading",
    "read_checkpoint": "probing.models.loading",
    "save_clip_checkpoint": "probing.models.loading",
    "checkpoint_metadata": "probing.models.loading",
    "TextTower": "probing.models.text_tower",
    "HookedCLIPText": "probing.models.hooked",
}

__getattr__, __dir__ = lazy_exports("probing.models", _EXPORTS, globals())

__all__ = list(_EXPORTS)
