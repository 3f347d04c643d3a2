"""A joint-space lens: each layer's EOT state scored as if the text tower stopped there.

    plain lens  f_l(c) = P(LN(h_l(c)))              h_l: the EOT residual after layer l (capture.py's
                                                     layers: 0 = embeddings, l + 1 = block l), LN and P
                                                     the tower's final LayerNorm and projection; f_L is
                                                     the model's own text feature.
    tuned lens  f_l(c) = P(LN(h_l(c) W_l + b_l))    one affine map per layer, ridge regression of h_L on
                                                     h_l over TRAINING captions only; W_L = I, b_L = 0.

Early states are off-distribution for LN and P (their directions are not the last layer's), so a
plain lens near chance says little; the tuned lens corrects the change of basis, and where it
reads a metric from a layer, the information is linearly there. Both are scored per layer on a
HeldOutSet (scoring.py): CC-Neg-style accuracy, scope accuracy and retrieval R@1.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from probing.measure.capture import capture_pooled
from probing.measure.scoring import HeldOutSet, value_rows
from probing.measure.settings import LENSES

LENS_COLUMNS = ("lens", "layer", "metric", "value", "ci_low", "ci_high", "n")


def fit_tuned_lens(states: np.ndarray, ridge: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Affine maps (W [L+1, d, d], b [L+1, d]) taking each layer's EOT state to the last layer's.

    states: [L + 1, N, d] EOT states of training captions. Ridge penalty: `ridge` times the mean
    eigenvalue of the centred Gram matrix, so it means the same at every layer whatever its norm.
    """
    n_layers, _, d = states.shape
    target = states[-1].astype(np.float64)
    target_mean = target.mean(0)
    weights, biases = np.empty((n_layers, d, d)), np.empty((n_layers, d))
    for layer in range(n_layers):
        x = states[layer].astype(np.float64)
        x_mean = x.mean(0)
        xc = x - x_mean
        gram = xc.T @ xc
        penalty = ridge * np.trace(gram) / d
        weights[layer] = np.linalg.solve(gram + penalty * np.eye(d), xc.T @ (target - target_mean))
        biases[layer] = target_mean - x_mean @ weights[layer]
    weights[-1], biases[-1] = np.eye(d), 0.0  # the last layer is read as it is
    return weights, biases


@torch.no_grad()
def lens_features(hooked, states: np.ndarray, maps: tuple[np.ndarray, np.ndarray] | None = None) -> torch.Tensor:
    """Normalised joint-space features [L + 1, n, embed_dim] of EOT states [L + 1, n, d] (tuned with `maps`)."""
    dtype = hooked.positional_embedding.dtype
    device = hooked.positional_embedding.device
    out = []
    for layer, state in enumerate(states):
        h = torch.as_tensor(np.asarray(state), dtype=torch.float64)
        if maps is not None:
            h = h @ torch.as_tensor(maps[0][layer]) + torch.as_tensor(maps[1][layer])
        features = hooked.tower.project(hooked.ln_final(h.to(device=device, dtype=dtype)))
        out.append(F.normalize(features.float(), dim=-1).cpu())
    return torch.stack(out)


def lens_rows(hooked, tokenizer: Callable[[Sequence[str]], torch.Tensor], held_out: HeldOutSet,
              train_captions: Sequence[str], *, lenses: Sequence[str] = LENSES, ridge: float = 1e-3,
              batch_size: int = 128, progress: bool = False) -> pd.DataFrame:
    """The held-out metrics of every layer under each lens: lens, layer, metric, value, ci_low, ci_high, n."""
    capture = lambda captions: capture_pooled(hooked, tokenizer, list(captions), batch_size=batch_size,
                                              progress=progress)
    states = capture(held_out.texts)
    maps = {"plain": None}
    if "tuned" in lenses:
        maps["tuned"] = fit_tuned_lens(capture(train_captions), ridge)
    rows = []
    for lens in lenses:
        for layer, features in enumerate(lens_features(hooked, states, maps[lens])):
            rows += [{"lens": lens, "layer": layer, **row} for row in value_rows(held_out.outcomes(features))]
    return pd.DataFrame(rows, columns=list(LENS_COLUMNS))
