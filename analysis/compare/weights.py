"""Where a fine-tune changed the weights: relative change per tensor, per sub-module and per text block.

For a group of tensors W_1..W_m (one LayerNorm, one block's attention, a whole block, ...):

    relative change = sqrt(sum_i ||W_i,tuned - W_i,base||_F^2) / sqrt(sum_i ||W_i,base||_F^2)

i.e. the Frobenius norm of the change over the Frobenius norm of the base, the group's tensors taken as
one vector. A group whose base weights are all zero (a bias initialised at 0 that never trained, an
attention sublayer switched off by construction) has no relative change: it is None there, and
`change_norm` (the numerator) still says whether it moved. Computed in float64, so that a change of one
unit in the last place of a float32 weight is not lost.

Parts of the text tower (`text_tower_tensors`; TextTower finds the modules in open_clip's CLIP and
CustomTextCLIP alike):

    token embedding, positional embedding             one tensor each
    block <l>                                         every parameter of the block, by sub-module:
                                                      attention (in_proj, out_proj), mlp (c_fc, c_proj),
                                                      layernorms (ln_1, ln_2), layerscale (ls_1, ls_2, if any)
    final LayerNorm, text projection, logit scale     ln_final; the projection (matrix or Linear);
                                                      the model's logit_scale (and logit_bias, if any)

The image tower is compared as one part ("image tower", its whole state dict), so that a report can say
whether a text-only fine-tune left it alone. Identity is bitwise (torch.equal), never a tolerance.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from probing.clip.text_tower import TextTower

NO_WEIGHT_DIFFERS = "no weight differs"
IMAGE_TOWER = "image tower"
OUTSIDE_BLOCKS = ("token embedding", "positional embedding", "final LayerNorm", "text projection", "logit scale")
BLOCK_COMPONENTS = ("attention", "mlp", "layernorms", "layerscale", "other")


@dataclass(frozen=True)
class NamedTensor:
    part: str  # "block 3", "token embedding", ...
    block: int | None  # the block index, None outside the blocks
    component: str  # the sub-module: attention / mlp / layernorms / layerscale, or the part's own name
    name: str  # "blocks.3.attn.in_proj_weight", "token_embedding.weight", ...
    tensor: torch.Tensor


@dataclass
class WeightChange:
    """One tuned model against its base."""

    tensors: pd.DataFrame  # one row per tensor
    parts: pd.DataFrame  # one row per (part, component), with component "all" for the whole part
    text_identical: bool  # every text-tower tensor is bitwise equal to the base's
    image_identical: bool | None  # the same for the image tower (None: the towers do not have the same tensors)
    statement: str | None  # "no weight differs ..." for an identical tower, else None


def block_component(parameter: str) -> str:
    """The sub-module of a block parameter name ("attn.in_proj_weight" -> "attention")."""
    head = parameter.split(".", 1)[0]
    if head == "attn":
        return "attention"
    if head == "mlp":
        return "mlp"
    if head.startswith("ln_"):
        return "layernorms"
    if head.startswith("ls_"):
        return "layerscale"
    return "other"


def text_tower_tensors(model: nn.Module) -> list[NamedTensor]:
    """Every trainable tensor of the text tower (and the logit scale), in the tower's order."""
    tower = TextTower.from_model(model)
    rows = [NamedTensor("token embedding", None, "token embedding", "token_embedding.weight",
                        tower.token_embedding.weight),
            NamedTensor("positional embedding", None, "positional embedding", "positional_embedding",
                        tower.positional_embedding)]
    for index, block in enumerate(tower.blocks):
        for name, tensor in block.named_parameters():
            rows.append(NamedTensor(f"block {index}", index, block_component(name), f"blocks.{index}.{name}", tensor))
    for name, tensor in tower.ln_final.named_parameters():
        rows.append(NamedTensor("final LayerNorm", None, "final LayerNorm", f"ln_final.{name}", tensor))
    projection = tower.text_projection
    if isinstance(projection, nn.Module):
        for name, tensor in projection.named_parameters():
            rows.append(NamedTensor("text projection", None, "text projection", f"text_projection.{name}", tensor))
    elif projection is not None:
        rows.append(NamedTensor("text projection", None, "text projection", "text_projection", projection))
    for name in ("logit_scale", "logit_bias"):
        value = getattr(model, name, None)
        if isinstance(value, torch.Tensor):
            rows.append(NamedTensor("logit scale", None, "logit scale", name, value))
    covered = {id(row.tensor) for row in rows}
    visual = {id(p) for p in image_tower_state(model).values()}
    for name, tensor in tower.owner.named_parameters():  # anything the parts above do not name (a future module)
        if id(tensor) not in covered and id(tensor) not in visual and not name.startswith("visual."):
            rows.append(NamedTensor("other text-tower tensors", None, "other", name, tensor))
    return rows


def image_tower_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The image tower's state dict (parameters and buffers such as BatchNorm statistics), or {} without one."""
    visual = getattr(model, "visual", None)
    return dict(visual.state_dict(keep_vars=True)) if isinstance(visual, nn.Module) else {}


def shape_problem(base: nn.Module, tuned: nn.Module) -> str | None:
    """Why the two text towers cannot be compared tensor by tensor (depth, a tensor's shape, a tensor that one
    of them lacks), or None when they can."""
    base_tensors, tuned_tensors = text_tower_tensors(base), text_tower_tensors(tuned)
    base_depth, tuned_depth = TextTower.from_model(base).n_layers, TextTower.from_model(tuned).n_layers
    if base_depth != tuned_depth:
        return f"the text towers differ in depth: the base has {base_depth} blocks, this model {tuned_depth}"
    base_shapes = {row.name: tuple(row.tensor.shape) for row in base_tensors}
    tuned_shapes = {row.name: tuple(row.tensor.shape) for row in tuned_tensors}
    for name in base_shapes:
        if name not in tuned_shapes:
            return f"the text towers differ in shape: the base has {name}, this model does not"
        if base_shapes[name] != tuned_shapes[name]:
            return (f"the text towers differ in shape: {name} is {base_shapes[name]} in the base, "
                    f"{tuned_shapes[name]} in this model")
    extra = [name for name in tuned_shapes if name not in base_shapes]
    if extra:
        return f"the text towers differ in shape: this model has {extra[0]}, the base does not"
    return None


def _norms(base: torch.Tensor, tuned: torch.Tensor) -> dict:
    base64 = base.detach().to("cpu", torch.float64)
    diff = tuned.detach().to("cpu", torch.float64) - base64
    return {"n_params": base.numel(), "base_norm_sq": float(base64.pow(2).sum()),
            "change_norm_sq": float(diff.pow(2).sum()),
            "max_abs_change": float(diff.abs().max()) if diff.numel() else 0.0,
            "n_changed": int((tuned.detach().cpu() != base.detach().cpu()).sum()),
            "identical": bool(torch.equal(base.detach().cpu(), tuned.detach().cpu()))}


def _finish(row: dict) -> dict:
    base_norm, change_norm = math.sqrt(row.pop("base_norm_sq")), math.sqrt(row.pop("change_norm_sq"))
    row.update(base_norm=base_norm, change_norm=change_norm,
               relative_change=(change_norm / base_norm) if base_norm > 0 else (0.0 if change_norm == 0 else None),
               changed_fraction=row["n_changed"] / row["n_params"] if row["n_params"] else 0.0)
    return row


def compare_weights(base: nn.Module, tuned: nn.Module) -> WeightChange:
    """Relative change of every text-tower tensor, sub-module, part and of the image tower. The towers must have
    the same tensors (`shape_problem` is None); a ValueError says otherwise."""
    problem = shape_problem(base, tuned)
    if problem:
        raise ValueError(problem)
    tuned_by_name = {row.name: row.tensor for row in text_tower_tensors(tuned)}
    tensor_rows = []
    for row in text_tower_tensors(base):
        values = _norms(row.tensor, tuned_by_name[row.name])
        tensor_rows.append({"part": row.part, "block": row.block, "component": row.component, "tensor": row.name,
                            "shape": "x".join(map(str, row.tensor.shape)) or "scalar", **values})
    image_base, image_tuned = image_tower_state(base), image_tower_state(tuned)
    image_comparable = bool(image_base) and {k: tuple(v.shape) for k, v in image_base.items()} == {
        k: tuple(v.shape) for k, v in image_tuned.items()}
    if image_comparable:
        for name, tensor in image_base.items():
            values = _norms(tensor, image_tuned[name])
            tensor_rows.append({"part": IMAGE_TOWER, "block": None, "component": IMAGE_TOWER,
                                "tensor": f"visual.{name}", "shape": "x".join(map(str, tensor.shape)) or "scalar",
                                **values})
    tensors = pd.DataFrame([_finish(dict(row)) for row in tensor_rows])
    parts = _aggregate(pd.DataFrame(tensor_rows))
    text = tensors[tensors["part"] != IMAGE_TOWER]
    text_identical = bool(text["identical"].all())
    image_identical = bool(tensors.loc[tensors["part"] == IMAGE_TOWER, "identical"].all()) if image_comparable else None
    statement = None
    if text_identical:
        if image_identical:
            statement = f"{NO_WEIGHT_DIFFERS}: every tensor is bitwise identical to the base's (text and image towers)"
        elif image_identical is None:
            statement = f"{NO_WEIGHT_DIFFERS} in the text tower (its image tower has other shapes than the base's)"
        else:
            change = parts.loc[(parts["part"] == IMAGE_TOWER) & (parts["component"] == "all"), "relative_change"]
            statement = (f"{NO_WEIGHT_DIFFERS} in the text tower: every text-tower tensor is bitwise identical to the "
                         f"base's (only the image tower changed, relative change {float(change.iloc[0]):.3g})")
    return WeightChange(tensors, parts, text_identical, image_identical, statement)


def _aggregate(raw: pd.DataFrame) -> pd.DataFrame:
    """Per (part, component) and per part ("all") sums of the squared norms, then the ratios."""
    rows = []
    order = list(dict.fromkeys(raw["part"]))
    for part in order:
        members = raw[raw["part"] == part]
        block = members["block"].iloc[0]
        components = list(dict.fromkeys(members["component"]))
        groups = [(c, members[members["component"] == c]) for c in components]
        if len(components) > 1 or components[0] != part:  # a block: its sub-modules, then the whole block
            groups.append(("all", members))
        else:
            groups = [("all", members)]
        for component, group in groups:
            rows.append(_finish({"part": part, "block": None if pd.isna(block) else int(block), "component": component,
                                 "n_tensors": len(group), "n_params": int(group["n_params"].sum()),
                                 "base_norm_sq": float(group["base_norm_sq"].sum()),
                                 "change_norm_sq": float(group["change_norm_sq"].sum()),
                                 "max_abs_change": float(group["max_abs_change"].max()),
                                 "n_changed": int(group["n_changed"].sum()),
                                 "identical": bool(group["identical"].all())}))
    return pd.DataFrame(rows)


def block_changes(parts: pd.DataFrame) -> dict[int, float]:
    """{block index: relative change of the whole block} from a `WeightChange.parts` table."""
    blocks = parts[(parts["component"] == "all") & parts["block"].notna()]
    return {int(b): float(c if c is not None and not pd.isna(c) else 0.0)
            for b, c in zip(blocks["block"], blocks["relative_change"])}


def smallest_share(changes: dict[int, float], share: float) -> list[int]:
    """The smallest set of blocks whose relative changes sum to at least `share` of the sum over all blocks
    (largest first; ties by block index), sorted; [] when no block changed."""
    total = sum(changes.values())
    if total <= 0:
        return []
    chosen, held = [], 0.0
    for block, change in sorted(changes.items(), key=lambda item: (-item[1], item[0])):
        if held >= share * total * (1 - 1e-12):
            break
        chosen.append(block)
        held += change
    return sorted(chosen)
