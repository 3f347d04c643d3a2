"""Where the benchmark files are, which benchmarks can run, and how their rows are loaded.

This module is the data side of `analysis.evaluation.evaluate`: it imports neither torch nor open_clip, so
the `evaluate-negation` command can check its arguments (and fail fast) before loading a model.

Benchmarks (names used by `--benchmarks` and `evaluate_all(which=...)`):

    synthetic            the synthetic world: CC-Neg-style, absence and scope accuracy by cue and K,
                         negated class prompt gap on its 36 classes (no files needed)
    coco_generated       rule-based presence / absence negations of COCO images (an instances JSON)
    ccneg                a CC-Neg file (.pt / .csv / .jsonl), evaluation split
    negbench_mcq         NegBench multiple choice (COCO, VOC2007, synthetic, MSR-VTT frames), overall
                         and by template type
    negbench_retrieval   NegBench retrieval files (affirmative and negated queries), R@1/5/10 both ways
    sugarcrepe           SugarCREPE, per fold and mean over folds (a folder of folds, or one fold file)
    valse_existence      VALSE existence (caption vs foil, mturk.caption >= 2)
    negrefcocog          NegationCLIP's NegRefCOCOg: pick the box a negated referring phrase names
    image_folder         negated class prompt gap on a folder of class-named subfolders of images

Every file benchmark takes the user's files by path (`Sources.files`, the command's
`--negbench-mcq FILE` and its siblings, repeatable); a benchmark given no file looks in a data root
laid out like the shared data (`DEFAULT_FILES`). Each file is one output section: NegBench's are
always named by their dataset ("negbench_mcq/coco", "negbench_retrieval/coco_negated", from
`NEGBENCH_LABELS`, else the file name), the others by the benchmark alone, or by benchmark and file
name when given several files.

Real data is always loaded leniently (`strict=False`): a row whose image is missing is skipped
and COUNTED in the load report, which the evaluation carries into its output. The shared data
holds 159 COCO images only, so most NegBench rows are skipped there: the count says so instead
of the rows vanishing (MANIFEST.md).
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from probing.data.reading import image_problem
from probing.data.records import DataError, Loaded, LoadReport, problem_kind

BENCHMARKS: tuple[str, ...] = ("synthetic", "coco_generated", "ccneg", "negbench_mcq", "negbench_retrieval",
                               "sugarcrepe", "valse_existence", "negrefcocog", "image_folder")
# the benchmarks that read files (evaluate-negation takes each of them by path)
FILE_BENCHMARKS: tuple[str, ...] = ("coco_generated", "ccneg", "negbench_mcq", "negbench_retrieval", "sugarcrepe",
                                    "valse_existence", "negrefcocog")
# the evaluate-negation option that gives a benchmark's files by path (repeatable)
FILE_OPTIONS: dict[str, str] = {
    "coco_generated": "--coco-instances", "ccneg": "--ccneg", "negbench_mcq": "--negbench-mcq",
    "negbench_retrieval": "--negbench-retrieval", "sugarcrepe": "--sugarcrepe", "valse_existence": "--valse-existence",
    "negrefcocog": "--negrefcocog",
}
# benchmarks whose sections always carry their dataset's label (their published numbers differ by dataset)
LABELLED: tuple[str, ...] = ("negbench_mcq", "negbench_retrieval")

# NegBench's file names (m1k2zoo/negbench datasets.md) -> (benchmark, dataset label of its section)
NEGBENCH_LABELS: dict[str, tuple[str, str]] = {
    "COCO_val_mcq_llama3.1_rephrased.csv": ("negbench_mcq", "coco"),
    "VOC2007_mcq_llama3.1_rephrased.csv": ("negbench_mcq", "voc2007"),
    "synthetic_mcq_llama3.1_rephrased.csv": ("negbench_mcq", "synthetic"),
    "msr_vtt_mcq_rephrased_llama.csv": ("negbench_mcq", "msr_vtt"),
    "COCO_val_retrieval.csv": ("negbench_retrieval", "coco"),
    "COCO_val_negated_retrieval_llama3.1_rephrased_affneg_true.csv": ("negbench_retrieval", "coco_negated"),
    "synthetic_retrieval_v1.csv": ("negbench_retrieval", "synthetic_v1"),
    "synthetic_retrieval_v2.csv": ("negbench_retrieval", "synthetic_v2"),
    "msr_vtt_retrieval.csv": ("negbench_retrieval", "msr_vtt"),
    "msr_vtt_retrieval_rephrased_llama.csv": ("negbench_retrieval", "msr_vtt_negated"),
}

# What each file benchmark looks for in a data root laid out as the shared data folder (MANIFEST.md),
# when it is given no file; every one found runs.
DEFAULT_FILES: dict[str, tuple[str, ...]] = {
    "coco_generated": ("coco_mini/annotations/instances_val2017.json",),
    "negbench_mcq": tuple(f"negbench/{name}" for name, (kind, _) in NEGBENCH_LABELS.items() if kind == "negbench_mcq"),
    "negbench_retrieval": tuple(f"negbench/{name}" for name, (kind, _) in NEGBENCH_LABELS.items()
                                if kind == "negbench_retrieval"),
    "sugarcrepe": ("sugarcrepe",),
    "valse_existence": ("valse/existence.json",),
    "negrefcocog": ("negrefcocog/NegRefCOCOg.json",),
}
COCO_IMAGES = "coco_mini/val2017"
CCNEG_DIR = "ccneg"

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class BenchmarkError(ValueError):
    """A benchmark that was asked for cannot run (a file or an image root is missing)."""


@dataclass
class Sources:
    """Everything `plan_benchmarks` needs to find the files of each benchmark.

    data_root:    folder laid out as the shared data (negbench/, sugarcrepe/, valse/, coco_mini/, ccneg/).
    image_root:   folder the benchmarks' image paths resolve against (default: <data_root>/coco_mini/val2017).
    image_roots:  per-benchmark overrides of image_root (VALSE's images are Visual7W / VisDial, not COCO).
    files:        benchmark -> the user's files (any number); a benchmark listed here ignores the data root.
    image_folder: a folder of class-named subfolders of images.
    """

    data_root: Path | None = None
    image_root: Path | None = None
    image_roots: dict[str, Path] = field(default_factory=dict)
    files: dict[str, list[Path]] = field(default_factory=dict)
    image_folder: Path | None = None

    def __post_init__(self):
        self.data_root = _optional_path(self.data_root)
        self.image_root = _optional_path(self.image_root)
        self.image_folder = _optional_path(self.image_folder)
        self.image_roots = {name: Path(root) for name, root in self.image_roots.items()}
        self.files = {name: [Path(path) for path in paths] for name, paths in self.files.items() if paths}
        for what, names in (("image roots", self.image_roots), ("files", self.files)):
            unknown = sorted(set(names) - set(BENCHMARKS if what == "image roots" else FILE_BENCHMARKS))
            if unknown:
                raise BenchmarkError(f"{what} given for unknown benchmark(s) {unknown}; known: "
                                     f"{list(BENCHMARKS if what == 'image roots' else FILE_BENCHMARKS)}")
        if self.image_root is None and self.data_root is not None and (self.data_root / COCO_IMAGES).is_dir():
            self.image_root = self.data_root / COCO_IMAGES

    def root_for(self, benchmark: str) -> Path | None:
        return self.image_roots.get(benchmark, self.image_root)


def _optional_path(value: str | os.PathLike | None) -> Path | None:
    return None if value is None else Path(value)


@dataclass
class Job:
    """One file of a benchmark and the output section it fills (`path` None: the synthetic world)."""

    section: str
    path: Path | None = None
    image_root: Path | None = None


@dataclass
class Plan:
    """What will run: benchmark -> its jobs (one per file), and benchmark -> why it will not."""

    runnable: dict[str, list[Job]]
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
    for name, paths in sources.files.items():  # a typo in a path must not drop its benchmark quietly
        missing = [str(path) for path in paths or () if not Path(path).exists()]
        if missing:
            raise BenchmarkError(f"{FILE_OPTIONS[name]}: {', '.join(missing)} do(es) not exist")
    runnable, not_run = {}, {}
    for name in dict.fromkeys(names):  # keep the order, drop repeats
        jobs, problem = _jobs_of(name, sources)
        if problem is None:
            runnable[name] = jobs
        elif explicit:
            raise BenchmarkError(f"benchmark {name!r} cannot run: {problem}")
        else:
            not_run[name] = problem
    return Plan(runnable, not_run)


def section_label(benchmark: str, path: Path) -> str:
    """The dataset label of a benchmark file: NegBench's known names, else the file name's stem."""
    known = NEGBENCH_LABELS.get(path.name)
    return known[1] if known is not None and known[0] == benchmark else path.stem


def _jobs_of(name: str, sources: Sources) -> tuple[list[Job], str | None]:
    """(jobs, None) when `name` can run, else ([], the reason)."""
    if name == "synthetic":
        return [Job("synthetic")], None
    if name == "image_folder":
        if sources.image_folder is None:
            return [], "no image folder given (--image-folder)"
        if not sources.image_folder.is_dir():
            return [], f"image folder {sources.image_folder} is not a folder"
        return [Job("image_folder/prompt_gap", sources.image_folder)], None
    flag = FILE_OPTIONS[name]
    paths = sources.files.get(name)  # the files the user named (plan_benchmarks checked that they exist)
    if paths is None and name == "ccneg":
        paths = _ccneg_files(sources.data_root)
        if not paths:
            return [], f"no CC-Neg file given ({flag}) nor found in <data-root>/{CCNEG_DIR}/"
    elif paths is None and sources.data_root is None:
        return [], f"no file given ({flag}) and no data root (--data-root)"
    elif paths is None:
        paths = [sources.data_root / relative for relative in DEFAULT_FILES[name]
                 if (sources.data_root / relative).exists()]
        if not paths:
            return [], f"no file given ({flag}) and none of {', '.join(DEFAULT_FILES[name])} in {sources.data_root}"
    root = sources.root_for(name)
    # Without an image root the loaders keep paths unchecked, and encoding would fail on the first
    # missing image: refuse here instead, with the reason.
    if root is None:
        return [], "no image root (--image-root)"
    if not root.is_dir():
        return [], f"image root {root} is not a folder"
    labels = [section_label(name, path) for path in paths]
    if name in LABELLED or len(paths) > 1:
        labels = _unique(labels)
        return [Job(f"{name}/{label}", path, root) for label, path in zip(labels, paths)], None
    return [Job(name, paths[0], root)], None


def _unique(labels: list[str]) -> list[str]:
    """Labels made distinct by a counter ("coco", "coco_2") when two files share one."""
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}_{seen[label]}")
    return out


def _ccneg_files(data_root: Path | None) -> list[Path]:
    """The first .pt / .csv / .jsonl file in <data_root>/ccneg/, as a list (empty when none)."""
    if data_root is None or not (data_root / CCNEG_DIR).is_dir():
        return []
    candidates = sorted(path for path in (data_root / CCNEG_DIR).iterdir()
                        if path.suffix.lower() in (".pt", ".pth", ".csv", ".jsonl"))
    return candidates[:1]


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
    reasons = Counter(problem_kind(problem) for _, problem in skipped)
    counts = {
        "rows_read": (report.loaded + report.n_skipped) if report is not None else n_evaluated + len(extra_skipped),
        "n_evaluated": n_evaluated,
        "n_skipped": len(skipped),
        "skip_reasons": dict(reasons.most_common()),
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
