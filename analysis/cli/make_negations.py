"""`make-negations`: export the negation examples of a data file as a CC-Neg-layout file to inspect and reuse.

    make-negations --data ../shared/data/coco_mini/annotations/instances_val2017.json \
        --image-root ../shared/data/coco_mini/val2017 --out coco_negations.csv
    make-negations --data COCO_val_negated_retrieval_llama3.1_rephrased_affneg_true.csv --image-root val2017/ \
        --per-image 3 --skip-missing --out negbench_negations.jsonl
    finetune-layers --data coco_negations.csv --image-root ../shared/data/coco_mini/val2017 --loss omni ...

Reads any file that gives negation examples (probing.data.negations.load_negation_examples: COCO captions
or instances, a NegBench retrieval CSV, CC-Neg) and writes what finetune-layers would train on as a CC-Neg
layout file (probing.data.ccneg.write_ccneg; .csv or .jsonl by the suffix of --out): the caption, the
presence-negated caption (false for the image), the absence-negated caption (true for it), the distractor
image when the generator mined one, the negated and absent objects, which captions the rules wrote, and a
`split` column. Image paths are written relative to --image-root, so that the same --image-root reads the
file back.

Split: the file's own split where a CC-Neg input has one for every row; else by image, so that no image is in
both splits: the last fifth of the images (at most CC-Neg's 40,000 evaluation rows' worth) is the
evaluation split (--eval-images sets the count).

Nothing here imports torch unless --threads is given. Exit status as every command's
(analysis.cli.execution): 2 for a wrong argument or a data file that gives no negation examples.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analysis.cli import arguments as a
from analysis.cli.arguments import non_negative_int, positive_int, seed
from analysis.cli.execution import (
    run,
)
from analysis.runtime import apply_threads
from probing.data.negations import NEGATION_KINDS  # no torch behind this import

PROG = "make-negations"
SUFFIXES = (".csv", ".jsonl")  # probing.data.ccneg.write_ccneg


def build_parser() -> a.CommandParser:
    parser = a.CommandParser(PROG, __doc__)
    data = parser.add_argument_group("data")
    data.add_argument("--data", required=True, help="COCO captions / instances JSON, NegBench retrieval CSV or CC-Neg")
    data.add_argument("--data-kind", choices=NEGATION_KINDS, help="loader kind when it cannot be guessed from the file")
    data.add_argument("--image-root", help="folder that relative image paths in the data file start from (the "
                                           "written paths are relative to it)")
    data.add_argument("--skip-missing", "--skip-bad-rows", dest="skip_bad_rows", action="store_true",
                      help="skip rows whose image is missing or that are malformed, and report them "
                           "(default: stop at the first)")
    data.add_argument(
        "--ccneg-keep-commas",
        action="store_true",
        help="CC-Neg input: keep the commas of the negated captions (default: removed, as the authors do)",
    )
    generator = parser.add_argument_group("generator (COCO and NegBench retrieval files)")
    generator.add_argument("--per-image", type=positive_int, default=1, help="negation examples per image")
    generator.add_argument("--max-subjects", type=positive_int, default=1,
                           help="objects named beside the negated one, at most")
    generator.add_argument("--captions", choices=("auto", "template"), default="auto",
                           help="auto = the file's own captions where it has them; template = every caption from "
                                "the templates")
    generator.add_argument("--seed", type=seed, default=0, help="seed of the generator's choices")
    output = parser.add_argument_group("output")
    output.add_argument("--out", required=True, help="the CC-Neg-layout file to write (.csv or .jsonl)")
    output.add_argument("--limit", type=positive_int, help="write at most N examples (the first ones)")
    output.add_argument("--eval-images", type=non_negative_int,
                        help="images in the evaluation split (default: a fifth of the images, at most 40,000)")
    a.add_run_arguments(parser, images=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    out = Path(args.out)
    if out.suffix.lower() not in SUFFIXES:
        parser.error(f"--out must end in .csv or .jsonl (a CC-Neg-layout file), got {a.shown(args.out)}")
    if out.is_dir():
        parser.error(f"--out {out} is a folder; give a file name ending in .csv or .jsonl")
    a.check_output_folder(out.parent, "--out's folder", parser)
    return run(PROG, lambda: make_negations(args))


def own_splits(examples) -> list[str] | None:
    """Each example's split as its file gives it, or None unless the file gives one for every example."""
    own = [example.meta.get("split") for example in examples]
    return own if all(value in ("train", "eval") for value in own) else None


def split_by_image(examples, eval_images: int | None = None) -> dict[int, str]:
    """Example index -> "train" / "eval": the file's own split when every example has one, else the last
    `eval_images` images (default: probing.data.ccneg.default_eval_size of the image count) are "eval"."""
    from probing.data.ccneg import default_eval_size

    own = own_splits(examples)
    if own is not None:
        return dict(enumerate(own))
    images = list(dict.fromkeys(str(example.image) for example in examples))
    n_eval = default_eval_size(len(images)) if eval_images is None else min(eval_images, len(images))
    evaluated = set(images[len(images) - n_eval:])
    return {index: "eval" if str(example.image) in evaluated else "train" for index, example in enumerate(examples)}


def make_negations(args: argparse.Namespace) -> int:
    """Load, generate, split, write; print what was written and what was skipped."""
    from collections import Counter

    from probing.data.ccneg import write_ccneg
    from probing.data.loaders import guess_kind
    from probing.data.negations import describe_examples, describe_sentence, load_negation_examples
    from probing.data.records import DataError

    apply_threads(args.threads)
    if not Path(args.data).exists():
        raise DataError(args.data, None, "file not found (given as --data)")
    if args.image_root is not None and not Path(args.image_root).is_dir():
        raise DataError(args.image_root, None, "image root is not a folder (given as --image-root)")
    kind = args.data_kind or guess_kind(args.data)
    examples = load_negation_examples(args.data, kind=kind, image_root=args.image_root,
                                      strict=not args.skip_bad_rows, seed=args.seed, per_image=args.per_image,
                                      split="all", strip_commas=not args.ccneg_keep_commas,
                                      max_subjects=args.max_subjects, captions=args.captions)
    report = examples.report
    print(report, flush=True)  # loaded, skipped (with reasons) and filtered by the generator
    if args.limit is not None and len(examples) > args.limit:
        print(f"--limit {args.limit}: {len(examples) - args.limit} of {len(examples)} examples left out", flush=True)
        examples = examples[:args.limit]
    if not examples:
        why = "; ".join([f"{n} skipped ({reason})" for reason, n in report.skip_reasons().items()]
                        + [f"{n} {reason}" for reason, n in report.filtered.items()]) or "the file has no rows"
        raise DataError(args.data, None, f"no negation examples to write: {why}")
    splits = split_by_image(examples, args.eval_images)
    path = write_ccneg(examples, args.out, image_root=args.image_root, splits=splits)
    counts = Counter(splits.values())
    print(describe_sentence(describe_examples(examples, args.data)), flush=True)
    print(f"wrote {path}: {len(examples)} examples ({counts['train']} train, {counts['eval']} eval); "
          f"skipped {report.n_skipped} rows", flush=True)
    if not counts["train"]:  # an evaluation-only file can be meant; a training file cannot
        why = ("the file's own split" if own_splits(examples) is not None else
               f"--eval-images {args.eval_images}" if args.eval_images is not None else
               f"a fifth of its {len({str(example.image) for example in examples})} image(s), rounded up")
        print(f"{PROG}: note: every example is in the eval split ({why}): finetune-layers reads a CC-Neg file's "
              "train split unless given --split eval or all", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
