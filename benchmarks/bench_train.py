"""Fine-tuning throughput: the toolkit's training step against the open_clip-style loop a user would
write, on real and synthetic captions.

    .venv/bin/python benchmarks/bench_train.py [--model negclip-tiny] [--batch-size 64] [--rounds 3] [--device cpu]
    .venv/bin/python benchmarks/bench_train.py --device cuda --model ViT-B-32        (on a GPU, bfloat16)

What is measured (defaults): the embedded default model's architecture, randomly initialised
(`negclip-tiny`: text tower of 12 blocks, width 128, 4 heads, context 32; a ResNet image tower at
48x48; speed does not depend on the weights), float32 on one pinned CPU thread, or bfloat16 autocast
on CUDA (`--device cuda`, e.g. with `--model ViT-B-32`; without a GPU the run says so and stops).
Every variant trains the same layer plan (the front half of the text tower, plus embeddings,
ln_final, projection and logit scale) with the same loss (`--loss`, default conclip, with distractor
images) on the same sequence of contrastive batches of `--batch-size` examples: synthetic examples
(the world's images and captions), and the same images with real captions (NegBench COCO MCQ
captions: an item's correct caption and two others fill caption / presence_negated /
absence_negated; speed depends on their lengths, not their meaning). Variants:

    toolkit                 Trainer.train_step: image features cached once, captions trimmed to the
                            batch's longest
    toolkit_budget<B>       the same, the batch's captions encoded in length-sorted chunks of at most
                            B tokens (TrainConfig.text_token_budget)
    openclip_locked         model.lock_image_tower(), then every step the whole model's forward
                            model(images, captions) at the full context, distractor images through
                            encode_image, as open_clip's training script does
    openclip_trimmed_text   the same loop with captions trimmed: the gain of trimming alone
    openclip_cached_images  the same loop with cached image features, full context: the gain of caching alone
    matmul                  a square matrix product: the machine's rate

Protocol: benchmarks/harness.py (warm-up, interleaved rounds, medians, spread); one timed call is
`--steps-per-call` optimizer steps. FLOPs per step, counted by torch.utils.flop_counter (forward and
backward) over the first `--flop-steps` batches: computed (what the variant runs) and useful (the
loss's forward and backward with every caption at its own length and the image features given: the
image tower is frozen, so its features are needed once per image, which the toolkit pays once before
training; `toolkit_caching_s` is that cost). `ccneg_epoch_s` estimates one epoch of CC-Neg's training
split (188,246 examples) at the median step time, caching included for the toolkit.
Written to benchmarks/results/train-<device>.json; scripts/bench_tables.py renders the README table.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import harness  # noqa: E402

CCNEG_TRAIN_ROWS = 228_246 - 40_000  # CC-Neg as released, minus the last 40,000 rows (evaluation split)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="negclip-tiny", help="open_clip name or config JSON (random weights)")
    parser.add_argument("--batch-size", type=int, help="contrastive batch (default: 64 on CPU, 256 on CUDA)")
    parser.add_argument("--loss", default="conclip")
    parser.add_argument("--steps-per-call", type=int, default=2, help="optimizer steps per timed call")
    parser.add_argument("--flop-steps", type=int, default=4, help="batches whose FLOPs are counted (mean per step)")
    parser.add_argument("--token-budgets", default="1280", help="comma list of text token budgets to time")
    harness.add_common_arguments(parser)
    harness.add_data_argument(parser)
    return parser.parse_args(argv)


def main(argv=None) -> Path:
    args = parse_args(argv)
    device = harness.setup(args)
    args.batch_size = args.batch_size or (256 if device.type == "cuda" else 64)
    from probing.clip.loading import load_clip
    from probing.clip.text_tower import TextTower

    model, _, _ = load_clip(args.model, device="cpu")
    tower = TextTower.from_model(model)
    size = model.visual.image_size
    record = {"model": {"name": args.model, "layers": tower.n_layers, "width": tower.d_model, "heads": tower.n_heads,
                        "context": tower.n_ctx, "image_tower": type(model.visual).__name__,
                        "image_size": size[0] if isinstance(size, (tuple, list)) else size, "weights": "random",
                        "dtype": "bfloat16 autocast" if device.type == "cuda" else "float32"},
              "batch_size": args.batch_size, "loss": args.loss, "captions": {}}
    del model
    budgets = [int(b) for b in args.token_budgets.split(",") if b.strip()]
    matmul = harness.MatmulRate(device)
    record["matmul"] = matmul.describe()
    for kind in ("negbench", "synthetic"):
        print(f"{kind} captions", file=sys.stderr, flush=True)
        record["captions"][kind] = measure(kind, record["model"]["image_size"], budgets, matmul, args, device)
    path = harness.write_record(args, "train", device, record)
    print_summary(record)
    print(f"wrote {path}")
    return path


def training_examples(kind: str, n: int, image_size: int, seed: int, data_root: Path = harness.SHARED_DATA) -> list:
    """Synthetic examples; for "negbench", their caption fields hold NegBench captions instead."""
    from probing.data import load_negbench_mcq
    from probing.synthetic import SyntheticWorld, WorldConfig

    examples = SyntheticWorld(WorldConfig(image_size=image_size), seed=seed).examples(n, "train", seed=seed)
    if kind == "synthetic":
        return examples
    items = load_negbench_mcq(harness.data_file(data_root, harness.NEGBENCH_MCQ), strict=False, artifacts="skip")
    items = random.Random(seed).sample(list(items), n)
    return [dataclasses.replace(example, caption=item.captions[item.correct],
                                presence_negated=item.captions[(item.correct + 1) % 4],
                                absence_negated=item.captions[(item.correct + 2) % 4])
            for example, item in zip(examples, items)]


def measure(kind, image_size, budgets, matmul, args, device) -> dict:
    from finetune.plan import LayerPlan
    from finetune.train import TrainConfig, Trainer
    from probing.clip.loading import load_clip
    from probing.clip.text_tower import TextTower

    n_batches = 1 + args.rounds * args.steps_per_call + args.flop_steps + 1  # warm-up, timed, counted, spare
    examples = training_examples(kind, args.batch_size * n_batches, image_size, args.seed, args.data_root)
    out = tempfile.TemporaryDirectory()

    def fresh():
        torch.manual_seed(args.seed)
        return load_clip(args.model, device=device)

    def config(name, **overrides):
        return TrainConfig(loss=args.loss, lr=1e-5, warmup_steps=1, steps=10 ** 6, batch_size=args.batch_size,
                           device=str(device), out_dir=str(Path(out.name) / name), progress=False, tensorboard=False,
                           **overrides)

    stepper, caching_s = {}, {}
    for budget in [None, *budgets]:
        name = "toolkit" if budget is None else f"toolkit_budget{budget}"
        model, preprocess, tokenizer = fresh()
        plan = LayerPlan.front(max(1, TextTower.from_model(model).n_layers // 2))
        started = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # the layer plan's table
            trainer = Trainer(model, tokenizer, preprocess, examples, plan, config(name, text_token_budget=budget))
        harness.synchronize(device)
        caching_s[name] = time.perf_counter() - started
        stepper[name] = trainer.train_step
        if budget is None:
            toolkit = trainer
    for name, images, trim in (("openclip_locked", "each_step", False), ("openclip_trimmed_text", "each_step", True),
                               ("openclip_cached_images", "cached", False)):
        model, preprocess, tokenizer = fresh()
        stepper[name] = OpenClipStep(
            model,
            preprocess,
            tokenizer,
            examples,
            plan,
            config(name),
            toolkit.sources[0].order,
            device,
            images=images,
            trim=trim,
            cached=toolkit.sources[0].data,
        )
    variants = {name: repeat(step, args.steps_per_call) for name, step in stepper.items()}
    variants["matmul"] = matmul

    times = harness.interleaved(variants, args.rounds, device)
    peak = matmul.flops / np.median(times["matmul"])
    useful = useful_step_flops(toolkit, args.flop_steps)  # the batches every variant counts next
    per_example = caching_s["toolkit"] / len(examples)
    result = {"toolkit_caching_s": caching_s["toolkit"], "caching_s_per_example": per_example,
              "lengths": harness.length_summary(text_lengths(toolkit)),
              "matmul": harness.rate_entry(times["matmul"], matmul.flops, peak), "variants": {}}
    for name, step in stepper.items():
        per_step = [seconds / args.steps_per_call for seconds in times[name]]
        entry = harness.rate_entry(per_step, counted_flops(step, args.flop_steps), peak, useful_flops=useful,
                                   items=args.batch_size)
        entry["ccneg_epoch_s"] = CCNEG_TRAIN_ROWS / args.batch_size * entry["median_s"]
        if name.startswith("toolkit"):
            entry["ccneg_epoch_s"] += per_example * CCNEG_TRAIN_ROWS
        result["variants"][name] = entry
    out.cleanup()
    return result


def repeat(step, n: int):
    def run():
        for _ in range(n):
            step()
    return run


class OpenClipStep:
    """One optimizer step as an open_clip-style script does it, with the toolkit's optimizer and loss
    on the toolkit's batch sequence: the image tower locked (LiT), images through it every step
    unless `images="cached"`, captions at the full context unless `trim`."""

    def __init__(self, model, preprocess, tokenizer, examples, plan, config, order, device, *, images: str,
                 trim: bool, cached):
        from PIL import Image

        from finetune.freezing import apply_plan
        from finetune.losses import loss_spec
        from finetune.train import build_optimizer

        self.model, self.config, self.order, self.device = model, config, order, device
        self.images, self.trim, self.cached = images, trim, cached
        model.train()
        model.lock_image_tower()
        apply_plan(model, plan, verbose=False)
        self.spec = loss_spec(config.loss)
        self.optimizer = build_optimizer(model, plan, config)
        self.params = [p for p in model.parameters() if p.requires_grad]
        # decoding and resizing once here, so that only model work is timed
        self.pixels = torch.stack([preprocess(Image.fromarray(e.image)) for e in examples])
        self.distractors = torch.stack([preprocess(Image.fromarray(e.distractor_image)) for e in examples])
        self.tokens = {name: tokenizer([getattr(e, name) for e in examples]) for name in self.spec.texts}
        self.k = 0

    def loss(self, indices: torch.Tensor) -> torch.Tensor:

        from probing.clip.text_tower import TextTower

        model, device = self.model, self.device
        texts = torch.cat([self.tokens[name][indices] for name in self.spec.texts]).to(device)
        distractor = None
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            if self.images == "cached":
                image = self.cached.image[indices.to(device)]
                if self.spec.distractor != "no":
                    distractor = self.cached.distractor[indices.to(device)]
                text = TextTower.from_model(model).encode(texts, trim=self.trim, normalize=True)
            else:
                if self.trim:
                    image = model.encode_image(self.pixels[indices].to(device), normalize=True)
                    text = TextTower.from_model(model).encode(texts, trim=True, normalize=True)
                else:
                    image, text, _ = model(self.pixels[indices].to(device), texts)
                if self.spec.distractor != "no":
                    distractor = model.encode_image(self.distractors[indices].to(device), normalize=True)
        features = {"image": image.float(), "distractor": None if distractor is None else distractor.float()}
        features.update(zip(self.spec.texts, text.float().split(len(indices))))
        return self.spec.call(features, model.logit_scale.exp(), **self.config.loss_kwargs)

    def __call__(self) -> None:
        from probing.contrastive import MAX_LOGIT_SCALE

        indices = self.order.batch(self.k)[1]
        self.k += 1
        loss = self.loss(indices)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.config.clip_grad_norm)
        self.optimizer.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)


def counted_flops(step, n_steps: int) -> float:
    """Mean FLOPs of the next `n_steps` steps (forward and backward), as torch's flop counter counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        for _ in range(n_steps):
            step()
    return counter.get_total_flops() / n_steps


def useful_step_flops(trainer, n_steps: int) -> float:
    """Mean FLOPs of the loss's forward and backward on the trainer's next `n_steps` batches with every
    caption alone at its own length (text_token_budget=1) and the cached image features."""
    from torch.utils.flop_counter import FlopCounterMode

    from finetune.train import batch_loss

    with FlopCounterMode(display=False) as counter:
        for k in range(trainer.step, trainer.step + n_steps):
            batch_loss(
                trainer.model,
                trainer.sources[0].data,
                trainer.sources[0].spec,
                trainer.sources[0].order.batch(k)[1],
                device=trainer.device,
                autocast=trainer.autocast,
                text_token_budget=1,
            ).backward()
    trainer.model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / n_steps


def text_lengths(trainer) -> np.ndarray:
    from probing.clip.text_tower import TextTower

    tower = TextTower.from_model(trainer.model)
    return np.concatenate(
        [(tower.eot_positions(tokens) + 1).numpy() for tokens in trainer.sources[0].data.tokens.values()]
    )


def print_summary(record: dict) -> None:
    for kind, result in record["captions"].items():
        lengths = result["lengths"]
        print(f"\n{kind}: batch {record['batch_size']}, captions {lengths['mean']:.1f} tokens on average (max "
              f"{lengths['max']}); matmul {result['matmul']['gflops_per_s']:.1f} GFLOP/s; toolkit caching "
              f"{result['toolkit_caching_s']:.2f} s")
        harness.print_variants(result["variants"], "openclip_locked",
                               {"samples/s": lambda entry: f"{entry['items_per_s']:.1f}",
                                "CC-Neg epoch": lambda entry: f"{entry['ccneg_epoch_s'] / 3600:.2f} h"})

if __name__ == "__main__":
    main()
