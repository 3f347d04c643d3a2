"""The layer ablation's variants: which text blocks (and extras) each run trains, by name.

Variants for a text tower of n blocks (h = n // 2):

    frozen     no training: the base model, evaluated once per seed (deterministic, so the same numbers)
    selected   the blocks of a layer plan written by `probe-layers` (`plan_path`; skipped with a note
               when no plan is given, an error when it is asked for by name without one)
    front      blocks 0 .. h-1
    middle     the h blocks in the centre, (n-h)//2 .. (n-h)//2 + h-1
    back       blocks n-h .. n-1
    all        blocks 0 .. n-1
    layer_i    block i alone; "sweep" names every layer_i
    omni_front, omni_middle, omni_back, omni_whole
               Omni-NegCLIP's own groups, so that its table can be reproduced ("omni" names all four;
               not in the default set): on its 12-block tower blocks 0-5, 4-7, 8-11 and 0-11 (its code's
               `freeze_text_encoder_layers`; the groups overlap and differ in size), each with the extras
               that code always trains: token/positional embeddings, final LayerNorm, text projection and
               logit scale. On a tower of another depth the block ranges scale with it. omni_whole is
               also CoN-CLIP's setup: the whole text tower, logit scale included.
    window_a_b blocks a .. b; "windows" names every contiguous window with as many blocks as the
               selected plan (for analysis.ablation.validity: the best plan of that size)
    openclip_last
               what open_clip's own `lock_text_tower(unlocked_layers=h + 1)` unlocks: the last h blocks,
               the final LayerNorm and the text projection (read off the function, not re-implemented)
    norm_only  only the LayerNorms of every block and the final one: the cheapest trainable baseline
    steering   no training at all: Sammani et al.'s training-free steering (every layer moved along its
               logistic negation-probe direction, alpha 0.13 of the layer's residual norm; the probe is
               fitted on the negation task's training captions, drawn with the run's seed), evaluated
               like every other variant (probing.measure.steering.steered)
    "anchors" names omni_front, omni_whole, openclip_last, norm_only and steering: the anchors' choices
    at the study's budget.

Only the blocks differ (except in the omni_* variants, which keep their authors' extras). Every
other trained variant gets the same extras (token/positional embeddings, final LayerNorm, text
projection, logit scale): none by default, so a single-layer run really trains one block;
`extras="plan"` gives every variant the selected plan's extras, or name them ("ln_final,projection").
The selected plan's own extras are replaced by the study's for the same reason; its per-block
learning-rate weights are kept, because the selector's Auto-RGN rule is defined by them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from open_clip.transformer import lock_text_tower
from torch import nn

from analysis.ablation.config import AblationError, parse_extras
from finetune.plan import LayerPlan, PlanError
from finetune.vocabulary import EXTRAS

GROUP_VARIANTS = ("frozen", "selected", "front", "middle", "back", "all")
WINDOWS = "windows"
WINDOW_PREFIX = "window_"
ANCHORS = "anchors"
STEERING = "steering"  # training-free: no plan, its vectors fitted per run
OTHER_ANCHORS = ("openclip_last", "norm_only", STEERING)  # the anchors that are not Omni-NegCLIP's groups
ANCHOR_VARIANTS = ("omni_front", "omni_whole", *OTHER_ANCHORS)
SWEEP = "sweep"
SWEEP_PREFIX = "layer_"
# Omni-NegCLIP's groups as [start, stop) of its 12 blocks (Jingqi-Xu/Omni-NegCLIP src/training_omni_negclip.py.py,
# freeze_text_encoder_layers: front range(0, 6), middle range(4, 8), back range(8, 12), whole range(0, 12))
OMNI = "omni"
OMNI_DEPTH = 12
OMNI_VARIANTS: dict[str, tuple[int, int]] = {"omni_front": (0, 6), "omni_middle": (4, 8), "omni_back": (8, 12),
                                             "omni_whole": (0, 12)}


def block_variants(n_layers: int) -> dict[str, list[int]]:
    """front / middle / back (half the tower each) and all, as block lists."""
    if n_layers < 2:
        raise AblationError(f"a layer ablation needs at least 2 text blocks, the model has {n_layers}")
    half = n_layers // 2
    middle_start = (n_layers - half) // 2
    return {"front": list(range(half)), "middle": list(range(middle_start, middle_start + half)),
            "back": list(range(n_layers - half, n_layers)), "all": list(range(n_layers))}


def omni_variants(n_layers: int) -> dict[str, list[int]]:
    """Omni-NegCLIP's groups as block lists; ranges scale with a tower that is not 12 blocks deep."""
    return {name: list(range(start * n_layers // OMNI_DEPTH, stop * n_layers // OMNI_DEPTH))
            for name, (start, stop) in OMNI_VARIANTS.items()}


def sweep_variants(n_layers: int) -> list[str]:
    return [f"{SWEEP_PREFIX}{i}" for i in range(n_layers)]


def sweep_layer(variant: str) -> int | None:
    """The block of a single-layer variant ("layer_3" -> 3), None for other variants."""
    if variant.startswith(SWEEP_PREFIX) and variant[len(SWEEP_PREFIX):].isdigit():
        return int(variant[len(SWEEP_PREFIX):])
    return None


def window_name(first: int, last: int) -> str:
    return f"{WINDOW_PREFIX}{first}_{last}"


def window_blocks(variant: str) -> list[int] | None:
    """window_2_4 -> [2, 3, 4]; None for other variants."""
    if not variant.startswith(WINDOW_PREFIX):
        return None
    first, _, last = variant[len(WINDOW_PREFIX):].partition("_")
    if not (first.isdigit() and last.isdigit()) or int(last) < int(first):
        return None
    return list(range(int(first), int(last) + 1))


def windows_of(size: int, n_layers: int) -> list[str]:
    return [window_name(first, first + size - 1) for first in range(n_layers - size + 1)]


def resolve_variants(names: Sequence[str] | None, n_layers: int, *, has_plan: bool,
                     selected_size: int | None = None) -> tuple[list[str], list[str]]:
    """The variants to run in display order, and notes on what was left out.

    None means the groups and the sweep; "sweep" expands to every layer_i, "omni" to Omni-NegCLIP's
    groups. "selected" without a plan is an error when asked for by name and a note when it only came
    with the default list.
    """
    notes: list[str] = []
    asked = list(GROUP_VARIANTS) + [SWEEP] if names is None else [n.strip() for n in names if n.strip()]
    if not asked:
        raise AblationError("no variants given")
    chosen: set[str] = set()
    for name in asked:
        layer = sweep_layer(name)
        if name == SWEEP:
            chosen.update(sweep_variants(n_layers))
        elif name == WINDOWS:
            if not selected_size:
                raise AblationError("variant 'windows' takes its size from the selected plan: pass a plan with blocks")
            chosen.update(windows_of(selected_size, n_layers))
        elif window_blocks(name) is not None:
            if window_blocks(name)[-1] >= n_layers:
                raise AblationError(f"variant {name}: the text tower has {n_layers} blocks")
            chosen.add(name)
        elif name == ANCHORS:
            chosen.update(ANCHOR_VARIANTS)
        elif name in OTHER_ANCHORS:
            chosen.add(name)
        elif name == OMNI:
            chosen.update(OMNI_VARIANTS)
        elif name in OMNI_VARIANTS:
            chosen.add(name)
        elif layer is not None:
            if layer >= n_layers:
                raise AblationError(
                    f"variant {name}: the text tower has {n_layers} blocks (layer_0 .. layer_{n_layers - 1})"
                )
            chosen.add(name)
        elif name in GROUP_VARIANTS:
            chosen.add(name)
        else:
            raise AblationError(f"unknown variant {name!r}; choose among {', '.join(GROUP_VARIANTS)}, {OMNI} "
                                f"({', '.join(OMNI_VARIANTS)}), {ANCHORS} ({', '.join(ANCHOR_VARIANTS)}), {SWEEP}, "
                                f"layer_0 .. layer_{n_layers - 1}, {WINDOWS}, window_<a>_<b>")
    if "selected" in chosen and not has_plan:
        if names is not None:
            raise AblationError("variant 'selected' needs a layer plan: pass the plan JSON that probe-layers wrote")
        chosen.discard("selected")
        notes.append(
            "variant 'selected' skipped: no layer plan given (write one with probe-layers and pass it as the plan)"
        )
    windows = sorted((name for name in chosen if window_blocks(name) is not None), key=window_blocks)
    order = (
        list(GROUP_VARIANTS) + list(OMNI_VARIANTS) + list(OTHER_ANCHORS) + windows + sweep_variants(n_layers)
    )
    return [name for name in order if name in chosen], notes


def extras_flags(extras: str, selected=None) -> dict[str, bool]:
    """The LayerPlan flags train_<extra> that every trained variant shares."""
    names = parse_extras(extras)
    if names is None:
        if selected is None:
            raise AblationError("extras 'plan' takes the extras from the selected layer plan, but no plan was given")
        return {f"train_{name}": bool(getattr(selected, f"train_{name}")) for name in EXTRAS}
    return {f"train_{name}": name in names for name in EXTRAS}


def variant_plans(variants: Iterable[str], n_layers: int, flags: dict[str, bool], selected=None) -> dict[str, Any]:
    """Variant -> LayerPlan (None for frozen and steering, which train nothing). Every plan carries the same
    extras `flags`, except Omni-NegCLIP's groups, which train the extras their authors' code trains with every
    group."""

    groups = block_variants(n_layers)
    omni = omni_variants(n_layers)
    plans: dict[str, Any] = {}
    for name in variants:
        if name in ("frozen", STEERING):
            plans[name] = None
        elif name == "selected":
            plans[name] = LayerPlan(list(selected.blocks), lr_weights=selected.lr_weights,
                                    rule=f"selected ({selected.rule})", evidence={}, **flags)
        elif name in groups:
            plans[name] = LayerPlan(groups[name], rule=name, **flags)
        elif name in omni:
            plans[name] = LayerPlan(omni[name], train_embeddings=True, train_ln_final=True, train_projection=True,
                                    train_logit_scale=True, rule=f"{name} (Omni-NegCLIP's group, with its extras)")
        elif name == "openclip_last":
            plans[name] = openclip_last_plan(n_layers)
        elif name == "norm_only":
            plans[name] = LayerPlan(list(range(n_layers)), train_ln_final=True, block_parts="layernorm",
                                    rule="norm_only (every LayerNorm)")
        elif window_blocks(name) is not None:
            plans[name] = LayerPlan(window_blocks(name), rule=name, **flags)
        else:
            plans[name] = LayerPlan([sweep_layer(name)], rule=name, **flags)
    return plans


def openclip_last_plan(n_layers: int):
    """The plan of open_clip's `lock_text_tower(unlocked_layers=h + 1)`, h = n_layers // 2, read off what
    the function unlocks on a tower of that depth (its groups: embeddings, one per block, the last block
    with ln_final, the projection; the last h + 1 groups are unlocked)."""


    class Tower(nn.Module):  # the attributes lock_text_tower reads, one parameter each
        def __init__(self):
            super().__init__()
            self.token_embedding = nn.Embedding(1, 1)
            self.positional_embedding = nn.Parameter(torch.zeros(1))
            self.transformer = nn.Module()
            self.transformer.resblocks = nn.ModuleList(nn.Linear(1, 1) for _ in range(n_layers))
            self.ln_final = nn.LayerNorm(1)
            self.text_projection = nn.Parameter(torch.zeros(1))

    tower = Tower()
    lock_text_tower(tower, unlocked_layers=n_layers // 2 + 1)
    blocks = [b for b, block in enumerate(tower.transformer.resblocks) if block.weight.requires_grad]
    return LayerPlan(blocks, train_embeddings=tower.token_embedding.weight.requires_grad,
                     train_ln_final=tower.ln_final.weight.requires_grad,
                     train_projection=tower.text_projection.requires_grad, train_logit_scale=False,
                     rule=f"openclip_last (open_clip lock_text_tower(unlocked_layers={n_layers // 2 + 1}))")


def load_selected_plan(path: str | Path | None, n_layers: int):
    """The selected variant's LayerPlan from a plan file, checked against the model's depth."""
    if path is None:
        return None

    try:
        plan = LayerPlan.load(path)
        plan.validate(n_layers)
    except PlanError as error:
        raise AblationError(str(error)) from None
    if not plan.blocks:
        raise AblationError(f"layer plan {path} trains no text block; the ablation compares blocks")
    return plan
