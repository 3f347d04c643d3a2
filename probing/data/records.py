"""Record types shared by every data source, the error they raise, and the report of a lenient load.

One negation example looks the same whether it comes from the synthetic world, CC-Neg, or the
rule-based generator over COCO: `NegationExample`. Benchmarks with a different shape (NegBench
multiple choice and retrieval, SugarCREPE / VALSE caption-vs-foil pairs, COCO images with their
object lists) get their own small records. A field that a source does not provide is None:
nothing is invented to fill it.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Iterable, TypeVar, Union

import numpy as np

# An image is a path on disk (real data) or an RGB uint8 array [H, W, 3] (synthetic world).
ImageRef = Union[str, Path, np.ndarray, None]


@dataclass
class NegationExample:
    """One image with a true caption and its negated variants.

    caption            true affirmative caption.
    presence_negated   negates something that IS in the image, so it is false (CC-Neg's negated caption).
    absence_negated    negates something that is NOT in the image, so it is true.
    cue                the negation word used in the negated caption(s): "no", "not", "without", ...
    negated_object     the object negated by `presence_negated` (visible in the image).
    absent_object      the object negated by `absence_negated` (not in the image).
    subject            the object the negated captions are about (kept by the distractor image).
    k                  caption complexity: number of objects (or predicate-object pairs) named.
    distractor_image   an image showing the subject but not `negated_object`, so `presence_negated`
                       is true for it (CoN-CLIP's I').
    source, row        where the record came from, for messages ("ccneg.pt", row 17).
    meta               source-specific extras (scene, template id, image id, flags, ...).
    """

    image: ImageRef
    caption: str | None
    presence_negated: str | None = None
    absence_negated: str | None = None
    cue: str | None = None
    negated_object: str | None = None
    absent_object: str | None = None
    subject: str | None = None
    k: int | None = None
    distractor_image: ImageRef = None
    source: str | None = None
    row: int | str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class MCQItem:
    """NegBench multiple choice: pick `captions[correct]` among the captions for `image`.

    template is the template type of the correct answer: "positive", "negative" or "hybrid".
    """

    image: ImageRef
    captions: list[str]
    correct: int
    template: str | None
    source: str | None = None
    row: int | str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class RetrievalItem:
    """NegBench retrieval row: one image, its captions, and the objects it does / does not contain.

    Note from the dataset's own quirks: some `negative_objects` are in fact visible in the image.
    """

    image: ImageRef
    captions: list[str]
    positive_objects: list[str]
    negative_objects: list[str]
    image_id: int | None = None
    source: str | None = None
    row: int | str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class FoilPair:
    """A true caption and a minimally changed false one (SugarCREPE negative caption, VALSE foil).

    fold names the SugarCREPE fold ("add_obj", ...) or the VALSE piece ("existence").
    """

    image: ImageRef
    caption: str
    foil: str
    fold: str
    source: str | None = None
    row: int | str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class RegionItem:
    """A referring phrase and candidate boxes of one image; `boxes[correct]` is the region it refers
    to (NegationCLIP's NegRefCOCOg). Boxes are [x, y, width, height] in pixels, COCO's convention."""

    image: ImageRef
    phrase: str
    boxes: list[list[float]]
    correct: int
    source: str | None = None
    row: int | str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class CocoImage:
    """A COCO image with the names of the object categories annotated in it.

    objects: category names, largest total box area first, each once.
    areas:   category name -> summed box area as a fraction of the image area.
    """

    image: ImageRef
    image_id: int
    objects: list[str]
    areas: dict[str, float] = field(default_factory=dict)
    source: str | None = None
    row: int | str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class DataError(ValueError):
    """A data file problem, with the file, the row (when there is one) and what is wrong. `row` is the record's index
    from 0 in the file's order (a CSV's header is not a record; a malformed CSV row's message adds the file line),
    or a JSON item's key."""

    def __init__(self, path: str | os.PathLike | None, row: int | str | None, problem: str):
        self.path = None if path is None else str(path)
        self.row = row
        self.problem = problem
        where = self.path or "<data>"
        if row is not None:
            where += f", row {row}"
        super().__init__(f"{where}: {problem}")


def problem_kind(problem: object) -> str:
    """What a row's problem is counted under: its text up to the first colon ("image not found: a.jpg" -> "image
    not found")."""
    return str(problem).split(":")[0]


@dataclass
class LoadReport:
    """What a load kept, skipped (lenient mode) and flagged (kept, but worth a look).

    Row-level problems raise a DataError in strict mode; in lenient mode they land in `skipped`
    as (row, problem). `flagged` holds rows kept with a remark, e.g. leftover generation text in a
    caption. `filtered` counts rows excluded by the benchmark's own protocol (VALSE agreement),
    which are not problems.
    """

    path: str
    loaded: int = 0
    skipped: list[tuple[int | str | None, str]] = field(default_factory=list)
    flagged: list[tuple[int | str | None, str]] = field(default_factory=list)
    filtered: dict[str, int] = field(default_factory=dict)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def skip_reasons(self) -> Counter:
        """Problem kind (problem_kind) -> count."""
        return Counter(problem_kind(problem) for _, problem in self.skipped)

    def skipped_note(self, reasons: int = 3, rows: int = 5) -> str:
        """One line for a lenient reader's notes: how many rows were skipped, and which rows for each of the most
        common problems ("x.csv: skipped 2 rows (field 'captions' is not a list: rows 4, 9)")."""
        by_reason: dict[str, list] = {}
        for row, problem in self.skipped:
            by_reason.setdefault(problem_kind(problem), []).append(row)
        common = sorted(by_reason.items(), key=lambda item: -len(item[1]))  # ties in file order, as most_common
        parts = []
        for reason, skipped_rows in common[:reasons]:
            named = [str(r) for r in skipped_rows if r is not None][:rows]
            more = f" and {len(skipped_rows) - len(named)} more" if named and len(skipped_rows) > len(named) else ""
            parts.append(f"{reason}: {'row' if len(named) == 1 else 'rows'} {', '.join(named)}{more}"
                         if named else f"{reason} x{len(skipped_rows)}")
        others = sum(len(skipped_rows) for _, skipped_rows in common[reasons:])
        if others:
            parts.append(f"{others} more row(s) for {len(common) - reasons} other problem(s)")
        return f"{self.path}: skipped {self.n_skipped} row{'' if self.n_skipped == 1 else 's'} ({'; '.join(parts)})"

    def flag_reasons(self) -> Counter:
        return Counter(problem_kind(problem) for _, problem in self.flagged)

    def summary(self) -> str:
        lines = [f"{self.path}: loaded {self.loaded}, skipped {self.n_skipped}, flagged {len(self.flagged)}"]
        for reason, count in self.filtered.items():
            lines.append(f"  filtered {count}: {reason}")
        for reason, count in self.skip_reasons().most_common():
            lines.append(f"  skipped {count}: {reason}")
        for reason, count in self.flag_reasons().most_common():
            lines.append(f"  flagged {count}: {reason}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


T = TypeVar("T")


class Loaded(list, Generic[T]):
    """A plain list of records that also carries the LoadReport of the load that made it."""

    def __init__(self, items: Iterable[T] = (), report: LoadReport | None = None):
        super().__init__(items)
        self.report = report if report is not None else LoadReport(path="<memory>", loaded=len(self))
