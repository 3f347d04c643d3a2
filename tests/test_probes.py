"""Probes: sklearn's estimator contract, directions in residual coordinates, planted signal and pure
noise."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks

from probing.measure.probes import DiffMeansProbe, LogisticProbe, bootstrap_balanced_accuracy, mean_ci, probe_layers


def planted(n=1000, d=32, layers=6, signal_layer=3, strength=1.5, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scales = np.arange(1, layers + 1)[:, None, None] * 3.0  # norms grow with depth, as in real models
    features = rng.normal(size=(layers, n, d)) * scales
    direction = rng.normal(size=d)
    direction /= np.linalg.norm(direction)
    features[signal_layer] += np.outer(2 * labels - 1, direction) * strength * scales[signal_layer]
    return features, labels, direction


def test_estimator_conventions():
    probe = LogisticProbe(C=0.5)
    assert probe.get_params() == {"C": 0.5, "max_iter": 2000, "random_state": 0}
    assert clone(probe).C == 0.5
    X, y, _ = planted(layers=1, signal_layer=0)
    assert probe.fit(X[0], y) is probe
    assert hasattr(probe, "coef_") and hasattr(probe, "direction_")
    with pytest.raises(ValueError, match="exactly two classes"):
        DiffMeansProbe().fit(X[0], np.zeros(len(y)))


@parametrize_with_checks([LogisticProbe(), DiffMeansProbe()])
def test_sklearn_estimator_checks(estimator, check):
    """Every check of sklearn's check_estimator, with the probes' binary-only tag honoured."""
    check(estimator)


@pytest.mark.parametrize("probe_class", [LogisticProbe, DiffMeansProbe])
def test_direction_recovers_planted_direction(probe_class):
    features, labels, direction = planted(layers=1, signal_layer=0, strength=2.0)
    probe = probe_class().fit(features[0], labels)
    assert abs(probe.direction_ @ direction) > 0.9
    assert probe.score(features[0], labels) > 0.9


def test_planted_layer_wins_and_noise_is_chance():
    features, labels, _ = planted(layers=21)
    index = np.arange(len(labels))
    train, test = index[:500], index[500:]
    sweep = probe_layers(features, labels, train, test, seeds=range(5))
    summary = pd.DataFrame(sweep.summary).set_index(["probe", "layer"])
    assert len(sweep.per_seed) == 21 * 2 * 5 and set(summary.split) == {"test"}
    for probe in ("logistic", "diffmeans"):
        accuracy = summary.loc[probe].accuracy
        assert accuracy.idxmax() == 3 and accuracy[3] > 0.9
        noise = summary.loc[probe].drop(index=3)  # 20 pure-noise layers
        covered = ((noise.ci_low <= 0.5) & (0.5 <= noise.ci_high)).mean()
        assert covered >= 0.85, (probe, covered)  # 95 % intervals include chance nearly always
        assert abs(noise.accuracy.mean() - 0.5) < 0.02
    assert summary.loc[("logistic", 3)].direction_cosine > 0.8  # both probes find the planted direction
    assert sweep.directions["logistic"].shape == (21, 32)


def test_several_test_splits_share_one_fit():
    features, labels, direction = planted(layers=2, signal_layer=1)
    index = np.arange(len(labels))
    sweep = probe_layers(features, labels, index[:500], {"a": index[500:700], "b": index[700:]}, seeds=range(2))
    summary = pd.DataFrame(sweep.summary)
    assert sorted(set(summary.split)) == ["a", "b"] and len(summary) == 2 * 2 * 2
    assert abs(sweep.directions["diffmeans"][1] @ direction) > 0.9


def test_overlapping_split_is_refused():
    features, labels, _ = planted(layers=1, signal_layer=0)
    with pytest.raises(ValueError, match="overlap"):
        probe_layers(features, labels, np.arange(10, 300), np.arange(250, 400))


def test_mean_ci_matches_t_interval():
    interval = mean_ci([0.5, 0.6, 0.7, 0.8, 0.9])
    # mean 0.7, sd 0.1581, t(0.975, 4) = 2.776 -> half-width 0.1963
    assert interval.mean == pytest.approx(0.7)
    assert interval.high - interval.mean == pytest.approx(0.19632, abs=1e-4)


def test_bootstrap_interval_covers_test_sampling():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    correct = np.repeat(rng.random((1, 400)) < 0.7, 5, axis=0)  # seeds that agree on every item
    interval = bootstrap_balanced_accuracy(correct, labels)
    # 400 items at p=0.7: standard error ~0.023, so the 95 % interval is about +-0.045 around ~0.7
    assert 0.66 < interval.mean < 0.74
    assert 0.03 < interval.high - interval.mean < 0.06

