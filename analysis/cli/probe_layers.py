"""`probe-layers`: measure negation layer by layer, pick the layers to fine-tune, write the evidence.

    probe-layers                                              (the embedded default model)
    probe-layers --model embedded:small --seeds 0,1 --n-train 400  (the smoke-test build, quick)
    probe-layers --model ViT-B-32-quickgelu --pretrained openai.pt --data negbench_retrieval.csv \
        --image-root val2017/ --rule topk --k 4 --out runs/clip-b32

Writes into the output folder: measurements.json (+ one CSV per table, saved after every phase of every
model, so that a late failure keeps what was measured), layer_plan.json (for `finetune-layers --plan`),
figures/ (PNG + PDF), report.md, report.json and provenance.json.

With --data, every measurement runs on the file: probes on its captions, edit sensitivity on its captions
and their negated versions, gradient norms and the causal check on its images (--image-root) and
captions, patching and heads on its caption pairs. Negated captions are the file's own where it has
them (CC-Neg, NegBench) and the rule-based generator's where it has none (COCO, NegBench's affirmative
files); the report says which data each number came from.

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
from analysis.cli.common import at_least, fraction, non_negative_int, positive_float, positive_int
from analysis.selection import RULES
from finetune.vocabulary import GRADNORM_LOSSES
from probing.vocabulary import LAYER_MEASUREMENTS, LOCALISATION_MEASUREMENTS, MEASUREMENTS, NEEDS_IMAGES

PROG = "probe-layers"
CAUSAL_MINIMUM = 100  # the causal check scores R@1 among 100 scenes


def build_parser() -> argparse.ArgumentParser:
    parser = common.CommandParser(PROG, __doc__)
    model = common.add_model_arguments(parser)
    model.add_argument("--null-models", type=non_negative_int, default=10,
                       help="null models: the model with its text tower randomly initialised again, one per seed; "
                            "every piece of evidence is its excess over them (fewer than 2: no evidence, no plan)")
    data = parser.add_argument_group("data")
    data.add_argument("--data", default="synthetic",
                      help="'synthetic', or a real data file that gives negation examples (CC-Neg .pt/.csv/.jsonl, "
                           "NegBench retrieval CSV, COCO captions or instances JSON): every measurement runs on it")
    data.add_argument("--data-kind", help="loader kind when it cannot be guessed from the file")
    data.add_argument("--image-root", type=Path, help="folder the data file's image paths resolve against (without "
                                                      "it, gradient norms and the causal check are skipped)")
    data.add_argument("--split", choices=("train", "eval", "all"), default="eval",
                      help="split of a CC-Neg file to probe (probing.data.ccneg)")
    data.add_argument("--max-examples", type=at_least(10), default=4000,
                      help="real data: negation examples used at most (a seeded draw), as the synthetic sizes are")
    data.add_argument("--train-cues", default="no,not", help="real data: negation cues the probes train on; "
                                                             "the other cues are the held-out split")
    data.add_argument("--per-image", type=positive_int, default=3,
                      help="real COCO / NegBench retrieval data: generated negation examples per image")
    data.add_argument("--n-train", type=at_least(20), default=2000, help="synthetic probe training captions")
    data.add_argument("--n-test", type=at_least(10), default=600, help="synthetic captions per test split")
    data.add_argument("--seed", type=int, default=0,
                      help="seed of data draws, of the synthetic world (non-embedded models) and of random weights")
    measure = parser.add_argument_group("measurements")
    measure.add_argument("--measurements", default=",".join(MEASUREMENTS),
                         help="comma list among " + ", ".join(MEASUREMENTS) + " (the last four say where negation is "
                              "computed: activation patching, heads, a joint-space lens, steering)")
    measure.add_argument("--patching-evidence", action="store_true",
                         help="also patch every null model and count each block's patching effect as evidence "
                              "(its weight: the 4th number of --score-weights)")
    measure.add_argument("--n-pairs", type=positive_int, default=64, help="patching pairs per kind (negation, scope)")
    measure.add_argument("--seeds", default="0,1,2,3,4", help="probe seeds on the model (comma list)")
    measure.add_argument("--null-seeds", default="0", help="probe seeds on each null model (comma list)")
    measure.add_argument("--batch-size", type=positive_int, default=256, help="captions per forward pass")
    measure.add_argument("--token-budget", type=positive_int,
                         help="captures in length-sorted batches of at most this many tokens (e.g. 1280): less "
                              "padding on real captions, probe numbers equal only to float rounding (default: "
                              "batches of --batch-size captions)")
    measure.add_argument("--memory-budget", type=positive_float, default=2.0,
                         help="GiB the captured features of one caption set may take in memory; larger captures "
                              "stream to memory-mapped files in $TMPDIR (deleted once mapped)")
    measure.add_argument("--n-sensitivity", type=at_least(2), default=400, help="captions edited for sensitivity")
    measure.add_argument("--n-causal", type=at_least(CAUSAL_MINIMUM), default=400,
                         help=f"scenes (real data: examples) in the causal check; at least {CAUSAL_MINIMUM}, as it "
                              "scores R@1 among 100")
    measure.add_argument("--grad-batches", type=positive_int, default=4, help="batches averaged for gradient norms")
    measure.add_argument("--grad-batch-size", type=at_least(2), default=64,
                         help="examples per gradient batch (contrastive losses need at least 2)")
    measure.add_argument("--losses", default=",".join(GRADNORM_LOSSES),
                         help="losses for the gradient norms, among " + ", ".join(GRADNORM_LOSSES))
    select = parser.add_argument_group("evidence and layer selection (analysis/evidence.py, analysis/selection.py)")
    select.add_argument("--rule", choices=RULES, default="window",
                        help="window: the shortest contiguous run holding --share of the evidence; prefix: the "
                             "shortest front prefix holding it; topk: the --k blocks with most evidence; auto_rgn: "
                             "blocks whose null-calibrated gradient-norm excess is >= --rgn-floor of the largest")
    select.add_argument("--share", type=fraction, default=0.8, help="window/prefix: share of the combined evidence")
    select.add_argument("--k", type=positive_int, default=4, help="topk: number of blocks at most")
    select.add_argument("--rgn-floor", type=fraction, default=0.1, help="auto_rgn: lowest lr weight that still trains")
    select.add_argument("--alpha", type=fraction, default=0.05,
                        help="family-wise error of each component's test over blocks")
    select.add_argument("--grad-loss", help="the loss whose gradient norms count (default: mean over --losses)")
    select.add_argument("--score-weights", default="0.5,0.25,0.25,0.25",
                        help="weights of probe, sensitivity, gradnorm (and patching) evidence in the combined score")
    select.add_argument("--sensitivity-edit", choices=("presence", "absence"), default="presence",
                        help="the negation edit whose excess over the control edit counts as sensitivity evidence")
    run = common.add_run_arguments(parser)
    run.add_argument("--out", type=Path, help="output folder (default: runs/probe-layers-<model>-<time>)")
    return parser


def check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Check and normalise the arguments before anything heavy is imported (errors exit 2)."""
    common.check_model_arguments(args, parser)
    args.measurement_list = common.names(args.measurements, MEASUREMENTS, "--measurements", parser)
    args.loss_list = common.names(args.losses, GRADNORM_LOSSES, "--losses", parser)
    args.seed_list = common.int_list(args.seeds, "--seeds", parser)
    args.null_seed_list = common.int_list(args.null_seeds, "--null-seeds", parser)
    args.weights = _score_weights(args.score_weights, parser)
    if "causal" in args.measurement_list and "probes" not in args.measurement_list:
        parser.error("causal projects out the probe direction: it needs probes in --measurements")
    if "heads" in args.measurement_list and "patching" not in args.measurement_list:
        parser.error("heads ranks heads by their patching effect: it needs patching in --measurements")
    if not set(args.measurement_list) & {"probes", "sensitivity", "gradnorms"}:
        parser.error("layer selection needs at least one of probes, sensitivity, gradnorms in --measurements")
    if args.rule == "auto_rgn" and "gradnorms" not in args.measurement_list:
        parser.error("--rule auto_rgn needs gradnorms in --measurements")
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
    common.retype(args.seed, common.seed, "--seed", parser)
    if args.out is None:
        args.out = Path("runs") / f"probe-layers-{_slug(model_label(args))}-{time.strftime('%Y%m%d-%H%M%S')}"
    common.check_output_folder(args.out, "--out", parser)
    return args


def _score_weights(text: str, parser) -> tuple[float, ...]:
    try:
        weights = tuple(float(x) for x in text.split(","))
    except ValueError:
        weights = ()
    if len(weights) not in (3, 4) or not all(0 <= w < float("inf") for w in weights) or sum(weights) <= 0:
        parser.error(f"--score-weights takes three or four non-negative numbers (probe,sensitivity,gradnorm"
                     f"[,patching]), got {text!r}")
    return weights + (0.25,) * (4 - len(weights))


def model_label(args) -> str:
    return Path(args.model).stem if args.model.endswith(".json") else args.model


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "model"


# --- the run ------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = check_args(parser.parse_args(argv), parser)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    args.prog = PROG  # provenance.json names the command, however it was started
    args.losses_given = any(flag == "--losses" or flag.startswith("--losses=") for flag in args.argv)
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
    bundle, null_models = load_models(args, notes)
    if real is None and bundle.world is None:
        raise common.UsageError(f"{bundle.world_note}; pass --data with a real data file")
    common.write_provenance(args.out, args, model=bundle, data={"--data": args.data},
                            image_roots={"--image-root": args.image_root})
    tasks = [real] if real is not None else synthetic_tasks(bundle.world, args)
    measurements = measure(bundle, null_models, tasks, args, notes)
    measurements.meta["model"] = bundle.info
    measurements.save(args.out)
    localisation = localise(bundle, args, notes)
    return select_and_report(measurements, bundle, args, notes, started, localisation)


def localise(bundle, args, notes: list[str]):
    """Patching, heads, lens and steering on the model (saved in <out>/localisation/), or None."""
    wanted = [m for m in args.measurement_list if m in LOCALISATION_MEASUREMENTS]
    examples = getattr(args, "real_examples", None)
    world = None if examples else bundle.world  # with --data, localisation runs on the file's captions only
    if world is None:
        skipped = [m for m in wanted if m in NEEDS_IMAGES]
        wanted = [m for m in wanted if m not in skipped]
        if skipped:
            notes.append(f"skipped {', '.join(skipped)}: they score held-out synthetic scenes")
    if not wanted or (world is None and not examples):
        return None
    from probing.measure.localise import LocaliseConfig, measure_localisation

    components = ("resid", "attn", "mlp", "head") if "heads" in wanted else ("resid", "attn", "mlp")
    common.say(args, f"localising: {', '.join(wanted)}")
    localisation = measure_localisation(
        bundle.model, bundle.preprocess, bundle.tokenizer, world=world, examples=examples,
        config=LocaliseConfig(measurements=tuple(wanted), components=components, n_pairs=args.n_pairs, seed=args.seed),
        progress=not args.no_progress)
    localisation.save(args.out / "localisation")
    return localisation


def load_models(args, notes: list[str]):
    """(the model's ModelBundle, its null models: name -> builder of that null model)."""
    from probing.clip.text_tower import TextTower
    from probing.measure.null import null_tower

    bundle = common.load_model(args, seed=args.seed)
    if bundle.metrics:  # the numbers its build recorded: the same on every machine (probing.clip.compact)
        m = bundle.metrics
        print(f"model {bundle.label} ({bundle.name}), held-out numbers recorded when it was built: zero-shot "
              f"{m['zero_shot_affirmative']:.3f}, R@1 among 100 {m['image_to_text_R@1_among_100']:.3f} / "
              f"{m['text_to_image_R@1_among_100']:.3f}, CC-Neg-style {m['ccneg_accuracy']:.3f}, scope "
              f"{m['scope_accuracy']:.3f} (chance 0.5)", flush=True)
    if bundle.world is None:
        notes.append(bundle.world_note)
        print(f"{PROG}: note: {bundle.world_note}", file=sys.stderr)
    if args.pretrained is None and not bundle.checkpoint:
        notes.append("the model has random weights (no --pretrained)")
    seeds = [args.seed * 1000 + 1 + k for k in range(args.null_models)]  # never the model's own init seed
    null_models = {f"null:{seed}": (lambda seed=seed: null_tower(bundle.model, bundle.name, seed)) for seed in seeds}
    bundle.info["n_layers"] = TextTower.from_model(bundle.model).n_layers
    return bundle, null_models


def synthetic_tasks(world, args) -> list:
    from probing.measure.tasks import synthetic_negation_task, synthetic_scope_task

    if world is None or "probes" not in args.measurement_list:
        return []
    return [synthetic_negation_task(world, n_train=args.n_train, n_test=args.n_test, seed=args.seed),
            synthetic_scope_task(world, n_train=args.n_train, n_test=args.n_test, seed=args.seed)]


def real_task(args, notes: list[str]):
    """The negation probing task from a real data file, and (args.real_data) the data the image-grounded
    measurements run on: its negation examples (probing.data.negations), checked against the arguments
    before any model loads."""
    from probing.data import DataError, load_negation_examples
    from probing.data.negations import describe_examples, describe_sentence
    from probing.measure.sources import RealData
    from probing.measure.tasks import real_negation_task

    try:
        records = load_negation_examples(args.data, kind=args.data_kind, image_root=args.image_root, strict=False,
                                         seed=args.seed, per_image=args.per_image, split=args.split)
    except DataError:
        raise
    except ValueError as error:  # e.g. an unknown --data-kind
        raise common.UsageError(f"--data {args.data}: {error}") from None
    if records.report.n_skipped:
        notes.append(f"{args.data}: skipped {records.report.n_skipped} unreadable rows "
                     f"({', '.join(f'{k} x{n}' for k, n in records.report.skip_reasons().most_common(3))})")
    if not records:
        raise common.UsageError(f"--data {args.data}: no negation examples ({records.report.summary()})")
    if not any(r.presence_negated or r.absence_negated for r in records):
        raise common.UsageError(f"--data {args.data}: no negated captions to probe (captions only?)")
    if len(records) > args.max_examples:
        import numpy as np

        keep = np.sort(np.random.default_rng([args.seed, 0xDA7A]).choice(len(records), args.max_examples,
                                                                          replace=False))
        notes.append(f"{args.data}: {args.max_examples} of {len(records)} negation examples used (--max-examples)")
        records = [records[i] for i in keep]
    try:
        task = real_negation_task(records, train_cues=args.train_cue_list, seed=args.seed)
    except ValueError as error:
        raise common.UsageError(f"--data {args.data}: {error}") from None
    if len(task.tests) == 1:
        notes.append(f"{args.data}: every caption uses the training cues {list(args.train_cue_list)}, "
                     "so there is no held-out cue split")
    args.real_examples = list(records)  # patching and head analysis run on the file's own captions too
    notes.append("data: " + describe_sentence(describe_examples(records, args.data)))
    try:
        args.real_data = RealData(records, source=str(args.data), with_images=args.image_root is not None)
    except ValueError as error:
        raise common.UsageError(f"--data {args.data}: {error}") from None
    check_real_data(args, args.real_data, notes)
    return task


def check_real_data(args, data, notes: list[str]) -> None:
    """What the measurements will ask of the file, checked before the model loads."""
    from finetune.losses import loss_spec

    if args.image_root is None:
        skipped = [m for m in ("gradnorms", "causal") if m in args.measurement_list]
        if skipped:
            notes.append(f"skipped {', '.join(skipped)}: --image-root not given, so the file's images cannot be read")
    if "sensitivity" in args.measurement_list and args.sensitivity_edit == "absence" and not data.has_absence:
        raise common.UsageError(f"--sensitivity-edit absence: {args.data} has no absence-negated captions for most "
                                "examples; use --sensitivity-edit presence")
    if "gradnorms" in args.measurement_list and args.image_root is not None:
        if args.grad_batch_size > len(data.examples):
            raise common.UsageError(f"--grad-batch-size {args.grad_batch_size} is more than the {len(data.examples)} "
                                    f"examples of {args.data}")
        lacking = [name for name in args.loss_list if "absence_negated" in loss_spec(name).texts
                   and not all(e.absence_negated for e in data.examples)]
        if lacking and args.losses_given:
            raise common.UsageError(f"--losses {', '.join(lacking)}: {args.data} has no absence-negated caption for "
                                    "every example (released CC-Neg has none)")
        if lacking:
            args.loss_list = tuple(name for name in args.loss_list if name not in lacking)
            notes.append(f"gradient norms without {', '.join(lacking)}: {args.data} has no absence-negated captions")
            if args.grad_loss in lacking:
                raise common.UsageError(f"--grad-loss {args.grad_loss} needs absence-negated captions, which "
                                        f"{args.data} does not have")


def measure(bundle, null_models, tasks, args, notes: list[str]):
    from finetune.losses import gradnorm_loss_fns
    from probing.measure.layers import MeasureConfig, measure_layers

    wanted = [m for m in args.measurement_list if m in LAYER_MEASUREMENTS]
    data = getattr(args, "real_data", None)
    if data is None and bundle.world is None:
        skipped = [m for m in wanted if m in NEEDS_IMAGES]
        if skipped:
            notes.append(f"skipped {', '.join(skipped)}: they need the synthetic world's images")
            print(f"{PROG}: note: skipping {', '.join(skipped)} (no synthetic world for this model)", file=sys.stderr)
            wanted = [m for m in wanted if m not in skipped]
    if data is not None and args.patching_evidence:
        notes.append("no patching evidence: it patches synthetic scope pairs, and --data replaces the synthetic world")
    config = MeasureConfig(seeds=args.seed_list, null_seeds=args.null_seed_list, measurements=tuple(wanted),
                           patching_evidence=args.patching_evidence and bundle.world is not None and data is None,
                           n_patching_pairs=min(args.n_pairs, 32),
                           n_sensitivity=args.n_sensitivity, n_causal=args.n_causal, grad_batches=args.grad_batches,
                           grad_batch_size=args.grad_batch_size, batch_size=args.batch_size, seed=args.seed,
                           token_budget=args.token_budget, memory_budget=int(args.memory_budget * 2**30),
                           feature_cache=not args.no_feature_cache, num_workers=common.image_workers(args))

    def save(measurements, phase: str) -> None:  # every phase is on disk as soon as it is measured
        measurements.meta["model"] = bundle.info
        measurements.save(args.out)

    common.say(args, f"measuring {', '.join(wanted)} on the model and {len(null_models)} null models")
    return measure_layers(bundle.model, bundle.preprocess, bundle.tokenizer, tasks,
                          world=bundle.world if data is None else None, data=data,
                          null_models=null_models, loss_fns=gradnorm_loss_fns(args.loss_list),
                          config=config, progress=not args.no_progress, on_phase=save)


def evidence_config(args):
    from analysis.evidence import EvidenceConfig

    w_probe, w_sensitivity, w_gradnorm, w_patching = args.weights
    return EvidenceConfig(sensitivity_edit=args.sensitivity_edit, alpha=args.alpha, seed=args.seed,
                          grad_losses=(args.grad_loss,) if args.grad_loss else None,
                          weights={"probe": w_probe, "sensitivity": w_sensitivity, "gradnorm": w_gradnorm,
                                   "patching": w_patching})


def select_and_report(measurements, bundle, args, notes: list[str], started: float, localisation=None) -> int:
    """Null-calibrated evidence, the plan (possibly empty: no evidence), figures and report. Exit 1 when
    the evidence supports no plan (the plan file then names no blocks and says why)."""
    from analysis.evidence import block_evidence
    from analysis.report.figures import plot_all
    from analysis.report.report import write_report
    from analysis.selection import SelectionConfig, SelectionError, describe_blocks, select_layers

    common.say(args, f"testing the evidence against {len(measurements.null_models)} null models")
    evidence = block_evidence(measurements, evidence_config(args))
    try:
        selection = select_layers(evidence, SelectionConfig(rule=args.rule, share=args.share, k=args.k,
                                                            rgn_floor=args.rgn_floor))
    except SelectionError as error:
        raise common.Unsupported(f"no layer plan: {error} (measurements saved in {args.out})") from None
    plan = selection.plan
    plan.validate(measurements.n_layers)
    plan_path = plan.save(args.out / "layer_plan.json")
    common.say(args, "drawing figures")
    figures = plot_all(measurements, selection, args.out / "figures")
    extra = []
    if localisation is not None:
        from analysis.report.localisation import localisation_sentences, plot_localisation

        figures.update(plot_localisation(localisation, args.out / "figures"))
        extra = localisation_sentences(localisation)
    run_info = {"arguments": {k: v for k, v in vars(args).items()}, "seconds": time.perf_counter() - started,
                "notes": notes}
    paths = write_report(args.out, measurements, selection, figures=figures, model_info=bundle.info,
                         embedded_metrics=bundle.metrics, run_info=run_info, extra_sentences=extra)
    print(f"wrote {args.out}/: {paths['markdown'].name}, {paths['json'].name}, {plan_path.name}, measurements.json "
          f"(+ CSV tables, items.npz), figures/ ({sum(len(p) for p in figures.values())} files)")
    if not plan.blocks:
        print(f"selected blocks: none: {selection.decision.reason}")
        return common.EXIT_UNSUPPORTED
    print(f"selected blocks: {describe_blocks(plan.blocks)} ({plan.describe()}); chosen in "
          f"{selection.agreement:.0%} of bootstrap replicates")
    return 0


if __name__ == "__main__":
    sys.exit(main())
