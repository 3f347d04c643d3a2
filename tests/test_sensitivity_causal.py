"""Sensitivity standardisation and the projection-out causal check."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from probing.clip.hooked import HookedCLIPText
from probing.clip.loading import load_clip
from probing.measure.capture import resid_hook_names
from probing.measure.causal import AblatedText, project_out_hook, projection_ablation, text_encoder_with_hooks
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
    ablated = text_encoder_with_hooks(
        hooked, tokenizer, [(f"blocks.{n - 1}.hook_resid_post", project_out_hook(direction))]
    )
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


CAPTIONS = ["a red circle", "there is no blue square next to the big green star on the left", "not a cat",
            "a photo of a dog but no cat", "no", "a yellow cross without a purple diamond", "an empty room"]


def test_ablated_text_equals_the_hooked_full_run(tiny):
    """Reusing the earlier blocks' states is the hooked run with the projection hook, number for number."""
    hooked, tokenizer = tiny
    n = hooked.cfg.n_layers
    names = resid_hook_names(n)
    rng = np.random.default_rng(2)
    directions = {layer: rng.normal(size=hooked.cfg.d_model) for layer in range(n + 1)}
    text = AblatedText(hooked, tokenizer, directions, token_budget=40)
    unablated = text_encoder_with_hooks(hooked, tokenizer, [], token_budget=40)
    assert torch.equal(text.encoder(None)(CAPTIONS), unablated(CAPTIONS))
    for layer, direction in directions.items():
        hooks = [(names[layer], project_out_hook(direction))]
        got = text.encoder(layer)(CAPTIONS)
        assert torch.equal(got, text_encoder_with_hooks(hooked, tokenizer, hooks, token_budget=40)(CAPTIONS))
        one_at_a_time = torch.cat([hooked.run_with_hooks(tokenizer([c]), fwd_hooks=hooks, trim=False, normalize=True)
                                   for c in CAPTIONS])  # unbatched, untrimmed
        torch.testing.assert_close(got, one_at_a_time, atol=1e-5, rtol=0)
        assert not torch.allclose(got, text.encoder(None)(CAPTIONS), atol=1e-3)  # the ablation does something
    order = list(range(len(CAPTIONS)))[::-1] + [0, 1]  # captions asked for again come from the kept features
    assert torch.equal(text.encoder(2)([CAPTIONS[i] for i in order]), text.encoder(2)(CAPTIONS)[order])


def test_ablation_runs_only_the_blocks_after_the_layer(tiny):
    hooked, tokenizer = tiny
    n = hooked.cfg.n_layers
    calls = []
    handles = [block.register_forward_hook(lambda module, args, out, i=i: calls.append(i))
               for i, block in enumerate(hooked.blocks)]
    try:
        rng = np.random.default_rng(3)
        text = AblatedText(hooked, tokenizer, {1: rng.normal(size=64), n: rng.normal(size=64)}, token_budget=None,
                           batch_size=len(CAPTIONS))
        text.encoder(1)(CAPTIONS)
        # one batch: the full run (blocks 0..n-1), the tail after state 1 (blocks 1..n-1), none after state n
        assert calls == list(range(n)) + list(range(1, n))
        text.encoder(n)(CAPTIONS)
        text.encoder(None)(CAPTIONS[:3])
        assert len(calls) == 2 * n - 1  # nothing encoded twice
    finally:
        for handle in handles:
            handle.remove()
    with pytest.raises(ValueError, match="layer indices"):
        AblatedText(hooked, tokenizer, {n + 1: np.ones(64)})


def test_projection_ablation_rows_equal_hooked_runs_per_layer(tiny):
    hooked, tokenizer = tiny
    names = resid_hook_names(hooked.cfg.n_layers)
    reference = F.normalize(torch.randn(len(CAPTIONS), 32, generator=torch.Generator().manual_seed(0)), dim=-1)

    def evaluate(encode):
        features = encode(CAPTIONS)
        scores = features @ reference.T
        return {"top1": float((scores.argmax(1) == torch.arange(len(CAPTIONS))).float().mean()),
                "mean_score": float(scores.diagonal().mean())}

    rng = np.random.default_rng(4)
    directions = {0: rng.normal(size=64), 2: rng.normal(size=64), 4: rng.normal(size=64)}
    rows = projection_ablation(hooked, tokenizer, directions, evaluate)
    baseline = evaluate(text_encoder_with_hooks(hooked, tokenizer, []))
    expected = []
    for layer, direction in directions.items():
        ablated = evaluate(text_encoder_with_hooks(hooked, tokenizer, [(names[layer], project_out_hook(direction))]))
        expected += [{"layer": layer, "metric": metric, "ablated": value, "baseline": baseline[metric],
                      "change": value - baseline[metric]} for metric, value in ablated.items()]
    assert rows == expected
