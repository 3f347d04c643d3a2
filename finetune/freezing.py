"""Freeze a CLIP model except the parts a layer plan names.

Everything starts frozen (image tower included); then exactly the planned text-tower parts are
unfrozen through `TextTower.parameters_by_part()`. open_clip's `lock_text_tower(unlocked_layers=n)`
is not used: it unlocks the LAST n blocks, and the plans here are usually front blocks.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from finetune.plan import LayerPlan
from probing.clip.text_tower import TextTower


def planned_parts(model: nn.Module, plan: LayerPlan) -> dict[str, list[nn.Parameter]]:
    """Part name ("embeddings", "blocks.3", "ln_final", "projection", "logit_scale") -> its parameters."""
    tower = TextTower.from_model(model)
    plan.validate(tower.n_layers)
    plan.check_trains()
    parts = tower.parameters_by_part()
    if plan.block_parts == "layernorm":
        chosen = {
            f"blocks.{b}": [p for name, p in tower.blocks[b].named_parameters() if name.startswith(("ln_1.", "ln_2."))]
            for b in plan.blocks
        }
    else:
        chosen = {f"blocks.{b}": parts[f"blocks.{b}"] for b in plan.blocks}
    if plan.train_embeddings:
        chosen["embeddings"] = parts["embeddings"]
    if plan.train_ln_final:
        chosen["ln_final"] = parts["ln_final"]
    if plan.train_projection:
        if "projection" not in parts:
            raise ValueError("the plan trains the text projection, but this text tower has none")
        chosen["projection"] = parts["projection"]
    if plan.train_logit_scale:
        chosen["logit_scale"] = [_logit_scale(model)]
    return chosen


def _logit_scale(model: nn.Module) -> nn.Parameter:
    scale = getattr(model, "logit_scale", None)
    if not isinstance(scale, nn.Parameter):
        raise ValueError(f"{type(model).__name__} has no logit_scale parameter to train")
    return scale


@dataclass
class FreezeSummary:
    rows: list[tuple[str, int, int]]  # (part, trainable parameters, all parameters)
    trainable: int
    total: int

    def table(self) -> str:
        width = max(len(part) for part, _, _ in self.rows)
        lines = [f"{'part':<{width}}  {'trainable':>12}  {'of':>12}"]
        lines += [f"{part:<{width}}  {n_train:>12,}  {n_all:>12,}" for part, n_train, n_all in self.rows]
        lines.append(f"{'total':<{width}}  {self.trainable:>12,}  {self.total:>12,}  "
                     f"({100 * self.trainable / max(self.total, 1):.2f} % trainable)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def apply_plan(model: nn.Module, plan: LayerPlan, *, verbose: bool = True) -> FreezeSummary:
    """Freeze all of `model`, unfreeze the planned parts, and return (and print) what trains."""
    chosen = planned_parts(model, plan)
    model.requires_grad_(False)
    for params in chosen.values():
        for param in params:
            param.requires_grad_(True)
    summary = summarize(model)
    if verbose:
        print(f"layer plan {plan.describe()}\n{summary.table()}", flush=True)
    return summary


def summarize(model: nn.Module) -> FreezeSummary:
    """Trainable / total parameter counts per text-tower part, image tower and the rest."""
    tower = TextTower.from_model(model)
    parts = dict(tower.parameters_by_part())
    logit_scale = getattr(model, "logit_scale", None)
    if isinstance(logit_scale, nn.Parameter):
        parts["logit_scale"] = [logit_scale]
    seen = {id(p) for params in parts.values() for p in params}
    visual = getattr(model, "visual", None)
    parts["image tower"] = list(visual.parameters()) if visual is not None else []
    seen |= {id(p) for p in parts["image tower"]}
    parts["other"] = [p for p in model.parameters() if id(p) not in seen]

    rows = []
    for part, params in parts.items():
        if part == "other" and not params:
            continue
        rows.append((part, sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return FreezeSummary(rows, trainable, total)
