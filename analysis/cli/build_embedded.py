"""`build-embedded`: build (or rebuild) the embedded default model and print its held-out numbers."""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="build-embedded",
        description="Pretrain the embedded default model (a small CLIP on the synthetic negation world) "
                    "and cache it; later runs of any command load it from the cache.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--spec", choices=("default", "small"), default="default",
                        help="'small' is the seconds-long smoke-test build")
    parser.add_argument("--seed", type=int, help="pretraining seed (default: the spec's)")
    parser.add_argument("--steps", type=int, help="pretraining steps (default: the spec's)")
    parser.add_argument("--rebuild", action="store_true", help="pretrain again even if the cache has the model")
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads of the build (default: the spec's, 1); another count gives other "
                             "weights, cached as another model that the other commands do not use")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")

    from finetune.embedded import SPECS, embedded_metrics, ensure_embedded_model, format_metrics, with_overrides

    spec = with_overrides(SPECS[args.spec], seed=args.seed, steps=args.steps, threads=args.threads)
    path = ensure_embedded_model(spec, rebuild=args.rebuild, progress=not args.no_progress)
    metrics = embedded_metrics(spec)
    print(f"embedded model {spec.model} (seed {spec.seed}, {spec.steps} steps): {path}")
    print(f"held-out synthetic scenes ({spec.eval_scenes}), pretrained in {metrics['pretraining_minutes']:.1f} min:")
    print(format_metrics(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
