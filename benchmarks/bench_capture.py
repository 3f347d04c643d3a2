"""Capture benchmark: every layer's pooled (EOT) state of many captions, by the toolkit and by what a
user would write instead, on real and synthetic captions.

    .venv/bin/python benchmarks/bench_capture.py [--captions 256] [--rounds 3] [--threads 1] [--device cpu]
    .venv/bin/python benchmarks/bench_capture.py --device cuda                       (on a GPU, bfloat16)

What is measured (defaults): a randomly initialised ViT-B-32 CLIP text tower (12 blocks, width 512,
8 heads, MLP 2048, context 77; speed does not depend on the weights), float32 on one pinned CPU
thread, or bfloat16 autocast on CUDA (`--device cuda`; without a GPU the run says so and stops).
Two caption sets of `--captions` each: real (drawn from NegBench's COCO MCQ captions) and synthetic
(the synthetic world's probing captions). Variants, on the same captions and model:

    encode_text_full   model.encode_text in batches of 128 in input order at the full context (77
                       tokens): one ordinary forward pass, the reference (it captures nothing)
    hooks_trimmed      plain torch forward hooks on the blocks (a pre-hook for the embedding output)
                       keeping each layer's EOT state; batches of 128 in input order, each trimmed
                       to its longest caption: what a user would write
    hooks_budget<B>    the same hooks on length-sorted batches of at most B tokens
    capture_sorted128  capture_pooled on length-sorted batches of 128 captions (before token budgets)
    capture_budget<B>  capture_pooled on length-sorted batches of at most B tokens (its default)
    matmul             a square float32 (CUDA: bfloat16) matrix product: the machine's rate

Protocol and columns: benchmarks/harness.py (warm-up, rounds interleaved in rotated order,
medians and spread). Per variant: captions/s; computed FLOPs (padding included, as torch's flop
counter counts them) and useful FLOPs (every caption at its own length); their rate as a share of
the matmul rate measured in the same rounds; and `max_abs_difference`, the largest difference of
its states from the last capture_budget's (all layers; encode_text_full: its final features against
the ones that capture's last layer gives), which checks that all variants compute the same thing.
Written to benchmarks/results/capture-<device>.json; scripts/bench_tables.py renders the README table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import harness  # noqa: E402

CCNEG_ROWS = 228_246  # CC-Neg as released (Singh et al.): image, caption and negated caption per row


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32", help="open_clip name or config JSON (random weights)")
    parser.add_argument("--captions", type=int, help="captions per set (default: 256 on CPU, 16384 on CUDA)")
    parser.add_argument("--batch-size", type=int, default=128, help="captions per batch of the fixed-size variants")
    parser.add_argument("--token-budgets", default="1280,2560", help="comma list of token budgets to time")
    harness.add_common_arguments(parser)
    harness.add_data_argument(parser)
    return parser.parse_args(argv)


def main(argv=None) -> Path:
    args = parse_args(argv)
    device = harness.setup(args)
    from probing.clip.hooked import HookedCLIPText
    from probing.clip.loading import load_clip
    from probing.clip.text_tower import TextTower

    n = args.captions or (16384 if device.type == "cuda" else 256)
    budgets = [int(b) for b in args.token_budgets.split(",") if b.strip()]
    model, _, tokenizer = load_clip(args.model, device=device)
    model.eval()
    tower = TextTower.from_model(model)
    hooked = HookedCLIPText(model)
    matmul = harness.MatmulRate(device)
    record = {"model": {"name": args.model, "layers": tower.n_layers, "width": tower.d_model, "heads": tower.n_heads,
                        "mlp": tower.blocks[0].mlp.c_fc.out_features, "context": tower.n_ctx, "weights": "random",
                        "dtype": "bfloat16 autocast" if device.type == "cuda" else "float32"},
              "matmul": matmul.describe(), "captions": {}}
    for kind, captions in (("negbench", harness.negbench_captions(n, args.seed, args.data_root)),
                           ("synthetic", harness.synthetic_captions(n, args.seed))):
        print(f"{kind}: {n} captions", file=sys.stderr, flush=True)
        record["captions"][kind] = measure(model, tower, hooked, tokenizer, captions, budgets, matmul, args, device)
    path = harness.write_record(args, "capture", device, record)
    print_summary(record)
    print(f"wrote {path}")
    return path


def measure(model, tower, hooked, tokenizer, captions, budgets, matmul, args, device) -> dict:
    from probing.features.batching import token_batches
    from probing.measure.capture import capture_pooled

    tokens = tokenizer(captions)
    lengths = (tower.eot_positions(tokens) + 1).numpy()
    size = args.batch_size
    fixed = [np.arange(start, min(start + size, len(captions))) for start in range(0, len(captions), size)]
    budgeted = {budget: token_batches(lengths, budget) for budget in budgets}
    # name -> (the batches it runs, trimmed, what it runs)
    plan = {"encode_text_full": (fixed, False, lambda: encode_text(model, tokens, fixed, device)),
            "hooks_trimmed": (fixed, True, lambda: hooks_capture(tower, tokens, fixed, device))}
    for budget, batches in budgeted.items():
        plan[f"hooks_budget{budget}"] = (batches, True, lambda b=batches: hooks_capture(tower, tokens, b, device))
    plan["capture_sorted128"] = (token_batches(lengths, None, size), True, lambda: capture_pooled(
        hooked, tokenizer, captions, token_budget=None, batch_size=size, progress=False))
    for budget, batches in budgeted.items():
        plan[f"capture_budget{budget}"] = (batches, True, lambda b=budget: capture_pooled(
            hooked, tokenizer, captions, token_budget=b, progress=False))
    outputs: dict[str, np.ndarray] = {}

    def kept(name, run):
        def timed():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                outputs[name] = run()
        return timed

    variants = {name: kept(name, run) for name, (_, _, run) in plan.items()}
    times = harness.interleaved({**variants, "matmul": matmul}, args.rounds, device)
    peak = matmul.flops / np.median(times["matmul"])
    useful = harness.useful_flops(tower, lengths)
    reference = outputs[f"capture_budget{budgets[-1]}"]
    final = final_features(hooked, reference, device)
    result = {"lengths": harness.length_summary(lengths),
              "matmul": harness.rate_entry(times["matmul"], matmul.flops, peak), "variants": {}}
    for name, (batches, trimmed, _) in plan.items():
        flops = harness.batched_flops(tower, lengths, batches, trimmed=trimmed)
        entry = harness.rate_entry(times[name], flops, peak, useful_flops=useful, items=len(captions))
        entry["batches"] = len(batches)
        entry["ccneg_captions_s"] = CCNEG_ROWS / entry["items_per_s"]
        compared = final if name == "encode_text_full" else reference
        entry["max_abs_difference"] = float(np.abs(outputs[name] - compared).max())
        result["variants"][name] = entry
    return result


def encode_text(model, tokens, batches, device) -> np.ndarray:
    """Final features of open_clip's own forward at the full context."""
    with torch.no_grad():
        return np.concatenate([model.encode_text(tokens[b].to(device)).float().cpu().numpy() for b in batches])


def hooks_capture(tower, tokens, batches, device) -> np.ndarray:
    """Every layer's EOT state with plain torch hooks on a trimmed forward: [n_layers + 1, n, d]."""
    out = np.zeros((tower.n_layers + 1, len(tokens), tower.d_model), dtype=np.float32)
    states: dict[int, torch.Tensor] = {}
    handles = [tower.blocks[0].register_forward_pre_hook(lambda module, args: states.__setitem__(0, args[0]))]
    handles += [block.register_forward_hook(lambda module, args, output, slot=i + 1: states.__setitem__(slot, output))
                for i, block in enumerate(tower.blocks)]
    try:
        with torch.no_grad():
            for index in batches:
                batch = tokens[index].to(device)
                tower.encode(batch, trim=True)
                rows, eot = torch.arange(len(index), device=device), tower.eot_positions(batch)
                for slot, resid in states.items():
                    out[slot, index] = resid[rows, eot].float().cpu().numpy()
    finally:
        for handle in handles:
            handle.remove()
    return out


def final_features(hooked, pooled: np.ndarray, device) -> np.ndarray:
    """Text features from the captured last layer: ln_final, then the projection."""
    with torch.no_grad():
        last = torch.from_numpy(np.ascontiguousarray(pooled[-1])).to(device)
        return hooked.tower.project(hooked.ln_final(last)).float().cpu().numpy()


def print_summary(record: dict) -> None:
    for kind, result in record["captions"].items():
        lengths = result["lengths"]
        print(f"\n{kind}: {lengths['n']} captions, {lengths['mean']:.1f} tokens on average (max {lengths['max']}); "
              f"matmul {result['matmul']['gflops_per_s']:.1f} GFLOP/s")
        harness.print_variants(result["variants"], "encode_text_full",
                               {"max diff": lambda entry: f"{entry['max_abs_difference']:.1e}"})

if __name__ == "__main__":
    main()
