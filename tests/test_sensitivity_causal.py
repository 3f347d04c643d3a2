"""Sensitivity standardisation and the projection-out causal check."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from probing.measure.causal import project_out_hook, projection_ablation, text_encoder_with_hooks
from probing.models.hooked import HookedCLIPText
from probing.models.loading import load_clip
from probing.measure.sensitivity import edit_sensitivity


def test_sensitivity_is_zero_for_no_edit_and_one_for_unrelated_captions():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(3, 500, 16)) * np.array([1.0, 10.0, 100.0])[:, None, None]  # growing norms
    unrelated = rng.normal(size=base.shape) * np.array([1.0, 10.0, 100.0])[:, None, None]
    rows = edit_sensitivity(base, {"none": base * 2.0, "unrelated": unrelated, "half": base + 0.3 * unrelated})
    table = {(r["layer"], r["edit"]): r for r in rows}
    for layer in range(3):
        assert table[(layer, "none")]["sensitivity"] == pytest.approx(0.0, abs=1e-9)  # scaling is no move
        unrelated_row = table[(layer, "unrelated")]
        assert unrelated_row["ci_low"] <= 1.0 <= unrelated_row["ci_high"] + 0.02
        assert 0.0 < table[(layer, "half")]["sensitivity"] < 0.2  # standardised: the same at every layer
    with pytest.raises(ValueError, match="shape"):
        edit_sensitivity(base, {"bad": base[:, :10]})


@pytest.fixture
def tiny(write_config):
    torch.manual_seed(0)
    model, _, tokenizer = load_clip(write_config("tiny-causal"))
    return HookedCLIPText(model), tokenizer


def test_projection_removes_the_direction(tiny):
    hooked, tokenizer = tiny
    direction = torch.randn(hooked.cfg.d_model)
    tokens = tokenizer(["a red circle but no blue square", "a dog"])
    seen = {}
    hooked.run_with_hooks(tokens, fwd_hooks=[
        ("blocks.1.hook_resid_post", project_out_hook(direction.numpy())),
        ("blocks.2.hook_resid_pre", lambda x, hook: seen.setdefault("next", x.clone())),
    ])
    unit = direction / direction.norm()
    assert (seen["next"] @ unit).abs().max() < 1e-4


def test_final_layer_ablation_matches_manual_computation(tiny):
    hooked, tokenizer = tiny
    captions = ["a red circle but no blue square", "a dog", "not a cat"]
    n = hooked.cfg.n_layers
    direction = np.random.default_rng(0).normal(size=hooked.cfg.d_model)
    ablated = text_encoder_with_hooks(hooked, tokenizer, [(f"blocks.{n - 1}.hook_resid_post", project_out_hook(direction))])
    tokens = tokenizer(captions)
    _, cache = hooked.run_with_cache(tokens)
    resid = cache[f"blocks.{n - 1}.hook_resid_post"]
    unit = torch.tensor(direction / np.linalg.norm(direction), dtype=torch.float32)
    resid = resid - (resid @ unit)[..., None] * unit
    pooled = hooked.ln_final(resid)[torch.arange(3), hooked.eot_positions(tokens)]
    expected = F.normalize(hooked.tower.project(pooled), dim=-1)
    assert torch.allclose(ablated(captions), expected, atol=1e-5)


def test_projection_ablation_reports_changes_per_layer(tiny):
    hooked, tokenizer = tiny
    captions = ["a red circle", "a blue square", "no green star"]
    reference = text_encoder_with_hooks(hooked, tokenizer, [])(captions)

    def evaluate(encode):
        return {"agreement": float((encode(captions) * reference).sum(-1).mean())}

    rng = np.random.default_rng(1)
    rows = projection_ablation(hooked, tokenizer, {0: rng.normal(size=64), 4: rng.normal(size=64)}, evaluate)
    assert [r["layer"] for r in rows] == [0, 4]
    assert all(r["baseline"] == pytest.approx(1.0, abs=1e-5) for r in rows)
    assert all(r["change"] < 0 for r in rows)  # removing a direction moves the features
