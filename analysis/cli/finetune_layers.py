"""`finetune-layers`: fine-tune the text-tower layers a plan names with a negation loss.

    finetune-layers --data synthetic --loss conclip --layers 0-5 --steps 300 --out runs/front6
    finetune-layers --model ViT-B-32-quickgelu --pretrained openai.pt --data ccneg.pt --image-root imgs/ \
        --loss conclip --plan plan.json --epochs 5 --batch-size 256 --lr 1e-6 --out runs/ccneg
    torchrun --nproc_per_node 4 -m analysis.cli.finetune_layers ...      (same command, data-parallel)

torch and open_clip are imported inside `main`, after parsing, so that `--help` is instant. Exit
status as every command's (analysis.cli.common): 2 for a wrong argument, data file, model, layer plan
or resume; 1 when training stops because the loss or the weights stopped being finite.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from analysis.cli import common
from analysis.cli.common import non_negative_int, positive_float, positive_int
from finetune.vocabulary import EXTRAS, LOSS_NAMES, MIX_PARTS

PROG = "finetune-layers"


def build_parser() -> argparse.ArgumentParser:
    parser = common.CommandParser(PROG, __doc__)
    common.add_model_arguments(parser, device=False)
    data = parser.add_argument_group("data")
    data.add_argument("--data", default="synthetic", help="'synthetic', or a data file the loaders read (CC-Neg .pt/.csv/.jsonl, COCO captions ...)")
    data.add_argument("--data-kind", help="loader kind when it cannot be guessed from the file (e.g. ccneg)")
    data.add_argument("--image-root", help="folder that relative image paths in the data file start from")
    data.add_argument("--split", default="train", help="split of a CC-Neg file (train / eval / all)")
    data.add_argument("--n-examples", type=positive_int, default=10_000, help="synthetic examples to generate")
    data.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic world")
    loss = parser.add_argument_group("loss")
    loss.add_argument("--loss", choices=LOSS_NAMES, default="conclip",
                      help="conclip uses distractor images when every example has one (three terms), else its two-term form")
    loss.add_argument("--terms", help="CoN-CLIP terms to use, e.g. '1' or '1,2,3' (default: all available)")
    loss.add_argument("--weights", help="with --loss mix: weights such as 'scope_pair=1,clip=1'; parts not listed "
                                        f"get 0 (keys: {', '.join(MIX_PARTS)})")
    loss.add_argument("--lam", type=float, help="Omni-NegCLIP weight of the absence loss (default 1)")
    loss.add_argument("--lambda-o", type=float, help="Omni-NegCLIP weight of the original-caption term (default 1)")
    loss.add_argument("--lambda-t", type=float, help="Omni-NegCLIP weight of the hinge (default 1)")
    loss.add_argument("--margin", type=float, help="Omni-NegCLIP hinge margin m (default 0.2)")
    layers = parser.add_argument_group("what trains (the image tower is always frozen)")
    which = layers.add_mutually_exclusive_group(required=True)
    which.add_argument("--plan", help="layer plan JSON (as written by the layer selector)")
    which.add_argument("--layers", help="text blocks to train, e.g. '0-5' or '0,1,2'")
    for extra in EXTRAS:
        layers.add_argument(f"--train-{extra.replace('_', '-')}", action="store_true", help=f"with --layers: also train {extra}")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--lr", type=positive_float, default=1e-5)
    optim.add_argument("--weight-decay", type=float, default=0.2)
    optim.add_argument("--warmup-steps", type=non_negative_int, default=50)
    length = optim.add_mutually_exclusive_group()
    length.add_argument("--steps", type=positive_int, help="optimizer steps")
    length.add_argument("--epochs", type=positive_float, help="epochs (default 1 when --steps is not given)")
    optim.add_argument("--batch-size", type=positive_int, default=128, help="global contrastive batch")
    optim.add_argument("--grad-accum", type=positive_int, default=1)
    optim.add_argument("--clip-grad-norm", type=float, default=1.0, help="0 turns clipping off")
    optim.add_argument("--seed", type=int, default=0)
    run = common.add_run_arguments(parser)
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    run.add_argument("--no-bf16", action="store_true", help="keep float32 on CUDA (bf16 autocast is the default there)")
    run.add_argument("--out", required=True, help="output folder (checkpoints, metrics.csv, tensorboard/, model.safetensors)")
    run.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    run.add_argument("--log-every", type=positive_int, default=10)
    run.add_argument("--ckpt-every", type=positive_int, default=500)
    run.add_argument("--no-tensorboard", action="store_true")
    return parser


def loss_kwargs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict:
    """Loss options, refusing those that the chosen loss does not have."""
    given = {name: getattr(args, name) for name in ("terms", "lam", "lambda_o", "lambda_t", "margin", "weights")
             if getattr(args, name) is not None}
    allowed = {"conclip": {"terms"}, "omni": {"lam", "lambda_o", "lambda_t", "margin"},
               "mix": {"terms", "weights"}}.get(args.loss, set())
    foreign = sorted(set(given) - allowed)
    if foreign:
        flags = ", ".join("--" + name.replace("_", "-") for name in foreign)
        parser.error(f"{flags} do(es) not apply to --loss {args.loss}")
    if "terms" in given:
        try:
            given["terms"] = [int(t) for t in given["terms"].split(",")]
        except ValueError:
            parser.error(f"--terms must list term numbers such as '1,2,3', got {args.terms!r}")
        if not given["terms"] or not set(given["terms"]) <= {1, 2, 3}:
            parser.error(f"--terms must be among 1, 2, 3, got {args.terms!r}")
    if "weights" in given:
        given.update(_mix_weights(given.pop("weights"), parser))
    return given


def _mix_weights(text: str, parser: argparse.ArgumentParser) -> dict[str, float]:
    """The mix's weights; a part not listed gets 0, so the command line says the whole mix."""
    known = MIX_PARTS
    weights = dict.fromkeys(known, 0.0)
    for item in text.split(","):
        name, _, value = item.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            parser.error(f"--weights items look like 'conclip=1', got {item!r}")
        if name.strip() not in known:
            parser.error(f"--weights: unknown loss {name.strip()!r}; known: {', '.join(known)}")
    return weights


def layer_plan(args: argparse.Namespace, parser: argparse.ArgumentParser):
    from finetune.plan import LayerPlan, PlanError

    extras = {f"train_{extra}": getattr(args, f"train_{extra}") for extra in EXTRAS}
    try:
        if args.plan:
            if any(extras.values()):
                parser.error("--train-* flags go with --layers; a --plan file says itself what trains")
            return LayerPlan.load(args.plan)
        return LayerPlan.from_layers(args.layers, **extras)
    except PlanError as error:
        parser.error(str(error))


def load_examples(args: argparse.Namespace, world) -> list:
    """NegationExamples from the synthetic `world` (the model's own, see `main`) or a data file
    (with the loaders' own errors)."""
    from probing.data.records import DataError, NegationExample

    if args.data == "synthetic":
        return world.examples(args.n_examples, "train", seed=args.data_seed)
    from probing.data.loaders import guess_kind, load_dataset

    kind = args.data_kind or guess_kind(args.data)
    options = {"split": args.split} if kind == "ccneg" else {}
    examples = load_dataset(args.data, kind=kind, image_root=args.image_root, strict=True, **options)
    wrong = next((item for item in examples if not isinstance(item, NegationExample)), None)
    if wrong is not None:
        raise DataError(args.data, None, f"{kind} data holds {type(wrong).__name__} records; fine-tuning needs "
                                         "NegationExample data (CC-Neg, COCO captions, the synthetic world)")
    print(getattr(examples, "report", f"{args.data}: {len(examples)} examples"), flush=True)
    return list(examples)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    common.check_model_arguments(args, parser)
    args.loss_kwargs = loss_kwargs(args, parser)
    args.layer_plan = layer_plan(args, parser)
    return common.run(PROG, finetune, args)


def finetune(args: argparse.Namespace) -> int:
    """Load the model and data, train, and say where the weights went."""
    from finetune.train import NonFiniteLossError, ResumeError, TrainConfig, train
    from probing.synthetic.record import default_world, world_metadata

    common.apply_threads(args)
    bundle = common.load_model(args, seed=args.seed)  # a model without pretrained weights starts from a seeded init
    try:
        config = TrainConfig(
            loss=args.loss, loss_kwargs=args.loss_kwargs, lr=args.lr, weight_decay=args.weight_decay,
            warmup_steps=args.warmup_steps, steps=args.steps, epochs=None if args.steps else (args.epochs or 1.0),
            batch_size=args.batch_size, grad_accum=args.grad_accum, clip_grad_norm=args.clip_grad_norm or None,
            seed=args.seed, device=args.device, bf16=not args.no_bf16, log_every=args.log_every,
            ckpt_every=args.ckpt_every, out_dir=args.out, resume=args.resume, model_name=bundle.name,
            tensorboard=not args.no_tensorboard, progress=not args.no_progress)
        # the synthetic world the model was trained on (its checkpoint records it), else the default one
        world = bundle.world
        if world is None and args.data == "synthetic":
            raise common.UsageError(f"--data synthetic: {bundle.world_note}")
        if world is not None and not bundle.world_recorded:  # the default world, drawn with --data-seed
            world = default_world(world.config.image_size, seed=args.data_seed)
        examples = load_examples(args, world)
        if world is not None and (args.data == "synthetic" or bundle.world_recorded):
            config = replace(config, checkpoint_metadata=world_metadata(world))  # the output keeps the record
        result = train(bundle.model, bundle.tokenizer, bundle.preprocess, examples, args.layer_plan, config)
    except ResumeError as error:
        raise common.UsageError(str(error)) from None
    except NonFiniteLossError as error:
        raise common.Unsupported(str(error)) from None
    except ValueError as error:  # settings the trainer refuses (e.g. fewer examples than one batch)
        if type(error).__name__ in ("DataError", "PlanError"):
            raise
        raise common.UsageError(str(error)) from None
    last = "nothing left to train" if result.loss is None else f"last loss {result.loss:.4f}"
    print(f"done: {result.step} steps, {last}; weights: {result.model_path}; "
          f"metrics: {Path(args.out) / 'metrics.csv'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
