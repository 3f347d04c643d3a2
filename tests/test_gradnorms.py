"""Relative gradient norms: checked against a direct computation, and measured with every block trainable."""
from __future__ import annotations

import pytest
import torch

from probing.clip.loading import load_clip
from probing.measure.gradnorms import relative_gradient_norms


def test_relative_norms_match_direct_computation(write_config):
    torch.manual_seed(0)
    model, _, tokenizer = load_clip(write_config("tiny-grad-norm"))
    for p in model.parameters():
        p.requires_grad_(False)  # frozen, as a fine-tuning plan might leave it
    batches = [tokenizer(["a red circle but no blue square", "a dog"]), tokenizer(["no cat", "a cat without a hat"])]

    def loss_for(tokens):
        return lambda m: m.encode_text(tokens).pow(2).sum()

    rows = relative_gradient_norms(model, [loss_for(t) for t in batches], loss_name="toy", progress=False)
    by_key = {(r["layer"], r["component"]): r for r in rows}
    assert {r["layer"] for r in rows} == {0, 1, 2, 3}
    assert all(r["relative_norm"] > 0 for r in rows)  # every block measured despite the freezing
    assert not any(p.requires_grad for p in model.parameters())  # the caller's freezing is restored

    # direct computation for block 2's MLP
    for p in model.parameters():
        p.requires_grad_(True)
    mlp = model.transformer.resblocks[2].mlp
    expected = 0.0
    for tokens in batches:
        model.zero_grad()
        model.encode_text(tokens).pow(2).sum().backward()
        grad = torch.sqrt(sum(p.grad.pow(2).sum() for p in mlp.parameters()))
        weight = torch.sqrt(sum(p.pow(2).sum() for p in mlp.parameters()))
        expected += float(grad / weight) / len(batches)
    assert by_key[(2, "mlp")]["relative_norm"] == pytest.approx(expected, rel=1e-4)
    assert set(c for (_, c) in by_key) == {"all", "attention", "mlp", "layernorms"}


def test_nan_loss_is_reported(write_config):
    model, _, tokenizer = load_clip(write_config("tiny-grad-nan"))
    tokens = tokenizer(["a dog"])
    with pytest.raises(FloatingPointError, match="loss bad is nan on batch 0"):
        relative_gradient_norms(
            model, [lambda m: m.encode_text(tokens).sum() * float("nan")], loss_name="bad", progress=False
        )
