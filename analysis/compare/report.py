"""What a comparison says, in sentences and tables, and the files compare-checkpoints writes.

    comparison.json        every number (Comparison.to_dict; `block_change` is what plan_from_comparison reads)
    blocks.csv, blocks.md  parts (embeddings, block 0..L-1, final LayerNorm, projection, logit scale, image
                           tower) x tuned models: relative weight change of the whole part
    weights.csv            per (model, part, sub-module): norms, relative change, changed elements
    tensors.csv            the same per tensor
    states.csv             per (model, caption group, layer): linear CKA and mean cosine with intervals
    probes.csv             per (model, task, split, layer, probe): balanced accuracy with interval
    probe_differences.csv  per (tuned model, task, split, layer, probe): tuned - base, paired interval
    figures/               comparison.png/.pdf (heat map + CKA per layer), probes.png/.pdf
    report.md              the sentences, the statements and the tables in Markdown

Every file is written atomically (probing.io): an interrupted run leaves the old file or the new one.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import pandas as pd

from analysis.compare.decoding import headline_split
from analysis.compare.figures import plot_comparison
from analysis.compare.weights import IMAGE_TOWER, OUTSIDE_BLOCKS
from analysis.planning.selection import describe_blocks
from probing.io import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from analysis.compare.result import Comparison

COMPONENT_NAMES = {"attention": "attention", "mlp": "MLP", "layernorms": "LayerNorms", "layerscale": "LayerScale",
                   "other": "other"}


def _number(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return "0" if value == 0 else f"{value:.3g}"


def _near_one(value: float, low: float, high: float) -> str:
    """"0.912 [0.900, 0.925]", with as many decimals as it takes to show how far from 1 the interval is."""
    gap = 1 - min(value, low) if all(map(math.isfinite, (value, low, high))) else 1
    if gap < 1e-12:
        return "1 [1, 1]"
    decimals = 3 if gap >= 0.01 else min(8, 2 + int(math.ceil(-math.log10(max(gap, 1e-8)))))
    return f"{value:.{decimals}f} [{low:.{decimals}f}, {high:.{decimals}f}]"


def layer_phrase(label: str) -> str:
    """"block 3" -> "the output of block 3", "embed" -> "the embeddings", "text feature" -> "the text feature"."""
    if label == "embed":
        return "the embeddings (layer 0)"
    return f"the output of {label}" if label.startswith("block ") else f"the {label}"


def _percent(value: float) -> str:
    return f"{100 * value:.0f}%"


# --- sentences ---------------------------------------------------------------------------------

def sentences(comparison: "Comparison") -> list[str]:
    """The report's findings, one sentence (or two) per tuned model and part."""
    out = []
    for name in comparison.tuned:
        info = comparison.models[name]
        if info["status"] == "incomparable":
            out.append(f"{name} was not compared weight by weight or state by state: {info['statement']}.")
            continue
        if info["status"] == "identical":
            out.append(f"{name}: {info['statement']}.")
        elif "weights" in comparison.config.parts and len(comparison.weights):
            out.append(weight_sentence(comparison, name))
        if len(comparison.states) and info["status"] != "identical":
            out += state_sentences(comparison, name)
    if len(comparison.probes):
        out += probe_sentences(comparison)
    return out


def weight_sentence(comparison: "Comparison", name: str) -> str:
    changes = comparison.block_changes(name)
    weights = comparison.weights[comparison.weights["model"] == name]
    whole = weights[weights["component"] == "all"].set_index("part")["relative_change"]
    total = sum(changes.values())
    chosen = comparison.concentrated_blocks(name)
    if total == 0:
        text = f"{name}: no text block's weights differ from the base's"
    else:
        held = sum(changes[b] for b in chosen) / total
        top = max(changes, key=lambda b: (changes[b], -b))
        parts = weights[(weights["block"] == top) & (weights["component"] != "all")]
        components = ", ".join(f"{COMPONENT_NAMES.get(c, c)} {_number(v)}" for c, v in
                               sorted(zip(parts["component"], parts["relative_change"]),
                                      key=lambda cv: -(cv[1] if cv[1] is not None and not pd.isna(cv[1]) else -1)))
        unchanged = [b for b, c in changes.items() if c == 0]
        plural = len(chosen) > 1
        text = (f"{name}: block{'s' if plural else ''} {describe_blocks(chosen)} hold{'' if plural else 's'} "
                f"{_percent(held)} of the summed relative weight change of the {len(changes)} text blocks (the "
                f"smallest set holding at least {_percent(comparison.config.share)}); the largest is block {top} "
                f"({_number(changes[top])}: {components})")
        if unchanged:
            text += f"; block{'s' if len(unchanged) > 1 else ''} {describe_blocks(unchanged)} did not change at all"
    outside = [f"{part} {_number(whole[part])}" for part in OUTSIDE_BLOCKS if part in whole.index]
    text += ". Outside the blocks (relative change): " + ", ".join(outside)
    if IMAGE_TOWER in whole.index:
        image = whole[IMAGE_TOWER]
        text += "; the image tower " + ("is unchanged" if image == 0 else f"changed too ({_number(image)})")
    return text + "."


def state_sentences(comparison: "Comparison", name: str) -> list[str]:
    states = comparison.states[comparison.states["model"] == name]
    out = []
    for group in dict.fromkeys(states["group"]):
        rows = states[states["group"] == group].sort_values("layer")
        moved = rows[~rows["identical"].astype(bool)]
        if not len(moved):
            out.append(f"On {group} captions, {name}'s EOT states are bitwise the base's at every layer.")
            continue
        first = moved.iloc[0]
        finite = rows[rows["cka"].notna()]
        text = (f"On {group} captions ({int(first['n_captions'])} captions), {name}'s EOT states first differ from the "
                f"base's at {layer_phrase(first['label'])} (cosine change {_number(first['cosine_change'])})")
        if len(finite):
            low = finite.loc[finite["cka"].idxmin()]
            text += (f"; linear CKA with the base is lowest at {layer_phrase(low['label'])}: "
                     f"{_near_one(low['cka'], low['cka_low'], low['cka_high'])}")
        out.append(text + ".")
    return out


def _first_reaching(rows: pd.DataFrame, threshold: float) -> str:
    reached = rows[rows["accuracy"] >= threshold].sort_values("layer")
    when = "never reaches it" if not len(reached) else f"reaches it first at layer {int(reached['layer'].iloc[0])}"
    return f"{when} (best {rows['accuracy'].max():.2f})"


def probe_sentences(comparison: "Comparison") -> list[str]:
    probes, differences = comparison.probes, comparison.probe_differences
    probe = comparison.config.probes[0]
    threshold = comparison.config.decodable
    out = []
    for task in dict.fromkeys(probes["task"]):
        in_task = probes[(probes["task"] == task) & (probes["probe"] == probe)]
        split = headline_split(list(dict.fromkeys(in_task["split"])))
        rows = in_task[in_task["split"] == split]
        base_rows = rows[rows["model"] == comparison.base]
        reach = [f"the base {_first_reaching(base_rows, threshold)}"]
        for name in comparison.tuned:
            mine = rows[rows["model"] == name]
            if len(mine):
                reach.append(f"{name} {_first_reaching(mine, threshold)}")
        text = (f"Probes ({probe}, {task}, {split.replace('_', ' ')} split; layer l = output of block l-1), "
                f"balanced accuracy {threshold:g}: " + "; ".join(reach) + ".")
        for name in comparison.tuned:
            if not len(differences):
                break
            diff = differences[(differences["model"] == name) & (differences["task"] == task)
                               & (differences["split"] == split) & (differences["probe"] == probe)]
            if not len(diff):
                continue
            gains = diff[diff["ci_low"] > 0]
            losses = diff[diff["ci_high"] < 0]
            level = _percent(comparison.config.confidence)
            if not len(gains) and not len(losses):
                text += (f" {name}: no layer's accuracy differs from the base's beyond its {level} interval "
                         f"(largest difference {diff['difference'].abs().max():.2f}).")
                continue
            if len(gains):
                best = gains.loc[gains["difference"].idxmax()]
                text += (f" {name} decodes it better than the base at layer{'s' if len(gains) > 1 else ''} "
                         f"{describe_blocks(gains['layer'].astype(int).tolist())} ({level} interval above 0), most "
                         f"at layer {int(best['layer'])} ({best['difference']:+.2f} [{best['ci_low']:+.2f}, "
                         f"{best['ci_high']:+.2f}])")
            if len(losses):
                text += (f"{';' if len(gains) else f' {name}'} worse at layer{'s' if len(losses) > 1 else ''} "
                         f"{describe_blocks(losses['layer'].astype(int).tolist())}")
            text += "."
        out.append(text)
    return out


# --- Markdown ----------------------------------------------------------------------------------

def markdown_table(frame: pd.DataFrame, *, index: bool = True, digits: int = 3) -> str:
    """A DataFrame as a GitHub Markdown table (numbers to `digits` significant digits; missing as n/a)."""
    if not len(frame):
        return "(empty)\n"
    frame = frame.reset_index() if index else frame

    def cell(value) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "n/a"
        if isinstance(value, float):
            return "0" if value == 0 else f"{value:.{digits}g}"
        return str(value).replace("|", "\\|")

    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def _interval_table(frame: pd.DataFrame, value: str, low: str, high: str, rows: str, columns: Sequence[str],
                    near_one: bool = False):
    """Cells "value [low, high]"; near_one: with the decimals it takes to see how far below 1 they are."""
    cells = []
    for v, lo, hi in zip(frame[value], frame[low], frame[high]):
        if pd.isna(v):
            cells.append("n/a")
        elif near_one:
            cells.append(_near_one(v, lo if pd.notna(lo) else v, hi if pd.notna(hi) else v))
        else:
            cells.append(f"{v:.3f} [{lo:.3f}, {hi:.3f}]")
    text = frame.assign(cell=cells)
    table = text.pivot_table(index=rows, columns=list(columns), values="cell", aggfunc="first", sort=False)
    table.columns = [" / ".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in table.columns]
    return table


def markdown(comparison: "Comparison", figures: Mapping[str, Sequence[Path]] | None = None) -> str:
    lines = [f"# Where did the fine-tune change the text tower? (base: {comparison.base})", ""]
    lines += ["## Models", ""]
    models = pd.DataFrame([{"model": name, "role": info["role"], "status": info.get("status"),
                            "checkpoint": info.get("checkpoint") or info.get("label") or ""}
                           for name, info in comparison.models.items()])
    lines += [markdown_table(models, index=False), ""]
    statements = comparison.statements()
    if statements:
        lines += ["## Statements", ""] + [f"- **{name}**: {text}" for name, text in statements.items()] + [""]
    lines += ["## Findings", ""] + [f"- {s}" for s in comparison.sentences] + [""]
    if comparison.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in comparison.notes] + [""]
    for name, paths in (figures or {}).items():
        png = next((p for p in paths if str(p).endswith(".png")), None)
        if png is not None:
            lines += [f"![{name}](figures/{Path(png).name})", ""]
    blocks = comparison.block_table()
    if len(blocks):
        lines += ["## Relative weight change ||W_tuned - W_base|| / ||W_base||, per part", "",
                  markdown_table(blocks.rename_axis("part")), ""]
        sub = comparison.weights[comparison.weights["block"].notna() & (comparison.weights["component"] != "all")]
        if len(sub):
            table = sub.pivot_table(index="part", columns=["model", "component"], values="relative_change",
                                    aggfunc="first", sort=False)
            table.columns = [f"{m} / {COMPONENT_NAMES.get(c, c)}" for m, c in table.columns]
            lines += ["### Per sub-module of each block", "", markdown_table(table), ""]
    if len(comparison.states):
        states = comparison.states.assign(state=[layer_phrase(label).removeprefix("the ")
                                                 for label in comparison.states["label"]])
        lines += [f"## EOT states: linear CKA with the base, per layer ({_percent(comparison.config.confidence)} "
                  "bootstrap interval over captions)", "",
                  markdown_table(_interval_table(states, "cka", "cka_low", "cka_high", "state",
                                                 ("model", "group"), near_one=True)), "",
                  "## EOT states: mean cosine with the base's state of the same caption", "",
                  markdown_table(_interval_table(states, "cosine", "cosine_low", "cosine_high", "state",
                                                 ("model", "group"), near_one=True)), ""]
    if len(comparison.probes):
        probe = comparison.config.probes[0]
        for task in dict.fromkeys(comparison.probes["task"]):
            rows = comparison.probes[(comparison.probes["task"] == task) & (comparison.probes["probe"] == probe)]
            split = headline_split(list(dict.fromkeys(rows["split"])))
            rows = rows[rows["split"] == split]
            lines += [f"## Probe accuracy per layer: {task}, {split.replace('_', ' ')} split ({probe}; "
                      f"{_percent(comparison.config.confidence)} bootstrap interval over test items)", "",
                      markdown_table(_interval_table(rows, "accuracy", "ci_low", "ci_high", "layer", ("model",))), ""]
    lines += ["Every number, every split and every probe: comparison.json and the CSV files beside this report.", ""]
    return "\n".join(lines)


# --- files ---------------------------------------------------------------------------------------

def write_outputs(comparison: "Comparison", out: str | Path, *, figures: bool = True,
                  extra: Mapping | None = None) -> dict[str, Path]:
    """Write every file of the module docstring into `out`; returns {what: path}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    record = comparison.to_dict()
    record.update(extra or {})
    paths["json"] = atomic_write_json(out / "comparison.json", record)
    blocks = comparison.block_table()
    tables = {"blocks": blocks.rename_axis("part").reset_index() if len(blocks) else blocks,
              "weights": comparison.weights, "tensors": comparison.tensors, "states": comparison.states,
              "probes": comparison.probes, "probe_differences": comparison.probe_differences}
    for name, frame in tables.items():
        if len(frame):
            paths[name] = atomic_write_text(out / f"{name}.csv", frame.to_csv(index=False))
    if len(blocks):
        paths["blocks_md"] = atomic_write_text(out / "blocks.md", markdown_table(blocks.rename_axis("part")))
    drawn: dict[str, list[Path]] = {}
    if figures:
        drawn = plot_comparison(comparison, out / "figures")
    paths["markdown"] = atomic_write_text(out / "report.md", markdown(comparison, drawn))
    for name, files in drawn.items():
        paths[f"figure:{name}"] = files[0]
    return paths
