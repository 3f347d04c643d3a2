"""NegationCLIP's NegRefCOCOg (Park et al.; parkquasar/NegationCLIP, NegRefCOCOg/NegRefCOCOg.json):
referring expressions with a negation ("the vase that does not have a flower in it"), each with the
candidate boxes of its image. A model reads the phrase and must pick the referred box.

The file is one JSON list; each entry is
    {"image": "COCO_train2014_000000374391.jpg", "phrase": "...",
     "ref_bbox": [x, y, w, h], "bbox_list": [[x, y, w, h], ...]}
with boxes in pixels (COCO's [x, y, width, height]); `ref_bbox` is one of `bbox_list` (in the
released file always the first). The authors score a crop of each box against the phrase and count
argmax == ref_bbox, so a tie goes to the first box, the right one; this toolkit's scorer counts a
tie as wrong (`probing.metrics.score_regions`).
"""
from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
from PIL import Image

from probing.data.reading import (
    Collector,
    ImageResolver,
    RowProblem,
    as_dict,
    as_list,
    cell,
    check_text,
    load_image,
    no_rows,
    read_json,
)
from probing.data.records import DataError, Loaded, RegionItem


def load_negrefcocog(path: str | os.PathLike, image_root: str | os.PathLike | None = None, *,
                     strict: bool = True) -> Loaded[RegionItem]:
    """Read NegRefCOCOg into RegionItems; `row` is the entry's index in the list.

    image_root: folder of the COCO images the entries name (train2014 in the released file). An
    entry whose ref_bbox is not among its bbox_list, with fewer than two boxes, or with a box that is
    not four finite numbers of positive size with a corner inside the image (x, y >= 0), is a row problem
    (strict: an error; else skipped, counted).
    """
    data, clean = read_json(path)
    if not isinstance(data, list):
        raise DataError(path, None, f"NegRefCOCOg is a JSON list of entries, found {type(data).__name__}")
    if not data:
        raise no_rows(path, "entries: it is an empty JSON list")
    collector = Collector(path, strict)
    resolve = ImageResolver(image_root)
    for row, entry in enumerate(data):
        with collector.row(row):
            entry = as_dict(entry, "entry")
            phrase = cell(entry, "phrase")
            if not isinstance(phrase, str):
                raise RowProblem(f"field 'phrase' should be text, found {type(phrase).__name__}")
            check_text(phrase, clean, "field 'phrase'")
            listed = as_list(cell(entry, "bbox_list"), "field 'bbox_list'")
            boxes = [_box(box, f"bbox_list[{i}]") for i, box in enumerate(listed)]
            if len(boxes) < 2:
                raise RowProblem(f"bbox_list holds {len(boxes)} box(es); choosing needs at least two")
            reference = _box(cell(entry, "ref_bbox"), "ref_bbox")
            if reference not in boxes:
                raise RowProblem(f"ref_bbox {reference} is not one of bbox_list")
            image_name = cell(entry, "image")
            if not isinstance(image_name, str):
                raise RowProblem(f"field 'image' should be a file name, found {type(image_name).__name__}")
            if collector.duplicate((image_name, phrase, tuple(map(tuple, boxes)), boxes.index(reference))):
                continue
            collector.add(RegionItem(resolve(image_name), phrase, boxes, boxes.index(reference),
                                     source=str(path), row=row))
    return collector.result()


def _box(value: Any, what: str) -> list[float]:
    if (not isinstance(value, list) or len(value) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
        raise RowProblem(f"{what} should be [x, y, width, height], found {value!r}")
    if value[2] <= 0 or value[3] <= 0:
        raise RowProblem(f"{what} has no area: {value!r}")
    if value[0] < 0 or value[1] < 0:
        raise RowProblem(f"{what} starts outside the image (a negative corner): {value!r}")
    return [float(v) for v in value]


def crop_regions(item: RegionItem) -> list[np.ndarray]:
    """The crop of each candidate box as an RGB uint8 array, cut as the authors cut it
    (PIL `crop((x, y, x + w, y + h))`, which rounds the corners to whole pixels)."""

    image = Image.fromarray(load_image(item.image, source=item.source, row=item.row))
    return [np.asarray(image.crop((x, y, x + w, y + h))) for x, y, w, h in item.boxes]
