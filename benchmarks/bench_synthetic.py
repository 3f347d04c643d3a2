"""Synthetic world benchmark: how long the world takes to generate its data sets.

    .venv/bin/python benchmarks/bench_synthetic.py [--n 10000] [--image-size 64] [--rounds 3] [--threads 1]

What is measured: `SyntheticWorld(WorldConfig(image_size=...), seed=0)` generating `--n` items of
each set (NegationExamples with two rendered images each, for the train and test splits; scope
pairs; pretraining pairs; the classification set; the text-only probe captions and minimal pairs),
on CPU with pinned threads (rendering is numpy and PIL; there are no captions to read, so there is no
real-data counterpart here). Protocol: benchmarks/harness.py (one warm-up run of every set, then
rounds with the sets interleaved in rotated order; medians and spread). Reported per set: median
seconds and items per second. Written to benchmarks/results/synthetic-cpu.json.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import harness  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000, help="items per set")
    parser.add_argument("--image-size", type=int, default=64)
    harness.add_common_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None) -> Path:
    args = parse_args(argv)
    args.device = "cpu"
    device = harness.setup(args)
    from probing.synthetic import SyntheticWorld, WorldConfig

    world = SyntheticWorld(replace(WorldConfig(), image_size=args.image_size), seed=0)
    n = args.n
    sets = {
        "examples (train, 2 images each)": lambda: world.examples(n, "train"),
        "examples (test)": lambda: world.examples(n, "test"),
        "scope_pairs": lambda: world.scope_pairs(n),
        "pretraining_pairs": lambda: world.pretraining_pairs(n),
        "classification_set": lambda: world.classification_set(n, "test"),
        "probe_captions (text)": lambda: world.probe_captions(n),
        "minimal_pairs (text)": lambda: world.minimal_pairs(n),
    }
    times = harness.interleaved(sets, args.rounds, device)
    record = {"n": n, "image_size": args.image_size, "sets": {}}
    for name, seconds in times.items():
        entry = record["sets"][name] = harness.spread(seconds)
        entry["items_per_s"] = n / entry["median_s"]
    path = harness.write_record(args, "synthetic", device, record)
    for name, entry in record["sets"].items():
        print(f"{name:<34} n={n:>6}  {entry['median_s']:7.2f} s (spread {entry['relative_spread']:.0%})  "
              f"{entry['items_per_s']:9.0f} / s")
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
