"""CC-Neg (Singh et al., CoN-CLIP) as released by its authors, and the same fields as CSV / JSONL.

The released file is a torch `.pt` dictionary:
    image_paths   list of N paths (on the authors' machine: /workspace/datasets/cc3m/...)
    annotations   list of N dicts; annotations[i]["json"]["caption"] is the true caption and
                  annotations[i]["sop_data"]["negative-prompt"] the negated (false) caption
    num_ops       dict K -> list of row indices whose caption has K predicate-object pairs
                  (K in 1..MAX_NUM_OPS: the released file has 1..5; each row under one K at most)

Split rule (the authors'): the LAST `eval_size` = 40,000 rows are the evaluation split, the rows
before them the training split. A smaller file keeps a fifth of its rows, rounded up, as its
evaluation split (`default_eval_size`: min(40,000, ceil(n / 5)), which is the authors' 40,000 for the
released 228,246 rows), so that a small file still has rows to train on.

CSV / JSONL carry one row per example with fields `image_path`, `caption`, `negative_prompt`
(`negative-prompt` also accepted) and optionally `num_ops` (K of that row, 1..MAX_NUM_OPS); the same split rule
applies to row order. The CC-Neg layout this toolkit writes (`write_ccneg`, the `make-negations`
command) adds optional fields the reader keeps: `absence_negated` (a true negated caption),
`distractor_image` (an image for which the negated caption is true, resolved like image_path), `cue`,
`negated_object`, `absent_object`, `subject`, `generated` (which captions rules wrote, e.g.
"presence_negated;absence_negated") and `split` (train / eval per row: when the column is there, it
decides the split instead of row order).

Commas: the authors' code removes every comma from the negated caption before tokenising it, in
fine-tuning and in evaluation (`negative_prompt.replace(",", "")`, CoN-CLIP's
src/data/finetuning_datasets.py and its CC-Neg evaluation), so their published accuracies are on
comma-free negated captions. The loader does the same by default, for the absence-negated caption
too; `strip_commas=False` keeps the file's text (the true caption is never changed).
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path
from typing import Any

from probing.data.reading import (
    Collector,
    ImageResolver,
    RowProblem,
    as_dict,
    cell,
    file_level,
    int_cell,
    int_in_range,
    iter_csv,
    iter_jsonl,
    make_token_limit,
    no_rows,
    text_cell,
)
from probing.data.records import DataError, Loaded, NegationExample
from probing.io import atomic_write_text

CCNEG_EVAL_SIZE = 40_000
# K counts the predicate-object pairs a caption names: at least one, and each takes at least a token of the
# 75 that CLIP's 77-token context holds besides its start and end (the released file has K = 1..5)
MAX_NUM_OPS = 75
EVAL_SHARE = 5  # a file with fewer rows than 5 x 40,000 keeps ceil(n / 5) rows for evaluation
SPLITS = ("train", "eval", "all")
# optional fields of the CC-Neg layout (module docstring) -> NegationExample attribute
EXTRA_TEXT_FIELDS = ("absence_negated", "cue", "negated_object", "absent_object", "subject")
LAYOUT_COLUMNS = ("image_path", "caption", "negative_prompt", "absence_negated", "distractor_image", "num_ops", "cue",
                  "negated_object", "absent_object", "subject", "generated", "split")

# Negation words as CC-Neg's evaluation splits them (no / not / without), plus the other common ones.
_CUE = re.compile(r"\b(without|not|no|never|none|nothing|nobody|neither|nor|\w+n't)\b", re.IGNORECASE)


def find_negation_cue(text: str) -> str | None:
    """The first negation word in `text` (lower case), or None."""
    match = _CUE.search(text)
    return match.group(1).lower() if match else None


def default_eval_size(n_rows: int) -> int:
    """Evaluation rows of a file of `n_rows`: the authors' 40,000, or a fifth (rounded up) of a smaller file."""
    return min(CCNEG_EVAL_SIZE, -(-n_rows // EVAL_SHARE))


def split_rows(n_rows: int, split: str, eval_size: int | None = None) -> range:
    """Row indices of `split` in a file of `n_rows` rows: eval = the last `eval_size` (default:
    `default_eval_size`), train = the rest."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    eval_size = default_eval_size(n_rows) if eval_size is None else eval_size
    first_eval = max(0, n_rows - eval_size)
    return {"train": range(0, first_eval), "eval": range(first_eval, n_rows), "all": range(n_rows)}[split]


def load_ccneg(path: str | os.PathLike, image_root: str | os.PathLike | None = None, *, split: str = "eval",
               strict: bool = True, context_length: int | None = None, tokenizer: Any = None,
               eval_size: int | None = None, weights_only: bool = True,
               strip_commas: bool = True) -> Loaded[NegationExample]:
    """Read CC-Neg (`.pt`, `.csv` or `.jsonl`) into NegationExamples of one split.

    caption = true caption, presence_negated = CC-Neg's negated caption (false for the image),
    k = number of predicate-object pairs (from num_ops), cue = first negation word of the negated
    caption. absence_negated, subject and distractor_image stay None unless the file has them (the
    CC-Neg layout's optional fields, module docstring): the released CC-Neg does not give them.
    `row` is the row index in the whole file. eval_size: rows of the evaluation split (default: the
    split rule of the module docstring; a `split` column overrides it). weights_only: passed to
    torch.load; set False only for a file you trust. strip_commas: remove the commas of the negated
    captions, as the authors do (module docstring); meta["commas_stripped"] records it.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    split_of_row: dict[int, str] = {}
    k_problems: dict[int, str] = {}  # row -> why its num_ops entry cannot be used (a row problem of that row)
    if suffix in (".pt", ".pth"):
        collector = Collector(path, strict)
        rows, n_rows, k_of_row, k_problems = _rows_from_torch(path, weights_only, collector)
    elif suffix in (".csv", ".jsonl"):
        collector = Collector(path, strict)
        rows, n_rows, k_of_row, split_of_row = _rows_from_table(path, collector)
    else:
        raise DataError(path, None, f"CC-Neg files are .pt, .csv or .jsonl, not {suffix or 'extensionless'}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split_of_row:  # the file says each row's split
        wanted = {row for row, value in split_of_row.items() if split in ("all", value)}
        if not wanted:  # else every reader would say "0 rows read", as if the file were empty
            other = next(iter(split_of_row.values()))
            raise DataError(path, None, f"its 'split' column puts none of its {len(split_of_row)} readable rows in "
                                        f"the {split} split (all are {other}): ask for the {other} split or all "
                                        "(--split where the command has it)")
    else:
        wanted = split_rows(n_rows, split, eval_size)
    resolve = ImageResolver(image_root)
    token_limit = make_token_limit(context_length, tokenizer)
    for row, image_path, annotation, clean in rows:
        if row not in wanted:
            continue
        with collector.row(row):
            if row in k_problems:
                raise RowProblem(k_problems[row])
            caption, negated = _captions(annotation, clean)
            extra = dict(annotation.get("extra", {})) if isinstance(annotation, dict) else {}
            if strip_commas:
                negated = negated.replace(",", "")
                if extra.get("absence_negated"):
                    extra["absence_negated"] = extra["absence_negated"].replace(",", "")
            if token_limit:
                token_limit.check(caption, "caption")
                token_limit.check(negated, "negative prompt")
                if extra.get("absence_negated"):
                    token_limit.check(extra["absence_negated"], "absence-negated caption")
            if not isinstance(image_path, str) or not image_path.strip():
                raise RowProblem(f"image path should be text, found {str(image_path)[:40]!r}")
            image = resolve(image_path)
            distractor = extra.pop("distractor_image", None)
            distractor = resolve(distractor) if distractor else None
            generated = [name for name in extra.pop("generated", "").split(";") if name]
            collector.duplicate((image_path, caption, negated), drop=False)  # the split rule counts every row
            collector.add(NegationExample(image=image, caption=caption, presence_negated=negated,
                                          cue=extra.pop("cue", None) or find_negation_cue(negated),
                                          k=k_of_row.get(row), distractor_image=distractor,
                                          source=str(path), row=row, **extra,
                                          meta={"split": split_of_row.get(row, split), "commas_stripped": strip_commas,
                                                "generated": generated}))
    return collector.result()


def _captions(annotation: Any, clean: bool) -> tuple[str, str]:
    """(caption, negative prompt) from an annotation dict of the released format."""
    annotation = as_dict(annotation, "annotation")
    caption_holder = as_dict(cell(annotation, "json"), "annotation 'json'")
    sop = as_dict(cell(annotation, "sop_data"), "annotation 'sop_data'")
    return text_cell(caption_holder, "caption", clean), text_cell(sop, "negative-prompt", clean)


def _rows_from_torch(path: Path, weights_only: bool, collector: Collector):
    import torch  # only the .pt layout needs torch; the CSV reader (and make-negations --help) do not

    if not path.is_file():
        raise DataError(path, None, "file not found")
    if path.stat().st_size == 0:
        raise DataError(path, None, "file is empty")
    try:
        data = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as err:  # a corrupt pickle can fail in any way (IndexError, KeyError, ...)
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(path, None, f"torch.load cannot read it: {first_line}") from None
    if not isinstance(data, dict):
        raise DataError(path, None, f"expected a dict with image_paths and annotations, found {type(data).__name__}")
    missing = [key for key in ("image_paths", "annotations") if key not in data]
    if missing:
        raise DataError(path, None, f"missing key(s) {missing}; the file has {sorted(map(str, data))}")
    for key in ("image_paths", "annotations"):
        if not isinstance(data[key], (list, tuple)):
            raise DataError(path, None, f"{key} should be a list, found {type(data[key]).__name__}")
    image_paths, annotations = list(data["image_paths"]), list(data["annotations"])
    if len(image_paths) != len(annotations):
        raise DataError(path, None, f"{len(image_paths)} image_paths but {len(annotations)} annotations")
    if not image_paths:
        raise no_rows(path, "rows: image_paths and annotations are empty")
    k_of_row, k_problems = _k_of_row(path, data.get("num_ops"), len(image_paths), collector)
    rows = ((row, image_path, annotation, True)
            for row, (image_path, annotation) in enumerate(zip(image_paths, annotations)))
    return rows, len(image_paths), k_of_row, k_problems


def _k_of_row(path: Path, num_ops: Any, n_rows: int, collector: Collector) -> tuple[dict[int, int], dict[int, str]]:
    """Invert num_ops (K -> row indices) into row -> K, and row -> problem for the rows whose K is not in
    1..MAX_NUM_OPS or that are listed under two K (row problems of those rows: strict, an error; else the
    row is skipped and counted). An index that is no row of the file, or that is not an integer, is a problem
    of the entry num_ops[K] itself: an error (strict), else counted in the report's skipped under that name."""
    if num_ops is None:
        return {}, {}
    if not isinstance(num_ops, dict):
        raise DataError(path, None, f"num_ops should map K -> row indices, found {type(num_ops).__name__}")
    k_of_row: dict[int, int] = {}
    problems: dict[int, str] = {}
    for k, indices in num_ops.items():
        entry = f"num_ops[{str(k)[:20]}]"
        with file_level(path, entry):
            if not isinstance(indices, (list, tuple)):
                raise RowProblem(f"should be a list of row indices, found {type(indices).__name__}")
        with collector.row(entry):
            value = int_cell({"K": k}, "K")
            k_problem = (None if 1 <= value <= MAX_NUM_OPS else
                         f"num_ops: K {str(value)[:40]} (the predicate-object pairs of the caption) should be in "
                         f"1..{MAX_NUM_OPS}")
            outside = []
            for index in indices:
                try:
                    row = int_cell({"row index": index}, "row index")
                except RowProblem:
                    outside.append(str(index)[:20])
                    continue
                if not 0 <= row < n_rows:
                    outside.append(str(row)[:20])
                    continue
                if row in k_of_row or row in problems:
                    problems[row] = f"num_ops lists this row under two K ({k_of_row.get(row, '?')} and {value})"
                    k_of_row.pop(row, None)
                elif k_problem:
                    problems[row] = k_problem
                else:
                    k_of_row[row] = value
            if outside:
                raise RowProblem(f"{len(outside)} row index(es) that are no row of the file's {n_rows} "
                                 f"(0..{n_rows - 1}): {', '.join(outside[:3])}")
    return k_of_row, problems


def _rows_from_table(path: Path, collector: Collector):
    """Materialise a CSV / JSONL file into rows shaped like the .pt ones (the layout's optional fields under
    "extra"), with K and the split of the rows that name them."""
    if path.suffix.lower() == ".csv":
        records = iter_csv(path, ("image_path", "caption", ("negative_prompt", "negative-prompt")), collector)
    else:
        records = iter_jsonl(path, collector)
    rows, k_of_row, split_of_row = [], {}, {}
    for row, record, clean in records:
        with collector.row(row):
            negated_key = "negative_prompt" if "negative_prompt" in record else "negative-prompt"
            annotation = {"json": {"caption": text_cell(record, "caption", clean)},
                          "sop_data": {"negative-prompt": text_cell(record, negated_key, clean)},
                          "extra": {name: text_cell(record, name, clean).strip()
                                    for name in (*EXTRA_TEXT_FIELDS, "distractor_image", "generated")
                                    if record.get(name) not in (None, "")}}
            if record.get("num_ops") not in (None, ""):
                k_of_row[row] = int_in_range(record, "num_ops", 1, MAX_NUM_OPS)
            if record.get("split") not in (None, ""):
                value = text_cell(record, "split", clean).strip()
                if value not in ("train", "eval"):
                    raise RowProblem(f"split should be 'train' or 'eval', found {value[:20]!r}")
                split_of_row[row] = value
            rows.append((row, text_cell(record, "image_path", clean), annotation, clean))
    # the split counts every row of the file, the skipped ones too
    seen = [row for row, *_ in rows] + [row for row, _ in collector.report.skipped if isinstance(row, int)]
    if split_of_row and len(split_of_row) != len(rows):
        raise DataError(path, None, f"the 'split' column names {len(split_of_row)} of {len(rows)} rows: give every "
                                    "row one (train or eval), or drop the column")
    return rows, max(seen, default=-1) + 1, k_of_row, split_of_row


# --- writing the layout --------------------------------------------------------------------------

def write_ccneg(examples, path: str | os.PathLike, *, image_root: str | os.PathLike | None = None,
                splits: dict[int, str] | None = None) -> Path:
    """Write NegationExamples as a CC-Neg-layout file (.csv or .jsonl, by the suffix) that `load_ccneg` reads
    back: the released fields (image_path, caption, negative_prompt, num_ops) and the optional ones of the
    module docstring. Image paths are written relative to `image_root` when under it. `splits`: example
    index -> "train" / "eval" (a `split` column). Examples need an image path, a caption and a
    presence-negated caption (a ValueError names the first that lacks one). Written atomically."""


    path = Path(path)
    if path.suffix.lower() not in (".csv", ".jsonl"):
        raise ValueError(f"a CC-Neg-layout file is .csv or .jsonl, not {path.suffix or 'extensionless'}")
    root = Path(image_root).resolve() if image_root is not None else None
    records = []
    for index, example in enumerate(examples):
        if not isinstance(example.image, (str, Path)) or not example.caption or not example.presence_negated:
            raise ValueError(f"example {index} ({example.source}, row {example.row}) needs an image file, a caption "
                             "and a presence-negated caption")
        record = {"image_path": _relative(example.image, root), "caption": example.caption,
                  "negative_prompt": example.presence_negated, "absence_negated": example.absence_negated or "",
                  "distractor_image": _relative(example.distractor_image, root) if example.distractor_image else "",
                  "num_ops": "" if example.k is None else example.k, "cue": example.cue or "",
                  "negated_object": example.negated_object or "", "absent_object": example.absent_object or "",
                  "subject": example.subject or "", "generated": ";".join(example.meta.get("generated", [])),
                  "split": (splits or {}).get(index, "")}
        records.append(record)
    columns = [c for c in LAYOUT_COLUMNS if any(record[c] != "" for record in records) or c in LAYOUT_COLUMNS[:3]]
    if path.suffix.lower() == ".csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        text = buffer.getvalue()
    else:
        text = "".join(json.dumps({c: record[c] for c in columns if record[c] != ""}) + "\n" for record in records)
    return atomic_write_text(path, text)


def _relative(image, root: Path | None) -> str:
    path = Path(image)
    if root is not None:
        try:
            return path.resolve().relative_to(root).as_posix()
        except ValueError:
            pass
    return str(path)
