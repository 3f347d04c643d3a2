"""Held-out scoring of text-side interventions: CC-Neg-style accuracy, scope accuracy and retrieval.

A lens, a steering vector or an ablated head changes only the text side, so a `HeldOutSet` encodes
its images once and re-scores its captions per intervention (`score_variants`: hooks, with the
blocks before the first hooked one run once for all variants). Outcomes are kept per item, so that a
change against the unchanged model comes with a paired interval over the same items:

    ccneg_accuracy                 s(I, true caption) > s(I, presence-negated caption)
    scope_accuracy                 s(I, "A and no X") > s(I, "A and no B"), X absent, B present (chance 0.5)
    image_to_text_R@1_among_<g>    the scene's own caption is the most similar of g (consecutive groups of
                                   g scenes; g = 100 by default, as the synthetic suite reports it)

Pair metrics use the strict inequality (REFERENCE.md: a tie never counts as correct).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from probing.features.encode import encode_images
from probing.features.pixels import eval_mode
from probing.measure.probes import mean_ci
from probing.metrics import among_outcomes, check_normalized, pair_wins

RETRIEVAL = "image_to_text_R@1_among_"


@dataclass
class HeldOutSet:
    """Scenes with true and presence-negated captions, scope pairs, and their image features."""

    name: str
    scene_features: torch.Tensor  # [n, embed_dim], normalised
    captions: list[str]
    presence_negated: list[str]
    scope_features: torch.Tensor  # [m, embed_dim]
    scope_correct: list[str]
    scope_wrong: list[str]
    group: int = 100  # retrieval candidates

    def __post_init__(self):
        if len(self.captions) < self.group:
            raise ValueError(f"retrieval among {self.group} needs at least {self.group} scenes, "
                             f"got {len(self.captions)}")

    @classmethod
    def build(cls, model, preprocess, world, *, n: int = 200, split: str = "test", heldout="all",
              seed: int = 0, group: int = 100) -> "HeldOutSet":
        examples = world.examples(n, split, seed, heldout=heldout)
        pairs = world.scope_pairs(n, split, seed, heldout=heldout)
        return cls(f"{split}/{heldout}", encode_images(model, preprocess, [e.image for e in examples]),
                   [e.caption for e in examples], [e.presence_negated for e in examples],
                   encode_images(model, preprocess, [p.image for p in pairs]),
                   [p.correct for p in pairs], [p.wrong for p in pairs], group)

    def head(self, n: int) -> "HeldOutSet":
        """The first `n` scenes and scope pairs (for interventions too many to score on the whole set)."""
        return HeldOutSet(self.name, self.scene_features[:n], self.captions[:n], self.presence_negated[:n],
                          self.scope_features[:n], self.scope_correct[:n], self.scope_wrong[:n], self.group)

    @property
    def metrics(self) -> tuple[str, ...]:
        return ("ccneg_accuracy", "scope_accuracy", f"{RETRIEVAL}{self.group}")

    @property
    def texts(self) -> list[str]:
        """Every caption to encode, in the order `outcomes` expects."""
        return self.captions + self.presence_negated + self.scope_correct + self.scope_wrong

    def outcomes(self, text_features: torch.Tensor) -> dict[str, np.ndarray]:
        """Per-item 0/1 outcome of every metric, from the features of `texts` (normalised, same order)."""
        check_normalized(text_features, "text_features")
        n, m = len(self.captions), len(self.scope_correct)
        captions, presence, correct, wrong = torch.split(text_features.float().cpu(), [n, n, m, m])
        scenes = self.scene_features.float().cpu()
        return dict(zip(self.metrics, [
            pair_wins(scenes, captions, presence).numpy().astype(float),
            pair_wins(self.scope_features.float().cpu(), correct, wrong).numpy().astype(float),
            among_outcomes(scenes, captions, self.group, self.captions).numpy().astype(float),
        ]))

    def score_variants(self, hooked, tokenizer: Callable[[Sequence[str]], torch.Tensor],
                       variants: Sequence[Sequence[tuple]], *, start_layer: int = 0,
                       batch_size: int = 128) -> list[dict[str, np.ndarray]]:
        """Outcomes of the model under each variant, a list of TransformerLens hooks (name, hook).

        No hook may act before block `start_layer`: each batch runs those blocks once, shared by
        every variant (start_at_layer). Batches hold captions of similar length.
        """
        tokens = tokenizer(self.texts)
        order = torch.argsort(hooked.eot_positions(tokens), stable=True)
        device = hooked.positional_embedding.device
        features = torch.empty(len(variants), len(order), self.scene_features.shape[1])
        with torch.no_grad(), eval_mode(hooked):
            for start in range(0, len(order), batch_size):
                index = order[start:start + batch_size]
                batch = tokens[index].to(device)
                stream = hooked(batch, stop_at_layer=start_layer)
                for i, hooks in enumerate(variants):
                    out = hooked.run_with_hooks(batch, start_at_layer=start_layer, residual=stream,
                                                fwd_hooks=list(hooks), normalize=True)
                    features[i, index] = out.float().cpu()
        return [self.outcomes(f) for f in features]


def value_rows(outcomes: dict[str, np.ndarray]) -> list[dict]:
    """metric, value, ci_low, ci_high (t-interval over items), n."""
    rows = []
    for metric, hits in outcomes.items():
        interval = mean_ci(hits)
        rows.append({"metric": metric, "value": interval.mean, "ci_low": interval.low, "ci_high": interval.high,
                     "n": len(hits)})
    return rows


def change_rows(baseline: dict[str, np.ndarray], outcomes: dict[str, np.ndarray]) -> list[dict]:
    """metric, value, baseline, change, ci_low, ci_high (paired t-interval of the change over items), n."""
    rows = []
    for metric, hits in outcomes.items():
        interval = mean_ci(hits - baseline[metric])
        rows.append({"metric": metric, "value": float(hits.mean()), "baseline": float(baseline[metric].mean()),
                     "change": interval.mean, "ci_low": interval.low, "ci_high": interval.high, "n": len(hits)})
    return rows


def training_captions(world, n: int, seed: int = 0) -> list[str]:
    """Captions of the train split of the kinds a HeldOutSet scores (true, presence- and absence-negated,
    both scope captions): what the tuned lens and mean-ablation are fitted on, never evaluated on."""
    examples = world.examples(n, "train", seed)
    pairs = world.scope_pairs(n, "train", seed)
    return ([e.caption for e in examples] + [e.presence_negated for e in examples]
            + [e.absence_negated for e in examples] + [p.correct for p in pairs] + [p.wrong for p in pairs])
