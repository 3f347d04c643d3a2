"""The synthetic world's evaluation suite: affirmative skills and the two negation metrics. It is the
one synthetic evaluator: `evaluate-negation`'s synthetic benchmark, the ablation, the embedded build
and the causal checks all score through it.

Built once from a world (images rendered, captions written), then evaluated on any model, or on
any text encoder passed as a function (the causal check uses that to evaluate with hooks on).

Sections and metrics (REFERENCE.md; names are probing.metrics' shared vocabulary):
    negation    ccneg_accuracy: s(I, true caption) > s(I, presence-negated caption);
                absence_accuracy: s(I, absence-negated caption) > s(I, presence-negated caption);
                both also by cue word and by K ("ccneg_accuracy/cue=never", ".../k=2")
    retrieval   image_to_text_R@1_among_100, text_to_image_R@1_among_100 (affirmative captions; a
                caption the world wrote for several scenes is right for each of them)
    scope       scope_accuracy (shortcut-proof): s(I, "A and no X") > s(I, "A and no B"), X absent,
                B present; by cue and K
    prompt_gap  zero-shot top-1 over the world's object classes with "a photo of a {c}"
                (zero_shot_affirmative) and "not a photo of a {c}" (zero_shot_negated; CLIP ignores
                the "not": both about the same) and their gap; the same over shapes only and colours
                only ("zero_shot_affirmative/classes=shape", ".../classes=colour")
    mcq         (when built with n_mcq > 0) NegBench-style four-way multiple choice
                (SyntheticWorld.mcq_items): mcq_accuracy, by the correct answer's template type
                ("mcq_accuracy/template=negative")

Per-item outcomes (`evaluate(outcomes=...)`: 1 won strictly, 0 lost or tied) of every metric that is a
mean over items, for tests that resample items: "scope", "ccneg", "absence", "mcq" (with
"mcq_template", the template type of each item), "image_to_text" (R@1 among 100, per scene of the
whole groups) and "zero_shot" (per class image).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from probing.features.encode import encode_captions, encode_images
from probing.metrics import (
    Metrics,
    among_outcomes,
    choice_outcomes,
    flatten,
    pair_outcomes,
    score_mcq,
    score_negation,
    score_pairs,
    score_prompt_gap,
    score_recall_among,
    zero_shot_outcomes,
)

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
    example_ks: list[int]
    scope_images: np.ndarray
    scope_correct: list[str]
    scope_wrong: list[str]
    scope_cues: list[str]
    scope_ks: list[int]
    mcq_images: np.ndarray | None = None  # [n_mcq, H, W, 3]
    mcq_options: list[list[str]] | None = None  # the four captions of each item, the correct one first
    mcq_templates: list[str] | None = None

    @classmethod
    def build(cls, world, *, n: int = 1000, n_classification: int = 720, split: str = "test",
              heldout: str = "all", seed: int = 0, n_mcq: int = 0) -> "SyntheticSuite":
        examples = world.examples(n, split, seed, heldout=heldout)
        mcq = world.mcq_items(n_mcq, split, seed, heldout=heldout) if n_mcq else []
        pairs = world.scope_pairs(n, split, seed, heldout=heldout)
        class_images, object_labels = world.classification_set(n_classification, split, seed, label="object")
        classes = world.class_prompts()
        shapes = [
            classes["shape_classes"].index(name.split(" ", 1)[1])
            for name in np.array(classes["classes"])[object_labels]
        ]
        colours = [
            classes["colour_classes"].index(name.split(" ", 1)[0])
            for name in np.array(classes["classes"])[object_labels]
        ]
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
            example_ks=[e.k for e in examples],
            scope_images=np.stack([p.image for p in pairs]),
            scope_correct=[p.correct for p in pairs],
            scope_wrong=[p.wrong for p in pairs],
            scope_cues=[p.cue for p in pairs],
            scope_ks=[p.k for p in pairs],
            mcq_images=np.stack([item.image for item in mcq]) if mcq else None,
            mcq_options=[list(item.captions) for item in mcq] if mcq else None,
            mcq_templates=[item.template for item in mcq] if mcq else None,
        )

    def image_features(
        self, model, preprocess, *, batch_size: int = 256, progress: bool = False
    ) -> dict[str, torch.Tensor]:
        """Image features of the suite (compute once, reuse across text-side interventions)."""
        sets = [("class", self.class_images), ("scenes", self.images), ("scope", self.scope_images)]
        if self.mcq_images is not None:
            sets.append(("mcq", self.mcq_images))
        return {key: encode_images(model, preprocess, list(images), batch_size=batch_size, progress=progress)
                for key, images in sets}

    def evaluate(self, model, preprocess, tokenizer, *, encode_text: TextEncoder | None = None,
                 image_features: dict[str, torch.Tensor] | None = None, batch_size: int = 256,
                 progress: bool = False, outcomes: dict[str, list[int]] | None = None) -> dict[str, Metrics]:
        """section -> Metrics (see the module docstring); `encode_text` overrides the model's text encoder.
        `outcomes`, if given, is filled with the per-item results of the pair metrics ("scope",
        "ccneg", "absence": 1 won, 0 lost or tied), for tests that resample items."""
        encode = encode_text or (lambda captions: encode_captions(model, tokenizer, captions, batch_size=batch_size))
        images = image_features or self.image_features(model, preprocess, batch_size=batch_size, progress=progress)
        prompt_gap: Metrics = {}
        for label, prefix, classes in (
            ("object", "", None),
            ("shape", "shape_", "shape"),
            ("colour", "colour_", "colour"),
        ):
            prompt_gap.update(score_prompt_gap(images["class"], encode(self.prompts[f"{prefix}affirmative"]),
                                               encode(self.prompts[f"{prefix}negated"]), self.class_labels[label],
                                               classes=classes))
        captions = encode(self.captions)
        presence, absence = encode(self.presence_negated), encode(self.absence_negated)
        groups = {"cue": self.example_cues, "k": self.example_ks}
        negation = score_negation(images["scenes"], captions, presence, groups, absence=absence)
        correct, wrong = encode(self.scope_correct), encode(self.scope_wrong)
        scope = score_pairs(
            "scope_accuracy", images["scope"], correct, wrong, {"cue": self.scope_cues, "k": self.scope_ks}
        )
        sections = {"negation": negation, "retrieval": score_recall_among(images["scenes"], captions, group=100,
                                                                           texts=self.captions),
                    "scope": scope, "prompt_gap": prompt_gap}
        mcq_scores = None
        if self.mcq_options is not None:
            k = len(self.mcq_options[0])
            options = encode([text for item in self.mcq_options for text in item]).reshape(len(self.mcq_options), k, -1)
            sections["mcq"] = score_mcq(images["mcq"], options, [0] * len(self.mcq_options), self.mcq_templates)
            mcq_scores = torch.einsum("nd,nkd->nk", images["mcq"], options)
        if outcomes is not None:
            for name, args in (("scope", (images["scope"], correct, wrong)),
                               ("ccneg", (images["scenes"], captions, presence)),
                               ("absence", (images["scenes"], absence, presence))):
                outcomes[name] = pair_outcomes(*args)[0].int().tolist()
            outcomes["image_to_text"] = among_outcomes(images["scenes"], captions, 100, self.captions).int().tolist()
            outcomes["zero_shot"] = zero_shot_outcomes(images["class"], encode(self.prompts["affirmative"]),
                                                       self.class_labels["object"])[0].int().tolist()
            if mcq_scores is not None:
                outcomes["mcq"] = choice_outcomes(mcq_scores, [0] * len(mcq_scores))[0].int().tolist()
                outcomes["mcq_template"] = list(self.mcq_templates)
        return sections

    def scores(self, model, preprocess, tokenizer, **options) -> dict[str, float]:
        """`evaluate` as one flat {metric: value} dict."""
        return flatten(self.evaluate(model, preprocess, tokenizer, **options))
