"""Where the benchmark files are, which benchmarks can run, and how their rows are loaded.

This module is the data side of `analysis.evaluation.evaluate`: it imports neither torch nor open_clip, so
the `evaluate-negation` command can check its arguments (and fail fast) before loading a model.

Benchmarks (names used by `--benchmarks` and `evaluate_all(which=...)`):

    synthetic            the synthetic world: CC-Neg-style, absence and scope accuracy by cue and K,
                         negated class prompt gap on its 36 classes (no files needed)
    coco_generated       rule-based presence / absence negations of the annotated COCO images
    ccneg                a CC-Neg file (.pt / .csv / .jsonl), evaluation split
    negbench_mcq         NegBench multiple choice, overall and by template
    negbench_retrieval   NegBench retrieval, affirmative file and negated file, R@1/5/10 both ways
    sugarcrepe           SugarCREPE, per fold and mean over folds
    valse_existence      VALSE existence (caption vs foil, mturk.caption >= 2)
    image_folder         negated class prompt gap on a folder of class-named subfolders of images

Real data is always loaded leniently (`strict=False`): a row whose image is missing is skipped
and COUNTED in the load report, which the evaluation carries into its output. The shared data
holds 159 COCO images only, so most NegBench rows are skipped there: the count says so instead
of the rows vanishing (MANIFEST.md).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from probing.data.records import DataError, Loaded, LoadReport

BENCHMARKS: tuple[str, ...] = ("synthetic", "coco_generated", "ccneg", "negbench_mcq", "negbench_retrieval",
                               "sugarcrepe", "valse_existence", "image_folder")

# Paths inside a data root laid out as the shared data folder is (MANIFEST.md).
NEGBENCH_MCQ = "negbench/COCO_val_mcq_llama3.1_rephrased.csv"
NEGBENCH_RETRIEVAL = "negbench/COCO_val_retrieval.csv"
NEGBENCH_RETRIEVAL_NEGATED = "negbench/COCO_val_negated_retrieval_llama3.1_rephrased_affneg_true.csv"
SUGARCREPE_DIR = "sugarcrepe"
VALSE_EXISTENCE = "valse/existence.json"
COCO_INSTANCES = "coco_mini/annotations/instances_val2017.json"
COCO_IMAGES = "coco_mini/val2017"
CCNEG_DIR = "ccneg"

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class BenchmarkError(ValueError):
    """A benchmark that was asked for cannot run (a file or an image root is missing)."""


@dataclass
class Sources:
    """Everything `plan_benchmarks` needs to find the files of each benchmark.

    data_root:    folder laid out as the shared data (negbench/, sugarcrepe/, valse/, coco_mini/).
    image_root:   folder the benchmarks' image paths resolve against (default: <data_root>/coco_mini/val2017).
    image_roots:  per-benchmark overrides of image_root (VALSE's images are Visual7W / VisDial, not COCO).
    ccneg:        a CC-Neg file; default: the first .pt / .csv / .jsonl in <data_root>/ccneg/.
    image_folder: a folder of class-named subfolders of images.
    """

    data_root: Path | None = None
    image_root: Path | None = None
    image_roots: dict[str, Path] = field(default_factory=dict)
    ccneg: Path | None = None
    image_folder: Path | None = None

    def __post_init__(self):
        self.data_root = _optional_path(self.data_root)
        self.image_root = _optional_path(self.image_root)
        self.ccneg = _optional_path(self.ccneg)
        self.image_folder = _optional_path(self.image_folder)
        self.image_roots = {name: Path(root) for name, root in self.image_roots.items()}
        unknown = sorted(set(self.image_roots) - set(BENCHMARKS))
        if unknown:
            raise BenchmarkError(f"image roots given for unknown benchmark(s) {unknown}; known: {list(BENCHMARKS)}")
        if self.image_root is None and self.data_root is not None and (self.data_root / COCO_IMAGES).is_dir():
            self.image_root = self.data_root / COCO_IMAGES

    def root_for(self, benchmark: str) -> Path | None:
        return self.image_roots.get(benchmark, self.image_root)


def _optional_path(value: str | os.PathLike | None) -> Path | None:
    return None if value is None else Path(value)


@dataclass
class Plan:
    """What will run: benchmark -> its files (name -> path), and benchmark -> why it will not."""

    runnable: dict[str, dict[str, Path]]
    not_run: dict[str, str]


def plan_benchmarks(sources: Sources, which: Sequence[str] | None = None) -> Plan:
    """Find each benchmark's files. `which=None`: every benchmark, those lacking files go to `not_run`;
    an explicit `which`: a benchmark that cannot run raises BenchmarkError (the user asked for it).
    """
    explicit = which is not None
    names = list(BENCHMARKS if which is None else which)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        raise BenchmarkError(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHMARKS)}")
    runnable, not_run = {}, {}
    for name in dict.fromkeys(names):  # keep the order, drop repeats
        files, problem = _files_of(name, sources)
        if problem is None:
            runnable[name] = files
        elif explicit:
            raise BenchmarkError(f"benchmark {name!r} cannot run: {problem}")
        else:
            not_run[name] = problem
    return Plan(runnable, not_run)


def _files_of(name: str, sources: Sources) -> tuple[dict[str, Path], str | None]:
    """(files, None) when `name` can run, else ({}, the reason)."""
    if name == "synthetic":
        return {}, None
    if name == "image_folder":
        if sources.image_folder is None:
            return {}, "no image folder given (--image-folder)"
        if not sources.image_folder.is_dir():
            return {}, f"image folder {sources.image_folder} is not a folder"
        return {"folder": sources.image_folder}, None
    if name == "ccneg":
        path = sources.ccneg or _first_ccneg_file(sources.data_root)
        if path is None:
            return {}, "no CC-Neg file given (--ccneg) nor found in <data-root>/ccneg/"
        if not path.is_file():
            return {}, f"CC-Neg file {path} does not exist"
        return _with_image_root(name, sources, {"file": path})
    if sources.data_root is None:
        return {}, "no data root (--data-root)"
    wanted = {
        "coco_generated": {"instances": COCO_INSTANCES},
        "negbench_mcq": {"file": NEGBENCH_MCQ},
        "negbench_retrieval": {"affirmative": NEGBENCH_RETRIEVAL, "negated": NEGBENCH_RETRIEVAL_NEGATED},
        "sugarcrepe": {"folder": SUGARCREPE_DIR},
        "valse_existence": {"file": VALSE_EXISTENCE},
    }[name]
    files = {key: sources.data_root / relative for key, relative in wanted.items()}
    missing = [str(path) for path in files.values() if not path.exists()]
    if missing:
        return {}, f"missing {', '.join(missing)}"
    return _with_image_root(name, sources, files)


def _with_image_root(name: str, sources: Sources, files: dict[str, Path]) -> tuple[dict[str, Path], str | None]:
    # Without an image root the loaders keep paths unchecked, and encoding would fail on the first
    # missing image: refuse here instead, with the reason.
    root = sources.root_for(name)
    if root is None:
        return {}, "no image root (--image-root)"
    if not root.is_dir():
        return {}, f"image root {root} is not a folder"
    return {**files, "image_root": root}, None


def _first_ccneg_file(data_root: Path | None) -> Path | None:
    if data_root is None or not (data_root / CCNEG_DIR).is_dir():
        return None
    candidates = sorted(path for path in (data_root / CCNEG_DIR).iterdir()
                        if path.suffix.lower() in (".pt", ".pth", ".csv", ".jsonl"))
    return candidates[0] if candidates else None


# ---------------------------------------------------------------------------------------------
# image folders


@dataclass
class ImageFolder:
    """A classification set read from `root/<class name>/**/<image>`.

    paths[i] is an image of classes[labels[i]]. Class names are the folder names with "_" read
    as a space ("traffic_light" -> "traffic light"), sorted by folder name.
    """

    root: Path
    paths: list[str]
    labels: list[int]
    classes: list[str]
    report: LoadReport

    def __len__(self) -> int:
        return len(self.paths)


def load_image_folder(root: str | os.PathLike, *, strict: bool = False,
                      extensions: Sequence[str] = IMAGE_EXTENSIONS) -> ImageFolder:
    """Read a folder of class-named subfolders of images (the torchvision ImageFolder layout).

    Files whose extension is not an image extension are ignored. An image PIL cannot open raises a
    DataError (strict) or is skipped and counted in `report.skipped` (lenient). Class folders with
    no usable image are left out of the classes (a class without images would only add a
    distractor prompt) and counted in `report.filtered`; so are files lying outside class folders.
    Fewer than two classes is an error: zero-shot top-1 over one class is always 1.
    """
    from probing.data.reading import image_problem

    root = Path(root)
    if not root.is_dir():
        raise DataError(root, None, "image folder is not a folder")
    report = LoadReport(path=str(root))
    suffixes = {suffix.lower() for suffix in extensions}
    loose = [path for path in root.iterdir() if path.is_file() and path.suffix.lower() in suffixes]
    if loose:
        report.filtered["images outside class folders"] = len(loose)
    paths, labels, classes = [], [], []
    empty = 0
    for folder in sorted(path for path in root.iterdir() if path.is_dir() and not path.name.startswith(".")):
        found = []
        for path in sorted(folder.rglob("*")):
            if not path.is_file() or path.suffix.lower() not in suffixes or path.name.startswith("."):
                continue
            row = str(path.relative_to(root))
            problem = image_problem(path)
            if problem:
                if strict:
                    raise DataError(root, row, f"image unreadable: {problem}")
                report.skipped.append((row, f"image unreadable: {problem}"))
                continue
            found.append(str(path))
        if not found:
            empty += 1
            continue
        labels += [len(classes)] * len(found)
        paths += found
        classes.append(folder.name.replace("_", " ").strip())
    if empty:
        report.filtered["class folders without a usable image"] = empty
    if len(classes) < 2:
        raise DataError(root, None, f"need at least two class folders holding images, found {len(classes)}")
    report.loaded = len(paths)
    return ImageFolder(root, paths, labels, classes, report)


# ---------------------------------------------------------------------------------------------
# counts of what was evaluated and what was not


def load_counts(report: LoadReport | None, n_evaluated: int, *, extra_skipped: Sequence[tuple] = (),
                n_examples: int = 5) -> dict:
    """What a benchmark evaluated and what it did not, for the output.

    rows_read: rows the file offered (loaded + skipped by the loader; filtered rows excluded: the
    benchmark's own protocol removes them). skipped: rows not evaluated with the reason of each
    kind, from the loader (missing images, malformed rows) and from the evaluation itself
    (`extra_skipped`, e.g. an example without a negated caption). A few examples name the rows.
    """
    skipped = list(report.skipped if report is not None else []) + list(extra_skipped)
    reasons: dict[str, int] = {}
    for _, problem in skipped:
        kind = str(problem).split(":")[0]
        reasons[kind] = reasons.get(kind, 0) + 1
    counts = {
        "rows_read": (report.loaded + report.n_skipped) if report is not None else n_evaluated + len(extra_skipped),
        "n_evaluated": n_evaluated,
        "n_skipped": len(skipped),
        "skip_reasons": dict(sorted(reasons.items(), key=lambda item: -item[1])),
        "skipped_examples": [{"row": row, "problem": str(problem)} for row, problem in skipped[:n_examples]],
    }
    if report is not None:
        counts["source"] = report.path
        if report.flagged:
            counts["n_flagged"] = len(report.flagged)
            counts["flag_reasons"] = dict(report.flag_reasons())
        if report.filtered:
            counts["filtered"] = dict(report.filtered)
    return counts


def report_of(items) -> LoadReport | None:
    """The LoadReport a loader attached to `items` (a `Loaded` list), or None for a plain list."""
    return items.report if isinstance(items, Loaded) else None
