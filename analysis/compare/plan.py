"""A layer plan from a comparison: train where a fine-tune that worked changed most.

`plan_from_comparison(comparison, k)` reads the per-block relative weight change that compare-checkpoints
wrote (comparison.json: "block_change": {model: {block: change}}) and returns the LayerPlan of the k blocks
that changed most (ties: the lower block), for finetune-layers --plan; `finetune_change_selector` gives the same
choice as the selector study's "finetune_change" (train where a fine-tune of the same family that worked changed
most; analysis.ablation judges it beside the selectors of analysis.planning.selectors). Only blocks that
changed at all are chosen: a plan never fills up with unchanged blocks, so it may name fewer than k (its
evidence says so). Every problem (no such file, not a comparison, a model it does not hold, a fine-tune that
changed no block) is a PlanError naming the file.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

from analysis.compare.result import FORMAT, Comparison
from analysis.planning.selectors import SelectorPlan
from finetune.plan import LayerPlan, PlanError

FINETUNE_CHANGE = "finetune_change"


def _load(comparison: Any) -> tuple[dict, str]:

    if isinstance(comparison, Comparison):
        return comparison.to_dict(), "<comparison>"
    if isinstance(comparison, Mapping):
        return dict(comparison), "<comparison>"
    path = Path(comparison)
    if path.is_dir():
        path = path / "comparison.json"
    if not path.is_file():
        raise PlanError(f"comparison file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PlanError(f"comparison file {path} is not valid JSON: {error}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise PlanError(f"comparison file {path} is not a compare-checkpoints output (no \"format\": \"{FORMAT}\")")
    return data, str(path)


def plan_from_comparison(comparison: Any, k: int, *, model: str | None = None) -> LayerPlan:
    """The LayerPlan of the k text blocks with the largest relative weight change in `model`'s fine-tune.

    comparison: a comparison.json path (or the folder holding it), its parsed dict, or a Comparison.
    model: which tuned model's change to follow; may be left out when the comparison holds one.
    """
    data, source = _load(comparison)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise PlanError(f"k must be a positive integer, got {k!r}")
    changes_by_model = data.get("block_change")
    if not isinstance(changes_by_model, dict) or not changes_by_model:
        raise PlanError(f"comparison {source} holds no per-block weight change (was it run with weights?)")
    if model is None:
        if len(changes_by_model) > 1:
            raise PlanError(f"comparison {source} holds {len(changes_by_model)} tuned models "
                            f"({', '.join(changes_by_model)}): name one")
        model = next(iter(changes_by_model))
    if model not in changes_by_model:
        raise PlanError(f"comparison {source} holds no model {model!r}; it holds {', '.join(changes_by_model)}")
    try:
        changes = {int(block): float(change) for block, change in changes_by_model[model].items()}
    except (TypeError, ValueError, AttributeError):
        raise PlanError(f"comparison {source}: the block changes of {model!r} are not a table of numbers") from None
    if any(not math.isfinite(c) or c < 0 for c in changes.values()):
        raise PlanError(f"comparison {source}: the block changes of {model!r} hold a negative or non-finite value")
    changed = sorted((b for b, c in changes.items() if c > 0), key=lambda b: (-changes[b], b))
    if not changed:
        raise PlanError(f"comparison {source}: no weight of {model!r}'s text blocks differs from the base's, "
                        "so it points at no block")
    blocks = sorted(changed[:k])
    evidence = {"source": source, "model": model, "k": k,
                "relative_change": {str(b): changes[b] for b in sorted(changes)}}
    if len(blocks) < k:
        evidence["note"] = f"only {len(blocks)} blocks changed at all; the plan names those, not {k}"
    return LayerPlan(blocks=blocks, rule=f"compare-top{k}", evidence=evidence)


def finetune_change_selector(comparison: Any, k: int, *, model: str | None = None) -> SelectorPlan:
    """The "finetune_change" selector: the k blocks whose weights `model`'s fine-tune changed most (relative
    change ||W_tuned - W_base|| / ||W_base|| summed over a block's parts), scored by that change."""
    plan = plan_from_comparison(comparison, k, model=model)
    change = plan.evidence["relative_change"]
    n_layers = max(map(int, change)) + 1
    scores = tuple(float(change.get(str(b), 0.0)) for b in range(n_layers))
    return SelectorPlan(FINETUNE_CHANGE, tuple(plan.blocks), scores,
                        f"relative weight change of the fine-tune {plan.evidence['model']} "
                        f"({plan.evidence['source']})")
