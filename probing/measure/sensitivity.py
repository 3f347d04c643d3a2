"""Representation sensitivity: how far a caption's pooled state moves under an edit, per layer.

Distances are cosine distances between pooled (EOT) states of a caption and its edited version.
To compare layers, each layer's distances are divided by that layer's typical distance between
two DIFFERENT captions (random pairs from the same set): 1.0 means "the edit moves the state as
far as swapping in an unrelated caption", 0.0 means "no change". Each row also keeps the raw mean
cosine distance (1 - the cosine Omni-NegCLIP reads per layer) and the relative change of the state's
norm (`norm_change`), which the baseline selectors of analysis.planning.selectors read.
"""
from __future__ import annotations

import numpy as np

from probing.measure.probes import Interval


def cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise 1 - cos(a_i, b_i) for [n, d] arrays."""
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return 1.0 - (a * b).sum(-1)


def norm_change(a: np.ndarray, b: np.ndarray) -> float:
    """Mean |‖b_i‖ - ‖a_i‖| over rows, relative to the mean ‖a_i‖: how much an edit changes the size of a
    caption's state at one layer ([n, d] each; the activation-norm score of analysis.planning.selectors)."""
    norm_a, norm_b = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    return float(np.abs(norm_b - norm_a).mean() / norm_a.mean())


def baseline_distance(features: np.ndarray, rng: np.random.Generator) -> float:
    """Mean cosine distance between random pairs of different captions at one layer ([n, d])."""
    n = len(features)
    if n < 2:
        raise ValueError("need at least two captions to compute the between-caption baseline")
    partner = (np.arange(n) + rng.integers(1, n, size=n)) % n  # never the caption itself
    return float(cosine_distance(features, features[partner]).mean())


def edit_sensitivity(
    base: np.ndarray,
    edits: dict[str, np.ndarray],
    *,
    seed: int = 0,
    n_boot: int = 1000,
    confidence: float = 0.95,
    distances: dict[str, np.ndarray] | None = None,
) -> list[dict]:
    """Standardised sensitivity per layer and edit, with a bootstrap interval over captions.

    base: [n_layers + 1, n, d] pooled states of the original captions; edits: name ->
    pooled states of the edited captions, aligned row by row with `base` (e.g. "presence",
    "absence", "control"). `distances`, if given, is filled with edit -> [n_layers + 1, n] the
    per-caption standardised distances (for tests that resample captions, analysis.planning.evidence).
    """
    rng = np.random.default_rng(seed)
    rows = []
    per_caption: dict[str, list[np.ndarray]] = {name: [] for name in edits}
    for layer in range(base.shape[0]):
        scale = baseline_distance(base[layer], rng)
        for name, edited in edits.items():
            if edited.shape != base.shape:
                raise ValueError(f"edit {name!r} has shape {edited.shape}, base has {base.shape}")
            standardised = cosine_distance(base[layer], edited[layer]) / scale
            per_caption[name].append(standardised)
            interval = _bootstrap_mean(standardised, rng, n_boot, confidence)
            rows.append({"layer": layer, "edit": name, "sensitivity": interval.mean,
                         "ci_low": interval.low, "ci_high": interval.high,
                         "raw_distance": float(standardised.mean() * scale), "baseline_distance": scale,
                         "norm_change": norm_change(base[layer], edited[layer])})
    if distances is not None:
        distances.update({name: np.stack(values).astype(np.float32) for name, values in per_caption.items()})
    return rows


def _bootstrap_mean(values: np.ndarray, rng, n_boot: int, confidence: float) -> Interval:
    draws = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(1)
    alpha = (1 - confidence) / 2
    return Interval(float(values.mean()), float(np.quantile(draws, alpha)), float(np.quantile(draws, 1 - alpha)))
