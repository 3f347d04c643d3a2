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

from probing.data.benchmarks import negation_marker, wording
from probing.data.ccneg import find_negation_cue
from probing.data.negations import describe_examples, describe_sentence
from probing.data.records import FoilPair, MCQItem, NegationExample
from probing.features.cache import encode_image_features
from probing.features.encode import encode_captions
from probing.metrics import flatten, score_mcq, score_negation, score_pairs, score_recall_among
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
MCQ_CAUSAL_METRICS = ("mcq_accuracy", "mcq_accuracy/template=positive", "mcq_accuracy/template=negative",
                      "mcq_accuracy/template=hybrid", "mcq_absence_accuracy")
FOIL_CAUSAL_METRICS = ("valse_accuracy", "valse_accuracy/negated=caption", "valse_accuracy/negated=foil")


def rows_by_file(records, origin: Callable[[Any], tuple] = lambda r: (r.source, r.row)) -> dict[str, int]:
    """Distinct (source, row) of records, counted per source file: what a measurement used of each file.
    `origin` reads a record's (source, row) (default: its attributes; patching pairs keep them in `meta`)."""
    rows: dict[str, set] = {}
    for source, row in map(origin, records):
        rows.setdefault(str(source), set()).add(row)
    return {source: len(found) for source, found in rows.items()}


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
    """The measurements' data taken from files' NegationExamples and benchmark items (module docstring).

    examples: the NegationExamples of every file (sensitivity reads their captions only); image_examples: those
    whose images resolved (gradient batches and the causal check; None: `examples`, when `with_images`); mcq,
    foils: NegBench MCQ items and VALSE caption / foil items with resolved images, which add their benchmark
    metric to the causal check (MCQ accuracy by template, caption-vs-foil accuracy)."""

    examples: Sequence[NegationExample]
    source: str | None = None
    with_images: bool = True  # the examples' image paths resolve (an image root was given)
    image_examples: Sequence[NegationExample] | None = None
    mcq: Sequence[MCQItem] = ()
    foils: Sequence[FoilPair] = ()
    control: ControlEdit = field(init=False)

    def __post_init__(self):

        def usable(pool):
            return [e for e in pool if e.caption and e.presence_negated]

        self.examples = usable(self.examples)
        self.image_examples = (list(self.examples) if self.with_images else []) if self.image_examples is None \
            else usable(self.image_examples)
        self.mcq, self.foils = list(self.mcq), list(self.foils)
        if not self.examples and not (self.mcq or self.foils):
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
        return bool(self.examples) and sum(bool(e.absence_negated) for e in self.examples) * 2 >= len(self.examples)

    def _order(self, seed: int, pool: Sequence) -> list:
        rng = np.random.default_rng([seed, 0x5E5])
        return [pool[i] for i in rng.permutation(len(pool))]

    def sensitivity_examples(self, n: int, seed: int) -> tuple[list[NegationExample], list[str]]:
        """Up to n examples whose caption the control edit can change, and the edited captions."""
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
        return chosen, controls

    def sensitivity_edits(self, n: int, seed: int) -> dict[str, list[str]]:
        """Up to n examples whose caption the control edit can change (with an absence-negated caption when
        most examples have one, so that all four lists align)."""
        chosen, controls = self.sensitivity_examples(n, seed)
        if len(chosen) < 2:
            raise ValueError("fewer than two captions name a word of the file's vocabulary that the control edit "
                             "can swap: sensitivity needs more data")
        edits = {"base": [e.caption for e in chosen], "presence": [e.presence_negated for e in chosen]}
        if self.has_absence:
            edits["absence"] = [e.absence_negated for e in chosen]
        edits["control"] = controls
        return edits

    def gradnorm_examples(self, n_batches: int, batch_size: int, seed: int) -> list[list[NegationExample]]:
        """`n_batches` batches of distinct examples with images, each a seeded draw (batches may share examples when
        the data has fewer than n_batches x batch_size)."""
        pool = self.image_examples
        if batch_size > len(pool):
            raise ValueError(f"a gradient batch of {batch_size} needs as many examples with images; the data has "
                             f"{len(pool)}")
        order = self._order(seed + 1000, pool)
        batches = []
        for b in range(n_batches):
            start = (b * batch_size) % len(order)
            if start + batch_size > len(order):
                order = self._order(seed + 1000 + b, pool)
                start = 0
            batches.append(order[start:start + batch_size])
        return batches

    def causal_suite(self, n: int, seed: int):
        """Held-out items with images: a RealSuite of the examples, and beside it (CombinedSuite) the MCQ and
        caption-vs-foil items' own metrics where the data has them; each part at most n items."""
        parts = []
        if len(self.image_examples) >= 2:
            parts.append(RealSuite(self._order(seed + 202, self.image_examples)[:n]))
        if self.mcq:
            parts.append(MCQSuite(self._order(seed + 203, self.mcq)[:n]))
        if self.foils:
            parts.append(FoilSuite(self._order(seed + 204, self.foils)[:n]))
        if not parts:
            raise ValueError("the causal check needs items with images")
        return parts[0] if len(parts) == 1 else CombinedSuite(parts)


class _ImageRecords:
    """What the causal check's real suites share: their records carry an image, a source file and a row."""

    features_label: str  # the progress bar's name while their images are encoded

    @property
    def records(self) -> list:
        return self.items

    def rows_by_file(self) -> dict[str, int]:
        return rows_by_file(self.records)

    def image_features(self, model, preprocess, *, progress: bool = False, num_workers: int = 0,
                       cache: bool = True) -> dict[str, torch.Tensor]:
        records = self.records
        return {"images": encode_image_features(model, preprocess, [r.image for r in records], progress=progress,
                                                desc=self.features_label, num_workers=num_workers, cache=cache,
                                                origins=[(r.source, r.row) for r in records])}


@dataclass
class RealSuite(_ImageRecords):
    """Held-out real examples scored with any text encoder (the causal check's evaluation on real data)."""

    examples: list[NegationExample]
    metric_names = REAL_CAUSAL_METRICS
    features_label = "causal check: image features"

    @property
    def records(self) -> list[NegationExample]:
        return self.examples

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


@dataclass
class MCQSuite(_ImageRecords):
    """NegBench MCQ items scored with any text encoder: MCQ accuracy (the correct option strictly above every other)
    overall and by the correct answer's template, and `mcq_absence_accuracy`, the true negated answer of a
    negative row against its wrong negated option (negating an object that is there): the same template type,
    the negated object absent vs present."""

    items: list[MCQItem]
    metric_names = MCQ_CAUSAL_METRICS
    features_label = "causal check: MCQ image features"

    def __post_init__(self):
        self.negated_pairs = []  # (row index, true negated option, false negated option)
        for index, item in enumerate(self.items):
            if item.template != "negative":
                continue
            wrong = next((i for i, text in enumerate(item.captions)
                          if i != item.correct and wording(text).type == "negative"), None)
            if wrong is not None:
                self.negated_pairs.append((index, item.correct, wrong))

    def scores(self, model, preprocess, tokenizer, *, encode_text: Callable | None = None,
               image_features: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
        encode = encode_text or (lambda captions: encode_captions(model, tokenizer, captions))
        images = (image_features or self.image_features(model, preprocess))["images"]
        width = max(len(item.captions) for item in self.items)
        if any(len(item.captions) != width for item in self.items):
            raise ValueError("MCQ items with different numbers of options")
        options = encode([text for item in self.items for text in item.captions]).view(len(self.items), width, -1)
        metrics = score_mcq(images, options, [item.correct for item in self.items],
                            [item.template for item in self.items])
        if self.negated_pairs:
            rows, true, false = (torch.tensor(column) for column in zip(*self.negated_pairs))
            metrics.update(score_pairs("mcq_absence_accuracy", images[rows], options[rows, true],
                                       options[rows, false]))
        return flatten({"mcq": metrics})


@dataclass
class FoilSuite(_ImageRecords):
    """VALSE existence items: s(I, caption) > s(I, foil), overall and by which of the two is the negated one."""

    items: list[FoilPair]
    metric_names = FOIL_CAUSAL_METRICS
    features_label = "causal check: VALSE image features"

    def scores(self, model, preprocess, tokenizer, *, encode_text: Callable | None = None,
               image_features: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
        encode = encode_text or (lambda captions: encode_captions(model, tokenizer, captions))
        images = (image_features or self.image_features(model, preprocess))["images"]
        negated = ["caption" if negation_marker(item.caption) else "foil" for item in self.items]
        metrics = score_pairs("valse_accuracy", images, encode([item.caption for item in self.items]),
                              encode([item.foil for item in self.items]), {"negated": negated})
        return flatten({"valse": metrics})


@dataclass
class CombinedSuite:
    """Several suites scored together (their metric names are distinct)."""

    parts: list

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(name for part in self.parts for name in part.metric_names)

    def rows_by_file(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for part in self.parts:
            for source, n in part.rows_by_file().items():
                counts[source] = max(counts.get(source, 0), n)
        return counts

    def image_features(self, model, preprocess, **options) -> dict[str, torch.Tensor]:
        return {f"{j}/{key}": value for j, part in enumerate(self.parts)
                for key, value in part.image_features(model, preprocess, **options).items()}

    def scores(self, model, preprocess, tokenizer, *, encode_text: Callable | None = None,
               image_features: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
        features = image_features or self.image_features(model, preprocess)
        metrics: dict[str, float] = {}
        for j, part in enumerate(self.parts):
            own = {key.split("/", 1)[1]: value for key, value in features.items() if key.startswith(f"{j}/")}
            metrics.update(part.scores(model, preprocess, tokenizer, encode_text=encode_text, image_features=own))
        return metrics
