"""`compare-checkpoints`: where did a fine-tune change CLIP's text tower? Base against tuned, block by block.

    compare-checkpoints embedded:default run/model.safetensors            (a finetune-layers output)
    compare-checkpoints openai.pt conclip.pt negationclip.pt --model ViT-B-32-quickgelu \
        --names CoN-CLIP,NegationCLIP --out runs/compare-b32
    compare-checkpoints clip-vit-base-patch32/ negclip-hf/ --data negbench_retrieval.csv --out runs/hf

BASE and each TUNED are model specs: 'embedded' or 'embedded:<name>'; a Hugging Face CLIPModel folder; a
checkpoint file (.pt/.pth/.bin/.safetensors, OpenAI, open_clip or this toolkit's format, delta checkpoints
included) loaded with the architecture --model names (default: the one the file records, else BASE's); or
an open_clip pretrained tag of --model (needs internet).

Reported, per text block and sub-module (attention, MLP, LayerNorms) and outside the blocks (token and
positional embeddings, final LayerNorm, text projection, logit scale; the image tower as one part): the
relative weight change ||W_tuned - W_base|| / ||W_base||; the change in what the tower computes on captions
(linear CKA between base and tuned EOT states per layer, and their mean cosine, for affirmative and negated
captions separately, with bootstrap intervals over captions); and per-layer probe accuracies of every model
on the same held-out splits (the synthetic world's negation and scope tasks, or --data FILE's captions as in
probe-layers), with the paired difference tuned - base and its bootstrap interval over test items.

Writes into --out: comparison.json (every number; its "block_change" feeds
analysis.compare.plan_from_comparison), blocks.csv/.md, weights.csv, tensors.csv, states.csv, probes.csv,
probe_differences.csv, figures/ (comparison and probes, PNG + PDF), report.md, provenance.json. A tuned
model whose text tower is bitwise the base's is reported as "no weight differs"; one whose text tower has
other shapes gets a statement naming the tensor (exit 2 when no tuned model can be compared).
docs/COMPARE.md explains how to read the outputs.

Exit status as every command's (analysis.cli.execution): 2 with one line for a missing or unreadable file, a
checkpoint that does not fit the architecture, a state dict that is not CLIP's, or bad arguments.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from analysis.cli import arguments as a
from analysis.cli.arguments import at_least, fraction, non_negative_int, positive_int
from analysis.cli.execution import UsageError, run, say
from analysis.runtime import apply_threads

PROG = "compare-checkpoints"
PARTS = ("weights", "states", "probes")  # analysis.compare.result.PARTS (not imported: it needs pandas)
PROBE_NAMES = ("logistic", "diffmeans")  # probing.measure.probes.PROBES
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def build_parser() -> argparse.ArgumentParser:
    parser = a.CommandParser(PROG, __doc__)
    parser.add_argument("base", metavar="BASE", help="the base model spec (see above)")
    parser.add_argument("tuned", metavar="TUNED", nargs="+", help="one or more fine-tuned model specs")
    model = parser.add_argument_group("model")
    model.add_argument("--model", help="architecture of checkpoint files given as BASE / TUNED: an open_clip model "
                                       "name (e.g. ViT-B-32-quickgelu for OpenAI-format weights) or config JSON "
                                       "(default: the architecture a file records, else BASE's)")
    model.add_argument("--names", help="comma list of names for the tuned models in tables and figures "
                                       "(default: their labels)")
    model.add_argument("--device", type=a.device_name, default="auto", help="auto, cpu, cuda or cuda:N")
    data = parser.add_argument_group("data (states and probes)")
    a.add_data_files(data, uses="the base and the tuned models are probed on its negation task and, where its captions "
                                "give one, its scope task, built as probe-layers builds them",
                     default="the base's synthetic world, its negation and scope tasks")
    data.add_argument("--split", choices=("train", "eval", "all"), default="eval", help="split of a CC-Neg file")
    limit = data.add_argument("--limit", type=at_least(10), default=4000,
                      help="real data: rows (examples, items) used at most per file (a seeded draw)")
    a.add_train_cues(data)
    data.add_argument("--per-image", type=positive_int, default=3,
                      help="real COCO / NegBench retrieval data: generated negation examples per image")
    probe_train = data.add_argument("--probe-train", type=at_least(20), default=2000,
                                    help="synthetic probe training captions")
    probe_test = data.add_argument("--probe-test", type=at_least(10), default=600,
                                   help="synthetic probe captions per test split")
    data.add_argument("--seed", type=a.seed, default=0, help="seed of data draws and bootstraps")
    measure = parser.add_argument_group("what to compare")
    measure.add_argument("--parts", default=",".join(PARTS),
                         help="comma list among " + ", ".join(PARTS) + " (weights alone needs no captions)")
    measure.add_argument("--n-states", type=at_least(3), default=500,
                         help="captions per group (affirmative, negated) for CKA and cosine (a seeded draw)")
    measure.add_argument("--n-boot", type=non_negative_int, default=200,
                         help="bootstrap resamples of captions for CKA and cosine intervals (0: no intervals)")
    measure.add_argument("--probe-boot", type=positive_int, default=1000,
                         help="bootstrap resamples of test items for the paired probe differences")
    seeds = measure.add_argument("--probe-seeds", default="0,1,2", help="probe seeds (comma list)")
    measure.add_argument("--probes", default="logistic", help="comma list among " + ", ".join(PROBE_NAMES)
                                                              + " (the first is the one the sentences speak of)")
    measure.add_argument("--share", type=fraction, default=0.8,
                         help="the report names the smallest set of blocks holding this share of the summed "
                              "relative weight change")
    measure.add_argument("--decodable", type=fraction, default=0.9,
                         help="the report names the first layer whose probe accuracy reaches this")
    measure.add_argument("--confidence", type=a.open_fraction, default=0.95, help="level of every interval, in (0, 1)")
    measure.add_argument("--batch-size", type=positive_int, default=256, help="captions per forward pass")
    run = a.add_run_arguments(parser, images=False)
    run.add_argument("--no-figures", action="store_true", help="tables and report only")
    run.add_argument("--out", type=Path, help="output folder (default: runs/compare-<time>)")
    for old, new in (("--max-examples", limit), ("--n-train", probe_train), ("--n-test", probe_test),
                     ("--seeds", seeds)):
        a.renamed(parser, old, new)
    return parser


def check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Check and normalise the arguments before anything heavy is imported (errors exit 2)."""
    from probing.models.embedded import embedded_model, is_embedded

    for spec in (args.base, *args.tuned):
        if is_embedded(spec):
            try:
                embedded_model(spec)
            except ValueError as error:
                parser.error(str(error))
        elif _looks_like_path(spec) and not Path(spec).exists():
            parser.error(f"{spec}: no such file or folder")
    if args.model is not None and is_embedded(args.model):
        parser.error("--model names an architecture for checkpoint files; give an embedded model as BASE or TUNED")
    args.part_list = a.names(args.parts, PARTS, "--parts", parser)
    args.probe_list = a.names(args.probes, PROBE_NAMES, "--probes", parser)
    args.seed_list = a.int_list(args.probe_seeds, "--probe-seeds", parser)
    args.name_list = None
    if args.names is not None:
        args.name_list = list(a.names(args.names, None, "--names", parser))
        if len(args.name_list) != len(args.tuned):
            parser.error(f"--names gives {len(args.name_list)} names for {len(args.tuned)} tuned models "
                         "(one non-empty name each, comma-separated)")
    args.train_cue_list = a.names(args.train_cues, None, "--train-cues", parser)
    args.files = a.data_files(args.data, parser)
    if args.out is None:
        args.out = Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    a.check_output_folder(args.out, "--out", parser)
    return args


def _looks_like_path(spec: str) -> bool:
    return "/" in spec or "\\" in spec or Path(spec).suffix.lower() in (*CHECKPOINT_SUFFIXES, ".json")


# --- loading ------------------------------------------------------------------------------------

def recorded_architecture(path: Path) -> str | None:
    """The open_clip architecture a .safetensors checkpoint of this toolkit records, or None."""
    from probing.clip.loading import checkpoint_metadata

    if path.suffix != ".safetensors":
        return None
    return checkpoint_metadata(path).get("open_clip_model") or None


def load_spec(spec: str, args: argparse.Namespace, fallback: str | None, role: str):
    """The ModelBundle of one model spec (module docstring). fallback: the architecture of a checkpoint file
    when neither --model nor the file names one (BASE's, for a TUNED file)."""
    from probing.clip import huggingface
    from probing.clip.loading import ModelLoadError
    from probing.models.embedded import is_embedded
    from probing.models.factory import create_model

    device = args.device
    if is_embedded(spec):
        return create_model(spec, device=device, seed=args.seed)
    path = Path(spec)
    if path.is_dir() or huggingface.config_of_name(spec) is not None:
        return create_model(spec, device=device, seed=args.seed)
    if path.is_file():
        architecture = args.model or recorded_architecture(path) or fallback
        if architecture is None:
            raise UsageError(f"{role} {spec}: a checkpoint file needs --model for its architecture (e.g. "
                                    "--model ViT-B-32-quickgelu for OpenAI-format ViT-B/32 weights)")
        try:
            return create_model(architecture, path, device=device, seed=args.seed)
        except ModelLoadError:
            problem = not_clip_problem(path)
            if problem:
                raise ModelLoadError(problem) from None
            raise
    if _looks_like_path(spec):
        raise UsageError(f"{role} {spec}: no such file or folder")
    architecture = args.model or fallback
    if architecture is None:
        raise UsageError(f"{role} {spec!r} is neither an embedded model, a folder nor a file; as an open_clip "
                                "pretrained tag it needs --model")
    return create_model(architecture, spec, device=device, seed=args.seed)


CLIP_PREFIXES = ("transformer.", "visual.", "token_embedding.", "positional_embedding", "ln_final.", "text_projection",
                 "logit_scale", "text.", "text_model.", "vision_model.", "module.")


def not_clip_problem(path: Path) -> str | None:
    """For a file that failed to load: "does not hold a CLIP state dict" when it reads as a state dict of which
    no tensor has a CLIP name (open_clip's, OpenAI's or transformers'), else None (the loader's error stands)."""
    from probing.clip.loading import ModelLoadError, read_checkpoint

    try:
        names = list(read_checkpoint(path).state_dict)
    except ModelLoadError:
        return None
    if not names or any(name.startswith(CLIP_PREFIXES) for name in names):
        return None
    return (f"checkpoint file {path} does not hold a CLIP state dict: none of its {len(names)} tensors "
            f"({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}) is a CLIP text or image tower tensor")


# --- the run ------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = check_args(parser.parse_args(argv), parser)
    command = [PROG, *(sys.argv[1:] if argv is None else argv)]
    return run(PROG, lambda: compare_and_report(args, command))


def compare_and_report(args: argparse.Namespace, command: list[str]) -> int:
    from analysis.provenance import data_options, file_sha256, write_provenance

    apply_threads(args.threads)
    started = time.perf_counter()
    tasks = None
    wants_data = bool({"states", "probes"} & set(args.part_list))
    if args.files and wants_data:  # a broken data file fails before any model loads
        say(quiet=args.no_progress, message=f"reading {', '.join(args.files)}")
        tasks = real_tasks(args)
    say(quiet=args.no_progress, message=f"loading {args.base}")
    base = load_spec(args.base, args, None, "BASE")
    tuned = {}
    for k, spec in enumerate(args.tuned):
        say(quiet=args.no_progress, message=f"loading {spec}")
        bundle = load_spec(spec, args, base.name, "TUNED")
        name = args.name_list[k] if args.name_list else _default_name(spec, bundle, tuned, base)
        tuned[name] = bundle
    check_comparable(base, tuned, args)
    if tasks is None and wants_data and base.world is None:
        raise UsageError(f"BASE {args.base}: {base.world_note}; pass --data with a real data file, or "
                                "--parts weights")
    from analysis.compare.core import compare_checkpoints
    from analysis.compare.report import write_outputs
    from analysis.compare.result import CompareConfig

    config = CompareConfig(parts=args.part_list, share=args.share, n_states=args.n_states, n_boot=args.n_boot,
                           probe_boot=args.probe_boot, confidence=args.confidence, seeds=args.seed_list,
                           probes=args.probe_list, n_train=args.probe_train, n_test=args.probe_test,
                           decodable=args.decodable, batch_size=args.batch_size, seed=args.seed)
    comparison = compare_checkpoints(base, tuned, tasks, config=config, progress=not args.no_progress,
                                     say=lambda message: say(message, quiet=args.no_progress))
    write_provenance(args.out, command, model=base, data=data_options(args.files),
                     extra={"tuned_models": {name: _provenance(bundle, file_sha256) for name, bundle in tuned.items()}})
    paths = write_outputs(comparison, args.out, figures=not args.no_figures,
                          extra={"run": {"seconds": time.perf_counter() - started,
                                         "specs": {"base": args.base, "tuned": dict(zip(tuned, args.tuned))}}})
    for sentence in comparison.sentences:
        print(f"- {sentence}")
    for note in comparison.notes:
        print(f"{PROG}: note: {note}", file=sys.stderr)
    print(f"wrote {args.out}/: {', '.join(sorted(p.name for k, p in paths.items() if not k.startswith('figure:')))}"
          f"{', figures/' if any(k.startswith('figure:') for k in paths) else ''}, provenance.json")
    return 0


def check_comparable(base, tuned: dict, args: argparse.Namespace) -> None:
    """Before any measurement: a UsageError naming the first tuned model when no tuned model's text tower has
    the base's shapes (a tower that cannot be read counts as another shape); with some comparable, the others
    get their statement in the report."""
    from analysis.compare.weights import shape_problem
    from probing.clip.text_tower import TextTower, UnsupportedTextTower

    try:
        TextTower.from_model(base.model)
    except UnsupportedTextTower as error:
        raise UsageError(f"BASE {args.base}: its text tower cannot be compared: {error}") from None
    problems = {}
    for name, bundle in tuned.items():
        try:
            problems[name] = shape_problem(base.model, bundle.model)
        except UnsupportedTextTower as error:
            problems[name] = f"its text tower cannot be read: {error}"
    if all(problems.values()):
        name = next(iter(problems))
        raise UsageError(f"TUNED {_spec_of(name, tuned, args)}: {problems[name]}; nothing to compare with BASE")


def _default_name(spec: str, bundle, taken: dict, base) -> str:
    """A tuned model's name: its label, or the file's name when that is shorter and unique."""
    path = Path(spec)
    name = path.stem if path.is_file() else (path.name if path.is_dir() else str(bundle.label))
    if name in taken or name == base.label:
        name = str(bundle.label) if str(bundle.label) not in taken and bundle.label != base.label else spec
    return name


def _spec_of(name: str, tuned: dict, args) -> str:
    return dict(zip(tuned, args.tuned)).get(name, name)


def _provenance(bundle, file_sha256) -> dict:
    info = dict(bundle.info)
    if bundle.checkpoint is not None and Path(bundle.checkpoint).is_file():
        info["checkpoint_file_sha256"] = file_sha256(bundle.checkpoint)
    return info


def real_tasks(args: argparse.Namespace) -> list:
    """The probe tasks of the real data files, built as probe-layers builds them (analysis.pipeline)."""
    from analysis.pipeline import DataSpec, real_probe_tasks

    spec = DataSpec(files=tuple(args.files), kind=args.data_kind, split=args.split, limit=args.limit,
                    train_cues=args.train_cue_list, per_image=args.per_image)
    notes: list[str] = []
    tasks = real_probe_tasks(spec, args.seed, notes)
    for note in notes:
        print(f"{PROG}: note: {note}", file=sys.stderr)
    return tasks


if __name__ == "__main__":
    sys.exit(main())
