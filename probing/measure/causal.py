"""Causal check: project a probe direction out of the residual stream and measure what breaks.

At layer index l (0 = embedding output = `blocks.0.hook_resid_pre`, l + 1 = `blocks.{l}.hook_resid_post`)
a forward hook replaces every position's residual r by r - (r . u) u for the unit probe direction u.
If the direction carries negation that later layers use, negation metrics drop while affirmative
retrieval stays; if it is a by-product, nothing changes.

How it runs (`AblatedText`): every caption is encoded once per batch of length-sorted captions with
the residual stream kept at each ablated layer index; the ablation at index l then runs only the
blocks after it, from that kept state with the direction projected out. That is the hooked run with
the projection hook at l, minus the blocks before l, whose output it reuses: the same operations
on the same numbers (tests compare it with the hooked full run). Features are kept per caption, so
captions an evaluation asks for again are not encoded again.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from probing.features.batching import DEFAULT_TOKEN_BUDGET, token_batches
from probing.features.pixels import eval_mode
from probing.measure.capture import resid_hook_names


def project_out_hook(direction: np.ndarray | torch.Tensor):
    """A TransformerLens hook that removes the component along `direction` (unit-normalised here)."""
    u = torch.as_tensor(np.asarray(direction), dtype=torch.float32)
    u = u / u.norm()

    def hook(resid: torch.Tensor, hook) -> torch.Tensor:  # resid: [batch, positions, d_model]
        unit = u.to(device=resid.device, dtype=resid.dtype)
        return resid - (resid @ unit)[..., None] * unit

    return hook


def text_encoder_with_hooks(hooked, tokenizer, fwd_hooks, *, token_budget: int | None = DEFAULT_TOKEN_BUDGET,
                            batch_size: int | None = None) -> Callable[[Sequence[str]], torch.Tensor]:
    """A function captions -> normalised text features computed with `fwd_hooks` active (the full
    hooked run, in length-sorted token-budget batches)."""
    def encode(captions: Sequence[str]) -> torch.Tensor:
        device = hooked.positional_embedding.device
        tokens = tokenizer(list(captions))
        out = None
        with torch.no_grad(), eval_mode(hooked):
            for index in token_batches(hooked.eot_positions(tokens) + 1, token_budget, batch_size):
                index = torch.from_numpy(index)
                batch = hooked.run_with_hooks(tokens[index].to(device), fwd_hooks=fwd_hooks, normalize=True)
                batch = batch.float().cpu()
                if out is None:
                    out = torch.empty(len(captions), batch.shape[1])
                out[index] = batch
        return out
    return encode


class AblatedText:
    """Normalised text features with one layer's direction projected out, for every layer at once.

    `encoder(layer)` is a function captions -> features [n, embed_dim] with the direction of `layer`
    projected out (`encoder(None)`: no ablation). Features are computed the first time any encoder
    sees a caption, for the baseline and every layer together, and kept.
    """

    def __init__(self, hooked, tokenizer, directions: dict[int, np.ndarray], *,
                 token_budget: int | None = DEFAULT_TOKEN_BUDGET, batch_size: int | None = None):
        n_layers = hooked.cfg.n_layers
        if any(not 0 <= layer <= n_layers for layer in directions):
            raise ValueError(f"layer indices run from 0 (embedding output) to {n_layers}, got {sorted(directions)}")
        self.hooked, self.tokenizer = hooked, tokenizer
        self.layers = sorted(directions)
        self.hooks = {layer: project_out_hook(directions[layer]) for layer in self.layers}
        self.token_budget, self.batch_size = token_budget, batch_size
        self.features: dict[str, torch.Tensor] = {}  # caption -> [1 + len(layers), embed_dim]

    def encoder(self, layer: int | None) -> Callable[[Sequence[str]], torch.Tensor]:
        slot = 0 if layer is None else 1 + self.layers.index(layer)

        def encode(captions: Sequence[str]) -> torch.Tensor:
            self._compute([c for c in dict.fromkeys(captions) if c not in self.features])
            return torch.stack([self.features[caption][slot] for caption in captions])
        return encode

    def _compute(self, captions: list[str]) -> None:
        if not captions:
            return
        hooked = self.hooked
        tokens = self.tokenizer(captions)
        with torch.no_grad(), eval_mode(hooked):
            for index in token_batches(hooked.eot_positions(tokens) + 1, self.token_budget, self.batch_size):
                batch = self._batch(tokens[torch.from_numpy(index)].to(hooked.positional_embedding.device))
                for row, caption in zip(batch.cpu().unbind(1), (captions[i] for i in index)):
                    self.features[caption] = row

    def _batch(self, tokens: torch.Tensor) -> torch.Tensor:
        """[1 + len(layers), batch, embed_dim]: the baseline, then each layer's ablation."""
        hooked = self.hooked
        names = resid_hook_names(hooked.cfg.n_layers)
        kept: dict[int, torch.Tensor] = {}
        keep = {names[layer]: layer for layer in self.layers}

        def hook(resid: torch.Tensor, hook) -> None:
            kept[keep[hook.name]] = resid
        out = [hooked.run_with_hooks(tokens, fwd_hooks=[(name, hook) for name in keep], normalize=True).float()]
        # the rest of HookedCLIPText.forward, from the kept state: blocks after the layer, ln_final, EOT, projection
        eot = hooked.eot_positions(tokens)
        length = int(eot.max()) + 1
        dtype = hooked.positional_embedding.dtype
        mask = hooked.tower.attn_mask[:length, :length].to(device=tokens.device, dtype=dtype)
        for layer in self.layers:
            resid = self.hooks[layer](kept[layer], None)
            for block in hooked.blocks[layer:]:
                resid = block(resid, mask)
            pooled = hooked.ln_final(resid)[torch.arange(tokens.shape[0], device=tokens.device), eot]
            out.append(F.normalize(hooked.tower.project(pooled), dim=-1).float())
        return torch.stack(out)


def projection_ablation(
    hooked,
    tokenizer,
    directions: dict[int, np.ndarray],
    evaluate: Callable[[Callable[[Sequence[str]], torch.Tensor]], dict[str, float]],
    *,
    token_budget: int | None = DEFAULT_TOKEN_BUDGET,
) -> list[dict]:
    """Metrics with each layer's direction projected out, beside the unablated metrics.

    directions: layer index -> probe direction in residual coordinates.
    evaluate: takes an `encode(captions) -> features` function and returns named metrics
    (e.g. CC-Neg-style accuracy, scope accuracy, retrieval R@1 against fixed image features).
    Returns one row per (layer, metric) with the value, the baseline and their difference.
    """
    text = AblatedText(hooked, tokenizer, directions, token_budget=token_budget)
    baseline = evaluate(text.encoder(None))
    rows = []
    for layer in text.layers:
        ablated = evaluate(text.encoder(layer))
        for metric, value in ablated.items():
            rows.append({"layer": layer, "metric": metric, "ablated": value,
                         "baseline": baseline[metric], "change": value - baseline[metric]})
    return rows
