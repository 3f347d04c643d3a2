"""Caption-vs-foil benchmarks: SugarCREPE (seven folds) and VALSE existence.

Both are JSON dictionaries id -> item. An item is scored by s(I, caption) > s(I, foil).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from probing.data.reading import (
    Collector,
    ImageResolver,
    RowProblem,
    cell,
    make_token_limit,
    no_rows,
    read_json,
    text_cell,
)
from probing.data.records import DataError, FoilPair, Loaded, LoadReport

VALSE_ANNOTATORS = 3  # each VALSE item was judged by three crowd workers: mturk.caption counts 0..3
SUGARCREPE_FOLDS = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")


def load_sugarcrepe(path: str | os.PathLike, image_root: str | os.PathLike | None = None, *,
                    strict: bool = True, context_length: int | None = None, tokenizer: Any = None,
                    folds: tuple[str, ...] | None = None) -> Loaded[FoilPair]:
    """Read SugarCREPE: one fold file (`add_obj.json`) or a folder holding the fold files.

    Each item: {filename, caption, negative_caption} -> FoilPair(caption, foil=negative_caption,
    fold=<file stem>). For a folder, `folds` picks which (default: every known fold present; a
    folder with none of them is an error). Images resolve by file name under `image_root`.
    """
    path = Path(path)
    if path.is_dir():
        wanted = folds or SUGARCREPE_FOLDS
        files = [path / f"{fold}.json" for fold in wanted if (path / f"{fold}.json").is_file()]
        missing = sorted(set(folds or ()) - {file.stem for file in files})
        if missing:
            raise DataError(path, None, f"missing SugarCREPE fold file(s): {[f'{m}.json' for m in missing]}")
        if not files:
            raise DataError(path, None, f"no SugarCREPE fold files ({', '.join(SUGARCREPE_FOLDS)}.json) in this folder")
    else:
        files = [path]
    parts = [_load_sugarcrepe_fold(file, image_root, strict, context_length, tokenizer) for file in files]
    if len(parts) == 1:
        return parts[0]
    report = LoadReport(path=str(path))
    for part in parts:
        report.skipped += [(f"{Path(part.report.path).stem}/{row}", why) for row, why in part.report.skipped]
        report.flagged += [(f"{Path(part.report.path).stem}/{row}", why) for row, why in part.report.flagged]
    items = [item for part in parts for item in part]
    report.loaded = len(items)
    return Loaded(items, report)


def _read_id_items(path: Path):
    """(dict id -> item, text cleaner) of a SugarCREPE / VALSE JSON file; a DataError otherwise."""
    data, clean = read_json(path)
    if not isinstance(data, dict):
        raise DataError(path, None, f"expected a JSON object of id -> item, found {type(data).__name__}")
    if not data:
        raise no_rows(path, "items: it is an empty JSON object")
    return data, clean


def _load_sugarcrepe_fold(path: Path, image_root, strict, context_length, tokenizer) -> Loaded[FoilPair]:
    collector = Collector(path, strict)
    resolve = ImageResolver(image_root)
    token_limit = make_token_limit(context_length, tokenizer)
    data, clean = _read_id_items(path)
    for key, item in data.items():
        with collector.row(key):
            if not isinstance(item, dict):
                raise RowProblem(f"expected an object, found {type(item).__name__}")
            caption = text_cell(item, "caption", clean)
            foil = text_cell(item, "negative_caption", clean)
            if token_limit:
                token_limit.check(caption, "caption")
                token_limit.check(foil, "negative_caption")
            written = text_cell(item, "filename", clean)
            if collector.duplicate((written, caption, foil)):
                continue
            collector.add(FoilPair(resolve(written), caption, foil, fold=path.stem, source=str(path), row=key))
    return collector.result()


def load_valse_existence(path: str | os.PathLike, image_root: str | os.PathLike | None = None, *,
                         strict: bool = True, context_length: int | None = None, tokenizer: Any = None,
                         min_caption_votes: int = 2) -> Loaded[FoilPair]:
    """Read VALSE existence: {caption, foil, mturk: {caption, foil, other}, image_file, ...}.

    VALSE's protocol keeps items whose caption at least `min_caption_votes` of 3 annotators judged
    valid (`mturk.caption >= 2`: 505 of 534); the others are counted in `report.filtered`, not
    treated as problems. A vote count outside 0..3 is a row problem. `meta` keeps the dataset name and votes.
    """
    collector = Collector(path, strict)
    resolve = ImageResolver(image_root)
    token_limit = make_token_limit(context_length, tokenizer)
    data, clean = _read_id_items(path)
    low_agreement = 0
    for key, item in data.items():
        with collector.row(key):
            if not isinstance(item, dict):
                raise RowProblem(f"expected an object, found {type(item).__name__}")
            votes = cell(item, "mturk")
            if (not isinstance(votes, dict) or isinstance(votes.get("caption"), bool)
                    or not isinstance(votes.get("caption"), (int, float)) or votes["caption"] != votes["caption"]):
                raise RowProblem(f"field 'mturk' should hold a numeric 'caption' vote count, found {str(votes)[:60]!r}")
            if votes["caption"] not in range(VALSE_ANNOTATORS + 1):
                raise RowProblem(f"field 'mturk.caption' counts the {VALSE_ANNOTATORS} annotators who judged the "
                                 f"caption valid: it should be one of 0..{VALSE_ANNOTATORS}, found {votes['caption']}")
            if votes["caption"] < min_caption_votes:
                low_agreement += 1
                continue
            caption = text_cell(item, "caption", clean)
            foil = text_cell(item, "foil", clean)
            if token_limit:
                token_limit.check(caption, "caption")
                token_limit.check(foil, "foil")
            written = text_cell(item, "image_file", clean)
            if collector.duplicate((written, caption, foil)):
                continue
            meta = {"dataset": item.get("dataset"), "mturk": votes}
            collector.add(FoilPair(resolve(written), caption, foil, fold="existence", source=str(path), row=key,
                                   meta=meta))
    result = collector.result()
    if low_agreement:
        result.report.filtered[f"mturk.caption < {min_caption_votes} (VALSE protocol)"] = low_agreement
    return result
