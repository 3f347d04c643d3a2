"""Render the README's performance tables from the benchmarks' JSON records.

    python scripts/bench_tables.py                 print the tables (Markdown)

scripts/make_results.py puts them into the README's Performance section (its "performance" block).
Records: benchmarks/results/<benchmark>-<device>.json, as the scripts in benchmarks/ write them
(one per benchmark and device; a CUDA record, when there is one, gets its own tables with the GPU's name and date).
The pipeline record (`benchmarks/bench_pipeline.py`: measured throughput and the full CC-Neg pipeline's
estimated wall time) has a block of its own ("pipeline", `render_pipeline`).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
CAPTION_SETS = {"negbench": "NegBench captions", "synthetic": "synthetic captions"}


def load_records(folder: Path = RESULTS) -> dict[tuple[str, str], dict]:
    """(benchmark, device type) -> record."""
    records = {}
    for path in sorted(folder.glob("*.json")):
        record = json.loads(path.read_text())
        records[(record["benchmark"], record["machine"]["device"].split(":")[0])] = record
    return records


def render(records: dict[tuple[str, str], dict]) -> str:
    """All throughput tables, CPU first; a line saying that GPU figures are missing when there is no CUDA
    record. The pipeline estimate is rendered apart (`render_pipeline`)."""
    parts = []
    for device in ("cpu", "cuda"):
        for benchmark, table in (("capture", capture_table), ("causal", causal_table), ("train", train_table),
                                 ("synthetic", synthetic_table), ("build", build_table)):
            if (benchmark, device) in records:
                parts.append(table(records[(benchmark, device)]))
    if not any(device == "cuda" for _, device in records):
        parts.append("GPU (bfloat16) throughput has not been measured: no GPU was available. On one, "
                     "`python benchmarks/bench_capture.py --device cuda` and `python benchmarks/bench_train.py "
                     "--device cuda --model ViT-B-32`, then this script, add those tables.")
    return "\n\n".join(parts)


def _machine(record: dict) -> str:
    machine, arguments = record["machine"], record["arguments"]
    where = machine.get("gpu") or f"{machine.get('cpu') or 'CPU'}, {machine['torch_threads']} torch thread(s)"
    return (f"{machine['date']}, {where}, torch {machine['torch']}; median of {arguments['rounds']} interleaved rounds "
            f"after a warm-up, ± half their range")


def _model(record: dict) -> str:
    model = record["model"]
    return (f"`{model['name']}` text tower ({model['layers']} blocks, width {model['width']}, {model['heads']} heads, "
            f"context {model['context']}, {model['weights']} weights)")


def _rows(header: list[str], rows: list[list[str]], labels: int = 2) -> str:
    """A Markdown table; the first `labels` columns left-aligned, the numbers right-aligned."""
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < labels else "---:" for i in range(len(header))) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _pct(value: float) -> str:
    return f"{100 * value:.0f} %"


def _spread(entry: dict) -> str:
    return f"{entry['median_s']:.3g} s ± {_pct(entry['relative_spread'])}"


def _table(record: dict, what: str, base: str, columns: dict) -> str:
    """One row per caption set and variant; `columns`: header -> function of (entry, base entry)."""
    rows = []
    for kind, result in record["captions"].items():
        for name, entry in result["variants"].items():
            rows.append([CAPTION_SETS.get(kind, kind), f"`{name}`"]
                        + [cell(entry, result["variants"][base]) for cell in columns.values()])
    return _rows(["captions", what, *columns], rows)


SHARES = {"of matmul": lambda e, b: _pct(e["share_of_matmul_rate"]), "useful": lambda e, b: _pct(e["useful_fraction"])}


def _sets(record: dict) -> str:
    return "; ".join(f"{CAPTION_SETS.get(k, k)} of {r['lengths']['mean']:.1f} tokens on average (max "
                     f"{r['lengths']['max']}), matmul {r['matmul']['gflops_per_s']:.0f} GFLOP/s"
                     for k, r in record["captions"].items())


def capture_table(record: dict) -> str:
    differences = [e["max_abs_difference"] for r in record["captions"].values() for e in r["variants"].values()]
    n = next(iter(record["captions"].values()))["lengths"]["n"]
    columns = {"time": lambda e, b: _spread(e), "captions/s": lambda e, b: f"{e['items_per_s']:,.0f}",
               "x encode_text": lambda e, b: f"{b['median_s'] / e['median_s']:.2f}x", **SHARES}
    return (f"**Capture** of every layer's EOT state (`benchmarks/bench_capture.py`): {_model(record)}, "
            f"{record['model']['dtype']}; {n} captions per set: {_sets(record)}. {_machine(record)}. \"of matmul\": "
            f"computed FLOPs per second as a share of the {record['matmul']} rate measured in the same rounds; "
            f"\"useful\": the share of the computed FLOPs that is not padding. All variants agree to "
            f"{max(differences):.0e}.\n\n" + _table(record, "variant", "encode_text_full", columns))


def causal_table(record: dict) -> str:
    same = all(e["max_abs_difference"] == 0 for r in record["captions"].values() for e in r["variants"].values())
    texts = next(iter(record["captions"].values()))["texts"]
    columns = {"time": lambda e, b: _spread(e), "x before": lambda e, b: f"{b['median_s'] / e['median_s']:.2f}x",
               **SHARES}
    return (f"**Causal check** of `probe-layers` (`benchmarks/bench_causal.py`): {_model(record)}, "
            f"{record['layer_indices']} layer indices, the synthetic suite of {record['n_causal']} scenes ({texts:,} "
            f"texts): {_sets(record)}. {_machine(record)}. \"useful\": the FLOPs of running each caption once at its "
            "own length and each ablation from its layer on. "
            + ("Every variant gives the same metric values." if same else "Metric values differ between variants "
               "(max_abs_difference in the record).") + "\n\n" + _table(record, "variant", "hooked_per_layer", columns))


def train_table(record: dict) -> str:
    model = record["model"]
    caching = "; ".join(
        f"{CAPTION_SETS.get(k, k)} {r['toolkit_caching_s']:.1f} s" for k, r in record["captions"].items()
    )
    columns = {"samples/s": lambda e, b: f"{e['items_per_s']:.1f} ± {_pct(e['relative_spread'])}",
               "x open_clip": lambda e, b: f"{b['median_s'] / e['median_s']:.2f}x", **SHARES,
               "CC-Neg epoch": lambda e, b: f"{e['ccneg_epoch_s'] / 3600:.2f} h"}
    return (
        f"**Fine-tuning** (`benchmarks/bench_train.py`): {_model(record)}, {model['image_tower']} image tower at "
        f"{model['image_size']} px, {model['dtype']}; loss {record['loss']}, batch {record['batch_size']}, the front "
        f'half of the text tower trained; {_sets(record)}. {_machine(record)}. "useful": the FLOPs of the loss\'s '
        "forward and backward with every caption at its own length and image features given. The toolkit caches "
        f"image features once ({caching} for the benchmark's examples), included in its CC-Neg epoch (188,246 "
        "examples).\n\n" + _table(record, "variant", "openclip_locked", columns)
    )


def synthetic_table(record: dict) -> str:
    rows = [[name, _spread(entry), f"{entry['items_per_s']:,.0f}"] for name, entry in record["sets"].items()]
    return (f"**Synthetic world** (`benchmarks/bench_synthetic.py`): {record['n']:,} items per set at "
            f"{record['image_size']} px. {_machine(record)}.\n\n" + _rows(["set", "time", "items/s"], rows, labels=1))


def build_table(record: dict) -> str:
    """Where a step of the embedded build goes, and the most an exact speed-up could save."""
    parts = {"data": "batch preparation (scenes rendered, tensors, tokens)",
             "step": "one contrastive step, data included (as the build runs it)",
             "step_no_embedding": "the same step with the token embedding frozen",
             "warmup_step": "one image-tower warm-up step"}
    step = record["variants"]["step"]
    rows = [[f"`{name}`", label, _spread(record["variants"][name])] for name, label in parts.items()]
    return (f"**Embedded build** (`benchmarks/bench_build.py`): the default spec's steps ({record['model']}, batch "
            f"{record['batch_size']}). {_machine(record)}. A contrastive step computes {step['flops'] / 1e9:.1f} GFLOP "
            f"at {_pct(step['share_of_matmul_rate'])} of the {record['matmul']['shape']} matmul rate "
            f"({record['matmul']['gflops_per_s']:.0f} GFLOP/s); batch preparation is "
            f"{_pct(record['shares_of_step']['data'])} of it and the dense update of the 49408-row token embedding "
            f"{_pct(record['shares_of_step']['embedding_update'])}. Removing both entirely, the most a change that "
            f"keeps every floating-point sum (and so the shipped weights) could do, would make the build "
            f"{record['exact_speedup_bound']:.2f}x faster; estimated build "
            f"{record['estimated_build_s'] / 60:.1f} min before evaluation.\n\n"
            + _rows(["part", "what", "time"], rows))


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:,.1f} h" if seconds >= 3600 else f"{seconds / 60:,.1f} min"


def render_pipeline(records: dict[tuple[str, str], dict]) -> str:
    """The pipeline's measured throughput and estimated wall time, per device measured (CPU first)."""
    tables = [pipeline_table(records[("pipeline", device)]) for device in ("cpu", "cuda")
              if ("pipeline", device) in records]
    return "\n\n".join(tables) or "(not measured yet: `python benchmarks/bench_pipeline.py`)"


def pipeline_table(record: dict) -> str:
    """Measured throughput, then each phase of the CC-Neg pipeline as items x seconds per item."""
    sizes, estimate, load = record["sizes"], record["estimate"], record["load_average"]
    measured = _rows(["measurement", "unit", "items per run", "time per run", "per second"],
                     [[f"`{name}`", e["unit"], f"{e['items']:,}", _spread(e), f"{e['items_per_s']:,.2f}"]
                      for name, e in record["measured"].items()])
    on_gpu = record["machine"]["device"].startswith("cuda")
    gpu_cell = [] if on_gpu else [estimate["gpu"]]  # a CPU record: the GPU column says it was not measured
    rows = []
    for phase, entry in estimate["phases"].items():
        for part in entry["parts"]:
            rows.append([phase, part["what"], f"{part['items']:,}",
                         f"{part['s_per_item']:.4g} s (`{part['measurement']}`)", _duration(part["seconds"])]
                        + [""] * len(gpu_cell))
        rows.append([f"**{phase}**", "", "", "", f"**{_duration(entry['seconds'])}**"] + gpu_cell)
    rows.append(["**total**", "", "", "", f"**{_duration(estimate['total_s'])}**"] + gpu_cell)
    where = record["machine"].get("gpu") or "this CPU"
    header = ["phase", "part", "items", "seconds per item", f"wall time on {where}"] + ["one GPU"] * len(gpu_cell)
    table = _rows(header, rows, labels=2)
    p = sizes["probe"]
    gpu = ("" if on_gpu else
           f"\n\nOne GPU: {estimate['gpu']}; no GPU figure is derived here, from peak-rate ratios or otherwise. "
           "`python benchmarks/bench_pipeline.py --device cuda` is the way to measure it on one (that path has "
           "not run: no GPU was available).")
    front = (f"Fine-tuning the front half of the text tower instead (`train_step_front`, a plan of the kind "
             f"`probe-layers` selects): {_duration(estimate['front_plan_finetuning_s'])}. ")
    return (f"**CC-Neg pipeline** (`benchmarks/bench_pipeline.py`): {_model(record)}, {record['model']['image_tower']} "
            f"image tower, {record['model']['dtype']}, through the toolkit's own paths on the shared COCO images with "
            f"a caption and a negated caption per image. {_machine(record)}. The machine is shared (load average "
            f"{load['before'][0]:.2f} before, {load['after'][0]:.2f} after, on {load['cpu_count']} cores): the times "
            f"are upper bounds. `probe_fit` is timed in {record['arguments']['probe_rounds']} run(s) of its own after "
            f"the others.\n\n{measured}\n\nEstimated wall time of the whole pipeline at CC-Neg's size "
            f"({sizes['train_rows']:,} training rows, {sizes['eval_rows']:,} evaluation rows, "
            f"{sizes['captions_per_row']} captions each): `probe-layers` at its defaults ({p['max_examples']:,} "
            f"examples, {p['null_models']} null models, {p['seeds']} probe seeds, {p['n_sensitivity']} sensitivity "
            f"and {p['n_causal']} causal examples, "
            f"{p['grad_batches']} gradient batches of {p['grad_batch_size']}, {p['null_grad_batches']} on each null "
            f"model, for the losses CC-Neg feeds: "
            f"{', '.join(p['losses_fed'])}), then the "
            f"`{sizes['recipe']}` recipe ({sizes['epochs']} epochs, batch {sizes['batch_size']}; the seconds per "
            f"example were measured at batch {record['arguments']['batch_size']}), then CC-Neg accuracy. Each row is "
            f"items x seconds per item.\n\n{table}\n\n{front}Not included: {'; '.join(estimate['not_covered'])}." + gpu)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    records = load_records(args.results)
    print(render(records) + "\n\n" + render_pipeline(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
