"""Build tests/data: the small subset of the shared real data (../shared/data) that the tests read by default.

    python scripts/vendor_test_data.py                  # (re)write tests/data from ../shared/data
    python scripts/vendor_test_data.py --check          # rebuild in a temporary folder, compare, exit 1 if different
    python scripts/vendor_test_data.py --shared DIR --out DIR

Deterministic: the same shared files give byte-identical output. The subset is chosen by the fixed rules
below (images by name, rows by their index in the source file, items by their key) so that a reviewer
can read what was kept and why; tests/data/MANIFEST.md, written here too, says the same for each file,
with the source's repository, path, commit, licence and SHA-256.

Every kept row or item is the source's own bytes:
  - CSV: each kept record is copied as the raw text the source holds for it (quoting, embedded commas,
    doubled quotes and Python-literal list cells untouched), after the source's own header line;
  - JSON: the subset of a dict keeps the source's key order and values, and is serialised in the source's
    own layout (the script finds the json.dumps settings that reproduce the WHOLE source file byte for
    byte, and refuses to write when none does);
  - images and LICENSE files: copied as they are.
"""
from __future__ import annotations

import argparse
import csv
import filecmp
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = REPO.parent / "shared" / "data"
DEFAULT_OUT = REPO / "tests" / "data"

# --- what is kept -------------------------------------------------------------------------------------

# COCO val2017 images of coco_mini (18 of 159, 1.7 MB): all of them annotated in both COCO JSON files, the
# smallest such files that together cover every SugarCREPE fold at least twice, the NegBench rows of 33 MCQ
# items and 18 retrieval rows, images with 1 to 11 annotated categories (one with a single category, which
# the negation generator must filter), and 000000397133.jpg, the kitchen of the first NegBench row.
IMAGES = (
    "000000000802.jpg", "000000011813.jpg", "000000022192.jpg", "000000106235.jpg", "000000117645.jpg",
    "000000126107.jpg", "000000135561.jpg", "000000174231.jpg", "000000205401.jpg", "000000229358.jpg",
    "000000244592.jpg", "000000262227.jpg", "000000311002.jpg", "000000349860.jpg", "000000397133.jpg",
    "000000453302.jpg", "000000516916.jpg", "000000536038.jpg",
)

MCQ = "negbench/COCO_val_mcq_llama3.1_rephrased.csv"
NEG_RETRIEVAL = "negbench/COCO_val_negated_retrieval_llama3.1_rephrased_affneg_true.csv"
RETRIEVAL = "negbench/COCO_val_retrieval.csv"
SUGARCREPE_FOLDS = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")
VALSE = "valse/existence.json"
CAPTIONS = "coco_mini/annotations/captions_val2017.json"
INSTANCES = "coco_mini/annotations/instances_val2017.json"

# the first rows of each NegBench CSV (mostly images outside coco_mini: "image not found" rows); the retrieval
# files' 60 give more than 50 rows with two or more objects (negation pairs made from their object lists)
MCQ_FIRST_ROWS = 40
RETRIEVAL_FIRST_ROWS = 60
# MCQ rows (0-based, after the header) whose captions hold leftover generation text, one of each kind:
# 13 talks about the caption, 14 a quoted caption then a remark, 81 a '#' comment, 158 a parenthetical remark,
# 283 talks about rephrasing, 447 an answer prefix, 480 a quote closed that was never opened, 521 quoted
# alternatives, 902 unbalanced quotes, 1196 an arrow, 3304 a remark before a quoted caption, 5528 the
# placeholder "??  (To be rephrased)".
MCQ_ARTIFACT_ROWS = (13, 14, 81, 158, 283, 447, 480, 521, 902, 1196, 3304, 5528)
# retrieval rows (the same rows of both files, which are row-aligned): 925 and 3859 hold negated captions
# longer than CLIP's 77 tokens; 102 and 592 have 6 captions, 1565 has 7 (most rows have 5)
RETRIEVAL_EXTRA_ROWS = (102, 592, 925, 1565, 3859)
SUGARCREPE_FIRST = 10  # items of each fold, in file order, besides those whose image is kept
VALSE_FIRST = 40  # items in file order, besides the first VALSE_LOW_VOTES with mturk.caption < 2
VALSE_LOW_VOTES = 3

# folder -> (repository, path of the source files there, commit, licence): from ../shared/data/MANIFEST.md, with
# the commits written out in full where the repository's history was at hand
SOURCES = {
    "negbench": ("sepehrkr/SpaceVLM (NegBench's CSVs, m1k2zoo/negbench, as mirrored there)", "data/images/",
                 "6f85230700ee3c3d520065551a19fef74bd179de",
                 "NegBench code: MIT; captions derived from COCO captions (CC BY 4.0)"),
    "sugarcrepe": ("RAIVNLab/sugar-crepe", "data/", "0047054b243992f0fad63d6f64f7544862daf846",
                   "MIT (LICENSE beside the folds)"),
    "valse": ("Heidelberg-NLP/VALSE", "data/", "2152d90d", "MIT (LICENSE beside the file)"),
    "coco_mini": ("Obmutescence/COCO-MINI (COCO val2017)", "", "644f29e7c1d2eefd9c4412d39bc5b0ee6fd0afd4",
                  "images: each its Flickr licence (below); annotations: CC BY 4.0"),
}

JSON_LAYOUTS = ({"indent": 4}, {"indent": 4, "ensure_ascii": False}, {}, {"ensure_ascii": False})


class VendorError(Exception):
    pass


# --- the rules ----------------------------------------------------------------------------------------

def csv_records(path: Path) -> tuple[str, list[tuple[list[str], str]]]:
    """(header line, [(parsed record, the raw text the file holds for it)]), as csv reads the file."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    consumed: list[str] = []

    def feed():
        for line in lines:
            consumed.append(line)
            yield line

    records = []
    for record in csv.reader(feed()):
        records.append((record, "".join(consumed)))
        consumed.clear()
    if "".join(raw for _, raw in records) != "".join(lines):
        raise VendorError(f"{path}: the records do not add up to the file")
    (_, header), *rows = records
    return header, rows


def image_name(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def subset_csv(source: Path, target: Path, keep) -> tuple[list[int], int]:
    """Write the header and the records for which keep(index, record as a dict) is true: (their indices, rows in
    the source)."""
    header, rows = csv_records(source)
    names = next(csv.reader([header]))
    kept = [index for index, (record, _) in enumerate(rows) if keep(index, dict(zip(names, record)))]
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", encoding="utf-8", newline="") as handle:
        handle.write(header + "".join(rows[index][1] for index in kept))
    return kept, len(rows)


def json_layout(path: Path) -> tuple[object, dict]:
    """The parsed file and the json.dumps settings that give back its exact text."""
    text = path.read_text(encoding="utf-8")
    value = json.loads(text)
    for layout in JSON_LAYOUTS:
        dumped = json.dumps(value, **layout)
        if text in (dumped, dumped + "\n"):
            return value, {**layout, "newline": text.endswith("\n")}
    raise VendorError(f"{path}: no json.dumps layout reproduces the file; not writing a subset of it")


def write_json(value, target: Path, layout: dict) -> None:
    layout = dict(layout)
    newline = layout.pop("newline")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(value, **layout) + ("\n" if newline else ""), encoding="utf-8")


def subset_items(source: Path, target: Path, keep) -> tuple[list[str], int]:
    """A dict id -> item: the items for which keep(position, key, item) is true, in the source's order: (their
    keys, items in the source)."""
    value, layout = json_layout(source)
    kept = {key: item for position, (key, item) in enumerate(value.items()) if keep(position, key, item)}
    write_json(kept, target, layout)
    return list(kept), len(value)


def subset_coco(source: Path, target: Path, file_names: set[str]) -> dict:
    """A COCO file with only the images named and their annotations; every other key as it is."""
    value, layout = json_layout(source)
    images = [image for image in value["images"] if image["file_name"] in file_names]
    ids = {image["id"] for image in images}
    out = {key: (images if key == "images" else
                 [a for a in entries if a["image_id"] in ids] if key == "annotations" else entries)
           for key, entries in value.items()}
    missing = file_names - {image["file_name"] for image in images}
    if missing:
        raise VendorError(f"{source}: no entry for {sorted(missing)}")
    write_json(out, target, layout)
    return out


def build(shared: Path, out: Path) -> None:
    if not shared.is_dir():
        raise VendorError(f"{shared}: not a folder (the shared data, ../shared/data beside the repository)")
    kept_images = set(IMAGES)
    (out / "coco_mini" / "val2017").mkdir(parents=True)
    for name in IMAGES:
        shutil.copyfile(shared / "coco_mini" / "val2017" / name, out / "coco_mini" / "val2017" / name)
    instances = subset_coco(shared / INSTANCES, out / INSTANCES, kept_images)
    captions = subset_coco(shared / CAPTIONS, out / CAPTIONS, kept_images)

    mcq_rows = subset_csv(shared / MCQ, out / MCQ, lambda index, row: index < MCQ_FIRST_ROWS
                          or index in MCQ_ARTIFACT_ROWS or image_name(row["image_path"]) in kept_images)
    retrieval_rows = {}
    for name in (NEG_RETRIEVAL, RETRIEVAL):
        retrieval_rows[name] = subset_csv(
            shared / name, out / name, lambda index, row: index < RETRIEVAL_FIRST_ROWS
            or index in RETRIEVAL_EXTRA_ROWS
            or image_name(row["filepath"]) in kept_images)
    if retrieval_rows[NEG_RETRIEVAL] != retrieval_rows[RETRIEVAL]:
        raise VendorError("the two NegBench retrieval files are no longer row-aligned")

    folds = {}
    for fold in SUGARCREPE_FOLDS:
        folds[fold] = subset_items(shared / "sugarcrepe" / f"{fold}.json", out / "sugarcrepe" / f"{fold}.json",
                                   lambda position, key, item: position < SUGARCREPE_FIRST
                                   or item["filename"] in kept_images)
    valse_source, _ = json_layout(shared / VALSE)
    low = [key for key, item in valse_source.items() if item["mturk"]["caption"] < 2][:VALSE_LOW_VOTES]
    valse = subset_items(shared / VALSE, out / VALSE, lambda position, key, item: position < VALSE_FIRST
                         or key in low)
    for folder in ("sugarcrepe", "valse"):
        shutil.copyfile(shared / folder / "LICENSE", out / folder / "LICENSE")
    write_manifest(shared, out, mcq_rows, retrieval_rows[RETRIEVAL], folds, valse, low, instances, captions)


# --- MANIFEST.md --------------------------------------------------------------------------------------

def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ranges(indices: list[int]) -> str:
    """0,1,2,5,7,8 -> '0-2, 5, 7-8'."""
    parts, start = [], None
    for position, index in enumerate(indices):
        if start is None:
            start = index
        if position + 1 == len(indices) or indices[position + 1] != index + 1:
            parts.append(str(start) if start == index else f"{start}-{index}")
            start = None
    return ", ".join(parts)


def write_manifest(shared, out, mcq, retrieval, folds, valse, low, instances, captions) -> None:
    """mcq, retrieval, valse and each fold: (kept row indices or keys, rows or items in the source)."""
    def source(relative: str) -> str:
        folder, name = relative.split("/", 1)
        repository, path, commit, _ = SOURCES[folder]
        path = name if folder == "coco_mini" else path + name.rsplit("/", 1)[-1]
        return f"{repository}, `{path}`, commit {commit}"

    def row(relative: str, what: str) -> str:
        size = (out / relative).stat().st_size
        licence = SOURCES[relative.split("/", 1)[0]][3]
        digest = sha256(shared / relative)[:16]
        return f"| `{relative}` | {what} | {size:,} | {source(relative)} | {licence} | `{digest}` |"

    total = sum(path.stat().st_size for path in out.rglob("*") if path.is_file())
    licences = {entry["id"]: entry for entry in instances["licenses"]}
    image_rows = [f"| `{image['file_name']}` | {image['id']} | {licences[image['license']]['name']} | "
                  f"{image['flickr_url']} |" for image in sorted(instances["images"], key=lambda i: i["file_name"])]
    fold_rows = [row(f"sugarcrepe/{fold}.json", f"{len(keys)} of {total:,} items: ids {', '.join(keys)}")
                 for fold, (keys, total) in folds.items()]
    lines = [
        "# tests/data: a small subset of the shared real data",
        "",
        "The tests read these files by default, so that a fresh clone passes its tests without the shared",
        "data folder (`../shared/data`, described in its own MANIFEST.md) beside it. The few tests that need the",
        "full files (counts over all rows, all 159 images) read `../shared/data`, or the folder named by",
        "`CLIP_NEGATION_SHARED_DATA`, and are skipped, with the reason, where it is absent.",
        "",
        "Every file here is generated by `python scripts/vendor_test_data.py` from `../shared/data`, deterministically",
        "(`--check` rebuilds it in a temporary folder and compares). Do not edit the files by hand: change the",
        "rules in the script and run it again. The layout is the shared folder's, so that either folder can be",
        "given as a data root. Kept rows and items are the source's own bytes: CSV records as the source writes",
        "them (quoting, Python-literal list cells and leftover generation text included), JSON subsets in the",
        "source's key order and its own `json.dumps` layout (checked by reproducing the whole source file), images",
        "and LICENSE files copied.",
        "",
        f"In all: {sum(1 for p in out.rglob('*') if p.is_file()) + 1} files, about {total / 1e6:.1f} MB.",
        "",
        "## Files, sources and licences",
        "",
        "Sources as recorded in `../shared/data/MANIFEST.md` (repository, path, commit); the SHA-256 is the",
        "shared source file's (first 16 hex digits), the size the subset's, in bytes.",
        "",
        "| file | what was kept | bytes | source | licence | source SHA-256 |",
        "|---|---|---|---|---|---|",
        row(MCQ, f"header + {len(mcq[0])} of {mcq[1]:,} rows: rows {ranges(mcq[0])}"),
        row(NEG_RETRIEVAL, f"header + {len(retrieval[0])} of {retrieval[1]:,} rows: rows {ranges(retrieval[0])}"),
        row(RETRIEVAL, "the same rows as the negated file (the two files are row-aligned)"),
        *fold_rows,
        row(VALSE, f"{len(valse[0])} of {valse[1]} items: the first {VALSE_FIRST}, and the first "
                   f"{VALSE_LOW_VOTES} with `mturk.caption < 2` ({', '.join(low)})"),
        row(CAPTIONS, f"{len(captions['images'])} images, {len(captions['annotations'])} captions; "
                                   "info and licenses as they are"),
        row(INSTANCES, f"{len(instances['images'])} images, {len(instances['annotations'])} boxes; "
                                    "info, licenses and all 80 categories as they are"),
        f"| `coco_mini/val2017/*.jpg` | {len(IMAGES)} of the 159 images (below) | "
        f"{sum((out / 'coco_mini' / 'val2017' / n).stat().st_size for n in IMAGES):,} | "
        f"{SOURCES['coco_mini'][0]}, `val2017/`, commit {SOURCES['coco_mini'][2]} | {SOURCES['coco_mini'][3]} | - |",
        f"| `sugarcrepe/LICENSE` | the licence, copied | | {source('sugarcrepe/LICENSE').replace('data/', '')} "
        "| MIT | - |",
        "| `valse/LICENSE` | the licence, copied | | Heidelberg-NLP/VALSE, `LICENSE` (as in ../shared/data/valse) "
        "| MIT | - |",
        "",
        "Row numbers count data rows from 0 after the header (the loaders' `row`). Rows in the subset are",
        "renumbered 0, 1, 2, ... in the order above: tests find a particular source row by its content.",
        "",
        "## How the subset was chosen",
        "",
        f"- Images: the {len(IMAGES)} listed in `IMAGES` of the script: annotated in both COCO files, the smallest",
        "  such files that together cover every SugarCREPE fold at least twice, with 1 to 11 annotated categories",
        "  (one image has a single category, which the negation generator filters), and 000000397133.jpg, the",
        "  kitchen of the first NegBench row.",
        f"- NegBench MCQ: rows 0-{MCQ_FIRST_ROWS - 1} (row 5 is the first whose image is not in coco_mini), every row",
        "  whose image is kept, and one row of each kind of leftover generation text the loader must flag",
        f"  (rows {', '.join(map(str, MCQ_ARTIFACT_ROWS))}; 5528 holds the placeholder `??  (To be rephrased)`).",
        f"- NegBench retrieval (both files, the same rows): rows 0-{RETRIEVAL_FIRST_ROWS - 1}, every row whose image",
        "  is kept, and rows 925 and 3859 (negated captions longer than CLIP's 77 tokens), 102 and 592 (6 captions),",
        "  1565 (7 captions).",
        f"- SugarCREPE: of each fold, the first {SUGARCREPE_FIRST} items and every item whose image is kept.",
        f"- VALSE existence: the first {VALSE_FIRST} items and the first {VALSE_LOW_VOTES} with `mturk.caption < 2`",
        "  (which the VALSE protocol drops).",
        "- COCO annotations: the kept images' entries in `images` and their `annotations`; `info`, `licenses`",
        "  and `categories` unchanged.",
        "",
        "## Image licences (COCO: each image under its Flickr licence)",
        "",
        "| file | COCO id | licence | Flickr |",
        "|---|---|---|---|",
        *image_rows,
        "",
    ]
    (out / "MANIFEST.md").write_text("\n".join(lines), encoding="utf-8")


# --- the command --------------------------------------------------------------------------------------

def same_tree(a: Path, b: Path) -> list[str]:
    """Relative paths that differ between two folders (missing on either side or other bytes)."""
    files = {p.relative_to(a) for p in a.rglob("*") if p.is_file()} | {p.relative_to(b) for p in b.rglob("*")
                                                                        if p.is_file()}
    return sorted(str(f) for f in files if not ((a / f).is_file() and (b / f).is_file()
                                                and filecmp.cmp(a / f, b / f, shallow=False)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED,
                        help=f"the shared data (default: {DEFAULT_SHARED})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"where to write (default: {DEFAULT_OUT})")
    parser.add_argument("--check", action="store_true", help="rebuild in a temporary folder and compare with --out")
    args = parser.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            built = Path(scratch) / "data"
            build(args.shared, built)
            if args.check:
                differ = same_tree(built, args.out)
                if differ:
                    print(f"vendor_test_data: {args.out} differs from a rebuild: {', '.join(differ)}", file=sys.stderr)
                    return 1
                print(f"{args.out} is what the script builds from {args.shared}")
                return 0
            if args.out.exists():
                shutil.rmtree(args.out)
            shutil.copytree(built, args.out)
    except (VendorError, OSError, KeyError, ValueError) as error:
        print(f"vendor_test_data: error: {error}", file=sys.stderr)
        return 2
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {args.out}: {size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
