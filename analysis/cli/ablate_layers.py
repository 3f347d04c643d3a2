"""`ablate-layers`: fine-tune with the same loss, data and steps, varying only which text blocks train.

    ablate-layers --out runs/ablation                                   (embedded default model, every variant)
    ablate-layers --model embedded:small --steps 20 --seeds 0,1 --variants frozen,front,back --out runs/smoke
    ablate-layers --plan runs/probe/layer_plan.json --variants frozen,selected,windows,sweep --selectors all \
        --loss mix --weights scope_pair=1,clip=1,conclip=0.5 --terms 1 --out runs/selectors
    ablate-layers ... --shard 2/8 --out runs/big     (8 processes, one per GPU, each runs every 8th run)

Variants (analysis.ablation.variants): frozen, selected (needs --plan), selected_planned (the plan with its own
extras, as finetune-layers trains it), front, middle, back, all, sweep (= layer_0 .. layer_{n-1}), single layers
such as layer_3, windows (every run of as many blocks as the plan), windows-<k> (every window of k blocks),
windows-near (the plan's size and one fewer and more), window_<a>_<b>, set_<a>_<b>_... (any set of blocks),
Omni-NegCLIP's own groups omni_front (blocks 0-5), omni_middle (4-7), omni_back (8-11), omni_whole (0-11), each
with the extras its code trains ("omni" names all four), and the anchors' choices at the same budget ("anchors"):
omni_front, omni_whole, openclip_last (open_clip's lock_text_tower), norm_only (LayerNorms only) and steering
(training-free: every layer moved along its negation-probe direction).

--second-loss negbench_mcq trains every run with NegBench's MCQ loss on the synthetic world's four-way
multiple-choice items beside --loss (its recipe: the multiple choice trained for, not only measured).

--selectors all adds the plan of every baseline selector (analysis.planning.selectors: raw Auto-RGN, Omni-NegCLIP's
cosine, the FIM score, activation norms, front-k, last-k, a random window), read from the measurements
probe-layers saved beside --plan, and writes the selector table and the frontier figure.

Every finished (variant, seed) run is a line of <out>/runs.jsonl (a shard's: runs.shard-K-of-N.jsonl): run the
same command again after an interruption and it continues where it stopped. <out>/config.json re-runs the
study (--config). torch is imported after the arguments are parsed, so that `--help` is instant. Exit status
as every command's (analysis.cli.execution): 2 for a wrong argument, plan, model or study folder; 1 when a run
stops because its loss stopped being finite.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from analysis.cli import arguments as a
from analysis.cli.execution import Unsupported, run
from analysis.runtime import apply_threads
from finetune.vocabulary import EXTRAS, LOSS_NAMES, MCQ_LOSSES
from probing.io import DuplicateKeyError, strict_json_loads

PROG = "ablate-layers"
# AblationConfig's fields that its flags name otherwise: a settings error from flags names the flag (from --config,
# the file's field)
FLAG_OF_FIELD = {"world_seed": "--seed", "n_train": "--train-examples", "n_second": "--second-train-examples",
                 "eval_n": "--eval-items", "eval_n_classification": "--eval-zero-shot", "plan_path": "--plan",
                 "num_workers": "--workers"}
CONFIG_FILE = "config.json"
RUN_LEVEL = ("out", "threads", "workers", "no_progress", "no_feature_cache", "config", "max_runs", "shard",
             "keep_models")


def build_parser() -> a.CommandParser:
    parser = a.CommandParser(PROG, __doc__)
    parser.add_argument("--config", type=Path, help="re-run (or continue) the study a config.json describes (only "
                                                    "--out, --shard, --max-runs and run options go with it)")
    model = a.add_model_arguments(parser)
    model.title = "model (the image tower is always frozen)"
    seed = model.add_argument("--seed", type=a.seed, default=0,
                              help="random init and synthetic world of a model whose checkpoint records no world")
    loss = parser.add_argument_group("loss and budget (the same for every run)")
    loss.add_argument("--loss", choices=LOSS_NAMES, default="conclip")
    a.add_loss_options(loss)
    loss_kwargs = loss.add_argument("--loss-kwargs", help=argparse.SUPPRESS)  # the old JSON spelling, kept one release
    loss.add_argument("--second-loss", choices=MCQ_LOSSES,
                      help="also train, in every step, this loss on a batch of the synthetic world's four-way "
                           "multiple-choice items (NegBench's recipe: its MCQ loss beside the contrastive one)")
    loss.add_argument("--second-weight", type=a.positive_float, default=1.0, help="weight of --second-loss")
    loss.add_argument("--second-train-examples", type=a.positive_int, default=2000,
                      help="multiple-choice items of --second-loss (the same for every run)")
    loss.add_argument("--steps", type=a.positive_int, default=200, help="optimizer steps per run")
    loss.add_argument("--batch-size", type=a.positive_int, default=128)
    loss.add_argument("--lr", type=a.learning_rate, default=5e-5)
    loss.add_argument("--warmup-steps", type=a.non_negative_int, default=20)
    loss.add_argument("--weight-decay", type=a.non_negative_float, default=0.2)
    train_examples = loss.add_argument("--train-examples", type=a.positive_int, default=8192,
                                       help="training examples (the same for every run)")
    loss.add_argument("--data-seed", type=a.seed, default=0, help="seed of the training examples")
    study = parser.add_argument_group("study")
    study.add_argument("--seeds", default="0,1,2", help="training seeds, one run per variant and seed (at least 3 for "
                                                        "intervals worth reading)")
    study.add_argument("--variants", help="comma list of variants (see above; default: the groups and the sweep)")
    study.add_argument("--plan", help="layer plan JSON for the 'selected' variants (as probe-layers writes it)")
    study.add_argument("--selectors", help="comma list of baseline selectors whose plans join the study, or 'all' "
                                           "(analysis.planning.selectors; needs --plan)")
    study.add_argument("--comparison", metavar="FILE",
                       help="a compare-checkpoints comparison.json: adds the finetune_change selector, the blocks its "
                            "fine-tune changed most (needs --plan)")
    study.add_argument("--comparison-model", metavar="NAME",
                       help="which tuned model of --comparison to follow (when it holds more than one)")
    study.add_argument("--extras", default="none",
                       help="extras every trained variant also trains: none, plan (the --plan's), or a comma list "
                            "among " + ", ".join(EXTRAS))
    eval_items = study.add_argument("--eval-items", type=a.positive_int, default=1000,
                                    help="test items per held-out suite (>= 100)")
    eval_zero_shot = study.add_argument("--eval-zero-shot", type=a.positive_int, default=720,
                                        help="zero-shot test images")
    study.add_argument("--eval-mcq", type=a.non_negative_int,
                       help="four-way multiple-choice items on the held-out-object suite (default: --eval-items)")
    study.add_argument("--eval-seed", type=a.seed, default=1)
    run_group = a.add_run_arguments(parser)
    run_group.add_argument("--out", required=True, type=Path,
                           help="output folder (runs.jsonl, config.json, ablation_table.md, ablation_summary.*, "
                                "ablation.png/pdf, validity.*, frontier.*, selectors.*)")
    run_group.add_argument("--max-runs", type=a.positive_int,
                           help="stop after this many runs (continue later with the same command)")
    run_group.add_argument("--shard", help="K/N: run only every N-th pending run, starting at the K-th, into its own "
                                           "runs file (N processes share one study; every reader merges them)")
    run_group.add_argument("--ckpt-every", type=a.positive_int, default=100,
                           help="trainer checkpoint interval within a run")
    run_group.add_argument("--keep-models", action="store_true",
                           help="keep every run's weights (default: only logs and metrics)")
    for old, new in (("--world-seed", seed), ("--n-train", train_examples), ("--eval-n", eval_items),
                     ("--eval-classification", eval_zero_shot)):
        a.renamed(parser, old, new)
    del loss_kwargs
    return parser


def _old_loss_kwargs(text: str, parser: argparse.ArgumentParser) -> dict:
    """--loss-kwargs (the old spelling): a JSON object of loss options."""
    print(f"{PROG}: note: --loss-kwargs is now --terms / --weights / --lam / --lambda-o / --lambda-t / --margin (the "
          "old spelling goes in the next release)", file=sys.stderr)
    try:
        value = strict_json_loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        parser.error(f"--loss-kwargs is not JSON ({getattr(error, 'msg', error)}): {a.shown(text)}")
    except DuplicateKeyError as error:
        parser.error(f"--loss-kwargs: {error}")
    if not isinstance(value, dict):
        parser.error(f"--loss-kwargs must be a JSON object such as '{{\"lam\": 0.5}}', got {a.shown(text)}")
    return value


def make_config(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """The AblationConfig of the arguments (or of --config); any inconsistency is an argument error."""
    from analysis.ablation.config import AblationConfig, AblationError
    from probing.io import dataclass_from_dict

    if args.config is not None:
        try:
            record = strict_json_loads(Path(args.config).read_text(encoding="utf-8"))
            if record.get("command") != PROG:
                raise ValueError(f"it was written by {record.get('command')!r}, not {PROG}")
            config = dataclass_from_dict(AblationConfig, record["config"])
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            parser.error(f"--config {args.config} is not an {PROG} config.json: {error}")
        return config
    a.check_model_arguments(args, parser)
    if args.loss_kwargs is not None:
        options = _old_loss_kwargs(args.loss_kwargs, parser)
    else:
        (options,) = a.loss_options(args, parser, [args.loss])
    if args.second_loss is None:  # the second source's settings mean nothing without it
        orphan = [flag for flag, name in (("--second-weight", "second_weight"),
                                          ("--second-train-examples", "second_train_examples"))
                  if getattr(args, name) != parser.get_default(name)]
        if orphan:
            parser.error(f"{orphan[0]} goes with --second-loss (the second source's loss)")
    variants = None if args.variants is None else a.names(args.variants, None, "--variants", parser)
    selectors = None if args.selectors is None else a.names(args.selectors, None, "--selectors", parser)
    try:
        return AblationConfig(
            model=args.model, pretrained=args.pretrained, world_seed=args.seed, loss=args.loss, loss_kwargs=options,
            second_loss=args.second_loss, second_weight=args.second_weight, n_second=args.second_train_examples,
            steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps,
            weight_decay=args.weight_decay, n_train=args.train_examples, data_seed=args.data_seed,
            seeds=a.int_list(args.seeds, "--seeds", parser), eval_n=args.eval_items,
            eval_n_classification=args.eval_zero_shot, eval_seed=args.eval_seed, eval_mcq=args.eval_mcq,
            variants=variants, plan_path=args.plan, selectors=selectors, comparison=args.comparison,
            comparison_model=args.comparison_model, extras=args.extras, device=args.device,
            ckpt_every=args.ckpt_every, keep_models=args.keep_models, num_workers=a.image_workers(args.workers,
                                                                                                   args.threads),
            feature_cache=not args.no_feature_cache)
    except AblationError as error:
        parser.error(a.named_by_flag(str(error), AblationConfig, parser, FLAG_OF_FIELD))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config is not None:
        given = sorted(args.typed.difference(RUN_LEVEL))
        if given:
            parser.error(f"--config re-runs a saved study: drop --{given[0].replace('_', '-')}")
    elif args.variants is not None and not args.variants.strip(",").strip():
        parser.error("--variants is empty")
    args.argv = sys.argv[1:] if argv is None else list(argv)  # provenance.json names the command
    config = make_config(args, parser)
    shard = None
    if args.shard is not None:
        from analysis.ablation.config import AblationError
        from analysis.ablation.runs import Shard

        try:
            shard = Shard.parse(args.shard)
        except AblationError as error:
            parser.error(f"--shard: {error}")
    if config.plan_path is not None and not Path(config.plan_path).is_file():
        parser.error(f"--plan: layer plan file {config.plan_path} does not exist")
    if config.comparison is not None:  # a bad comparison file is one line before the model loads
        from analysis.compare.plan import finetune_change_selector
        from finetune.plan import PlanError

        try:
            finetune_change_selector(config.comparison, 1, model=config.comparison_model)
        except PlanError as error:
            parser.error(f"--comparison: {error}")
    a.check_output_folder(args.out, "--out", parser)
    return run(PROG, lambda: ablate(config, args, shard))


def ablate(config, args: argparse.Namespace, shard) -> int:
    from analysis.ablation.runner import AblationStudy
    from analysis.provenance import write_provenance
    from finetune.train import NonFiniteLossError
    from probing.io import atomic_write_json

    apply_threads(args.threads)
    study = AblationStudy(config, args.out, progress=not args.no_progress)
    atomic_write_json(Path(args.out) / CONFIG_FILE, {"command": PROG, "config": config.to_dict()})
    # provenance.json names the command that last ran in the folder; a shard also keeps its own
    names = ["provenance.json"] + ([] if shard is None else [f"provenance.shard-{shard.index}-of-{shard.count}.json"])
    for name in names:
        write_provenance(args.out, [PROG, *args.argv], model=study.base.bundle, name=name,
                         data={"--plan": config.plan_path, "--comparison": config.comparison})
    where = "" if shard is None else f" (shard {shard.index}/{shard.count})"
    print(f"ablation of {study.base.label}: {len(study.variants)} variants x {len(config.seeds)} seeds "
          f"({study.n_layers} text blocks) -> {args.out}{where}", flush=True)
    try:
        result = study.run(max_runs=args.max_runs, shard=shard)
    except NonFiniteLossError as error:
        raise Unsupported(str(error)) from None
    state = "complete" if result.complete else "incomplete: run the same command again to continue"
    print(f"{len(result.executed)} runs done now; study {state}", flush=True)
    for name, path in result.outputs.items():
        print(f"  {name:<14} {path}", flush=True)
    for sentence in result.sentences:  # the verdict: validity, the frontier and its next point, the selectors
        print(sentence, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
