"""The data the image-grounded measurements run on: the synthetic world, or the negation examples of a file.

`probing.measure.layers` measures edit sensitivity, gradient norms and the causal check on whatever data a
run has. Both kinds give the same three things:

    sensitivity_edits(n, seed)             captions and their edits, aligned: "base", "presence", "absence"
                                           (when the data has absence-negated captions) and "control", a
                                           same-size edit that does not negate
    gradnorm_examples(n_batches, size, seed)  batches of NegationExamples (images, captions) for the losses
    causal_suite(n, seed)                  held-out items, their image features and the metrics scored
                                           with any text encoder (the causal check swaps in ablated ones)

`SyntheticData(world)` draws them from the synthetic world, as the measurements always did (control edit:
one colour word swapped). `RealData(examples)` takes them from a file's NegationExamples: the file's own
captions and negated captions where it has them (CC-Neg, NegBench) and the rule-based generator's only where
it has none (probing.data.negations); images are read from the file's image paths through the disk cache of
image features. Its control edit swaps one object name of a caption for another object name of the file's
vocabulary (the objects its annotations name; for a caption naming none of them, or a file without object
annotations such as CC-Neg, one content word for another word of the file's captions): one word for one
word, like the one-object difference between a presence- and an absence-negated caption, and never a
negation. Its causal metrics are CC-Neg-style accuracy (s(I, c) > s(I, c')), absence accuracy
(s(I, a) > s(I, c'): for generated captions, which share frame, cue and subjects, a scope test) and R@1
among 100 images both ways on the affirmative captions (one example per image; fewer than 100 images:
left out).

Every source describes itself (`description`: what it is, where each caption comes from), and the
measurements record that per measurement, so the report can say which data each number came from.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from probing.data.ccneg import find_negation_cue
from probing.data.negations import describe_examples, describe_sentence
from probing.data.records import NegationExample
from probing.features.cache import encode_image_features
from probing.features.encode import encode_captions
from probing.metrics import flatten, score_negation, score_recall_among
from probing.synthetic.suite import SyntheticSuite

# words that are never swapped by the control edit of real captions (function words and negation cues)
STOP_WORDS = frozenset("""
a an the and or but of in on at to by for with from into onto over under near next while where which who whom
what this that these those there their its his her they them he she it we you is are was were be been being has
have had do does did some any two three four one very other another each out off down up top side front back
through about above below behind beside between than then as so such just also only more most few many much
no not without never none nothing nobody neither nor isn aren wasn weren don doesn didn can cannot could would
should will shall may might must
""".split())
REAL_CAUSAL_METRICS = ("ccneg_accuracy", "absence_accuracy", "image_to_text_R@1_among_100",
                       "text_to_image_R@1_among_100")


def swap_first_colour(caption: str, colours: Sequence[str]) -> str:
    """The caption with its first colour word replaced by the next colour: a one-word, non-negating edit."""
    words = caption.split(" ")
    for i, word in enumerate(words):
        bare = word.rstrip(",")
        if bare in colours:
            words[i] = word.replace(bare, colours[(colours.index(bare) + 1) % len(colours)])
            return " ".join(words)
    raise ValueError(f"caption has no colour word to swap: {caption!r}")


# --- the synthetic world --------------------------------------------------------------------------

@dataclass
class SyntheticData:
    """The measurements' data drawn from the synthetic world (what every measurement used before real data)."""

    world: Any

    @property
    def description(self) -> dict:
        config = self.world.config
        return {"kind": "synthetic", "source": f"synthetic world (seed {self.world.seed}, {config.image_size} px)",
                "sentence": f"the synthetic world (seed {self.world.seed}, {config.image_size}-pixel scenes of "
                            "coloured shapes)",
                "control_edit": "one colour word swapped for the next colour"}

    def sensitivity_edits(self, n: int, seed: int) -> dict[str, list[str]]:
        examples = self.world.examples(n, "test", seed + 101)
        colours = list(self.world.config.colours)
        return {"base": [e.caption for e in examples],
                "presence": [e.presence_negated for e in examples],
                "absence": [e.absence_negated for e in examples],
                "control": [swap_first_colour(e.caption, colours) for e in examples]}

    def gradnorm_examples(self, n_batches: int, batch_size: int, seed: int) -> list[list[NegationExample]]:
        return [self.world.examples(batch_size, "train", seed + 1000 + b) for b in range(n_batches)]

    def causal_suite(self, n: int, seed: int):

        return SyntheticSuite.build(self.world, n=n, n_classification=min(360, n), split="test", heldout="all",
                                    seed=seed + 202)


# --- a file's negation examples ---------------------------------------------------------------------

def content_words(text: str) -> list[str]:
    """The words of a caption the control edit may swap: letters only, 3 or more, no function word or cue."""
    return [w for w in re.findall(r"[A-Za-z]+", text) if len(w) >= 3 and w.lower() not in STOP_WORDS
            and not find_negation_cue(w)]


@dataclass
class ControlEdit:
    """One object name (or content word) of a caption swapped for another of the file's vocabulary."""

    objects: list[str]  # object names the file's annotations name (may be empty)
    words: list[str]  # content words of the file's captions (each in at least two captions)

    @classmethod
    def of(cls, examples: Sequence[NegationExample]) -> "ControlEdit":
        objects = set()
        for e in examples:
            objects.update(name for name in (e.negated_object, e.absent_object, e.subject) if name)
            objects.update(e.meta.get("subjects", ()))
        counts: dict[str, int] = {}
        for caption in {e.caption for e in examples if e.caption}:
            for word in set(w.lower() for w in content_words(caption)):
                counts[word] = counts.get(word, 0) + 1
        return cls(sorted(objects, key=lambda o: (-len(o), o)), sorted(w for w, c in counts.items() if c >= 2))

    def __call__(self, caption: str, rng: np.random.Generator) -> str | None:
        """The edited caption, or None when it names nothing of the vocabulary."""
        for vocabulary in (self.objects, self.words):
            if len(vocabulary) < 2:
                continue
            found = [(m.start(), m.end(), name) for name in vocabulary
                     for m in [re.search(rf"\b{re.escape(name)}\b", caption, re.IGNORECASE)] if m]
            if not found:
                continue
            start, end, name = min(found)  # the first in reading order
            others = [v for v in vocabulary if v != name.lower() and v != name]
            replacement = others[int(rng.integers(len(others)))]
            if caption[start].isupper():
                replacement = replacement[:1].upper() + replacement[1:]
            return caption[:start] + replacement + caption[end:]
        return None


@dataclass
class RealData:
    """The measurements' data taken from a file's NegationExamples (module docstring)."""

    examples: Sequence[NegationExample]
    source: str | None = None
    with_images: bool = True  # the examples' image paths resolve (an image root was given)
    control: ControlEdit = field(init=False)

    def __post_init__(self):

        self.examples = [e for e in self.examples if e.caption and e.presence_negated]
        if not self.examples:
            raise ValueError("no example has both an affirmative and a presence-negated caption")
        self.control = ControlEdit.of(self.examples)
        self.summary = describe_examples(self.examples, self.source)

    @property
    def description(self) -> dict:

        control = ("one object name swapped for another object name of the file" if self.control.objects else
                   "one content word swapped for another word of the file's captions")
        return {"kind": "real", "source": self.source, "sentence": describe_sentence(self.summary),
                "examples": self.summary, "control_edit": control}

    @property
    def has_absence(self) -> bool:
        return sum(bool(e.absence_negated) for e in self.examples) * 2 >= len(self.examples)

    def _order(self, seed: int, pool: Sequence[NegationExample]) -> list[NegationExample]:
        rng = np.random.default_rng([seed, 0x5E5])
        return [pool[i] for i in rng.permutation(len(pool))]

    def sensitivity_edits(self, n: int, seed: int) -> dict[str, list[str]]:
        """Up to n examples whose caption the control edit can change (with an absence-negated caption when
        most examples have one, so that all four lists align)."""
        pool = [e for e in self.examples if e.absence_negated] if self.has_absence else list(self.examples)
        rng = np.random.default_rng([seed, 0xED17])
        chosen, controls = [], []
        for example in self._order(seed, pool):
            edited = self.control(example.caption, rng)
            if edited is not None and edited != example.caption:
                chosen.append(example)
                controls.append(edited)
            if len(chosen) == n:
                break
        if len(chosen) < 2:
            raise ValueError("fewer than two captions name a word of the file's vocabulary that the control edit "
                             "can swap: sensitivity needs more data")
        edits = {"base": [e.caption for e in chosen], "presence": [e.presence_negated for e in chosen]}
        if self.has_absence:
            edits["absence"] = [e.absence_negated for e in chosen]
        edits["control"] = controls
        return edits

    def gradnorm_examples(self, n_batches: int, batch_size: int, seed: int) -> list[list[NegationExample]]:
        """`n_batches` batches of distinct examples, each a seeded draw (batches may share examples when the
        file has fewer than n_batches x batch_size)."""
        if batch_size > len(self.examples):
            raise ValueError(f"a gradient batch of {batch_size} needs as many examples; the data has "
                             f"{len(self.examples)}")
        order = self._order(seed + 1000, self.examples)
        batches = []
        for b in range(n_batches):
            start = (b * batch_size) % len(order)
            if start + batch_size > len(order):
                order = self._order(seed + 1000 + b, self.examples)
                start = 0
            batches.append(order[start:start + batch_size])
        return batches

    def causal_suite(self, n: int, seed: int) -> "RealSuite":
        return RealSuite(self._order(seed + 202, self.examples)[:n])


@dataclass
class RealSuite:
    """Held-out real examples scored with any text encoder (the causal check's evaluation on real data)."""

    examples: list[NegationExample]

    def image_features(self, model, preprocess, *, progress: bool = False, num_workers: int = 0,
                       cache: bool = True) -> dict[str, torch.Tensor]:
        return {"images": encode_image_features(model, preprocess, [e.image for e in self.examples], progress=progress,
                                                desc="causal check: image features", num_workers=num_workers,
                                                cache=cache, origins=[(e.source, e.row) for e in self.examples])}

    def scores(self, model, preprocess, tokenizer, *, encode_text: Callable | None = None,
               image_features: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
        encode = encode_text or (lambda captions: encode_captions(model, tokenizer, captions))
        images = (image_features or self.image_features(model, preprocess))["images"]
        examples = self.examples
        caption, presence = encode([e.caption for e in examples]), encode([e.presence_negated for e in examples])
        with_absence = [i for i, e in enumerate(examples) if e.absence_negated]
        metrics = score_negation(images, caption, presence, absence_rows=with_absence,
                                 absence=encode([examples[i].absence_negated for i in with_absence])
                                 if with_absence else None)
        first = list({str(e.image): i for i, e in reversed(list(enumerate(examples)))}.values())
        first.sort()
        if len(first) >= 100:
            chosen = torch.tensor(first)
            metrics.update(score_recall_among(images[chosen], caption[chosen], group=100,
                                              texts=[examples[i].caption for i in first]))
        return flatten({"real": metrics})
