"""Capture benchmark: plain `model.encode_text` at full length vs the hooked module capturing every
layer at trimmed length, on the same captions and model. Prints times, their ratio and peak memory.

    python benchmarks/bench_capture.py --model ViT-B-32 --captions 2048 --batch-size 128
"""
from __future__ import annotations

import argparse
import random
import resource
import time

import torch


def synthetic_captions(n: int, seed: int) -> list[str]:
    """Short negated / affirmative captions like the benchmarks' (most are far below 77 tokens)."""
    rng = random.Random(seed)
    colours = ["red", "green", "blue", "yellow", "purple", "orange"]
    shapes = ["circle", "square", "triangle", "star", "cross", "diamond"]
    templates = ["a {} {}", "a {} {} but no {} {}", "there is no {} {} next to the {} {}", "a {} {} without a {} {}"]
    out = []
    for _ in range(n):
        template = rng.choice(templates)
        words = [rng.choice(colours if i % 2 == 0 else shapes) for i in range(template.count("{}"))]
        out.append(template.format(*words))
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--captions", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from probing.measure.capture import capture_pooled
    from probing.models.hooked import HookedCLIPText
    from probing.models.loading import load_clip

    torch.manual_seed(args.seed)
    model, _, tokenizer = load_clip(args.model)
    captions = synthetic_captions(args.captions, args.seed)
    tokens = tokenizer(captions)

    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(captions), args.batch_size):
            model.encode_text(tokens[i:i + args.batch_size])
    plain = time.perf_counter() - start
    rss_after_plain = peak_rss_mb()

    hooked = HookedCLIPText(model)
    start = time.perf_counter()
    pooled = capture_pooled(hooked, tokenizer, captions, batch_size=args.batch_size, progress=False)
    hooked_time = time.perf_counter() - start

    print(f"model {args.model}, {len(captions)} captions, batch {args.batch_size}, torch threads {torch.get_num_threads()}")
    print(f"mean EOT position {float(hooked.eot_positions(tokens).float().mean()):.1f} of {tokens.shape[1]} tokens")
    print(f"plain encode_text, full length          : {plain:7.2f} s  ({len(captions) / plain:7.1f} captions/s)")
    print(f"hooked capture of {pooled.shape[0]} layers, trimmed : {hooked_time:7.2f} s  ({len(captions) / hooked_time:7.1f} captions/s)")
    print(f"ratio plain / hooked-capture            : {plain / hooked_time:7.2f}x")
    print(f"captured array {tuple(pooled.shape)}, {pooled.nbytes / 2**20:.1f} MiB")
    print(f"peak RSS after plain run {rss_after_plain:.0f} MiB, after capture {peak_rss_mb():.0f} MiB")


if __name__ == "__main__":
    main()
