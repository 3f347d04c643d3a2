"""`evaluate-negation`: negation benchmarks for one model, written as JSON and a Markdown table.

    evaluate-negation --out runs/eval                                  (the embedded model, every benchmark found)
    evaluate-negation --model ViT-B-32-quickgelu --pretrained openai.pt --data-root ../shared/data \
        --benchmarks negbench_mcq,sugarcrepe --out runs/eval-clip
    evaluate-negation --model ViT-B-32-quickgelu --pretrained openai.pt --image-root images/ --out runs/mcq \
        --negbench-mcq VOC2007_mcq_llama3.1_rephrased.csv --negbench-mcq COCO_val_mcq_llama3.1_rephrased.csv
    evaluate-negation --model tiny.json --benchmarks synthetic,image_folder --image-folder my_classes/ --out runs/x

Every benchmark takes its files by path (--negbench-mcq, --negbench-retrieval, --sugarcrepe, --valse-existence,
--coco-instances, --ccneg, --negrefcocog; each repeatable); a benchmark given no file looks in --data-root. Ties
count as wrong and every metric reports its ties; the published value for CLIP ViT-B/32 and the fixed models
is printed and written beside each metric that has one.

torch and open_clip are imported after the arguments are checked, so `--help` is instant and a
wrong argument (an --out that is a file or cannot be written included) fails at once (exit 2, as a
model that cannot load). A benchmark file that turns out to be broken, or that leaves nothing to
evaluate, is recorded in the output and the other benchmarks still run; the exit status is then 2.
Rows that cannot be evaluated (a missing or undecodable image, a malformed row, a duplicate, a pair that the
context cut makes identical) are skipped and counted per benchmark, and so are captions the cut shortens; a note
on stderr says how many, per benchmark, and why.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analysis.cli import arguments as a
from analysis.cli.arguments import positive_int
from analysis.cli.execution import (
    EXIT_USAGE,
    UsageError,
    one_line,
    run,
)
from analysis.runtime import apply_threads

PROG = "evaluate-negation"
OUTPUT_JSON = "evaluation.json"
OUTPUT_MD = "evaluation.md"
DEFAULT_DATA_ROOT = Path("..") / "shared" / "data"


FILE_HELP = {
    "coco_generated": "COCO instances JSON for the rule-based negations (coco_generated)",
    "ccneg": "CC-Neg file (.pt/.csv/.jsonl); its evaluation split is used",
    "negbench_mcq": "NegBench MCQ CSV (COCO, VOC2007, synthetic or MSR-VTT frames)",
    "negbench_retrieval": "NegBench retrieval CSV (affirmative or negated queries)",
    "sugarcrepe": "SugarCREPE folder of folds, or one fold's JSON",
    "valse_existence": "VALSE existence.json",
    "negrefcocog": "NegationCLIP's NegRefCOCOg.json (COCO train2014 images: give --image-root-for negrefcocog=DIR)",
}


def build_parser() -> argparse.ArgumentParser:
    from analysis.evaluation.benchmarks import BENCHMARKS, FILE_OPTIONS  # no torch behind these imports

    parser = a.CommandParser(PROG, __doc__)
    a.add_model_arguments(parser)
    data = parser.add_argument_group("data")
    data.add_argument("--data-root", type=Path,
                      help=f"folder laid out like the shared data (default: {DEFAULT_DATA_ROOT} if it exists)")
    data.add_argument("--image-root", type=Path, help="folder the image paths resolve against "
                                                      "(default: <data-root>/coco_mini/val2017 if it exists)")
    data.add_argument("--image-root-for", action="append", default=[], metavar="BENCHMARK=DIR",
                      help="image root for one benchmark (e.g. valse_existence=visual7w/); repeatable")
    for name, option in FILE_OPTIONS.items():
        data.add_argument(option, type=Path, action="append", metavar="PATH",
                          help=f"{FILE_HELP[name]}; repeatable, each file its own section (default: from --data-root)")
    data.add_argument("--ccneg-keep-commas", action="store_true",
                      help="keep the commas of CC-Neg's negated captions (default: removed, as the authors do)")
    data.add_argument("--image-folder", type=Path, help="folder of class-named subfolders of images (prompt gap)")
    data.add_argument("--benchmarks", help=f"comma list among {', '.join(BENCHMARKS)} "
                                           "(default: every benchmark whose files are found)")
    data.add_argument(
        "--limit",
        type=positive_int,
        help="evaluate the first N rows of each benchmark file (of each SugarCREPE fold, of each image-folder "
        "class), and at most N of the synthetic suite's examples, scope pairs and images (quick runs)",
    )
    synthetic = parser.add_argument_group("synthetic world")
    items = synthetic.add_argument("--synthetic-items", type=positive_int, default=1000,
                                   help="negation examples and scope pairs")
    zero_shot = synthetic.add_argument("--synthetic-zero-shot", type=positive_int, default=360,
                           help="images for the prompt gap over its classes")
    synthetic.add_argument("--synthetic-split", choices=("test", "train"), default="test")
    synthetic.add_argument("--synthetic-heldout", choices=("all", "cue", "object", "template"), default="all",
                           help="what the test split holds out")
    synthetic.add_argument("--synthetic-image-size", type=positive_int,
                           help="side of the rendered images (default: the world the checkpoint records, "
                                "else the model's image size)")
    run = a.add_run_arguments(parser)
    run.add_argument("--batch-size", type=positive_int, default=256)
    run.add_argument("--seed", type=a.seed, default=0,
                     help="seed of the synthetic world, the generator and random weights")
    run.add_argument("--out", type=Path, required=True, help=f"output folder ({OUTPUT_JSON}, {OUTPUT_MD})")
    for old, new in (("--synthetic-n", items), ("--synthetic-classification", zero_shot)):
        a.renamed(parser, old, new)
    return parser


def sources_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """The benchmark sources and the plan, checked before any model is loaded (errors exit 2)."""
    from analysis.evaluation.benchmarks import FILE_OPTIONS, BenchmarkError, Sources, plan_benchmarks

    data_root = args.data_root
    if data_root is None and DEFAULT_DATA_ROOT.is_dir():
        data_root = DEFAULT_DATA_ROOT.resolve()
    if data_root is not None and not data_root.is_dir():
        parser.error(f"--data-root {data_root} is not a folder")
    if args.image_root is not None and not args.image_root.is_dir():
        parser.error(f"--image-root {args.image_root} is not a folder")
    roots = {}
    for entry in args.image_root_for:
        name, sep, folder = entry.partition("=")
        if not sep or not name or not folder:
            parser.error(f"--image-root-for takes BENCHMARK=DIR, got {entry!r}")
        if not Path(folder).is_dir():
            parser.error(f"--image-root-for {name}: {folder} is not a folder")
        if name.strip() in roots:
            parser.error(f"--image-root-for {name.strip()} given twice")
        roots[name.strip()] = Path(folder)
    which = None
    if args.benchmarks is not None:
        which = [name.strip() for name in args.benchmarks.split(",") if name.strip()]
        if not which:
            parser.error("--benchmarks is empty")
        twice = next((name for i, name in enumerate(which) if name in which[:i]), None)
        if twice is not None:
            parser.error(f"--benchmarks: {twice} given twice")
    a.check_model_arguments(args, parser)
    try:
        files = {name: getattr(args, option[2:].replace("-", "_")) or [] for name, option in FILE_OPTIONS.items()}
        for name, paths in files.items():  # one file twice would be evaluated, and reported, twice
            resolved = [Path(path).resolve() for path in paths]
            twice = next((paths[i] for i, path in enumerate(resolved) if path in resolved[:i]), None)
            if twice is not None:
                parser.error(f"{FILE_OPTIONS[name]}: {twice} given twice")
        sources = Sources(data_root=data_root, image_root=args.image_root, image_roots=roots, files=files,
                          image_folder=args.image_folder)
        plan = plan_benchmarks(sources, which)
    except BenchmarkError as error:
        parser.error(str(error))
    if not plan.runnable:
        parser.error("no benchmark can run: " + "; ".join(f"{k}: {v}" for k, v in plan.not_run.items()))
    a.check_output_folder(args.out, "--out", parser)
    return sources, which, plan


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)  # provenance.json names the command
    if args.synthetic_image_size is not None:  # the world's own check, before the model loads
        from probing.synthetic.world import WorldConfig

        try:
            WorldConfig(image_size=args.synthetic_image_size)
        except ValueError as error:
            parser.error(f"--synthetic-image-size: {error}")
    args.sources, args.which, args.benchmark_plan = sources_from_args(args, parser)
    return run(PROG, lambda: evaluate(args))


def evaluate(args: argparse.Namespace) -> int:
    from analysis.evaluation.evaluate import (
        evaluate_all,
        markdown_table,
        published_comparison,
        section_notes,
    )
    from analysis.provenance import write_provenance
    from probing.io import atomic_write_json, atomic_write_text, sweep_temporaries
    from probing.models.factory import create_model
    from probing.synthetic.record import default_world

    apply_threads(args.threads)
    plan, sources = args.benchmark_plan, args.sources
    bundle = create_model(args.model, args.pretrained, device=args.device, seed=args.seed)
    world = bundle.world  # the world the checkpoint records, else the default world at the model's image size
    if args.synthetic_image_size is not None:
        world = default_world(args.synthetic_image_size, seed=world.seed if world is not None else args.seed)
    which = list(plan.runnable) if args.which is None else args.which
    not_run = dict(plan.not_run)
    if world is None and "synthetic" in which:
        if args.which is not None:
            raise UsageError(f"benchmark 'synthetic' cannot run: {bundle.world_note}")
        which = [name for name in which if name != "synthetic"]
        not_run["synthetic"] = bundle.world_note
    result = evaluate_all(
        bundle.model, bundle.preprocess, bundle.tokenizer, data_root=sources.data_root, image_root=sources.image_root,
        image_roots=sources.image_roots, files=sources.files, image_folder=sources.image_folder,
        which=which, asked=args.which or (), batch_size=args.batch_size, limit=args.limit,
        ccneg_strip_commas=not args.ccneg_keep_commas,
        synthetic_n=args.synthetic_items, synthetic_classification=args.synthetic_zero_shot,
        synthetic_split=args.synthetic_split, synthetic_heldout=args.synthetic_heldout, synthetic_world=world,
        seed=args.seed, progress=not args.no_progress, feature_cache=not args.no_feature_cache,
        num_workers=a.image_workers(args.workers, args.threads))
    result["not_run"] = {**not_run, **result["not_run"]}
    output = {"model": bundle.info, **result}
    sweep_temporaries(args.out)  # what a killed earlier run was writing
    files = {job.section: job.path for jobs in plan.runnable.values() for job in jobs
             if job.path is not None and Path(job.path).is_file()}
    write_provenance(args.out, [PROG, *args.argv], model=bundle, data=files,
                     image_roots={"--data-root": sources.data_root, "--image-root": sources.image_root,
                                  "--image-folder": sources.image_folder,
                                  **{f"--image-root-for {name}": root for name, root in sources.image_roots.items()}})
    json_path = atomic_write_json(args.out / OUTPUT_JSON, output)
    md_path = atomic_write_text(args.out / OUTPUT_MD, markdown_table(result, model=bundle.label))
    for line in published_comparison(result):
        print(line, flush=True)
    not_run_notes = [f"not run: {name}: {why}" for name, why in result["not_run"].items()]
    for line in not_run_notes + section_notes(result):
        print(f"{PROG}: note: {one_line(line)}", file=sys.stderr)
    print(f"wrote {json_path} and {md_path}", flush=True)
    for name, why in result["failed"].items():
        print(f"{PROG}: error: {one_line(f'{name} failed: {why}')}", file=sys.stderr)
    return EXIT_USAGE if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
