"""The open_clip model itself: one loader for every open_clip name, tag, config file and checkpoint format;
the text tower; its TransformerLens view.

    loading.py     load_clip, read_checkpoint, save_clip_checkpoint, ModelLoadError, resolve_device
    compact.py     the portable token-embedding init, compact checkpoints and their SHA-256
    configs/       this package's open_clip configs (negclip-tiny, negclip-tiny-d6, negclip-micro)
    text_tower.py  TextTower: a uniform view of an open_clip text tower, exact padding trimming
    hooked.py      HookedCLIPText: TransformerLens hook points over that same tower

Which model a name means (the embedded models, checkpoints, tags) is decided one level up, by
probing.models.factory.create_model.
"""
from __future__ import annotations

from pathlib import Path

from probing.lazy import lazy_exports

CONFIGS = Path(__file__).parent / "configs"  # this package's open_clip model configs

_EXPORTS = {
    "load_clip": "probing.clip.loading",
    "ModelLoadError": "probing.clip.loading",
    "resolve_device": "probing.clip.loading",
    "read_checkpoint": "probing.clip.loading",
    "save_clip_checkpoint": "probing.clip.loading",
    "checkpoint_metadata": "probing.clip.loading",
    "TextTower": "probing.clip.text_tower",
    "HookedCLIPText": "probing.clip.hooked",
}

__getattr__, __dir__ = lazy_exports("probing.clip", _EXPORTS, globals())

__all__ = list(_EXPORTS)
