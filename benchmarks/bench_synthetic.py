"""Time the synthetic world: how long 10,000 examples (and the other sets) take to generate.

    .venv/bin/python benchmarks/bench_synthetic.py [--n 10000] [--image-size 64]

Prints seconds and items per second; no assertions (timings depend on the machine).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

from probing.synthetic import SyntheticWorld, WorldConfig


def timed(label: str, n: int, make) -> None:
    start = time.perf_counter()
    make()
    seconds = time.perf_counter() - start
    print(f"{label:<28} n={n:>6}  {seconds:6.2f} s  {n / seconds:9.0f} / s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()
    world = SyntheticWorld(replace(WorldConfig(), image_size=args.image_size), seed=0)
    n = args.n
    world.examples(10)  # warm-up: imports PIL, builds the noise bank
    timed("examples (2 images each)", n, lambda: world.examples(n, "train"))
    timed("examples, test split", n, lambda: world.examples(n, "test"))
    timed("scope_pairs", n, lambda: world.scope_pairs(n))
    timed("pretraining_pairs", n, lambda: world.pretraining_pairs(n))
    timed("classification_set", n, lambda: world.classification_set(n, "test"))
    timed("probe_captions (text)", n, lambda: world.probe_captions(n))
    timed("minimal_pairs (text)", n, lambda: world.minimal_pairs(n))


if __name__ == "__main__":
    main()
