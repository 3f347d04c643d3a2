"""Low-level reading shared by the loaders: files, rows, images, caption checks, strict vs lenient.

Every problem becomes a `DataError` naming the file, the row and what is wrong; no traceback from
inside csv, json, pandas or PIL reaches the user. Problems are of two kinds:

- file-level (missing, empty, unparseable as a whole, a required column absent, a header or a container
  with no rows in it: `no_rows`): always raise;
- row-level (a malformed row, a missing value, a missing or unreadable image, an overlong caption,
  bytes that are not UTF-8): raise in strict mode, or in lenient mode skip the row and count it in
  the LoadReport with its reason.

Rows are numbered from 0 in file order, header excluded (the index pandas would give); JSON
dictionaries are named by their key.

A row that repeats an earlier row word for word is a duplicate (`Collector.duplicate`). Where a
benchmark scores each distinct item once (NegBench, SugarCREPE, VALSE, NegRefCOCOg; their released
files hold none) it is left out and counted in the report's `skipped` ("duplicate: same as row 3"),
in strict mode too; so is a repeated COCO box, which would count its area twice. Where rows are taken
by position (CC-Neg's split rule) or repeat legitimately (COCO captions), it is kept and flagged.

The validators below (`cell`, `text_cell`, `int_cell`, `int_in_range`, `identifier`, `as_dict`, `as_list`,
...) are the one place where a value's shape is checked: a loader never indexes or iterates a value it did
not check, so JSON of the wrong shape is a DataError naming the file and row, never a TypeError. Numbers
with a documented range (CC-Neg's K, VALSE's vote counts, COCO boxes and ids) are checked against it
(`int_in_range`): a value outside it is a row problem naming the field, like a value of the wrong type.
"""
from __future__ import annotations

import ast
import contextlib
import csv
import io
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from probing.data.records import DataError, Loaded, LoadReport

REPLACEMENT_CHAR = "\ufffd"
NO_IMAGE = "image not found"  # a skipped row's reason when its image file is absent (LoadReport.skip_reasons)
VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov")
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")


class RowProblem(Exception):
    """Raised while parsing one row; the Collector turns it into a DataError or a counted skip."""


# ---------------------------------------------------------------------------------------------
# strict / lenient bookkeeping


class Collector:
    """Gathers the records of one load and applies the strict / lenient policy to row problems."""

    def __init__(self, path: str | os.PathLike, strict: bool):
        self.path = str(path)
        self.strict = strict
        self.items: list = []
        self.report = LoadReport(path=self.path)
        self._current: int | str | None = None
        self._first_row_of: dict[Any, int | str | None] = {}

    @contextlib.contextmanager
    def row(self, row: int | str) -> Iterator[None]:
        """Run the parsing of one row; a RowProblem inside raises (strict) or is counted (lenient)."""
        self._current = row
        try:
            yield
        except RowProblem as problem:
            self.problem(row, str(problem))
        finally:
            self._current = None

    def problem(self, row: int | str | None, problem: str) -> None:
        if self.strict:
            raise DataError(self.path, row, problem) from None
        self.report.skipped.append((row, problem))

    def flag(self, row: int | str | None, remark: str) -> None:
        self.report.flagged.append((row, remark))

    def add(self, item: Any) -> None:
        self.items.append(item)

    def duplicate(self, key: Any, *, drop: bool = True) -> bool:
        """Whether an earlier row had this content `key`. If so, the row being parsed is a duplicate of it:
        counted in the report's skipped rows (`drop`: the caller leaves it out), or kept and flagged."""
        first = self._first_row_of.setdefault(key, self._current)
        if first == self._current:
            return False
        kept_in = self.report.skipped if drop else self.report.flagged
        kept_in.append((self._current, f"duplicate: same as row {first}"))
        return True

    def result(self) -> Loaded:
        self.report.loaded = len(self.items)
        return Loaded(self.items, self.report)


# ---------------------------------------------------------------------------------------------
# files


def read_text(path: str | os.PathLike) -> tuple[str, bool]:
    """Read a UTF-8 text file. Returns (text, clean).

    A file with bytes that are not UTF-8 is decoded with U+FFFD in their place and `clean` is
    False, so that the caller can name the rows that hold them (`check_text`) instead of failing
    on the whole file.
    """
    data = read_bytes(path)
    try:
        return data.decode("utf-8-sig"), True
    except UnicodeDecodeError:
        return data.decode("utf-8-sig", errors="replace"), False


def read_bytes(path: str | os.PathLike) -> bytes:
    path = Path(path)
    if not path.exists():
        raise DataError(path, None, "file not found")
    if path.is_dir():
        raise DataError(path, None, "is a folder, expected a file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(path, None, f"cannot read file ({err.strerror or err})") from None
    if not data.strip():
        raise DataError(path, None, "file is empty")
    return data


def check_text(value: str, clean_file: bool, what: str) -> None:
    """Raise a RowProblem if `value` came from bytes that were not valid UTF-8."""
    if not clean_file and REPLACEMENT_CHAR in value:
        raise RowProblem(f"not valid UTF-8: {what} holds undecodable bytes")


def read_json(path: str | os.PathLike) -> tuple[Any, bool]:
    """Parse a whole JSON document. Returns (object, clean) as `read_text` does."""
    text, clean = read_text(path)
    try:
        return json.loads(text), clean
    except json.JSONDecodeError as err:
        encoding = "" if clean else " (the file is not valid UTF-8 either)"
        raise DataError(path, None,
                        f"invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}{encoding}") from None
    except RecursionError:
        raise DataError(path, None, "invalid JSON: nested too deeply for the JSON reader") from None


def iter_jsonl(path: str | os.PathLike, collector: Collector) -> Iterator[tuple[int, dict, bool]]:
    """Yield (row, object, clean) for each non-blank line; bad lines go to the collector."""
    text, clean = read_text(path)
    row = -1
    for line in text.splitlines():
        if not line.strip():
            continue
        row += 1
        with collector.row(row):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise RowProblem(f"invalid JSON line: {err.msg} at column {err.colno}") from None
            except RecursionError:
                raise RowProblem("invalid JSON line: nested too deeply for the JSON reader") from None
            if not isinstance(obj, dict):
                raise RowProblem(f"expected a JSON object, found {type(obj).__name__}")
            yield row, obj, clean


def iter_csv(path: str | os.PathLike, required: Sequence[str | tuple[str, ...]],
             collector: Collector) -> Iterator[tuple[int, dict[str, str], bool]]:
    """Yield (row, {column: cell}, clean) for each data row of a CSV file with a header.

    Raises a DataError if a required column is absent, or if nothing but blank lines follows the header
    (`no_rows`). A row with the wrong number of fields goes to the collector (strict: error, lenient:
    counted skip).
    """
    text, clean = read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except (csv.Error, StopIteration) as err:
        raise DataError(path, None, f"cannot read the CSV header ({err})") from None
    header = [name.strip() for name in header]
    if not clean and REPLACEMENT_CHAR in "".join(header):
        raise DataError(path, None, "the header is not valid UTF-8: is this a UTF-8 text file?")
    # a required entry is a column name, or a tuple of names of which one must be present
    missing = [name for name in required
               if not (set(name) & set(header) if isinstance(name, tuple) else name in header)]
    if missing:
        shown = [" or ".join(name) if isinstance(name, tuple) else name for name in missing]
        raise DataError(path, None, f"missing column(s) {shown}; the header has {header}")
    row = -1
    while True:
        line = reader.line_num + 1  # first line of the next record
        try:
            cells = next(reader)
        except StopIteration:
            if row == -1:
                raise no_rows(path, "rows: it has a header and nothing below it") from None
            return
        except csv.Error as err:
            # the reader resumes at the next line; a quote left open runs to the end of the file
            row += 1
            hint = " (a quote left open swallows the rest of the file)" if "end of data" in str(err) else ""
            collector.problem(row, f"malformed row (line {line}): {err}{hint}")
            continue
        if not cells or all(not value.strip() for value in cells):
            continue
        row += 1
        with collector.row(row):
            if len(cells) != len(header):
                raise RowProblem(f"malformed row (line {line}): expected {len(header)} fields, found {len(cells)}")
            yield row, dict(zip(header, cells)), clean


def no_rows(path: str | os.PathLike, what: str = "rows") -> DataError:
    """The file-level error of a file that parses but holds nothing to load (a CSV header alone, `{}`, `[]`)."""
    return DataError(path, None, f"the file holds no {what}")


def cell(record: dict, key: str, what: str | None = None) -> Any:
    """record[key], with a RowProblem (not a KeyError) when it is absent or empty."""
    if key not in record:
        raise RowProblem(f"missing field '{key}'")
    value = record[key]
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RowProblem(f"empty {what or 'field'} '{key}'")
    return value


def as_dict(value: Any, what: str) -> dict:
    """`value` if it is a JSON object, else a RowProblem naming `what`."""
    if not isinstance(value, dict):
        raise RowProblem(f"{what} should be an object, found {_kind(value)}")
    return value


def as_list(value: Any, what: str) -> list:
    """`value` if it is a JSON list, else a RowProblem naming `what`."""
    if not isinstance(value, list):
        raise RowProblem(f"{what} should be a list, found {_kind(value)}")
    return value


def identifier(value: Any, what: str) -> int | str:
    """An id (an integer or a string) that other rows can refer to; a RowProblem otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise RowProblem(f"{what} should be an integer or a string id, found {_kind(value)} {str(value)[:40]!r}")
    return value


def number(value: Any, what: str) -> float:
    """A finite JSON number (not a boolean); a RowProblem otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise RowProblem(f"{what} should be a finite number, found {str(value)[:40]!r}")
    return value


@contextlib.contextmanager
def file_level(path: str | os.PathLike, row: int | str | None = None) -> Iterator[None]:
    """Turn RowProblems raised by the validators on a part every row depends on into a DataError."""
    try:
        yield
    except RowProblem as problem:
        raise DataError(path, row, str(problem)) from None


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def text_cell(record: dict, key: str, clean_file: bool = True) -> str:
    value = cell(record, key)
    if not isinstance(value, str):
        raise RowProblem(f"field '{key}' should be text, found {type(value).__name__}")
    check_text(value, clean_file, f"field '{key}'")
    return value


def int_in_range(record: dict, key: str, low: int, high: int | None = None) -> int:
    """An integer field (`int_cell`) in low .. high (None: no upper bound); a RowProblem naming the field and
    the range otherwise."""
    value = int_cell(record, key)
    if value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise RowProblem(f"field '{key}' should be in {bound}, found {str(value)[:40]}")
    return value


def int_cell(record: dict, key: str) -> int:
    """An integer field: a JSON integer, or text such as "3" or "3.0"."""
    value = cell(record, key)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return int(value.strip())
    try:
        number = float(value) if isinstance(value, (str, float)) else math.nan
    except ValueError:
        number = math.nan
    if not number.is_integer():
        raise RowProblem(f"field '{key}' should be an integer, found {str(value)[:40]!r}")
    return int(number)


def literal_list(record: dict, key: str, clean_file: bool = True) -> list[str]:
    """A cell holding a Python-literal list of strings, as NegBench writes them: "['a', 'b']". Empty strings in it are
    left out (NegBench writes "['']" for an image with no objects listed, and a few caption lists hold one)."""

    raw = text_cell(record, key, clean_file)
    try:
        value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise RowProblem(f"field '{key}' is not a Python list literal: {raw[:60]!r}") from None
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
        raise RowProblem(f"field '{key}' should be a list of strings, found {raw[:60]!r}")
    return [item for item in value if item.strip()]


# ---------------------------------------------------------------------------------------------
# images


class ImageResolver:
    """Turn the image paths written in a data file into files under a user-given image root.

    Data files name images in many ways: a bare file name (SugarCREPE), a path from the authors'
    machine (`data/coco/images/val2017/000000397133.jpg`, `/workspace/datasets/cc3m/...`). The
    resolver tries, under `image_root`: the path as written, then ever shorter tails of it, down
    to the bare file name. A path naming a video (NegBench's MSR-VTT rows) resolves to a frame
    saved under the same name with an image extension (`video7010.mp4` -> `video7010.jpg`). With
    no image root, paths are returned as written and not checked (text-only use). A missing or
    unreadable image is a RowProblem naming the path.
    """

    def __init__(self, image_root: str | os.PathLike | None, check_readable: bool = True):
        self.root = None if image_root is None else Path(image_root)
        if self.root is not None and not self.root.is_dir():
            raise DataError(self.root, None, "image root is not a folder")
        self.check_readable = check_readable
        self._readable: dict[Path, str | None] = {}

    def __call__(self, written: str) -> str:
        if self.root is None:
            return written
        found = self._find(written)
        if found is None:
            raise RowProblem(f"{NO_IMAGE}: {written!r} under {self.root}")
        if self.check_readable:
            problem = self._problem_opening(found)
            if problem:
                raise RowProblem(f"image unreadable: {found} ({problem})")
        return str(found)

    def _find(self, written: str) -> Path | None:
        path = Path(written.strip().replace("\\", "/"))  # paths written on Windows, too
        if path.is_absolute() and _is_file(path):
            return path
        parts = [part for part in path.parts if part not in ("/", "\\", "..", ".")]
        for start in range(len(parts)):
            candidate = self.root.joinpath(*parts[start:])
            if _is_file(candidate):
                return candidate
            if candidate.suffix.lower() in VIDEO_EXTENSIONS:
                frame = next((candidate.with_suffix(ext) for ext in FRAME_EXTENSIONS
                              if _is_file(candidate.with_suffix(ext))), None)
                if frame is not None:
                    return frame
        return None

    def _problem_opening(self, path: Path) -> str | None:
        if path not in self._readable:
            self._readable[path] = image_problem(path)
        return self._readable[path]


def _is_file(path: Path) -> bool:
    """Path.is_file, with names the file system refuses (too long, a NUL byte) counted as absent."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def image_problem(path: str | os.PathLike) -> str | None:
    """None if PIL can open the file and read its size, else a short reason."""

    try:
        with Image.open(path) as image:
            width, height = image.size
        if width == 0 or height == 0:
            return "image has zero size"
        return None
    except UnidentifiedImageError:
        return "not an image file PIL can identify"
    except (OSError, ValueError, SyntaxError) as err:
        return f"PIL cannot open it: {err}"


def load_image(image: str | os.PathLike | np.ndarray, *, source: str | None = None,
               row: int | str | None = None) -> np.ndarray:
    """An RGB uint8 array [H, W, 3] from a path or an array; a DataError naming the image otherwise."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise DataError(source, row, f"image array should be uint8 [H, W, 3], got {image.dtype} {image.shape}")
        return image

    try:
        with Image.open(image) as opened:
            return np.asarray(opened.convert("RGB"))
    except FileNotFoundError:
        raise DataError(source, row, f"{NO_IMAGE}: {image}") from None
    except UnidentifiedImageError:
        raise DataError(source, row, f"image unreadable: {image} (not an image file PIL can identify)") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise DataError(source, row, f"image unreadable: {image} ({err})") from None


# ---------------------------------------------------------------------------------------------
# captions


class TokenLimit:
    """Checks that a caption fits the text encoder's context (CLIP: 77 tokens with start and end).

    tokenizer: a callable text -> token ids WITHOUT start/end tokens, or an object with such an
    `encode` method (open_clip's SimpleTokenizer). Default: open_clip's CLIP BPE tokenizer,
    imported on first use so that importing probing.data stays fast.
    """

    def __init__(self, context_length: int, tokenizer: Callable[[str], Sequence[int]] | Any = None):
        if context_length < 3:
            raise ValueError(f"context_length must be at least 3, got {context_length}")
        self.context_length = context_length
        self._tokenizer = tokenizer
        self._encode: Callable[[str], Sequence[int]] | None = None

    def count(self, text: str) -> int:
        """Tokens the encoder sees: the caption's BPE tokens plus start and end."""
        if self._encode is None:
            self._encode = self._make_encode()
        ids = self._encode(text)
        if getattr(ids, "ndim", 1) != 1:
            # a batch tokenizer (open_clip's __call__, Hugging Face) pads to the context: lengths would lie
            raise TypeError("the tokenizer must map one text to its token ids without padding "
                            f"(like SimpleTokenizer.encode), got an array of shape {tuple(ids.shape)}")
        return len(ids) + 2

    def check(self, text: str, what: str = "caption") -> None:
        n = self.count(text)
        if n > self.context_length:
            raise RowProblem(f"caption too long: {what} has {n} tokens, more than the context of "
                             f"{self.context_length}: {text[:60]!r}...")

    def _make_encode(self) -> Callable[[str], Sequence[int]]:
        tokenizer = self._tokenizer
        if tokenizer is None:
            from open_clip.tokenizer import SimpleTokenizer  # open_clip loads torch: only when no tokenizer is given

            tokenizer = SimpleTokenizer()
        encode = getattr(tokenizer, "encode", None)
        return encode if callable(encode) else tokenizer


def make_token_limit(context_length: int | None, tokenizer: Any = None) -> TokenLimit | None:
    return None if context_length is None else TokenLimit(context_length, tokenizer)


class CaptionCut:
    """What the text tower sees of each caption: its tokens, cut to the context, and which captions the
    cut shortened (counted with open_clip's tokenizer, whose `encode` gives the uncut token ids).

    `same(a, b)`: which caption pairs become the same tokens (after the cut, or already in the file).
    An evaluated item whose compared captions are the same tokens can only tie, which the tie rule scores
    as wrong; a training pair of them trains on identical captions. The evaluators
    (analysis.evaluation.evaluate) and training (finetune.data.screen_captions) both leave such items out
    and count them (`distinct_pairs`), and count the captions the cut shortened (`counts`).

    tokenizer: open_clip's (a callable that gives [n, context] token ids, with `context_length` and
    `encode`); without `encode` the cut cannot be counted (`counts()["counted"]` is False) but identical
    tokens are still found."""

    def __init__(self, tokenizer: Callable):
        self.tokenizer = tokenizer
        self.context = int(getattr(tokenizer, "context_length", 0) or tokenizer(["a"]).shape[-1])
        encode = getattr(tokenizer, "encode", None)
        self.limit = TokenLimit(self.context, tokenizer) if callable(encode) and self.context >= 3 else None
        self._cut: dict[str, bool] = {}

    def is_cut(self, text: str) -> bool:
        if text not in self._cut:
            self._cut[text] = self.limit is not None and self.limit.count(text) > self.context
        return self._cut[text]

    def same(self, first: Sequence[str], second: Sequence[str]) -> list[bool]:
        if not first:
            return []
        return (self.tokenizer(list(first)) == self.tokenizer(list(second))).all(dim=-1).tolist()

    def reason(self, what: str, texts: Sequence[str]) -> str:
        cut = any(self.is_cut(text) for text in texts)
        return (f"captions identical after the cut: {what} become the same {self.context} tokens" if cut
                else f"captions identical: {what} are the same text")

    def counts(self, captions_per_item: Sequence[Sequence[str]]) -> dict:
        """How many captions (and items) of the given items the cut shortened."""
        flags = [[self.is_cut(text) for text in captions] for captions in captions_per_item]
        return {"context_length": self.context, "captions_cut": sum(map(sum, flags)),
                "items_with_a_cut_caption": sum(1 for item in flags if any(item)),
                "counted": self.limit is not None}


def distinct_pairs(items: Sequence, pairs: Callable[[Any], Sequence[tuple]], cut: CaptionCut,
                   what: str) -> tuple[list, list[tuple]]:
    """(the items whose compared captions differ as tokens, (row, reason) of the others, in item order).

    pairs(item) -> the caption pairs the item is compared on: (first, second), or (first, second, label) to
    name the pair in the reason instead of `what` ("caption and presence-negated caption")."""
    firsts, seconds, owners, labels = [], [], [], []
    for index, item in enumerate(items):
        for pair in pairs(item):
            firsts.append(pair[0])
            seconds.append(pair[1])
            labels.append(pair[2] if len(pair) > 2 else what)
            owners.append(index)
    identical = {}
    for owner, first, second, label, same in zip(owners, firsts, seconds, labels, cut.same(firsts, seconds)):
        if same and owner not in identical:
            identical[owner] = cut.reason(label, (first, second))
    return ([item for index, item in enumerate(items) if index not in identical],
            [(getattr(items[index], "row", index), reason) for index, reason in identical.items()])


# Leftover text from the LLM that wrote NegBench's captions: "??  (To be rephrased)", notes in
# parentheses, "# Changed to ...", alternatives joined by `" or "`, "-> ...". The list is built from
# the real files; every rule fires on at least one of their rows.
_ARTIFACT_RULES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"\?\?"), "placeholder '??'"),
    (re.compile(r"\brephras", re.IGNORECASE), "talks about rephrasing"),
    (re.compile(r"\bcaptions?\b", re.IGNORECASE), "talks about the caption"),
    (re.compile(r"^\s*ANS\s*:", re.IGNORECASE), "answer prefix"),
    (re.compile(r"#(?!\d)"), "comment marker '#'"),
    (re.compile(r"->|=>"), "arrow"),
    (re.compile(r'(?:^|")\s*\('), "parenthetical remark after the caption"),
]
# Quotes inside a real caption are normal (a sign that reads "STOP"); these patterns are not:
_QUOTE_RULES: list[tuple[re.Pattern, str]] = [
    (re.compile(r'^\s*"[^"]*"\s*[^\s."]'), "quoted caption followed by a remark"),
    (re.compile(r'"\s*(?:or|and another option)?\s*"[A-Z]'), "quoted alternatives"),
    (re.compile(r'^[^"]*[\w.!?]"\s+\S|\.\s+"\s+\w'), "quote closed that was never opened"),
    (re.compile(r':\s*"|\S\s*"\s*(?:This|The) image'), "remark before a quoted caption"),
]


def generation_artifact(text: str) -> str | None:
    """Why `text` looks like leftover generation text rather than a caption, or None.

    A caption wrapped in one pair of quotes ("A cat on a mat.") is not flagged, nor are quotes
    inside it (a sign that reads "STOP"); an odd number of quotes (a quoted alternative cut in
    half), a quoted caption followed by a remark, or several quoted alternatives are.
    """
    for pattern, reason in _ARTIFACT_RULES + _QUOTE_RULES:
        if pattern.search(text):
            return reason
    if text.count('"') % 2:
        return "unbalanced quotes"
    return None


def keep_after_artifact_check(captions: Sequence[str], row: int | str, collector: Collector,
                              mode: str) -> tuple[bool, list[str]]:
    """Apply the artifact policy to the captions of one row. Returns (keep the row?, reasons).

    mode "flag": keep the row and note each artifact in the report's `flagged`;
    "skip": drop the row, counted in the report's `skipped` (in strict mode too: the user asked);
    "keep": no check.
    """
    if mode not in ("flag", "skip", "keep"):
        raise ValueError(f"artifacts must be 'flag', 'skip' or 'keep', got {mode!r}")
    if mode == "keep":
        return True, []
    reasons = [f"caption {i}: {reason}" for i, text in enumerate(captions)
               if (reason := generation_artifact(text))]
    if reasons and mode == "skip":
        collector.report.skipped.append((row, "generation artifact: " + "; ".join(reasons)))
        return False, reasons
    for reason in reasons:
        collector.flag(row, f"generation artifact: {reason}")
    return True, reasons
