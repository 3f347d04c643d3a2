"""Causal check: project a probe direction out of the residual stream and measure what breaks.

At layer index l (0 = embedding output = `blocks.0.hook_resid_pre`, l + 1 = `blocks.{l}.hook_resid_post`)
a forward hook replaces every position's residual r by r - (r . u) u for the unit probe direction u.
If the direction carries negation that later layers use, negation metrics drop while affirmative
retrieval stays; if it is a by-product, nothing changes.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from probing.measure.capture import resid_hook_names


def project_out_hook(direction: np.ndarray | torch.Tensor):
    """A TransformerLens hook that removes the component along `direction` (unit-normalised here)."""
    u = torch.as_tensor(np.asarray(direction), dtype=torch.float32)
    u = u / u.norm()

    def hook(resid: torch.Tensor, hook) -> torch.Tensor:  # resid: [batch, positions, d_model]
        unit = u.to(device=resid.device, dtype=resid.dtype)
        return resid - (resid @ unit)[..., None] * unit

    return hook


def text_encoder_with_hooks(hooked, tokenizer, fwd_hooks, batch_size: int = 256) -> Callable[[Sequence[str]], torch.Tensor]:
    """A function captions -> normalised text features computed with `fwd_hooks` active."""
    def encode(captions: Sequence[str]) -> torch.Tensor:
        device = hooked.positional_embedding.device
        out = []
        with torch.no_grad():
            for start in range(0, len(captions), batch_size):
                tokens = tokenizer(list(captions[start:start + batch_size])).to(device)
                out.append(hooked.run_with_hooks(tokens, fwd_hooks=fwd_hooks, normalize=True).float().cpu())
        return torch.cat(out)
    return encode


def projection_ablation(
    hooked,
    tokenizer,
    directions: dict[int, np.ndarray],
    evaluate: Callable[[Callable[[Sequence[str]], torch.Tensor]], dict[str, float]],
) -> list[dict]:
    """Metrics with each layer's direction projected out, beside the unablated metrics.

    directions: layer index -> probe direction in residual coordinates.
    evaluate: takes an `encode(captions) -> features` function and returns named metrics
    (e.g. CC-Neg-style accuracy, scope accuracy, retrieval R@1 against fixed image features).
    Returns one row per (layer, metric) with the value, the baseline and their difference.
    """
    names = resid_hook_names(hooked.cfg.n_layers)
    baseline = evaluate(text_encoder_with_hooks(hooked, tokenizer, []))
    rows = []
    for layer, direction in sorted(directions.items()):
        ablated = evaluate(text_encoder_with_hooks(hooked, tokenizer, [(names[layer], project_out_hook(direction))]))
        for metric, value in ablated.items():
            rows.append({"layer": layer, "metric": metric, "ablated": value,
                         "baseline": baseline[metric], "change": value - baseline[metric]})
    return rows
