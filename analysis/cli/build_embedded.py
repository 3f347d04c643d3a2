"""`build-embedded`: the embedded default model's numbers, and a rebuild of it from scratch.

    build-embedded                          the shipped model: where it is and its held-out numbers
    build-embedded --rebuild                pretrain it again into the cache (never over the shipped
                                            file) and print both builds' numbers side by side
    build-embedded --seed 2 --steps 300     another build (cached); the commands use it with
                                            --model negclip-tiny --pretrained <the printed path>
    build-embedded --model embedded:late    a model built to differ in where negation can be learnt
                                            (seed2, depth6, late, ...: probing.models.embedded.REGISTRY)

The shipped model was built by the same code with the same spec; a rebuild on another CPU or
thread count sums floating-point numbers in another order and ends at other weights, so its
numbers differ slightly: the differences are printed.
"""
from __future__ import annotations

import argparse
import math
import sys

from analysis.cli import arguments as a
from analysis.cli.arguments import positive_int, seed, threads
from analysis.cli.execution import (
    UsageError,
    run,
)
from probing.models.embedded import EMBEDDED, NAMES, REGISTRY, embedded_model

PROG = "build-embedded"


def _embedded_name(text: str) -> str:
    """An embedded model's name ('embedded:late', or just 'late'); argparse says which are known."""
    try:
        return embedded_model(text).reference
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = a.CommandParser(PROG, __doc__)
    model = parser.add_argument("--model", type=_embedded_name, default=f"{EMBEDDED}:default",
                                help="the embedded model: 'embedded:small' is the seconds-long smoke-test build; "
                                     + ", ".join(f"{EMBEDDED}:{n}" for n in NAMES if REGISTRY[n].shipped is None)
                                     + " are built only (not shipped), compared with the shipped default")
    parser.add_argument("--seed", type=seed, help="pretraining seed (default: the spec's)")
    parser.add_argument("--steps", type=positive_int, help="pretraining steps (default: the spec's)")
    parser.add_argument("--threads", type=threads,
                        help="torch CPU threads of the build (default: the spec's); another count gives other weights")
    parser.add_argument("--rebuild", action="store_true", help="pretrain again even if the cache has this build")
    parser.add_argument("--no-progress", action="store_true")
    a.renamed(parser, "--spec", model)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run(PROG, lambda: build(args))


def recorded_metrics(path) -> dict:
    """The held-out numbers a build recorded in its checkpoint; a ModelLoadError if they are missing or damaged."""
    from probing.clip.loading import ModelLoadError
    from probing.models.factory import recorded_metrics

    metrics = recorded_metrics(path)
    if metrics is None:
        raise ModelLoadError(f"checkpoint file {path} records no metrics (not a build of this toolkit?)")
    return metrics


def build(args: argparse.Namespace) -> int:
    from probing.models import SHIPPED
    from probing.models.build import (
        CacheError,
        checkpoint_path,
        ensure_embedded_model,
        format_metrics,
        with_overrides,
    )

    entry = embedded_model(args.model)
    shipped_name = entry.name if entry.shipped else "default"
    shipped_path = SHIPPED / REGISTRY[shipped_name].shipped
    shipped = recorded_metrics(shipped_path) if shipped_path.is_file() else None
    minutes = shipped.get("pretraining_minutes", math.nan) if shipped else math.nan
    spec = with_overrides(entry.spec, seed=args.seed, steps=args.steps,
                          threads=args.threads)
    if shipped is None:
        print(f"the shipped model {EMBEDDED}:{shipped_name} is missing from this installation ({shipped_path})")
    else:
        print(f"shipped model {EMBEDDED}:{shipped_name}: {shipped_path}")
    if entry.shipped and spec == entry.spec and not args.rebuild:
        if shipped is None:
            raise UsageError("nothing to show: pass --rebuild to build the model into the cache")
        print(f"held-out synthetic scenes ({spec.eval_scenes}); pretrained in {minutes:.1f} min when it was built:")
        print(format_metrics(shipped))
        print("(`build-embedded --rebuild` pretrains it again into the cache and compares)")
        return 0
    path = checkpoint_path(spec)
    if args.rebuild or not path.exists():
        took = f"; the shipped build took {minutes:.1f} min on the machine that built it" if shipped else ""
        print(f"pretraining {spec.model} from scratch: {spec.image_warmup_steps} image-tower warm-up and {spec.steps} "
              f"contrastive steps of batch {spec.batch_size} on {spec.threads} thread(s){took} (one time: the "
              "result is cached)", flush=True)
    try:
        path = ensure_embedded_model(spec, rebuild=args.rebuild, progress=not args.no_progress)
    except CacheError as error:
        raise UsageError(str(error)) from None
    built = recorded_metrics(path)
    print(f"this build (seed {spec.seed}, {spec.steps} steps, {spec.threads} thread(s)): {path}")
    print(format_metrics(built, compare=shipped))
    return 0


if __name__ == "__main__":
    sys.exit(main())
