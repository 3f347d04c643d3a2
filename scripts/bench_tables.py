"""Render the README's performance tables from the benchmarks' JSON records.

    python scripts/bench_tables.py                 print the tables (Markdown)

scripts/make_results.py puts them into the README's Performance section (its "performance" block).
Records: benchmarks/results/<benchmark>-<device>.json, as the scripts in benchmarks/ write them
(one per benchmark and device; a CUDA record, when there is one, gets its own tables with the GPU's name and date).
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
    """All tables, CPU first; a line saying that GPU figures are missing when there is no CUDA record."""
    parts = []
    for device in ("cpu", "cuda"):
        for benchmark, table in (("capture", capture_table), ("causal", causal_table), ("train", train_table),
                                 ("synthetic", synthetic_table)):
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    print(render(load_records(args.results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
