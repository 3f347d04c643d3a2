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
    # per caption, what the splits were made by (real data: "image", "source", "row"), for checks and counts
    groups: dict[str, list] = field(default_factory=dict)

    def control_tests(self) -> dict[str, np.ndarray]:
        """Control labels are type-based, so they are only learnable on seen types: in-distribution (when it and the
        training split hold both control classes)."""
        if IN_DISTRIBUTION not in self.tests:
            return {}
        test = self.tests[IN_DISTRIBUTION]
        if any(len(np.unique(self.control_labels[index])) < 2 for index in (self.train, test)):
            return {}
        return {IN_DISTRIBUTION: test}


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


# --- real benchmark files: splits held out by image, cue, object and template --------------------------------

MIN_SPLIT = 4  # captions a test split needs (with both classes) to be kept


def heldout_task(name: str, captions: Sequence, *, train_cues: Sequence[str] = ("no", "not"), seed: int = 0,
                 test_share: float = 0.25, heldout_share: float = 0.2, meta: dict | None = None) -> ProbeTask:
    """A probe task from real ProbeCaptions (probing.data.benchmarks) whose test splits a probe cannot pass by
    memorising an image, an object, a template or a cue word.

    Images (ProbeCaption.image) are split first: a seeded `test_share` of them hold every test split, the rest
    the training split, so no image is on both sides. Then a seeded set of objects and of templates is held out
    (drawn in a seeded order while the captions naming them stay within `heldout_share` of all captions; never
    the object or template that alone covers more), and every cue outside `train_cues`:

        train             training images; no held-out object or template; negated captions with a training cue,
                          affirmative captions of units with one (or with no negated caption)
        in_distribution   test images; no held-out object, template or cue
        heldout_cue       test images; a negation cue outside `train_cues` (and its unit's affirmative captions)
        heldout_object    test images; a caption naming a held-out object (training cues)
        heldout_template  test images; a held-out template (training cues, no held-out object)

    An affirmative caption (cue None) follows its unit: it joins the cue split of its unit's negated captions (in
    both when the unit has both kinds). A test split without both classes (or fewer than MIN_SPLIT captions) is
    left out and meta["dropped_splits"] says why. groups["image"], groups["source"] and groups["row"] name each
    caption's image and where it came from. A ValueError when the training split lacks a class.
    """
    captions = list(captions)
    if not captions:
        raise ValueError("no captions")
    rng = np.random.default_rng([seed, 0x5B17])
    images = sorted({c.image for c in captions})
    if len(images) < 2:
        raise ValueError(f"the captions show {len(images)} image(s): a split by image needs at least two")
    order = rng.permutation(len(images))
    n_test = min(len(images) - 1, max(1, int(round(test_share * len(images)))))
    test_images = {images[i] for i in order[:n_test]}
    held_objects = _held_out([c.objects for c in captions], heldout_share, rng)
    held_templates = _held_out([(c.template,) if c.template else () for c in captions], heldout_share, rng)
    train_cues = set(train_cues)
    unit_cues: dict = {}
    for c in captions:
        if c.cue is not None:
            unit_cues.setdefault(c.unit, set()).add(c.cue in train_cues)
    blocks: dict[str, list[int]] = {split: [] for split in ("train", IN_DISTRIBUTION, *HELDOUT_SPLITS)}
    for i, c in enumerate(captions):
        new_object = any(o in held_objects for o in c.objects)
        new_template = c.template in held_templates
        if c.cue is None:  # affirmative: the cue kinds of its unit (a unit without negated captions: a training one)
            seen_cue, new_cue = (True in unit_cues.get(c.unit, {True})), (False in unit_cues.get(c.unit, set()))
        else:
            seen_cue, new_cue = c.cue in train_cues, c.cue not in train_cues
        if c.image not in test_images:
            if seen_cue and not new_object and not new_template:
                blocks["train"].append(i)
            continue
        if seen_cue and not new_object and not new_template:
            blocks[IN_DISTRIBUTION].append(i)
        if new_cue and not new_object and not new_template:
            blocks["heldout_cue"].append(i)
        if new_object and seen_cue and not new_template:
            blocks["heldout_object"].append(i)
        if new_template and seen_cue and not new_object:
            blocks["heldout_template"].append(i)
    labels = np.array([int(c.label) for c in captions])
    if len(np.unique(labels[blocks["train"]])) < 2:
        raise ValueError(f"the training split ({len(blocks['train'])} captions of {len(images) - n_test} images with "
                         f"the cues {sorted(train_cues)}) holds {'no' if not blocks['train'] else 'one class of'} "
                         "captions: it needs affirmative and negated captions (or both labels) of several images")
    dropped = {}
    tests = {}
    for split in (IN_DISTRIBUTION, *HELDOUT_SPLITS):
        index = np.array(blocks[split], dtype=int)
        classes = len(np.unique(labels[index])) if len(index) else 0
        if classes < 2 or len(index) < MIN_SPLIT:
            dropped[split] = (f"{len(index)} captions with {classes} class(es)" if len(index) else
                              "no captions" + {"heldout_cue": f" with a cue outside {sorted(train_cues)}",
                                               "heldout_object": " name a held-out object",
                                               "heldout_template": " use a held-out template"}.get(split, ""))
        else:
            tests[split] = index
    types = [c.type if c.type is not None else c.unit for c in captions]
    files: dict[str, dict[str, int]] = {}
    for i in sorted(set(blocks["train"]) | {i for index in tests.values() for i in index}):
        entry = files.setdefault(str(captions[i].source), {"captions": 0, "rows": set()})
        entry["captions"] += 1
        entry["rows"].add(captions[i].row)
    info = {"source": "real", "train_cues": sorted(train_cues), "split_by": "image",
            "images": {"train": len(images) - n_test, "test": n_test},
            "heldout_objects": sorted(held_objects), "heldout_templates": len(held_templates),
            "dropped_splits": dropped,
            "files": {f: {"captions": e["captions"], "rows": len(e["rows"])} for f, e in files.items()},
            **(meta or {})}
    return ProbeTask(name, [c.text for c in captions], labels, control_labelling(types, seed),
                     np.array(blocks["train"], dtype=int), tests, info,
                     groups={"image": [c.image for c in captions], "source": [c.source for c in captions],
                             "row": [c.row for c in captions]})


def _held_out(keys: Sequence[tuple], share: float, rng: np.random.Generator) -> set:
    """Values to hold out: drawn in a seeded order, each kept while the captions naming any held-out value stay
    within `share` of all captions (a value more frequent than that is never held out). Only values of two captions
    or more are candidates: a caption of its own (a free-text caption's template) is unseen on a test image anyway,
    and holding it out would only take it from training."""
    rows: dict = {}
    for i, values in enumerate(keys):
        for value in set(values):
            rows.setdefault(value, []).append(i)
    rows = {value: found for value, found in rows.items() if len(found) >= 2}
    if len(rows) < 2:
        return set()
    names = sorted(rows, key=str)
    held: set = set()
    covered = np.zeros(len(keys), dtype=bool)
    budget = share * len(keys)
    for j in rng.permutation(len(names)):
        would = covered.copy()
        would[rows[names[j]]] = True
        if would.sum() <= budget:
            held.add(names[j])
            covered = would
    return held
