"""`probe-layers`: measure negation layer by layer, pick the layers to fine-tune, write the evidence.

    probe-layers                                              (the embedded default model)
    probe-layers --model embedded:small --probe-seeds 0,1 --probe-train 400     (the smoke-test build, quick)
    probe-layers --model ViT-B-32-quickgelu --pretrained openai.pt --data negbench_retrieval.csv \
        --image-root val2017/ --rule topk --k 4 --out runs/clip-b32
    probe-layers --config runs/clip-b32/config.json --out runs/again      (the same run again, exactly)

Writes into the output folder: config.json (re-run it with --config), measurements.json (+ one CSV per table,
saved after every phase of every model, so that a late failure keeps what was measured), measurements_long.csv
(every per-layer number, one row each), layer_plan.json (for `finetune-layers --plan`), figures/ (PNG + PDF),
report.md, report.json and provenance.json.

With --data, every measurement runs on the file (or files: --data may be given more than once, a benchmark mix):
each kind gives what it honestly can (probing.data.benchmarks, docs/DATA.md). NegBench MCQ: probes on every option
(negated or not; hybrid options also give a scope task), sensitivity and gradient norms on the rows whose correct
answer is affirmative, the causal check on MCQ accuracy by template. VALSE existence: probes on caption / foil,
the causal check on caption-vs-foil accuracy. CC-Neg, NegBench retrieval, COCO: their negation examples (the
rule-based generator's where the file has no negated captions). SugarCREPE and NegRefCOCOg are not negation
probing data: alone they stop with the reason, in a mix the report says they gave nothing. Probe test splits
hold out images (no image is on both sides), and objects, templates and cues where the file names them.
Gradient norms, the causal check and patching read images (--image-root): a row whose image is missing stops
the run, or with --skip-missing is skipped and counted; the report says which measurement used how many rows
of each file.

This module only turns flags into an analysis.pipeline.ProbeConfig and calls analysis.pipeline.run; torch and
the measurement code are imported after the arguments are checked, so `--help` is instant. Exit status as
every command's (analysis.cli.execution): 2 for a wrong argument, a broken data file or a model that cannot
load (one line); 1 when the measurements cannot support the rule (they are saved first).
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import time
from pathlib import Path

from analysis.cli import arguments as a
from analysis.cli.execution import EXIT_UNSUPPORTED, run, say
from analysis.planning.selection import RULES, SelectionConfig
from analysis.planning.settings import EvidenceConfig
from analysis.probe_config import (
    CAUSAL_MINIMUM,
    MINIMUM,
    NULL_MODELS_ONE,
    ConfigError,
    DataSpec,
    ModelSpec,
    ProbeConfig,
)
from analysis.runtime import apply_threads
from finetune.vocabulary import GRADNORM_LOSSES
from probing.measure.settings import LocaliseConfig, MeasureConfig
from probing.vocabulary import LAYER_MEASUREMENTS, LOCALISATION_MEASUREMENTS, MEASUREMENTS

PROG = "probe-layers"
RUN_LEVEL = ("out", "threads", "workers", "no_progress", "no_feature_cache", "config")  # allowed beside --config


def build_parser() -> argparse.ArgumentParser:
    parser = a.CommandParser(PROG, __doc__)
    parser.add_argument("--config", type=Path, help="re-run the run a config.json describes (only --out, --threads, "
                                                    "--workers and --no-progress may be given beside it)")
    model = a.add_model_arguments(parser)
    model.add_argument("--null-models", type=_null_models, default=10,
                       help="null models: the model with its text tower randomly initialised again, one per seed; "
                            "every piece of evidence is its excess over them (0: measurements only, no evidence and "
                            "no plan; 1 is refused: the test needs at least 2)")
    data = parser.add_argument_group("data")
    a.add_data_files(data, uses="every measurement runs on what it gives", default="the model's synthetic world")
    data.add_argument("--image-root", type=Path, help="folder the data file's image paths resolve against (without "
                                                      "it, gradient norms, the causal check and patching are skipped)")
    data.add_argument("--skip-missing", action="store_true",
                      help="skip rows whose image is missing under --image-root in the image measurements, and count "
                           "them (default: stop at the first)")
    data.add_argument("--split", choices=("train", "eval", "all"), default="eval",
                      help="split of a CC-Neg file to probe (probing.data.ccneg)")
    limit = data.add_argument("--limit", type=a.at_least(MINIMUM["data.limit"]), default=4000,
                              help="real data: rows (examples, items) used at most per file (a seeded draw)")
    a.add_train_cues(data)
    data.add_argument("--per-image", type=a.at_least(MINIMUM["data.per_image"]), default=3,
                      help="real COCO / NegBench retrieval data: generated negation examples per image")
    probe_train = data.add_argument("--probe-train", type=a.at_least(MINIMUM["data.n_train"]), default=2000,
                                    help="synthetic probe training captions")
    probe_test = data.add_argument("--probe-test", type=a.at_least(MINIMUM["data.n_test"]), default=600,
                                   help="synthetic probe captions per test split")
    data.add_argument("--seed", type=a.seed, default=0,
                      help="seed of data draws, of the synthetic world (non-embedded models) and of random weights")
    measure = parser.add_argument_group("measurements")
    measure.add_argument("--measurements", default=",".join(MEASUREMENTS),
                         help="comma list among " + ", ".join(MEASUREMENTS) + " (the last four say where negation is "
                              "computed: activation patching, heads, a joint-space lens, steering)")
    measure.add_argument("--patching-evidence", action="store_true",
                         help="also patch every null model and count each block's patching effect as evidence "
                              "(its weight: the 4th number of --score-weights)")
    pairs = measure.add_argument("--patching-pairs", type=a.at_least(MINIMUM["localise.n_pairs"]), default=64,
                                 help="localisation: caption pairs per kind (negation, scope)")
    seeds = measure.add_argument("--probe-seeds", default="0,1,2,3,4", help="probe seeds on the model (comma list)")
    null_seeds = measure.add_argument("--null-probe-seeds", default="0", help="probe seeds on each null model")
    measure.add_argument("--batch-size", type=a.at_least(MINIMUM["measure.batch_size"]), default=256,
                         help="captions per forward pass")
    measure.add_argument("--token-budget", type=a.at_least(MINIMUM["measure.token_budget"]),
                         help="captures in length-sorted batches of at most this many tokens (e.g. 1280): less "
                              "padding on real captions, probe numbers equal only to float rounding (default: "
                              "batches of --batch-size captions)")
    measure.add_argument("--memory-budget", type=a.positive_float, default=2.0,
                         help="GiB the captured features of one caption set may take in memory; larger captures "
                              "stream to memory-mapped files in $TMPDIR (deleted once mapped)")
    sensitivity = measure.add_argument("--sensitivity-captions", default=400, help="captions edited for sensitivity",
                                       type=a.at_least(MINIMUM["measure.n_sensitivity"]))
    causal = measure.add_argument("--causal-items", type=a.at_least(MINIMUM["measure.n_causal"]), default=400,
                                  help=f"scenes (real data: examples) in the causal check; at least {CAUSAL_MINIMUM}, "
                                       "as it scores R@1 among 100")
    measure.add_argument("--grad-batches", type=a.at_least(MINIMUM["measure.grad_batches"]), default=4,
                         help="batches averaged for gradient norms")
    measure.add_argument("--grad-batch-size", type=a.at_least(MINIMUM["measure.grad_batch_size"]), default=64,
                         help="examples per gradient batch (contrastive losses need at least 2)")
    measure.add_argument("--losses", default=",".join(GRADNORM_LOSSES),
                         help="losses for the gradient norms, among " + ", ".join(GRADNORM_LOSSES))
    measure.add_argument("--save-activations", action="store_true",
                         help="also write the captured EOT states of every probe caption as <out>/activations/"
                              "<task>.safetensors keyed by hook name, with a manifest.json")
    select = parser.add_argument_group("evidence and layer selection (analysis/planning/evidence.py, selection.py)")
    select.add_argument("--rule", choices=RULES, default="lead",
                        help="lead: one block, the first that the window rule's run holds in at least --consensus "
                             "of the bootstrap replicates (the selector study's size procedure, docs/VALIDATION.md); "
                             "window: the shortest contiguous run holding --share of the evidence; prefix: the "
                             "shortest front prefix holding it; topk: the --k blocks with most evidence; auto_rgn: "
                             "blocks whose null-calibrated gradient-norm excess is >= --rgn-floor of the largest")
    select.add_argument("--share", type=a.fraction, default=0.8,
                        help="window/prefix/lead: share of the combined evidence the run must hold")
    select.add_argument("--consensus", type=a.fraction, default=0.5,
                        help="lead: share of the bootstrap replicates whose run must hold the block")
    select.add_argument("--k", type=a.positive_int, default=4, help="topk: number of blocks at most")
    select.add_argument("--rgn-floor", type=a.fraction, default=0.1,
                        help="auto_rgn: lowest lr weight that still trains")
    select.add_argument("--alpha", type=a.fraction, default=0.05,
                        help="family-wise error of each component's test over blocks")
    select.add_argument("--grad-loss", help="the loss whose gradient norms count (default: mean over --losses)")
    select.add_argument("--score-weights", default="0.5,0.25,0.25,0.25",
                        help="weights of probe, sensitivity, gradnorm (and patching) evidence in the combined score")
    select.add_argument("--sensitivity-edit", choices=("presence", "absence"), default="presence",
                        help="the negation edit whose excess over the control edit counts as sensitivity evidence")
    a.add_run_arguments(parser).add_argument("--out", type=Path,
                                             help="output folder (default: runs/probe-layers-<model>-<time>)")
    for old, new in (("--max-examples", limit), ("--n-train", probe_train), ("--n-test", probe_test),
                     ("--seeds", seeds), ("--null-seeds", null_seeds), ("--n-sensitivity", sensitivity),
                     ("--n-causal", causal), ("--n-pairs", pairs)):
        a.renamed(parser, old, new)
    return parser


def check_args(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """The run's typed configuration (analysis.probe_config.ProbeConfig), from the flags or from --config, every
    flag checked once, before anything heavy is imported (errors exit 2)."""
    if args.config is not None:
        given = sorted(args.typed.difference(RUN_LEVEL))
        if given:
            parser.error(f"--config re-runs a saved run exactly: drop --{given[0].replace('_', '-')} (only --out, "
                         "--threads, --workers and --no-progress go with it)")
        if not args.config.is_file():
            parser.error(f"--config {args.config}: no such file")
        try:
            config = ProbeConfig.load(args.config)
        except ConfigError as error:
            parser.error(str(error))
        config.threads = args.threads or config.threads
        config.measure = dataclasses.replace(config.measure, feature_cache=not args.no_feature_cache,
                                             num_workers=a.image_workers(args.workers, config.threads))
        label = "config"
    else:
        config, label = make_config(args, parser), args.model
    if args.out is None:
        label = Path(label).stem if label.endswith(".json") else label
        args.out = Path("runs") / f"probe-layers-{_slug(label)}-{time.strftime('%Y%m%d-%H%M%S')}"
    a.check_output_folder(args.out, "--out", parser)
    return config


def _null_models(text: str) -> int:
    count = a.at_least(MINIMUM["null_models"])(text)
    if count == 1:
        raise argparse.ArgumentTypeError(NULL_MODELS_ONE.removeprefix("null_models "))
    return count


def _score_weights(text: str, parser) -> dict[str, float]:
    try:
        weights = tuple(float(x) for x in text.split(","))
    except ValueError:
        weights = ()
    if len(weights) not in (3, 4) or not all(0 <= w < float("inf") for w in weights) or sum(weights) <= 0:
        parser.error(f"--score-weights takes three or four non-negative numbers (probe,sensitivity,gradnorm"
                     f"[,patching]), got {text!r}")
    weights = weights + (0.25,) * (4 - len(weights))
    return dict(zip(("probe", "sensitivity", "gradnorm", "patching"), weights))


def _cues(text: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in text.split(",") if c.strip())


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "model"


def make_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> ProbeConfig:
    """The ProbeConfig of the flags; any inconsistency is an argument error."""
    a.check_model_arguments(args, parser)
    measurements = a.names(args.measurements, MEASUREMENTS, "--measurements", parser)
    if "causal" in measurements and "probes" not in measurements:
        parser.error("causal projects out the probe direction: it needs probes in --measurements")
    if "heads" in measurements and "patching" not in measurements:
        parser.error("heads ranks heads by their patching effect: it needs patching in --measurements")
    if not set(measurements) & {"probes", "sensitivity", "gradnorms"}:
        parser.error("layer selection needs at least one of probes, sensitivity, gradnorms in --measurements")
    if args.rule == "auto_rgn" and "gradnorms" not in measurements:
        parser.error("--rule auto_rgn needs gradnorms in --measurements")
    losses = a.names(args.losses, GRADNORM_LOSSES, "--losses", parser)
    if args.grad_loss is not None and args.grad_loss not in losses:
        parser.error(f"--grad-loss {args.grad_loss!r} is not among --losses ({', '.join(losses)})")
    files = a.data_files(args.data, parser)
    train_cues = a.names(args.train_cues, None, "--train-cues", parser)
    if args.skip_missing and args.image_root is None:
        parser.error("--skip-missing skips rows whose image is missing under --image-root: give --image-root")
    if args.image_root is not None and not args.image_root.is_dir():
        parser.error(f"--image-root {args.image_root} is not a folder")
    localise = tuple(m for m in measurements if m in LOCALISATION_MEASUREMENTS)
    return ProbeConfig(
        model=ModelSpec(args.model, args.pretrained, args.device),
        data=DataSpec(file=files[0] if len(files) == 1 else None, files=tuple(files) if len(files) > 1 else (),
                      kind=args.data_kind, image_root=None if args.image_root is None else str(args.image_root),
                      split=args.split, limit=args.limit, train_cues=train_cues, per_image=args.per_image,
                      n_train=args.probe_train, n_test=args.probe_test, skip_missing=args.skip_missing),
        seed=args.seed, null_models=args.null_models, losses=losses, losses_given=args.losses != parser.get_default(
            "losses"),
        measure=MeasureConfig(
            seeds=a.int_list(args.probe_seeds, "--probe-seeds", parser),
            null_seeds=a.int_list(args.null_probe_seeds, "--null-probe-seeds", parser),
            measurements=tuple(m for m in measurements if m in LAYER_MEASUREMENTS),
            patching_evidence=args.patching_evidence, n_patching_pairs=min(args.patching_pairs, 32),
            n_sensitivity=args.sensitivity_captions, n_causal=args.causal_items, grad_batches=args.grad_batches,
            grad_batch_size=args.grad_batch_size, batch_size=args.batch_size, seed=args.seed,
            token_budget=args.token_budget, memory_budget=int(args.memory_budget * 2**30),
            feature_cache=not args.no_feature_cache, num_workers=a.image_workers(args.workers, args.threads)),
        evidence=EvidenceConfig(sensitivity_edit=args.sensitivity_edit, alpha=args.alpha, seed=args.seed,
                                grad_losses=(args.grad_loss,) if args.grad_loss else None,
                                weights=_score_weights(args.score_weights, parser)),
        selection=SelectionConfig(rule=args.rule, share=args.share, consensus=args.consensus, k=args.k,
                                  rgn_floor=args.rgn_floor),
        localise=LocaliseConfig(measurements=localise, n_pairs=args.patching_pairs, seed=args.seed,
                                components=("resid", "attn", "mlp", "head") if "heads" in localise
                                else ("resid", "attn", "mlp")),
        threads=args.threads, save_activations=args.save_activations)


# --- the run ------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = check_args(args, parser)
    command = [PROG, *(sys.argv[1:] if argv is None else argv)]  # provenance.json names the command
    return run(PROG, lambda: probe(config, args.out, command, quiet=args.no_progress))


def probe(config: ProbeConfig, out: Path, command: list[str], *, quiet: bool = False) -> int:
    """Measure, select, localise and report (analysis.pipeline.run); print where everything went."""
    # the pipeline loads torch and the measurement code: imported only now, so that --help and argument errors
    # stay instant
    from analysis.pipeline import run as run_pipeline
    from analysis.planning.selection import SelectionError, describe_blocks
    from analysis.provenance import data_options, write_provenance

    apply_threads(config.threads)

    def announce(subject) -> None:
        metrics = subject.bundle.metrics
        if metrics:  # the numbers its build recorded: the same on every machine (probing.clip.compact)
            print(f"model {subject.bundle.label} ({subject.bundle.name}), held-out numbers recorded when it was built: "
                  f"zero-shot {metrics['zero_shot_affirmative']:.3f}, R@1 among 100 "
                  f"{metrics['image_to_text_R@1_among_100']:.3f} / {metrics['text_to_image_R@1_among_100']:.3f}, "
                  f"CC-Neg-style {metrics['ccneg_accuracy']:.3f}, scope {metrics['scope_accuracy']:.3f} (chance 0.5)",
                  flush=True)
        for note in subject.notes:
            print(f"{PROG}: note: {note}", file=sys.stderr)
        write_provenance(out, command, model=subject.bundle, data=data_options(config.data.paths),
                         image_roots={"--image-root": config.data.image_root})

    try:
        result = run_pipeline(config, out, log=lambda message: say(message, quiet=quiet), progress=not quiet,
                              before_measuring=announce)
    except SelectionError as error:
        raise SelectionError(f"no layer plan: {error} (measurements saved in {out})") from None
    plan = result.selection.plan
    figures = sorted(p for p in (out / "figures").glob("*") if p.is_file())
    print(f"wrote {out}/: report.md, report.json, layer_plan.json, config.json, measurements.json (+ CSV tables, "
          f"measurements_long.csv, items.npz), figures/ ({len(figures)} files)")
    if not plan.blocks:
        print(f"selected blocks: none: {result.selection.decision.reason}")
        return EXIT_UNSUPPORTED
    held = "held by the run of" if result.selection.decision.rule == "lead" else "chosen in"
    print(f"selected blocks: {describe_blocks(plan.blocks)} ({plan.describe()}); {held} "
          f"{result.selection.agreement:.0%} of bootstrap replicates")
    return 0


if __name__ == "__main__":
    sys.exit(main())
