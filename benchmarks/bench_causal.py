"""Causal-check benchmark: probe-layers' projection ablation, as it ran before and as it runs now.

    .venv/bin/python benchmarks/bench_causal.py [--model negclip-tiny] [--n-causal 400] [--rounds 3] [--threads 1]

What is measured (defaults): the causal check of `probe-layers` (probing.measure.layers.causal_rows)
on the embedded default model's architecture, randomly initialised (`negclip-tiny`: 12 blocks,
width 128, 4 heads, context 32; speed does not depend on the weights), float32 on one pinned CPU
thread: the synthetic suite of `--n-causal` scenes (its class prompts, captions, negated captions
and scope pairs, about 2,200 texts), a direction projected out at each of the 13 layer indices, and
the suite's metrics computed for the baseline and each ablation against image features computed
once. The same with real captions: the suite's caption lists replaced by as many NegBench COCO
MCQ captions (its metrics then mean nothing; the cost is that of real caption lengths). Variants:

    hooked_per_layer         every layer's ablation a full hooked run of every caption list in
                             input order, batches of 256 (the causal check before this version)
    hooked_per_layer_sorted  the same in length-sorted batches of at most 1,280 tokens (the default)
    ablated_text             probing.measure.causal.AblatedText (what projection_ablation runs now):
                             each caption once per batch, the residual stream kept at every layer
                             index, each ablation running only the blocks after its layer
    matmul                   a square float32 matrix product: the machine's rate

Protocol: benchmarks/harness.py. FLOPs (block and projection matrix products, as torch's flop
counter counts them): computed, and useful = the ablated_text scheme with every caption at its own
length (the least work that gives all the features). `max_abs_difference`: the largest difference
of the variant's metric values from ablated_text's (0 means the same numbers).
Written to benchmarks/results/causal-<device>.json; scripts/bench_tables.py renders the README table.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import harness  # noqa: E402

OLD_BATCH = 256


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="negclip-tiny", help="a model create_model knows (random weights "
                                                                "unless it is an embedded variant)")
    parser.add_argument("--n-causal", type=int, default=400, help="scenes of the synthetic suite")
    harness.add_common_arguments(parser)
    harness.add_data_argument(parser)
    return parser.parse_args(argv)


def main(argv=None) -> Path:
    args = parse_args(argv)
    device = harness.setup(args)
    from probing.clip.hooked import HookedCLIPText
    from probing.models.factory import create_model
    from probing.synthetic.suite import SyntheticSuite

    bundle = create_model(args.model, None, device=device, seed=args.seed)
    hooked = HookedCLIPText(bundle.model)
    suite = SyntheticSuite.build(bundle.world, n=args.n_causal, n_classification=min(360, args.n_causal), split="test",
                                 heldout="all", seed=args.seed + 202)
    images = suite.image_features(bundle.model, bundle.preprocess)
    rng = np.random.default_rng(args.seed)
    directions = {layer: rng.normal(size=hooked.cfg.d_model) for layer in range(hooked.cfg.n_layers + 1)}
    matmul = harness.MatmulRate(device)
    tower = hooked.tower
    record = {
        "model": {
            "name": args.model,
            "layers": tower.n_layers,
            "width": tower.d_model,
            "heads": tower.n_heads,
            "context": tower.n_ctx,
            "weights": "embedded" if args.model.startswith("embedded") else "random",
        },
        "n_causal": args.n_causal,
        "layer_indices": len(directions),
        "matmul": matmul.describe(),
        "captions": {},
    }
    for kind in ("synthetic", "negbench"):
        print(f"{kind} captions", file=sys.stderr, flush=True)
        subject = suite if kind == "synthetic" else with_negbench_captions(suite, args.seed, args.data_root)
        record["captions"][kind] = measure(bundle, hooked, subject, images, directions, matmul, args, device)
    path = harness.write_record(args, "causal", device, record)
    print_summary(record)
    print(f"wrote {path}")
    return path


def with_negbench_captions(suite, seed: int, data_root: Path):
    """The suite with every caption list replaced by as many NegBench captions."""
    fields = ("captions", "presence_negated", "absence_negated", "scope_correct", "scope_wrong")
    pool = iter(harness.negbench_captions(sum(len(getattr(suite, f)) for f in fields), seed, data_root))
    return dataclasses.replace(suite, **{f: [next(pool) for _ in getattr(suite, f)] for f in fields})


def measure(bundle, hooked, suite, images, directions, matmul, args, device) -> dict:
    from probing.measure.capture import resid_hook_names
    from probing.measure.causal import project_out_hook, projection_ablation, text_encoder_with_hooks
    from probing.measure.layers import CAUSAL_METRICS

    model, tokenizer = bundle.model, bundle.tokenizer
    names = resid_hook_names(hooked.cfg.n_layers)
    asked: list[list[str]] = []

    def evaluate(encode):
        metrics = suite.scores(model, bundle.preprocess, tokenizer, encode_text=encode, image_features=images)
        return {key: metrics[key] for key in CAUSAL_METRICS if key in metrics}

    def per_layer(make_encoder):
        baseline = evaluate(make_encoder([]))
        rows = []
        for layer, direction in directions.items():
            ablated = evaluate(make_encoder([(names[layer], project_out_hook(direction))]))
            rows += [{"layer": layer, "metric": m, "ablated": v, "baseline": baseline[m]} for m, v in ablated.items()]
        return rows

    results = {}
    variants = {
        "hooked_per_layer": lambda: results.__setitem__("hooked_per_layer", per_layer(
            lambda hooks: unsorted_encoder(hooked, tokenizer, hooks))),
        "hooked_per_layer_sorted": lambda: results.__setitem__("hooked_per_layer_sorted", per_layer(
            lambda hooks: text_encoder_with_hooks(hooked, tokenizer, hooks))),
        "ablated_text": lambda: results.__setitem__("ablated_text", projection_ablation(
            hooked, tokenizer, directions, evaluate)),
        "matmul": matmul,
    }
    times = harness.interleaved(variants, args.rounds, device)
    def record_asked(captions):  # the caption lists one evaluation asks for, in order
        asked.append(list(captions))
        return torch.nn.functional.normalize(torch.randn(len(captions), images["scenes"].shape[1]), dim=-1)
    evaluate(record_asked)
    flops = scheme_flops(hooked.tower, tokenizer, asked, len(directions), directions)
    peak = matmul.flops / np.median(times["matmul"])
    lengths = np.concatenate([lengths_of(hooked.tower, tokenizer, captions) for captions in asked])
    result = {"texts": sum(len(c) for c in asked), "unique_texts": len({c for cs in asked for c in cs}),
              "lengths": harness.length_summary(lengths),
              "matmul": harness.rate_entry(times["matmul"], matmul.flops, peak), "variants": {}}
    reference = np.array([row["ablated"] for row in results["ablated_text"]])
    for name in ("hooked_per_layer", "hooked_per_layer_sorted", "ablated_text"):
        entry = harness.rate_entry(times[name], flops[name], peak, useful_flops=flops["useful"])
        entry["max_abs_difference"] = float(
            np.abs(np.array([row["ablated"] for row in results[name]]) - reference).max()
        )
        result["variants"][name] = entry
    return result


def unsorted_encoder(hooked, tokenizer, hooks):
    """The causal check's encoder before this version: input order, fixed batches, each trimmed."""
    def encode(captions):
        device = hooked.positional_embedding.device
        out = []
        with torch.no_grad():
            for start in range(0, len(captions), OLD_BATCH):
                tokens = tokenizer(list(captions[start:start + OLD_BATCH])).to(device)
                out.append(hooked.run_with_hooks(tokens, fwd_hooks=hooks, normalize=True).float().cpu())
        return torch.cat(out)
    return encode


def lengths_of(tower, tokenizer, captions) -> np.ndarray:
    return (tower.eot_positions(tokenizer(list(captions))) + 1).numpy()


def scheme_flops(tower, tokenizer, asked: list[list[str]], n_runs: int, directions) -> dict[str, float]:
    """Computed FLOPs of each variant on the caption lists the suite asks for, and the useful FLOPs."""
    from probing.features.batching import DEFAULT_TOKEN_BUDGET, token_batches

    layers = sorted(directions)

    def ablated(batch: int, length: int) -> float:  # one full run, then each ablation's tail
        tails = sum((tower.n_layers - layer) * harness.block_flops(tower, batch, length)
                    + harness.projection_flops(tower, batch) for layer in layers)
        return harness.text_forward_flops(tower, batch, length) + tails

    flops = {"hooked_per_layer": 0.0, "hooked_per_layer_sorted": 0.0, "ablated_text": 0.0, "useful": 0.0}
    seen: set[str] = set()
    for captions in asked:
        lengths = lengths_of(tower, tokenizer, captions)
        fixed = [np.arange(s, min(s + OLD_BATCH, len(captions))) for s in range(0, len(captions), OLD_BATCH)]
        flops["hooked_per_layer"] += (1 + n_runs) * harness.batched_flops(tower, lengths, fixed)
        flops["hooked_per_layer_sorted"] += (1 + n_runs) * harness.batched_flops(
            tower, lengths, token_batches(lengths, DEFAULT_TOKEN_BUDGET))
        missing = list(dict.fromkeys(c for c in captions if c not in seen))
        seen.update(missing)
        if missing:
            missing_lengths = lengths_of(tower, tokenizer, missing)
            flops["ablated_text"] += sum(ablated(len(b), int(missing_lengths[b].max()))
                                         for b in token_batches(missing_lengths, DEFAULT_TOKEN_BUDGET))
            flops["useful"] += sum(ablated(1, int(length)) for length in missing_lengths)
    return flops


def print_summary(record: dict) -> None:
    for kind, result in record["captions"].items():
        print(
            f"\n{kind}: {result['texts']} texts ({result['unique_texts']} distinct), "
            f"{result['lengths']['mean']:.1f} tokens on average; matmul {result['matmul']['gflops_per_s']:.1f} GFLOP/s"
        )
        harness.print_variants(result["variants"], "hooked_per_layer",
                               {"max diff": lambda entry: f"{entry['max_abs_difference']:.1e}"})

if __name__ == "__main__":
    main()
