"""`probe-layers`: measure negation layer by layer, pick the layers to fine-tune, write the evidence.

    probe-layers                                       (the embedded default model, built on first use)
    probe-layers --small --seeds 0,1 --n-train 400     (the smoke-test build, quick)
    probe-layers --model ViT-B-32-quickgelu --pretrained openai.pt --data negbench_retrieval.csv \
        --image-root val2017/ --rule topk --k 4 --out runs/clip-b32

Writes into the output folder: measurements.json (+ one CSV per table), layer_plan.json (for
`finetune-layers --plan`), figures/ (PNG + PDF), report.md and report.json.

torch, open_clip and the measurement code are imported after the arguments are checked, so
`--help` is instant and a wrong argument fails at once with a one-line error (exit 2). Loader and
model errors are one line too (exit 2); measurements that cannot support the rule exit 1 after
the measurements are saved.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from analysis.cli.args import positive_int as _positive_int

PROG = "probe-layers"
EMBEDDED = "embedded"
EMBEDDED_SPECS = ("default", "small")  # = finetune.embedded.SPECS (checked in the tests)
MEASUREMENTS = ("probes", "sensitivity", "gradnorms", "causal")  # = probing.measure.MEASUREMENTS
RULES = ("prefix", "topk", "auto_rgn")  # = analysis.selection.RULES
GRAD_LOSSES = ("clip", "conclip", "omni_presence", "omni_absence")
NEEDS_IMAGES = ("sensitivity", "gradnorms", "causal")


class UsageError(Exception):
    """A problem with what was asked for, found after parsing (printed as one line, exit 2)."""


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse errors as one line (no usage block), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    model = parser.add_argument_group("model")
    model.add_argument("--model", default=EMBEDDED,
                       help="open_clip model name or config JSON; 'embedded' = the small CLIP pretrained on the "
                            "synthetic world (built and cached on first use); 'embedded:small' = its smoke-test build")
    model.add_argument("--embedded", choices=EMBEDDED_SPECS, help="which embedded build (with --model embedded)")
    model.add_argument("--small", action="store_true", help="same as --embedded small")
    model.add_argument("--pretrained", help="pretrained tag or local checkpoint file (not with the embedded model)")
    model.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
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
    data.add_argument("--per-image", type=_positive_int, default=3,
                      help="real COCO / NegBench retrieval data: generated negation examples per image")
    data.add_argument("--n-train", type=_at_least(20), default=2000, help="synthetic probe training captions")
    data.add_argument("--n-test", type=_at_least(10), default=600, help="synthetic captions per test split")
    data.add_argument("--seed", type=int, default=0,
                      help="seed of data draws, of the synthetic world (non-embedded models) and of random weights")
    measure = parser.add_argument_group("measurements")
    measure.add_argument("--measurements", default=",".join(MEASUREMENTS), help="comma list among " + ", ".join(MEASUREMENTS))
    measure.add_argument("--seeds", default="0,1,2,3,4", help="probe seeds (comma list)")
    measure.add_argument("--batch-size", type=_positive_int, default=256, help="captions per forward pass")
    measure.add_argument("--n-sensitivity", type=_positive_int, default=400, help="captions edited for sensitivity")
    measure.add_argument("--n-causal", type=_positive_int, default=400, help="scenes in the causal check")
    measure.add_argument("--grad-batches", type=_positive_int, default=4, help="batches averaged for gradient norms")
    measure.add_argument("--grad-batch-size", type=_positive_int, default=64)
    measure.add_argument("--losses", default=",".join(GRAD_LOSSES),
                         help="losses for the gradient norms, among " + ", ".join(GRAD_LOSSES))
    select = parser.add_argument_group("layer selection (formulas: analysis/selection.py)")
    select.add_argument("--rule", choices=RULES, default="prefix",
                        help="prefix: shortest front prefix holding --share of the evidence; topk: the --k best blocks; "
                             "auto_rgn: blocks with Auto-RGN weight >= --rgn-floor")
    select.add_argument("--share", type=_fraction, default=0.8, help="prefix: share of the combined evidence")
    select.add_argument("--k", type=_positive_int, default=4, help="topk: number of blocks")
    select.add_argument("--rgn-floor", type=_fraction, default=0.1, help="auto_rgn: lowest lr weight that still trains")
    select.add_argument("--lr-weights", action="store_true", help="prefix/topk: add Auto-RGN per-block lr weights")
    select.add_argument("--grad-loss", help="the loss whose gradient norms count (default: mean over --losses)")
    select.add_argument("--score-weights", default="0.5,0.25,0.25",
                        help="weights of probe, gradnorm and sensitivity evidence in the combined score")
    select.add_argument("--sensitivity-edit", choices=("presence", "absence"), default="presence",
                        help="the negation edit whose excess over the control edit counts as sensitivity evidence")
    select.add_argument("--min-probe-margin", type=float, default=0.03,
                        help="held-out probe accuracy over the baseline below this counts as noise")
    run = parser.add_argument_group("run")
    run.add_argument("--out", type=Path, help="output folder (default: runs/probe-layers-<model>-<time>)")
    run.add_argument("--threads", type=_positive_int, help="torch CPU threads (default: torch's choice)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


# --- argument types and checks (no torch) -----------------------------------------------------


def _at_least(minimum: int):
    """An integer type with a floor (probe splits need both classes, so tiny sizes cannot work)."""
    def parse(text: str) -> int:
        value = _positive_int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def _names(text: str, known: tuple[str, ...], option: str, parser) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        parser.error(f"{option}: unknown {', '.join(unknown)}; choose from {', '.join(known)}" if unknown
                     else f"{option} is empty")
    return names


def check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Check and normalise the arguments before anything heavy is imported (errors exit 2)."""
    args.embedded_spec = _embedded_spec(args, parser)
    args.measurement_list = _names(args.measurements, MEASUREMENTS, "--measurements", parser)
    args.loss_list = _names(args.losses, GRAD_LOSSES, "--losses", parser)
    try:
        args.seed_list = tuple(dict.fromkeys(int(s) for s in args.seeds.split(",") if s.strip()))
    except ValueError:
        parser.error(f"--seeds takes a comma list of integers, got {args.seeds!r}")
    if not args.seed_list:
        parser.error("--seeds is empty")
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


def _embedded_spec(args, parser) -> str | None:
    """The embedded build asked for ('default' / 'small'), or None for an open_clip model."""
    named = args.model == EMBEDDED or args.model.startswith(EMBEDDED + ":")
    chosen = {s for s in (args.embedded, "small" if args.small else None,
                          args.model.partition(":")[2] if named else None) if s}
    if not named:
        if chosen:
            parser.error("--embedded / --small select the embedded model; they do not go with --model " + args.model)
        return None
    if args.pretrained:
        parser.error("--pretrained does not go with the embedded model (it is built and cached here)")
    if len(chosen) > 1:
        parser.error(f"conflicting embedded builds: {', '.join(sorted(chosen))}")
    spec = chosen.pop() if chosen else "default"
    if spec not in EMBEDDED_SPECS:
        parser.error(f"unknown embedded build {spec!r}; known: {', '.join(EMBEDDED_SPECS)}")
    return spec


def _score_weights(text: str, parser) -> tuple[float, float, float]:
    try:
        weights = tuple(float(x) for x in text.split(","))
    except ValueError:
        weights = ()
    if len(weights) != 3 or min(weights) < 0 or sum(weights) <= 0:
        parser.error(f"--score-weights takes three non-negative numbers (probe,gradnorm,sensitivity), got {text!r}")
    return weights


def model_label(args) -> str:
    if args.embedded_spec:
        return f"{EMBEDDED}:{args.embedded_spec}"
    return Path(args.model).stem if args.model.endswith(".json") else args.model


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "model"


# --- the run ------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = check_args(parser.parse_args(argv), parser)

    from probing.data import DataError
    from probing.models.loading import ModelLoadError

    from finetune.plan import PlanError

    try:
        return run(args)
    except (DataError, ModelLoadError, PlanError, UsageError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2


def _say(args, message: str) -> None:
    if not args.no_progress:
        print(message, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Measure, save, select, plot and report; print where everything went."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    notes: list[str] = []
    real = None
    if args.data != "synthetic":  # read the data first: a broken file fails before any model loads
        _say(args, f"reading {args.data}")
        real = real_task(args, notes)
    _say(args, f"loading {model_label(args)} on {args.device}")
    loaded = load_models(args, notes)
    if real is None and loaded.world is None:
        raise UsageError("the synthetic world cannot be rendered for this model (see above); "
                         "pass --data with a real data file")
    tasks = [real] if real is not None else synthetic_tasks(loaded.world, args)
    measurements = measure(loaded, tasks, args, notes)
    measurements.meta["model"] = loaded.info
    measurements.save(args.out)
    return select_and_report(measurements, loaded, args, notes, started)


@dataclass
class Loaded:
    model: object
    preprocess: object
    tokenizer: object
    random_model: object | None
    world: object | None  # the synthetic world for sensitivity, gradient norms and the causal check
    info: dict
    embedded_metrics: dict | None = None


def load_models(args, notes: list[str]) -> Loaded:
    """The model, its random-weights twin (same architecture, seeded init) and its synthetic world."""
    import torch

    from probing.synthetic.record import checkpoint_world
    from probing.models.loading import load_clip, resolve_device

    device = resolve_device(args.device)
    progress = not args.no_progress
    if args.embedded_spec:
        from finetune import embedded

        spec = embedded.SPECS[args.embedded_spec]
        model, preprocess, tokenizer = embedded.load_embedded_model(spec, device=str(device), progress=progress)
        name, world = spec.model, embedded.world_for(spec)
        info = {"model": model_label(args), "config": spec.model, "checkpoint": str(embedded.checkpoint_path(spec)),
                "device": str(device)}
        metrics = embedded.embedded_metrics(spec)
    else:
        torch.manual_seed(args.seed)  # a model without pretrained weights starts from a seeded init
        model, preprocess, tokenizer = load_clip(args.model, args.pretrained, device=device)
        # a fine-tuned embedded model records its synthetic world; other models get the default one
        world = checkpoint_world(args.pretrained) or synthetic_world(model, args.seed, notes)
        name, metrics = args.model, None
        info = {"model": str(args.model), "pretrained": args.pretrained, "device": str(device)}
        if args.pretrained is None:
            notes.append("the model has random weights (no --pretrained)")
    random_model = None
    if "probes" in args.measurement_list and not args.no_random_baseline:
        torch.manual_seed(args.seed)
        random_model, _, _ = load_clip(name, None, device=device)
    from probing.models.text_tower import TextTower

    info["n_layers"] = TextTower.from_model(model).n_layers
    return Loaded(model, preprocess, tokenizer, random_model, world, info, metrics)


def synthetic_world(model, seed: int, notes: list[str]):
    """The synthetic world rendered at the model's image size, or None (with a note) if it cannot be."""
    from probing.synthetic import SyntheticWorld, WorldConfig

    size = getattr(getattr(model, "visual", None), "image_size", None)
    size = size[0] if isinstance(size, (tuple, list)) else size
    if not isinstance(size, int):
        notes.append("the model's image size is unknown, so the synthetic world cannot be rendered for it")
        print(f"{PROG}: note: {notes[-1]}", file=sys.stderr)
        return None
    try:
        world = SyntheticWorld(WorldConfig(image_size=size), seed=seed)
        world.examples(2, "test", seed)  # renders: fails here if the size is too small for the scenes
    except ValueError as error:
        notes.append(f"the synthetic world cannot be rendered at {size}x{size} ({error})")
        print(f"{PROG}: note: {notes[-1]}", file=sys.stderr)
        return None
    return world


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
        raise UsageError(f"--data {args.data}: {error}") from None
    if records.report.n_skipped:
        notes.append(f"{args.data}: skipped {records.report.n_skipped} unreadable rows "
                     f"({', '.join(f'{k} x{n}' for k, n in records.report.skip_reasons().most_common(3))})")
    if records and all(isinstance(r, (CocoImage, RetrievalItem)) for r in records):
        records = generate_negations(records, seed=args.seed, per_image=args.per_image)
    if not records or not all(isinstance(r, NegationExample) for r in records):
        kind = type(records[0]).__name__ if records else "nothing"
        raise UsageError(f"--data {args.data}: holds {kind} records; probing needs negation examples "
                         "(CC-Neg, COCO instances or NegBench retrieval files)")
    if not any(r.presence_negated or r.absence_negated for r in records):
        raise UsageError(f"--data {args.data}: no negated captions to probe (captions only?)")
    try:
        task = real_negation_task(records, train_cues=args.train_cue_list, seed=args.seed)
    except ValueError as error:
        raise UsageError(f"--data {args.data}: {error}") from None
    if len(task.tests) == 1:
        notes.append(f"{args.data}: every caption uses the training cues {list(args.train_cue_list)}, "
                     "so there is no held-out cue split")
    return task


def build_loss_fns(names) -> dict:
    """Gradient-norm losses: CLIP and CoN-CLIP as training computes them, Omni-NegCLIP's two halves."""
    from finetune.losses import make_loss_fn, omni_absence_loss, omni_presence_loss

    def omni_presence(features, scale):
        return omni_presence_loss(features["image"], features["caption"], features["presence_negated"], scale=scale)

    def omni_absence(features, scale):
        return omni_absence_loss(features["image"], features["caption"], features["absence_negated"], scale=scale)

    known = {"clip": make_loss_fn("clip"), "conclip": make_loss_fn("conclip"),
             "omni_presence": omni_presence, "omni_absence": omni_absence}
    return {name: known[name] for name in names}


def measure(loaded: Loaded, tasks, args, notes: list[str]):
    from probing.measure.layers import MeasureConfig, measure_layers

    wanted = list(args.measurement_list)
    if loaded.world is None:
        skipped = [m for m in wanted if m in NEEDS_IMAGES]
        if skipped:
            notes.append(f"skipped {', '.join(skipped)}: they need the synthetic world's images")
            print(f"{PROG}: note: skipping {', '.join(skipped)} (no synthetic world for this model)", file=sys.stderr)
            wanted = [m for m in wanted if m not in skipped]
    config = MeasureConfig(seeds=args.seed_list, measurements=tuple(wanted), n_sensitivity=args.n_sensitivity,
                           n_causal=args.n_causal, grad_batches=args.grad_batches,
                           grad_batch_size=args.grad_batch_size, batch_size=args.batch_size, seed=args.seed)
    _say(args, f"measuring {', '.join(wanted)} ({len(args.seed_list)} probe seeds)")
    return measure_layers(loaded.model, loaded.preprocess, loaded.tokenizer, tasks, world=loaded.world,
                          random_model=loaded.random_model, loss_fns=build_loss_fns(args.loss_list),
                          config=config, progress=not args.no_progress)


def selection_config(args):
    from analysis.selection import SelectionConfig

    w_probe, w_gradnorm, w_sensitivity = args.weights
    return SelectionConfig(rule=args.rule, share=args.share, k=args.k, rgn_floor=args.rgn_floor,
                           lr_weights=args.lr_weights, grad_loss=args.grad_loss, w_probe=w_probe,
                           w_gradnorm=w_gradnorm, w_sensitivity=w_sensitivity, min_probe_margin=args.min_probe_margin,
                           sensitivity_edit=args.sensitivity_edit)


def select_and_report(measurements, loaded: Loaded, args, notes: list[str], started: float) -> int:
    from analysis.report.figures import plot_all
    from analysis.report.report import write_report
    from analysis.selection import SelectionError, describe_blocks, select_layers

    try:
        plan = select_layers(measurements, selection_config(args))
    except SelectionError as error:
        print(f"{PROG}: error: no layer plan: {error} (measurements saved in {args.out})", file=sys.stderr)
        return 1
    plan.validate(measurements.n_layers)
    plan_path = plan.save(args.out / "layer_plan.json")
    _say(args, "drawing figures")
    figures = plot_all(measurements, plan, args.out / "figures")
    run_info = {"arguments": {k: v for k, v in vars(args).items()}, "seconds": time.perf_counter() - started,
                "notes": notes}
    paths = write_report(args.out, measurements, plan, figures=figures, model_info=loaded.info,
                         embedded_metrics=loaded.embedded_metrics, run_info=run_info)
    print(f"wrote {args.out}/: {paths['markdown'].name}, {paths['json'].name}, {plan_path.name}, measurements.json "
          f"(+ CSV tables), figures/ ({sum(len(p) for p in figures.values())} files)")
    print(f"selected blocks: {describe_blocks(plan.blocks)} ({plan.describe()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
