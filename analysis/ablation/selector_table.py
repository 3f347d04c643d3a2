"""The selector table: per target and selector (analysis.planning.selectors), the plan it chose, what the plan costs in
trainable parameters, what it gained in the ablation (with interval), its ratio to the best plan of its size and
of any size, and the toolkit's plan minus it (a paired bootstrap interval: positive beyond the noise means the
toolkit's plan is strictly better). Read off the validity results (analysis.ablation.validity), whose plan
records hold every plan the study ran; a selector whose plan the study did not run is listed as not run.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from analysis.ablation.validity import RANDOM_WINDOW_PREFIX, TARGETS, Validity
from analysis.ablation.variants import set_name
from analysis.planning.selection import describe_blocks
from analysis.planning.selectors import RANDOM_WINDOW, SelectorPlan
from probing.io import atomic_write_json, atomic_write_text

COLUMNS = ("target", "selector", "blocks", "variant", "trainable", "gain", "gain_low", "gain_high", "ratio",
           "ratio_low", "ratio_high", "ratio_any", "ratio_any_low", "ratio_any_high", "toolkit_minus",
           "toolkit_minus_low", "toolkit_minus_high", "verdict")


@dataclass
class SelectorRow:
    target: str
    selector: str
    blocks: str  # "0-1", or "a random window of 2"
    variant: str  # the ablation variant whose runs give the numbers
    trainable: int | None = None
    gain: float = math.nan
    gain_low: float = math.nan
    gain_high: float = math.nan
    ratio: float = math.nan  # to the best plan of its size
    ratio_low: float = math.nan
    ratio_high: float = math.nan
    ratio_any: float = math.nan  # to the best plan of any size
    ratio_any_low: float = math.nan
    ratio_any_high: float = math.nan
    toolkit_minus: float = math.nan  # the toolkit plan's gain minus this plan's
    toolkit_minus_low: float = math.nan
    toolkit_minus_high: float = math.nan
    verdict: str = ""  # toolkit "better", "as good" (within the noise), "worse", "same plan", "not run"


def plan_variant(plan: SelectorPlan, k: int) -> str:
    """The ablation variant that holds a selector's plan."""
    if plan.selector == "toolkit":
        return "selected"
    if plan.selector == RANDOM_WINDOW:
        return f"{RANDOM_WINDOW_PREFIX}{k}"
    return set_name(plan.blocks)


def selector_rows(results: dict[str, Validity], plans: dict[str, SelectorPlan]) -> list[SelectorRow]:
    """One row per target and selector (module docstring)."""
    rows = []
    toolkit = plans["toolkit"].blocks
    for target, v in results.items():
        for name, plan in plans.items():
            variant = plan_variant(plan, len(toolkit))
            blocks = f"a random window of {len(toolkit)}" if name == RANDOM_WINDOW else describe_blocks(plan.blocks)
            record = v.plans.get(variant)
            if record is None:
                rows.append(SelectorRow(target, name, blocks, variant, verdict="not run"))
                continue
            if name != "toolkit" and tuple(plan.blocks) == tuple(toolkit):
                verdict = "same plan"
            elif name == "toolkit":
                verdict = ""
            elif record["diff_high"] < 0:
                verdict = "better"
            elif record["diff_low"] > 0:
                verdict = "worse"
            else:
                verdict = "as good"
            rows.append(SelectorRow(
                target, name, blocks, variant, record["trainable"], record["gain"], record["low"], record["high"],
                record["ratio"], record["ratio_low"], record["ratio_high"], record["ratio_any"],
                record["ratio_any_low"], record["ratio_any_high"], -record["diff"], -record["diff_high"],
                -record["diff_low"], verdict))
    return rows


def selector_sentences(rows: Sequence[SelectorRow], target: str = "scope") -> list[str]:
    """What the table says on one target, in words: which baselines the toolkit's plan beats beyond the noise,
    matches, or trails."""
    mine = [row for row in rows if row.target == target and row.selector != "toolkit"]
    if not mine:
        return []
    groups = {verdict: [row.selector for row in mine if row.verdict == verdict]
              for verdict in ("better", "as good", "same plan", "worse", "not run")}
    label = TARGETS[target].label if target in TARGETS else target
    parts = []
    if groups["better"]:
        parts.append(f"strictly better than {', '.join(groups['better'])} (the paired bootstrap interval of the "
                     "difference excludes 0)")
    if groups["as good"]:
        parts.append(f"as good as {', '.join(groups['as good'])} within the noise")
    if groups["same plan"]:
        parts.append(f"the same plan as {', '.join(groups['same plan'])}")
    if groups["worse"]:
        parts.append(f"WORSE than {', '.join(groups['worse'])} beyond the noise")
    text = f"On {label}, the toolkit's plan is " + "; ".join(parts) + "."
    if groups["not run"]:
        text += f" Not run in this study: {', '.join(groups['not run'])}."
    return [text]


def _number(value: float, digits: int = 3, sign: bool = True) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    value = round(value, digits) + 0.0  # a difference that rounds to 0 (e.g. -0.0 of two identical plans) reads +0.000
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits - 1}f}"


def markdown(rows: Sequence[SelectorRow], targets: Sequence[str] | None = None) -> str:
    """The table, one section per target."""
    targets = list(dict.fromkeys(row.target for row in rows)) if targets is None else list(targets)
    lines = ["## Selectors at the toolkit plan's size", "",
             "Gain: the plan's held-out gain over the frozen model (mean over seeds, 95 % bootstrap interval over "
             "seeds and items). Ratios: to the best plan of the same number of blocks, and to the best plan of any "
             "size the study ran. Toolkit minus: the toolkit plan's gain minus this plan's (paired interval).", ""]
    for target in targets:
        label = TARGETS[target].label if target in TARGETS else target
        lines += [f"### {label}", "", "| selector | blocks | trainable | gain | ratio (same size) | ratio (any size) "
                  "| toolkit minus | verdict |", "|---|---|---:|---|---|---|---|---|"]
        for row in (r for r in rows if r.target == target):
            if row.verdict == "not run":
                lines.append(f"| {row.selector} | {row.blocks} | - | - | - | - | - | not run |")
                continue
            lines.append(
                f"| {row.selector} | {row.blocks} | {row.trainable:,} | {_number(row.gain)} "
                f"[{_number(row.gain_low)}, {_number(row.gain_high)}] | {_number(row.ratio, sign=False)} "
                f"[{_number(row.ratio_low, sign=False)}, {_number(row.ratio_high, sign=False)}] "
                f"| {_number(row.ratio_any, sign=False)} [{_number(row.ratio_any_low, sign=False)}, "
                f"{_number(row.ratio_any_high, sign=False)}] | "
                + ("" if row.selector == "toolkit" else
                   f"{_number(row.toolkit_minus)} [{_number(row.toolkit_minus_low)}, "
                   f"{_number(row.toolkit_minus_high)}]") + f" | {row.verdict} |")
        lines += [""] + selector_sentences(rows, target) + [""]
    return "\n".join(lines)


def write_selector_table(out_dir: str | Path, results: dict[str, Validity], plans: dict[str, SelectorPlan]
                         ) -> dict[str, Path]:
    """selectors.json (the plans and the rows), selectors.csv and selectors.md in `out_dir`."""
    out_dir = Path(out_dir)
    rows = selector_rows(results, plans)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS))
    writer.writeheader()
    writer.writerows(asdict(row) for row in rows)
    payload = {"plans": {name: plan.to_dict() for name, plan in plans.items()},
               "rows": [asdict(row) for row in rows],
               "sentences": {target: selector_sentences(rows, target) for target in results}}
    return {"selectors_json": atomic_write_json(out_dir / "selectors.json", payload),
            "selectors_csv": atomic_write_text(out_dir / "selectors.csv", buffer.getvalue()),
            "selectors_md": atomic_write_text(out_dir / "selectors.md", markdown(rows))}
