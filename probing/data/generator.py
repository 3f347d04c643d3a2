"""Rule-based negation captions from object annotations: no LLM, seeded and deterministic.

Input: images with the objects they contain (COCO instances -> `CocoImage`) or NegBench retrieval
rows (`RetrievalItem`: positive_objects, negative_objects). For each image the generator picks

    subjects        1..max_subjects visible objects, named affirmatively;
    negated_object  another visible object: presence_negated negates it, so it is false;
    absent_object   an object not in the image: absence_negated negates it, so it is true;

and writes them with the synthetic world's templates and cues (probing.captions):
    caption           "a photo of a person and an oven"
    presence_negated  "a person but no oven"
    absence_negated   "a person but no fork"
The distractor image is another image of the same collection that shows the subjects but not the
negated object (None when there is none), mined from the annotations as CoN-CLIP does. k = number
of objects named (subjects + 1).

Real captions (`captions="auto"`): where an image comes with the file's own captions, they are used
instead of templates, so that what a model sees is the data's language:
    affirmative captions (COCO captions, NegBench's plain retrieval file): caption = a real caption,
        presence_negated / absence_negated = that caption + a negation clause about the negated /
        absent object ("A man is in a kitchen making pizzas, but there is no bowl");
    negated captions (NegBench's negated retrieval file, LLM-written true negations): absence_negated
        = the file's own caption, presence_negated = the same caption with its absent object swapped
        for a visible one (its own words, now false); the affirmative caption comes from the templates
        (the file has none), which meta["generated"] records.
meta["generated"] lists which captions of an example the rules wrote (the others are the file's).

Which objects count as visible: for COCO, categories whose boxes cover at least `min_area` of the
image (a 20-pixel cup at the back is a poor thing to negate); every annotated category counts as
present when choosing absent objects. For NegBench, positive_objects are visible and absent objects
come from negative_objects. The dataset notes that some of those are in fact visible; annotations
cannot catch that, so such captions inherit the dataset's error.
"""
from __future__ import annotations

import random
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from probing.captions import AFFIRMATIVE_TEMPLATES, CUES, NEGATION_FRAMES, affirmative_text, framed_text
from probing.data.ccneg import find_negation_cue
from probing.data.records import CocoImage, Loaded, LoadReport, NegationExample, RetrievalItem

# "none" is left out: its clause ("none of the shapes is ...") speaks of the synthetic world's shapes.
DEFAULT_CUES = ("no", "not", "without", "there is no", "isn't", "never")
# Names that read badly with "a": plural or mass nouns among the COCO categories.
SOME_NOT_A = {"skis", "scissors", "broccoli"}
# a negation clause after a real caption, one per cue: "{caption}, but there is no bowl"
CAPTION_CLAUSES: dict[str, str] = {
    "no": "{caption}, but no {x}",
    "not": "{caption}, but not {a_x}",
    "without": "{caption}, without {a_x}",
    "there is no": "{caption}, and there is no {x}",
    "isn't": "{caption}, but there isn't {a_x}",
    "never": "{caption}, and never {a_x}",
}
CAPTION_MODES = ("template", "auto")


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
    captions: tuple[str, ...] = ()  # the file's own affirmative captions of the image
    negated_captions: tuple[tuple[str, str], ...] = ()  # the file's own negated captions and the object each negates


def generate_negations(images: Sequence[CocoImage | RetrievalItem], *, seed: int = 0, per_image: int = 1,
                       cues: Sequence[str] = DEFAULT_CUES, frames: Sequence[str] = tuple(NEGATION_FRAMES),
                       caption_templates: Sequence[str] = tuple(AFFIRMATIVE_TEMPLATES), max_subjects: int = 1,
                       min_area: float = 0.01, distractors: bool = True,
                       captions: str = "template") -> Loaded[NegationExample]:
    """Presence- and absence-negated captions for each image, as NegationExamples.

    per_image: examples per image (different choices each). max_subjects: up to this many objects
    named beside the negated one (k = subjects + 1). Images that cannot give an example (fewer than
    two visible objects, no absent candidate) are counted in `report.filtered`, never dropped silently.
    Absent objects are drawn preferably among objects that appear elsewhere with a subject (a
    "fork" in a kitchen rather than a "giraffe"): plausible absences make harder negatives.
    captions: "template" writes every caption from templates; "auto" uses the file's own captions where
    an image has them (module docstring): a CocoImage's meta["captions"] (`attach_captions`), a
    RetrievalItem's captions.
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
    if captions not in CAPTION_MODES:
        raise ValueError(f"captions must be one of {CAPTION_MODES}, got {captions!r}")

    annotated = [_annotate(item, min_area, real_captions=captions == "auto") for item in images]
    vocabulary = sorted({name for a in annotated for name in a.present})
    together = _co_occurrence(annotated)
    holders = _images_by_object(annotated)
    rng = random.Random(int(np.random.SeedSequence([seed, 0x6E6567]).generate_state(1)[0]))

    report = LoadReport(path=_source_name(images))
    examples = []
    for index, item in enumerate(annotated):
        if len(item.visible) < 2:
            report.filtered["fewer than two visible objects"] = (
                report.filtered.get("fewer than two visible objects", 0) + 1
            )
            continue
        for _ in range(per_image):
            subjects, negated = _pick_visible(rng, item, max_subjects)
            own = rng.choice(item.negated_captions) if item.negated_captions else None
            if own is not None and _object_pattern(negated).search(own[0]):  # negate what the caption does not name
                unnamed = [v for v in item.visible if v not in subjects and not _object_pattern(v).search(own[0])]
                negated = rng.choice(unnamed) if unnamed else negated
            absent = own[1] if own else _pick_absent(rng, item, subjects, vocabulary, together)
            if absent is None:
                report.filtered["no absent object to negate"] = report.filtered.get("no absent object to negate", 0) + 1
                break
            frame, cue, template = rng.choice(frames), rng.choice(cues), rng.choice(caption_templates)
            named = list(subjects) + [negated]
            rng.shuffle(named)
            distractor = _pick_distractor(rng, annotated, holders, index, subjects, negated) if distractors else None
            texts = {"caption": affirmative_text(template, named, article),
                     "presence_negated": framed_text(frame, cue, subjects, negated, article=article),
                     "absence_negated": framed_text(frame, cue, subjects, absent, article=article)}
            generated = ["caption", "presence_negated", "absence_negated"]
            if own is not None:  # the file's true negation, and the same words about a visible object
                cue = find_negation_cue(own[0]) or cue
                texts.update(absence_negated=own[0], presence_negated=swap_object(own[0], absent, negated))
                generated, frame = ["caption", "presence_negated"], "file"
            elif item.captions:  # the file's caption, with a negation clause
                caption = rng.choice(item.captions).rstrip(" .")
                texts = {key: CAPTION_CLAUSES[cue].format(caption=caption, x=name, a_x=article(name))
                         for key, name in (("presence_negated", negated), ("absence_negated", absent))}
                texts["caption"] = caption
                generated, frame = ["presence_negated", "absence_negated"], "caption"
            examples.append(NegationExample(
                image=item.image, **texts,
                cue=cue, negated_object=negated, absent_object=absent, subject=subjects[0],
                k=len(subjects) + 1 if frame not in ("file", "caption") else None,
                distractor_image=None if distractor is None else annotated[distractor].image,
                source=item.source, row=item.row,
                meta={"image_id": item.image_id, "subjects": list(subjects), "template": frame,
                      "caption_template": template, "generated": generated,
                      "distractor_image_id": None if distractor is None else annotated[distractor].image_id}))
    report.loaded = len(examples)
    return Loaded(examples, report)


def _annotate(item: CocoImage | RetrievalItem, min_area: float, *, real_captions: bool = False) -> _Annotated:
    if isinstance(item, CocoImage):
        visible = tuple(name for name in item.objects if item.areas.get(name, 1.0) >= min_area)
        own = tuple(item.meta.get("captions", ())) if real_captions else ()
        return _Annotated(item.image, visible, frozenset(item.objects), None, item.image_id, item.source, item.row,
                          captions=tuple(c for c in own if not find_negation_cue(c)))
    if isinstance(item, RetrievalItem):
        present = frozenset(item.positive_objects)
        candidates = tuple(name for name in item.negative_objects if name not in present)
        affirmative, negated = (), ()
        if real_captions:
            affirmative = tuple(c for c in item.captions if not find_negation_cue(c))
            negated = tuple((c, name) for c in item.captions if find_negation_cue(c)
                            for name in [named_object(c, candidates)] if name is not None)
        return _Annotated(item.image, tuple(item.positive_objects), present, candidates, item.image_id,
                          item.source, item.row, captions=affirmative, negated_captions=negated)
    raise TypeError(f"expected CocoImage or RetrievalItem records, got {type(item).__name__}")


def _object_pattern(name: str) -> re.Pattern:
    """An object name in a caption, with its article when it has one ("a chair", "an oven", "chairs")."""
    return re.compile(rf"\b(?:(an?|some) )?({re.escape(name)})(s?)\b", re.IGNORECASE)


def named_object(text: str, names: Sequence[str]) -> str | None:
    """The first of `names` the caption mentions (by position in the text), or None."""
    found = [(match.start(), name) for name in names for match in [_object_pattern(name).search(text)] if match]
    return min(found)[1] if found else None


def swap_object(text: str, old: str, new: str) -> str:
    """`text` with every mention of the object `old` replaced by `new`, articles and plural kept in agreement
    ("there is no chair in sight" -> "there is no bowl in sight", "An apple" -> "A bowl")."""
    def replace(match: re.Match) -> str:
        if match.group(3):  # plural
            phrase = new + ("" if new.endswith("s") else "s")
            return (match.group(1) + " " + phrase) if match.group(1) and match.group(1).lower() == "some" else phrase
        phrase = article(new) if match.group(1) else new
        return phrase[:1].upper() + phrase[1:] if match.group(0)[:1].isupper() else phrase
    return _object_pattern(old).sub(replace, text)


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
