"""The ablation's written outputs.

Outputs: ablation_table.md, ablation_summary.json / .csv (per variant and metric: mean and 95 %
Student-t interval over seeds, probing.measure.probes.mean_ci), ablation.png / .pdf (see
analysis.ablation.figures).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from analysis.ablation.aggregate import summary_rows
from analysis.ablation.figures import ablation_figure
from analysis.ablation.validity import format_ratio, frontier_place, headline, next_point, with_interval
from analysis.report.figures import save_figures
from probing.io import atomic_write_json, atomic_write_text
from probing.measure.tidy import LONG_COLUMNS, write_long_table

TABLE_FILE = "ablation_table.md"
SUMMARY_JSON = "ablation_summary.json"
SUMMARY_CSV = "ablation_summary.csv"
FIGURE_STEM = "ablation"

# (metric key, column label): the table's and the figure's headline numbers
HEADLINE: tuple[tuple[str, str], ...] = (
    ("object/scope_accuracy", "scope, held-out objects"),
    ("template/scope_accuracy", "scope, held-out templates"),
    ("cue/scope_accuracy", "scope, held-out cues"),
    ("object/ccneg_accuracy", "CC-Neg-style"),
    ("object/absence_accuracy", "absence"),
    ("object/image_to_text_R@1_among_100", "I→T R@1/100"),
    ("object/text_to_image_R@1_among_100", "T→I R@1/100"),
    ("object/zero_shot_affirmative", "zero-shot objects"),
)


def _cell(value: dict[str, float] | None, digits: int = 3) -> str:
    """"0.512 ± 0.031" (half-width of the 95 % t-interval); a single seed has no interval."""
    if value is None:
        return "–"
    if value["n"] < 2:
        return f"{value['mean']:.{digits}f} (1 seed)"
    return f"{value['mean']:.{digits}f} ± {(value['high'] - value['low']) / 2:.{digits}f}"


def _blocks_text(blocks: Sequence[int]) -> str:
    """[0, 1, 2, 7] -> "0–2,7"."""
    if not blocks:
        return "none"
    pieces = []
    start = previous = blocks[0]
    for block in list(blocks[1:]) + [None]:
        if block is not None and block == previous + 1:
            previous = block
            continue
        pieces.append(str(start) if start == previous else f"{start}–{previous}")
        if block is not None:
            start = previous = block
    return ",".join(pieces)


def heldout_cues(summary: dict[str, Any]) -> list[str]:
    """The held-out cue words that have a per-cue scope accuracy in the summary."""
    cues = set()
    for entry in summary["variants"]:
        for key in entry["metrics"]:
            if key.startswith("cue/scope_accuracy/cue="):
                cues.add(key[len("cue/scope_accuracy/cue="):])
    return sorted(cues)


def markdown_table(summary: dict[str, Any], *, cost: bool = True) -> str:
    """The ablation as Markdown: headline metrics, scope per held-out cue, and (with `cost`) train time."""
    header = summary["header"]
    loss = header["loss"] + (f" {json.dumps(header['loss_kwargs'])}" if header["loss_kwargs"] else "")
    lines = [
        f"## Layer ablation (synthetic world; {header['model']})",
        "",
        f"Synthetic data, not a real benchmark. Loss {loss}; {header['steps']} steps, batch {header['batch_size']}, "
        f"lr {header['lr']:g} ({header['warmup_steps']} warm-up steps, then cosine); the same "
        f"{header['n_train']} training examples for every run. Extras trained in every variant: "
        f"{', '.join(header['extras']) or 'none'} (variants differ only in blocks). Each cell: mean ± half-width "
        f"of the 95 % t-interval over seeds {', '.join(map(str, header['seeds']))}; {header['eval_n']} test "
        "items per held-out suite. Scope accuracy is the shortcut-proof negation metric (chance 0.50).",
        "",
    ]
    if header.get("selected_plan"):
        lines += [f"Selected plan (probe-layers): {header['selected_plan']}; the variant 'selected' trains its blocks "
                  "(with its learning-rate weights, if any) and the extras above, like every other variant.", ""]
    lines += [f"- {note}" for note in summary["notes"]] + ([""] if summary["notes"] else [])
    columns = ["variant", "blocks", "seeds"] + [label for _, label in HEADLINE]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for entry in summary["variants"]:
        cells = [entry["variant"], _blocks_text(entry["blocks"]), str(len(entry["seeds"]))]
        cells += [_cell(entry["metrics"].get(key)) for key, _ in HEADLINE]
        lines.append("| " + " | ".join(cells) + " |")
    cues = heldout_cues(summary)
    if cues:
        lines += ["", "### Scope accuracy per held-out cue (cues never seen in fine-tuning)", "",
                  "| variant | " + " | ".join(cues) + " |", "|" + "---|" * (len(cues) + 1)]
        for entry in summary["variants"]:
            cells = [_cell(entry["metrics"].get(f"cue/scope_accuracy/cue={cue}")) for cue in cues]
            lines.append(f"| {entry['variant']} | " + " | ".join(cells) + " |")
    if cost:
        lines += [
            "",
            "### Cost",
            "",
            "| variant | trained parameters | train seconds | final loss |",
            "|---|---|---|---|",
        ]
        for entry in summary["variants"]:
            metrics = entry["metrics"]
            lines.append(f"| {entry['variant']} | {entry['trained_parameters']:,} | "
                         f"{_cell(metrics.get('train_seconds'), 1)} | {_cell(metrics.get('final_loss'), 4)} |")
    return "\n".join(lines) + "\n"


def validity_markdown(results: dict, sentences: list[str], breakdown: dict | None = None) -> str:
    """The predictive-validity tables: per target, rho of each kind of evidence with the single-block gains (and of
    the target's gains with scope's), and the selected plan against the best plan of its size and of any size, with
    its place on the frontier; then the multiple choice by answer type (`breakdown`), not judged."""
    mean = headline(results)
    names = list(mean.rho)
    lines = ["## Did the evidence predict the ablation?", "", " ".join(sentences), "",
             "| target | " + " | ".join(f"rho {n}" for n in names) + " | rho with scope's gains |",
             "|" + "---|" * (len(names) + 2)]
    for name, v in {**results, **(breakdown or {})}.items():
        cells = [with_interval(v.rho[n], v.rho_low[n], v.rho_high[n], missing="-") for n in names]
        cells.append(with_interval(v.rho_headline, v.rho_headline_low, v.rho_headline_high, missing="-"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| target | selected gain | best equal-size plan | best gain | ratio | best plan of any size "
              "| its gain | ratio | on the frontier | next larger plan on the frontier |", "|" + "---|" * 10]
    for name, v in results.items():
        lines.append(f"| {name} | {v.selected_gain:+.3f} | {v.best_plan} | {v.best_gain:+.3f} | {format_ratio(v)} "
                     f"| {v.best_any or '-'} | {v.best_any_gain:+.3f} | {format_ratio(v, any_size=True)} "
                     f"| {frontier_place(v) if v.plans else '-'} | {next_point(v) if v.plans else '-'} |")
    if breakdown:
        lines += ["", "The multiple choice by its correct answer's type (a breakdown, not judged): the selected "
                  "plan's gain and every single block's.", "",
                  "| answer type | selected gain [95% CI] | single-block gains (block 0 first) |", "|---|---|---|"]
        for v in breakdown.values():
            plan = v.plans.get("selected", {})
            interval = f" [{plan['low']:+.3f}, {plan['high']:+.3f}]" if plan else ""
            lines.append(f"| {v.target.label} | {v.selected_gain:+.3f}{interval} | "
                         + " ".join(f"{g:+.2f}" for g in v.gains) + " |")
    return "\n".join(lines) + "\n"


def long_rows(summary: dict[str, Any], runs: Sequence[dict[str, Any]] = ()) -> pd.DataFrame:
    """The study in probing.measure.tidy's long format: every metric of every run (tower = the variant, component =
    the blocks it trained, seed = the run's seed), and each variant's mean over seeds with its 95 % t-interval
    (seed empty)."""
    blocks = {entry["variant"]: " ".join(map(str, entry["blocks"])) or "none" for entry in summary["variants"]}
    rows = [{"tower": run["variant"], "component": " ".join(map(str, run.get("blocks", []))) or "none",
             "position": "synthetic", "metric": metric, "value": value, "seed": int(run["seed"]), "n": None}
            for run in runs for metric, value in sorted(run["metrics"].items())]
    rows += [{"tower": entry["variant"], "component": blocks[entry["variant"]], "position": "synthetic",
              "metric": metric, "value": value["mean"], "ci_low": value["low"], "ci_high": value["high"],
              "n": value["n"]} for entry in summary["variants"] for metric, value in sorted(entry["metrics"].items())]
    return pd.DataFrame(rows, columns=list(LONG_COLUMNS))


def write_outputs(out_dir: str | Path, summary: dict[str, Any], runs: Sequence[dict[str, Any]] = ()
                  ) -> dict[str, Path]:
    """ablation_table.md, ablation_summary.json / .csv, ablation_long.csv (every number, probing.measure.tidy's
    long format) and the figure (PNG + PDF)."""
    out_dir = Path(out_dir)
    outputs = {"table": atomic_write_text(out_dir / TABLE_FILE, markdown_table(summary)),
               "summary_json": atomic_write_json(out_dir / SUMMARY_JSON, summary)}
    rows = summary_rows(summary)
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=["variant", "blocks", "seeds", "metric", "n", "mean", "ci_low", "ci_high"]
    )
    writer.writeheader()
    writer.writerows(rows)
    outputs["summary_csv"] = atomic_write_text(out_dir / SUMMARY_CSV, buffer.getvalue())
    outputs.update(write_long_table(out_dir / "ablation_long", long_rows(summary, runs)))
    if summary["variants"]:
        png, pdf = save_figures({FIGURE_STEM: ablation_figure(summary)}, out_dir, dpi=300)[FIGURE_STEM]
        outputs.update(figure_png=png, figure_pdf=pdf)
    return outputs
