"""Per-layer relative gradient norms under a fine-tuning loss (Auto-RGN, Lee et al. 2022).

The loss is an argument (a callable per batch), so this module never needs `finetune`. Every
text block is made trainable for the measurement: a frozen block has no gradient to report.
Relative norm = ||g|| / ||w|| per block and per component, averaged over batches.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from probing.clip.text_tower import TextTower

# component name -> attribute prefixes inside an open_clip ResidualAttentionBlock
COMPONENTS = {
    "attention": ("attn.",),
    "mlp": ("mlp.",),
    "layernorms": ("ln_1.", "ln_2."),
    "layerscale": ("ls_1.", "ls_2."),
}


def block_parameter_groups(tower: TextTower) -> dict[tuple[int, str], list[nn.Parameter]]:
    """(block index, component) -> parameters; component 'all' holds the whole block."""
    groups: dict[tuple[int, str], list[nn.Parameter]] = {}
    for index, block in enumerate(tower.blocks):
        named = list(block.named_parameters())
        groups[(index, "all")] = [p for _, p in named]
        for component, prefixes in COMPONENTS.items():
            params = [p for name, p in named if name.startswith(prefixes)]
            if params:
                groups[(index, component)] = params
    return groups


def relative_gradient_norms(
    model: nn.Module,
    batch_losses: Iterable[Callable[[nn.Module], torch.Tensor]],
    *,
    loss_name: str = "loss",
    progress: bool = True,
    per_batch: dict[tuple[int, str], list[float]] | None = None,
    desc: str | None = None,
) -> list[dict]:
    """Average ||g|| / ||w|| per (block, component) over the given batches.

    batch_losses: one callable per batch; each takes the model and returns the scalar loss of
    that batch (built by the caller from `finetune.losses`). Returns rows
    {loss, layer, component, relative_norm, grad_norm, weight_norm, n_batches}. `per_batch`, if
    given, is filled with (block, component) -> each batch's relative norm (for tests that
    resample batches, analysis.planning.evidence). desc: the progress bar's label (default "grad norms (<loss>)").
    """
    tower = TextTower.from_model(model)
    groups = block_parameter_groups(tower)
    saved = {p: p.requires_grad for p in model.parameters()}
    for params in groups.values():
        for p in params:
            p.requires_grad_(True)
    sums = {key: 0.0 for key in groups}
    batches: dict[tuple[int, str], list[float]] = {key: [] for key in groups}
    grad_sums = {key: 0.0 for key in groups}
    n_batches = 0
    try:
        for loss_fn in tqdm(list(batch_losses), desc=desc or f"grad norms ({loss_name})",
                            disable=not progress):
            model.zero_grad(set_to_none=True)
            loss = loss_fn(model)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss {loss_name} is {loss.item()} on batch {n_batches}")
            loss.backward()
            for key, params in groups.items():
                grad = _norm([p.grad for p in params if p.grad is not None])
                weight = _norm([p.detach() for p in params])
                grad_sums[key] += grad
                batches[key].append(grad / weight if weight > 0 else 0.0)
                sums[key] += batches[key][-1]
            n_batches += 1
    finally:
        model.zero_grad(set_to_none=True)
        for p, flag in saved.items():
            p.requires_grad_(flag)
    if n_batches == 0:
        raise ValueError("no batches to measure gradient norms on")
    if per_batch is not None:
        per_batch.update(batches)
    return [
        {"loss": loss_name, "layer": layer, "component": component,
         "relative_norm": sums[(layer, component)] / n_batches,
         "grad_norm": grad_sums[(layer, component)] / n_batches,
         "weight_norm": _norm([p.detach() for p in groups[(layer, component)]]),
         "n_batches": n_batches}
        for layer, component in groups
    ]


def _norm(tensors: list[torch.Tensor]) -> float:
    if not tensors:
        return 0.0
    return float(torch.sqrt(sum(t.float().pow(2).sum() for t in tensors)))


def fisher_information(
    model: nn.Module,
    micro_batch_losses: Iterable[Callable[[nn.Module], torch.Tensor]],
    *,
    loss_name: str = "loss",
    progress: bool = True,
    desc: str | None = None,
) -> list[dict]:
    """The diagonal empirical Fisher information summed per block (Lodha et al. 2023, "On Surgical Fine-tuning for
    Language Encoders": the FIM score that ranks layers): F_b = mean over examples of sum_{w in block b} g_w^2.

    A contrastive loss has no per-example term (each example's loss involves the whole batch), so an "example"
    here is a micro-batch: `micro_batch_losses` holds one callable per micro-batch (the loss of a few examples
    contrasted among themselves). Every block is made trainable for the measurement, as for the gradient norms.
    Returns rows {loss, layer, fisher, n_micro_batches}.
    """
    parts = block_parameter_groups(TextTower.from_model(model))
    groups = {block: params for (block, component), params in parts.items() if component == "all"}
    saved = {p: p.requires_grad for p in model.parameters()}
    for params in groups.values():
        for p in params:
            p.requires_grad_(True)
    sums = dict.fromkeys(groups, 0.0)
    count = 0
    try:
        for loss_fn in tqdm(list(micro_batch_losses), desc=desc or f"Fisher information ({loss_name})",
                            disable=not progress):
            model.zero_grad(set_to_none=True)
            loss = loss_fn(model)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss {loss_name} is {loss.item()} on micro-batch {count}")
            loss.backward()
            for block, params in groups.items():
                sums[block] += float(sum(p.grad.float().pow(2).sum() for p in params if p.grad is not None))
            count += 1
    finally:
        model.zero_grad(set_to_none=True)
        for p, flag in saved.items():
            p.requires_grad_(flag)
    if count == 0:
        raise ValueError("no micro-batches to measure the Fisher information on")
    return [{"loss": loss_name, "layer": block, "fisher": total / count, "n_micro_batches": count}
            for block, total in sums.items()]
