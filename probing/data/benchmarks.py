"""Every benchmark file the evaluator reads, as the data of the layer measurements: what each kind can honestly
give, and what it cannot (said, never filled in with synthetic data).

`read_benchmark(path)` reads a file (any kind `probing.data.loaders.load_dataset` reads) into a `Benchmark`:

    captions     ProbeCaptions of the negation probe task: label 1 = the caption negates something
    scope        ProbeCaptions of the scope probe task: label 1 = the negated object's name sorts before the
                 affirmed object's (the synthetic scope task's label, probing.measure.tasks)
    examples     NegationExamples (caption true, presence-negated false, absence-negated true): sensitivity edits,
                 gradient batches, the CC-Neg-style causal metrics and the negation patching pairs
    mcq, foils   the file's own items for the causal check's benchmark metric (MCQ accuracy, caption-vs-foil)
    scope_pairs  (true, false) caption pairs that differ in which object is negated: scope patching pairs
    refused      measurement -> why this kind cannot feed it

Per kind (rows: the file's rows or items; each file a seeded draw of at most --limit rows). Columns: the negation
probe task (label 1 = negated), the scope probe task, the NegationExamples behind the sensitivity edits and the
gradient batches, the causal check's metrics, the patching pairs.

    ccneg               negation: caption 0, negated caption 1; scope: -; examples: caption -> the file's
                        presence-negated caption; causal: CC-Neg-style accuracy, R@1; patching: negation pairs
    negbench_retrieval  negation: the generator's affirmative 0 / negated 1 (over the file's object lists and
    coco_instances      captions, probing.data.negations); scope: -; examples: the generator's presence and
    coco_captions       absence edits; causal: CC-Neg-style, absence accuracy, R@1; patching: negation pairs
    negbench_mcq        negation: every option of a row, negative and hybrid 1, positive 0 (the correct answer's
                        type from the column, the wrong options' from their wording); scope: hybrid options, which
                        of their two objects is negated; examples: positive rows, the correct affirmative answer ->
                        the wrong negated option; causal: MCQ accuracy by template (strict rule) and the true
                        negated answer against the wrong negated option; patching: negation pairs (positive rows),
                        scope pairs (hybrid rows: the correct hybrid answer against the swapped wrong one)
    valse_existence     negation: caption and foil, one of them negated; scope: -; examples: the items whose true
                        caption is the affirmative one; causal: caption-vs-foil accuracy, by which is negated;
                        patching: negation pairs
    sugarcrepe          refused: its negative captions replace, swap or add an object, attribute or relation and
                        none negates; it gives no negation task, negation edit or negation loss
    negrefcocog         refused: every phrase is negated (no affirmative twin to contrast, no edit to undo) and its
                        boxes need region crops, which the layer measurements do not score

NegBench MCQ, in detail. Every option's type is read from its wording (`wording`): a negation marker (a cue
word such as "no", "not", "without", "doesn't", or a lexical one: "absent", "lacks", "nowhere", "car-free") in
a clause makes the clause negated; a caption with a negated clause and an affirmed object is "hybrid", with
negated clauses only "negative", without a marker "positive". The correct answer's type is the file's
`correct_answer_template` (where the wording disagrees, the column wins and the row is counted). The correct
answer is true and the others false (whatever `correct_answer` says, not only option 0): a false negative
option negates an object that IS in the image (a presence-negated caption), a true negative or hybrid one an
object that is not (absence-negated). The object names are COCO's 80 categories and VOC's 20 classes
(`OBJECT_NAMES`, plurals and "people" included); a file of other objects still gives the negation task (its
templates, not its objects) but no scope captions. Rows the loader flags for leftover generation text are
left out and counted: their wording is not a caption's.

VALSE existence: an item's caption and foil differ by the negation ("There are no people." / "There are
people."); the object is the first content word after the cue, the template the affirmative sentence with
the object masked (one per item, so an item's two captions always share it). Items in which neither or both
sentences are negated are counted, not used.

Held-out splits (probing.measure.tasks.heldout_task) use each ProbeCaption's `image` (by file name, so the same
COCO image in two files is one image), `objects`, `template` and `cue`. Images are not opened here: paths stay
as written (`resolve_images` resolves them for the image-grounded measurements, skipping or refusing rows whose
image is missing).
"""
from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Hashable, Sequence

import numpy as np

from probing.data.ccneg import find_negation_cue
from probing.data.loaders import guess_kind, load_dataset
from probing.data.negations import NEGATION_KINDS, load_negation_examples
from probing.data.reading import ImageResolver, RowProblem
from probing.data.records import DataError, FoilPair, ImageRef, LoadReport, MCQItem, NegationExample

COCO_CATEGORIES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush")
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
# spellings the captions use for a name, and plurals English does not make with -s / -es
ALIASES = {"people": "person", "persons": "person", "knives": "knife", "mice": "mouse", "tv monitor": "tvmonitor",
           "dining tables": "dining table", "television": "tv", "doughnut": "donut", "sofas": "sofa",
           "hair dryer": "hair drier", "cellphone": "cell phone", "human figure": "person", "human": "person",
           "anyone": "person", "someone": "person"}
OBJECT_NAMES = tuple(sorted(set(COCO_CATEGORIES) | set(VOC_CLASSES)))

# negation said without a cue word: "A chair is absent", "lacks a bowl", "is nowhere to be seen", "car-free"
LEXICAL_NEGATION = re.compile(r"\b(absent|absence|lacks|lack|lacking|missing|nowhere|devoid|excludes|excluding|"
                              r"omits|omitting)\b|\b[a-z]+-(free)\b",
                              re.IGNORECASE)
# clause boundaries of NegBench's hybrid captions ("X, but no Y", "X but lacks Y", "X, with no Y in sight")
CLAUSE = re.compile(r"\s*[,;]\s*|\s+(?=(?:but|while|whereas|yet)\b)|\s+(?=with no\b|without\b)", re.IGNORECASE)
DETERMINERS = frozenset("a an the any some one two three several many of".split())
MCQ_TYPES = ("positive", "negative", "hybrid")
REFUSED = {
    "sugarcrepe": "SugarCREPE's negative captions replace, swap or add an object, attribute or relation; none of "
                  "them negates, so the file gives no negation probe task, negation edit or negation loss (evaluate "
                  "it with evaluate-negation)",
    "negrefcocog": "NegRefCOCOg's phrases are all negated (no affirmative twin to contrast, no edit to undo) and its "
                   "boxes need region crops, which the layer measurements do not score (evaluate it with "
                   "evaluate-negation)",
}
MEASUREMENT_PARTS = {"probes": ("captions", "scope"), "sensitivity": ("examples",), "gradnorms": ("examples",),
                     "causal": ("examples", "mcq", "foils"), "patching": ("examples", "scope_pairs")}


# --- wording ------------------------------------------------------------------------------------------------

def _name_pattern() -> re.Pattern:
    spellings = {name: name for name in OBJECT_NAMES} | ALIASES
    forms = []
    for spelling in sorted(spellings, key=len, reverse=True):  # the longest first: "hot dog" before "dog"
        forms.append(re.escape(spelling).replace(r"\ ", r"\s+") + r"(?:e?s)?")
    return re.compile(r"(?<![\w])(" + "|".join(forms) + r")(?![\w])", re.IGNORECASE)


_NAMES = _name_pattern()


def canonical_object(text: str) -> str:
    """The object name a mention stands for: "people" -> "person", "dining tables" -> "dining table"."""
    text = " ".join(text.lower().split())
    if text in ALIASES:
        return ALIASES[text]
    if text in OBJECT_NAMES:
        return text
    for suffix in ("es", "s"):
        if text.endswith(suffix) and text[:-len(suffix)] in OBJECT_NAMES:
            return text[:-len(suffix)]
        if text.endswith(suffix) and text[:-len(suffix)] in ALIASES:
            return ALIASES[text[:-len(suffix)]]
    return text


def negation_marker(text: str) -> str | None:
    """The first negation marker of `text`, lower case: a cue word (probing.data.ccneg.find_negation_cue) or a
    lexical negation ("absent", "lacks", "nowhere", "free" of "car-free"); None when it negates nothing."""
    cue = find_negation_cue(text)
    lexical = LEXICAL_NEGATION.search(text)
    if lexical and (cue is None or lexical.start() < re.search(rf"\b{re.escape(cue)}\b", text, re.I).start()):
        return (lexical.group(1) or lexical.group(2)).lower()
    return cue


@dataclass(frozen=True)
class Wording:
    """What a caption says, read from its words: its type, negation marker, objects and template."""

    type: str  # positive (no negation), negative (negated clauses only), hybrid (a negated and an affirmed object)
    marker: str | None
    objects: tuple[str, ...]  # object names (OBJECT_NAMES) in reading order, each once
    negated: tuple[str, ...]  # objects named in a negated clause
    affirmed: tuple[str, ...]  # objects named in a clause without negation
    template: str  # the caption in lower case with every object name masked as {x}

    @property
    def is_negated(self) -> bool:
        return self.type != "positive"


def wording(text: str) -> Wording:
    """The Wording of a caption (module docstring: NegBench MCQ)."""
    marker = negation_marker(text)
    negated, affirmed, clauses_without = [], [], 0
    clauses = [clause for clause in CLAUSE.split(text.strip()) if clause.strip()]
    for clause in clauses:
        names = [canonical_object(m.group(1)) for m in _NAMES.finditer(clause)]
        if negation_marker(clause):
            negated += names
        else:
            affirmed += names
            clauses_without += 1
    objects = tuple(dict.fromkeys(name for m in _NAMES.finditer(text) for name in [canonical_object(m.group(1))]))
    negated_t, affirmed_t = tuple(dict.fromkeys(negated)), tuple(dict.fromkeys(affirmed))
    if marker is None:
        kind = "positive"
    elif objects:  # an object named outside every negated clause makes it hybrid
        kind = "hybrid" if affirmed_t and clauses_without < len(clauses) else "negative"
    else:  # no known object: a clause without negation beside a negated one makes it hybrid
        kind = "hybrid" if clauses_without and len(clauses) > 1 else "negative"
    return Wording(kind, marker, objects, negated_t, affirmed_t, mask(text, objects))


def mask(text: str, objects: Sequence[str]) -> str:
    """`text` in lower case with each mention of `objects` (and its article) replaced by {x}, end punctuation
    dropped: the template a held-out template split holds out."""
    out = " ".join(text.lower().split()).rstrip(" .!?\"'")
    if objects:
        wanted = {o.lower() for o in objects}

        def replace_name(match: re.Match) -> str:
            return "{x}" if canonical_object(match.group(1)) in wanted else match.group(0)

        out = _NAMES.sub(replace_name, out)
        for name in sorted(wanted - set(OBJECT_NAMES), key=len, reverse=True):  # names outside the vocabulary
            out = re.sub(rf"(?<!\w){re.escape(name)}(?!\w)", "{x}", out)
        out = re.sub(r"\b(a|an|the)\s+\{x\}", "{x}", out)
    return out


def image_key(image: ImageRef) -> str:
    """An image's identity for held-out splits: its file name (the same COCO image in two files is one image)."""
    return Path(str(image)).name if isinstance(image, (str, os.PathLike)) else f"array-{id(image)}"


# --- the records --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProbeCaption:
    """One caption of a probe task, with what its held-out splits group by."""

    text: str
    label: int
    image: str  # image_key
    unit: Hashable  # the row / item / example it belongs to: its captions go to the same split
    cue: str | None  # the negation marker (None: an affirmative caption, which follows its unit's cues)
    objects: tuple[str, ...] = ()
    template: str | None = None
    type: Hashable = None  # the control labelling's type (shared by a caption and its negated twin)
    source: str | None = None
    row: int | str | None = None


@dataclass
class Benchmark:
    """What one file gives the measurements (module docstring), and what it refused."""

    source: str
    kind: str
    rows: int  # rows / items read (after --limit)
    captions: list[ProbeCaption] = field(default_factory=list)
    scope: list[ProbeCaption] = field(default_factory=list)
    examples: list[NegationExample] = field(default_factory=list)
    mcq: list[MCQItem] = field(default_factory=list)
    foils: list[FoilPair] = field(default_factory=list)
    scope_pairs: list[dict] = field(default_factory=list)  # true, false, image, cue, negated, subjects, row
    refused: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    report: LoadReport | None = None
    images_skipped: int = 0  # rows left out of the image measurements: image missing (resolve_images)

    @property
    def name(self) -> str:
        return Path(self.source).name

    @property
    def usable(self) -> bool:
        return bool(self.captions or self.scope or self.examples or self.mcq or self.foils)

    def rows_of(self, part: str) -> int:
        """Distinct rows behind one part ("captions", "scope", "examples", "mcq", "foils", "scope_pairs")."""
        records = getattr(self, part)
        return len({(r["row"] if isinstance(r, dict) else r.row) for r in records})


def read_benchmark(path: str | os.PathLike, *, kind: str | None = None, seed: int = 0, per_image: int = 3,
                   split: str = "eval", limit: int | None = None) -> Benchmark:
    """A file's Benchmark (module docstring), read leniently (unreadable rows counted in `report`), image paths as
    written. limit: at most this many rows / items / examples (a seeded draw). A ValueError for an unknown kind;
    a DataError when the file itself cannot be read."""
    kind = kind or guess_kind(path)
    source = str(path)
    if kind in REFUSED:
        records = load_dataset(path, kind=kind, strict=False)  # a broken file says what is wrong with it first
        return Benchmark(source, kind, len(records), refused={m: REFUSED[kind] for m in MEASUREMENT_PARTS},
                         report=records.report)
    if kind in NEGATION_KINDS:
        records = load_negation_examples(path, kind=kind, strict=False, seed=seed, per_image=per_image, split=split)
        examples, drawn = _draw(list(records), limit, seed, "negation examples")
        benchmark = Benchmark(source, kind, len({e.row for e in examples}), examples=examples, report=records.report)
        benchmark.captions = example_captions(examples)
        benchmark.refused["probes/scope"] = "the file's captions give no scope pairs"
    elif kind in ("negbench_mcq", "valse_existence"):
        items = load_dataset(path, kind=kind, strict=False)
        chosen, drawn = _draw(list(items), limit, seed, "rows")
        benchmark = (mcq_benchmark if kind == "negbench_mcq" else valse_benchmark)(chosen, source, items.report)
    else:
        raise ValueError(f"unknown dataset kind {kind!r}")
    if drawn:
        benchmark.notes.insert(0, f"{benchmark.name}: {drawn} used (--limit: a seeded draw)")
    return benchmark


def _draw(records: list, limit: int | None, seed: int, what: str) -> tuple[list, str | None]:
    """At most `limit` of the records (a seeded draw, in file order), and what was drawn ("300 of 5,914 rows")."""
    if limit is None or len(records) <= limit:
        return records, None
    keep = np.sort(np.random.default_rng([seed, 0xDA7A]).choice(len(records), limit, replace=False))
    return [records[i] for i in keep], f"{limit:,} of {len(records):,} {what}"


# --- NegationExample files ----------------------------------------------------------------------------------

def _example_objects(example: NegationExample) -> list[str]:
    names = [example.negated_object, example.absent_object, example.subject, *example.meta.get("subjects", ())]
    return [n for n in dict.fromkeys(names) if n]


def _named(text: str, names: Sequence[str]) -> tuple[str, ...]:
    return tuple(n for n in names if re.search(rf"(?<!\w){re.escape(n)}(?:e?s)?(?!\w)", text, re.IGNORECASE))


def example_captions(examples: Sequence[NegationExample]) -> list[ProbeCaption]:
    """The negation task of NegationExamples: the affirmative caption 0, the presence- and absence-negated 1;
    one unit per example (its captions share a split and a control type: its subject, else its first object, else
    the first content word of its caption)."""
    captions = []
    for index, example in enumerate(examples):
        names = _example_objects(example)
        unit = (example.source, example.row, index)
        kind = example.subject or (names[0] if names else _first_word(example.caption or "") or unit)
        for text, label in ((example.caption, 0), (example.presence_negated, 1), (example.absence_negated, 1)):
            if text:
                objects = _named(text, names)
                captions.append(ProbeCaption(text, label, image_key(example.image), unit,
                                             (example.cue or negation_marker(text)) if label else None, objects,
                                             mask(text, objects), kind, example.source, example.row))
    return captions


def _first_word(text: str) -> str | None:
    words = [w for w in re.findall(r"[a-z]+", text.lower()) if w not in DETERMINERS and len(w) > 2]
    return words[0] if words else None


# --- NegBench MCQ ---------------------------------------------------------------------------------------------

def mcq_benchmark(items: Sequence[MCQItem], source: str, report: LoadReport | None = None) -> Benchmark:
    """A NegBench MCQ file's Benchmark (module docstring)."""
    benchmark = Benchmark(source, "negbench_mcq", 0, report=report)
    counts = Counter()
    for item in items:
        if item.meta.get("artifacts"):
            counts["rows with leftover generation text left out"] += 1
            continue
        if any(not re.search(r"[A-Za-z]{2}", text) for text in item.captions):
            counts["rows with an option that holds no words left out"] += 1
            continue
        benchmark.rows += 1
        image, unit = image_key(item.image), (source, item.row)
        words = [wording(text) for text in item.captions]
        types = [w.type if i != item.correct else item.template for i, w in enumerate(words)]
        if words[item.correct].type != item.template:
            counts[f"correct answers whose wording reads {words[item.correct].type}, not the column's "
                   f"{item.template} (the column is used)"] += 1
        for text, word, kind in zip(item.captions, words, types):
            negated = kind != "positive"
            main = (word.negated or word.objects) if negated else word.objects
            benchmark.captions.append(ProbeCaption(text, int(negated), image, unit, word.marker if negated else None,
                                                   word.objects, word.template,
                                                   main[0] if main else word.template, source, item.row))
        _mcq_scope(benchmark, item, words, types, image, unit)
        example = _mcq_example(item, words, types)
        if example is not None:
            benchmark.examples.append(example)
        benchmark.mcq.append(item)
    benchmark.notes += [f"{benchmark.name}: {n} {what}" for what, n in counts.items()]
    if not benchmark.scope:
        benchmark.refused["probes/scope"] = ("no hybrid option names two known objects (OBJECT_NAMES), so no scope "
                                             "captions")
    if not any(e.caption for e in benchmark.examples):
        benchmark.refused["sensitivity"] = benchmark.refused["gradnorms"] = (
            "no row has an affirmative correct answer beside a wrong negated option")
    return benchmark


def _mcq_scope(benchmark: Benchmark, item: MCQItem, words: list[Wording], types: list[str], image: str,
               unit) -> None:
    """Scope captions (hybrid options with one negated and one affirmed object) and the scope patching pair of
    a hybrid row (the correct hybrid answer and the wrong hybrid option with the two objects swapped)."""
    roles = {}
    for i, (text, word, kind) in enumerate(zip(item.captions, words, types)):
        if kind != "hybrid" or len(word.negated) != 1 or len(word.affirmed) != 1 or word.negated == word.affirmed:
            continue
        negated, other = word.negated[0], word.affirmed[0]
        roles[i] = (negated, other)
        benchmark.scope.append(ProbeCaption(text, int(negated < other), image, unit, word.marker, (negated, other),
                                            word.template, tuple(sorted((negated, other))), benchmark.source,
                                            item.row))
    if item.correct in roles:
        negated, other = roles[item.correct]
        swapped = next((i for i, r in roles.items() if i != item.correct and r == (other, negated)), None)
        if swapped is not None:
            benchmark.scope_pairs.append({"true": item.captions[item.correct], "false": item.captions[swapped],
                                          "image": item.image, "cue": words[item.correct].marker,
                                          "negated": negated, "subjects": (other,), "source": benchmark.source,
                                          "row": item.row})


def _mcq_example(item: MCQItem, words: list[Wording], types: list[str]) -> NegationExample | None:
    """The row as a NegationExample: the correct positive answer (true affirmative), the first wrong negative option
    (presence-negated: false, so it negates an object in the image) and the correct negative or hybrid answer
    (absence-negated: true)."""
    correct = item.correct
    wrong_negative = next((i for i, t in enumerate(types) if i != correct and t == "negative"), None)
    if wrong_negative is None:
        return None
    caption = item.captions[correct] if types[correct] == "positive" else None
    absence = item.captions[correct] if types[correct] in ("negative", "hybrid") else None
    negated = words[wrong_negative].negated or words[wrong_negative].objects
    absent = words[correct].negated if absence else ()
    subjects = words[correct].affirmed if types[correct] != "negative" else ()
    return NegationExample(item.image, caption, item.captions[wrong_negative], absence,
                           cue=words[wrong_negative].marker, negated_object=negated[0] if negated else None,
                           absent_object=absent[0] if absent else None, subject=subjects[0] if subjects else None,
                           source=item.source, row=item.row,
                           meta={"template": "negbench_mcq", "mcq_template": item.template,
                                 "subjects": list(subjects), "generated": []})


# --- VALSE existence ------------------------------------------------------------------------------------------

def valse_object(negated: str) -> str | None:
    """The object of a VALSE existence sentence: the first content word after its negation cue."""
    marker = negation_marker(negated)
    if marker is None:
        return None
    found = re.search(rf"\b{re.escape(marker)}\b", negated, re.IGNORECASE)
    for word in re.findall(r"[A-Za-z]+", negated[found.end():] if found else negated):
        if word.lower() not in DETERMINERS:
            return word.lower()
    return None


def valse_benchmark(items: Sequence[FoilPair], source: str, report: LoadReport | None = None) -> Benchmark:
    """VALSE existence's Benchmark (module docstring)."""
    benchmark = Benchmark(source, "valse_existence", len(items), report=report)
    unused = 0
    for item in items:
        markers = (negation_marker(item.caption), negation_marker(item.foil))
        if (markers[0] is None) == (markers[1] is None):
            unused += 1
            continue
        negated_text, affirmative_text = (item.caption, item.foil) if markers[0] else (item.foil, item.caption)
        cue = markers[0] or markers[1]
        obj = valse_object(negated_text)
        objects = (obj,) if obj else ()
        template = mask(affirmative_text, objects)
        image, unit = image_key(item.image), (source, item.row)
        for text, label in ((affirmative_text, 0), (negated_text, 1)):
            benchmark.captions.append(ProbeCaption(text, label, image, unit, cue if label else None, objects, template,
                                                   obj or template, source, item.row))
        if markers[1]:  # the true caption is the affirmative one: the foil negates something in the image
            benchmark.examples.append(NegationExample(item.image, item.caption, item.foil, cue=cue,
                                                      negated_object=obj, source=item.source, row=item.row,
                                                      meta={"template": "valse_existence", "generated": []}))
        benchmark.foils.append(item)
    if unused:
        benchmark.notes.append(f"{benchmark.name}: {unused} items whose caption and foil are both or neither negated "
                               "left out")
    benchmark.refused["probes/scope"] = "existence sentences name one object: no scope pairs"
    if not benchmark.examples:
        benchmark.refused["sensitivity"] = benchmark.refused["gradnorms"] = (
            "no item's true caption is the affirmative one (its negated foil would be the edit)")
    return benchmark


# --- images ---------------------------------------------------------------------------------------------------

def resolve_images(benchmark: Benchmark, image_root: str | os.PathLike, *, strict: bool) -> Benchmark:
    """The benchmark's image-grounded records (examples, MCQ items, foils, scope pairs) with their images resolved
    under `image_root`; a row whose image is missing is a DataError naming the file and row (strict), or is left out
    of them and counted in `images_skipped` (the probe captions keep every row: they read text only). An example's
    distractor image that is missing is dropped from it (the example stays)."""
    resolver = ImageResolver(image_root)
    missing: set = set()

    def resolve(image, row):
        if image is None or not isinstance(image, (str, os.PathLike)):
            return image
        try:
            return resolver(str(image))
        except RowProblem as problem:
            if strict:
                raise DataError(benchmark.source, row, f"{problem} (--skip-missing skips such rows and counts "
                                                       "them)") from None
            missing.add(row)
            return None

    examples = []
    for e in benchmark.examples:
        image = resolve(e.image, e.row)
        if image is not None:  # a distractor (another row's image, mined by the generator) that is missing is dropped
            examples.append(replace(e, image=image, distractor_image=_distractor(resolver, e.distractor_image)))
    mcq = [replace(i, image=image) for i in benchmark.mcq for image in [resolve(i.image, i.row)] if image is not None]
    foils = [replace(i, image=image) for i in benchmark.foils for image in [resolve(i.image, i.row)]
             if image is not None]
    pairs = [{**p, "image": image} for p in benchmark.scope_pairs for image in [resolve(p["image"], p["row"])]
             if image is not None]
    return replace(benchmark, examples=examples, mcq=mcq, foils=foils, scope_pairs=pairs,
                   images_skipped=len(missing))


def _distractor(resolver: ImageResolver, image):
    if image is None or not isinstance(image, (str, os.PathLike)):
        return image
    try:
        return resolver(str(image))
    except RowProblem:
        return None
