"""Null-calibrated evidence: a planted excess is found where it was planted and nowhere else, a model
drawn like its null models shows evidence no more often than alpha, front-loaded gradient norms that
random towers share are not evidence, and the statistic equals a second computation from the items."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.planning.evidence import block_evidence
from analysis.planning.selection import SelectionConfig, select_layers
from analysis.planning.settings import EvidenceConfig
from probing.measure.layers import LayerMeasurements

N_LAYERS = 6
SPLITS = ("heldout_cue", "heldout_object", "heldout_template")


def synthetic_measurements(rng, *, n_null=10, n_test=300, planted_probe=None, planted_grad=None, front_loaded=False):
    """Items of a made-up measurement: per-item probe correctness, sensitivity distances and gradient
    norms for the model and its null models, each null a fresh draw of the same distribution."""
    models = ["trained"] + [f"null:{k}" for k in range(n_null)]
    items = {}
    for task in ("negation", "scope"):
        for split in SPLITS:
            labels = rng.integers(0, 2, n_test)
            items[f"probes/{task}/{split}/labels"] = labels
            for model in models:
                # a tower-level accuracy per layer (tower-to-tower spread) plus item noise
                level = 0.6 + np.cumsum(rng.normal(0, 0.01, N_LAYERS + 1))
                if model == "trained" and planted_probe is not None:
                    level[planted_probe + 1:] += 0.15  # block `planted_probe` adds 15 points
                items[f"probes/{task}/{split}/{model}"] = (rng.random((N_LAYERS + 1, n_test)) < level[:, None]).astype(
                    np.float32
                )
    for model in models:
        base = rng.normal(0.5, 0.05, (N_LAYERS + 1, 200)).astype(np.float32)
        items[f"sensitivity/presence/{model}"] = base + rng.normal(0, 0.05, base.shape).astype(np.float32)
        items[f"sensitivity/control/{model}"] = base
        profile = np.linspace(3, 1, N_LAYERS) if front_loaded else np.ones(N_LAYERS)
        profile = profile * np.exp(rng.normal(0, 0.05, N_LAYERS))
        if model == "trained" and planted_grad is not None:
            profile[planted_grad] *= 2.0
        items[f"gradnorms/clip/{model}"] = (profile[None, :] * np.exp(rng.normal(0, 0.02, (4, N_LAYERS)))).astype(
            np.float32
        )
    return LayerMeasurements(N_LAYERS, [str(i) for i in range(N_LAYERS + 1)], items=items,
                             meta={"null_models": models[1:]})


def test_a_planted_probe_excess_is_found_where_it_was_planted():
    evidence = block_evidence(synthetic_measurements(np.random.default_rng(0), planted_probe=3),
                              EvidenceConfig(n_boot=200))
    probe = evidence.components["probe"]
    assert [b for b, s in enumerate(probe.significant) if s] == [3]
    assert probe.excess[3] == pytest.approx(0.15, abs=0.04) and probe.low[3] < probe.excess[3] < probe.high[3]
    selection = select_layers(evidence)
    assert selection.plan.blocks == [3] and selection.stability[3] > 0.8
    assert not selection.plan.train_embeddings  # block 0 does not train, so its inputs do not either


def test_the_t_statistic_is_recomputed_from_the_items():
    measurements = synthetic_measurements(np.random.default_rng(1), planted_probe=2, n_null=6)
    probe = block_evidence(measurements, EvidenceConfig(n_boot=50)).components["probe"]
    items = measurements.items
    curves = {}
    for model in ["trained"] + measurements.null_models:  # balanced accuracy per layer, mean over tasks and splits
        per_part = []
        for task in ("negation", "scope"):
            for split in SPLITS:
                labels = items[f"probes/{task}/{split}/labels"]
                hits = items[f"probes/{task}/{split}/{model}"].astype(np.float64)
                per_part.append(np.mean([hits[:, labels == c].mean(axis=1) for c in (0, 1)], axis=0))
        curves[model] = np.diff(np.mean(per_part, axis=0))
    nulls = np.stack([curves[m] for m in measurements.null_models])
    t = (curves["trained"] - nulls.mean(0)) / (nulls.std(0, ddof=1) * np.sqrt(1 + 1 / len(nulls)))
    assert probe.z == pytest.approx(t.tolist(), abs=1e-9)
    # Bonferroni over 6 blocks x 3 components, Student's t with K - 1 degrees of freedom
    assert probe.critical == pytest.approx(stats.t.ppf(1 - 0.05 / 18, len(nulls) - 1))


def test_a_model_like_its_null_models_shows_evidence_rarely():
    rng = np.random.default_rng(2)
    found = 0
    for _ in range(60):
        evidence = block_evidence(synthetic_measurements(rng, n_test=120), EvidenceConfig(n_boot=20))
        found += evidence.supported
    assert found <= 6  # alpha = 0.05: about 3 expected; 6 of 60 is already unlikely for a calibrated test


def test_front_loaded_gradient_norms_that_random_towers_share_are_not_evidence():
    evidence = block_evidence(synthetic_measurements(np.random.default_rng(3), front_loaded=True),
                              EvidenceConfig(n_boot=100))
    gradnorm = evidence.components["gradnorm"]
    assert gradnorm.trained[0] > 2 * gradnorm.trained[-1]  # raw profile is front-loaded
    assert not any(gradnorm.significant) and not evidence.supported
    selection = select_layers(evidence)
    assert selection.plan.blocks == [] and "beyond the null models" in selection.decision.reason
    assert not (selection.plan.train_ln_final or selection.plan.train_logit_scale)
    planted = block_evidence(synthetic_measurements(np.random.default_rng(3), front_loaded=True, planted_grad=4),
                             EvidenceConfig(n_boot=100))
    assert [b for b, s in enumerate(planted.components["gradnorm"].significant) if s] == [4]


def test_fewer_than_two_null_models_give_no_evidence():
    measurements = synthetic_measurements(np.random.default_rng(4), n_null=1, planted_probe=1)
    evidence = block_evidence(measurements, EvidenceConfig(n_boot=10))
    assert not evidence.supported and "no null distribution" in evidence.notes[0]
    assert select_layers(evidence, SelectionConfig(rule="prefix")).plan.blocks == []


def test_measurements_round_trip_with_their_items(tmp_path):
    measurements = synthetic_measurements(np.random.default_rng(5), n_null=2)
    measurements.add(
        "causal", [{"layer": 1, "metric": "scope_accuracy", "ablated": 0.4, "baseline": 0.5, "change": -0.1}]
    )
    measurements.save(tmp_path)
    again = LayerMeasurements.load(tmp_path / "measurements.json")
    assert again.null_models == measurements.null_models and set(again.items) == set(measurements.items)
    assert all(np.array_equal(again.items[k], measurements.items[k]) for k in measurements.items)
    pd.testing.assert_frame_equal(again.causal, measurements.causal, check_dtype=False)
    assert list(again.probes.columns)[:3] == ["task", "model", "labels"] and again.probes.empty


def test_two_null_models_give_finite_replicates():
    """With K = 2 null towers a bootstrap draw picks the same tower twice half of the time; such a draw has no
    spread, and its t would be infinite (a replicate that always counts as evidence). Each replicate draws at
    least two distinct towers: with K = 2 that is both of them."""
    import warnings

    from analysis.planning.evidence import _ProbeStatistic, calibrate

    measurements = synthetic_measurements(np.random.default_rng(5), n_null=2, planted_probe=2)
    models = ["trained"] + measurements.null_models
    statistic = _ProbeStatistic(measurements, ("negation", "scope"), models)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow in the division is an error here
        component, replicate_t = calibrate(statistic, "probe", 10.0, 40, np.random.default_rng(0))
    # a draw of one tower k times would have no spread (its t NaN, no evidence); two distinct towers give a modest t
    assert np.abs(replicate_t).max() < 1e6 and np.isfinite(component.z).all()


def test_a_block_where_the_null_models_do_not_differ_is_untested_not_infinitely_significant():
    """Two null towers at exactly the same value at a block (e.g. the same probe accuracy) give no null spread
    there. Dividing by a float floor made a model 0.005 above them a t of about 1e305, 'significant', and the
    plan. Planted: blocks 1 and 3 with equal null values; block 1's excess tiny, block 3's large; block 2 an ordinary
    significant excess. Only block 2 counts, blocks 1 and 3 are NaN and said to be untested."""
    from analysis.planning.evidence import _Statistic, calibrate

    class Planted(_Statistic):
        basis = "planted"
        values = np.array([[0.0, 0.105, 0.90, 0.60],   # the model
                           [0.0, 0.100, 0.10, 0.10],   # null tower 0
                           [0.01, 0.100, 0.12, 0.10]])  # null tower 1: equal to tower 0 at blocks 1 and 3

        def models(self):
            return ["trained", "null:0", "null:1"]

        def point(self):
            return self.values

        def replicate(self, rng):
            return self.values

    component, replicate_t = calibrate(Planted(), "planted", 12.7, 20, np.random.default_rng(0))
    # block 2, by hand: E = 0.90 - 0.11, s = std(0.10, 0.12) = 0.0141, t = E / (s sqrt(1.5))
    assert component.z[2] == pytest.approx(0.79 / (np.std([0.10, 0.12], ddof=1) * np.sqrt(1.5)))
    assert component.significant == [False, False, True, False]
    assert np.isnan(component.z[1]) and np.isnan(component.z[3]) and np.isnan(component.threshold[3])
    assert np.isnan(replicate_t[:, [1, 3]]).all() and np.isfinite(replicate_t[:, [0, 2]]).all()
    assert component.evidence == [0.0, 0.0, pytest.approx(0.79), 0.0]


def test_null_models_that_do_not_differ_are_named_in_the_notes_and_select_nothing():
    measurements = synthetic_measurements(np.random.default_rng(6), n_null=2, planted_probe=2)
    for key in [k for k in measurements.items if k.startswith("probes/") and k.endswith("/null:1")]:
        measurements.items[key] = measurements.items[key.replace("null:1", "null:0")].copy()  # identical towers
    evidence = block_evidence(measurements, EvidenceConfig(n_boot=20, weights={"probe": 1.0}))
    assert not any(evidence.components["probe"].significant)
    assert any(note.startswith("probe: the null models do not differ at block(s) 0, 1, 2, 3, 4, 5")
               for note in evidence.notes)
    assert not evidence.supported
