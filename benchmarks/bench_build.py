"""Embedded build: where one pretraining step's time goes, and how much of it an exact speed-up could save.

    .venv/bin/python benchmarks/bench_build.py [--threads 2] [--rounds 5]

`build-embedded --rebuild` must end at the shipped model's weights (on the CPU that built it), so a
faster build may change how a step is computed, not what it computes: every floating-point sum
in the same order. This benchmark times the parts of the default build's steps on its own thread
count (2), with the harness's protocol (benchmarks/harness.py: warm-up, interleaved rounds, medians):

    data              one contrastive batch: scenes drawn and rendered in Python, images to tensors,
                      captions tokenised (probing.models.build.pretraining_batch and the tokenizer)
    step              one contrastive step as the build runs it (data included): image and text
                      towers forward and backward, gradient clipping, AdamW on every parameter
    step_no_embedding the same step with the 49408 x 128 token embedding frozen: what a sparse update of
                      the few hundred rows a batch uses could save at most (its dense gradient, clipping
                      and AdamW over 6.3 M entries, most of them zero)
    warmup_step       one image-tower warm-up step (250 of them precede the 700 contrastive steps)
    matmul            a square matrix product: the machine's rate

FLOPs of one contrastive step (forward and backward, torch.utils.flop_counter) give its rate as a
share of the matmul rate: the part of the step that is dense linear algebra at the machine's speed
cannot get faster without other sums. `exact_speedup_bound` = step / (step - data - embedding
saving): the build's speed-up if batch preparation ran entirely in the background and the embedding
update cost nothing, the most that changes leaving every sum in place could give.
Written to benchmarks/results/build-cpu.json.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import sys
from dataclasses import replace
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import harness  # noqa: E402

WARMUP_STEPS, CONTRASTIVE_STEPS = 250, 700  # the default spec's; checked against it below


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_common_arguments(parser)
    parser.set_defaults(threads=2, rounds=5)
    return parser.parse_args(argv)


def main(argv=None) -> Path:
    from torch.utils.flop_counter import FlopCounterMode

    from probing.clip.loading import load_clip
    from probing.clip.text_tower import TextTower
    from probing.models.build import (
        DEFAULT_SPEC,
        contrastive_step,
        param_groups,
        pretraining_batch,
        warm_up_image_tower,
        world_for,
    )

    args = parse_args(argv)
    device = harness.setup(args)
    if device.type != "cpu":
        raise SystemExit("the embedded build runs on CPU threads; this benchmark measures it there")
    spec = DEFAULT_SPEC
    assert (spec.image_warmup_steps, spec.steps) == (WARMUP_STEPS, CONTRASTIVE_STEPS)
    base, preprocess, tokenizer = load_clip(spec.model)
    world = world_for(spec)

    def trainer(freeze_embedding: bool):
        model = copy.deepcopy(base).train()
        tower = TextTower.from_model(model)
        tower.token_embedding.weight.requires_grad_(not freeze_embedding)
        groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in param_groups(model, 0.1)]
        optimizer = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.98), eps=1e-6)
        counter = itertools.count()

        def run():
            images, captions = pretraining_batch(world, spec, next(counter))
            return contrastive_step(model, tower, preprocess, tokenizer, images, captions, optimizer)

        return run

    step, step_frozen = trainer(False), trainer(True)
    batches = itertools.count()
    warm_model = copy.deepcopy(base)
    one_warmup = replace(spec, image_warmup_steps=1)

    def data():
        images, captions = pretraining_batch(world, spec, next(batches))
        return tokenizer(captions)

    matmul = harness.MatmulRate(device)
    times = harness.interleaved({"data": data, "step": step, "step_no_embedding": step_frozen,
                                 "warmup_step": lambda: warm_up_image_tower(warm_model, preprocess, world, one_warmup,
                                                                            progress=False),
                                 "matmul": matmul}, args.rounds, device)
    peak = matmul.flops / harness.spread(times["matmul"])["median_s"]
    with FlopCounterMode(display=False) as flops:
        step()
    entries = {name: harness.spread(seconds) for name, seconds in times.items() if name != "matmul"}
    entries["step"] = harness.rate_entry(times["step"], flops.get_total_flops(), peak)
    median = {name: entry["median_s"] for name, entry in entries.items()}
    embedding_saving = max(0.0, median["step"] - median["step_no_embedding"])
    bound = median["step"] / (median["step"] - median["data"] - embedding_saving)
    build_s = WARMUP_STEPS * median["warmup_step"] + CONTRASTIVE_STEPS * median["step"]
    record = {
        "model": spec.model, "batch_size": spec.batch_size,
        "matmul": {"shape": matmul.describe(), "gflops_per_s": peak / 1e9},
        "variants": entries, "shares_of_step": {"data": median["data"] / median["step"],
                                               "embedding_update": embedding_saving / median["step"]},
        "exact_speedup_bound": bound, "estimated_build_s": build_s,
    }
    for name, entry in entries.items():
        print(f"{name:<18} {1000 * entry['median_s']:8.1f} ms  (spread {entry['relative_spread']:.0%})")
    print(f"one contrastive step: {flops.get_total_flops() / 1e9:.1f} GFLOP at "
          f"{entries['step']['gflops_per_s']:.1f} GFLOP/s = {entries['step']['share_of_matmul_rate']:.0%} of this "
          f"machine's matmul rate ({peak / 1e9:.1f} GFLOP/s)")
    print(f"shares of a step: batch preparation {median['data'] / median['step']:.1%}, dense embedding update "
          f"{embedding_saving / median['step']:.1%}")
    print(f"build estimate {build_s / 60:.1f} min ({WARMUP_STEPS} warm-up + {CONTRASTIVE_STEPS} steps, evaluation "
          f"not included); exact speed-up bound {bound:.2f}x")
    path = harness.write_record(args, "build", device, record)
    print(f"written: {path}")
    return path


if __name__ == "__main__":
    main()
