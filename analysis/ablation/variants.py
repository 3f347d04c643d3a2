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
    window_a_b blocks a .. b (a window of one block is its layer_a); "windows" names every contiguous
               window with as many blocks as the selected plan (for analysis.ablation.validity: the best
               plan of that size), "windows-<k>" every window of k blocks, "windows-near" those of the
               plan's size and of one block fewer and more (the neighbouring points of the frontier)
    set_a_b_c  exactly blocks a, b, c (a plan that is not contiguous, e.g. a top-k selector's choice)
    selected_planned
               the selected plan exactly as `finetune-layers --plan` trains it: its blocks, its extras
               and its learning-rate weights (the study's extras do not apply)
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
WINDOWS_NEAR = "windows-near"
WINDOW_PREFIX = "window_"
SET_PREFIX = "set_"
SELECTED_PLANNED = "selected_planned"  # the plan with its own extras, as finetune-layers trains it
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
    """The variant of blocks first .. last; a single block is its sweep variant (layer_<first>)."""
    return f"{SWEEP_PREFIX}{first}" if first == last else f"{WINDOW_PREFIX}{first}_{last}"


def window_blocks(variant: str) -> list[int] | None:
    """window_2_4 -> [2, 3, 4], layer_3 -> [3]; None for other variants."""
    layer = sweep_layer(variant)
    if layer is not None:
        return [layer]
    if not variant.startswith(WINDOW_PREFIX):
        return None
    first, _, last = variant[len(WINDOW_PREFIX):].partition("_")
    if not (first.isdigit() and last.isdigit()) or int(last) < int(first):
        return None
    return list(range(int(first), int(last) + 1))


def set_name(blocks: Sequence[int]) -> str:
    """The variant that trains exactly `blocks`: a window's or a layer's name when they are contiguous."""
    blocks = sorted(set(blocks))
    if blocks == list(range(blocks[0], blocks[-1] + 1)):
        return window_name(blocks[0], blocks[-1])
    return SET_PREFIX + "_".join(map(str, blocks))


def set_blocks(variant: str) -> list[int] | None:
    """set_0_3_7 -> [0, 3, 7]; None for other variants."""
    if not variant.startswith(SET_PREFIX):
        return None
    parts = variant[len(SET_PREFIX):].split("_")
    if not all(part.isdigit() for part in parts):
        return None
    blocks = [int(part) for part in parts]
    return blocks if blocks == sorted(set(blocks)) else None


def variant_blocks(variant: str) -> list[int] | None:
    """The blocks of a window, layer or set variant (None for the others)."""
    return window_blocks(variant) or set_blocks(variant)


def windows_of(size: int, n_layers: int) -> list[str]:
    return [window_name(first, first + size - 1) for first in range(n_layers - size + 1)]


def resolve_variants(names: Sequence[str] | None, n_layers: int, *, has_plan: bool,
                     selected_size: int | None = None) -> tuple[list[str], list[str]]:
    """The variants to run in display order, and notes on what was left out.

    None means the groups and the sweep; "sweep" expands to every layer_i, "omni" to Omni-NegCLIP's
    groups, "anchors" to the anchors' choices, "windows" / "windows-<k>" / "windows-near" to windows (module
    docstring). "selected" without a plan is an error when asked for by name and a note when it only came
    with the default list. A name asked twice is an error.
    """
    notes: list[str] = []
    asked = list(GROUP_VARIANTS) + [SWEEP] if names is None else [n.strip() for n in names if n.strip()]
    if not asked:
        raise AblationError("no variants given")
    repeated = sorted({name for name in asked if asked.count(name) > 1})
    if repeated:
        raise AblationError(f"variant(s) {', '.join(repeated)} given twice")
    chosen: set[str] = set()

    def plan_size(name: str) -> int:
        if not selected_size:
            raise AblationError(f"variant {name!r} takes its size from the selected plan: pass a plan with blocks")
        return selected_size

    for name in asked:
        blocks = variant_blocks(name)
        if name == SWEEP:
            chosen.update(sweep_variants(n_layers))
        elif name == WINDOWS:
            chosen.update(windows_of(plan_size(name), n_layers))
        elif name == WINDOWS_NEAR:
            size = plan_size(name)
            for k in (size - 1, size, size + 1):
                if 1 <= k <= n_layers:
                    chosen.update(windows_of(k, n_layers))
        elif name.startswith(WINDOWS + "-") and name[len(WINDOWS) + 1:].isdigit():
            k = int(name[len(WINDOWS) + 1:])
            if not 1 <= k <= n_layers:
                raise AblationError(f"variant {name}: windows of 1 .. {n_layers} blocks fit this text tower")
            chosen.update(windows_of(k, n_layers))
        elif blocks is not None:
            if blocks[-1] >= n_layers:
                raise AblationError(f"variant {name}: the text tower has {n_layers} blocks (0 .. {n_layers - 1})")
            chosen.add(set_name(blocks))
        elif name == ANCHORS:
            chosen.update(ANCHOR_VARIANTS)
        elif name == OMNI:
            chosen.update(OMNI_VARIANTS)
        elif name in OTHER_ANCHORS or name in OMNI_VARIANTS or name in GROUP_VARIANTS or name == SELECTED_PLANNED:
            chosen.add(name)
        else:
            raise AblationError(f"unknown variant {name!r}; choose among {', '.join(GROUP_VARIANTS)}, "
                                f"{SELECTED_PLANNED}, {OMNI} ({', '.join(OMNI_VARIANTS)}), {ANCHORS} "
                                f"({', '.join(ANCHOR_VARIANTS)}), {SWEEP}, layer_0 .. layer_{n_layers - 1}, {WINDOWS}, "
                                f"{WINDOWS}-<k>, {WINDOWS_NEAR}, window_<a>_<b>, set_<a>_<b>_...")
    for name in ("selected", SELECTED_PLANNED):
        if name in chosen and not has_plan:
            if names is not None:
                raise AblationError(f"variant {name!r} needs a layer plan: pass the plan JSON that probe-layers wrote")
            chosen.discard(name)
            notes.append(f"variant {name!r} skipped: no layer plan given (write one with probe-layers and pass it "
                         "as the plan)")
    spans = sorted((name for name in chosen if variant_blocks(name) is not None and sweep_layer(name) is None),
                   key=lambda name: (len(variant_blocks(name)), variant_blocks(name)))
    order = (list(GROUP_VARIANTS) + [SELECTED_PLANNED] + list(OMNI_VARIANTS) + list(OTHER_ANCHORS) + spans
             + sweep_variants(n_layers))
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
        elif name == SELECTED_PLANNED:
            own = {f"train_{extra}": bool(getattr(selected, f"train_{extra}")) for extra in EXTRAS}
            plans[name] = LayerPlan(list(selected.blocks), lr_weights=selected.lr_weights,
                                    block_parts=selected.block_parts, evidence={},
                                    rule=f"selected as planned ({selected.rule}, its own extras)", **own)
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
        else:
            plans[name] = LayerPlan(variant_blocks(name), rule=name, **flags)
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
        raise AblationError(f"layer plan file {path} trains no text block; the ablation compares blocks")
    return plan
