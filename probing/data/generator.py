"""Rule-based negation captions from object annotations: no LLM, seeded and deterministic.

Input: images with the objects they contain (COCO instances -> `CocoImage`) or NegBench retrieval
rows (`RetrievalItem`: positive_objects, negative_objects). For each image the generator picks

    subjects        1..max_subjects visible objects, named affirmatively;
    negated_object  another visible object: presence_negated negates it, so it is false;
    absent_object   an object not in the image: absence_negated negates it, so it is true;

and writes them with the synthetic world's templates and cues (probing.synthetic.captions):
    caption           "a photo of a person and an oven"
    presence_negated  "a person but no oven"
    absence_negated   "a person but no fork"
The distractor image is another image of the same collection that shows the subjects but not the
negated object (None when there is none). k = number of objects named (subjects + 1).

Which objects count as visible: for COCO, categories whose boxes cover at least `min_area` of the
image (a 20-pixel cup at the back is a poor thing to negate); every annotated category counts as
present when choosing absent objects. For NegBench, positive_objects are visible and absent objects
come from negative_objects. The dataset notes that some of those are in fact visible; annotations
cannot catch that, so such captions inherit the dataset's error.
"""
from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from probing.synthetic.captions import AFFIRMATIVE_TEMPLATES, CUES, NEGATION_FRAMES, affirmative_text, framed_text
from probing.data.records import CocoImage, Loaded, LoadReport, NegationExample, RetrievalItem

# "none" is left out: its clause ("none of the shapes is ...") speaks of the synthetic world's shapes.
DEFAULT_CUES = ("no", "not", "without", "there is no", "isn't", "never")
# Names that read badly with "a": plural or mass nouns among the COCO categories.
SOME_NOT_A = {"skis", "scissors", "broccoli"}


def article(name: str) -> str:
    if name in SOME_NOT_A:
        return "some " + name
    return ("an " if name[:1].lower() in "aeiou" else "a ") + name


@dataclass(frozen=True)
class _Annotated:
    """One input image reduced to what the rules need."""

    image: object
    visible: tuple[str, ...]  # may be negated or be subjects
    present: frozenset[str]  # everything known to be in the image
    absent_candidates: tuple[str, ...] | None  # None: any known object not present
    image_id: object
    source: str | None
    row: object


def generate_negations(images: Sequence[CocoImage | RetrievalItem], *, seed: int = 0, per_image: int = 1,
                       cues: Sequence[str] = DEFAULT_CUES, frames: Sequence[str] = tuple(NEGATION_FRAMES),
                       caption_templates: Sequence[str] = tuple(AFFIRMATIVE_TEMPLATES), max_subjects: int = 1,
                       min_area: float = 0.01, distractors: bool = True) -> Loaded[NegationExample]:
    """Presence- and absence-negated captions for each image, as NegationExamples.

    per_image: examples per image (different choices each). max_subjects: up to this many objects
    named beside the negated one (k = subjects + 1). Images that cannot give an example (fewer than
    two visible objects, no absent candidate) are counted in `report.filtered`, never dropped silently.
    Absent objects are drawn preferably among objects that appear elsewhere with a subject (a
    "fork" in a kitchen rather than a "giraffe"): plausible absences make harder negatives.
    """
    unknown = [c for c in cues if c not in CUES or c == "none"]
    if unknown:
        raise ValueError(f"cues {unknown} cannot be used; choose among {[c for c in CUES if c != 'none']}")
    for name, chosen, known in [("frames", frames, NEGATION_FRAMES), ("caption_templates", caption_templates,
                                                                      AFFIRMATIVE_TEMPLATES)]:
        if not chosen or set(chosen) - set(known):
            raise ValueError(f"{name} must be a non-empty subset of {list(known)}, got {list(chosen)}")
    if per_image < 1 or max_subjects < 1:
        raise ValueError("per_image and max_subjects must be at least 1")

    annotated = [_annotate(item, min_area) for item in images]
    vocabulary = sorted({name for a in annotated for name in a.present})
    together = _co_occurrence(annotated)
    holders = _images_by_object(annotated)
    rng = random.Random(int(np.random.SeedSequence([seed, 0x6E6567]).generate_state(1)[0]))

    report = LoadReport(path=_source_name(images))
    examples = []
    for index, item in enumerate(annotated):
        if len(item.visible) < 2:
            report.filtered["fewer than two visible objects"] = report.filtered.get("fewer than two visible objects", 0) + 1
            continue
        for _ in range(per_image):
            subjects, negated = _pick_visible(rng, item, max_subjects)
            absent = _pick_absent(rng, item, subjects, vocabulary, together)
            if absent is None:
                report.filtered["no absent object to negate"] = report.filtered.get("no absent object to negate", 0) + 1
                break
            frame, cue, template = rng.choice(frames), rng.choice(cues), rng.choice(caption_templates)
            named = list(subjects) + [negated]
            rng.shuffle(named)
            distractor = _pick_distractor(rng, annotated, holders, index, subjects, negated) if distractors else None
            examples.append(NegationExample(
                image=item.image,
                caption=affirmative_text(template, named, article),
                presence_negated=framed_text(frame, cue, subjects, negated, article=article),
                absence_negated=framed_text(frame, cue, subjects, absent, article=article),
                cue=cue, negated_object=negated, absent_object=absent, subject=subjects[0], k=len(subjects) + 1,
                distractor_image=None if distractor is None else annotated[distractor].image,
                source=item.source, row=item.row,
                meta={"image_id": item.image_id, "subjects": list(subjects), "template": frame,
                      "caption_template": template,
                      "distractor_image_id": None if distractor is None else annotated[distractor].image_id}))
    report.loaded = len(examples)
    return Loaded(examples, report)


def _annotate(item: CocoImage | RetrievalItem, min_area: float) -> _Annotated:
    if isinstance(item, CocoImage):
        visible = tuple(name for name in item.objects if item.areas.get(name, 1.0) >= min_area)
        return _Annotated(item.image, visible, frozenset(item.objects), None, item.image_id, item.source, item.row)
    if isinstance(item, RetrievalItem):
        present = frozenset(item.positive_objects)
        candidates = tuple(name for name in item.negative_objects if name not in present)
        return _Annotated(item.image, tuple(item.positive_objects), present, candidates, item.image_id,
                          item.source, item.row)
    raise TypeError(f"expected CocoImage or RetrievalItem records, got {type(item).__name__}")


def _pick_visible(rng: random.Random, item: _Annotated, max_subjects: int) -> tuple[tuple[str, ...], str]:
    chosen = rng.sample(item.visible, min(len(item.visible), rng.randint(2, max_subjects + 1)))
    return tuple(chosen[:-1]), chosen[-1]


def _pick_absent(rng: random.Random, item: _Annotated, subjects: Sequence[str], vocabulary: Sequence[str],
                 together: dict[str, set[str]]) -> str | None:
    if item.absent_candidates is not None:
        candidates = list(item.absent_candidates)
    else:
        candidates = [name for name in vocabulary if name not in item.present]
    plausible = [name for name in candidates if any(name in together[s] for s in subjects)]
    pool = plausible or candidates
    return rng.choice(pool) if pool else None


def _pick_distractor(rng: random.Random, annotated: Sequence[_Annotated], holders: dict[str, set[int]],
                     index: int, subjects: Sequence[str], negated: str) -> int | None:
    """Index of another image with every subject and without the negated object, or None."""
    with_subjects = set.intersection(*(holders[s] for s in subjects)) - {index}
    candidates = sorted(i for i in with_subjects if negated not in annotated[i].present
                        and annotated[i].image != annotated[index].image)
    return rng.choice(candidates) if candidates else None


def _co_occurrence(annotated: Sequence[_Annotated]) -> dict[str, set[str]]:
    together: dict[str, set[str]] = defaultdict(set)
    for item in annotated:
        for name in item.present:
            together[name] |= item.present - {name}
    return together


def _images_by_object(annotated: Sequence[_Annotated]) -> dict[str, set[int]]:
    holders: dict[str, set[int]] = defaultdict(set)
    for index, item in enumerate(annotated):
        for name in item.present:
            holders[name].add(index)
    return holders


def _source_name(images: Sequence) -> str:
    sources = {getattr(item, "source", None) for item in images} - {None}
    return f"generated from {sources.pop()}" if len(sources) == 1 else "generated"
