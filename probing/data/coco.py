"""COCO captions and instances JSON (the official annotation format).

captions_*.json:  {images: [{id, file_name, ...}], annotations: [{image_id, caption}, ...]}
instances_*.json: {images: [...], annotations: [{image_id, category_id, bbox, area, iscrowd}], categories: [{id, name}]}

Rows of `annotations` are named by their index in that list; an image entry by "images[i]".
Numbers are checked against COCO's conventions: a bbox [x, y, width, height] in pixels holds no negative
value, and an image's width and height, when given, are > 0 (the box areas are fractions of them). A file
whose 'annotations' list is empty holds nothing to load: an error, like an empty file.
"""
from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

from probing.data.reading import (
    Collector,
    ImageResolver,
    RowProblem,
    as_dict,
    cell,
    file_level,
    identifier,
    make_token_limit,
    no_rows,
    number,
    read_json,
    text_cell,
)
from probing.data.records import CocoImage, DataError, Loaded, NegationExample


def load_coco_captions(path: str | os.PathLike, image_root: str | os.PathLike | None = None, *,
                       strict: bool = True, context_length: int | None = None,
                       tokenizer: Any = None) -> Loaded[NegationExample]:
    """One NegationExample per caption (caption only; the negated fields stay None).

    meta["image_id"] ties captions of the same image together.
    """
    data, clean = read_json(path)
    images = _images_by_id(path, data)
    annotations = _list_field(path, data, "annotations", nonempty=True)
    collector = Collector(path, strict)
    resolve = ImageResolver(image_root)
    token_limit = make_token_limit(context_length, tokenizer)
    resolved: dict[int, str] = {}
    for row, annotation in enumerate(annotations):
        with collector.row(row):
            image_id = _image_id(annotation, images)
            caption = text_cell(annotation, "caption", clean).strip()
            if token_limit:
                token_limit.check(caption)
            if image_id not in resolved:
                resolved[image_id] = resolve(images[image_id])
            collector.duplicate((image_id, caption), drop=False)
            collector.add(NegationExample(image=resolved[image_id], caption=caption, source=str(path), row=row,
                                          meta={"image_id": image_id}))
    return collector.result()


def load_coco_instances(path: str | os.PathLike, image_root: str | os.PathLike | None = None, *,
                        strict: bool = True) -> Loaded[CocoImage]:
    """One CocoImage per image that has at least one box: category names, largest total area first.

    Crowd boxes (iscrowd=1) count like the others: a crowd of people is people in the image, and
    leaving it out would let the generator claim "no person". An image without boxes is not an
    error: it is counted in report.filtered. A box naming an unknown image or category is a row
    problem.
    """
    data, clean = read_json(path)
    images = _images_by_id(path, data)
    _list_field(path, data, "annotations")  # the file's structure first, then whether it holds anything
    categories = _category_names(path, data)
    annotations = _list_field(path, data, "annotations", nonempty=True)
    sizes = {image["id"]: _image_area(image) for image in data["images"]}  # every entry checked by _images_by_id
    collector = Collector(path, strict)
    area_by_image: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for row, annotation in enumerate(annotations):
        with collector.row(row):
            image_id = _image_id(annotation, images)
            category_id = identifier(cell(annotation, "category_id"), "field 'category_id'")
            if category_id not in categories:
                raise RowProblem(f"category_id {category_id!r} is not in 'categories'")
            bbox = cell(annotation, "bbox")
            if not (isinstance(bbox, list) and len(bbox) == 4):
                raise RowProblem(f"bbox should be [x, y, width, height], found {str(bbox)[:60]!r}")
            bbox = [number(v, "a bbox value") for v in bbox]
            if min(bbox) < 0:  # COCO's boxes lie in the image: corner and size are never negative
                raise RowProblem(f"bbox [x, y, width, height] should hold no negative value, found {bbox}")
            if collector.duplicate((image_id, category_id, tuple(bbox))):
                continue
            area_by_image[image_id][categories[category_id]] += bbox[2] * bbox[3] / sizes[image_id]
    # images are a second kind of row: a missing image file is reported under "images[i]"
    resolve = ImageResolver(image_root)
    without_boxes = 0
    for index, (image_id, file_name) in enumerate(images.items()):
        if image_id not in area_by_image:
            without_boxes += 1
            continue
        with collector.row(f"images[{index}]"):
            areas = dict(sorted(area_by_image[image_id].items(), key=lambda item: -item[1]))
            collector.add(CocoImage(image=resolve(file_name), image_id=image_id, objects=list(areas), areas=areas,
                                    source=str(path), row=f"images[{index}]"))
    result = collector.result()
    if without_boxes:
        result.report.filtered["images without boxes"] = without_boxes
    return result


def _list_field(path, data: Any, key: str, *, nonempty: bool = False) -> list:
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise DataError(path, None, f"not a COCO annotation file: no list '{key}' at the top level")
    if nonempty and not data[key]:
        raise no_rows(path, f"rows: its list '{key}' is empty")
    return data[key]


def _images_by_id(path, data: Any) -> dict[int, str]:
    """image id -> file name; a broken image entry is a file-level problem (every row depends on it)."""
    images = {}
    for index, image in enumerate(_list_field(path, data, "images")):
        if not isinstance(image, dict) or "id" not in image or not isinstance(image.get("file_name"), str):
            raise DataError(path, f"images[{index}]", "image entry needs 'id' and 'file_name'")
        with file_level(path, f"images[{index}]"):
            images[identifier(image["id"], "image 'id'")] = image["file_name"]
            for side in ("width", "height"):  # optional; when given, box areas are fractions of it
                if image.get(side) is not None and number(image[side], f"image '{side}'") <= 0:
                    raise RowProblem(f"image '{side}' should be > 0, found {image[side]}")
    return images


def _category_names(path, data: Any) -> dict[int, str]:
    names = {}
    for index, category in enumerate(_list_field(path, data, "categories")):
        if not isinstance(category, dict) or "id" not in category or not isinstance(category.get("name"), str):
            raise DataError(path, f"categories[{index}]", "category entry needs 'id' and 'name'")
        with file_level(path, f"categories[{index}]"):
            names[identifier(category["id"], "category 'id'")] = category["name"]
    return names


def _image_area(image: dict) -> float:
    width, height = image.get("width"), image.get("height")
    if isinstance(width, (int, float)) and isinstance(height, (int, float)) and width > 0 and height > 0:
        return float(width * height)
    return 1.0  # unknown size: areas stay in pixels, still good for ordering


def _image_id(annotation: Any, images: dict[int, str]) -> int:
    image_id = identifier(cell(as_dict(annotation, "annotation"), "image_id"), "field 'image_id'")
    if image_id not in images:
        raise RowProblem(f"image_id {image_id!r} is not in 'images'")
    return image_id
