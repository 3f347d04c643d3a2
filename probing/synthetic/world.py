"""The synthetic negation world: seeded scenes of coloured shapes with captions true or false by construction.

An object class is a colour-shape pair ("red circle"): 6 colours x 6 shapes = 36 classes by default.
Every method of `SyntheticWorld` takes `n`, `split` ("train" or "test") and `seed`, and returns the
same data for the same arguments.

Held-out splits. The train split never uses a held-out cue, template or object (not in captions,
not in scenes); only `pretraining_specs(..., objects="all")` may name held-out objects, as web data
names the objects a CLIP later meets in negated captions. The test split changes what `heldout`
names, and keeps the rest in the training vocabulary, so that one factor can be tested at a time:
    heldout="cue"       negations use only held-out cues (default: never, none, isn't)
    heldout="template"  only held-out templates (default: frame "while", affirmative "aff_shows")
    heldout="object"    the negated objects are held-out objects (subjects stay training objects)
    heldout="all"       all three at once (the default)

Correctness by construction: each caption is rendered from a `CaptionSpec` (objects asserted
present / absent); `caption_truth(scene, spec)` gives its truth, and `parse_caption` reads the
text back independently. The tests check thousands of examples both ways.
"""
from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from probing.captions import (
    AFFIRMATIVE_TEMPLATES,
    CUES,
    NEGATION_FRAMES,
    CaptionParser,
    CaptionSpec,
    Mention,
    affirmative_caption,
    caption_truth,
    framed_caption,
    negation_caption,
    with_article,
)
from probing.data.records import MCQItem, NegationExample
from probing.synthetic.scenes import DRAWABLE_SHAPES, Scene, grid_side, place_objects, render_scene

DEFAULT_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (35, 165, 55),
    "blue": (40, 85, 230),
    "yellow": (240, 215, 25),
    "purple": (145, 55, 195),
    "orange": (250, 135, 15),
}
SPLITS = ("train", "test")
MCQ_TYPES = ("positive", "negative", "hybrid")  # NegBench's template types of the correct answer
HELDOUT_AXES = ("cue", "object", "template")


MIN_OBJECT_SIDE = 4  # pixels: the smallest object scenes.place_objects draws (a shape needs a few pixels)
MAX_IMAGE_SIZE = 4096  # pixels per side; the scenes are drawn on the CPU, one array per image


def min_image_size(max_objects: int) -> int:
    """The smallest image side a world with `max_objects` renders: every grid cell (scenes.place_objects)
    must hold an object of MIN_OBJECT_SIDE pixels with a 1-pixel margin on each side."""
    return grid_side(max_objects) * (MIN_OBJECT_SIDE + 2)


@dataclass(frozen=True)
class WorldConfig:
    """What the world looks like and what the test split holds out.

    colours: name -> RGB; shapes: names from scenes.DRAWABLE_SHAPES; sizes: object sides as
    fractions of the image side; noise: pixel noise std as a fraction of 255.
    heldout_objects must each combine a known colour and shape, and leave at least one training
    object per colour and per shape, so that held-out objects are new combinations of known parts.
    """

    image_size: int = 64
    colours: dict[str, tuple[int, int, int]] = field(default_factory=lambda: dict(DEFAULT_COLOURS))
    shapes: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond")
    sizes: tuple[float, ...] = (0.22, 0.28, 0.34)
    max_objects: int = 4
    noise: float = 0.06
    heldout_cues: tuple[str, ...] = ("never", "none", "isn't")
    heldout_objects: tuple[str, ...] = ("red star", "green cross", "blue diamond", "yellow triangle")
    heldout_templates: tuple[str, ...] = ("while", "aff_shows")

    def __hash__(self) -> int:
        # the colour dict is not hashable; hash its items so a config can key a cache
        values = [tuple(sorted(v.items())) if isinstance(v, dict) else v for v in vars(self).values()]
        return hash(tuple(values))

    def __post_init__(self):
        multiword = [name for name in [*self.colours, *self.shapes] if not name.isalpha()]
        if multiword:
            raise ValueError(f"colour and shape names must be single words (captions are parsed by word): {multiword}")
        unknown_shapes = [s for s in self.shapes if s not in DRAWABLE_SHAPES]
        if unknown_shapes:
            raise ValueError(f"cannot draw shapes {unknown_shapes}; drawable: {DRAWABLE_SHAPES}")
        if (isinstance(self.max_objects, bool) or not isinstance(self.max_objects, int)
                or not 1 <= self.max_objects <= 9):
            raise ValueError(f"max_objects must be 1..9, got {self.max_objects!r}")
        smallest = min_image_size(self.max_objects)
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) \
                or not smallest <= self.image_size <= MAX_IMAGE_SIZE:
            raise ValueError(f"image_size must be an integer in {smallest}..{MAX_IMAGE_SIZE}, got {self.image_size!r} "
                             f"(each of the {grid_side(self.max_objects) ** 2} grid cells must hold an object of "
                             f"{MIN_OBJECT_SIDE} pixels with a 1-pixel margin)")
        if not self.sizes or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1
                                     for v in self.sizes):
            raise ValueError(f"sizes must be fractions of the image side in (0, 1), got {self.sizes!r}")
        if isinstance(self.noise, bool) or not isinstance(self.noise, (int, float)) or not 0 <= self.noise <= 1:
            raise ValueError(f"noise must be a number in [0, 1] (a fraction of 255), got {self.noise!r}")
        bad_colours = [name for name, rgb in self.colours.items()
                       if len(tuple(rgb)) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in rgb)]
        if bad_colours:
            raise ValueError(f"colours must be RGB triples of integers in 0..255: {bad_colours[:3]}")
        objects = {f"{c} {s}" for c in self.colours for s in self.shapes}
        for name in self.heldout_objects:
            if name not in objects:
                raise ValueError(f"held-out object {name!r} is not a colour-shape pair of this world")
        for kind, names, known in [("cue", self.heldout_cues, CUES),
                                   ("template", self.heldout_templates, {**NEGATION_FRAMES, **AFFIRMATIVE_TEMPLATES})]:
            unknown = [name for name in names if name not in known]
            if unknown:
                raise ValueError(f"unknown held-out {kind}(s) {unknown}; known: {list(known)}")
        if not set(CUES) - set(self.heldout_cues):
            raise ValueError("every cue is held out: the train split would have no negation cue")
        if not set(NEGATION_FRAMES) - set(self.heldout_templates) or not set(AFFIRMATIVE_TEMPLATES) - set(
            self.heldout_templates
        ):
            raise ValueError("held-out templates must leave a negation frame and an affirmative template for training")
        if len(objects) - len(set(self.heldout_objects)) < self.max_objects + 1:
            raise ValueError("too few training objects for max_objects + 1 distinct objects per scene")


@dataclass
class ScopePair:
    """The shortcut-proof scope test: s(image, correct) should beat s(image, wrong); chance is 0.5.

    correct = "A and no X" with X absent (true); wrong = "A and no B" with B present (false).
    Same template and cue; the captions differ only in which object is negated.
    """

    image: np.ndarray
    correct: str
    wrong: str
    cue: str
    template: str
    k: int
    correct_object: str  # X: negated in `correct`, absent from the image
    wrong_object: str  # B: negated in `wrong`, present in the image
    subject: str | None
    meta: dict = field(default_factory=dict)


@dataclass
class MinimalPair:
    """Two captions that differ only in scope: "a circle but no square" / "a square but no circle".

    negated_a is the object negated in caption_a (and kept in caption_b), negated_b the reverse.
    naming: "full" ("red circle") or "shape" ("circle").
    """

    caption_a: str
    caption_b: str
    negated_a: str
    negated_b: str
    cue: str
    template: str
    naming: str


@dataclass
class ProbeCaption:
    """A text-only caption for probing, with its labels.

    negated: the label of the negation probe. object: the object of the clause (negated, or named
    affirmatively in the twin). pair: negated and affirmative twins share it; they differ only in
    the clause ("no green star" vs "a green star").
    """

    text: str
    negated: bool
    cue: str
    template: str
    object: str
    subjects: tuple[str, ...]
    k: int
    pair: int


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _heldout_axes(heldout: str | Sequence[str]) -> tuple[str, ...]:
    """'all', one axis name or several, as a sorted tuple of axis names."""
    axes = HELDOUT_AXES if heldout == "all" else (heldout,) if isinstance(heldout, str) else tuple(heldout)
    if not axes or not set(axes) <= set(HELDOUT_AXES):
        raise ValueError(f"heldout must be 'all' or among {HELDOUT_AXES}, got {heldout!r}")
    return tuple(sorted(set(axes)))


@dataclass(frozen=True)
class SplitVocabulary:
    """What one split (and held-out setting) may draw from."""

    cues: tuple[str, ...]
    frames: tuple[str, ...]
    affirmative_templates: tuple[str, ...]
    subject_objects: tuple[str, ...]  # objects named affirmatively / filling scenes
    target_objects: tuple[str, ...]  # objects that get negated


class SyntheticWorld:
    """Seeded generator of the synthetic negation world. See the module docstring for splits."""

    def __init__(self, config: WorldConfig | None = None, seed: int = 0):
        self.config = config or WorldConfig()
        self.seed = seed
        cfg = self.config
        self.objects: tuple[str, ...] = tuple(f"{c} {s}" for c in cfg.colours for s in cfg.shapes)
        self.heldout_objects = tuple(cfg.heldout_objects)
        self.train_objects = tuple(o for o in self.objects if o not in cfg.heldout_objects)
        self.train_cues = tuple(c for c in CUES if c not in cfg.heldout_cues)
        self._parser = CaptionParser(cfg.colours, cfg.shapes)

    # ---- splits and seeds -------------------------------------------------------------------

    def vocabulary(self, split: str, heldout: str | Sequence[str] = "all") -> SplitVocabulary:
        """The cues, templates and objects that `split` draws from (see the module docstring)."""
        _check_split(split)
        axes = set(_heldout_axes(heldout))
        held = self.config.heldout_templates
        train_frames = tuple(f for f in NEGATION_FRAMES if f not in held)
        train_affirmative = tuple(t for t in AFFIRMATIVE_TEMPLATES if t not in held)
        if split == "train":
            return SplitVocabulary(
                self.train_cues, train_frames, train_affirmative, self.train_objects, self.train_objects
            )
        test_frames = tuple(f for f in NEGATION_FRAMES if f in held)
        test_affirmative = tuple(t for t in AFFIRMATIVE_TEMPLATES if t in held) or train_affirmative
        for axis, pool in [("cue", self.config.heldout_cues), ("template", test_frames),
                           ("object", self.heldout_objects)]:
            if axis in axes and len(pool) < (2 if axis == "object" else 1):
                raise ValueError(f"the test split holds out {axis}s but the config has too few held out: {pool}")
        return SplitVocabulary(
            cues=tuple(self.config.heldout_cues) if "cue" in axes else self.train_cues,
            frames=test_frames if "template" in axes else train_frames,
            affirmative_templates=test_affirmative if "template" in axes else train_affirmative,
            subject_objects=self.train_objects,
            target_objects=self.heldout_objects if "object" in axes else self.train_objects,
        )

    def _rng(self, method: str, split: str, seed: int, heldout="all") -> random.Random:
        # a stable mix of everything that should change the stream (hash() is salted per process)
        salt = zlib.crc32(f"{method}|{split}|{','.join(_heldout_axes(heldout))}".encode())
        state = np.random.SeedSequence([self.seed, seed, salt]).generate_state(2)
        return random.Random(int(state[0]) << 32 | int(state[1]))

    # ---- scenes ------------------------------------------------------------------------------

    def make_scene(self, rng: random.Random, names: Sequence[str]) -> Scene:
        """A scene holding exactly the objects `names` (full names), at random cells and sizes."""
        cfg = self.config
        pairs = [tuple(name.split(" ", 1)) for name in names]
        return Scene(place_objects(rng, pairs, cfg.image_size, cfg.max_objects, cfg.sizes), rng.getrandbits(32))

    def scenes(self, n: int, split: str = "train", seed: int = 0) -> list[Scene]:
        """`n` scenes with 1..max_objects distinct objects from the split's objects (all objects for test)."""
        rng = self._rng("scenes", split, seed)
        pool = self.train_objects if split == "train" else self.objects
        _check_split(split)
        return [self.make_scene(rng, rng.sample(pool, rng.randint(1, self.config.max_objects))) for _ in range(n)]

    def render(self, scene: Scene) -> np.ndarray:
        """RGB uint8 [image_size, image_size, 3] image of `scene`."""
        cfg = self.config
        return render_scene(scene, cfg.image_size, cfg.colours, cfg.noise)

    def caption_truth(self, scene: Scene, caption: CaptionSpec | str) -> bool:
        """Truth of a caption in a scene; a string is parsed with this world's grammar first."""
        if isinstance(caption, str):
            present, absent = self._parser(caption)
            caption = CaptionSpec(caption, present, absent)
        return caption_truth(scene, caption)

    def parse(self, text: str) -> tuple[tuple[Mention, ...], tuple[Mention, ...]]:
        """(present, absent) mentions of a caption of this world, read from the text alone."""
        return self._parser(text)

    # ---- negation examples -------------------------------------------------------------------

    def examples(self, n: int, split: str = "train", seed: int = 0, heldout="all") -> list[NegationExample]:
        """`n` NegationExamples with rendered images and distractors.

        Scene: k = 1..max_objects objects. caption names them all (an affirmative template).
        presence_negated negates one of them (negated_object) and names the other k-1;
        absence_negated uses the same frame, cue and subjects but negates an absent object
        (absent_object), so (absence_negated, presence_negated) is itself a scope pair.
        With k = 1 the subject is the generic "a shape". distractor_image: the scene without
        negated_object (k = 1: with it redrawn as another object), so presence_negated is true
        for it. meta: scene, distractor_scene, template (frame), caption_template, specs.
        """
        vocab = self.vocabulary(split, heldout)
        rng = self._rng("examples", split, seed, heldout)
        out = []
        for row in range(n):
            k = rng.randint(1, self.config.max_objects)
            negated = rng.choice(vocab.target_objects)
            subjects = rng.sample([o for o in vocab.subject_objects if o != negated], k - 1)
            absent = rng.choice([o for o in vocab.target_objects if o != negated and o not in subjects])
            named = subjects + [negated]
            rng.shuffle(named)
            scene = self.make_scene(rng, named)
            frame, cue = rng.choice(vocab.frames), rng.choice(vocab.cues)
            subject_mentions = [Mention.of(s) for s in subjects]
            specs = {
                "caption": affirmative_caption(rng.choice(vocab.affirmative_templates), [Mention.of(o) for o in named]),
                "presence_negated": framed_caption(frame, cue, subject_mentions, Mention.of(negated)),
                "absence_negated": framed_caption(frame, cue, subject_mentions, Mention.of(absent)),
            }
            distractor = self._distractor(rng, scene, negated, avoid=(absent,), pool=vocab.subject_objects)
            out.append(NegationExample(
                image=self.render(scene), caption=specs["caption"].text,
                presence_negated=specs["presence_negated"].text, absence_negated=specs["absence_negated"].text,
                cue=cue, negated_object=negated, absent_object=absent, subject=subjects[0] if subjects else None,
                k=k, distractor_image=self.render(distractor), source="synthetic", row=row,
                meta={"scene": scene, "distractor_scene": distractor, "template": frame,
                      "caption_template": specs["caption"].template, "specs": specs, "split": split}))
        return out

    def _distractor(self, rng: random.Random, scene: Scene, negated: str, avoid: Sequence[str],
                    pool: Sequence[str]) -> Scene:
        if len(scene.objects) > 1:
            return scene.without(negated)
        # a lone object: the generic subject "a shape" still needs a shape, so redraw it as another one
        other = rng.choice([o for o in pool if o != negated and o not in avoid])
        return scene.with_swapped(negated, *other.split(" ", 1))

    def scope_pairs(self, n: int, split: str = "train", seed: int = 0, heldout="all") -> list[ScopePair]:
        """`n` ScopePairs: scene = subjects + B; correct negates an absent X, wrong negates B.

        k = number of objects named by each caption (subjects + the negated one), 1..max_objects;
        with k = 1 the subject is the generic "a shape".
        """
        vocab = self.vocabulary(split, heldout)
        rng = self._rng("scope_pairs", split, seed, heldout)
        out = []
        for _ in range(n):
            k = rng.randint(1, self.config.max_objects)
            present, absent = rng.sample(vocab.target_objects, 2)
            subjects = rng.sample([o for o in vocab.subject_objects if o not in (present, absent)], k - 1)
            scene = self.make_scene(rng, subjects + [present])
            frame, cue = rng.choice(vocab.frames), rng.choice(vocab.cues)
            subject_mentions = [Mention.of(s) for s in subjects]
            correct = framed_caption(frame, cue, subject_mentions, Mention.of(absent))
            wrong = framed_caption(frame, cue, subject_mentions, Mention.of(present))
            out.append(ScopePair(self.render(scene), correct.text, wrong.text, cue, frame, k, absent, present,
                                 subjects[0] if subjects else None,
                                 meta={"scene": scene, "specs": {"correct": correct, "wrong": wrong}}))
        return out

    def mcq_items(self, n: int, split: str = "train", seed: int = 0, heldout="all") -> list[MCQItem]:
        """`n` four-way multiple-choice items in NegBench's MCQ form, the correct answer always option 0.

        Scene: subjects S (k - 1 objects) and a target P, all present; A is a target object the scene lacks.
        The correct answer's template type cycles through MCQ_TYPES (a third each), and the three wrong
        options are the other kinds of caption made false by the same two objects:
            positive   correct: affirmative S + P          wrong: affirmative S + A, "no P", "A but no P"
            negative   correct: "no A" (the cue's clause)  wrong: "no P", affirmative A, "A but no P"
            hybrid     correct: "S + P but no A"           wrong: "S + A but no P", affirmative A, "no P"
        (frame and cue drawn per item, shared by its options; with k = 1 the hybrid's subject is "a
        shape"). A model that reads negation as mere mention prefers the options that name P, the object
        the image shows: the NegBench failure (CLIP ViT-B/32: 0.69 positive, 0.07 negative). Every option's
        truth is checked against the scene (`caption_truth`) when the item is made.
        """
        vocab = self.vocabulary(split, heldout)
        rng = self._rng("mcq_items", split, seed, heldout)
        out = []
        for row in range(n):
            kind = MCQ_TYPES[row % len(MCQ_TYPES)]
            k = rng.randint(1, self.config.max_objects)
            present, absent = rng.sample(vocab.target_objects, 2)
            subjects = rng.sample([o for o in vocab.subject_objects if o not in (present, absent)], k - 1)
            named = subjects + [present]
            rng.shuffle(named)
            scene = self.make_scene(rng, named)
            frame, cue = rng.choice(vocab.frames), rng.choice(vocab.cues)
            template = rng.choice(vocab.affirmative_templates)
            P, A = Mention.of(present), Mention.of(absent)
            S = [Mention.of(s) for s in subjects]
            options = {
                "positive": [affirmative_caption(template, [Mention.of(o) for o in named]),
                             affirmative_caption(template, S + [A]), negation_caption(cue, P),
                             framed_caption(frame, cue, [A], P)],
                "negative": [negation_caption(cue, A), negation_caption(cue, P), affirmative_caption(template, [A]),
                             framed_caption(frame, cue, [A], P)],
                "hybrid": [framed_caption(frame, cue, S + [P], A), framed_caption(frame, cue, S + [A], P),
                           affirmative_caption(template, [A]), negation_caption(cue, P)],
            }[kind]
            truths = [caption_truth(scene, spec) for spec in options]
            if truths != [True, False, False, False]:
                raise AssertionError(f"MCQ item {row}: option truths {truths} for {[o.text for o in options]}")
            out.append(MCQItem(image=self.render(scene), captions=[spec.text for spec in options], correct=0,
                               template=kind, source="synthetic", row=row,
                               meta={"scene": scene, "specs": options, "cue": cue, "frame": frame, "k": k,
                                     "split": split}))
        return out

    def minimal_pairs(self, n: int, split: str = "train", seed: int = 0, heldout="all") -> list[MinimalPair]:
        """`n` text-only pairs "A <frame> <cue> B" / "B <frame> <cue> A" with the negated object of each.

        Half name full objects ("red circle"), half only shapes ("circle"); shapes of the two
        objects always differ, so shape-only captions still differ.
        """
        vocab = self.vocabulary(split, heldout)
        rng = self._rng("minimal_pairs", split, seed, heldout)
        out = []
        while len(out) < n:
            a, b = rng.choice(vocab.subject_objects), rng.choice(vocab.target_objects)
            if a.split(" ")[1] == b.split(" ")[1]:
                continue
            naming = rng.choice(("full", "shape"))
            mention_a, mention_b = Mention.of(a), Mention.of(b)
            if naming == "shape":
                mention_a, mention_b = Mention(None, mention_a.shape), Mention(None, mention_b.shape)
            if rng.random() < 0.5:  # either object may come first
                mention_a, mention_b = mention_b, mention_a
            frame, cue = rng.choice(vocab.frames), rng.choice(vocab.cues)
            first = framed_caption(frame, cue, [mention_a], mention_b)
            second = framed_caption(frame, cue, [mention_b], mention_a)
            out.append(MinimalPair(first.text, second.text, mention_b.text(), mention_a.text(), cue, frame, naming))
        return out

    def probe_captions(self, n: int, split: str = "train", seed: int = 0, heldout="all") -> list[ProbeCaption]:
        """`n` captions, half negated and half their affirmative twins (same frame, objects, cue slot).

        Twins share `pair`; labels: negated, cue, template, object. Train on the train split and
        test on the test split to measure generalisation to held-out cues, objects or templates.
        """
        vocab = self.vocabulary(split, heldout)
        rng = self._rng("probe_captions", split, seed, heldout)
        out: list[ProbeCaption] = []
        pair = 0
        while len(out) < n:
            k = rng.randint(1, self.config.max_objects)
            target = rng.choice(vocab.target_objects)
            subjects = tuple(rng.sample([o for o in vocab.subject_objects if o != target], k - 1))
            frame, cue = rng.choice(vocab.frames), rng.choice(vocab.cues)
            for negated in (True, False):
                spec = framed_caption(frame, cue, [Mention.of(s) for s in subjects], Mention.of(target), negated)
                out.append(ProbeCaption(spec.text, negated, cue, frame, target, subjects, k, pair))
            pair += 1
        return out[:n]

    # ---- zero-shot classification and pretraining ----------------------------------------------

    def class_prompts(self) -> dict[str, list[str]]:
        """Class names and prompts for zero-shot classification.

        classes (colour-shape objects), affirmative "a photo of a {object}", negated
        "not a photo of a {object}"; the same for shape_classes and colour_classes ("a red shape").
        """
        shapes, colours = list(self.config.shapes), list(self.config.colours)
        colour_names = [f"{c} shape" for c in colours]
        return {
            "classes": list(self.objects),
            "affirmative": [f"a photo of {with_article(o)}" for o in self.objects],
            "negated": [f"not a photo of {with_article(o)}" for o in self.objects],
            "shape_classes": shapes,
            "shape_affirmative": [f"a photo of {with_article(s)}" for s in shapes],
            "shape_negated": [f"not a photo of {with_article(s)}" for s in shapes],
            "colour_classes": colours,
            "colour_affirmative": [f"a photo of {with_article(c)}" for c in colour_names],
            "colour_negated": [f"not a photo of {with_article(c)}" for c in colour_names],
        }

    def classification_set(self, n: int, split: str = "train", seed: int = 0,
                            label: str = "object") -> tuple[np.ndarray, np.ndarray]:
        """(images uint8 [n, H, W, 3], labels int64 [n]) of single-object images.

        label "object" indexes class_prompts()["classes"], "shape" ["shape_classes"], "colour"
        ["colour_classes"]. Train: training objects only. Test: every object, held-out ones
        included, since zero-shot accuracy is measured over all classes. Objects are cycled in a
        shuffled order, so classes are balanced.
        """
        if label not in ("object", "shape", "colour"):
            raise ValueError(f"label must be 'object', 'shape' or 'colour', got {label!r}")
        _check_split(split)
        rng = self._rng("classification", split, seed)
        pool = list(self.train_objects if split == "train" else self.objects)
        classes = {"object": list(self.objects), "shape": list(self.config.shapes),
                   "colour": list(self.config.colours)}[label]
        images = np.empty((n, self.config.image_size, self.config.image_size, 3), np.uint8)
        labels = np.empty(n, np.int64)
        order: list[str] = []
        for i in range(n):
            if not order:
                order = rng.sample(pool, len(pool))
            name = order.pop()
            images[i] = self.render(self.make_scene(rng, [name]))
            part = {"object": name, "shape": name.split(" ", 1)[1], "colour": name.split(" ", 1)[0]}[label]
            labels[i] = classes.index(part)
        return images, labels

    def pretraining_specs(self, n: int, split: str = "train", seed: int = 0, negated_fraction: float = 0.08,
                          shape_twin_fraction: float = 0.0, objects: str = "split",
                          words: str = "split") -> list[tuple[Scene, CaptionSpec]]:
        """The (scene, caption spec) pairs behind `pretraining_pairs`, before rendering.

        Affirmative captions name every object of the scene, each in full ("red circle", 60 %),
        by shape only ("circle", 25 %) or by colour only ("red shape", 15 %), so that shapes must
        be learnt and not just colours. A `negated_fraction` of captions are absence-negated
        (true) captions naming every object and negating an absent one, as web captions sometimes do.
        A `shape_twin_fraction` of scenes are followed by a twin: the same colours at the same places,
        every shape redrawn as another one. In a contrastive batch the twin is a hard negative that
        colour cannot separate, so shapes get a learning signal early (without twins, colour alone
        tells most scenes of a batch apart and shape zero-shot stays low).
        objects: "split" draws the split's objects (train: no held-out object); "all" draws every
        object, as web data names every object CLIP later meets: held-out objects then stay out of
        negation training and probes only, so a held-out-object test measures negation, not
        recognition of a colour-shape pair never seen at all.
        words: "split" writes captions with the split's cues and templates only; "all" uses every
        cue and template, held-out ones included, as web text uses "never" and "none" long before
        anyone fine-tunes CLIP on negation. Held-out cues and templates then stay out of negation
        fine-tuning and probes only, so a held-out-cue test measures negation, not an embedding
        that was never trained.
        """
        if objects not in ("split", "all"):
            raise ValueError(f"objects must be 'split' or 'all', got {objects!r}")
        if words not in ("split", "all"):
            raise ValueError(f"words must be 'split' or 'all', got {words!r}")
        for label, value in [("negated_fraction", negated_fraction), ("shape_twin_fraction", shape_twin_fraction)]:
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{label} must be within [0, 1], got {value}")
        vocab = self.vocabulary(split, "all")
        if words == "all":
            vocab = replace(vocab, cues=tuple(CUES), frames=tuple(NEGATION_FRAMES),
                            affirmative_templates=tuple(AFFIRMATIVE_TEMPLATES))
        rng = self._rng("pretraining", split, seed)
        pool = self.train_objects if split == "train" and objects == "split" else self.objects
        out = []
        for _ in range(n):
            names = rng.sample(pool, rng.randint(1, self.config.max_objects))
            scene = self.make_scene(rng, names)
            if shape_twin_fraction and len(out) % 2 == 1 and rng.random() < shape_twin_fraction:
                scene = self._shape_twin(rng, out[-1][0], pool) or scene
                names = list(scene.names)
            if rng.random() < negated_fraction:
                absent = rng.choice([o for o in pool if o not in names])
                spec = framed_caption(rng.choice(vocab.frames), rng.choice(vocab.cues),
                                      [Mention.of(o) for o in names], Mention.of(absent))
            else:
                spec = affirmative_caption(rng.choice(vocab.affirmative_templates),
                                           [self._web_mention(rng, o) for o in names])
            out.append((scene, spec))
        return out

    def pretraining_pairs(self, n: int, split: str = "train", seed: int = 0, negated_fraction: float = 0.08,
                          shape_twin_fraction: float = 0.0, objects: str = "split",
                          words: str = "split") -> tuple[np.ndarray, list[str]]:
        """(images uint8 [n, H, W, 3], captions) mirroring web data; see `pretraining_specs`."""
        pairs = self.pretraining_specs(n, split, seed, negated_fraction, shape_twin_fraction, objects, words)
        images = np.empty((n, self.config.image_size, self.config.image_size, 3), np.uint8)
        for i, (scene, _) in enumerate(pairs):
            images[i] = self.render(scene)
        return images, [spec.text for _, spec in pairs]

    def _shape_twin(self, rng: random.Random, scene: Scene, pool: Sequence[str]) -> Scene | None:
        """`scene` with every object's shape redrawn as another one (same colours and places), or None."""
        twin, unavailable = scene, set(scene.names)  # a twin shares no object with its scene or itself
        for obj in scene.objects:
            options = [s for s in self.config.shapes
                       if f"{obj.colour} {s}" in pool and f"{obj.colour} {s}" not in unavailable]
            if not options:
                return None
            shape = rng.choice(options)
            unavailable.add(f"{obj.colour} {shape}")
            twin = twin.with_swapped(obj.name, obj.colour, shape)
        return replace(twin, noise_seed=rng.getrandbits(32))

    @staticmethod
    def _web_mention(rng: random.Random, name: str) -> Mention:
        full = Mention.of(name)
        draw = rng.random()
        if draw < 0.60:
            return full
        if draw < 0.85:
            return Mention(None, full.shape)
        return Mention(full.colour, None)


__all__ = ["WorldConfig", "SyntheticWorld", "ScopePair", "MinimalPair", "ProbeCaption", "Scene", "CaptionSpec",
           "Mention", "caption_truth", "DEFAULT_COLOURS"]
