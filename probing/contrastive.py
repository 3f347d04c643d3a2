"""The contrastive-training primitives that fine-tuning (finetune.losses) and the embedded build
(probing.models.build) share: the cross-entropy of a similarity matrix, CLIP's InfoNCE loss, the
bound on the logit scale and the warm-up + cosine learning-rate schedule.

Notation (REFERENCE.md): features are L2-normalised [M, d] tensors, row i describing example i;
t = exp(logit_scale) is the similarity scale, s(x, y) = t <x, y>. CE(X -> Y) is the mean row-wise
softmax cross-entropy of t X Y^T with row i's target Y_i.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from probing.metrics import check_normalized

Tensor = torch.Tensor
MAX_LOGIT_SCALE = math.log(100.0)  # t = exp(logit_scale) is clamped to at most 100


def check_features(**features: Tensor | None) -> int:
    """Check every given tensor is normalised and that all have the same number of rows M."""
    rows = set()
    for name, value in features.items():
        if value is not None:
            if value.ndim != 2:
                raise ValueError(f"{name} must be a [M, d] feature tensor, got {tuple(value.shape)}")
            check_normalized(value, name)
            rows.add(value.shape[0])
    if len(rows) > 1:
        sizes = {name: value.shape[0] for name, value in features.items() if value is not None}
        raise ValueError(f"feature tensors must describe the same M examples, got rows {sizes}")
    return rows.pop() if rows else 0


def cross_entropy(queries: Tensor, keys: Tensor, scale: Tensor | float) -> Tensor:
    """Mean row-wise cross-entropy of scale * queries @ keys^T [M, K], row i's target is key i."""
    logits = scale * queries @ keys.T
    targets = torch.arange(queries.shape[0], device=queries.device)
    return F.cross_entropy(logits, targets)


def infonce(x: Tensor, y: Tensor, scale: Tensor | float) -> Tensor:
    """Symmetric CLIP InfoNCE: 1/2 [CE(x -> y) + CE(y -> x)]."""
    return 0.5 * (cross_entropy(x, y, scale) + cross_entropy(y, x, scale))


def clip_loss(image: Tensor, text: Tensor, *, scale: Tensor | float) -> Tensor:
    """CLIP InfoNCE: L = 1/2 [CE(I -> c) + CE(c -> I)]."""
    check_features(image=image, text=text)
    return infonce(image, text, scale)


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, schedule: str = "cosine") -> float:
    """Linear warm-up over `warmup_steps`, then cosine decay to 0 at `total_steps` (or constant)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
