"""The baseline layer selectors (analysis.planning.selectors): their rankings on planted measurements, the Fisher
information against a direct computation, and a planted tower whose answer is known (one live block among dead
ones: gradient-based selectors must pick it), plus the selector table read off validity results."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from analysis.planning.selectors import SELECTORS, missing_selectors, selector_plans, top_k
from probing.clip.loading import load_clip
from probing.measure.gradnorms import fisher_information
from probing.measure.layers import TABLES, LayerMeasurements

N = 6


def planted_measurements(*, rgn_peak=3, cosine_peak=1, norm_peak=4, fisher_peak=5) -> LayerMeasurements:
    """Measurement tables of a 6-block tower in which each selector's favourite block is planted."""
    rows = {name: [] for name in TABLES}
    for loss in ("clip", "conclip"):
        for block in range(N):
            rows["gradnorms"].append({"model": "trained", "loss": loss, "layer": block, "component": "all",
                                      "relative_norm": 1.0 + (3.0 if block == rgn_peak else 0.1 * block),
                                      "grad_norm": 1.0, "weight_norm": 1.0, "n_batches": 2})
            rows["gradnorms"].append({"model": "null:1", "loss": loss, "layer": block, "component": "all",
                                      "relative_norm": 9.0 if block == 0 else 1.0, "grad_norm": 1.0,
                                      "weight_norm": 1.0, "n_batches": 2})  # a null tower is never read
            rows["fisher"].append({"model": "trained", "loss": loss, "layer": block,
                                   "fisher": 5.0 if block == fisher_peak else 1.0 + block / 10,
                                   "n_micro_batches": 8, "micro_batch_size": 8})
    for layer in range(N + 1):  # layer l is block l - 1's output
        rows["sensitivity"].append({"model": "trained", "layer": layer, "edit": "presence", "sensitivity": 0.0,
                                    "ci_low": 0.0, "ci_high": 0.0, "baseline_distance": 1.0,
                                    "raw_distance": 0.5 if layer == cosine_peak + 1 else 0.1,
                                    "norm_change": 0.3 if layer == norm_peak + 1 else 0.01})
    tables = {name: pd.DataFrame(values, columns=list(TABLES[name])) for name, values in rows.items()}
    return LayerMeasurements(N, [str(i) for i in range(N + 1)], tables)


def test_each_selector_picks_its_planted_blocks():
    plans = selector_plans(planted_measurements(), [2, 3])
    assert set(plans) == set(SELECTORS)
    assert plans["toolkit"].blocks == (2, 3)
    assert plans["auto_rgn"].blocks == (3, 5)  # the planted peak, then the largest of 0.1 * block
    assert plans["omni_cosine"].blocks == (0, 1)  # the peak; the other blocks tie at 0.1: the earlier block
    assert plans["activation_norm"].blocks == (0, 4)
    assert plans["fisher"].blocks == (4, 5)
    assert plans["front"].blocks == (0, 1) and plans["last"].blocks == (4, 5)
    assert plans["random_window"].blocks == ()
    # the scores the plans were read from, recomputed here: Auto-RGN normalises by the largest block per loss
    raw = np.array([1.0 + (3.0 if b == 3 else 0.1 * b) for b in range(N)])
    assert plans["auto_rgn"].scores == pytest.approx(tuple(raw / raw.max()))
    fisher = np.array([5.0 if b == 5 else 1.0 + b / 10 for b in range(N)])
    assert plans["fisher"].scores == pytest.approx(tuple(fisher / fisher.sum()))
    assert top_k([1, 3, 3, 2], 2) == (1, 2) and top_k([0, 0, 0], 1) == (0,)


def test_a_selector_without_its_measurement_is_left_out_with_the_reason():
    measurements = planted_measurements()
    measurements.tables["fisher"] = pd.DataFrame(columns=list(TABLES["fisher"]))
    assert "fisher" not in selector_plans(measurements, [0])
    assert "Fisher information" in missing_selectors(measurements)["fisher"]
    with pytest.raises(ValueError, match="selects no block"):
        selector_plans(measurements, [])


def test_fisher_information_equals_the_mean_squared_gradient_per_block(write_config):
    torch.manual_seed(0)
    model, _, tokenizer = load_clip(write_config("tiny-fisher", layers=3))
    micro = [tokenizer(["a red circle but no blue square", "a dog"]), tokenizer(["no cat", "a cat without a hat"])]
    rows = fisher_information(model, [lambda m, t=t: m.encode_text(t).pow(2).sum() for t in micro], progress=False,
                              loss_name="toy")
    by_block = {row["layer"]: row["fisher"] for row in rows}
    for block in range(3):
        expected = 0.0
        for tokens in micro:
            model.zero_grad()
            model.encode_text(tokens).pow(2).sum().backward()
            expected += float(sum(p.grad.pow(2).sum() for p in model.transformer.resblocks[block].parameters()))
        assert by_block[block] == pytest.approx(expected / len(micro), rel=1e-5)
    assert all(row["n_micro_batches"] == 2 and row["loss"] == "toy" for row in rows)


def _kill(block) -> None:
    """Make a residual block an exact identity: attention and MLP weights and biases 0. No gradient reaches its
    weights; only its two output biases still receive one (they add to the residual stream directly)."""
    with torch.no_grad():
        for param in (block.attn.in_proj_weight, block.attn.in_proj_bias, block.attn.out_proj.weight,
                      block.attn.out_proj.bias, block.mlp.c_fc.weight, block.mlp.c_fc.bias, block.mlp.c_proj.weight,
                      block.mlp.c_proj.bias):
            param.zero_()


def test_a_tower_of_identity_blocks_gives_the_equalities_its_construction_forces(write_config):
    """Planted: every block but block 2 is an exact identity. Then blocks 0 and 1 pass on the same state and see the
    same gradient, and so do the states after blocks 2 and 3: every selector's scores must be equal there, measured
    through the whole probe-layers path (measure_layers: sensitivity, gradient norms, Fisher information)."""
    from finetune.losses import gradnorm_loss_fns
    from probing.measure.layers import MeasureConfig, measure_layers
    from probing.synthetic.world import SyntheticWorld, WorldConfig

    torch.manual_seed(0)
    model, preprocess, tokenizer = load_clip(write_config("tiny-one-live", layers=4))
    for index, block in enumerate(model.transformer.resblocks):
        if index != 2:
            _kill(block)
    world = SyntheticWorld(WorldConfig(image_size=32), seed=0)
    config = MeasureConfig(measurements=("sensitivity", "gradnorms"), n_sensitivity=20, grad_batches=2,
                           grad_batch_size=16, fisher_micro_batch=4, feature_cache=False)
    measurements = measure_layers(model, preprocess, tokenizer, [], world=world, loss_fns=gradnorm_loss_fns(["clip"]),
                                  config=config, progress=False)
    plans = selector_plans(measurements, [1])
    for name in ("auto_rgn", "fisher"):  # the same gradient reaches the output biases of blocks 0 and 1
        assert plans[name].scores[0] == pytest.approx(plans[name].scores[1], rel=1e-5), name
        assert plans[name].scores[2] != pytest.approx(plans[name].scores[1], rel=1e-3), name
    for name in ("omni_cosine", "activation_norm"):  # identity blocks leave the state where it was
        assert plans[name].scores[0] == pytest.approx(plans[name].scores[1], abs=1e-6), name
        assert plans[name].scores[3] == pytest.approx(plans[name].scores[2], abs=1e-6), name
        assert plans[name].scores[2] != pytest.approx(plans[name].scores[1], abs=1e-4), name
    assert plans["front"].blocks == (0,) and plans["last"].blocks == (3,) and plans["toolkit"].blocks == (1,)
    fisher = measurements.fisher
    assert len(fisher) == 4 and set(fisher["n_micro_batches"]) == {8}  # 2 batches of 16 in micro-batches of 4


def test_gradient_batches_smaller_than_the_fisher_micro_batch_are_one_micro_batch_each(write_config):
    """--grad-batch-size 4 with the default micro-batch of 8 used to leave no micro-batch at all (a traceback from
    probe-layers); each batch is now one micro-batch of its own size: the same numbers as asking for micro-batches
    of 4."""
    from finetune.losses import gradnorm_loss_fns
    from probing.measure.layers import MeasureConfig, measure_layers
    from probing.synthetic.world import SyntheticWorld, WorldConfig

    torch.manual_seed(0)
    model, preprocess, tokenizer = load_clip(write_config("tiny-small-batches", layers=2))
    world = SyntheticWorld(WorldConfig(image_size=32), seed=0)

    def fisher(micro: int) -> pd.DataFrame:
        config = MeasureConfig(measurements=("gradnorms",), grad_batches=3, grad_batch_size=4,
                               fisher_micro_batch=micro, feature_cache=False)
        return measure_layers(model, preprocess, tokenizer, [], world=world, loss_fns=gradnorm_loss_fns(["clip"]),
                              config=config, progress=False).fisher

    default, explicit = fisher(8), fisher(4)
    assert set(default["n_micro_batches"]) == {3} and len(default) == 2
    assert default["fisher"].to_numpy() == pytest.approx(explicit["fisher"].to_numpy(), rel=1e-6)
    assert (default["fisher"] > 0).all()
