"""`probe-layers`: measure negation layer by layer, pick the layers to fine-tune, write the evidence.

    probe-layers                                              (the embedded default model)
    probe-layers --model embedded:small --seeds 0,1 --n-train 400  (the smoke-test build, quick)
    probe-layers --model ViT-B-32-quickgelu --pretrained openai.pt --data negbench_retrieval.csv \
        --image-root val2017/ --rule topk --k 4 --out runs/clip-b32

Writes into the output folder: measurements.json (+ one CSV per table), layer_plan.json (for
`finetune-layers --plan`), figures/ (PNG + PDF), report.md and report.json.

torch, open_clip and the measurement code are imported after the arguments are checked, so
`--help` is instant. Exit status as every command's (analysis.cli.common): 2 for a wrong argument,
a broken data file or a model that cannot load (one line); 1 when the measurements cannot support
the rule (they are saved first).
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from analysis.cli import common
from analysis.cli.common import at_least, fraction, positive_float, positive_int
from analysis.selection import RULES
from finetune.vocabulary import GRADNORM_LOSSES
from probing.vocabulary import MEASUREMENTS, NEEDS_IMAGES

PROG = "probe-layers"


def build_parser() -> argparse.ArgumentParser:
    parser = common.CommandParser(PROG, __doc__)
    model = common.add_model_arguments(parser)
    model.add_argument("--no-random-baseline", action="store_true",
                       help="skip the random-weights model; probe evidence is then measured against chance")
    data = parser.add_argument_group("data")
    data.add_argument("--data", default="synthetic",
                      help="'synthetic', or a real data file the loaders read (CC-Neg .pt/.csv/.jsonl, COCO instances "
                           "JSON, NegBench retrieval CSV): text-side probes on its captions")
    data.add_argument("--data-kind", help="loader kind when it cannot be guessed from the file")
    data.add_argument("--image-root", type=Path, help="folder the data file's image paths resolve against")
    data.add_argument("--train-cues", default="no,not", help="real data: negation cues the probes train on; "
                                                             "the other cues are the held-out split")
    data.add_argument("--per-image", type=positive_int, default=3,
                      help="real COCO / NegBench retrieval data: generated negation examples per image")
    data.add_argument("--n-train", type=at_least(20), default=2000, help="synthetic probe training captions")
    data.add_argument("--n-test", type=at_least(10), default=600, help="synthetic captions per test split")
    data.add_argument("--seed", type=int, default=0,
                      help="seed of data draws, of the synthetic world (non-embedded models) and of random weights")
    measure = parser.add_argument_group("measurements")
    measure.add_argument("--measurements", default=",".join(MEASUREMENTS), help="comma list among " + ", ".join(MEASUREMENTS))
    measure.add_argument("--seeds", default="0,1,2,3,4", help="probe seeds (comma list)")
    measure.add_argument("--batch-size", type=positive_int, default=256, help="captions per forward pass")
    measure.add_argument("--token-budget", type=positive_int,
                         help="captures in length-sorted batches of at most this many tokens (e.g. 1280): less "
                              "padding on real captions, probe numbers equal only to float rounding (default: "
                              "batches of --batch-size captions)")
    measure.add_argument("--memory-budget", type=positive_float, default=2.0,
                         help="GiB the captured features of one caption set may take in memory; larger captures "
                              "stream to memory-mapped files in $TMPDIR (deleted once mapped)")
    measure.add_argument("--n-sensitivity", type=positive_int, default=400, help="captions edited for sensitivity")
    measure.add_argument("--n-causal", type=positive_int, default=400, help="scenes in the causal check")
    measure.add_argument("--grad-batches", type=positive_int, default=4, help="batches averaged for gradient norms")
    measure.add_argument("--grad-batch-size", type=positive_int, default=64)
    measure.add_argument("--losses", default=",".join(GRADNORM_LOSSES),
                         help="losses for the gradient norms, among " + ", ".join(GRADNORM_LOSSES))
    select = parser.add_argument_group("layer selection (formulas: analysis/selection.py)")
    select.add_argument("--rule", choices=RULES, default="prefix",
                        help="prefix: shortest front prefix holding --share of the evidence; topk: the --k best blocks; "
                             "auto_rgn: blocks with Auto-RGN weight >= --rgn-floor")
    select.add_argument("--share", type=fraction, default=0.8, help="prefix: share of the combined evidence")
    select.add_argument("--k", type=positive_int, default=4, help="topk: number of blocks")
    select.add_argument("--rgn-floor", type=fraction, default=0.1, help="auto_rgn: lowest lr weight that still trains")
    select.add_argument("--lr-weights", action="store_true", help="prefix/topk: add Auto-RGN per-block lr weights")
    select.add_argument("--grad-loss", help="the loss whose gradient norms count (default: mean over --losses)")
    select.add_argument("--score-weights", default="0.5,0.25,0.25",
                        help="weights of probe, gradnorm and sensitivity evidence in the combined score")
    select.add_argument("--sensitivity-edit", choices=("presence", "absence"), default="presence",
                        help="the negation edit whose excess over the control edit counts as sensitivity evidence")
    select.add_argument("--min-probe-margin", type=float, default=0.03,
                        help="held-out probe accuracy over the baseline below this counts as noise")
    run = common.add_run_arguments(parser)
    run.add_argument("--out", type=Path, help="output folder (default: runs/probe-layers-<model>-<time>)")
    return parser


def check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Check and normalise the arguments before anything heavy is imported (errors exit 2)."""
    common.check_model_arguments(args, parser)
    args.measurement_list = common.names(args.measurements, MEASUREMENTS, "--measurements", parser)
    args.loss_list = common.names(args.losses, GRADNORM_LOSSES, "--losses", parser)
    args.seed_list = common.int_list(args.seeds, "--seeds", parser)
    args.weights = _score_weights(args.score_weights, parser)
    if not 0 <= args.min_probe_margin < 1:
        parser.error(f"--min-probe-margin must be in [0, 1), got {args.min_probe_margin}")
    if "causal" in args.measurement_list and "probes" not in args.measurement_list:
        parser.error("causal projects out the probe direction: it needs probes in --measurements")
    if not set(args.measurement_list) & {"probes", "sensitivity", "gradnorms"}:
        parser.error("layer selection needs at least one of probes, sensitivity, gradnorms in --measurements")
    if (args.rule == "auto_rgn" or args.lr_weights) and "gradnorms" not in args.measurement_list:
        parser.error("--rule auto_rgn and --lr-weights need gradnorms in --measurements")
    if args.grad_loss is not None and args.grad_loss not in args.loss_list:
        parser.error(f"--grad-loss {args.grad_loss!r} is not among --losses ({', '.join(args.loss_list)})")
    args.train_cue_list = tuple(c.strip() for c in args.train_cues.split(",") if c.strip())
    if args.data != "synthetic":
        if not Path(args.data).exists():
            parser.error(f"--data {args.data}: no such file (or pass 'synthetic')")
        if not args.train_cue_list:
            parser.error("--train-cues is empty")
    if args.image_root is not None and not args.image_root.is_dir():
        parser.error(f"--image-root {args.image_root} is not a folder")
    if args.out is None:
        args.out = Path("runs") / f"probe-layers-{_slug(model_label(args))}-{time.strftime('%Y%m%d-%H%M%S')}"
    return args


def _score_weights(text: str, parser) -> tuple[float, float, float]:
    try:
        weights = tuple(float(x) for x in text.split(","))
    except ValueError:
        weights = ()
    if len(weights) != 3 or min(weights) < 0 or sum(weights) <= 0:
        parser.error(f"--score-weights takes three non-negative numbers (probe,gradnorm,sensitivity), got {text!r}")
    return weights


def model_label(args) -> str:
    return Path(args.model).stem if args.model.endswith(".json") else args.model


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "model"


# --- the run ------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = check_args(parser.parse_args(argv), parser)
    return common.run(PROG, measure_select_report, args)


def measure_select_report(args: argparse.Namespace) -> int:
    """Measure, save, select, plot and report; print where everything went."""
    common.apply_threads(args)
    started = time.perf_counter()
    notes: list[str] = []
    real = None
    if args.data != "synthetic":  # read the data first: a broken file fails before any model loads
        common.say(args, f"reading {args.data}")
        real = real_task(args, notes)
    common.say(args, f"loading {model_label(args)} on {args.device}")
    bundle, random_model = load_models(args, notes)
    if real is None and bundle.world is None:
        raise common.UsageError(f"{bundle.world_note}; pass --data with a real data file")
    tasks = [real] if real is not None else synthetic_tasks(bundle.world, args)
    measurements = measure(bundle, random_model, tasks, args, notes)
    measurements.meta["model"] = bundle.info
    measurements.save(args.out)
    return select_and_report(measurements, bundle, args, notes, started)


def load_models(args, notes: list[str]):
    """(the model's ModelBundle, its random-weights twin or None): same architecture, seeded init."""
    from probing.models.factory import create_model
    from probing.models.text_tower import TextTower

    bundle = common.load_model(args, seed=args.seed)
    if bundle.world is None:
        notes.append(bundle.world_note)
        print(f"{PROG}: note: {bundle.world_note}", file=sys.stderr)
    if args.pretrained is None and not bundle.checkpoint:
        notes.append("the model has random weights (no --pretrained)")
    random_model = None
    if "probes" in args.measurement_list and not args.no_random_baseline:
        random_model = create_model(bundle.name, None, device=args.device, seed=args.seed).model
    bundle.info["n_layers"] = TextTower.from_model(bundle.model).n_layers
    return bundle, random_model


def synthetic_tasks(world, args) -> list:
    from probing.measure.tasks import synthetic_negation_task, synthetic_scope_task

    if world is None or "probes" not in args.measurement_list:
        return []
    return [synthetic_negation_task(world, n_train=args.n_train, n_test=args.n_test, seed=args.seed),
            synthetic_scope_task(world, n_train=args.n_train, n_test=args.n_test, seed=args.seed)]


def real_task(args, notes: list[str]):
    """The negation probing task from a real data file (text only: images are not read)."""
    from probing.data import CocoImage, DataError, NegationExample, RetrievalItem, generate_negations, load_dataset
    from probing.measure.tasks import real_negation_task

    try:
        records = load_dataset(args.data, kind=args.data_kind, image_root=args.image_root, strict=False)
    except DataError:
        raise
    except ValueError as error:  # e.g. an unknown --data-kind
        raise common.UsageError(f"--data {args.data}: {error}") from None
    if records.report.n_skipped:
        notes.append(f"{args.data}: skipped {records.report.n_skipped} unreadable rows "
                     f"({', '.join(f'{k} x{n}' for k, n in records.report.skip_reasons().most_common(3))})")
    if records and all(isinstance(r, (CocoImage, RetrievalItem)) for r in records):
        records = generate_negations(records, seed=args.seed, per_image=args.per_image)
    if not records or not all(isinstance(r, NegationExample) for r in records):
        kind = type(records[0]).__name__ if records else "nothing"
        raise common.UsageError(f"--data {args.data}: holds {kind} records; probing needs negation examples "
                         "(CC-Neg, COCO instances or NegBench retrieval files)")
    if not any(r.presence_negated or r.absence_negated for r in records):
        raise common.UsageError(f"--data {args.data}: no negated captions to probe (captions only?)")
    try:
        task = real_negation_task(records, train_cues=args.train_cue_list, seed=args.seed)
    except ValueError as error:
        raise common.UsageError(f"--data {args.data}: {error}") from None
    if len(task.tests) == 1:
        notes.append(f"{args.data}: every caption uses the training cues {list(args.train_cue_list)}, "
                     "so there is no held-out cue split")
    return task


def measure(bundle, random_model, tasks, args, notes: list[str]):
    from finetune.losses import gradnorm_loss_fns
    from probing.measure.layers import MeasureConfig, measure_layers

    wanted = list(args.measurement_list)
    if bundle.world is None:
        skipped = [m for m in wanted if m in NEEDS_IMAGES]
        if skipped:
            notes.append(f"skipped {', '.join(skipped)}: they need the synthetic world's images")
            print(f"{PROG}: note: skipping {', '.join(skipped)} (no synthetic world for this model)", file=sys.stderr)
            wanted = [m for m in wanted if m not in skipped]
    config = MeasureConfig(seeds=args.seed_list, measurements=tuple(wanted), n_sensitivity=args.n_sensitivity,
                           n_causal=args.n_causal, grad_batches=args.grad_batches,
                           grad_batch_size=args.grad_batch_size, batch_size=args.batch_size, seed=args.seed,
                           token_budget=args.token_budget, memory_budget=int(args.memory_budget * 2**30))
    common.say(args, f"measuring {', '.join(wanted)} ({len(args.seed_list)} probe seeds)")
    return measure_layers(bundle.model, bundle.preprocess, bundle.tokenizer, tasks, world=bundle.world,
                          random_model=random_model, loss_fns=gradnorm_loss_fns(args.loss_list),
                          config=config, progress=not args.no_progress)


def selection_config(args):
    from analysis.selection import SelectionConfig

    w_probe, w_gradnorm, w_sensitivity = args.weights
    return SelectionConfig(rule=args.rule, share=args.share, k=args.k, rgn_floor=args.rgn_floor,
                           lr_weights=args.lr_weights, grad_loss=args.grad_loss, w_probe=w_probe,
                           w_gradnorm=w_gradnorm, w_sensitivity=w_sensitivity, min_probe_margin=args.min_probe_margin,
                           sensitivity_edit=args.sensitivity_edit)


def select_and_report(measurements, bundle, args, notes: list[str], started: float) -> int:
    from analysis.report.figures import plot_all
    from analysis.report.report import write_report
    from analysis.selection import SelectionError, describe_blocks, select_layers

    try:
        plan = select_layers(measurements, selection_config(args))
    except SelectionError as error:
        raise common.Unsupported(f"no layer plan: {error} (measurements saved in {args.out})") from None
    plan.validate(measurements.n_layers)
    plan_path = plan.save(args.out / "layer_plan.json")
    common.say(args, "drawing figures")
    figures = plot_all(measurements, plan, args.out / "figures")
    run_info = {"arguments": {k: v for k, v in vars(args).items()}, "seconds": time.perf_counter() - started,
                "notes": notes}
    paths = write_report(args.out, measurements, plan, figures=figures, model_info=bundle.info,
                         embedded_metrics=bundle.metrics, run_info=run_info)
    print(f"wrote {args.out}/: {paths['markdown'].name}, {paths['json'].name}, {plan_path.name}, measurements.json "
          f"(+ CSV tables), figures/ ({sum(len(p) for p in figures.values())} files)")
    print(f"selected blocks: {describe_blocks(plan.blocks)} ({plan.describe()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
