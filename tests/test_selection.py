"""Layer selection rules on hand-made measurements: each rule picks what its formula says."""
from __future__ import annotations

import json

import numpy as np
import pytest

from analysis.selection import (SelectionConfig, SelectionError, auto_rgn_weights, block_evidence, block_gains,
                                describe_blocks, front_prefix, select_layers, top_k)
from finetune.plan import LayerPlan

HELDOUT = ("heldout_cue", "heldout_object", "heldout_template")


def probe_rows(trained, random=None, *, task="negation", splits=HELDOUT, probe="logistic"):
    """Probe rows with the given per-layer accuracy on every split (and the in-distribution split)."""
    rows = []
    models = {"trained": trained, **({"random": random} if random is not None else {})}
    for model, curve in models.items():
        for split in (*splits, "in_distribution"):
            for layer, accuracy in enumerate(curve):
                rows.append({"task": task, "model": model, "labels": "task", "split": split, "layer": layer,
                             "probe": probe, "accuracy": accuracy, "ci_low": accuracy - 0.05,
                             "ci_high": accuracy + 0.05, "n_seeds": 5, "n_train": 100, "n_test": 100,
                             "direction_cosine": 0.9})
    return rows


def gradnorm_rows(profiles: dict[str, list[float]]):
    return [{"loss": loss, "layer": b, "component": "all", "relative_norm": value, "grad_norm": value,
             "weight_norm": 1.0, "n_batches": 2} for loss, values in profiles.items() for b, value in enumerate(values)]


def sensitivity_rows(presence, control, absence=None):
    rows = []
    for edit, curve in (("presence", presence), ("absence", absence or presence), ("control", control)):
        rows += [{"layer": l, "edit": edit, "sensitivity": v, "ci_low": v - 0.01, "ci_high": v + 0.01,
                  "raw_distance": v, "baseline_distance": 1.0} for l, v in enumerate(curve)]
    return rows


def measurements(n_layers, *, probes=(), gradnorms=(), sensitivity=()):
    return {"n_layers": n_layers, "layer_labels": ["embed"] + [f"block {b}" for b in range(n_layers)],
            "probes": list(probes), "selectivity": [], "sensitivity": list(sensitivity),
            "gradnorms": list(gradnorms), "causal": [], "meta": {}}


# --- pure rules -------------------------------------------------------------------------------

def test_front_prefix_is_the_shortest_prefix_reaching_the_share():
    k, cumulative = front_prefix([0.3, 0.3, 0.25, 0.05, 0.05, 0.05], 0.8)
    assert k == 3 and cumulative[1] == pytest.approx(0.6) and cumulative[2] == pytest.approx(0.85)
    assert front_prefix([0.5, 0.3, 0.2], 0.8)[0] == 2  # exactly 0.8 (floating point sum) counts
    assert front_prefix([0.0, 0.0, 1.0], 0.5)[0] == 3  # evidence at the back makes a long prefix
    assert front_prefix([2.0, 1.0, 1.0], 1.0)[0] == 3  # unnormalised scores are fine
    with pytest.raises(SelectionError, match="no evidence"):
        front_prefix([0.0, 0.0], 0.8)


def test_top_k_ties_go_to_the_earlier_block_and_come_back_sorted():
    assert top_k([0.1, 0.4, 0.1, 0.4], 2) == [1, 3]
    assert top_k([0.2, 0.1, 0.2, 0.5], 2) == [0, 3]
    assert top_k([0.2, 0.1], 5) == [0, 1]


def test_auto_rgn_weights_are_norms_over_the_largest():
    assert auto_rgn_weights([4.0, 2.0, 1.0, 0.5]) == pytest.approx([1.0, 0.5, 0.25, 0.125])
    with pytest.raises(SelectionError):
        auto_rgn_weights([0.0, 0.0])


def test_block_gains_keep_only_increases():
    assert block_gains([0.0, 0.1, 0.1, 0.3, 0.2]) == pytest.approx([0.1, 0.0, 0.2, 0.0])
    assert describe_blocks([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8" and describe_blocks([]) == "none"


# --- evidence and plans from measurements -------------------------------------------------------

def test_probe_evidence_in_blocks_0_to_2_gives_prefix_0_1_2():
    # held-out accuracy climbs across blocks 0-2 and stays flat after; the random model stays at 0.5
    trained = [0.5, 0.6, 0.7, 0.8, 0.8, 0.8, 0.8]
    m = measurements(6, probes=probe_rows(trained, [0.5] * 7))
    plan = select_layers(m, SelectionConfig(rule="prefix", share=0.8))
    assert plan.blocks == [0, 1, 2]
    assert plan.train_embeddings and plan.train_ln_final and plan.train_projection and plan.train_logit_scale
    decision = plan.evidence["decision"]
    assert decision["k"] == 3 and decision["share_of_prefix"] == pytest.approx(1.0)
    assert decision["share_of_shorter_prefix"] == pytest.approx(2 / 3)
    rows = plan.evidence["per_block"]
    assert [r["probe"] for r in rows] == pytest.approx([0.1, 0.1, 0.1, 0, 0, 0])
    assert plan.evidence["front_half_share"] == pytest.approx(1.0)


def test_random_baseline_is_subtracted_layer_by_layer():
    # the trained model's rise across block 0 is matched by the random model: only block 3 adds
    trained = [0.5, 0.7, 0.7, 0.7, 0.9]
    random = [0.5, 0.7, 0.7, 0.7, 0.7]
    plan = select_layers(measurements(4, probes=probe_rows(trained, random)), SelectionConfig(rule="topk", k=1))
    assert plan.blocks == [3]
    assert not plan.train_embeddings  # block 0 stays frozen, so do the embeddings ("auto")
    assert plan.evidence["per_layer"]["probe"]["per_task"]["negation"]["baseline"] == "random"


def test_margins_under_the_noise_threshold_are_no_evidence():
    trained = [0.5, 0.52, 0.52, 0.52]  # 2 points over the baseline: under the 3-point margin
    m = measurements(3, probes=probe_rows(trained, [0.5] * 4), gradnorms=gradnorm_rows({"clip": [1.0, 2.0, 1.0]}))
    evidence = block_evidence(m, SelectionConfig())
    assert "probe" not in evidence.components
    assert any("probe" in note and "no block adds" in note for note in evidence.notes)
    assert evidence.combined == pytest.approx([0.25, 0.5, 0.25])  # gradient norms alone
    assert "probe" in block_evidence(m, SelectionConfig(min_probe_margin=0.01)).components


def test_chance_stands_in_for_a_missing_random_model():
    m = measurements(3, probes=probe_rows([0.5, 0.5, 0.9, 0.9]))
    plan = select_layers(m, SelectionConfig(rule="topk", k=1))
    assert plan.blocks == [1]
    assert any("chance" in note for note in plan.evidence["notes"])


def test_without_heldout_splits_the_in_distribution_split_stands_in():
    m = measurements(2, probes=probe_rows([0.5, 0.9, 0.9], [0.5, 0.5, 0.5], splits=()))
    plan = select_layers(m, SelectionConfig(rule="topk", k=1))
    assert plan.blocks == [0]
    assert any("in-distribution split stands in" in note for note in plan.evidence["notes"])


def test_combined_score_weights_the_normalised_components():
    # probe gains: block 1 only; gradient norms 3:1 for blocks 0:1; sensitivity: block 0 only
    m = measurements(2, probes=probe_rows([0.5, 0.5, 0.9], [0.5, 0.5, 0.5]),
                     gradnorms=gradnorm_rows({"clip": [0.3, 0.1]}),
                     sensitivity=sensitivity_rows(presence=[1.4, 0.5, 0.5], control=[0.0, 0.2, 0.3]))
    config = SelectionConfig(w_probe=0.5, w_gradnorm=0.25, w_sensitivity=0.25)
    evidence = block_evidence(m, config)
    assert evidence.shares["probe"] == pytest.approx([0.0, 1.0])
    assert evidence.shares["gradnorm"] == pytest.approx([0.75, 0.25])
    # D = [0 (layer 0 sees only length), 0.3, 0.2]: block 0 adds 0.3, block 1 loses
    assert evidence.per_layer["sensitivity_margin"] == pytest.approx([0.0, 0.3, 0.2])
    assert evidence.shares["sensitivity"] == pytest.approx([1.0, 0.0])
    expected = [0.5 * 0 + 0.25 * 0.75 + 0.25 * 1.0, 0.5 * 1 + 0.25 * 0.25 + 0.25 * 0.0]
    assert evidence.combined == pytest.approx(expected)
    assert sum(evidence.combined) == pytest.approx(1.0)
    only_grads = block_evidence(m, SelectionConfig(w_probe=0, w_gradnorm=1, w_sensitivity=0))
    assert only_grads.combined == pytest.approx([0.75, 0.25])


def test_planted_gradnorm_profile_gives_auto_rgn_weights():
    m = measurements(5, gradnorms=gradnorm_rows({"conclip": [0.08, 0.04, 0.02, 0.006, 0.004]}))
    plan = select_layers(m, SelectionConfig(rule="auto_rgn", rgn_floor=0.1))
    assert plan.blocks == [0, 1, 2]  # 0.006 / 0.08 = 0.075 < 0.1
    assert plan.lr_weights == pytest.approx({0: 1.0, 1: 0.5, 2: 0.25})
    assert plan.evidence["decision"]["frozen_blocks"] == [3, 4]
    assert plan.evidence["decision"]["lr_weights_all"] == pytest.approx([1.0, 0.5, 0.25, 0.075, 0.05])
    assert plan.rule == "auto-rgn(floor=0.1)"


def test_gradnorm_profiles_of_several_losses_are_averaged_after_normalising():
    m = measurements(2, gradnorms=gradnorm_rows({"clip": [3.0, 1.0], "omni_absence": [10.0, 30.0]}))
    both = block_evidence(m, SelectionConfig())
    assert both.rgn_profile == pytest.approx([0.5, 0.5])  # (0.75 + 0.25) / 2, (0.25 + 0.75) / 2
    one = block_evidence(m, SelectionConfig(grad_loss="omni_absence"))
    assert one.rgn_profile == pytest.approx([0.25, 0.75])
    with pytest.raises(SelectionError, match="no gradient norms for loss"):
        block_evidence(m, SelectionConfig(grad_loss="conclip"))


def test_prefix_with_lr_weights_renormalises_over_the_chosen_blocks():
    m = measurements(4, probes=probe_rows([0.5, 0.7, 0.9, 0.9, 0.9], [0.5] * 5),
                     gradnorms=gradnorm_rows({"clip": [0.1, 0.2, 0.4, 0.4]}))
    plan = select_layers(m, SelectionConfig(rule="prefix", share=0.5, lr_weights=True, w_gradnorm=0.0))
    assert plan.blocks == [0]  # probe gains 0.2, 0.2: half in block 0
    assert plan.lr_weights == {0: 1.0}
    plan = select_layers(m, SelectionConfig(rule="prefix", share=0.9, lr_weights=True, w_gradnorm=0.0))
    assert plan.blocks == [0, 1] and plan.lr_weights == pytest.approx({0: 0.5, 1: 1.0})
    assert plan.rule.endswith("+rgn-lr")


def test_plan_round_trips_through_the_finetune_loader(tmp_path):
    m = measurements(3, probes=probe_rows([0.5, 0.8, 0.8, 0.9], [0.5] * 4),
                     gradnorms=gradnorm_rows({"clip": [0.3, 0.2, 0.1]}),
                     sensitivity=sensitivity_rows([1.0, 0.5, 0.6, 0.7], [0.0, 0.2, 0.2, 0.2]))
    plan = select_layers(m, SelectionConfig(rule="topk", k=2, lr_weights=True))
    path = plan.save(tmp_path / "layer_plan.json")
    again = LayerPlan.load(path)
    assert again.blocks == plan.blocks and again.lr_weights == plan.lr_weights and again.rule == plan.rule
    assert again.evidence == json.loads(json.dumps(plan.evidence))
    again.validate(3)


def test_no_usable_evidence_is_an_error():
    flat = measurements(3, probes=probe_rows([0.5] * 4, [0.5] * 4))
    with pytest.raises(SelectionError, match="no usable evidence"):
        select_layers(flat)
    with pytest.raises(SelectionError, match="auto_rgn needs gradient norms"):
        select_layers(measurements(3, probes=probe_rows([0.5, 0.9, 0.9, 0.9], [0.5] * 4)),
                      SelectionConfig(rule="auto_rgn"))


@pytest.mark.parametrize("kwargs, message", [
    ({"rule": "middle"}, "unknown rule"), ({"share": 0.0}, "share"), ({"k": 0}, "k must"),
    ({"rgn_floor": 1.5}, "rgn_floor"), ({"w_probe": 0, "w_gradnorm": 0, "w_sensitivity": 0}, "weights"),
    ({"train_embeddings": "yes"}, "train_embeddings"), ({"sensitivity_edit": "control"}, "sensitivity_edit"), ({"min_probe_margin": -0.1}, "min_probe_margin")])
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SelectionConfig(**kwargs)


def test_back_heavy_evidence_gives_a_long_prefix_and_a_small_front_share():
    trained = [0.5, 0.5, 0.5, 0.5, 0.6, 0.7, 0.9]
    plan = select_layers(measurements(6, probes=probe_rows(trained, [0.5] * 7)), SelectionConfig(share=0.8))
    assert plan.blocks == [0, 1, 2, 3, 4, 5]
    assert plan.evidence["front_half_share"] == pytest.approx(0.0)
    assert np.isclose(sum(r["combined"] for r in plan.evidence["per_block"]), 1.0)


def test_sensitivity_edit_chooses_the_negation_compared_with_the_control():
    m = measurements(3, sensitivity=sensitivity_rows(presence=[1.0, 0.2, 0.2, 0.2], control=[0.0, 0.3, 0.3, 0.3],
                                                     absence=[1.0, 0.3, 0.3, 0.6]))
    with pytest.raises(SelectionError, match="no usable evidence"):
        block_evidence(m, SelectionConfig())  # presence never exceeds the control edit
    evidence = block_evidence(m, SelectionConfig(sensitivity_edit="absence"))
    assert evidence.per_layer["sensitivity_margin"] == pytest.approx([0.0, 0.0, 0.0, 0.3])
    assert evidence.combined == pytest.approx([0.0, 0.0, 1.0])
