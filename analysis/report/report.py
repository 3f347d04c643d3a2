"""The layer-selection report: report.md (plain sentences, figures, tables) and report.json (every number).

The sentences are computed from the plan's recorded evidence and the measurements, never written
by hand: which blocks were chosen and by which rule, the numbers that decided it, what each kind
of evidence says, and whether the evidence favours the front layers at all.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from analysis.selection import describe_blocks

COMPONENT_WORDS = {"probe": "held-out probes", "gradnorm": "gradient norms", "sensitivity": "sensitivity"}
FRONT_FAVOURED = 0.6  # the front half holds at least this share of the evidence
BACK_FAVOURED = 0.4
FIGURE_CAPTIONS = {
    "probe_accuracy": "Probe accuracy per layer: held-out splits (cue, object, template; mean) against the "
                      "in-distribution split, control labels and the random-weights model. Shaded: selected blocks.",
    "selectivity": "Selectivity (task minus control accuracy) per layer; band from the two confidence intervals.",
    "sensitivity": "How far a presence negation, an absence negation and a same-size control edit move the "
                   "caption's representation, relative to the distance between different captions.",
    "gradnorms": "Relative gradient norm ||g||/||w|| per block and component under each loss; selected blocks outlined.",
    "block_scores": "The combined per-block score the rule used (bars; orange = selected) and its components' shares.",
}


def _blocks_phrase(blocks) -> str:
    blocks = list(blocks)
    return f"block {blocks[0]}" if len(blocks) == 1 else f"blocks {describe_blocks(blocks)}"


def _pct(x: float, digits: int = 0) -> str:
    return f"{100 * x:.{digits}f}%"


def _as_dict(measurements) -> dict:
    return dict(measurements) if isinstance(measurements, Mapping) else dataclasses.asdict(measurements)


def summary_sentences(measurements, plan) -> list[str]:
    """A few plain sentences: the selected layers and the evidence for (or against) them."""
    data = _as_dict(measurements)
    evidence = plan.evidence
    sentences = [_plan_sentence(plan, data["n_layers"]), _decision_sentence(plan)]
    sentences += _probe_sentences(evidence)
    sentences += _gradnorm_sentences(data, plan)
    sentences += _sensitivity_sentences(data, evidence)
    sentences.append(_front_sentence(evidence))
    sentences += _causal_sentences(data)
    return [s for s in sentences if s]


def _plan_sentence(plan, n_layers: int) -> str:
    extras = [name for name, on in (("the token and positional embeddings", plan.train_embeddings),
                                    ("the final LayerNorm", plan.train_ln_final),
                                    ("the text projection", plan.train_projection),
                                    ("the logit scale", plan.train_logit_scale)) if on]
    text = f"The layer plan trains text {_blocks_phrase(plan.blocks)} of {n_layers} (rule {plan.rule})"
    if extras:
        text += ", plus " + (", ".join(extras[:-1]) + " and " + extras[-1] if len(extras) > 1 else extras[0])
    if plan.lr_weights:
        low = min(plan.lr_weights, key=plan.lr_weights.get)
        text += f"; learning rates are scaled per block by Auto-RGN weights from 1.0 down to {plan.lr_weights[low]:.2f} (block {low})"
    return text + "."


def _decision_sentence(plan) -> str:
    evidence, decision = plan.evidence, plan.evidence["decision"]
    chosen = _blocks_phrase(plan.blocks)
    one = len(plan.blocks) == 1
    if evidence["rule"] == "prefix":
        k = decision["k"]
        # one decimal: a prefix just short of the share must not read as reaching it
        shorter = (f"; {_blocks_phrase(range(k - 1))} held only {_pct(decision['share_of_shorter_prefix'], 1)}"
                   if k > 1 else "")
        return (f"{chosen.capitalize()} {'is' if one else 'are'} the shortest front prefix that holds at least "
                f"{_pct(decision['share'])} of the combined evidence: {'it holds' if one else 'they hold'} "
                f"{_pct(decision['share_of_prefix'], 1)}{shorter}.")
    if evidence["rule"] == "topk":
        ranking = "the highest combined score" if one else f"the {decision['k']} highest combined scores"
        following = "" if decision["next_score"] is None else f", the best left out {decision['next_score']:.3f}"
        return (f"{chosen.capitalize()} {'has' if one else 'have'} {ranking} (lowest chosen {decision['kth_score']:.3f}"
                f"{following}) and {'holds' if one else 'together hold'} {_pct(decision['share_of_chosen'])} of the evidence.")
    frozen = decision["frozen_blocks"]
    left = (f"{_blocks_phrase(frozen)} {'falls' if len(frozen) == 1 else 'fall'} below it and stay{'s' if len(frozen) == 1 else ''} "
            "frozen" if frozen else "no block falls below it")
    return (f"Auto-RGN keeps every block whose relative gradient norm is at least {_pct(decision['floor'])} of the "
            f"largest; {left}. The chosen blocks hold {_pct(decision['share_of_chosen'])} of the combined evidence.")


def _probe_sentences(evidence: dict) -> list[str]:
    probes = evidence["per_layer"].get("probe")
    if probes is None:
        return ["No probes were measured, so the plan rests on the other evidence only."]
    sentences = []
    threshold = evidence["config"]["min_probe_margin"]
    for task, info in probes["per_task"].items():
        trained, base = np.asarray(info["trained"]), np.asarray(info["baseline_accuracy"])
        gap = trained - base
        best = int(np.argmax(gap))
        splits = "held-out" if info["splits"] != ["in_distribution"] else "in-distribution"
        against = "the random-weights model" if info["baseline"] == "random" else "chance"
        below = int((gap < 0).sum())
        tail = f"; it is below {against} at {below} of {len(gap)} layers" if below else ""
        if gap.max() < threshold:
            sentences.append(f"On {splits} data the {task} probe never beats {against} by the {100 * threshold:.0f}-point "
                             f"noise margin (best {100 * gap.max():+.1f} points, layer {best}{tail}): it shows no {task} beyond what "
                             "token identity gives, and adds no evidence.")
        else:
            sentences.append(f"On {splits} data the {task} probe beats {against} by up to {100 * gap.max():.1f} points "
                             f"(layer {best}: {trained[best]:.2f} vs {base[best]:.2f}){tail}.")
    gains = [row.get("probe", 0.0) for row in evidence["per_block"]]
    if max(gains, default=0) > 0:
        top = int(np.argmax(gains))
        sentences.append(f"The largest probe gain is across block {top} (+{100 * gains[top]:.1f} points over the baseline, "
                         f"averaged over tasks).")
    return sentences


def _gradnorm_sentences(data: dict, plan) -> list[str]:
    profile = plan.evidence.get("rgn_profile")
    if profile is None:
        return []
    losses = plan.evidence["per_layer"].get("gradnorm_losses", [])
    top = int(np.argmax(profile))
    chosen = sum(profile[b] for b in plan.blocks)
    text = [f"Relative gradient norms ({', '.join(losses)}) are largest in block {top}; the chosen blocks take "
            f"{_pct(chosen)} of the total."]
    clip = [r["relative_norm"] for r in sorted(data.get("gradnorms") or [], key=lambda r: r["layer"])
            if r["loss"] == "clip" and r["component"] == plan.evidence["config"]["grad_component"]]
    if clip and sum(clip[: len(clip) // 2]) >= 0.5 * sum(clip):
        text.append(f"The plain CLIP loss puts {_pct(sum(clip[: len(clip) // 2]) / sum(clip))} of its gradient norm on the "
                    "front half too, so gradient norms say where any loss changes the model most, not where negation lives.")
    return text


def _sensitivity_sentences(data: dict, evidence: dict) -> list[str]:
    margin = evidence["per_layer"].get("sensitivity_margin")
    if margin is None:
        return []
    rows = {(r["edit"], r["layer"]): r["sensitivity"] for r in data.get("sensitivity") or []}
    edit = evidence["config"]["sensitivity_edit"]
    excess = [rows[(edit, l)] - rows[("control", l)] for l in range(1, len(margin))]
    if not excess:
        return []
    best = int(np.argmax(excess)) + 1
    if max(excess) <= 0:
        return [f"After the embeddings, {'an' if edit == 'absence' else 'a'} {edit} negation never moves the caption further than a same-size control "
                f"edit (closest at layer {best}: {excess[best - 1]:+.2f}), so sensitivity adds no evidence."]
    return [f"{'An' if edit == 'absence' else 'A'} {edit} negation moves the caption further than a same-size control edit by up to "
            f"{excess[best - 1]:.2f} (layer {best}, in units of the distance between different captions)."]


def _front_sentence(evidence: dict) -> str:
    share, front = evidence["front_half_share"], evidence["front_half_blocks"]
    used = list(evidence["components_used"])
    basis = "" if len(used) == len(COMPONENT_WORDS) else f" ({' and '.join(COMPONENT_WORDS[c] for c in used)} only)"
    where = f"The front half (blocks {describe_blocks(front)}) holds {_pct(share)} of the combined evidence{basis}"
    if share >= FRONT_FAVOURED:
        return where + ": the evidence favours front layers."
    if share <= BACK_FAVOURED:
        return where + ": the evidence does NOT favour front layers; it sits in the back half."
    return where + ": the evidence is spread about evenly and does not single out the front layers."


def _causal_sentences(data: dict) -> list[str]:
    rows = data.get("causal") or []
    parts = []
    for metric, label in (("ccneg_accuracy", "CC-Neg-style accuracy"), ("scope_accuracy", "scope accuracy")):
        chosen = [r for r in rows if r["metric"] == metric]
        if chosen:
            worst = max(chosen, key=lambda r: abs(r["change"]))
            parts.append(f"{label} by at most {worst['change']:+.3f} (layer {worst['layer']})")
    if not parts:
        return []
    return ["Projecting the negation probe direction out of the residual stream changes " + " and ".join(parts) + "."]


# --- files ------------------------------------------------------------------------------------

def write_report(out_dir: str | Path, measurements, plan, *, figures: Mapping[str, list[Path]] | None = None,
                 model_info: Mapping[str, Any] | None = None, embedded_metrics: Mapping[str, Any] | None = None,
                 run_info: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write report.md and report.json into `out_dir` (atomically); return both paths."""
    from probing.io import atomic_write_json, atomic_write_text

    out_dir = Path(out_dir)
    sentences = summary_sentences(measurements, plan)
    relative = {name: [str(Path(p).relative_to(out_dir)) if Path(p).is_relative_to(out_dir) else str(p) for p in paths]
                for name, paths in (figures or {}).items()}
    payload = {"summary": sentences, "model": dict(model_info or {}), "plan": plan.to_dict(),
               "embedded_metrics": dict(embedded_metrics) if embedded_metrics else None,
               "figures": relative, "run": dict(run_info or {}), "measurements": _as_dict(measurements)}
    json_path = atomic_write_json(out_dir / "report.json", payload)
    md_path = atomic_write_text(out_dir / "report.md", markdown(sentences, plan, relative, _as_dict(measurements),
                                                                model_info or {}, embedded_metrics, run_info or {}))
    return {"markdown": md_path, "json": json_path}


def markdown(sentences: list[str], plan, figures: Mapping[str, list[str]], data: dict, model_info: Mapping,
             embedded_metrics: Mapping | None, run_info: Mapping) -> str:
    lines = ["# Where to fine-tune: layer selection report", ""]
    if model_info:
        lines += ["Model: " + ", ".join(f"{k} `{v}`" for k, v in model_info.items() if v is not None), ""]
    lines += ["## Summary", "", " ".join(sentences), "", "## Layer plan", "",
              f"`{plan.describe()}` (written to `layer_plan.json`; pass it to `finetune-layers --plan`).", ""]
    lines += _block_table(plan)
    for name, paths in figures.items():
        png = next((p for p in paths if p.endswith(".png")), paths[0])
        pdf = next((p for p in paths if p.endswith(".pdf")), None)
        lines += [f"![{name}]({png})", "", FIGURE_CAPTIONS.get(name, name) + (f" ([PDF]({pdf}))" if pdf else ""), ""]
    if embedded_metrics:
        lines += ["## Embedded model (held-out synthetic metrics when it was built)", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in embedded_metrics.items() if isinstance(v, (int, float)) and "/" not in k]
        lines.append("")
    notes = list(plan.evidence.get("notes", [])) + [f"{k}: {v}" for k, v in (data.get("meta", {}).get("skipped") or {}).items()]
    notes += list(run_info.get("notes", []))
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    lines += ["Every number behind this report is in `report.json` and `measurements.json` (CSV tables beside them).", ""]
    return "\n".join(lines)


def _block_table(plan) -> list[str]:
    rows = plan.evidence.get("per_block") or []
    if not rows:
        return []
    components = [c for c in ("probe", "gradnorm", "sensitivity") if f"{c}_share" in rows[0]]
    header = ["block", "selected", "combined", *[f"{c} share" for c in components]]
    if plan.lr_weights:
        header.append("lr weight")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        b = row["block"]
        cells = [str(b), "yes" if b in plan.blocks else "", f"{row['combined']:.3f}",
                 *[f"{row[f'{c}_share']:.3f}" for c in components]]
        if plan.lr_weights:
            cells.append(f"{plan.lr_weights[b]:.3f}" if b in plan.lr_weights else "")
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]
