"""Where the toolkit keeps what it computes once and reuses: the user's cache folder.

    $CLIP_NEGATION_CACHE, else $XDG_CACHE_HOME/clip-negation-probe, else ~/.cache/clip-negation-probe

Built embedded models live in <cache>/embedded/ (probing.models.build), image features in
<cache>/image-features/ (probing.features.cache). Nothing here imports torch.
"""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$CLIP_NEGATION_CACHE, else $XDG_CACHE_HOME/clip-negation-probe, else ~/.cache/clip-negation-probe."""
    if os.environ.get("CLIP_NEGATION_CACHE"):
        return Path(os.environ["CLIP_NEGATION_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "clip-negation-probe"
