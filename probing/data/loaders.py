"""`load_dataset`: one entry point for every real data format, guessing the kind where it can.

    kind                 reader                      records
    ccneg                load_ccneg                  NegationExample
    negbench_mcq         load_negbench_mcq           MCQItem
    negbench_retrieval   load_negbench_retrieval     RetrievalItem
    sugarcrepe           load_sugarcrepe             FoilPair
    valse_existence      load_valse_existence        FoilPair
    coco_captions        load_coco_captions          NegationExample (caption only)
    coco_instances       load_coco_instances         CocoImage
    negrefcocog          load_negrefcocog            RegionItem

The kind is guessed from the extension, then the CSV header or the JSON structure; pass `kind`
when the guess cannot be made (the error says so).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from probing.data.ccneg import load_ccneg
from probing.data.coco import load_coco_captions, load_coco_instances
from probing.data.foils import SUGARCREPE_FOLDS, load_sugarcrepe, load_valse_existence
from probing.data.negbench import load_negbench_mcq, load_negbench_retrieval
from probing.data.negrefcocog import load_negrefcocog
from probing.data.reading import read_bytes
from probing.data.records import DataError, Loaded
from probing.vocabulary import DATA_KINDS

NAME_THE_KIND = "name it (--data-kind on the command line, kind= in Python)"  # when it cannot be guessed

READERS: dict[str, Callable[..., Loaded]] = {
    "ccneg": load_ccneg,
    "negbench_mcq": load_negbench_mcq,
    "negbench_retrieval": load_negbench_retrieval,
    "sugarcrepe": load_sugarcrepe,
    "valse_existence": load_valse_existence,
    "coco_captions": load_coco_captions,
    "coco_instances": load_coco_instances,
    "negrefcocog": load_negrefcocog,
}
if tuple(READERS) != DATA_KINDS:
    raise ImportError("probing.vocabulary.DATA_KINDS drifted from probing.data.loaders.READERS")


def load_dataset(path: str | os.PathLike, kind: str | None = None, image_root: str | os.PathLike | None = None,
                 strict: bool = True, **options: Any) -> Loaded:
    """Read `path` with the reader for `kind` (guessed when None). Extra options go to that reader.

    The result is a list of records with `.report` (a LoadReport: loaded / skipped / flagged).
    """
    if kind is None:
        kind = guess_kind(path)
    if kind not in READERS:
        raise ValueError(f"unknown dataset kind {kind!r}; known: {sorted(READERS)}")
    return READERS[kind](path, image_root, strict=strict, **options)


def guess_kind(path: str | os.PathLike) -> str:
    """The dataset kind of `path`, from its extension and header or top-level JSON structure."""
    path = Path(path)
    if path.is_dir():
        if any((path / f"{fold}.json").is_file() for fold in SUGARCREPE_FOLDS):
            return "sugarcrepe"
        raise DataError(path, None, "cannot tell the dataset kind of this folder (only SugarCREPE folders are known)")
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth", ".jsonl"):
        return "ccneg"
    if suffix == ".csv":
        return _kind_from_csv_header(path)
    if suffix == ".json":
        return _kind_from_json(path)
    raise DataError(path, None,
                    f"cannot tell the dataset kind from the extension {suffix or '(none)'}; " + NAME_THE_KIND)


def _kind_from_csv_header(path: Path) -> str:
    first_line = read_bytes(path).decode("utf-8-sig", errors="replace").splitlines()[0]
    columns = {name.strip().strip('"') for name in first_line.split(",")}
    if {"caption_0", "correct_answer"} <= columns:
        return "negbench_mcq"
    if "captions" in columns and columns & {"filepath", "image_path"}:
        return "negbench_retrieval"
    if "caption" in columns and columns & {"negative_prompt", "negative-prompt"}:
        return "ccneg"
    raise DataError(path, None, f"cannot tell the dataset kind from the CSV header {sorted(columns)}; " + NAME_THE_KIND)


def _kind_from_json(path: Path) -> str:
    # names first: the official files are named this way, and parsing a large COCO file twice is slow
    name = path.stem.lower()
    if path.stem in SUGARCREPE_FOLDS:
        return "sugarcrepe"
    if name.startswith("captions_"):
        return "coco_captions"
    if name.startswith("instances_"):
        return "coco_instances"
    if name == "existence":
        return "valse_existence"
    if name == "negrefcocog":
        return "negrefcocog"
    try:
        data = json.loads(read_bytes(path).decode("utf-8-sig", errors="replace"))
    except json.JSONDecodeError as err:
        raise DataError(path, None, f"invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    except RecursionError:
        raise DataError(path, None, "invalid JSON: nested too deeply for the JSON reader") from None
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        first = data["annotations"][0] if data["annotations"] and isinstance(data["annotations"][0], dict) else {}
        if "categories" in data or "category_id" in first:
            return "coco_instances"
        return "coco_captions"
    if isinstance(data, dict) and data:
        first = next(iter(data.values()))
        if isinstance(first, dict) and "negative_caption" in first:
            return "sugarcrepe"
        if isinstance(first, dict) and "foil" in first and "mturk" in first:
            return "valse_existence"
    if isinstance(data, list) and data and isinstance(data[0], dict) and {"phrase", "bbox_list"} <= set(data[0]):
        return "negrefcocog"
    raise DataError(path, None, "cannot tell the dataset kind from the JSON structure; " + NAME_THE_KIND)
