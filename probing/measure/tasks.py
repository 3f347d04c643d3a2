"""Probing tasks: captions, labels, control labellings and held-out test splits.

Two tasks, following REFERENCE.md's "Probing methodology":
- negation: is the caption negated? Twins differ only in the negated clause ("no green star" vs
  "a green star"). Test splits hold out cue words, objects and templates, so a probe that only
  detects the token "no" fails on "never" / "none" / "isn't".
- scope: which of two objects is negated, on minimal pairs ("a circle but no square" vs "a square
  but no circle"). The two captions of a pair contain the same words, so no bag-of-words feature
  separates them: the label is 1 when the negated object's name sorts before the other object's.

Control labellings (Hewitt & Liang 2019): every caption gets the random label of its TYPE (for
negation: the object and template; for scope: the object pair and template), the same for both
twins. A probe can only fit them by memorising types, so task accuracy minus control accuracy
(selectivity) says how much of the probe's success is more than memorisation.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Hashable, Sequence

import numpy as np

IN_DISTRIBUTION = "in_distribution"
HELDOUT_SPLITS = ("heldout_cue", "heldout_object", "heldout_template")


@dataclass
class ProbeTask:
    """Captions with labels, a control labelling, a training set and named test sets (indices)."""

    name: str
    captions: list[str]
    labels: np.ndarray
    control_labels: np.ndarray
    train: np.ndarray
    tests: dict[str, np.ndarray]
    meta: dict = field(default_factory=dict)

    def control_tests(self) -> dict[str, np.ndarray]:
        """Control labels are type-based, so they are only learnable on seen types: in-distribution."""
        return {IN_DISTRIBUTION: self.tests[IN_DISTRIBUTION]} if IN_DISTRIBUTION in self.tests else {}


def control_labelling(types: Sequence[Hashable], seed: int) -> np.ndarray:
    """A random but fixed 0/1 label per type (stable across runs: hashed, not Python's hash())."""
    return np.array([zlib.crc32(f"{seed}|{t!r}".encode()) % 2 for t in types])


class _Builder:
    """Accumulates caption blocks and remembers which indices belong to which split."""

    def __init__(self):
        self.captions: list[str] = []
        self.labels: list[int] = []
        self.types: list[Hashable] = []
        self.blocks: dict[str, np.ndarray] = {}

    def add(self, split: str, captions, labels, types) -> None:
        start = len(self.captions)
        self.captions += list(captions)
        self.labels += [int(x) for x in labels]
        self.types += list(types)
        self.blocks[split] = np.arange(start, len(self.captions))

    def task(self, name: str, seed: int, meta: dict) -> ProbeTask:
        tests = {split: index for split, index in self.blocks.items() if split != "train"}
        return ProbeTask(name, self.captions, np.array(self.labels), control_labelling(self.types, seed),
                         self.blocks["train"], tests, meta)


def synthetic_negation_task(world, *, n_train: int = 2000, n_test: int = 600, seed: int = 0) -> ProbeTask:
    builder = _Builder()
    for split, items in _synthetic_blocks(world.probe_captions, n_train, n_test, seed):
        builder.add(split, [c.text for c in items], [c.negated for c in items], [(c.object, c.template) for c in items])
    return builder.task("negation", seed, {"source": "synthetic", "heldout_cues": list(world.config.heldout_cues),
                                           "heldout_objects": list(world.config.heldout_objects),
                                           "heldout_templates": list(world.config.heldout_templates)})


def synthetic_scope_task(world, *, n_train: int = 2000, n_test: int = 600, seed: int = 0) -> ProbeTask:
    builder = _Builder()
    for split, pairs in _synthetic_blocks(world.minimal_pairs, n_train // 2, n_test // 2, seed):
        captions, labels, types = [], [], []
        for pair in pairs:
            first_sorts_first = pair.negated_a < pair.negated_b
            pair_type = (tuple(sorted((pair.negated_a, pair.negated_b))), pair.template)
            captions += [pair.caption_a, pair.caption_b]
            labels += [first_sorts_first, not first_sorts_first]
            types += [pair_type, pair_type]
        builder.add(split, captions, labels, types)
    return builder.task("scope", seed, {"source": "synthetic"})


def _synthetic_blocks(make, n_train: int, n_test: int, seed: int):
    yield "train", make(n_train, "train", seed)
    yield IN_DISTRIBUTION, make(n_test, "train", seed + 7919)  # same vocabulary, other draws
    for split in HELDOUT_SPLITS:
        yield split, make(n_test, "test", seed, heldout=split.removeprefix("heldout_"))


def real_negation_task(examples, *, train_cues: Sequence[str] = ("no", "not"), seed: int = 0,
                       n_in_distribution: float = 0.25) -> ProbeTask:
    """Negation task from real NegationExamples (e.g. the rule-based generator over COCO/NegBench).

    Label 1 for the presence- and absence-negated captions, 0 for the affirmative caption; trained
    on `train_cues` and tested on an in-distribution part of them and on every other cue. The control
    labelling's type is the example's subject, or for data without one (CC-Neg) the example itself, so
    that a caption and its negated twin share a control label, as in the synthetic task. A ValueError
    says when the training split (or its control labels) does not hold both classes.
    """
    rows = []  # (caption, label, cue, type)
    for index, example in enumerate(examples):
        kind = example.subject or ("example", example.source, example.row if example.row is not None else index)
        if example.caption:
            rows.append((example.caption, 0, example.cue, kind))
        for negated in (example.presence_negated, example.absence_negated):
            if negated:
                rows.append((negated, 1, example.cue, kind))
    if not rows:
        raise ValueError("no captions in the given examples")
    twice = next((cue for i, cue in enumerate(train_cues) if cue in train_cues[:i]), None)
    if twice is not None:
        raise ValueError(f"training cue {twice!r} is given twice")
    rng = np.random.default_rng(seed)
    in_training_cues = np.array([row[2] in train_cues for row in rows])
    held_in = rng.random(len(rows)) < n_in_distribution
    builder = _Builder()
    for split, mask in (("train", in_training_cues & ~held_in), (IN_DISTRIBUTION, in_training_cues & held_in),
                        ("heldout_cue", ~in_training_cues)):
        chosen = [rows[i] for i in np.flatnonzero(mask)]
        if chosen:
            builder.add(split, [r[0] for r in chosen], [r[1] for r in chosen], [r[3] for r in chosen])
    if "train" not in builder.blocks:
        raise ValueError(f"no examples use the training cues {list(train_cues)}")
    task = builder.task("negation", seed, {"source": "real", "train_cues": list(train_cues)})
    for what, labels in (("labels", task.labels), ("control labels", task.control_labels)):
        if len(np.unique(labels[task.train])) < 2:
            raise ValueError(f"the training split ({len(task.train)} captions with the cues {list(train_cues)}) holds "
                             f"one class of {what} only: it needs affirmative and negated captions of several examples")
    return task
