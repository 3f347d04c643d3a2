"""`evaluate-negation`: negation benchmarks for one model, written as JSON and a Markdown table.

    evaluate-negation --out runs/eval                                  (the embedded model, every benchmark found)
    evaluate-negation --model ViT-B-32-quickgelu --pretrained openai.pt --data-root ../shared/data \
        --benchmarks negbench_mcq,sugarcrepe --out runs/eval-clip
    evaluate-negation --model tiny.json --benchmarks synthetic,image_folder --image-folder my_classes/ --out runs/x

torch and open_clip are imported after the arguments are checked, so `--help` is instant and a
wrong argument fails at once (exit 2). A data file that turns out to be broken is recorded in the
output and makes the exit status 1; the other benchmarks still run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analysis.cli.args import positive_int as _positive_int

EMBEDDED = "embedded"
OUTPUT_JSON = "evaluation.json"
OUTPUT_MD = "evaluation.md"
DEFAULT_DATA_ROOT = Path("..") / "shared" / "data"


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from analysis.evaluation.benchmarks import BENCHMARKS  # no torch behind this import

    parser = OneLineErrorParser(prog="evaluate-negation", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    model = parser.add_argument_group("model")
    model.add_argument("--model", default=EMBEDDED,
                       help="open_clip model name or config JSON; 'embedded' = the small CLIP pretrained on the "
                            "synthetic world (built and cached on first use); 'embedded:small' = its smoke-test build")
    model.add_argument("--pretrained", help="pretrained tag or local checkpoint file (not with --model embedded)")
    model.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    data = parser.add_argument_group("data")
    data.add_argument("--data-root", type=Path,
                      help=f"folder laid out like the shared data (default: {DEFAULT_DATA_ROOT} if it exists)")
    data.add_argument("--image-root", type=Path, help="folder the image paths resolve against "
                                                      "(default: <data-root>/coco_mini/val2017 if it exists)")
    data.add_argument("--image-root-for", action="append", default=[], metavar="BENCHMARK=DIR",
                      help="image root for one benchmark (e.g. valse_existence=visual7w/); repeatable")
    data.add_argument("--ccneg", type=Path, help="CC-Neg file (.pt/.csv/.jsonl); its evaluation split is used")
    data.add_argument("--image-folder", type=Path, help="folder of class-named subfolders of images (prompt gap)")
    data.add_argument("--benchmarks", help=f"comma list among {', '.join(BENCHMARKS)} "
                                           "(default: every benchmark whose files are found)")
    data.add_argument("--limit", type=_positive_int, help="evaluate at most N rows per benchmark (quick runs)")
    synthetic = parser.add_argument_group("synthetic world")
    synthetic.add_argument("--synthetic-n", type=_positive_int, default=1000, help="negation examples and scope pairs")
    synthetic.add_argument("--synthetic-classification", type=_positive_int, default=360,
                           help="images for the prompt gap over its classes")
    synthetic.add_argument("--synthetic-split", choices=("test", "train"), default="test")
    synthetic.add_argument("--synthetic-heldout", choices=("all", "cue", "object", "template"), default="all",
                           help="what the test split holds out")
    synthetic.add_argument("--synthetic-image-size", type=_positive_int,
                           help="side of the rendered images (default: the embedded model's, else 64)")
    run = parser.add_argument_group("run")
    run.add_argument("--batch-size", type=_positive_int, default=256)
    run.add_argument("--seed", type=int, default=0, help="seed of the synthetic world, the generator and random weights")
    run.add_argument("--out", type=Path, required=True, help=f"output folder ({OUTPUT_JSON}, {OUTPUT_MD})")
    run.add_argument("--no-progress", action="store_true")
    return parser


def sources_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """The benchmark sources and the plan, checked before any model is loaded (errors exit 2)."""
    from analysis.evaluation.benchmarks import BenchmarkError, Sources, plan_benchmarks

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
        roots[name.strip()] = Path(folder)
    which = None
    if args.benchmarks is not None:
        which = [name.strip() for name in args.benchmarks.split(",") if name.strip()]
        if not which:
            parser.error("--benchmarks is empty")
    if args.pretrained and is_embedded(args.model):
        parser.error("--pretrained does not go with --model embedded")
    try:
        sources = Sources(data_root=data_root, image_root=args.image_root, image_roots=roots, ccneg=args.ccneg,
                          image_folder=args.image_folder)
        plan = plan_benchmarks(sources, which)
    except BenchmarkError as error:
        parser.error(str(error))
    if not plan.runnable:
        parser.error("no benchmark can run: " + "; ".join(f"{k}: {v}" for k, v in plan.not_run.items()))
    return sources, which, plan


def is_embedded(model: str) -> bool:
    """'embedded' (the default build) or 'embedded:<spec>' (e.g. 'embedded:small', the smoke-test build)."""
    return model == EMBEDDED or model.startswith(EMBEDDED + ":")


def load_model(args: argparse.Namespace):
    """(model, preprocess, tokenizer, description, synthetic world or None).

    The embedded model is imported only when asked for, and comes with the synthetic world it was
    pretrained on (its image size and seed), so that the synthetic benchmark matches its training.
    """
    import torch

    from probing.models.loading import load_clip, resolve_device

    device = resolve_device(args.device)
    if is_embedded(args.model):
        try:
            from finetune import embedded
        except ImportError:
            raise LookupError("the embedded default model is not part of this installation yet; pass --model "
                              "(an open_clip name or config JSON) and --pretrained") from None
        name = args.model.partition(":")[2] or "default"
        if name not in embedded.SPECS:
            raise LookupError(f"unknown embedded model {name!r}; known: {', '.join(embedded.SPECS)}")
        model, preprocess, tokenizer = embedded.load_embedded_model(name, device=device, progress=not args.no_progress)
        described = {"model": args.model, "pretrained": None, "device": str(device)}
        return model, preprocess, tokenizer, described, embedded.world_for(embedded.SPECS[name])
    torch.manual_seed(args.seed)  # a model without pretrained weights starts from a seeded init
    model, preprocess, tokenizer = load_clip(args.model, args.pretrained, device=device)
    described = {"model": str(args.model), "pretrained": None if args.pretrained is None else str(args.pretrained),
                 "device": str(device)}
    if args.pretrained is None:
        described["note"] = "random weights (no --pretrained)"
    return model, preprocess, tokenizer, described, None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    sources, which, plan = sources_from_args(args, parser)
    for name, why in plan.not_run.items():
        print(f"not run: {name}: {why}", file=sys.stderr)

    from analysis.evaluation.evaluate import evaluate_all, markdown_table
    from probing.io import atomic_write_json, atomic_write_text
    from probing.models.loading import ModelLoadError

    try:
        model, preprocess, tokenizer, described, world = load_model(args)
    except (ModelLoadError, LookupError) as error:
        parser.error(str(error))
    if world is None:  # the world the checkpoint records (a fine-tuned embedded model does), else the default
        from probing.synthetic.record import checkpoint_world

        world = checkpoint_world(args.pretrained)
    if args.synthetic_image_size is not None or world is None:
        from probing.synthetic.world import SyntheticWorld, WorldConfig

        size = args.synthetic_image_size or (world.config.image_size if world is not None else 64)
        world = SyntheticWorld(WorldConfig(image_size=size), seed=world.seed if world is not None else args.seed)
    result = evaluate_all(
        model, preprocess, tokenizer, data_root=sources.data_root, image_root=sources.image_root,
        image_roots=sources.image_roots, ccneg=sources.ccneg, image_folder=sources.image_folder,
        which=list(plan.runnable) if which is None else which, batch_size=args.batch_size, limit=args.limit,
        synthetic_n=args.synthetic_n, synthetic_classification=args.synthetic_classification,
        synthetic_split=args.synthetic_split, synthetic_heldout=args.synthetic_heldout, synthetic_world=world,
        seed=args.seed,
        progress=not args.no_progress)
    result["not_run"] = {**plan.not_run, **result["not_run"]}
    output = {"model": described, **result}
    json_path = atomic_write_json(args.out / OUTPUT_JSON, output)
    label = described["model"] + (f" + {described['pretrained']}" if described.get("pretrained") else "")
    md_path = atomic_write_text(args.out / OUTPUT_MD, markdown_table(result, model=label))
    print(f"wrote {json_path} and {md_path}", flush=True)
    for name, why in result["failed"].items():
        print(f"evaluate-negation: {name} failed: {why}", file=sys.stderr)
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
