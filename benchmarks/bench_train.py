"""Training throughput of the fine-tuning loop against a naive loop (a benchmark, not a test).

    .venv/bin/python benchmarks/bench_train.py [--batch-size 64] [--steps 10] [--loss conclip] [--device auto]

Both loops train the same plan (front half of the text tower) with the same loss on the same
synthetic batches. The naive loop does what a straightforward CLIP fine-tuning script does every
step: run the (frozen) image tower on the batch's images and distractor images, and run the text
tower at the full context length (77). The toolkit's loop caches image features once and trims
each text batch to its longest caption. Reported: steady-state samples/s of each, the one-time
caching cost, and the ratio.

Default model: a small CLIP with the embedded model's text tower (12 blocks x width 128, 77
tokens) and a 3-block ViT on 64x64 images, randomly initialised: speed does not depend on the weights.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

SMALL_CLIP = {
    "embed_dim": 128,
    "quick_gelu": False,
    "vision_cfg": {"image_size": 64, "layers": 3, "width": 128, "patch_size": 8, "head_width": 64},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 12},
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="open_clip name or config JSON (default: the small CLIP above)")
    parser.add_argument("--pretrained")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per loop (after 2 warm-up steps)")
    parser.add_argument("--loss", default="conclip")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    import torch

    from finetune.plan import LayerPlan
    from finetune.train import TrainConfig, Trainer
    from probing.synthetic.world import SyntheticWorld, WorldConfig
    from probing.models.loading import load_clip, resolve_device
    from probing.models.text_tower import TextTower

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_name = args.model
        if model_name is None:
            model_name = str(Path(tmp) / "bench-small-clip.json")
            Path(model_name).write_text(json.dumps(SMALL_CLIP))
        n_examples = args.batch_size * (args.steps + 2)  # one epoch: every image is seen once
        examples = SyntheticWorld(WorldConfig(image_size=64), seed=0).examples(n_examples, "train", seed=0)

        def fresh():
            torch.manual_seed(0)
            return load_clip(model_name, args.pretrained, device=device)

        model, preprocess, tokenizer = fresh()
        plan = LayerPlan.front(max(1, TextTower.from_model(model).n_layers // 2))
        config = TrainConfig(loss=args.loss, lr=1e-5, warmup_steps=1, steps=args.steps + 2, batch_size=args.batch_size,
                             device=str(device), out_dir=str(Path(tmp) / "run"), progress=False, tensorboard=False)
        started = time.perf_counter()
        trainer = Trainer(model, tokenizer, preprocess, examples, plan, config)
        setup_s = time.perf_counter() - started
        naive_model, preprocess, tokenizer = fresh()
        naive_step = make_naive_step(naive_model, preprocess, tokenizer, examples, plan, config, device)
        fast, naive = time_alternately(trainer.train_step, naive_step, args.steps, device)

    steps_per_epoch = args.steps + 2
    print(f"device {device}, torch threads {torch.get_num_threads()}, model {Path(model_name).stem}, loss {args.loss}, "
          f"batch {args.batch_size}, plan {plan.describe()}")
    print(f"toolkit loop (cached images, trimmed text): {args.batch_size / fast:8.1f} samples/s "
          f"(median step {fast:.3f} s; + {setup_s:.2f} s once to cache image features of {len(examples)} examples)")
    print(f"naive loop (images every step, 77 tokens):  {args.batch_size / naive:8.1f} samples/s "
          f"(median step {naive:.3f} s)")
    print(f"speed-up: {naive / fast:.2f}x per step; "
          f"{naive * steps_per_epoch / (setup_s + fast * steps_per_epoch):.2f}x over one {steps_per_epoch}-step epoch "
          "including the caching (more epochs reuse the cache)")


def time_alternately(fast_step, naive_step, n_steps: int, device) -> tuple[float, float]:
    """Median seconds per step of each loop, their steps interleaved so that both see the same
    machine load (other processes on a shared machine make single runs noisy)."""
    import statistics

    import torch

    def timed(step) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    for _ in range(2):  # warm-up: allocator, kernels
        fast_step(), naive_step()
    fast, naive = [], []
    for _ in range(n_steps):
        fast.append(timed(fast_step))
        naive.append(timed(naive_step))
    return statistics.median(fast), statistics.median(naive)


def make_naive_step(model, preprocess, tokenizer, examples, plan, config, device):
    """One step as a plain script does it: both towers every step, text at full length."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from finetune.freezing import apply_plan
    from finetune.losses import loss_spec
    from finetune.train import MAX_LOGIT_SCALE, build_optimizer

    apply_plan(model, plan, verbose=False)
    spec = loss_spec(config.loss)
    optimizer = build_optimizer(model, plan, config)
    params = [p for p in model.parameters() if p.requires_grad]
    # decoding and resizing are done once here, so that only model work is timed
    pixels = torch.stack([preprocess(Image.fromarray(e.image)) for e in examples])
    distractors = torch.stack([preprocess(Image.fromarray(e.distractor_image)) for e in examples])
    tokens = {name: tokenizer([getattr(e, name) for e in examples]) for name in spec.texts}
    autocast = config.precision == "bf16" and device.type == "cuda"
    position = {"k": 0}

    def step():
        start = position["k"] * config.batch_size
        batch = slice(start, start + config.batch_size)
        position["k"] += 1
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            with torch.no_grad():
                features = {"image": model.encode_image(pixels[batch].to(device))}
                if spec.distractor != "no":
                    features["distractor"] = model.encode_image(distractors[batch].to(device))
            for name in spec.texts:
                features[name] = model.encode_text(tokens[name][batch].to(device))
        features = {name: F.normalize(value.float(), dim=-1) for name, value in features.items()}
        loss = spec.call(features, model.logit_scale.exp(), **config.loss_kwargs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.clip_grad_norm)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    return step


if __name__ == "__main__":
    main()
