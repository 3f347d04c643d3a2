"""Activation patching and attribution patching over (block, token role) and per head, on HookedCLIPText.

Metric. For a pair (image I, true caption T, false caption F) a text run x scores its cosine
similarity to the image, m(x) = <I, t(x) / |t(x)|>. T is the clean run, F the corrupted run, and
the gap g = m(T) - m(F) is what the model's choice between the two captions rests on.

Cells. (component, layer, role[, head]): component "resid" patches blocks.{l}.hook_resid_pre (the
residual stream entering block l; l = 0 is the embeddings), "attn" hook_attn_out and "mlp"
hook_mlp_out of block l, "head" attn.hook_z of head h of block l. The activation is copied at the
role's aligned positions (roles.py) from a source run into a target run:
    denoising: source = clean, target = corrupted;   noising: source = corrupted, target = clean.

Exact patching runs the target with the patch (a TransformerLens hook; the run starts at the
patched block from the target's cached residual stream, `start_at_layer`, since the blocks
before it cannot change) and records the change d = m(patched) - m(target). Attribution patching
(the gradient approximation) estimates it at first order from one forward and one backward per
run (TransformerLens's `cache_activation_and_gradient`):
    d ~ sum over the role's positions p of (a_source[p'] - a_target[p]) . dm/da_target[p].

Normalisation, as a ratio of means over the pairs for which the role is patchable (one pair with
a tiny gap cannot dominate):
    score  = sum_i (m_target_i + d_i - m(F_i)) / sum_i g_i     0 = corrupted run, 1 = clean run
    effect = score when denoising, 1 - score when noising: the share of the gap a patch restores
             (denoising) or destroys (noising).
Intervals: percentile bootstrap over pairs, the same resampled pairs in numerator and denominator.
Attribution vs exact: Spearman rank correlation of the effects over cells.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from transformer_lens import ActivationCache
from transformer_lens.tools.analysis.attribution_patching import cache_activation_and_gradient
from transformer_lens.utilities import get_act_name

from probing.features.pixels import eval_mode
from probing.measure.roles import ALL, ROLES, AlignedPair
from probing.measure.settings import PATCH_COMPONENTS, PATCH_METHODS

COMPONENTS = PATCH_COMPONENTS
DIRECTIONS = ("denoise", "noise")
METHODS = PATCH_METHODS
PATCHING_COLUMNS = ("kind", "method", "direction", "component", "layer", "role", "head", "effect", "ci_low",
                    "ci_high", "score", "n_pairs")


@dataclass
class PairBatch:
    """Aligned pairs as tensors: tokens of both runs, image features, and per role the flat patch indices."""

    pairs: list[AlignedPair]
    true_tokens: torch.Tensor  # [n, p_true], trimmed, zero after EOT
    false_tokens: torch.Tensor  # [n, p_false]
    image_features: torch.Tensor  # [n, embed_dim], normalised

    @classmethod
    def build(cls, pairs: Sequence[AlignedPair], image_features: torch.Tensor, device) -> "PairBatch":
        def stack(rows):
            out = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.long)
            for i, row in enumerate(rows):
                out[i, :len(row)] = row
            return out.to(device)
        return cls(list(pairs), stack([p.true_tokens for p in pairs]), stack([p.false_tokens for p in pairs]),
                   image_features.to(device))

    def runs(self, direction: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(source tokens, target tokens)."""
        runs = (self.true_tokens, self.false_tokens)
        return runs if direction == "denoise" else runs[::-1]

    def index(self, role: str, direction: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pair rows, source positions, target positions) of every patched position of `role`."""
        rows, true, false = [], [], []
        for i, pair in enumerate(self.pairs):
            if role in pair.positions:
                t, f = pair.positions[role]
                rows += [i] * len(t)
                true += list(t)
                false += list(f)
        rows, true, false = (torch.tensor(x, dtype=torch.long) for x in (rows, true, false))
        return (rows, true, false) if direction == "denoise" else (rows, false, true)

    def defined(self, role: str) -> np.ndarray:
        return np.array([role in pair.positions for pair in self.pairs])

    def metric(self, features: torch.Tensor) -> torch.Tensor:
        """m(x) per pair: cosine similarity of the run's text features with the pair's image."""
        return (F.normalize(features.float(), dim=-1) * self.image_features).sum(-1)


def patch_cells(n_layers: int, n_heads: int, components: Sequence[str], roles: Sequence[str] = ROLES,
                head_roles: Sequence[str] = (ALL,), layers: Sequence[int] | None = None) -> pd.DataFrame:
    """The cells patched: component, layer, role, head (<NA> except for heads), in a fixed order.

    layers: the blocks to patch (default all; a full-size model may take a few with exact patching).
    """
    rows = []
    for component in components:
        if component not in COMPONENTS:
            raise ValueError(f"unknown component {component!r}; choose from {list(COMPONENTS)}")
        for layer in (range(n_layers) if layers is None else layers):
            if component == "head":
                rows += [(component, layer, role, head) for head in range(n_heads) for role in head_roles]
            else:
                rows += [(component, layer, role, None) for role in roles]
    cells = pd.DataFrame(rows, columns=["component", "layer", "role", "head"])
    cells["head"] = cells["head"].astype("Int64")
    return cells


@dataclass
class PatchRuns:
    """Raw per-pair results of one kind of pairs: d per (method, direction) as [cells, pairs]."""

    cells: pd.DataFrame
    deltas: dict[tuple[str, str], np.ndarray]
    defined: np.ndarray  # [cells, pairs] bool
    clean: np.ndarray  # m(T) per pair
    corrupted: np.ndarray  # m(F) per pair

    @staticmethod
    def concat(parts: Sequence["PatchRuns"]) -> "PatchRuns":
        first = parts[0]
        deltas = {key: np.concatenate([p.deltas[key] for p in parts], axis=1) for key in first.deltas}
        return PatchRuns(first.cells, deltas, np.concatenate([p.defined for p in parts], axis=1),
                         np.concatenate([p.clean for p in parts]), np.concatenate([p.corrupted for p in parts]))


def patch_batch(hooked, batch: PairBatch, cells: pd.DataFrame, methods: Sequence[str] = METHODS,
                directions: Sequence[str] = DIRECTIONS) -> PatchRuns:
    """Exact and/or attribution patching of every cell in both directions, for one batch of pairs.

    Each run (clean, corrupted) is cached once, only at the hooks the cells patch; with attribution
    the same pass also keeps the metric's gradients there.
    """
    unknown = set(methods) - set(METHODS) or set(directions) - set(DIRECTIONS)
    if unknown:
        raise ValueError(f"unknown methods or directions {sorted(unknown)}")
    names = sorted({_hook_name(row.component, row.layer) for row in cells.itertuples()}
                   | {_hook_name("resid", layer) for layer in cells["layer"]})
    deltas = {}
    with eval_mode(hooked):
        runs = {run: _cache_run(hooked, batch, tokens, names, "attribution" in methods)
                for run, tokens in (("true", batch.true_tokens), ("false", batch.false_tokens))}
        for direction in directions:
            source, target = ("true", "false") if direction == "denoise" else ("false", "true")
            if "exact" in methods:
                patched = _exact(hooked, batch, cells, direction, runs[source][0], runs[target][0])
                deltas[("exact", direction)] = patched - runs[target][2]
            if "attribution" in methods:
                deltas[("attribution", direction)] = _attribution(batch, cells, direction, runs[source], runs[target])
    defined = np.stack([batch.defined(role) for role in cells["role"]])
    return PatchRuns(cells, {key: value.numpy() for key, value in deltas.items()}, defined,
                     runs["true"][2].numpy(), runs["false"][2].numpy())


def _hook_name(component: str, layer: int) -> str:

    return get_act_name(COMPONENTS[component], layer)


def _cache_run(hooked, batch: PairBatch, tokens: torch.Tensor, names: list[str], gradients: bool):
    """(activations, gradients or None, m per pair) of one run, cached only at `names`."""

    values = []

    def metric(features):
        values.append(batch.metric(features))
        return values[-1].sum()  # pairs are independent: d(sum)/d(a_i) = dm_i/da_i

    if gradients:
        # frozen weights would leave no graph to differentiate: make the embeddings a leaf that needs grad
        track = ("hook_embed", lambda x, hook: x.detach().requires_grad_(True))
        with torch.enable_grad(), hooked.hooks(fwd_hooks=[track]):
            cached = cache_activation_and_gradient(hooked, tokens, metric, names_filter=names)
        return ActivationCache(cached.activations, hooked), cached.gradients, values[-1].detach().cpu()
    with torch.no_grad():
        features, cache = hooked.run_with_cache(tokens, names_filter=names)
    return cache, None, batch.metric(features).cpu()


def _exact(hooked, batch: PairBatch, cells: pd.DataFrame, direction: str, source_cache, target_cache) -> torch.Tensor:
    """m(patched target) per cell and pair: [cells, pairs].

    Each patched run starts at the cell's block from the target's cached residual stream (the
    blocks before it are unchanged by the patch), with one TransformerLens hook doing the patch.
    """
    _, target_tokens = batch.runs(direction)
    indices = {role: batch.index(role, direction) for role in dict.fromkeys(cells["role"])}
    out = torch.empty(len(cells), len(batch.pairs))
    for row in cells.itertuples():
        rows, source_pos, target_pos = indices[row.role]
        name = _hook_name(row.component, row.layer)
        source = source_cache[name]
        at = (rows, target_pos) if row.component != "head" else (rows, target_pos, int(row.head))
        take = (rows, source_pos) if row.component != "head" else (rows, source_pos, int(row.head))

        def patch(activation, hook, at=at, take=take, source=source):
            activation = activation.clone()  # may be the cached stream the run started from
            activation[at] = source[take]
            return activation

        with torch.no_grad():
            features = hooked.run_with_hooks(target_tokens, start_at_layer=row.layer,
                                             residual=target_cache[_hook_name("resid", row.layer)],
                                             fwd_hooks=[(name, patch)])
        out[row.Index] = batch.metric(features).cpu()
    return out


def _attribution(batch: PairBatch, cells: pd.DataFrame, direction: str, source_run, target_run) -> torch.Tensor:
    """First-order estimate of d per cell and pair: [cells, pairs]."""
    source, _, _ = source_run
    target, gradients, _ = target_run
    n = len(batch.pairs)
    indices = {role: batch.index(role, direction) for role in dict.fromkeys(cells["role"])}
    out = torch.zeros(len(cells), n)
    for row in cells.itertuples():
        name = _hook_name(row.component, row.layer)
        rows, source_pos, target_pos = indices[row.role]
        a_source, a_target = source[name][rows, source_pos], target[name][rows, target_pos]
        grad = gradients[name][rows, target_pos]
        if row.component == "head":
            a_source, a_target, grad = a_source[:, row.head], a_target[:, row.head], grad[:, row.head]
        contribution = ((a_source - a_target) * grad).sum(-1).float().cpu()
        out[row.Index] = torch.zeros(n).index_add_(0, rows, contribution)
    return out


def summarise(runs: PatchRuns, kind: str, *, n_boot: int = 1000, confidence: float = 0.95,
              seed: int = 0) -> pd.DataFrame:
    """One row per (method, direction, cell): effect with its bootstrap interval, score, n_pairs."""
    gap = runs.clean - runs.corrupted
    frames = []
    for (method, direction), delta in runs.deltas.items():
        sign = 1.0 if direction == "denoise" else -1.0
        effect, low, high = ratio_of_sums(sign * delta, gap, runs.defined, n_boot=n_boot, confidence=confidence,
                                          seed=seed)
        frame = runs.cells.copy()
        frame.insert(0, "direction", direction)
        frame.insert(0, "method", method)
        frame.insert(0, "kind", kind)
        frame["effect"], frame["ci_low"], frame["ci_high"] = effect, low, high
        frame["score"] = effect if direction == "denoise" else 1.0 - effect
        frame["n_pairs"] = runs.defined.sum(1)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)[list(PATCHING_COLUMNS)]


def ratio_of_sums(numerators: np.ndarray, denominators: np.ndarray, mask: np.ndarray, *, n_boot: int = 1000,
                  confidence: float = 0.95, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """sum_i x_ci / sum_i g_i over the masked pairs of each cell c, with a percentile bootstrap over pairs.

    numerators: [cells, n]; denominators: [n]; mask: [cells, n]. Cells without pairs give NaN.
    """
    x = np.where(mask, numerators, 0.0)
    g = mask * denominators[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        point = x.sum(1) / g.sum(1)
        n = x.shape[1]
        draws = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
        counts = np.zeros((n_boot, n))
        np.add.at(counts, (np.repeat(np.arange(n_boot), n), draws.ravel()), 1)
        boot = (x @ counts.T) / (g @ counts.T)  # [cells, n_boot]
    boot[~np.isfinite(boot)] = np.nan
    alpha = (1 - confidence) / 2
    empty = ~np.isfinite(boot).any(1)
    low = np.full(len(x), np.nan)
    high = np.full(len(x), np.nan)
    low[~empty] = np.nanquantile(boot[~empty], alpha, axis=1)
    high[~empty] = np.nanquantile(boot[~empty], 1 - alpha, axis=1)
    return np.where(mask.any(1), point, np.nan), low, high


def agreement(patching: pd.DataFrame) -> pd.DataFrame:
    """Spearman rank correlation of attribution against exact effects over cells, per kind and direction,
    over all cells and per component."""

    keys = ["kind", "direction", "component", "layer", "role", "head"]
    exact = patching[patching["method"] == "exact"]
    approx = patching[patching["method"] == "attribution"]
    both = exact.merge(approx, on=keys, suffixes=("_exact", "_attribution")).dropna(
        subset=["effect_exact", "effect_attribution"])
    rows = []
    for (kind, direction), group in both.groupby(["kind", "direction"], sort=False):
        for component, part in [("all", group), *group.groupby("component", sort=False)]:
            if len(part) >= 3:
                rho = spearmanr(part["effect_exact"], part["effect_attribution"]).statistic
                rows.append({"kind": kind, "direction": direction, "component": component, "spearman": float(rho),
                             "n_cells": len(part)})
    return pd.DataFrame(rows, columns=["kind", "direction", "component", "spearman", "n_cells"])


def pair_summary(runs: PatchRuns, kind: str, n_skipped: int) -> dict:
    """How the model does on the pairs themselves: accuracy m(T) > m(F) and the mean gap."""
    gap = runs.clean - runs.corrupted
    return {"kind": kind, "n_pairs": len(gap), "n_skipped": n_skipped, "accuracy": float((gap > 0).mean()),
            "mean_gap": float(gap.mean()), "mean_clean": float(runs.clean.mean()),
            "mean_corrupted": float(runs.corrupted.mean())}


def preferred_method(patching: pd.DataFrame) -> str:
    """'exact' when the table has exact patching, else 'attribution'."""
    return "exact" if (patching["method"] == "exact").any() else "attribution"


def top_heads(patching: pd.DataFrame, k: int, role: str = ALL) -> list[tuple[int, int]]:
    """The k heads with the largest mean patching effect (over pair kinds and both directions)."""
    heads = patching[(patching["component"] == "head") & (patching["role"] == role)
                     & (patching["method"] == preferred_method(patching))]
    mean = heads.groupby(["layer", "head"])["effect"].mean().sort_values(ascending=False, kind="stable")
    return [(int(layer), int(head)) for layer, head in mean.index[:k]]


def block_effects(patching: pd.DataFrame, direction: str = "denoise") -> pd.DataFrame:
    """Per block: the largest effect over roles of its attention and its MLP output (mean over pair
    kinds), and the larger of the two (`best`) - patching as per-block evidence."""
    rows = patching[(patching["component"].isin(["attn", "mlp"])) & (patching["direction"] == direction)
                    & (patching["method"] == preferred_method(patching))]
    per_role = rows.groupby(["component", "layer", "role"])["effect"].mean()
    best = per_role.groupby(["component", "layer"]).max().unstack("component")
    best["best"] = best.max(axis=1)
    return best.rename_axis(index="block", columns=None).reset_index()
