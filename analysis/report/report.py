"""The layer-selection report: report.md (plain sentences, figures, tables) and report.json (every number).

The sentences are computed from the selection (its null-calibrated evidence, decision and
stability) and the measurements, never written by hand: which blocks were chosen and why, how
stable that choice is, what each kind of evidence shows beyond the null models (randomly
initialised towers of the same architecture), and whether the evidence favours front layers at
all. A claim such as "the evidence favours front layers" is made only when the evidence beyond the
null models supports it; otherwise the report says the evidence is not there.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from analysis.planning.selection import Selection, describe_blocks
from probing.io import atomic_write_json, atomic_write_text

COMPONENT_WORDS = {"probe": "held-out probes", "sensitivity": "edit sensitivity", "gradnorm": "gradient norms",
                   "patching": "activation patching"}
FRONT_FAVOURED = 0.6  # the front half holds at least this share of the evidence
BACK_FAVOURED = 0.4
FIGURE_CAPTIONS = {
    "probe_accuracy": "Probe accuracy per layer: held-out splits (cue, object, template; mean) against the "
    "in-distribution split, control labels and the null models (randomly initialised text towers: "
    "mean and range). Shaded: selected blocks.",
    "selectivity": "Selectivity (task minus control accuracy) per layer; band from the two confidence intervals.",
    "sensitivity": "How far a presence negation, an absence negation and a same-size control edit move the "
    "caption's representation, relative to the distance between different captions; null models grey.",
    "gradnorms": "Relative gradient norm ||g||/||w|| per block and component under each loss; selected blocks "
    "outlined.",
    "evidence": "Each component's per-block excess over the null models with its 95% interval and the family-wise "
    "threshold (filled = significant); below, the combined score (orange = selected) and how often each "
    "block is selected over bootstrap replicates.",
    "patching_negation": "Activation patching on negated / affirmative caption pairs: the share of the image-grounded "
    "gap restored (denoising) per block and token role, for the residual stream, attention and "
    "MLP outputs (0 = corrupted run, 1 = clean run).",
    "patching_scope": "Activation patching on scope minimal pairs ('A and no B' / 'B and no A'), as above.",
    "heads": "Per-head patching effect, and attention from the EOT token and from the negated noun to the cue.",
    "lens": "Joint-space lens: each layer's EOT state through the final LayerNorm and projection (plain), and through "
    "one affine map per layer fitted on training captions (tuned): accuracy if the tower stopped there.",
    "steering": "Training-free steering: the change in each metric when alpha x a negation direction is added at "
    "one layer (or every layer), on held-out data.",
}


def _blocks_phrase(blocks) -> str:
    blocks = list(blocks)
    return f"block {blocks[0]}" if len(blocks) == 1 else f"blocks {describe_blocks(blocks)}"


def _z(z: float) -> str:
    """A block's t statistic, or why there is none (the null models do not differ there)."""
    return "untested" if np.isnan(z) else f"{z:.1f}"


def _pct(x: float, digits: int = 0) -> str:
    return f"{100 * x:.{digits}f}%"


def summary_sentences(measurements, selection: Selection) -> list[str]:
    """Plain sentences: the plan (or why there is none), its stability, and each kind of evidence."""
    sentences = [_plan_sentence(selection, measurements.n_layers), _stability_sentence(selection)]
    for component in selection.evidence.components.values():
        sentences += _component_sentences(component, selection)
    sentences.append(_front_sentence(selection))
    sentences += _causal_sentences(measurements)
    sentences += data_sentences(measurements)
    return [s for s in sentences if s]


MEASUREMENT_WORDS = {"probes": "the probes", "sensitivity": "edit sensitivity", "gradnorms": "the gradient norms",
                     "causal": "the causal check", "patching": "patching evidence"}


def data_sentences(measurements) -> list[str]:
    """Which data each measurement ran on (measurements.meta["data"], probing.measure.layers): one sentence per
    data source, naming the measurements that used it."""
    record = measurements.meta.get("data") or {}
    groups: dict[str, list[str]] = {}
    for measurement, data in record.items():
        groups.setdefault(data.get("sentence") or data.get("source") or data.get("kind", "?"), []).append(measurement)
    sentences = []
    for sentence, names in groups.items():
        words = [MEASUREMENT_WORDS.get(name, name) for name in names]
        listed = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
        sentences.append(f"Data: {listed} ran on {sentence}.")
    control = (record.get("sensitivity") or {}).get("control_edit")
    if control:
        sentences.append(f"The control edit of sensitivity: {control}.")
    for row in file_usage(measurements):
        used = [f"{FILE_WORDS[m]} {row[m]}" for m in FILE_MEASUREMENTS if row.get(m)]
        text = (f"File {row['name']} ({row['kind']}, {row['rows']:,} rows read): "
                + ("; ".join(used) if used else "used by no measurement"))
        if row["not_used"]:
            text += "; not used: " + "; ".join(row["not_used"])
        sentences.append(text + ".")
    return sentences


FILE_MEASUREMENTS = ("probes", "sensitivity", "gradnorms", "causal", "patching")
FILE_WORDS = {**MEASUREMENT_WORDS, "patching": "patching"}


def file_usage(measurements) -> list[dict]:
    """Per real data file (measurements.meta["data_files"], analysis.pipeline): its kind, the rows read and, per
    measurement, how many of its rows it used (text for a sentence or a table cell), and what it gave nothing to."""
    files = measurements.meta.get("data_files") or {}
    record = measurements.meta.get("data") or {}
    rows = []
    for source, info in files.items():
        row = {"source": source, "name": Path(source).name, "kind": info.get("kind", "?"), "rows": info.get("rows", 0),
               "not_used": []}
        probes = (record.get("probes") or {}).get("files") or {}
        parts = [f"{task} {entry[source]['rows']:,} rows ({entry[source]['captions']:,} captions)"
                 for task, entry in probes.items() if source in entry]
        row["probes"] = ", ".join(parts)
        for measurement in ("sensitivity", "gradnorms", "causal"):
            n = ((record.get(measurement) or {}).get("files") or {}).get(source)
            row[measurement] = f"{n:,} rows" if n else ""
        patching = info.get("patching") or {}
        row["patching"] = ", ".join(f"{kind} pairs of {n:,} rows" for kind, n in patching.items())
        refused = info.get("refused") or {}
        reasons = list(dict.fromkeys(refused.values()))
        row["not_used"] += [f"{', '.join(m for m, r in refused.items() if r == why)}: {why}" for why in reasons]
        if info.get("images_skipped"):
            row["not_used"].append(f"{info['images_skipped']:,} rows in the image measurements (image not found)")
        rows.append(row)
    return rows


def _plan_sentence(selection: Selection, n_layers: int) -> str:
    plan, decision = selection.plan, selection.decision
    n_null = max((c.n_null for c in selection.evidence.components.values()), default=0)
    if not plan.blocks:
        return (f"No layer plan: {decision.reason} ({n_null} null models, family-wise alpha "
                f"{selection.evidence.config.alpha:g} per component). The plan file names no blocks.")
    extras = [name for name, on in (("the token and positional embeddings", plan.train_embeddings),
                                    ("the final LayerNorm", plan.train_ln_final),
                                    ("the text projection", plan.train_projection),
                                    ("the logit scale", plan.train_logit_scale)) if on]
    text = f"The layer plan trains text {_blocks_phrase(plan.blocks)} of {n_layers}: {decision.reason}"
    if decision.rule == "lead":
        text += f" (the block holds {_pct(decision.share_of_chosen, 1)} of the null-calibrated evidence)"
    else:
        text += f" ({_pct(decision.share_of_chosen, 1)} of it"
        if decision.share_of_next_shorter is not None:
            text += f"; the best run one block shorter holds {_pct(decision.share_of_next_shorter, 1)}"
        text += ")"
    if extras:
        text += ", plus " + (", ".join(extras[:-1]) + " and " + extras[-1] if len(extras) > 1 else extras[0])
    if plan.lr_weights:
        low = min(plan.lr_weights, key=plan.lr_weights.get)
        text += f"; learning rates scale per block from 1.0 down to {plan.lr_weights[low]:.2f} (block {low})"
    return text + "."


def _stability_sentence(selection: Selection) -> str:
    if selection.evidence.replicates is None:
        return ""
    stable = [b for b, f in enumerate(selection.stability) if f >= 0.5]
    over = (f"{len(selection.evidence.replicates)} bootstrap replicates (test items, captions, gradient batches and "
            "null towers resampled)")
    if not selection.plan.blocks:
        return (f"On {over}, the rule selects nothing in {_pct(selection.agreement)} of them"
                + (f"; {_blocks_phrase(stable)} would be chosen in at least half." if stable else "."))
    if selection.decision.rule == "lead":
        return (f"Over {over} the shortest run holding the evidence holds block {selection.plan.blocks[0]} in "
                f"{_pct(selection.agreement)} of them; "
                + ("blocks it holds in at least half: " + describe_blocks(stable) if stable else
                   "it holds no block in half of them") + ".")
    text = (f"Over {over} the rule picks exactly this plan in {_pct(selection.agreement)} of them; "
            + ("blocks chosen in at least half: " + describe_blocks(stable) if stable else
               "no block is chosen in half of them") + ".")
    if selection.agreement < 0.5 and stable != list(selection.plan.blocks):
        text += (" The plan is unstable: most replicates choose other blocks than the plan; weigh the blocks they "
                 "choose and the plan's single blocks against it before training (`ablate-layers --variants "
                 "frozen,selected,sweep`): in the validation study, windows around the replicates' blocks beat such "
                 "a plan on the held-out `middle` model but not on `frontfrozen`, where single blocks beat both "
                 "(docs/VALIDATION.md).")
    return text


def _component_sentences(component, selection: Selection) -> list[str]:
    name, excess = component.name, np.asarray(component.excess)
    significant = [b for b, s in enumerate(component.significant) if s and excess[b] > 0]
    words = COMPONENT_WORDS.get(name, name)
    unit = {"probe": ("points", 100.0), "sensitivity": ("caption distances", 1.0),
            "gradnorm": ("points of the gradient share", 100.0)}.get(name, ("", 1.0))
    lowest = int(np.argmin(excess))
    if not significant:
        best = int(np.argmax(excess))
        text = (f"{words.capitalize()} ({component.basis}): no block exceeds the {component.n_null} null models "
                f"beyond what random towers differ among themselves (largest excess {excess[best] * unit[1]:+.1f} "
                f"{unit[0]} at block {best}, z = {_z(component.z[best])} against a family-wise threshold of "
                f"{component.critical:.1f}), so they add no evidence")
    else:
        best = max(significant, key=lambda b: excess[b])
        text = (f"{words.capitalize()} ({component.basis}) exceed the {component.n_null} null models significantly at "
                f"{_blocks_phrase(significant)} (largest at block {best}: {excess[best] * unit[1]:+.1f} {unit[0]}, 95% "
                f"interval {component.low[best] * unit[1]:+.1f} to {component.high[best] * unit[1]:+.1f}, z = "
                f"{_z(component.z[best])} against {component.critical:.1f})")
    if excess[lowest] < 0 and component.z[lowest] < -component.critical:
        text += (f"; at block {lowest} the model adds {-excess[lowest] * unit[1]:.1f} {unit[0]} less than random "
                 "towers do")
    sentences = [text + "."]
    if name == "gradnorm":
        null_front = float(np.sum(component.null_mean[: len(component.null_mean) // 2]))
        sentences.append(
            f"Random towers themselves put {_pct(null_front)} of their gradient norm on the front half: "
            "raw gradient norms are front-loaded by the architecture, which is why only the excess counts."
        )
    return sentences


def _front_sentence(selection: Selection) -> str:
    combined = selection.evidence.combined
    if sum(combined) <= 0:
        return ("The evidence does not favour front, middle or back layers: none of it survives the comparison "
                "with the null models.")
    n_front = len(combined) // 2
    share = float(sum(combined[:n_front]))
    used = " and ".join(COMPONENT_WORDS.get(c, c) for c in selection.evidence.weights)
    where = (f"The front half (blocks {describe_blocks(range(n_front))}) holds {_pct(share)} of the evidence "
             f"beyond the null models ({used})")
    if share >= FRONT_FAVOURED:
        return where + ": the evidence favours front layers."
    if share <= BACK_FAVOURED:
        return where + ": the evidence does NOT favour front layers; it sits in the back half."
    return where + ": the evidence is spread about evenly and does not single out the front layers."


def _causal_sentences(measurements) -> list[str]:
    rows = measurements.causal
    parts = []
    for metric, label in (("ccneg_accuracy", "CC-Neg-style accuracy"), ("scope_accuracy", "scope accuracy"),
                          ("absence_accuracy", "absence accuracy (true against false negated caption)"),
                          ("mcq_accuracy/template=negative", "MCQ accuracy on negated answers"),
                          ("mcq_absence_accuracy", "MCQ true against false negated option"),
                          ("valse_accuracy", "VALSE existence accuracy")):
        chosen = rows[rows.metric == metric]
        if not chosen.empty:
            worst = chosen.loc[chosen.change.abs().idxmax()]
            parts.append(f"{label} by at most {worst.change:+.3f} (layer {int(worst.layer)})")
    if not parts:
        return []
    return ["Projecting the negation probe direction out of the residual stream changes " + " and ".join(parts) + "."]


# --- files ------------------------------------------------------------------------------------

def write_report(out_dir: str | Path, measurements, selection: Selection, *,
                 figures: Mapping[str, list[Path]] | None = None, model_info: Mapping[str, Any] | None = None,
                 embedded_metrics: Mapping[str, Any] | None = None, run_info: Mapping[str, Any] | None = None,
                 extra_sentences: list[str] | None = None) -> dict[str, Path]:
    """Write report.md and report.json into `out_dir` (atomically); return both paths."""

    out_dir = Path(out_dir)
    sentences = summary_sentences(measurements, selection) + list(extra_sentences or [])
    relative = {name: [str(Path(p).relative_to(out_dir)) if Path(p).is_relative_to(out_dir) else str(p) for p in paths]
                for name, paths in (figures or {}).items()}
    payload = {"summary": sentences, "model": dict(model_info or {}), "plan": selection.plan.to_dict(),
               "decision": dataclasses.asdict(selection.decision), "stability": selection.stability,
               "agreement": selection.agreement, "evidence": selection.evidence.to_dict(),
               "embedded_metrics": dict(embedded_metrics) if embedded_metrics else None,
               "figures": relative, "run": json.loads(json.dumps(dict(run_info or {}), default=str))}
    json_path = atomic_write_json(out_dir / "report.json", payload)
    md_path = atomic_write_text(out_dir / "report.md", markdown(sentences, selection, relative, measurements,
                                                                model_info or {}, embedded_metrics, run_info or {}))
    return {"markdown": md_path, "json": json_path}


def markdown(sentences: list[str], selection: Selection, figures: Mapping[str, list[str]], measurements,
             model_info: Mapping, embedded_metrics: Mapping | None, run_info: Mapping) -> str:
    plan = selection.plan
    lines = ["# Where to fine-tune: layer selection report", ""]
    if model_info:
        lines += ["Model: " + ", ".join(f"{k} `{v}`" for k, v in model_info.items() if v is not None), ""]
    lines += ["## Summary", "", " ".join(sentences), "", "## Layer plan", ""]
    if plan.blocks:
        lines += [f"`{plan.describe()}` (written to `layer_plan.json`; pass it to `finetune-layers --plan`).", ""]
    else:
        lines += [f"No blocks: {selection.decision.reason}. `layer_plan.json` names no blocks and says why.", ""]
    lines += _block_table(selection)
    for name, paths in figures.items():
        png = next((p for p in paths if p.endswith(".png")), paths[0])
        pdf = next((p for p in paths if p.endswith(".pdf")), None)
        lines += [f"![{name}]({png})", "", FIGURE_CAPTIONS.get(name, name) + (f" ([PDF]({pdf}))" if pdf else ""), ""]
    if embedded_metrics:
        lines += ["## Embedded model (held-out synthetic metrics recorded when it was built)", "",
                  "| metric | value |", "|---|---|"]
        lines += [
            f"| {k} | {v:.3f} |" for k, v in embedded_metrics.items() if isinstance(v, (int, float)) and "/" not in k
        ]
        lines.append("")
    notes = list(selection.evidence.notes) + [f"{k}: {v}" for k, v in (measurements.meta.get("skipped") or {}).items()]
    notes += list(run_info.get("notes", []))
    record = measurements.meta.get("data") or {}
    if record:
        lines += ["## Data", "", "| measurement | data | control edit |", "|---|---|---|"]
        lines += [f"| {MEASUREMENT_WORDS.get(name, name)} | {_cell(data.get('sentence') or data.get('source'))} | "
                  f"{_cell(data.get('control_edit', '')) if name == 'sensitivity' else ''} |"
                  for name, data in record.items()]
        lines.append("")
    usage = file_usage(measurements)
    if usage:
        lines += ["Rows of each file each measurement used:", "",
                  "| file | kind | rows read | " + " | ".join(FILE_WORDS[m] for m in FILE_MEASUREMENTS)
                  + " | not used |", "|---" * (4 + len(FILE_MEASUREMENTS)) + "|"]
        lines += [f"| {_cell(row['name'])} | {row['kind']} | {row['rows']:,} | "
                  + " | ".join(_cell(row[m]) or "-" for m in FILE_MEASUREMENTS)
                  + f" | {_cell('; '.join(row['not_used']))} |" for row in usage]
        lines.append("")
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    lines += ["Every number behind this report is in `report.json` and `measurements.json` (CSV tables and the "
              "per-item values in `items.npz` beside them).", ""]
    return "\n".join(lines)


def _cell(text) -> str:
    return str(text or "").replace("|", "\\|").replace("\n", " ")


def _block_table(selection: Selection) -> list[str]:
    evidence = selection.evidence
    if not evidence.components:
        return []
    names = list(evidence.components)
    header = ["block", "selected", "stability", "combined", *[f"{n} excess (z)" for n in names]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for b in range(evidence.n_layers):
        cells = [str(b), "yes" if b in selection.plan.blocks else "", f"{selection.stability[b]:.2f}",
                 f"{evidence.combined[b]:.3f}"]
        for name in names:
            c = evidence.components[name]
            cells.append(f"{c.excess[b]:+.3f} ({_z(c.z[b])}{'*' if c.significant[b] else ''})")
        lines.append("| " + " | ".join(cells) + " |")
    return lines + ["", "\\* significant beyond the null models (family-wise alpha "
                    f"{evidence.config.alpha:g}; threshold z = " + ", ".join(
                        f"{n} {evidence.components[n].critical:.1f}" for n in names) + ")", ""]
