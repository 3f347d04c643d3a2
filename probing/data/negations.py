"""Negation examples from any real file that can give them: the one entry point of the commands that need
NegationExamples (probe-layers, finetune-layers, make-negations).

    file                          the examples
    CC-Neg (.pt / .csv / .jsonl)  its own captions: caption, presence-negated caption; the absence-negated
                                  caption and distractor image where a CC-Neg-layout file has them
    NegBench retrieval CSV        the rule-based generator over its object lists, with the file's own
                                  captions (probing.data.generator, captions="auto")
    COCO instances JSON           the generator over its annotations; with the captions file beside it
                                  (captions_<split>.json), the real captions instead of templates
    COCO captions JSON            the same, from the instances file beside it (instances_<split>.json):
                                  captions alone name no objects to negate

`describe_examples` says, for the measurements' records and reports, which captions are the file's
own and which the rules wrote.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from probing.data.coco import load_coco_captions, load_coco_instances
from probing.data.generator import generate_negations
from probing.data.loaders import guess_kind, load_dataset
from probing.data.records import CocoImage, DataError, Loaded, LoadReport, NegationExample

# the kinds of file that give negation examples (the others hold MCQ items, foils or regions)
NEGATION_KINDS = ("ccneg", "negbench_retrieval", "coco_instances", "coco_captions")
CAPTION_FIELDS = ("caption", "presence_negated", "absence_negated")


def sibling_annotations(path: str | os.PathLike, kind: str) -> Path | None:
    """The COCO file beside `path` that pairs with it: captions_X.json <-> instances_X.json (None if absent)."""
    path = Path(path)
    ours, theirs = ("captions_", "instances_") if kind == "coco_captions" else ("instances_", "captions_")
    if not path.name.startswith(ours):
        return None
    other = path.with_name(theirs + path.name[len(ours):])
    return other if other.is_file() else None


def load_negation_examples(path: str | os.PathLike, *, kind: str | None = None,
                           image_root: str | os.PathLike | None = None, strict: bool = True, seed: int = 0,
                           per_image: int = 1, split: str = "train", strip_commas: bool = True,
                           max_subjects: int = 1, captions: str = "auto") -> Loaded[NegationExample]:
    """NegationExamples of a file (module docstring), with one LoadReport covering the load and the generator:
    rows the loader skipped (missing images, malformed rows) and images the generator could not use
    (`report.filtered`). split / strip_commas: CC-Neg's (probing.data.ccneg); seed, per_image, max_subjects,
    captions: the generator's. A file of another kind (MCQ, foils) is a DataError saying what it holds."""
    kind = kind or guess_kind(path)
    if kind not in NEGATION_KINDS:  # read it all the same: a broken file says what is wrong with it
        records = load_dataset(path, kind=kind, image_root=image_root, strict=False)
        held = type(records[0]).__name__ if records else "no"
        raise DataError(path, None, f"{kind} data holds {held} records, not negation examples (those come from "
                                    f"{', '.join(NEGATION_KINDS)} files)")
    if kind == "ccneg":
        return load_dataset(path, kind=kind, image_root=image_root, strict=strict, split=split,
                            strip_commas=strip_commas)
    if kind == "negbench_retrieval":
        records = load_dataset(path, kind=kind, image_root=image_root, strict=strict)
    else:
        records = _coco_images(path, kind, image_root, strict)
    generated = generate_negations(records, seed=seed, per_image=per_image, max_subjects=max_subjects,
                                   captions=captions)
    report = LoadReport(path=str(path), loaded=len(generated), skipped=list(records.report.skipped),
                        flagged=list(records.report.flagged),
                        filtered={**records.report.filtered, **generated.report.filtered})
    return Loaded(generated, report)


def _coco_images(path, kind: str, image_root, strict: bool) -> Loaded[CocoImage]:
    """COCO images with their objects and, when the captions file is at hand, their captions."""
    instances_path = Path(path) if kind == "coco_instances" else sibling_annotations(path, kind)
    if instances_path is None:
        raise DataError(path, None, "COCO captions name no objects, and the rule-based generator negates objects: "
                                    "put the instances file (instances_<split>.json) beside it, or pass that file")
    images = load_coco_instances(instances_path, image_root, strict=strict)
    captions_path = Path(path) if kind == "coco_captions" else sibling_annotations(path, kind)
    if captions_path is not None:
        by_image: dict[Any, list[str]] = {}
        captions = load_coco_captions(captions_path, None, strict=strict)  # a bad caption row: an error, or counted
        for caption in captions:
            by_image.setdefault(caption.meta["image_id"], []).append(caption.caption)
        images.report.skipped += [(row, f"{captions_path.name}: {reason}") for row, reason in captions.report.skipped]
        for image in images:
            image.meta["captions"] = by_image.get(image.image_id, [])
        images.report.path = f"{instances_path} + {captions_path.name}"
    return images


def describe_examples(examples: Sequence[NegationExample], source: str | os.PathLike | None = None) -> dict:
    """What the examples are made of, for records and reports: per caption field, how many examples have it
    and how many of those the rules wrote (`meta["generated"]`) rather than the file; distractor images."""
    fields = {}
    for field in CAPTION_FIELDS:
        having = [e for e in examples if getattr(e, field)]
        generated = sum(field in e.meta.get("generated", ()) for e in having)
        fields[field] = {"examples": len(having), "from_file": len(having) - generated, "generated": generated}
    cues = Counter(e.cue for e in examples if e.cue)
    return {"source": None if source is None else str(source), "examples": len(examples),
            "images": len({str(e.image) for e in examples}), "captions": fields,
            # presence-negated captions that are the file's own negated captions with their object swapped
            "object_swaps": sum(e.meta.get("template") == "file" for e in examples),
            "distractor_images": sum(e.distractor_image is not None for e in examples),
            "cues": dict(cues.most_common())}


def describe_sentence(description: dict) -> str:
    """One sentence: "file.csv: 420 examples of 141 images; captions from the file, presence-negated ones
    from the file, absence-negated ones generated by rules; 310 with a distractor image"."""
    parts = []
    for field, label in (("caption", "affirmative captions"), ("presence_negated", "presence-negated captions"),
                         ("absence_negated", "absence-negated captions")):
        counts = description["captions"][field]
        if field == "presence_negated" and description.get("object_swaps") == counts["examples"] > 0:
            parts.append(f"{label} from the file's negated captions with the negated object swapped for a visible "
                         "one")
        elif not counts["examples"]:
            parts.append(f"no {label}")
        elif not counts["generated"]:
            parts.append(f"{label} from the file")
        elif not counts["from_file"]:
            parts.append(f"{label} written by the rule-based generator")
        else:
            parts.append(f"{label} from the file ({counts['from_file']}) and the generator ({counts['generated']})")
    where = Path(description["source"]).name if description.get("source") else "the data"
    return (f"{where}: {description['examples']} examples of {description['images']} images; " + ", ".join(parts)
            + f"; {description['distractor_images']} with a distractor image")
