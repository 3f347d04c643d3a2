"""The caption grammar of the synthetic world: cues, templates, and the truth of a caption in a scene.

A caption is built from a structured `CaptionSpec` (objects it says are present, objects it says
are absent) and the text is rendered from it, so truth never depends on reading text. To check
that the text says what the spec says, `parse_caption` reads the text back with the same grammar,
independently of the code that wrote it.

Negated captions put a negation clause into a frame:
    frame "but":   "{subject} but {clause}"        -> "a red circle but no blue square"
    cue "isn't":   clause "there isn't {a x}"      -> "a red circle but there isn't a blue square"
Each cue also has an affirmative twin clause ("no {x}" / "{a x}", "without {a x}" / "with {a x}"),
so a probe set can hold pairs that differ only in the negation.

No template uses exclusive words ("only", "just"): a caption that names some of the objects of a
scene stays true, as web captions do.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, NamedTuple, Sequence

# cue -> (negated clause, affirmative twin). {a_x}: object with article ("a green star"),
# {x}: bare object ("green star").
CUES: dict[str, tuple[str, str]] = {
    "no": ("no {x}", "{a_x}"),
    "not": ("not {a_x}", "{a_x}"),
    "without": ("without {a_x}", "with {a_x}"),
    "there is no": ("there is no {x}", "there is {a_x}"),
    "never": ("never {a_x}", "always {a_x}"),
    "none": ("none of the shapes is {a_x}", "one of the shapes is {a_x}"),
    "isn't": ("there isn't {a_x}", "there is {a_x}"),
}

# Frames hold a subject phrase and a clause; the clause comes last ("end"), first ("start") or
# after a prefix ("middle" of the sentence, counting the prefix).
NEGATION_FRAMES: dict[str, str] = {
    "but": "{subject} but {clause}",
    "and": "{subject} and {clause}",
    "photo": "a photo of {subject}, {clause}",
    "front": "{clause}, but {subject}",
    "while": "{clause}, while there is {subject}",
}
# "a circle and without a square" reads badly: that frame drops its "and" for this cue.
FRAME_FOR_CUE: dict[tuple[str, str], str] = {("and", "without"): "{subject} {clause}"}
AFFIRMATIVE_TEMPLATES: dict[str, str] = {
    "aff_list": "{objects}",
    "aff_photo": "a photo of {objects}",
    "aff_there": "there is {objects}",
    "aff_shows": "the picture shows {objects}",
}
GENERIC_SUBJECT = "shape"  # "a shape": the subject of a caption that names no other object


class Mention(NamedTuple):
    """An object as a caption names it: colour and shape, either None when unnamed.

    Mention("red", "circle") = "red circle", Mention(None, "circle") = "circle",
    Mention("red", None) = "red shape", Mention(None, None) = "shape" (any object).
    """

    colour: str | None
    shape: str | None

    @classmethod
    def of(cls, name: str) -> "Mention":
        """Mention of a full object name "red circle"."""
        colour, shape = name.split(" ", 1)
        return cls(colour, shape)

    def text(self) -> str:
        return " ".join(part for part in (self.colour, self.shape or GENERIC_SUBJECT) if part)

    def matches(self, colour: str, shape: str) -> bool:
        return (self.colour is None or self.colour == colour) and (self.shape is None or self.shape == shape)


@dataclass(frozen=True)
class CaptionSpec:
    """What a caption asserts, beside its text.

    present: mentions that must each match some object; absent: mentions that must match none.
    template: template id; cue: the negation cue, or None for an affirmative caption.
    """

    text: str
    present: tuple[Mention, ...]
    absent: tuple[Mention, ...] = ()
    template: str | None = None
    cue: str | None = None

    @property
    def negated(self) -> bool:
        return bool(self.absent)


def with_article(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def list_phrase(names: Sequence[str], article: Callable[[str], str] = with_article) -> str:
    """'a red circle', 'a red circle and a blue square', 'a red circle, a blue square and a star'."""
    parts = [article(name) for name in names]
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def affirmative_text(template: str, names: Sequence[str], article: Callable[[str], str] = with_article) -> str:
    """An affirmative caption naming `names` with template `template` (an AFFIRMATIVE_TEMPLATES id)."""
    return AFFIRMATIVE_TEMPLATES[template].format(objects=list_phrase(names, article))


def framed_text(frame: str, cue: str, subjects: Sequence[str], target: str, negated: bool = True,
                article: Callable[[str], str] = with_article) -> str:
    """`subjects` named affirmatively and `target` in the cue's negated (or affirmative twin) clause.

    Works on plain names, so the rule-based generator uses it for real object names too.
    """
    clause = CUES[cue][0 if negated else 1].format(x=target, a_x=article(target))
    pattern = FRAME_FOR_CUE.get((frame, cue), NEGATION_FRAMES[frame])
    return pattern.format(subject=list_phrase(subjects, article), clause=clause)


def affirmative_caption(template: str, mentions: Sequence[Mention]) -> CaptionSpec:
    """A caption that says every mention is present."""
    text = affirmative_text(template, [mention.text() for mention in mentions])
    return CaptionSpec(text, tuple(mentions), (), template, None)


def framed_caption(frame: str, cue: str, subjects: Sequence[Mention], target: Mention,
                   negated: bool = True) -> CaptionSpec:
    """`subjects` present and `target` absent (negated) or present (the affirmative twin).

    With no subjects, the generic "a shape" stands in as the subject: it asserts that the image
    holds at least one object.
    """
    subject_mentions = tuple(subjects) or (Mention(None, None),)
    text = framed_text(frame, cue, [mention.text() for mention in subject_mentions], target.text(), negated)
    if negated:
        return CaptionSpec(text, subject_mentions, (target,), frame, cue)
    return CaptionSpec(text, subject_mentions + (target,), (), frame, None)


def negation_caption(cue: str, target: Mention) -> CaptionSpec:
    """The cue's negated clause alone ("no blue square", "there isn't a blue square"): `target` absent,
    nothing asserted present (NegBench's "negative" template type)."""
    text = CUES[cue][0].format(x=target.text(), a_x=with_article(target.text()))
    return CaptionSpec(text, (), (target,), "negation", cue)


def caption_truth(scene, spec: CaptionSpec) -> bool:
    """Whether `spec` is true of `scene`: every present mention matched, no absent mention matched."""
    objects = [(obj.colour, obj.shape) for obj in scene.objects]
    return (all(any(mention.matches(*obj) for obj in objects) for mention in spec.present)
            and not any(mention.matches(*obj) for mention in spec.absent for obj in objects))


class CaptionParser:
    """Reads a caption of this grammar back into (present, absent) mentions.

    Independent of the writer: it finds object mentions with a regular expression over the
    vocabulary, and marks a mention absent when a negation clause of some cue directly governs it.
    """

    def __init__(self, colours: Iterable[str], shapes: Iterable[str]):
        colour = "|".join(map(re.escape, sorted(colours, key=len, reverse=True)))
        shape = "|".join(map(re.escape, sorted([*shapes, GENERIC_SUBJECT], key=len, reverse=True)))
        self._mention = re.compile(rf"\b(?:({colour}) )?({shape})\b")
        mention = rf"(?:(?:{colour}) )?(?:{shape})\b"
        governed = []
        for negated_clause, _ in CUES.values():
            pattern = re.escape(negated_clause).replace(r"\{a_x\}", rf"an? {mention}").replace(r"\{x\}", mention)
            governed.append(rf"\b{pattern}")
        self._negation = re.compile("|".join(governed))

    def __call__(self, text: str) -> tuple[tuple[Mention, ...], tuple[Mention, ...]]:
        negated_spans = [match.span() for match in self._negation.finditer(text)]
        present, absent = [], []
        for match in self._mention.finditer(text):
            shape = None if match.group(2) == GENERIC_SUBJECT else match.group(2)
            mention = Mention(match.group(1), shape)
            inside = any(start <= match.start() and match.end() <= end for start, end in negated_spans)
            (absent if inside else present).append(mention)
        return tuple(present), tuple(absent)


def parse_caption(
    text: str, colours: Iterable[str], shapes: Iterable[str]
) -> tuple[tuple[Mention, ...], tuple[Mention, ...]]:
    """(present mentions, absent mentions) of a synthetic caption, read from its text alone."""
    return CaptionParser(colours, shapes)(text)
