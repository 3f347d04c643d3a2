"""`ablate-layers`: fine-tune with the same loss, data and steps, varying only which text blocks train.

    ablate-layers --out runs/ablation                                   (embedded default model, every variant)
    ablate-layers --embedded small --steps 20 --seeds 0,1 --variants frozen,front,back --out runs/smoke
    ablate-layers --plan runs/probe/layer_plan.json --loss omni --loss-kwargs '{"lam": 0.5}' --out runs/omni

Variants: frozen, selected (needs --plan), front, middle, back, all, sweep (= layer_0 .. layer_{n-1}),
or single layers such as layer_3. Every finished (variant, seed) run is a line of <out>/runs.jsonl:
run the same command again after an interruption and it continues where it stopped.

torch is imported after the arguments are parsed, so that `--help` is instant.
"""
from __future__ import annotations

import argparse
import json
import sys

from analysis.cli.finetune_layers import LOSS_NAMES  # = finetune.losses.LOSS_SPECS; imports nothing heavy
from analysis.cli.args import non_negative_int as _non_negative_int
from analysis.cli.args import positive_float as _positive_float
from analysis.cli.args import positive_int as _positive_int
EMBEDDED_BUILDS = ("default", "small")  # = finetune.embedded.SPECS


class OneLineErrorParser(argparse.ArgumentParser):
    """Argument errors as one line (no usage block), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> OneLineErrorParser:
    parser = OneLineErrorParser(prog="ablate-layers", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=_Formatter)
    model = parser.add_argument_group("model (the image tower is always frozen)")
    model.add_argument("--embedded", choices=EMBEDDED_BUILDS,
                       help="the embedded model pretrained on the synthetic world (default: 'default' unless --model)")
    model.add_argument("--model", help="open_clip model name or config JSON instead of the embedded model")
    model.add_argument("--pretrained", help="pretrained tag or checkpoint file for --model")
    model.add_argument("--world-seed", type=int, default=0, help="synthetic world seed for --model (the embedded model brings its own)")
    loss = parser.add_argument_group("loss and budget (the same for every run)")
    loss.add_argument("--loss", choices=LOSS_NAMES, default="conclip")
    loss.add_argument("--loss-kwargs", default="{}", help="loss options as a JSON object, e.g. '{\"terms\": [1]}'")
    loss.add_argument("--steps", type=_positive_int, default=200, help="optimizer steps per run")
    loss.add_argument("--batch-size", type=_positive_int, default=128)
    loss.add_argument("--lr", type=_positive_float, default=5e-5)
    loss.add_argument("--warmup-steps", type=_non_negative_int, default=20)
    loss.add_argument("--weight-decay", type=float, default=0.2)
    loss.add_argument("--n-train", type=_positive_int, default=8192, help="training examples (shared by every run)")
    loss.add_argument("--data-seed", type=int, default=0, help="seed of the training examples")
    study = parser.add_argument_group("study")
    study.add_argument("--seeds", default="0,1,2", help="comma list of training seeds (at least 3 for intervals worth reading)")
    study.add_argument("--variants", help="comma list among frozen, selected, front, middle, back, all, sweep, layer_<i> "
                                          "(default: all of them, sweep included)")
    study.add_argument("--plan", help="layer plan JSON for the 'selected' variant (as probe-layers writes it)")
    study.add_argument("--extras", default="none",
                       help="extras every trained variant also trains: none, plan (the --plan's), or a comma list among "
                            "embeddings, ln_final, projection, logit_scale")
    study.add_argument("--eval-n", type=_positive_int, default=1000, help="test items per held-out suite (>= 100)")
    study.add_argument("--eval-classification", type=_positive_int, default=720, help="zero-shot test images")
    study.add_argument("--eval-seed", type=int, default=1)
    run = parser.add_argument_group("run")
    run.add_argument("--out", required=True, help="output folder (runs.jsonl, ablation_table.md, ablation_summary.*, ablation.png/pdf)")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    run.add_argument("--threads", type=_positive_int, help="torch CPU threads (default: torch's choice)")
    run.add_argument("--max-runs", type=_positive_int, help="stop after this many runs (continue later with the same command)")
    run.add_argument("--ckpt-every", type=_positive_int, default=100, help="trainer checkpoint interval within a run")
    run.add_argument("--keep-models", action="store_true", help="keep every run's weights (default: only logs and metrics)")
    run.add_argument("--no-progress", action="store_true")
    return parser


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def parse_seeds(text: str, parser: argparse.ArgumentParser) -> tuple[int, ...]:
    try:
        seeds = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        parser.error(f"--seeds must be a comma list of integers such as '0,1,2', got {text!r}")
    if not seeds:
        parser.error("--seeds is empty")
    return seeds


def parse_loss_kwargs(text: str, parser: argparse.ArgumentParser) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        parser.error(f"--loss-kwargs is not JSON ({error.msg}): {text!r}")
    if not isinstance(value, dict):
        parser.error(f"--loss-kwargs must be a JSON object such as '{{\"lam\": 0.5}}', got {text!r}")
    return value


def make_config(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """The AblationConfig of the arguments; any inconsistency is an argument error."""
    from analysis.ablation.study import AblationConfig, AblationError

    if args.embedded and args.model:
        parser.error("--embedded and --model exclude each other")
    if args.pretrained and not args.model:
        parser.error("--pretrained goes with --model")
    variants = None if args.variants is None else tuple(v.strip() for v in args.variants.split(",") if v.strip())
    try:
        return AblationConfig(
            embedded=None if args.model else (args.embedded or "default"), model=args.model, pretrained=args.pretrained,
            world_seed=args.world_seed, loss=args.loss, loss_kwargs=parse_loss_kwargs(args.loss_kwargs, parser),
            steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps,
            weight_decay=args.weight_decay, n_train=args.n_train, data_seed=args.data_seed,
            seeds=parse_seeds(args.seeds, parser), eval_n=args.eval_n, eval_n_classification=args.eval_classification,
            eval_seed=args.eval_seed, variants=variants, plan_path=args.plan, extras=args.extras, device=args.device,
            ckpt_every=args.ckpt_every, keep_models=args.keep_models)
    except AblationError as error:
        parser.error(str(error))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.variants is not None and not args.variants.strip(",").strip():
        parser.error("--variants is empty")

    import torch  # from here on: torch, open_clip and the model

    if args.threads:
        torch.set_num_threads(args.threads)
    config = make_config(args, parser)

    from analysis.ablation.study import AblationError, AblationStudy
    from finetune.train import NonFiniteLossError, ResumeError
    from probing.models.loading import ModelLoadError

    try:
        study = AblationStudy(config, args.out, progress=not args.no_progress)
        print(f"ablation of {study.base.label}: {len(study.variants)} variants x {len(config.seeds)} seeds "
              f"({study.n_layers} text blocks) -> {args.out}", flush=True)
        result = study.run(max_runs=args.max_runs)
    except (AblationError, ModelLoadError) as error:
        parser.error(str(error))
    except (NonFiniteLossError, ResumeError) as error:
        print(f"ablate-layers: error: {error}", file=sys.stderr)
        return 1
    state = "complete" if result.complete else "incomplete: run the same command again to continue"
    print(f"{len(result.executed)} runs done now; study {state}", flush=True)
    for name, path in result.outputs.items():
        print(f"  {name:<12} {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
