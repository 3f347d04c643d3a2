"""NegBench readers: the multiple-choice CSVs and the (negated) retrieval CSVs, any of them by path.

NegBench (Alhamoud et al., CVPR 2025; m1k2zoo/negbench, datasets.md) ships one layout per task:

MCQ:       image_path, correct_answer, caption_0..caption_3, correct_answer_template
           COCO_val_mcq_llama3.1_rephrased.csv, VOC2007_mcq_llama3.1_rephrased.csv,
           synthetic_mcq_llama3.1_rephrased.csv, msr_vtt_mcq_rephrased_llama.csv (videos: see below);
           the correct answer is option 0 in the COCO file, not in every file
Retrieval: filepath (or image_path), captions, and where the file has them positive_objects,
           negative_objects, image_id (a COCO image id: an integer >= 0): COCO_val_retrieval.csv,
           COCO_val_negated_retrieval_llama3.1_rephrased_affneg_true.csv, synthetic_retrieval_v1/v2.csv,
           msr_vtt_retrieval.csv, msr_vtt_retrieval_rephrased_llama.csv
           (list cells are Python literals such as "['person', 'cup']", not JSON; a captions cell
           that is not a list is one caption)

MSR-VTT rows name videos; this toolkit scores frames: put one frame per video under the image root,
named like the video with an image extension (video7010.mp4 -> video7010.jpg); the resolver finds it
(`probing.data.reading.ImageResolver`).

The captions were rephrased by an LLM and some still hold its leftovers ("??  (To be rephrased)",
notes in parentheses, quoted alternatives). `artifacts="flag"` (default) keeps such rows and lists
them in the report, `"skip"` drops them (counted), `"keep"` does not look.
"""
from __future__ import annotations

import os
from typing import Any

from probing.data.reading import (
    Collector,
    ImageResolver,
    RowProblem,
    int_cell,
    int_in_range,
    iter_csv,
    keep_after_artifact_check,
    literal_list,
    make_token_limit,
    text_cell,
)
from probing.data.records import Loaded, MCQItem, RetrievalItem

MCQ_CAPTION_COLUMNS = ("caption_0", "caption_1", "caption_2", "caption_3")
IMAGE_COLUMNS = ("image_path", "filepath")  # NegBench's files name the image column either way
MCQ_COLUMNS = (IMAGE_COLUMNS, "correct_answer", *MCQ_CAPTION_COLUMNS, "correct_answer_template")
MCQ_TEMPLATES = ("positive", "negative", "hybrid")
RETRIEVAL_COLUMNS = (IMAGE_COLUMNS, "captions")


def load_negbench_mcq(path: str | os.PathLike, image_root: str | os.PathLike | None = None, *,
                      strict: bool = True, artifacts: str = "flag", context_length: int | None = None,
                      tokenizer: Any = None) -> Loaded[MCQItem]:
    """Read NegBench's MCQ CSV into MCQItems (4 captions, index of the correct one, template type).

    image_root: folder to resolve `image_path` against (by ever shorter tails of the path, down to
        the file name); rows whose image is missing or unreadable raise (strict) or are skipped and
        counted (strict=False). None: keep paths as written, unchecked.
    context_length, tokenizer: if given, a caption longer than the context is a row problem.
    """
    collector = Collector(path, strict)
    resolve = ImageResolver(image_root)
    token_limit = make_token_limit(context_length, tokenizer)
    for row, record, clean in iter_csv(path, MCQ_COLUMNS, collector):
        with collector.row(row):
            captions = [text_cell(record, column, clean) for column in MCQ_CAPTION_COLUMNS]
            correct = int_cell(record, "correct_answer")
            if not 0 <= correct < len(captions):
                raise RowProblem(f"correct_answer {correct} is not a caption index 0..{len(captions) - 1}")
            template = text_cell(record, "correct_answer_template", clean).strip()
            if template not in MCQ_TEMPLATES:
                raise RowProblem(f"correct_answer_template {template!r} is not one of {MCQ_TEMPLATES}")
            if token_limit:
                for column, caption in zip(MCQ_CAPTION_COLUMNS, captions):
                    token_limit.check(caption, column)
            keep, reasons = keep_after_artifact_check(captions, row, collector, artifacts)
            if not keep:
                continue
            written = text_cell(record, _image_column(record), clean)
            if collector.duplicate((written, tuple(captions), correct, template)):
                continue
            meta = {"artifacts": reasons} if reasons else {}
            collector.add(MCQItem(resolve(written), captions, correct, template, source=str(path), row=row, meta=meta))
    return collector.result()


def load_negbench_retrieval(path: str | os.PathLike, image_root: str | os.PathLike | None = None, *,
                            strict: bool = True, artifacts: str = "flag", context_length: int | None = None,
                            tokenizer: Any = None) -> Loaded[RetrievalItem]:
    """Read a NegBench retrieval CSV (plain or negated) into RetrievalItems.

    Same options as `load_negbench_mcq`. `positive_objects` / `negative_objects` feed the rule-based
    generator (`probing.data.generator`); files without them give empty lists, without image_id None.
    """
    collector = Collector(path, strict)
    resolve = ImageResolver(image_root)
    token_limit = make_token_limit(context_length, tokenizer)
    for row, record, clean in iter_csv(path, RETRIEVAL_COLUMNS, collector):
        with collector.row(row):
            raw = text_cell(record, "captions", clean)
            captions = literal_list(record, "captions", clean) if raw.lstrip().startswith("[") else [raw]
            if not captions:  # an empty caption would be trained and scored as a caption
                raise RowProblem(f"field 'captions' holds no caption (an empty list, or empty strings only): "
                                 f"{raw[:60]!r}")
            positives, negatives = (literal_list(record, column, clean) if record.get(column, "").strip() else []
                                    for column in ("positive_objects", "negative_objects"))
            image_id = int_in_range(record, "image_id", 0) if record.get("image_id", "").strip() else None
            if token_limit:
                for i, caption in enumerate(captions):
                    token_limit.check(caption, f"caption {i}")
            keep, reasons = keep_after_artifact_check(captions, row, collector, artifacts)
            if not keep:
                continue
            written = text_cell(record, _image_column(record), clean)
            if collector.duplicate((written, tuple(captions), tuple(positives), tuple(negatives), image_id)):
                continue
            meta = {"artifacts": reasons} if reasons else {}
            collector.add(RetrievalItem(resolve(written), captions, positives, negatives, image_id,
                                        source=str(path), row=row, meta=meta))
    return collector.result()


def _image_column(record: dict) -> str:
    return next(column for column in IMAGE_COLUMNS if column in record)
