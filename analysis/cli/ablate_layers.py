"""`ablate-layers`: fine-tune with the same loss, data and steps, varying only which text blocks train.

    ablate-layers --out runs/ablation                                   (embedded default model, every variant)
    ablate-layers --model embedded:small --steps 20 --seeds 0,1 --variants frozen,front,back --out runs/smoke
    ablate-layers --plan runs/probe/layer_plan.json --loss omni --loss-kwargs '{"lam": 0.5}' --out runs/omni

Variants: frozen, selected (needs --plan), front, middle, back, all, sweep (= layer_0 .. layer_{n-1}),
single layers such as layer_3, and Omni-NegCLIP's own groups omni_front (blocks 0-5), omni_middle (4-7),
omni_back (8-11), omni_whole (0-11), each with the extras its code trains ("omni" names all four):

    ablate-layers --variants frozen,omni --loss omni --out runs/omni-groups

windows (every run of as many blocks as the plan), window_<a>_<b>, and the anchors' choices at the same
budget ("anchors"): omni_front, omni_whole, openclip_last (open_clip's lock_text_tower), norm_only
(LayerNorms only) and steering (training-free: every layer moved along its negation-probe direction).

Every finished (variant, seed) run is a line of <out>/runs.jsonl: run the same command again after
an interruption and it continues where it stopped.

torch is imported after the arguments are parsed, so that `--help` is instant. Exit status as
every command's (analysis.cli.common): 2 for a wrong argument, plan, model or study folder; 1 when a
run stops because its loss stopped being finite.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from analysis.cli import common
from analysis.cli.common import learning_rate, non_negative_float, non_negative_int, positive_int, seed
from finetune.vocabulary import LOSS_NAMES

PROG = "ablate-layers"


def build_parser() -> common.CommandParser:
    parser = common.CommandParser(PROG, __doc__)
    model = common.add_model_arguments(parser)
    model.title = "model (the image tower is always frozen)"
    model.add_argument("--world-seed", type=seed, default=0,
                       help="random init and synthetic world of a model whose checkpoint records no world")
    loss = parser.add_argument_group("loss and budget (the same for every run)")
    loss.add_argument("--loss", choices=LOSS_NAMES, default="conclip")
    loss.add_argument("--loss-kwargs", default="{}", help="loss options as a JSON object, e.g. '{\"terms\": [1]}'")
    loss.add_argument("--steps", type=positive_int, default=200, help="optimizer steps per run")
    loss.add_argument("--batch-size", type=positive_int, default=128)
    loss.add_argument("--lr", type=learning_rate, default=5e-5)
    loss.add_argument("--warmup-steps", type=non_negative_int, default=20)
    loss.add_argument("--weight-decay", type=non_negative_float, default=0.2)
    loss.add_argument("--n-train", type=positive_int, default=8192, help="training examples (shared by every run)")
    loss.add_argument("--data-seed", type=seed, default=0, help="seed of the training examples")
    study = parser.add_argument_group("study")
    study.add_argument(
        "--seeds", default="0,1,2", help="comma list of training seeds (at least 3 for intervals worth reading)"
    )
    study.add_argument("--variants", help="comma list among frozen, selected, front, middle, back, all, sweep, "
                                          "layer_<i>, omni (= omni_front, omni_middle, omni_back, omni_whole), "
                                          "windows, window_<a>_<b>, anchors (= omni_front, omni_whole, "
                                          "openclip_last, norm_only, steering) or any of those "
                                          "(default: the groups and the sweep)")
    study.add_argument("--plan", help="layer plan JSON for the 'selected' variant (as probe-layers writes it)")
    study.add_argument(
        "--extras",
        default="none",
        help="extras every trained variant also trains: none, plan (the --plan's), or a comma list among "
        "embeddings, ln_final, projection, logit_scale",
    )
    study.add_argument("--eval-n", type=positive_int, default=1000, help="test items per held-out suite (>= 100)")
    study.add_argument("--eval-classification", type=positive_int, default=720, help="zero-shot test images")
    study.add_argument("--eval-seed", type=seed, default=1)
    run = common.add_run_arguments(parser)
    run.add_argument(
        "--out",
        required=True,
        help="output folder (runs.jsonl, ablation_table.md, ablation_summary.*, ablation.png/pdf)",
    )
    run.add_argument(
        "--max-runs", type=positive_int, help="stop after this many runs (continue later with the same command)"
    )
    run.add_argument("--ckpt-every", type=positive_int, default=100, help="trainer checkpoint interval within a run")
    run.add_argument(
        "--keep-models", action="store_true", help="keep every run's weights (default: only logs and metrics)"
    )
    return parser


def parse_loss_kwargs(text: str, loss: str, parser: argparse.ArgumentParser) -> dict:
    """The JSON object of --loss-kwargs, each option one that `loss` takes with a value it can use."""
    from finetune.options import LossOptionError, check_loss_options
    from probing.io import DuplicateKeyError, strict_json_loads

    try:
        value = strict_json_loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        parser.error(f"--loss-kwargs is not JSON ({getattr(error, 'msg', error)}): {common.shown(text)}")
    except DuplicateKeyError as error:
        parser.error(f"--loss-kwargs: {error}")
    if not isinstance(value, dict):
        parser.error(f"--loss-kwargs must be a JSON object such as '{{\"lam\": 0.5}}', got {common.shown(text)}")
    try:
        check_loss_options(loss, value)
    except LossOptionError as error:
        parser.error(f"--loss-kwargs: {error}")
    return value


def make_config(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """The AblationConfig of the arguments; any inconsistency is an argument error."""
    from analysis.ablation.config import AblationConfig, AblationError

    common.check_model_arguments(args, parser)
    variants = None if args.variants is None else tuple(v.strip() for v in args.variants.split(",") if v.strip())
    extras = [name.strip() for name in str(args.extras).split(",") if name.strip()]
    twice = next((name for i, name in enumerate(extras) if name in extras[:i]), None)
    if twice is not None:
        parser.error(f"--extras: {twice} given twice")
    try:
        return AblationConfig(
            model=args.model, pretrained=args.pretrained, world_seed=args.world_seed, loss=args.loss,
            loss_kwargs=parse_loss_kwargs(args.loss_kwargs, args.loss, parser), steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr, warmup_steps=args.warmup_steps, weight_decay=args.weight_decay, n_train=args.n_train,
            data_seed=args.data_seed, seeds=common.int_list(args.seeds, "--seeds", parser), eval_n=args.eval_n,
            eval_n_classification=args.eval_classification, eval_seed=args.eval_seed, variants=variants,
            plan_path=args.plan, extras=args.extras, device=args.device, ckpt_every=args.ckpt_every,
            keep_models=args.keep_models)
    except AblationError as error:
        parser.error(str(error))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.variants is not None and not args.variants.strip(",").strip():
        parser.error("--variants is empty")
    args.config = make_config(args, parser)
    if args.plan is not None and not Path(args.plan).is_file():
        parser.error(f"--plan: layer plan file {args.plan} does not exist")
    common.check_output_folder(args.out, "--out", parser)
    return common.run(PROG, ablate, args)


def ablate(args: argparse.Namespace) -> int:
    from analysis.ablation.config import AblationError
    from analysis.ablation.runner import AblationStudy
    from finetune.train import NonFiniteLossError

    common.apply_threads(args)
    config = args.config
    try:
        study = AblationStudy(config, args.out, progress=not args.no_progress)
        print(f"ablation of {study.base.label}: {len(study.variants)} variants x {len(config.seeds)} seeds "
              f"({study.n_layers} text blocks) -> {args.out}", flush=True)
        result = study.run(max_runs=args.max_runs)
    except AblationError as error:
        raise common.UsageError(str(error)) from None
    except NonFiniteLossError as error:
        raise common.Unsupported(str(error)) from None
    state = "complete" if result.complete else "incomplete: run the same command again to continue"
    print(f"{len(result.executed)} runs done now; study {state}", flush=True)
    for name, path in result.outputs.items():
        print(f"  {name:<12} {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
