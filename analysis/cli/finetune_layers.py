"""`finetune-layers`: fine-tune the text-tower layers a plan names with a negation loss.

    finetune-layers --recipe scope --out runs/ft-scope                     (this project's scope recipe)
    finetune-layers --recipe conclip --data ccneg.pt --image-root imgs/ --out runs/conclip
    finetune-layers --recipe omni_negclip --data ccneg.pt --second-data coco_negated.json --image-root imgs/ \
        --out runs/omni
    finetune-layers --recipe scope --plan runs/probe/layer_plan.json --steps 600 --out runs/ft  (flags override it)
    finetune-layers --data synthetic --loss conclip --layers 0-5 --steps 300 --out runs/front6
    torchrun --nproc_per_node 4 -m analysis.cli.finetune_layers ...      (same command, data-parallel)

A recipe (--recipe NAME, or a recipe file's path) sets the anchors' settings as this command's
defaults: learning rate, AdamW betas and eps, which parameters decay, batch, epochs, precision (fp16
with a gradient scaler where the authors use it), clipping, what trains; each recipe file names its
sources (finetune/recipes/*.json). Any flag given on the command line overrides the recipe.

Real data: any file that gives negation examples feeds every loss it has the captions for (probing.data
.negations): CC-Neg (.pt, or the CC-Neg layout with absence-negated captions and distractor images, as
`make-negations` writes it), NegBench retrieval CSVs and COCO captions / instances (through the rule-based
generator: presence- and absence-negated captions, distractor images mined from the annotations).
NegBench MCQ files, or the synthetic world's four-way multiple choice, feed --loss negbench_mcq.
--skip-missing skips rows whose image is missing or that are malformed, and reports them. Checkpoints
hold only the trained tensors, with the base model recorded by path and SHA-256; pass --resumable for
checkpoints that --resume can continue. The run folder gets provenance.json (base checkpoint, data
files and their SHA-256, image roots, command line, toolkit version).

A second data source (--second-data with --second-loss) adds, in every step, that loss on a batch of
its own examples: Omni-NegCLIP's absence loss on COCO beside its presence loss on CC-Neg, NegBench's
MCQ loss on MCQ items beside its contrastive loss.

torch and open_clip are imported inside `main`, after parsing, so that `--help` is instant. Exit
status as every command's (analysis.cli.execution): 2 for a wrong argument, data file, model, layer plan,
recipe or resume; 1 when training stops because the loss or the weights stopped being finite.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from analysis.cli import arguments as a
from analysis.cli.arguments import (
    device_name,
    learning_rate,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    seed,
)
from analysis.cli.execution import (
    Unsupported,
    UsageError,
    run,
)
from analysis.runtime import apply_threads
from finetune.vocabulary import EXTRAS, LOSS_NAMES, MCQ_LOSSES
from probing.vocabulary import DATA_KINDS

PROG = "finetune-layers"
PRECISIONS = ("bf16", "fp16", "fp32")  # finetune.train.PRECISIONS, here without importing torch
SPLITS = ("train", "eval", "all")  # probing.data.ccneg.SPLITS


def build_parser() -> argparse.ArgumentParser:
    from finetune.recipe import recipes_help

    parser = a.CommandParser(PROG, __doc__)
    parser.epilog = (parser.epilog or "") + "\n\nRecipes (--recipe NAME):\n" + recipes_help()
    parser.add_argument("--recipe", help="a shipped recipe (listed below) or a recipe JSON file: its settings become "
                                         "the defaults; flags given here override them")
    a.add_model_arguments(parser, device=False)
    data = parser.add_argument_group("data")
    data.add_argument("--data", default="synthetic",
                      help="'synthetic', or a data file the loaders read (CC-Neg .pt/.csv/.jsonl, COCO captions, "
                           "NegBench MCQ CSV for --loss negbench_mcq ...)")
    data.add_argument("--data-kind", choices=DATA_KINDS, help="loader kind when it cannot be guessed from the file")
    data.add_argument("--image-root", help="folder that relative image paths in the data file start from")
    data.add_argument("--split", choices=SPLITS,
                      help="the part of a data file to train on: a CC-Neg file's split, or generated negations' "
                           "split by image (docs/GUIDE.md); MCQ items and the synthetic world have none "
                           "(default: train)")
    train_examples = data.add_argument("--train-examples", type=positive_int, default=10_000,
                                       help="synthetic training examples to generate")
    data.add_argument("--data-seed", type=seed, default=0, help="seed of the synthetic world")
    data.add_argument("--skip-missing", "--skip-bad-rows", dest="skip_bad_rows", action="store_true",
                      help="skip rows of a data file whose image is missing or that are malformed, and examples whose "
                           "compared captions become the same tokens when cut to the text tower's context, and report "
                           "them (default: stop at the first)")
    data.add_argument("--per-image", type=positive_int, default=1,
                      help="COCO / NegBench retrieval files: negation examples the generator writes per image")
    data.add_argument("--distractors", choices=("auto", "only", "none"), default="auto",
                      help="distractor images of real data: auto = used when every example has one (a loss that "
                           "requires them keeps the examples that have one); only = keep just the examples with one; "
                           "none = never used")
    data.add_argument("--ccneg-keep-commas", action="store_true",
                      help="keep the commas of CC-Neg's negated captions (default: removed, as the authors do)")
    second = parser.add_argument_group("second data source (its loss on a batch of its own in every step)")
    second.add_argument("--second-data", help="'synthetic' or a data file, as --data")
    second.add_argument("--second-data-kind", choices=DATA_KINDS, help="loader kind of --second-data")
    second.add_argument("--second-image-root", help="image root of --second-data (default: --image-root)")
    second.add_argument("--second-split", choices=SPLITS,
                        help="split of a CC-Neg file as --second-data (default: train)")
    second_examples = second.add_argument("--second-train-examples", type=positive_int,
                                          help="synthetic second examples (default: --train-examples)")
    second.add_argument("--second-data-seed", type=seed,
                        help="seed of the synthetic second examples (default: --data-seed + 1)")
    loss = parser.add_argument_group("loss")
    loss.add_argument("--loss", choices=LOSS_NAMES, default="conclip",
                      help="conclip uses distractor images when every example has one (three terms), else its two-term "
                           "form; omni_presence / omni_absence are Omni-NegCLIP's halves; negbench_mcq reads MCQ items")
    loss.add_argument("--loss-weight", type=positive_float, default=1.0, help="weight of --loss in the step's total")
    loss.add_argument("--second-loss", choices=LOSS_NAMES, help="the loss of the second data source")
    loss.add_argument("--second-weight", type=positive_float, default=1.0, help="weight of --second-loss")
    a.add_loss_options(loss)
    layers = parser.add_argument_group("what trains (the image tower is always frozen)")
    layers.add_argument("--plan", help="layer plan JSON (as written by the layer selector)")
    layers.add_argument("--layers", help="text blocks to train, e.g. '0-5', '0,1,2' or 'all' (one of --plan, --layers)")
    layers.add_argument("--extras", help="with --layers: what else trains besides the blocks: none, or a comma list "
                                         "among " + ", ".join(EXTRAS) + " (default: none)")
    for extra in EXTRAS:  # the old spellings, kept one release: --train-embeddings / --no-train-embeddings ...
        layers.add_argument(f"--train-{extra.replace('_', '-')}", action=argparse.BooleanOptionalAction, default=None,
                            help=argparse.SUPPRESS)
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--lr", type=learning_rate, default=1e-5, help="peak learning rate, at most 1")
    optim.add_argument("--betas", default="0.9,0.98", help="AdamW betas 'b1,b2'")
    optim.add_argument("--eps", type=positive_float, default=1e-6, help="AdamW eps")
    optim.add_argument("--weight-decay", type=non_negative_float, default=0.2)
    optim.add_argument("--decay", choices=("matrices", "all"), default="matrices",
                       help="which parameters decay: weight matrices only (not gains, biases, logit scale) or all")
    optim.add_argument("--warmup-steps", type=non_negative_int, default=50)
    optim.add_argument("--schedule", choices=("cosine", "constant"), default="cosine", help="after the warm-up")
    length = optim.add_mutually_exclusive_group()
    length.add_argument("--steps", type=positive_int, help="optimizer steps")
    length.add_argument("--epochs", type=positive_float,
                        help="epochs of the first source (default 1 when --steps is not given)")
    optim.add_argument("--batch-size", type=positive_int, default=128, help="global contrastive batch")
    optim.add_argument("--second-batch-size", type=positive_int,
                       help="batch of the second source (default: --batch-size)")
    optim.add_argument("--grad-accum", type=positive_int, default=1)
    optim.add_argument("--clip-grad-norm", type=non_negative_float, default=1.0, help="0 turns clipping off")
    optim.add_argument("--seed", type=seed, default=0)
    run = a.add_run_arguments(parser)
    run.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda or cuda:N")
    run.add_argument("--precision", choices=PRECISIONS, default="bf16",
                     help="on CUDA: bf16 autocast, fp16 autocast with a gradient scaler, or fp32 (CPU: always fp32)")
    run.add_argument(
        "--out", required=True, help="output folder (checkpoints, metrics.csv, tensorboard/, model.safetensors)"
    )
    run.add_argument("--resumable", action="store_true",
                     help="write checkpoints with optimizer state every --ckpt-every steps, so that --resume can "
                          "continue an interrupted run (default: only the final weights)")
    run.add_argument("--resume", action="store_true",
                     help="continue from the latest checkpoint in --out (implies --resumable)")
    run.add_argument("--log-every", type=positive_int, default=10)
    run.add_argument("--ckpt-every", type=positive_int, default=500, help="with --resumable: steps between checkpoints")
    run.add_argument("--no-tensorboard", action="store_true")
    for old, new in (("--n-examples", train_examples), ("--second-n-examples", second_examples)):
        a.renamed(parser, old, new)
    return parser


def parse(argv: list[str] | None, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse with the recipe's settings as defaults: flags on the command line override the recipe."""
    from finetune.recipe import RecipeError, load_recipe

    argv = sys.argv[1:] if argv is None else list(argv)
    first, _ = parser.parse_known_args(argv)
    recipe = None
    if first.recipe:
        try:
            recipe = load_recipe(first.recipe)
        except RecipeError as error:
            parser.error(f"--recipe: {error}")
        known = {action.dest for action in parser._actions} - {"help", "recipe", "out"}
        unknown = sorted(set(recipe.settings) - known)
        if unknown:
            parser.error(f"--recipe {first.recipe}: unknown setting(s) {', '.join(unknown)}")
        parser.set_defaults(**recipe_defaults(recipe.settings, first.recipe, parser))
    args = parser.parse_args(argv)
    args.recipe_loaded = recipe
    if "epochs" in args.typed:  # the command line's length wins over the recipe's steps
        args.steps = None
    if "steps" in args.typed:
        args.epochs = None
    if "plan" in args.typed and "layers" not in args.typed:  # a plan file says what trains, not the recipe's layers
        args.layers = None
        if "extras" not in args.typed:
            args.extras = None
    resolve_extras(args, parser)
    return args


def resolve_extras(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """args.train_<extra> for every extra: from --extras (or a recipe's "extras"), the old --train-<extra> switches
    overriding it with a note."""
    names = set()
    if args.extras not in (None, "", "none"):
        chosen = a.names(args.extras, EXTRAS, "--extras", parser)
        names = set(chosen)
    for extra in EXTRAS:
        old = getattr(args, f"train_{extra}")
        if old is not None:
            print(f"{PROG}: note: --train-{extra.replace('_', '-')} is now --extras (the old spelling goes in the "
                  "next release)", file=sys.stderr)
        setattr(args, f"train_{extra}", bool(old) if old is not None else extra in names)


def recipe_defaults(settings: dict, recipe: str, parser: argparse.ArgumentParser) -> dict:
    """A recipe's settings checked as if typed on the command line: each by its option's type and choices
    (a recipe file holding `"lr": -1` or `"loss": "magic"` is refused like the flag would be)."""
    actions = {action.dest: action for action in parser._actions}
    checked = {}
    for name, value in settings.items():
        action = actions[name]
        where = f"--recipe {recipe}: setting {name!r}"
        if value is None:
            checked[name] = None
            continue
        if isinstance(action, (argparse.BooleanOptionalAction, argparse._StoreTrueAction)):
            if not isinstance(value, bool):
                parser.error(f"{where} must be true or false, got {a.shown(value)}")
        elif isinstance(value, (dict, list, bool)):
            parser.error(f"{where} must be a number or a string, got {a.shown(value)}")
        else:
            if action.type is not None:
                try:
                    value = action.type(str(value))
                except (argparse.ArgumentTypeError, ValueError) as error:
                    parser.error(f"{where} {error}")
            if action.choices is not None and value not in action.choices:
                parser.error(f"{where}: {a.shown(value)} is not one of {', '.join(map(str, action.choices))}")
        checked[name] = value
    return checked


def _betas(text: str, parser: argparse.ArgumentParser) -> tuple[float, float]:
    try:
        betas = tuple(float(part) for part in str(text).split(","))
    except ValueError:
        betas = ()
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        parser.error(f"--betas takes two numbers in [0, 1) such as '0.9,0.98', got {a.shown(text)}")
    return betas


def layer_plan(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """The LayerPlan of --plan or --layers; None for '--layers all' (built once the model's depth is known)."""
    from finetune.plan import LayerPlan, PlanError

    extras = {f"train_{extra}": getattr(args, f"train_{extra}") for extra in EXTRAS}
    if bool(args.plan) == bool(args.layers):
        parser.error("give one of --plan and --layers (or a --recipe that sets them)")
    try:
        if args.plan:
            if any(extras.values()):
                parser.error("--extras goes with --layers; a --plan file says itself what trains")
            plan = LayerPlan.load(args.plan)
            plan.check_trains()  # before the model loads
            return plan
        if str(args.layers).strip() == "all":
            return None
        return LayerPlan.from_layers(args.layers, **extras)
    except PlanError as error:
        parser.error(str(error))


def load_examples(args: argparse.Namespace, world, *, second: bool = False) -> list:
    """NegationExamples (or MCQItems for an MCQ loss) from the synthetic `world` (the model's own, see
    `main`) or a data file (with the loaders' own errors), for the first or the second source."""
    from probing.data.records import DataError, MCQItem

    prefix, flag = ("second_", "--second-") if second else ("", "--")
    source, loss = getattr(args, f"{prefix}data"), args.second_loss if second else args.loss
    batch_size = (args.second_batch_size or args.batch_size) if second else args.batch_size
    if source == "synthetic":
        n = args.second_train_examples or args.train_examples if second else args.train_examples
        if n < batch_size:
            raise UsageError(f"{flag}data synthetic: {n} examples ({flag}train-examples) are fewer than one batch "
                                    f"of {batch_size}")
        seed = args.data_seed if not second else (args.data_seed + 1 if args.second_data_seed is None
                                                  else args.second_data_seed)
        # an MCQ loss reads the world's four-way multiple-choice items (NegBench's MCQ form), the others its examples
        return (world.mcq_items if loss in MCQ_LOSSES else world.examples)(n, "train", seed=seed)
    examples = real_examples(args, second=second)
    if loss in MCQ_LOSSES and not all(isinstance(item, MCQItem) for item in examples):
        raise DataError(source, None, f"{flag}loss {loss} reads NegBench MCQ items; this file gives negation examples")
    print(getattr(examples, "report", f"{source}: {len(examples)} examples"), flush=True)
    if loss not in MCQ_LOSSES:
        examples = fit_to_loss(examples, loss, args.distractors, source, flag)
    if len(examples) < batch_size:
        skipped = getattr(getattr(examples, "report", None), "n_skipped", 0)
        counted = f"{len(examples)} usable examples" + (f" ({skipped} rows skipped)" if skipped else "")
        raise DataError(source, None, f"{counted} are fewer than one batch of {batch_size} ({flag}batch-size)")
    return list(examples)


def real_examples(args: argparse.Namespace, *, second: bool = False):
    """The records of a data file: MCQ items for an MCQ loss, else negation examples (probing.data.negations)."""
    from probing.data.loaders import guess_kind, load_dataset
    from probing.data.negations import load_negation_examples
    from probing.data.records import DataError

    prefix, flag = ("second_", "--second-") if second else ("", "--")
    source, loss = getattr(args, f"{prefix}data"), args.second_loss if second else args.loss
    kind = getattr(args, f"{prefix}data_kind") or guess_kind(source)
    image_root = (args.second_image_root or args.image_root) if second else args.image_root
    if loss in MCQ_LOSSES:
        if kind != "negbench_mcq":
            raise DataError(source, None, f"{flag}loss {loss} reads NegBench MCQ items; this is a {kind} file")
        return load_dataset(source, kind=kind, image_root=image_root, strict=not args.skip_bad_rows)
    return load_negation_examples(source, kind=kind, image_root=image_root, strict=not args.skip_bad_rows,
                                  seed=args.data_seed + (1 if second else 0), per_image=args.per_image,
                                  split=getattr(args, f"{prefix}split"), strip_commas=not args.ccneg_keep_commas)


def fit_to_loss(examples, loss: str, policy: str, source: str, flag: str):
    """The examples a loss can train on: every caption it reads must be there (a DataError says which are
    missing and where they come from), and distractor images by `policy` (--distractors); what is left out
    is printed."""
    from finetune.losses import loss_spec
    from probing.data.negations import describe_examples, describe_sentence
    from probing.data.records import DataError

    if not examples:  # nothing usable: the batch-size check says how many rows were skipped
        return examples
    spec = loss_spec(loss)
    description = describe_examples(examples, source)
    print(describe_sentence(description), flush=True)
    lacking = [name for name in spec.texts if description["captions"][name]["examples"] == 0]
    if lacking:
        raise DataError(source, None, f"{flag}loss {loss} needs {' and '.join(n.replace('_', '-') for n in lacking)} "
                                      "captions, which this file does not have (released CC-Neg has presence-negated "
                                      "captions only; COCO and NegBench retrieval files, or a CC-Neg-layout file from "
                                      "make-negations, have both)")
    partial = [name for name in spec.texts if description["captions"][name]["examples"] < len(examples)]
    kept = [e for e in examples if all(getattr(e, name) for name in partial)]
    if partial:
        print(f"{flag}loss {loss}: {len(examples) - len(kept)} examples without "
              f"{' / '.join(n.replace('_', '-') for n in partial)} captions left out", flush=True)
    with_distractor = [e for e in kept if e.distractor_image is not None]
    if spec.distractor != "no" and policy != "none" and 0 < len(with_distractor) < len(kept) and (
            policy == "only" or spec.distractor == "required"):
        print(f"{flag}loss {loss}: {len(kept) - len(with_distractor)} examples without a distractor image left out "
              f"({len(with_distractor)} kept)", flush=True)
        kept = with_distractor
    elif spec.distractor != "no" and 0 < len(with_distractor) < len(kept):
        print(f"{flag}loss {loss}: {len(with_distractor)} of {len(kept)} examples have a distractor image: trained "
              "without distractors (--distractors only keeps the examples that have one)", flush=True)
    if policy == "none" or (spec.distractor == "optional" and len(with_distractor) < len(kept)):
        for example in kept:  # the loss then takes its form without distractor images
            example.distractor_image = None
    if spec.distractor == "required" and not any(e.distractor_image is not None for e in kept):
        raise DataError(source, None, f"{flag}loss {loss} needs distractor images, and no example has one")
    return kept


def resolve_splits(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Each source's split: "train" unless given; a split typed for data that has none (the synthetic world, MCQ
    items) is refused, one set by the recipe (for the recipe's own data file) is left out with a note."""
    for prefix, source, loss in (("", args.data, args.loss), ("second-", args.second_data, args.second_loss)):
        dest = f"{prefix.replace('-', '_')}split"
        split = getattr(args, dest)  # None unless given (on the command line or by the recipe)
        if source and split is not None and (source == "synthetic" or loss in MCQ_LOSSES):  # data with no split
            if dest not in args.typed:  # the recipe's split is for its own data file
                print(f"{PROG}: note: --recipe {args.recipe} sets {dest} {split!r}, which --{prefix}data {source} "
                      "does not have: left out", file=sys.stderr)
                split = None
            elif source == "synthetic":
                parser.error(f"--{prefix}split {split} picks part of a data file; the synthetic world has none")
            else:
                parser.error(f"--{prefix}split {split}: MCQ items for --{prefix}loss {loss} have no split (every row "
                             "trains)")
        setattr(args, dest, split or "train")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse(argv, parser)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    args.prog = PROG  # provenance.json names the command, however it was started
    a.check_model_arguments(args, parser)
    if args.second_loss and not args.second_data:
        what = (" (a NegBench MCQ file, or 'synthetic' for the world's multiple choice)"
                if args.second_loss in MCQ_LOSSES else " ('synthetic' or a data file)")
        parser.error(f"--second-loss {args.second_loss} needs --second-data{what}")
    if args.second_data and not args.second_loss:
        parser.error("--second-data needs --second-loss (the loss of the second source)")
    resolve_splits(args, parser)
    args.loss_kwargs, args.second_loss_kwargs = a.loss_options(args, parser, [args.loss, args.second_loss])
    args.betas = _betas(args.betas, parser)
    args.layer_plan = layer_plan(args, parser)
    a.check_output_folder(args.out, "--out", parser)
    if args.steps is not None and args.warmup_steps > args.steps:  # a quick try would never reach --lr
        print(f"{PROG}: warning: --warmup-steps {args.warmup_steps} is more than --steps {args.steps}: the learning "
              f"rate never reaches --lr (it peaks at {args.steps / args.warmup_steps:.0%} of it, on the last step)",
              file=sys.stderr)
    return run(PROG, lambda: finetune(args, parser))


def check_files(args: argparse.Namespace) -> None:
    """The data files, image roots and the output folder's checkpoint, before the model loads (exit 2)."""
    from finetune.checkpoint import latest_checkpoint
    from probing.data.records import DataError

    for option, value in (("--data", args.data), ("--second-data", args.second_data)):
        if value not in (None, "synthetic") and not Path(value).exists():
            raise DataError(value, None, f"file not found (given as {option}; or pass 'synthetic')")
    for option, value in (("--image-root", args.image_root), ("--second-image-root", args.second_image_root)):
        if value is not None and not Path(value).is_dir():
            raise DataError(value, None, f"image root is not a folder (given as {option})")
    checkpoint = latest_checkpoint(args.out)  # a damaged checkpoint pointer is a ResumeError naming it
    if checkpoint is not None and not args.resume:
        raise UsageError(f"{args.out} already holds a checkpoint (step {checkpoint.step}); pass --resume to "
                                "continue it, or choose another output folder")
    if checkpoint is None and not args.resume and (Path(args.out) / "model.safetensors").is_file():
        raise UsageError(f"{args.out} already holds the weights of a finished run (model.safetensors); choose "
                                "another output folder")


def finetune(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Load the data and the model, train, and say where the weights went (a setting the trainer refuses is named
    by the parser's flag for it)."""
    from analysis.provenance import model_base, provenance_record
    from finetune.checkpoint import latest_checkpoint
    from finetune.plan import LayerPlan
    from finetune.train import NonFiniteLossError, TrainConfig, train
    from probing.clip.text_tower import TextTower
    from probing.models.factory import create_model
    from probing.synthetic.record import default_world, world_metadata

    check_files(args)
    final = Path(args.out) / "model.safetensors"
    if args.resume and latest_checkpoint(args.out) is None and final.is_file():  # a finished run without checkpoints
        print(f"done: nothing left to train; weights: {final}", flush=True)
        return 0
    apply_threads(args.threads)
    if args.recipe_loaded is not None:
        print(f"recipe {args.recipe_loaded.name}: {args.recipe_loaded.source}", flush=True)
    # real data first: a file that cannot feed the loss fails before the model loads
    real = {key: load_examples(args, None, second=key == "second") for key, source in
            (("first", args.data), ("second", args.second_data)) if source not in (None, "synthetic")}
    # a model without pretrained weights starts from a seeded init
    bundle = create_model(args.model, args.pretrained, device=args.device, seed=args.seed)
    plan = args.layer_plan
    if plan is None:  # --layers all
        extras = {f"train_{extra}": getattr(args, f"train_{extra}") for extra in EXTRAS}
        plan = LayerPlan(list(range(TextTower.from_model(bundle.model).n_layers)), rule="all blocks", **extras)
    try:
        config = TrainConfig(
            loss=args.loss, loss_kwargs=args.loss_kwargs, loss_weight=args.loss_weight, lr=args.lr,
            weight_decay=args.weight_decay, decay=args.decay, betas=args.betas, eps=args.eps,
            warmup_steps=args.warmup_steps, schedule=args.schedule, steps=args.steps,
            epochs=None if args.steps else (args.epochs or 1.0), batch_size=args.batch_size, grad_accum=args.grad_accum,
            clip_grad_norm=args.clip_grad_norm or None, seed=args.seed, device=args.device, precision=args.precision,
            second_loss=args.second_loss, second_loss_kwargs=args.second_loss_kwargs, second_weight=args.second_weight,
            second_batch_size=args.second_batch_size, log_every=args.log_every, ckpt_every=args.ckpt_every,
            out_dir=args.out, resume=args.resume, resumable=args.resumable or args.resume,
            image_workers=a.image_workers(args.workers, args.threads), feature_cache=not args.no_feature_cache,
            strict_data=not args.skip_bad_rows,
            base=model_base(bundle), model_name=bundle.name, tensorboard=not args.no_tensorboard,
            progress=not args.no_progress)
        # the synthetic world the model was trained on (its checkpoint records it), else the default one
        world = bundle.world
        synthetic = "synthetic" in (args.data, args.second_data)
        if world is None and synthetic:
            raise UsageError(f"--data synthetic: {bundle.world_note}")
        if world is not None and not bundle.world_recorded:  # the default world, drawn with --data-seed
            world = default_world(world.config.image_size, seed=args.data_seed)
        examples = real.get("first") or load_examples(args, world)
        second = (real.get("second") or load_examples(args, world, second=True)) if args.second_data else None
        if world is not None and (synthetic or bundle.world_recorded):
            config = replace(config, checkpoint_metadata=world_metadata(world))  # the output keeps the record
        # written by the trainer with its first output, after every check that could refuse the run
        provenance = provenance_record([PROG, *args.argv], model=bundle,
                                              data={"--data": args.data, "--second-data": args.second_data},
                                              image_roots={"--image-root": args.image_root,
                                                           "--second-image-root": args.second_image_root})
        result = train(bundle.model, bundle.tokenizer, bundle.preprocess, examples, plan, config, second,
                       provenance=provenance)
    except NonFiniteLossError as error:
        raise Unsupported(str(error)) from None
    except ValueError as error:  # settings the trainer refuses (e.g. fewer examples than one batch)
        if type(error).__name__ in ("DataError", "PlanError"):
            raise
        raise UsageError(a.named_by_flag(str(error), TrainConfig, parser, {"image_workers": "--workers"})) from None
    last = "nothing left to train" if result.loss is None else f"last loss {result.loss:.4f}"
    print(f"done: {result.step} steps, {last}; weights: {result.model_path}; "
          f"metrics: {Path(args.out) / 'metrics.csv'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
