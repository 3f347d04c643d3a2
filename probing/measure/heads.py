"""Heads: where they attend, and what removing them costs.

Attention to the cue. On the caption of each pair that carries the role words (roles.py), for
every head: the attention weight from the EOT position to the cue's positions (summed over
them), and the same from the negated noun (averaged over its positions). Beside it, what uniform
attention over the visible keys would give (cue positions / (query position + 1)): a head
attends selectively to the negator when its weight is well above that (Quantmeyer et al. 2024).

Ablation. A head's output z (attn.hook_z) is replaced at every position by zero (zero-ablation)
or by its mean over the real positions of training captions (mean-ablation), for each of the top
heads alone and for all of them at once; the HeldOutSet metrics are compared with the intact model
(paired interval over items).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from probing.features.pixels import eval_mode
from probing.measure.probes import mean_ci
from probing.measure.roles import AlignedPair
from probing.measure.scoring import HeldOutSet, change_rows

ATTENTION_COLUMNS = ("kind", "layer", "head", "query", "attention", "ci_low", "ci_high", "uniform", "n")
ABLATION_COLUMNS = ("heads", "ablation", "metric", "value", "baseline", "change", "ci_low", "ci_high", "n")
QUERIES = ("eot", "negated")


def head_label(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


@torch.no_grad()
def attention_to_cue(hooked, pairs: Sequence[AlignedPair], kind: str, *, batch_size: int = 64) -> pd.DataFrame:
    """kind, layer, head, query (eot / negated), attention (mean over captions), its interval, uniform, n."""
    items = [p for p in pairs if "cue" in p.anchor_roles and "negated" in p.anchor_roles]
    if not items:
        return pd.DataFrame(columns=list(ATTENTION_COLUMNS))
    n_layers, n_heads = hooked.cfg.n_layers, hooked.cfg.n_heads
    weights = {query: [[[] for _ in range(n_heads)] for _ in range(n_layers)] for query in QUERIES}
    uniform = {query: [] for query in QUERIES}
    device = hooked.positional_embedding.device
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        tokens, cue, queries = _anchor_masks(chunk)
        visible = torch.tril(torch.ones(tokens.shape[1], tokens.shape[1]))
        visible = visible / visible.sum(-1, keepdim=True)  # uniform attention over keys <= query
        for query in QUERIES:
            uniform[query] += torch.einsum("bq,qk,bk->b", queries[query], visible, cue).tolist()
        seen = {}
        keep = lambda pattern, hook: seen.__setitem__(hook.layer(), pattern.float().cpu())
        hooks = [(f"blocks.{l}.attn.hook_pattern", keep) for l in range(n_layers)]
        with eval_mode(hooked):
            hooked.run_with_hooks(tokens.to(device), fwd_hooks=hooks)
        for layer, pattern in seen.items():  # pattern: [b, h, query, key]
            for query in QUERIES:
                per_head = torch.einsum("bhqk,bq,bk->bh", pattern, queries[query], cue)
                for head in range(n_heads):
                    weights[query][layer][head] += per_head[:, head].tolist()
    rows = []
    for query in QUERIES:
        for layer in range(n_layers):
            for head in range(n_heads):
                interval = mean_ci(weights[query][layer][head])
                rows.append({"kind": kind, "layer": layer, "head": head, "query": query, "attention": interval.mean,
                             "ci_low": interval.low, "ci_high": interval.high,
                             "uniform": float(np.mean(uniform[query])), "n": len(items)})
    return pd.DataFrame(rows, columns=list(ATTENTION_COLUMNS))


def _anchor_masks(pairs: Sequence[AlignedPair]) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Anchor tokens [b, p], cue indicator [b, p], and per query a row-normalised weight over positions."""
    tokens = [p.true_tokens if p.pair.anchor == "true" else p.false_tokens for p in pairs]
    length = max(len(t) for t in tokens)
    batch = torch.zeros(len(pairs), length, dtype=torch.long)
    masks = {role: torch.zeros(len(pairs), length) for role in ("cue", "negated", "eot")}
    for i, (pair, row) in enumerate(zip(pairs, tokens)):
        batch[i, :len(row)] = row
        for position, role in enumerate(pair.anchor_roles):
            if role in masks:
                masks[role][i, position] = 1.0
    queries = {"eot": masks["eot"], "negated": masks["negated"] / masks["negated"].sum(-1, keepdim=True)}
    return batch, masks["cue"], queries


@torch.no_grad()
def mean_head_outputs(hooked, tokenizer: Callable[[Sequence[str]], torch.Tensor], captions: Sequence[str], *,
                      batch_size: int = 128) -> torch.Tensor:
    """Each head's z averaged over the real positions (SOT..EOT) of `captions`: [n_layers, n_heads, d_head]."""
    n_layers = hooked.cfg.n_layers
    total = torch.zeros(n_layers, hooked.cfg.n_heads, hooked.cfg.d_head)
    count = 0
    device = hooked.positional_embedding.device
    for start in range(0, len(captions), batch_size):
        tokens = tokenizer(list(captions[start:start + batch_size])).to(device)
        eot = hooked.eot_positions(tokens)
        real = (torch.arange(int(eot.max()) + 1, device=device)[None, :] <= eot[:, None]).float()
        count += int(real.sum())

        def add(z, hook):  # z: [b, p, h, e]
            total[hook.layer()] += torch.einsum("bphe,bp->he", z.float(), real).cpu()

        with eval_mode(hooked):
            hooked.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{l}.attn.hook_z", add) for l in range(n_layers)])
    return total / count


def ablate_heads_hook(heads: Sequence[int], values: torch.Tensor | None):
    """A hook on attn.hook_z replacing the given heads' outputs by `values` [len(heads), d_head] (None: zero)."""
    def hook(z: torch.Tensor, hook) -> torch.Tensor:  # [b, p, h, e]
        z = z.clone()
        for i, head in enumerate(heads):
            z[:, :, head] = 0.0 if values is None else values[i].to(z)
        return z
    return hook


def ablation_rows(hooked, tokenizer: Callable[[Sequence[str]], torch.Tensor], held_out: HeldOutSet,
                  heads: Sequence[tuple[int, int]], means: torch.Tensor, *, batch_size: int = 128) -> pd.DataFrame:
    """Zero- and mean-ablation of each head alone and of all `heads` together, scored on `held_out`."""
    sets = [[head] for head in heads] + ([list(heads)] if len(heads) > 1 else [])
    variants, labels = [], []
    for chosen in sets:
        for ablation in ("zero", "mean"):
            hooks = []
            for layer in sorted({l for l, _ in chosen}):
                at = [h for l, h in chosen if l == layer]
                hooks.append((f"blocks.{layer}.attn.hook_z",
                              ablate_heads_hook(at, None if ablation == "zero" else means[layer, at])))
            variants.append(hooks)
            labels.append(("+".join(head_label(*head) for head in chosen), ablation))
    start = min((layer for layer, _ in heads), default=0)
    baseline, *ablated = held_out.score_variants(hooked, tokenizer, [[]] + variants, start_layer=start,
                                                 batch_size=batch_size)
    rows = []
    for (label, ablation), outcomes in zip(labels, ablated):
        rows += [{"heads": label, "ablation": ablation, **row} for row in change_rows(baseline, outcomes)]
    return pd.DataFrame(rows, columns=list(ABLATION_COLUMNS))
