"""The synthetic world's evaluation suite: affirmative skills and the two negation metrics.

Built once from a world (images rendered, captions written), then evaluated on any model, or on
any text encoder passed as a function (the causal check uses that to evaluate with hooks on).

Metrics (REFERENCE.md):
- zero-shot top-1 over the world's object classes, over shapes only and colours only, with
  affirmative prompts "a photo of a {c}" and with negated prompts "not a photo of a {c}"
  (CLIP ignores the "not": both give about the same accuracy), and their gap;
- image->text and text->image R@1 among 100 candidates (affirmative captions);
- CC-Neg-style accuracy: s(I, true caption) > s(I, presence-negated caption);
- scope accuracy (shortcut-proof): s(I, "A and no X") > s(I, "A and no B"), X absent, B present;
- absence accuracy: s(I, absence-negated caption) > s(I, presence-negated caption).
The negation metrics are also broken down by cue word.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from probing.measure.encode import encode_captions, encode_images
from probing.measure.metrics import pair_wins, recall_at_k, zero_shot_accuracy

TextEncoder = Callable[[Sequence[str]], torch.Tensor]


@dataclass
class SyntheticSuite:
    """Rendered evaluation data of one split and held-out setting."""

    name: str
    class_images: np.ndarray  # [n, H, W, 3], single objects
    class_labels: dict[str, np.ndarray]  # "object" / "shape" / "colour" -> labels
    prompts: dict[str, list[str]]
    images: np.ndarray  # [n, H, W, 3] scenes of the NegationExamples
    captions: list[str]
    presence_negated: list[str]
    absence_negated: list[str]
    example_cues: list[str]
    scope_images: np.ndarray
    scope_correct: list[str]
    scope_wrong: list[str]
    scope_cues: list[str]

    @classmethod
    def build(cls, world, *, n: int = 1000, n_classification: int = 720, split: str = "test",
              heldout: str = "all", seed: int = 0) -> "SyntheticSuite":
        examples = world.examples(n, split, seed, heldout=heldout)
        pairs = world.scope_pairs(n, split, seed, heldout=heldout)
        class_images, object_labels = world.classification_set(n_classification, split, seed, label="object")
        classes = world.class_prompts()
        shapes = [classes["shape_classes"].index(name.split(" ", 1)[1]) for name in np.array(classes["classes"])[object_labels]]
        colours = [classes["colour_classes"].index(name.split(" ", 1)[0]) for name in np.array(classes["classes"])[object_labels]]
        return cls(
            name=f"{split}/{heldout}",
            class_images=class_images,
            class_labels={"object": object_labels, "shape": np.array(shapes), "colour": np.array(colours)},
            prompts=classes,
            images=np.stack([e.image for e in examples]),
            captions=[e.caption for e in examples],
            presence_negated=[e.presence_negated for e in examples],
            absence_negated=[e.absence_negated for e in examples],
            example_cues=[e.cue for e in examples],
            scope_images=np.stack([p.image for p in pairs]),
            scope_correct=[p.correct for p in pairs],
            scope_wrong=[p.wrong for p in pairs],
            scope_cues=[p.cue for p in pairs],
        )

    def image_features(self, model, preprocess) -> dict[str, torch.Tensor]:
        """Image features of the suite (compute once, reuse across text-side interventions)."""
        return {key: encode_images(model, preprocess, list(images))
                for key, images in (("class", self.class_images), ("scenes", self.images), ("scope", self.scope_images))}

    def evaluate(self, model, preprocess, tokenizer, *, encode_text: TextEncoder | None = None,
                 image_features: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
        """All metrics as a flat dict; `encode_text` overrides the model's text encoder."""
        encode = encode_text or (lambda captions: encode_captions(model, tokenizer, captions))
        images = image_features or self.image_features(model, preprocess)
        results: dict[str, float] = {}
        for label, prefix in (("object", ""), ("shape", "shape_"), ("colour", "colour_")):
            for kind in ("affirmative", "negated"):
                prompts = encode(self.prompts[f"{prefix}{kind}"])
                accuracy = zero_shot_accuracy(images["class"], prompts, self.class_labels[label])
                results[f"zero_shot_{label}_{kind}"] = accuracy
            results[f"negated_prompt_gap_{label}"] = (results[f"zero_shot_{label}_affirmative"]
                                                      - results[f"zero_shot_{label}_negated"])
        captions = encode(self.captions)
        results.update(recall_among(images["scenes"], captions, group=100))
        presence, absence = encode(self.presence_negated), encode(self.absence_negated)
        _add_pair_metric(results, "ccneg_accuracy", pair_wins(images["scenes"], captions, presence), self.example_cues)
        _add_pair_metric(results, "absence_accuracy", pair_wins(images["scenes"], absence, presence), self.example_cues)
        scope = pair_wins(images["scope"], encode(self.scope_correct), encode(self.scope_wrong))
        _add_pair_metric(results, "scope_accuracy", scope, self.scope_cues)
        return results


def recall_among(images: torch.Tensor, captions: torch.Tensor, group: int) -> dict[str, float]:
    """R@1 with `group` candidates: the mean over consecutive groups of `group` image-caption pairs."""
    n_groups = len(images) // group
    if n_groups == 0:
        raise ValueError(f"need at least {group} scenes for R@1 among {group}, got {len(images)}")
    totals: dict[str, float] = defaultdict(float)
    for g in range(n_groups):
        part = slice(g * group, (g + 1) * group)
        for key, value in recall_at_k(images[part], captions[part], ks=(1,)).items():
            totals[f"{key}_among_{group}"] += value / n_groups
    return dict(totals)


def _add_pair_metric(results: dict, name: str, wins: torch.Tensor, cues: Sequence[str]) -> None:
    results[name] = float(wins.float().mean())
    by_cue: dict[str, list[bool]] = defaultdict(list)
    for win, cue in zip(wins.tolist(), cues):
        by_cue[cue].append(win)
    for cue, values in sorted(by_cue.items()):
        results[f"{name}[{cue}]"] = float(np.mean(values))
